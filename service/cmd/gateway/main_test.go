package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
)

const key = "sk-test-client-key-0123456789"

func writeConfig(t *testing.T, path, upstream string, models ...string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "listen: \"127.0.0.1:0\"\nclient_keys: [%q]\nshutdown_timeout: 30s\nlog: {level: error}\n", key)
	fmt.Fprintf(&b, "upstreams:\n  - {name: sim, base_url: %q}\nmodels:\n", upstream+"/v1")
	for _, m := range models {
		fmt.Fprintf(&b, "  - {name: %s, route: [sim]}\n", m)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// streamInFlight opens a stream through the gateway at addr and reads its
// first event; the rest is the caller's to read (closed at the test's end).
func streamInFlight(t *testing.T, addr string) *bufio.Reader {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	rd := bufio.NewReader(resp.Body)
	if line, _ := rd.ReadString('\n'); !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first line %q", line)
	}
	return rd
}

// startGateway runs the command's loop in-process with a signal channel
// the test controls, buffered by sigBuffer: with 0, a send returns once the
// loop has taken the signal.
func startGateway(t *testing.T, cfgPath string, sigBuffer int) (addr string, sigs chan os.Signal, done chan error) {
	t.Helper()
	sigs = make(chan os.Signal, sigBuffer)
	done = make(chan error, 1)
	started := make(chan net.Addr, 1)
	go func() { done <- run(cfgPath, sigs, func(a net.Addr) { started <- a }) }()
	select {
	case a := <-started:
		return a.String(), sigs, done
	case err := <-done:
		t.Fatalf("gateway did not start: %v", err)
	case <-time.After(relGuard):
		t.Fatal("gateway did not start")
	}
	return "", nil, nil
}

func TestSIGTERMFinishesStreamsInFlight(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n")
	}))
	defer up.Close()
	cfgPath := filepath.Join(t.TempDir(), "gateway.yaml")
	writeConfig(t, cfgPath, up.URL, "m")
	addr, sigs, done := startGateway(t, cfgPath, 1)

	rd := streamInFlight(t, addr)

	sigs <- syscall.SIGTERM
	// New connections are refused once the listener closes …
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// … while the stream in flight runs to its end.
	close(release)
	rest, err := io.ReadAll(rd)
	if err != nil || !strings.Contains(string(rest), "data: [DONE]") {
		t.Fatalf("stream in flight did not complete: %q %v", rest, err)
	}
	if err := testenv.Receive(t, done, 30*time.Second, "the gateway exiting after its last stream"); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func TestSIGHUPReloadsAndKeepsConfigOnError(t *testing.T) {
	up := httptest.NewServer(http.NotFoundHandler())
	defer up.Close()
	cfgPath := filepath.Join(t.TempDir(), "gateway.yaml")
	writeConfig(t, cfgPath, up.URL, "m1")
	addr, sigs, done := startGateway(t, cfgPath, 1)
	defer func() { sigs <- syscall.SIGTERM; <-done }()

	models := func() string {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/models", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(models(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("models never listed %q: %s", want, models())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	writeConfig(t, cfgPath, up.URL, "m1", "m2")
	sigs <- syscall.SIGHUP
	waitFor(`"m2"`)

	if err := os.WriteFile(cfgPath, []byte("upstreams: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sigs <- syscall.SIGHUP
	// A reload after the broken one proves the broken one was handled.
	writeConfig(t, cfgPath, up.URL, "m1", "m2", "m3")
	sigs <- syscall.SIGHUP
	waitFor(`"m3"`)
}

func TestBrokenConfigFailsAtStart(t *testing.T) {
	cfgPath := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := os.WriteFile(cfgPath, []byte("listen: \":0\"\nupstreams:\n  - {name: a, base_url: \"http://127.0.0.1:1/v1\", timout: 3s}\nmodels: [{name: m, route: [a]}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(cfgPath, make(chan os.Signal), nil)
	if err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), `unknown key "timout"`) {
		t.Fatalf("err = %v, want line 3 and the unknown key", err)
	}
}

// TestSecondSignalCutsTheDrain: while the gateway waits for a stream in
// flight, a second SIGTERM (Ctrl-C pressed again) ends the wait at once.
func TestSecondSignalCutsTheDrain(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // never ends by itself
	}))
	defer up.Close()
	cfgPath := filepath.Join(t.TempDir(), "gateway.yaml")
	writeConfig(t, cfgPath, up.URL, "m") // shutdown_timeout: 30s
	addr, sigs, done := startGateway(t, cfgPath, 1)

	streamInFlight(t, addr)
	sigs <- syscall.SIGTERM
	sigs <- syscall.SIGTERM // the channel holds one: this one waits for the drain to take it
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "second signal") {
			t.Errorf("exit error %v, want the second signal named", err)
		}
	case <-time.After(20 * time.Second): // below the 30s shutdown_timeout
		t.Fatal("the gateway went on waiting for its stream after a second signal")
	}
}
