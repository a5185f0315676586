package redisguard

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
)

func TestNewClientRejectsBadURLsWithoutLeakingThem(t *testing.T) {
	const secret = "s3cr3t-pa55"
	tests := []struct {
		name string
		url  string
	}{
		{"empty", ""},
		{"unknown scheme", "http://user:" + secret + "@127.0.0.1:6379/0"},
		{"bad port", "redis://user:" + secret + "@127.0.0.1:notaport/0"},
		{"bad database", "redis://:" + secret + "@127.0.0.1:6379/zero"},
		{"control character", "redis://:" + secret + "@127.0.0.1:6379/0\x7f"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.url, 0)
			if err == nil {
				_ = c.Close()
				t.Fatal("NewClient accepted the URL")
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}

func TestNewClientTalksToRedis(t *testing.T) {
	srv := testenv.StartRedis(t)
	c, err := NewClient(srv.URL, time.Second)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
}

func TestRouteClientLogs(t *testing.T) {
	srv := testenv.StartRedis(t)
	srv.Stop() // a port where nothing answers

	logs := &testenv.SyncBuffer{}
	RouteClientLogs(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	c, err := NewClient(srv.URL, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING to a stopped server succeeded")
	}
	if logs.Count("component=go-redis") == 0 || logs.Count("level=DEBUG") == 0 {
		t.Fatalf("go-redis's dial failure did not reach the slog logger at debug:\n%s", logs.String())
	}
}
