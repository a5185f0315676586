package route

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func poolOf(names ...string) []Target {
	var m []Target
	for _, n := range names {
		m = append(m, Target{Upstream: &Upstream{Name: n, Breaker: NewBreaker(3, time.Hour), Load: &Load{}}})
	}
	return m
}

func healthUp() *Health {
	h := NewHealth(ProbeSpec{HealthyThreshold: 1, UnhealthyThreshold: 1})
	h.Record(nil)
	return h
}

// runCounting runs n requests through chain, each answered at once, and
// counts them by the upstream that took them. A run that fails, or ends on
// no target, fails the test.
func runCounting(t *testing.T, chain Chain, n int) map[string]int {
	t.Helper()
	count := map[string]int{}
	for range n {
		out, err := chain.Run(context.Background(), Policy{Attempts: 1}, Hooks{}, func(_ context.Context, t *Target) Attempt {
			count[t.Upstream.Name]++
			return Attempt{}
		})
		if err != nil || out.Target == nil {
			t.Fatalf("Run = %+v, %v", out, err)
		}
	}
	return count
}

// TestLeastBusyTakesEqualsInTurn: with nothing outstanding every member is
// least busy, and the pool goes round them; with one busy, the others get
// the requests.
func TestLeastBusyTakesEqualsInTurn(t *testing.T) {
	pool := NewPool(poolOf("a", "b", "c"), LeastBusy, nil)
	chain := Chain{{Pool: pool}}
	count := runCounting(t, chain, 300)
	if count["a"] != 100 || count["b"] != 100 || count["c"] != 100 {
		t.Errorf("requests per member %v, want 100 each", count)
	}
	for _, m := range pool.Members {
		if n := m.Upstream.Load.Outstanding(); n != 0 {
			t.Errorf("%s has %d outstanding after every request ended", m.Upstream.Name, n)
		}
	}

	// b holds two requests: a and c share the next ones.
	pool.Members[1].Upstream.Load.add(2)
	count = runCounting(t, chain, 10)
	if count["b"] != 0 || count["a"] != 5 || count["c"] != 5 {
		t.Errorf("with b busy: %v, want a and c 5 each", count)
	}
}

// TestWeightedFollowsWeights: smooth weighted round robin gives each member
// exactly its share over a whole round.
func TestWeightedFollowsWeights(t *testing.T) {
	pool := NewPool(poolOf("a", "b", "c"), Weighted, []int{3, 1, 0})
	chain := Chain{{Pool: pool}}
	count := runCounting(t, chain, 500)
	// Weights 3, 1 and 1 (0 counts as 1): 300, 100, 100.
	if count["a"] != 300 || count["b"] != 100 || count["c"] != 100 {
		t.Errorf("requests per member %v, want 300/100/100", count)
	}
}

// TestPoolSkipsDownMembers: a member whose probe fails, whose breaker is
// open or that is disabled gets nothing; when none is left the pool fails
// as one link and the chain falls back.
func TestPoolSkipsDownMembers(t *testing.T) {
	members := poolOf("a", "b", "c", "d")
	members[0].Upstream.Health = NewHealth(ProbeSpec{HealthyThreshold: 1, UnhealthyThreshold: 1}) // pending: down
	for range 3 {
		members[1].Upstream.Breaker.Failure(errors.New("HTTP 503"), false)
	}
	members[2].Upstream.Disabled = "api_key: not set"
	members[3].Upstream.Health = healthUp()
	official := Target{Upstream: &Upstream{Name: "official", Breaker: NewBreaker(3, time.Hour)}}
	chain := Chain{{Pool: NewPool(members, LeastBusy, nil)}, official}
	count := runCounting(t, chain, 20)
	if count["d"] != 20 || len(count) != 1 {
		t.Errorf("requests %v, want all 20 on d, the only member up", count)
	}

	members[3].Upstream.Health.Record(errors.New("HTTP 503"))
	var fallbacks []string
	out, err := chain.Run(context.Background(), Policy{Attempts: 1}, Hooks{Fallback: func(from, to string) { fallbacks = append(fallbacks, from+">"+to) }},
		func(_ context.Context, t *Target) Attempt { return Attempt{} })
	if err != nil || out.Target.Upstream.Name != "official" {
		t.Fatalf("with no member up: %+v, %v; want the official fallback", out, err)
	}
	if len(out.Failures) != 4 {
		t.Errorf("failures %v, want one per member passed over", out.Failures)
	}
	if len(fallbacks) != 0 {
		t.Errorf("fallbacks %v: no member was asked, so none is a fallback's origin", fallbacks)
	}

	// Every member's circuit open: the chain reports circuits open, with
	// the cool-down left.
	only := poolOf("x", "y")
	for _, m := range only {
		for range 3 {
			m.Upstream.Breaker.Failure(errors.New("HTTP 503"), false)
		}
	}
	_, err = Chain{{Pool: NewPool(only, LeastBusy, nil)}}.Run(context.Background(), Policy{Attempts: 1}, Hooks{},
		func(context.Context, *Target) Attempt {
			t.Fatal("a member with an open circuit was asked")
			return Attempt{}
		})
	var ex *ExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("err = %v", err)
	}
	if open, retryIn := ex.CircuitsOpen(); !open || retryIn <= 0 {
		t.Errorf("CircuitsOpen = %v, %s; want open with the cool-down left", open, retryIn)
	}
}

