package testenv

import (
	"strings"
	"testing"
)

func TestStartRedisStopRestart(t *testing.T) {
	r := StartRedis(t)

	if !strings.HasPrefix(r.Addr, "127.0.0.1:") {
		t.Errorf("Addr = %q, want a 127.0.0.1 address", r.Addr)
	}
	if want := "redis://" + r.Addr + "/0"; r.URL != want {
		t.Errorf("URL = %q, want %q", r.URL, want)
	}
	if err := pingRedis(r.Addr); err != nil {
		t.Fatalf("PING after StartRedis: %v", err)
	}

	r.Stop()
	if err := pingRedis(r.Addr); err == nil {
		t.Fatal("PING succeeded after Stop, want a refused connection")
	}
	r.Stop() // stopping twice is allowed

	addr := r.Addr
	r.Restart()
	if r.Addr != addr {
		t.Errorf("Restart moved the server from %s to %s", addr, r.Addr)
	}
	if err := pingRedis(r.Addr); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
}

func TestStartRedisGivesEachTestItsOwnServer(t *testing.T) {
	a, b := StartRedis(t), StartRedis(t)
	if a.Addr == b.Addr {
		t.Fatalf("two servers share %s", a.Addr)
	}
	a.Stop()
	if err := pingRedis(b.Addr); err != nil {
		t.Fatalf("stopping one server affected the other: %v", err)
	}
}
