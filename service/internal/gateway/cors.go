package gateway

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/relaygate/relaygate/service/config"
)

// corsPolicy is config cors, resolved once per state: header values are
// shared slices, so an answer costs one small slice (the echoed origin).
type corsPolicy struct {
	any     bool
	origins map[string]bool
	methods []string
	headers []string
	maxAge  []string
	expose  []string
}

// corsMethods are every method the API answers, DELETE for
// /v1/responses/{id}.
const corsMethods = "GET, POST, DELETE, OPTIONS"

// corsExpose are the answer headers browser code may read.
const corsExpose = "X-Request-Id, X-Relaygate-Upstream, X-Upstream-Request-Id, X-Cache, Retry-After"

var hdrVaryOrigin = []string{"Origin"}

// newCORS returns nil when CORS is off.
func newCORS(c config.CORS) *corsPolicy {
	if !c.Enabled() {
		return nil
	}
	p := &corsPolicy{
		origins: map[string]bool{},
		methods: []string{corsMethods},
		maxAge:  []string{strconv.Itoa(int(c.MaxAge.D().Seconds()))},
		expose:  []string{corsExpose},
	}
	for _, o := range c.AllowedOrigins {
		if o == "*" {
			p.any = true
		}
		p.origins[o] = true
	}
	p.headers = []string{strings.Join(append(append([]string(nil), config.DefaultCORSHeaders...), c.AllowedHeaders...), ", ")}
	return p
}

func (p *corsPolicy) allows(origin string) bool { return p.any || p.origins[origin] }

// apply adds CORS headers for an API request that carries an Origin, and
// answers it when it is a preflight (which browsers send without any key,
// so it is answered before authentication). It reports whether the
// request has been answered.
//
// Allow-Origin echoes the request's origin rather than "*", even when any
// origin is allowed: that stays right should credentials ever be allowed,
// and Vary: Origin keeps shared caches from mixing answers. An origin not
// allowed gets no CORS header at all, so the browser refuses the answer
// to the page.
func (p *corsPolicy) apply(w http.ResponseWriter, r *http.Request) (answered bool) {
	h := w.Header()
	h["Vary"] = hdrVaryOrigin
	origin := r.Header.Get("Origin")
	preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
	allowed := origin != "" && p.allows(origin)
	if allowed {
		h["Access-Control-Allow-Origin"] = []string{origin}
	}
	if !preflight || origin == "" {
		if allowed {
			h["Access-Control-Expose-Headers"] = p.expose
		}
		return false
	}
	unreadBody(w, r)
	if allowed {
		h["Access-Control-Allow-Methods"] = p.methods
		h["Access-Control-Allow-Headers"] = p.headers
		h["Access-Control-Max-Age"] = p.maxAge
	}
	h.Set("X-Request-Id", requestID(r))
	w.WriteHeader(http.StatusNoContent)
	return true
}
