package gateway

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/route"
)

// state is everything derived from one configuration. The server swaps it
// whole on reload, so a request sees one consistent config from start to end.
type state struct {
	cfg  *config.Config
	keys [][sha256.Size]byte
	// owners[i] is the named key keys[i] belongs to, nil for client_keys;
	// clientIDs[i] its opaque id for rate limits and the cache (addKeys).
	owners    []*keyPolicy
	clientIDs []string
	// named are the named keys' policies; limitedKeys: one of them has
	// limits or a budget in Redis.
	named       []*keyPolicy
	limitedKeys bool
	adminKey    [][sha256.Size]byte // none: /metrics and /health details are open
	models      map[string]*model
	upstreams   []*route.Upstream
	policy      route.Policy
	modelsJSON  []byte
	// modelJSON is each model's GET /v1/models/{id} answer, built once.
	modelJSON map[string][]byte
	cors      *corsPolicy // nil: CORS off
	// Header values built once per upstream: setting a header from a
	// shared slice costs no allocation per request (net/http never
	// modifies header values it is given).
	nameHeader map[*route.Upstream][]string
	authHeader map[*route.Upstream]authHeader

	// refs counts the requests running on this state (Server.acquire).
	// Once a reload has retired it, the connection pools it has and the
	// newest state does not (dropped, guarded by Server.retMu) are closed
	// when refs falls to zero: until then its requests may still use them.
	refs    atomic.Int64
	retired atomic.Bool
	dropped []http.RoundTripper
	// upstreamKey is each upstream's key, to remove from what it sends
	// (as bytes for answers, as a string for texts and headers).
	upstreamKey    map[*route.Upstream][]byte
	upstreamKeyStr map[*route.Upstream]string
	// budget bounds the memory of all whole answers held at once; a
	// reload keeps it unless its size changed (Server.apply).
	budget *byteBudget
}

// authHeader is how an upstream takes the gateway's key: the header's
// canonical name and its value.
type authHeader struct {
	name  string
	value []string
}

type model struct {
	name string
	// chain is the whole route; chains[api] the part of it whose upstreams
	// speak api (config apis:), built once so a request only looks it up.
	// An API no upstream of the route speaks has no entry.
	chain     route.Chain
	chains    map[string]route.Chain
	reference *route.Price
}

// chainFor is the model's route for api: nil when none of its upstreams
// speaks it.
func (m *model) chainFor(api string) route.Chain { return m.chains[api] }

// notServedFor is the client's error for a model whose route has no
// upstream that speaks api: the operator's configuration, named plainly.
func (m *model) notServedFor(api string) *apiError {
	names := chainUpstreams(m.chain)
	return &apiError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: "api_not_served", Param: "model",
		Message: fmt.Sprintf("Model %s is not served for the %s API: none of its upstreams (%s) declares it; set apis: on an upstream.",
			m.name, api, strings.Join(names, ", "))}
}

// chainUpstreams names every upstream of a chain, pools' members included,
// in order.
func chainUpstreams(c route.Chain) []string {
	var names []string
	for i := range c {
		for _, t := range c[i].Members() {
			names = append(names, t.Upstream.Name)
		}
	}
	return names
}

// stateHooks are the Server's callbacks that newState wires into what it
// builds: breakers' and health probes' changes, outstanding counts.
type stateHooks struct {
	breaker func(u *route.Upstream, from, to route.BreakerState)
	health  func(u *route.Upstream, up bool)
	load    func(name string) func(delta float64)
}

