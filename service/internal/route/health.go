package route

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// ProbeSpec is what an upstream's active health probe asks: a GET of URL
// every Interval, a 2xx within Timeout being a pass. Comparable, so a
// reload that leaves it as it was keeps the probe and its verdict.
type ProbeSpec struct {
	URL      string
	Interval time.Duration
	Timeout  time.Duration
	// HealthyThreshold passes in a row bring a down upstream up;
	// UnhealthyThreshold failures in a row take an up one down.
	HealthyThreshold, UnhealthyThreshold int
	// AuthName and AuthValue are a header to send (the upstream's key,
	// where the probed path needs it); empty: none.
	AuthName, AuthValue string
}

// Health is an upstream's probe verdict. It starts down ("pending"): a
// model server may still be loading when the gateway starts, and a client
// should not be the first to find out. Up is read lock-free on every
// routing decision.
type Health struct {
	Spec ProbeSpec
	// OnChange, when set, is told each time the verdict flips. It runs
	// with Health's lock released, on the probe's goroutine.
	OnChange func(up bool)

	up atomic.Bool

	mu       sync.Mutex
	probed   bool
	passes   int // in a row
	failures int // in a row
	last     time.Time
	lastErr  error
}

// NewHealth returns the verdict of a probe not run yet: down.
func NewHealth(spec ProbeSpec) *Health {
	return &Health{Spec: spec}
}

// Up says whether the upstream passes its probe; a nil Health (no probe)
// always does.
func (h *Health) Up() bool { return h == nil || h.up.Load() }

// Err says why the upstream is down by its probe (nil when up).
func (h *Health) Err() error {
	if h.Up() {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.probed {
		return errors.New("health probe has not passed yet")
	}
	return fmt.Errorf("health probe failing: %w", h.lastErr)
}

// HealthStatus is a snapshot for /health.
type HealthStatus struct {
	Up                  bool      `json:"up"`
	Pending             bool      `json:"pending,omitempty"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	LastProbe           time.Time `json:"last_probe,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
}

// Status returns the verdict and what it rests on.
func (h *Health) Status() HealthStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := HealthStatus{Up: h.up.Load(), Pending: !h.probed, ConsecutiveFailures: h.failures, LastProbe: h.last}
	if h.lastErr != nil {
		s.LastError = h.lastErr.Error()
	}
	return s
}

// Record counts one probe's result (nil: a pass) and flips the verdict
// once a threshold is reached. The first result of all decides at once:
// there is no verdict yet for a threshold to protect.
func (h *Health) Record(err error) {
	h.mu.Lock()
	was := h.up.Load()
	first := !h.probed
	h.probed, h.last = true, time.Now()
	now := was
	if err == nil {
		h.passes++
		h.failures, h.lastErr = 0, nil
		if first || h.passes >= h.Spec.HealthyThreshold {
			now = true
		}
	} else {
		h.failures++
		h.passes, h.lastErr = 0, err
		if first || h.failures >= h.Spec.UnhealthyThreshold {
			now = false
		}
	}
	h.up.Store(now)
	h.mu.Unlock()
	if now != was && h.OnChange != nil {
		h.OnChange(now)
	}
}

// maxProbeBody bounds what a probe reads of an answer: it only needs the
// status, but reading a little lets the connection be reused.
const maxProbeBody = 64 << 10

// Probe runs the probe until ctx ends: once at once, then every Interval.
// onProbe, when set, is told each result (for metrics). A probe ends with
// ctx: the probe in flight is cancelled and not counted.
func (h *Health) Probe(ctx context.Context, client *http.Client, onProbe func(err error)) {
	t := time.NewTicker(h.Spec.Interval)
	defer t.Stop()
	for {
		err := h.probeOnce(ctx, client)
		if ctx.Err() != nil {
			return
		}
		if onProbe != nil {
			// Before Record: whoever sees the verdict flip finds the
			// probe that flipped it counted.
			onProbe(err)
		}
		h.Record(err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeOnce is one GET of the probe's URL. Its error names the status or
// the network failure only: never the URL's query, a header or the body.
func (h *Health) probeOnce(ctx context.Context, client *http.Client) error {
	ctx, cancel := context.WithTimeout(ctx, h.Spec.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.Spec.URL, nil)
	if err != nil {
		return fmt.Errorf("building the probe: %w", err)
	}
	if h.Spec.AuthName != "" {
		req.Header.Set(h.Spec.AuthName, h.Spec.AuthValue)
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("no answer within timeout %s", h.Spec.Timeout)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxProbeBody))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}
