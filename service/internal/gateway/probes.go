package gateway

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/relaygate/relaygate/service/internal/route"
)

// probes runs the upstreams' active health probes. Each state's upstreams
// with a probe share a *route.Health with the state before when the probe
// did not change, and so keep their probe; a reload that changes or removes
// one stops its goroutine before apply returns.
type probes struct {
	mu      sync.Mutex
	running map[*route.Health]*probeRun
	closed  bool
	client  *http.Client
}

type probeRun struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// probeClient is the probes' own client: a probe neither waits behind the
// upstream's requests for a connection nor follows a redirect (a 3xx is
// not healthy).
func probeClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// syncProbes starts the probes of st's upstreams that are not running and
// stops, and waits for, those st no longer has.
func (s *Server) syncProbes(st *state) {
	p := &s.probes
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	if p.running == nil {
		p.running = map[*route.Health]*probeRun{}
		p.client = probeClient()
	}
	want := map[*route.Health]*route.Upstream{}
	for _, u := range st.upstreams {
		if u.Health != nil {
			want[u.Health] = u
		}
	}
	var stopped []*probeRun
	for h, r := range p.running {
		if want[h] == nil {
			r.cancel()
			stopped = append(stopped, r)
			delete(p.running, h)
		}
	}
	for h, u := range want {
		if p.running[h] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		r := &probeRun{cancel: cancel, done: make(chan struct{})}
		p.running[h] = r
		name := u.Name
		go func() {
			defer close(r.done)
			h.Probe(ctx, p.client, func(err error) { s.metrics.HealthProbe(name, err == nil) })
		}()
	}
	p.mu.Unlock()
	for _, r := range stopped {
		<-r.done
	}
}

// runningProbes is how many probe goroutines run (tests).
func (s *Server) runningProbes() int {
	s.probes.mu.Lock()
	defer s.probes.mu.Unlock()
	return len(s.probes.running)
}

// Close stops the health probes and waits for them; the server goes on
// serving, every probed upstream keeping its last verdict.
func (s *Server) Close() error {
	p := &s.probes
	p.mu.Lock()
	p.closed = true
	running := p.running
	p.running = nil
	p.mu.Unlock()
	for _, r := range running {
		r.cancel()
	}
	for _, r := range running {
		<-r.done
	}
	if p.client != nil {
		p.client.CloseIdleConnections()
	}
	return nil
}

// errText is err's text, or "" for nil.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