// newState builds routing state from cfg, reusing the upstreams (their
// connection pools and breakers) of prev whose connection settings did not
// change, so a reload neither drops warm connections nor forgets failures.
// An upstream keeps its outstanding count whatever changed, and its health
// verdict while its probe stays the same.
func newState(cfg *config.Config, prev *state, hooks stateHooks) *state {
	onBreaker := hooks.breaker
	st := &state{
		cfg:        cfg,
		models:     make(map[string]*model, len(cfg.Models)),
		modelJSON:  make(map[string][]byte, len(cfg.Models)),
		cors:       newCORS(cfg.CORS),
		nameHeader: map[*route.Upstream][]string{},
		authHeader: map[*route.Upstream]authHeader{},
		policy: route.Policy{
			Attempts:   cfg.Retry.Attempts,
			BackoffMin: cfg.Retry.BackoffMin.D(),
			BackoffMax: cfg.Retry.BackoffMax.D(),
		},
	}
	st.upstreamKey, st.upstreamKeyStr = map[*route.Upstream][]byte{}, map[*route.Upstream]string{}
	for _, k := range cfg.ClientKeys {
		st.keys = append(st.keys, sha256.Sum256([]byte(k)))
	}
	if cfg.Admin.Key != "" {
		st.adminKey = append(st.adminKey, sha256.Sum256([]byte(cfg.Admin.Key)))
	}
	old := map[string]*route.Upstream{}
	if prev != nil {
		for _, u := range prev.upstreams {
			old[u.Name] = u
		}
	}
	byName := map[string]*route.Upstream{}
	apis := map[*route.Upstream][]string{}
	for i := range cfg.Upstreams {
		uc := &cfg.Upstreams[i]
		u := &route.Upstream{
			Name:     uc.Name,
			BaseURL:  strings.TrimRight(uc.BaseURL, "/"),
			Timeout:  uc.Timeout.D(),
			Disabled: uc.Disabled,
		}
		if uc.APIKey != "" && uc.Auth != config.AuthXAPIKey {
			u.Auth = "Bearer " + uc.APIKey
		}
		if o, ok := old[uc.Name]; ok && o.BaseURL == u.BaseURL && sameTransport(prev.cfg, cfg, uc.Name) {
			u.Transport, u.Breaker = o.Transport, o.Breaker
		} else {
			u.Transport = newTransport(uc)
			u.Breaker = route.NewBreaker(cfg.CircuitBreaker.Failures, cfg.CircuitBreaker.Cooldown.D())
			if onBreaker != nil {
				u.Breaker.OnChange = func(from, to route.BreakerState) { onBreaker(u, from, to) }
			}
		}
		if o, ok := old[uc.Name]; ok && o.Load != nil {
			u.Load = o.Load
		} else {
			u.Load = &route.Load{}
			if hooks.load != nil {
				u.Load.OnChange = hooks.load(u.Name)
			}
		}
		if spec, ok := probeSpec(uc); ok {
			if o, ok := old[uc.Name]; ok && o.Health != nil && o.Health.Spec == spec {
				u.Health = o.Health
			} else {
				u.Health = route.NewHealth(spec)
				if hooks.health != nil {
					u.Health.OnChange = func(up bool) { hooks.health(u, up) }
				}
			}
		}
		st.upstreams = append(st.upstreams, u)
		byName[u.Name] = u
		apis[u] = uc.APIs
		st.nameHeader[u] = []string{u.Name}
		if uc.APIKey != "" {
			a := authHeader{name: "Authorization", value: []string{u.Auth}}
			if uc.Auth == config.AuthXAPIKey {
				a = authHeader{name: "X-Api-Key", value: []string{uc.APIKey}}
			}
			st.authHeader[u] = a
			st.upstreamKey[u], st.upstreamKeyStr[u] = []byte(uc.APIKey), uc.APIKey
		}
	}

	type modelEntry struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string       `json:"object"`
		Data   []modelEntry `json:"data"`
	}{Object: "list", Data: []modelEntry{}}
	created := time.Now().Unix()
	for i := range cfg.Models {
		mc := &cfg.Models[i]
		m := &model{name: mc.Name, chains: map[string]route.Chain{}}
		for _, e := range mc.Route {
			var members []route.Target
			for _, name := range e.Upstreams() {
				members = append(members, route.Target{
					Upstream: byName[name],
					Model:    e.Model,
					Price:    routePrice(cfg.PriceAt(mc, e, name)),
				})
			}
			if e.Pool == nil {
				t := members[0]
				m.chain = append(m.chain, t)
				for _, api := range apis[t.Upstream] {
					m.chains[api] = append(m.chains[api], t)
				}
				continue
			}
			whole := newPool(e, members)
			m.chain = append(m.chain, route.Target{Pool: whole})
			// Each API's chain has the members that speak it: the whole
			// pool when all do (one balance for the API's requests and
			// the others'), a pool of its own for a part.
			for _, api := range config.KnownAPIs {
				var part []route.Target
				for _, t := range members {
					if slices.Contains(apis[t.Upstream], api) {
						part = append(part, t)
					}
				}
				switch len(part) {
				case 0:
				case len(members):
					m.chains[api] = append(m.chains[api], route.Target{Pool: whole})
				default:
					m.chains[api] = append(m.chains[api], route.Target{Pool: newPool(e, part)})
				}
			}
		}
		if rp := mc.ReferencePrice; rp != nil {
			ref := routePrice(*rp)
			m.reference = &ref
		}
		st.models[m.name] = m
		entry := modelEntry{ID: mc.Name, Object: "model", Created: created, OwnedBy: "relaygate"}
		list.Data = append(list.Data, entry)
		st.modelJSON[mc.Name], _ = json.Marshal(entry)
	}
	st.modelsJSON, _ = json.Marshal(list)
	return st
}

