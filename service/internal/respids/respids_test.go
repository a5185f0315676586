package respids

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
)

func TestLocalMapBoundAndExpiry(t *testing.T) {
	m := newLocalMap(2)
	now := time.Now()
	m.put("a", Owner{Upstream: "x"}, now.Add(time.Hour))
	m.put("b", Owner{Upstream: "y"}, now.Add(time.Minute))
	m.put("c", Owner{Upstream: "z"}, now.Add(time.Hour)) // evicts a, the oldest
	tests := []struct {
		id   string
		at   time.Time
		want string // upstream; empty: not found
	}{
		{"a", now, ""},
		{"b", now, "y"},
		{"c", now, "z"},
		{"b", now.Add(2 * time.Minute), ""}, // expired
		{"c", now.Add(2 * time.Minute), "z"},
	}
	for _, tt := range tests {
		o, ok := m.get(tt.id, tt.at)
		if got := map[bool]string{true: o.Upstream}[ok]; got != tt.want {
			t.Errorf("get(%s) at +%s = %q, want %q", tt.id, tt.at.Sub(now), got, tt.want)
		}
	}
	// A deleted id put again takes a new slot; the old slot's turn does not
	// evict it.
	m.delete("c")
	m.put("c", Owner{Upstream: "z2"}, now.Add(time.Hour))
	m.put("d", Owner{Upstream: "w"}, now.Add(time.Hour))
	if o, ok := m.get("c", now); !ok || o.Upstream != "z2" {
		t.Errorf("re-put id lost: %v %v", o, ok)
	}
}

func TestStoreSharedThroughRedisAndLocalWhenDown(t *testing.T) {
	srv := testenv.StartRedis(t)
	var mu sync.Mutex
	local := map[string]int{}
	newStore := func() *Store {
		s, err := New(Options{RedisURL: srv.URL, Timeout: time.Second, OnLocal: func(op string) {
			mu.Lock()
			local[op]++
			mu.Unlock()
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := newStore(), newStore()
	ctx := context.Background()
	if err := a.Put(ctx, "resp_1", Owner{Upstream: "up-a", Model: "m"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if o, ok, err := b.Get(ctx, "resp_1"); err != nil || !ok || o != (Owner{Upstream: "up-a", Model: "m"}) {
		t.Fatalf("other store's Get = %v %v %v", o, ok, err)
	}
	if _, ok, err := b.Get(ctx, "resp_unknown"); err != nil || ok {
		t.Fatalf("unknown id found: %v %v", ok, err)
	}
	if err := b.Delete(ctx, "resp_1"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := b.Get(ctx, "resp_1"); ok {
		t.Fatal("deleted id still found")
	}

	srv.Stop()
	if err := a.Put(ctx, "resp_2", Owner{Upstream: "up-b", Model: "m"}, time.Hour); err == nil {
		t.Fatal("Put with Redis down reported no error")
	}
	o, ok, err := a.Get(ctx, "resp_2")
	if err == nil || !ok || o.Upstream != "up-b" {
		t.Fatalf("local fallback Get = %v %v %v", o, ok, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if local["put"] != 1 || local["get"] != 1 {
		t.Errorf("local uses counted = %v, want one put and one get", local)
	}
}

func TestStoreWithoutRedis(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_ = s.Put(ctx, "resp_x", Owner{Upstream: "u", Model: "m"}, time.Hour)
	if o, ok, err := s.Get(ctx, "resp_x"); err != nil || !ok || o.Upstream != "u" {
		t.Fatalf("Get = %v %v %v", o, ok, err)
	}
	if !s.Status().Up {
		t.Error("a store without Redis reports it down")
	}
}
