package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestByteBudget(t *testing.T) {
	var gauge atomic.Int64 // the gauge is told from every goroutine that acquires
	b := newByteBudget(100, func(d float64) { gauge.Add(int64(d)) })
	ctx := context.Background()
	if err := b.acquire(ctx, 60, false); err != nil {
		t.Fatal(err)
	}
	if err := b.acquire(ctx, 101, false); !errors.As(err, new(errBufferBusy)) {
		t.Errorf("more than the whole budget: %v, want errBufferBusy at once", err)
	}

	// A waiter that does not fit waits; its context ending gives up.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := b.acquire(short, 50, false); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("acquire past the budget: %v, want the deadline", err)
	}

	// Waiters are served in order: a small one arriving after a large
	// one waits behind it, though it would fit now.
	got := make(chan string, 2)
	go func() {
		if b.acquire(ctx, 80, false) == nil {
			got <- "large"
		}
	}()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.waiters.Len() == 1 })
	go func() {
		if b.acquire(ctx, 10, false) == nil {
			got <- "small"
		}
	}()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.waiters.Len() == 2 })
	b.mu.Lock()
	if b.used != 60 {
		t.Errorf("used %d: the small one went ahead of the large one", b.used)
	}
	b.mu.Unlock()
	// An answer that already holds budget and grows goes ahead of both.
	if !b.tryAcquire(30, true) {
		t.Error("a growing answer waited behind others for budget that is free")
	}
	b.release(90)
	if a, c := <-got, <-got; a == c {
		t.Errorf("served %s twice", a)
	}
	b.release(80)
	b.release(10)
	if b.used != 0 || gauge.Load() != 0 {
		t.Errorf("after every release: used %d, gauge %v", b.used, gauge.Load())
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestAnswerBufferSizing: an announced length is allocated once, exactly;
// an unannounced answer grows within its limit; both are reserved and
// given back.
func TestAnswerBufferSizing(t *testing.T) {
	ctx := context.Background()
	b := newByteBudget(64<<20, nil)
	cases := []struct {
		name      string
		size      int
		announced bool
		limit     int
		wantErr   error
	}{
		{"small, announced", 1000, true, 1 << 20, nil},
		{"large, announced", 5 << 20, true, 8 << 20, nil},
		{"large, unannounced", 5 << 20, false, 8 << 20, nil},
		{"over the limit, unannounced", 9 << 20, false, 8 << 20, errTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := int64(-1)
			if tc.announced {
				n = int64(tc.size)
			}
			var ab answerBuffer
			if err := ab.init(ctx, ctx, b, n); err != nil {
				t.Fatal(err)
			}
			data, err := ab.readFrom(ctx, ctx, io.LimitReader(zeroReader{}, int64(tc.size)), tc.limit)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("readFrom: %v, want %v", err, tc.wantErr)
			}
			if err == nil && len(data) != tc.size {
				t.Errorf("read %d bytes, want %d", len(data), tc.size)
			}
			if tc.announced && tc.size > maxPooledResponse && cap(data) != tc.size+1 {
				t.Errorf("announced %d bytes: buffer of %d", tc.size, cap(data))
			}
			if ab.reserved < int64(cap(data)) || ab.reserved > int64(tc.limit)+1 {
				t.Errorf("reserved %d for a buffer of %d (limit %d)", ab.reserved, cap(data), tc.limit)
			}
			ab.release()
			if b.used != 0 {
				t.Errorf("%d bytes still reserved after release", b.used)
			}
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestEmbeddingsAnswerLimit: an embeddings answer may be larger than a
// chat answer, up to its own limit, and both are refused from their
// Content-Length alone above it.
func TestEmbeddingsAnswerLimit(t *testing.T) {
	const size = maxChatAnswerBytes + 1<<20
	up := newFakeUpstream(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasSuffix(r.URL.Path, "/embeddings") {
			pad := size - len(`{"object":"list","data":[{"embedding":[0]}],"pad":""}`)
			body := `{"object":"list","data":[{"embedding":[0]}],"pad":"` + strings.Repeat("0", pad) + `"}`
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = io.WriteString(w, body)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = io.WriteString(w, `{"id":`)
	})
	srv, _, _ := newGateway(t, gwOpts{}, up)
	if res := post(t, srv.URL, "/v1/embeddings", `{"model":"m","input":"x"}`); res.status != http.StatusOK || len(res.body) != size {
		t.Errorf("embeddings answer of %d bytes: %d, %d bytes", size, res.status, len(res.body))
	}
	res := post(t, srv.URL, "/v1/chat/completions", chatBody)
	_, _, code := openAIError(t, res.body)
	if res.status != http.StatusBadGateway || code != "upstream_answer_too_large" {
		t.Errorf("chat answer announcing %d bytes: %d %s", size, res.status, res.body)
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("%d upstream calls, want 2 (a too-large answer is not retried)", n)
	}
}

// TestBudgetSizeFollowsReload: a reload with another buffer_budget_bytes
// takes a new budget; one with the same keeps it, and what it holds.
func TestBudgetSizeFollowsReload(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	_, gw, _ := newGateway(t, gwOpts{}, up)
	first := gw.state.Load().budget
	gw.Reload(gatewayConfig(t, gwOpts{}, up))
	if gw.state.Load().budget != first {
		t.Error("a reload with the same budget size replaced the budget")
	}
	gw.Reload(gatewayConfig(t, gwOpts{extra: fmt.Sprintf("buffer_budget_bytes: %d\n", 2<<20)}, up))
	if b := gw.state.Load().budget; b == first || b.size != 2<<20 {
		t.Errorf("budget after a reload to 2 MiB: size %d", b.size)
	}
}