// TestPoolRetriesOnAnotherMember: a failed try is retried at once on a
// member not tried yet (no backoff: the backoff here is an hour), a refusal
// moves on without using a try, and retries only come back to a member
// once every member has failed.
func TestPoolRetriesOnAnotherMember(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	members := poolOf("a", "b", "c")
	chain := Chain{{Pool: NewPool(members, LeastBusy, nil)}}
	p := Policy{Attempts: 2, BackoffMin: time.Hour, BackoffMax: time.Hour}
	var order []string
	var retries []string
	out, err := chain.Run(ctx, p, Hooks{Retry: func(u string) { retries = append(retries, u) }}, func(_ context.Context, t *Target) Attempt {
		order = append(order, t.Upstream.Name)
		switch len(order) {
		case 1:
			return Attempt{Err: errors.New("key refused"), Fallback: true}
		case 2:
			return Attempt{Err: errors.New("HTTP 503"), Retryable: true}
		}
		return Attempt{}
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(order) != 3 || order[0] == order[1] || order[1] == order[2] || order[0] == order[2] {
		t.Errorf("tries went to %v, want three different members", order)
	}
	if out.Target.Upstream.Name != order[2] || out.Attempts != 3 || len(retries) != 2 {
		t.Errorf("outcome %+v, retries %v", out, retries)
	}

	// Attempts bound the tries that failed retryably: with 2, a pool of
	// three whose members all fail stops after two.
	var n atomic.Int32
	_, err = chain.Run(ctx, Policy{Attempts: 2, BackoffMax: time.Hour}, Hooks{}, func(context.Context, *Target) Attempt {
		n.Add(1)
		return Attempt{Err: errors.New("HTTP 503"), Retryable: true}
	})
	var ex *ExhaustedError
	if !errors.As(err, &ex) || n.Load() != 2 || len(ex.Failures) != 2 {
		t.Errorf("err %v after %d tries, want exhausted after 2 with 2 failures", err, n.Load())
	}
}

// TestHealthThresholds: the first probe decides; later flips need their
// threshold of results in a row, and OnChange hears each flip.
func TestHealthThresholds(t *testing.T) {
	h := NewHealth(ProbeSpec{HealthyThreshold: 2, UnhealthyThreshold: 3})
	var flips []bool
	h.OnChange = func(up bool) { flips = append(flips, up) }
	if h.Up() || h.Err() == nil {
		t.Fatal("a probe not run yet counts as up")
	}
	h.Record(nil)
	if !h.Up() {
		t.Fatal("first pass did not bring it up")
	}
	down := errors.New("HTTP 503")
	h.Record(down)
	h.Record(down)
	if !h.Up() {
		t.Fatal("down after 2 of 3 failures")
	}
	h.Record(down)
	if h.Up() || h.Status().ConsecutiveFailures != 3 || h.Status().LastError != "HTTP 503" {
		t.Fatalf("after 3 failures: %+v", h.Status())
	}
	h.Record(nil)
	if h.Up() {
		t.Fatal("up after 1 of 2 passes")
	}
	h.Record(nil)
	if !h.Up() {
		t.Fatal("still down after 2 passes")
	}
	if len(flips) != 3 || !flips[0] || flips[1] || !flips[2] {
		t.Errorf("flips %v, want up, down, up", flips)
	}
	var nilHealth *Health
	if !nilHealth.Up() {
		t.Error("an upstream without a probe counts as down")
	}
}

// TestProbe runs a probe against a real server: it follows the status,
// sends the auth header only when told, and stops with its context.
func TestProbe(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusServiceUnavailable)
	var sawAuth atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawAuth.Store(r.Header.Get("Authorization"))
		if r.URL.Path != "/health" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	t.Cleanup(srv.Close)
	h := NewHealth(ProbeSpec{URL: srv.URL + "/health", Interval: 20 * time.Millisecond, Timeout: 5 * time.Second,
		HealthyThreshold: 1, UnhealthyThreshold: 1})
	flips := make(chan bool, 16)
	h.OnChange = func(up bool) { flips <- up }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	probes := make(chan error, 1024)
	go func() {
		defer close(done)
		h.Probe(ctx, srv.Client(), func(err error) { probes <- err })
	}()
	t.Cleanup(func() { cancel(); <-done })

	if err := <-probes; err == nil || err.Error() != "HTTP 503" {
		t.Fatalf("first probe: %v, want HTTP 503", err)
	}
	status.Store(http.StatusOK)
	if up := <-flips; !up {
		t.Fatal("did not come up")
	}
	if a, _ := sawAuth.Load().(string); a != "" {
		t.Errorf("probe sent Authorization %q without being told to", a)
	}
	status.Store(http.StatusServiceUnavailable)
	if up := <-flips; up {
		t.Fatal("did not go down")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("probe did not stop with its context")
	}
}
