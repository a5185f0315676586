package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// requestTimeout bounds one non-streamed request. Answers take
// milliseconds; it only keeps a wedged subject from stalling the suite.
const requestTimeout = 30 * time.Second

// run is what one subject did in one round of one scenario; rounds add up.
type run struct {
	latencies sample
	ok        int
	errors    int
	firstErr  string
	cacheHits int
	elapsed   time.Duration
	maxRSS    int64

	// streams only
	ttfb, ttft, gaps sample
	heldBack         int
	// idle streams only
	idle *IdleStreams
}

func (r *run) fail(msg string) {
	r.errors++
	if r.firstErr == "" {
		r.firstErr = msg
	}
}

// add merges another round into r.
func (r *run) add(o run) {
	r.latencies = append(r.latencies, o.latencies...)
	r.ttfb = append(r.ttfb, o.ttfb...)
	r.ttft = append(r.ttft, o.ttft...)
	r.gaps = append(r.gaps, o.gaps...)
	r.ok += o.ok
	r.errors += o.errors
	if r.firstErr == "" {
		r.firstErr = o.firstErr
	}
	r.cacheHits += o.cacheHits
	r.heldBack += o.heldBack
	r.elapsed += o.elapsed
	r.maxRSS = max(r.maxRSS, o.maxRSS)
	if o.idle != nil {
		r.idle = o.idle
	}
}

// load is one vegeta attack: open loop at rate (requests per second) when
// rate > 0, else closed loop with workers concurrent clients that each send
// the next request when the last is answered.
type load struct {
	rate     int
	workers  int
	duration time.Duration
	bodies   [][]byte
}

// attack runs l against e. Every answer is checked: a 200 carrying a chat
// completion is a success, anything else an error, so a subject that
// answers fast with errors cannot look fast.
func attack(ctx context.Context, e entry, l load) run {
	targets := make([]vegeta.Target, len(l.bodies))
	for i, b := range l.bodies {
		targets[i] = vegeta.Target{
			Method: http.MethodPost,
			URL:    e.subject.url(e.role, "/v1/chat/completions"),
			Body:   b,
			Header: http.Header{"Authorization": {e.subject.auth}, "Content-Type": {"application/json"}},
		}
	}
	client := &http.Client{Transport: e.subject.client.Transport, Timeout: requestTimeout}
	opts := []func(*vegeta.Attacker){vegeta.Client(client)}
	var pacer vegeta.Pacer = vegeta.Rate{Freq: l.rate, Per: time.Second}
	if l.rate <= 0 {
		opts = append(opts, vegeta.Workers(uint64(l.workers)), vegeta.MaxWorkers(uint64(l.workers)))
		pacer = vegeta.Rate{Freq: 0, Per: time.Second}
	}
	atk := vegeta.NewAttacker(opts...)

	stopRSS := sampleRSS(e)
	var r run
	start := time.Now()
	results := atk.Attack(vegeta.NewStaticTargeter(targets...), pacer, l.duration, e.label)
	// Ctrl-C stops new requests; those in flight finish in milliseconds.
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-ctx.Done():
			atk.Stop()
		case <-finished:
		}
	}()
	for res := range results {
		if err := checkCompletion(res); err != nil {
			r.fail(err.Error())
			continue
		}
		r.ok++
		r.latencies = append(r.latencies, res.Latency)
		if res.Headers.Get("X-Cache") == "HIT" {
			r.cacheHits++
		}
	}
	r.elapsed = time.Since(start)
	r.maxRSS = stopRSS()
	return r
}

var completionMark = []byte(`"object":"chat.completion"`)

// prime sends every body once, one after the other, so that a cache holds
// all of them before the measured rounds, however short the warm-up.
func prime(ctx context.Context, e entry, bodies [][]byte) error {
	client := &http.Client{Transport: e.subject.client.Transport, Timeout: requestTimeout}
	for _, b := range bodies {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.subject.url(e.role, "/v1/chat/completions"), bytes.NewReader(b))
		if err != nil {
			return err
		}
		req.Header = http.Header{"Authorization": {e.subject.auth}, "Content-Type": {"application/json"}}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("prime %s: %w", e.label, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("prime %s: %w", e.label, err)
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, completionMark) {
			return fmt.Errorf("prime %s: HTTP %d: %s", e.label, resp.StatusCode, truncate(body, 200))
		}
	}
	return nil
}

func checkCompletion(res *vegeta.Result) error {
	switch {
	case res.Error != "" && res.Code == 0:
		return fmt.Errorf("request failed: %s", res.Error)
	case res.Code != http.StatusOK:
		return fmt.Errorf("HTTP %d: %s", res.Code, truncate(res.Body, 200))
	case !bytes.Contains(res.Body, completionMark):
		return fmt.Errorf("HTTP 200 without a chat completion: %s", truncate(res.Body, 200))
	}
	return nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// rssInterval is how often a subject's resident set is read during a run.
const rssInterval = 200 * time.Millisecond

// sampleRSS reads the subject's resident set until the returned function
// is called, which returns the largest value seen (0 when none could be
// read: the report then shows no memory rather than a wrong one).
func sampleRSS(e entry) (stop func() int64) {
	var (
		mu   sync.Mutex
		peak int64
	)
	read := func() {
		if n, err := e.subject.rss(e.role); err == nil {
			mu.Lock()
			peak = max(peak, n)
			mu.Unlock()
		}
	}
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(rssInterval)
		defer t.Stop()
		for {
			read()
			select {
			case <-quit:
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 {
		close(quit)
		<-finished
		read()
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}