// newPool builds a pool entry's members into a route.Pool.
func newPool(e config.RouteEntry, members []route.Target) *route.Pool {
	b := route.LeastBusy
	var weights []int
	if e.Balance == config.BalanceWeighted {
		b = route.Weighted
		for _, t := range members {
			weights = append(weights, e.Weights[t.Upstream.Name])
		}
	}
	return route.NewPool(members, b, weights)
}

// probeSpec is the health probe of an upstream in service that has one:
// its path on the base URL's host, with the upstream's key only when
// send_key asks for it.
func probeSpec(uc *config.Upstream) (route.ProbeSpec, bool) {
	h := uc.Health
	if h == nil || uc.Disabled != "" {
		return route.ProbeSpec{}, false
	}
	base, err := url.Parse(uc.BaseURL)
	if err != nil {
		return route.ProbeSpec{}, false // the loader refuses such a URL
	}
	spec := route.ProbeSpec{
		URL:              base.Scheme + "://" + base.Host + h.Path,
		Interval:         h.Interval.D(),
		Timeout:          h.Timeout.D(),
		HealthyThreshold: h.HealthyThreshold, UnhealthyThreshold: h.UnhealthyThreshold,
	}
	if h.SendKey && uc.APIKey != "" {
		spec.AuthName, spec.AuthValue = "Authorization", "Bearer "+uc.APIKey
		if uc.Auth == config.AuthXAPIKey {
			spec.AuthName, spec.AuthValue = "X-Api-Key", uc.APIKey
		}
	}
	return spec, true
}

func routePrice(p config.Price) route.Price {
	return route.Price{InputPerMTok: p.InputPerMTok, OutputPerMTok: p.OutputPerMTok,
		CacheWritePerMTok: p.CacheWrite(), CacheReadPerMTok: p.CacheRead()}
}

func sameTransport(a, b *config.Config, name string) bool {
	ua, _ := a.Upstream(name)
	ub, _ := b.Upstream(name)
	return ua != nil && ub != nil && ua.ConnectTimeout == ub.ConnectTimeout &&
		ua.MaxIdleConns == ub.MaxIdleConns && a.CircuitBreaker == b.CircuitBreaker
}

// newTransport keeps a warm keep-alive pool per upstream. Timeouts on the
// whole attempt come from the request's context, so the transport only
// bounds connecting.
func newTransport(u *config.Upstream) *http.Transport {
	d := &net.Dialer{Timeout: u.ConnectTimeout.D(), KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         d.DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: u.MaxIdleConns,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: u.ConnectTimeout.D(),
	}
}

// acquire returns the current state, counted as in use until release. A
// state is never gained once retired: should a reload swap it between the
// load and the count, the count is given back and the new state taken, so
// a retired state whose count reaches zero stays at zero.
func (s *Server) acquire() *state {
	for {
		st := s.state.Load()
		st.refs.Add(1)
		if s.state.Load() == st {
			return st
		}
		s.release(st)
	}
}

// release ends a request's use of st.
func (s *Server) release(st *state) {
	if st.refs.Add(-1) == 0 && st.retired.Load() {
		s.reap(st)
	}
}

// retire is told that next replaced prev. Every retired state still in use
// learns which of its connection pools next does not keep; a pool is
// closed by whichever of the states that have it stops being used last
// (closing one sooner is harmless: CloseIdleConnections spares
// connections in use, and makes the pool close them once they are idle).
// Without this a dropped pool's connections stay open until their idle
// timeout, one set per reload.
func (s *Server) retire(prev, next *state) {
	keep := make(map[http.RoundTripper]bool, len(next.upstreams))
	for _, u := range next.upstreams {
		keep[u.Transport] = true
	}
	s.retMu.Lock()
	defer s.retMu.Unlock()
	prev.retired.Store(true)
	s.retiredStates = append(s.retiredStates, prev)
	inUse := s.retiredStates[:0]
	for _, o := range s.retiredStates {
		for _, u := range o.upstreams {
			if !keep[u.Transport] && !slices.Contains(o.dropped, u.Transport) {
				o.dropped = append(o.dropped, u.Transport)
			}
		}
		if o.refs.Load() == 0 {
			closeIdle(o.dropped)
			continue
		}
		inUse = append(inUse, o)
	}
	clear(s.retiredStates[len(inUse):])
	s.retiredStates = inUse
}

// reap closes the dropped pools of a retired state no request uses any more.
func (s *Server) reap(st *state) {
	s.retMu.Lock()
	defer s.retMu.Unlock()
	i := slices.Index(s.retiredStates, st)
	if i < 0 || st.refs.Load() != 0 {
		return // reaped already, or by retire
	}
	s.retiredStates = slices.Delete(s.retiredStates, i, i+1)
	closeIdle(st.dropped)
}

func closeIdle(pools []http.RoundTripper) {
	for _, rt := range pools {
		if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}
