package reliability

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// secret is a value that must never be seen in the clear. core is its
// distinctive middle, so a truncated or re-prefixed copy is caught too.
type secret struct{ name, value, core string }

func newSecret(name, prefix, core string) secret {
	return secret{name: name, value: prefix + core + "-0123456789abcdef", core: core}
}

var (
	upstreamKey        = newSecret("upstream key", "sk-up-", "UPSTREAMKEY7f3a")
	refusedUpstreamKey = newSecret("upstream key the upstream refuses", "sk-up-", "REFUSEDKEY91c2")
	limitedClientKey   = newSecret("rate-limited client key", "sk-gw-", "LIMITEDKEY5d0e")
	guessedClientKey   = newSecret("wrong client key", "sk-gw-", "GUESSEDKEY8b4f")
	redisPassword      = newSecret("Redis password", "pw-", "REDISPASSWORD2a6")
	wrongRedisPassword = newSecret("wrong Redis password", "pw-", "WRONGREDISPW3e9")
	adminKey           = newSecret("admin key", "sk-admin-", "ADMINKEY4c1b")
	// The suite's client key is a secret here too.
	mainClientKey = secret{name: "client key", value: clientKey, core: strings.TrimPrefix(clientKey, "sk-")}
)

// redisCommand sends one command in RESP and returns the first reply line.
func redisCommand(t testing.TB, addr string, args ...string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, guard)
	if err != nil {
		t.Fatalf("redis %s: %v", addr, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(guard)); err != nil {
		t.Fatal(err)
	}
	cmd := fmt.Sprintf("*%d\r\n", len(args))
	for _, a := range args {
		cmd += fmt.Sprintf("$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, cmd); err != nil {
		t.Fatalf("redis %s: %v", args[0], err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("redis %s: %v", args[0], err)
	}
	return strings.TrimSpace(line)
}

// transcript is everything a session showed to the outside.
type transcript struct {
	strings.Builder
}

func (tr *transcript) reply(what string, r reply) {
	fmt.Fprintf(tr, "== %s: %d %v\n", what, r.status, r.err)
	keys := make([]string, 0, len(r.header))
	for k := range r.header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(tr, "%s: %s\n", k, strings.Join(r.header[k], ", "))
	}
	tr.Write(r.body)
	tr.WriteString("\n")
}

// TestSecretsNeverLeak runs a whole session — answers, streams, every error
// a client can get, an upstream refusing the gateway's key, a Redis with a
// password, a Redis with the wrong one, a dead Redis, rate limiting, the
// admin key on /metrics and /health — and
// captures everything the gateway shows: log lines (the http.Server's and
// go-redis's included), every response's headers and body, /metrics and
// /health. No secret may appear in any of it.
func TestSecretsNeverLeak(t *testing.T) {
	r := testenv.StartRedis(t)
	if got := redisCommand(t, r.Addr, "CONFIG", "SET", "requirepass", redisPassword.value); got != "+OK" {
		t.Fatalf("redis CONFIG SET requirepass: %s", got)
	}
	good := startSim(t, simAnswer(upstreamsim.Config{APIKey: upstreamKey.value}))
	refusing := startSim(t, simAnswer(upstreamsim.Config{APIKey: upstreamKey.value}))
	failing := startSim(t, simAnswer(upstreamsim.Config{APIKey: upstreamKey.value, FailureRate: 1, FailureStatuses: []int{500, 503}}))
	// Every attempt rate limited is a 429 of its own (with Retry-After).
	limiting := startSim(t, simAnswer(upstreamsim.Config{APIKey: upstreamKey.value, FailureRate: 1, FailureStatuses: []int{429}, RetryAfter: time.Second}))
	hanging := startSim(t, simAnswer(upstreamsim.Config{APIKey: upstreamKey.value, HangRate: 1}))
	cutting := startSim(t, simAnswer(upstreamsim.Config{APIKey: upstreamKey.value, CutRate: 1, CutAfterChunks: 2}))

	spec := func(redisPW secret) gatewaySpec {
		return gatewaySpec{
			upstreams: []upstreamSpec{
				{name: "good", url: good.base, key: upstreamKey.value},
				{name: "refusing", url: refusing.base, key: refusedUpstreamKey.value},
				{name: "failing", url: failing.base, key: upstreamKey.value},
				{name: "limiting", url: limiting.base, key: upstreamKey.value},
				{name: "hanging", url: hanging.base, key: upstreamKey.value, timeout: "200ms"},
				{name: "cutting", url: cutting.base, key: upstreamKey.value},
			},
			route:  []string{"good"},
			models: map[string][]string{"refused": {"refusing"}, "failing": {"failing"}, "quota": {"limiting"}, "slow": {"hanging"}, "cut": {"cutting"}},
			keys:   []string{clientKey, limitedClientKey.value},
			extra: fmt.Sprintf("max_body_bytes: 4096\ncache: {redis_url: %q, ttl: 1m, timeout: 200ms}\nrate_limit: {rpm: 30}\nlog: {level: debug}\nadmin: {key: %q}\n",
				fmt.Sprintf("redis://:%s@%s/0", redisPW.value, r.Addr), adminKey.value),
		}
	}
	logs := &testenv.SyncBuffer{}
	gw := startGateway(t, spec(redisPassword).yaml(), logs)
	c := newClient(t, 4)
	var tr transcript

	send := func(what string, want int, req *http.Request) reply {
		t.Helper()
		got := do(c, req)
		tr.reply(what, got)
		if got.status != want {
			t.Errorf("%s: status %d, want %d: %s", what, got.status, want, got)
		}
		return got
	}
	rawReq := func(method, path, key, body string, hdr ...string) *http.Request {
		req := mustRequest(t, method, gw.URL+path, body)
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		return req
	}
	ctx := context.Background()
	const det = `{"model":"m","temperature":0,"messages":[{"role":"user","content":"a deterministic question"}]}`

	// Answers, from the upstream and from the cache.
	if got := send("answer, stored", 200, rawReq("POST", "/v1/chat/completions", clientKey, det)); got.header.Get("X-Cache") != "MISS" {
		t.Errorf("the cache with a password does not work: X-Cache %q", got.header.Get("X-Cache"))
	}
	if got := send("answer from the cache", 200, rawReq("POST", "/v1/chat/completions", clientKey, det)); got.header.Get("X-Cache") != "HIT" {
		t.Errorf("the cache with a password does not work: X-Cache %q", got.header.Get("X-Cache"))
	}
	send("stream", 200, chat(ctx, gw.URL, clientKey, "m", true, "stream me"))
	send("stream with usage", 200, chat(ctx, gw.URL, clientKey, "m", true, "stream me!"))
	send("embeddings", 200, rawReq("POST", "/v1/embeddings", clientKey, `{"model":"m","input":"embed me"}`))
	send("models", 200, rawReq("GET", "/v1/models", clientKey, ""))

	// Every error a client can cause.
	send("invalid JSON", 400, rawReq("POST", "/v1/chat/completions", clientKey, `{"model":`))
	send("wrong type", 400, rawReq("POST", "/v1/chat/completions", clientKey, `{"model":"m","messages":"x"}`))
	send("unknown model", 404, chat(ctx, gw.URL, clientKey, "no-such-model", false, "x"))
	send("unknown route", 404, rawReq("GET", "/v1/secrets", clientKey, ""))
	send("wrong method", 405, rawReq("DELETE", "/v1/chat/completions", clientKey, ""))
	send("too large", 413, rawReq("POST", "/v1/chat/completions", clientKey, `{"model":"m","messages":[{"role":"user","content":"`+strings.Repeat("x", 5000)+`"}]}`))
	send("no key", 401, chat(ctx, gw.URL, "", "m", false, "x"))
	send("wrong key", 401, chat(ctx, gw.URL, guessedClientKey.value, "m", false, "x"))
	send("the right key with something after it", 401, chat(ctx, gw.URL, clientKey+"x", "m", false, "x"))
	send("the right key as Basic auth", 401, rawReq("POST", "/v1/chat/completions", "", det,
		"Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("user:"+clientKey))))

	// Every error an upstream can cause.
	if got := send("upstream refuses the gateway's key", 502, chat(ctx, gw.URL, clientKey, "refused", false, "x")); !strings.Contains(string(got.body), "upstream_auth_failed") {
		t.Errorf("upstream 401: %s", got)
	}
	if refusing.Stats().Rejected[upstreamsim.RejectUnauthorized] == 0 {
		t.Error("the refusing upstream never refused a key")
	}
	send("upstream fails", 502, chat(ctx, gw.URL, clientKey, "failing", false, "x"))
	if got := send("upstream rate limits every attempt", 429, chat(ctx, gw.URL, clientKey, "quota", false, "x")); got.header.Get("Retry-After") != "1" {
		t.Errorf("upstream quota: Retry-After %q, want the upstream's 1: %s", got.header.Get("Retry-After"), got)
	}
	send("upstream hangs", 504, chat(ctx, gw.URL, clientKey, "slow", false, "x"))
	if got := send("stream cut", 200, chat(ctx, gw.URL, clientKey, "cut", true, "x")); !strings.Contains(string(got.body), "stream_interrupted") {
		t.Errorf("cut stream: %s", got)
	}

	// Rate limiting.
	limited := 0
	for i := range 40 {
		got := do(c, chat(ctx, gw.URL, limitedClientKey.value, "m", false, fmt.Sprintf("limited %d", i)))
		tr.reply("rate limited key", got)
		if got.status == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited == 0 {
		t.Error("rate limiting never refused the limited key: the session did not exercise it")
	}

	// A second replica with the wrong Redis password, and then no Redis.
	gw2 := startGateway(t, spec(wrongRedisPassword).yaml(), logs)
	got := do(c, mustRequest(t, "POST", gw2.URL+"/v1/chat/completions", det))
	tr.reply("replica without a key", got)
	req := rawReq("POST", "/v1/chat/completions", clientKey, det)
	req.URL.Host = strings.TrimPrefix(gw2.URL, "http://")
	if got := send("replica with the wrong Redis password", 200, req); got.header.Get("X-Cache") == "HIT" {
		t.Error("a replica with the wrong Redis password hit the cache")
	}
	r.Stop()
	send("answer with Redis dead", 200, rawReq("POST", "/v1/chat/completions", clientKey, det))
	send("stream with Redis dead", 200, chat(ctx, gw.URL, clientKey, "m", true, "stream me"))

	admin := func(req *http.Request) *http.Request {
		req.Header.Set("Authorization", "Bearer "+adminKey.value)
		return req
	}
	for _, g := range []*gateway{gw, gw2} {
		send("health", 200, mustRequest(t, "GET", g.URL+"/health", ""))
		if got := send("health with the admin key", 200, admin(mustRequest(t, "GET", g.URL+"/health", ""))); !strings.Contains(string(got.body), `"cache"`) {
			t.Errorf("/health with the admin key has no details: %s", got)
		}
		send("ready", 200, mustRequest(t, "GET", g.URL+"/ready", ""))
		send("metrics without the admin key", 401, mustRequest(t, "GET", g.URL+"/metrics", ""))
		if got := send("metrics", 200, admin(mustRequest(t, "GET", g.URL+"/metrics", ""))); !strings.Contains(string(got.body), "relaygate_requests_total") {
			t.Errorf("/metrics: %s", got)
		}
	}

	out := map[string]string{"responses": tr.String(), "logs": logs.String()}
	if !strings.Contains(out["logs"], `"msg":"request"`) || !strings.Contains(out["logs"], "WRONGPASS") {
		t.Errorf("the logs did not capture the session (request lines and the wrong password's Redis errors):\n%s", out["logs"])
	}
	for _, s := range []secret{upstreamKey, refusedUpstreamKey, mainClientKey, limitedClientKey, guessedClientKey, redisPassword, wrongRedisPassword, adminKey} {
		for where, text := range out {
			if i := strings.Index(text, s.core); i >= 0 {
				t.Errorf("the %s appears in the %s: …%s…", s.name, where, text[max(0, i-200):min(len(text), i+len(s.core)+100)])
			}
		}
	}
	t.Logf("scanned %d KiB of responses and %d KiB of logs for 8 secrets", len(out["responses"])>>10, len(out["logs"])>>10)
}

// TestUpstreamEchoingItsKeyDoesNotLeakIt: some upstreams quote the
// credentials they were sent in their error messages. The gateway puts an
// upstream's error message into the 502 it answers and into its log, so
// its own key for that upstream would reach every client and the log.
func TestUpstreamEchoingItsKeyDoesNotLeakIt(t *testing.T) {
	echo, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, `{"error":{"message":"overloaded; request had Authorization %s","type":"server_error"}}`, r.Header.Get("Authorization"))
	}), nil)
	logs := &testenv.SyncBuffer{}
	gw := startGateway(t, gatewaySpec{
		upstreams: []upstreamSpec{{name: "echo", url: echo.URL + "/v1", key: upstreamKey.value}},
		route:     []string{"echo"},
	}.yaml(), logs)
	got := do(newClient(t, 1), chat(context.Background(), gw.URL, clientKey, "m", false, "x"))
	if got.status != http.StatusBadGateway {
		t.Fatalf("want 502: %s", got)
	}
	if strings.Contains(string(got.body), upstreamKey.core) {
		t.Errorf("the upstream key reached the client in the 502: %s", got.body)
	}
	if strings.Contains(logs.String(), upstreamKey.core) {
		t.Errorf("the upstream key reached the log")
	}
}

// TestConfigErrorsHideSecrets: the command prints config errors when it
// refuses a file at start or on reload, so an error about a value that
// holds a secret must not quote the secret.
func TestConfigErrorsHideSecrets(t *testing.T) {
	base := "upstreams:\n  - {name: a, base_url: %q%s}\nmodels: [{name: m, route: [a]}]\n%s"
	cases := []struct {
		name, doc string
		s         secret
	}{
		{"credentials in base_url", fmt.Sprintf(base, "https://user:"+upstreamKey.value+"@relay.example/v1", "", ""), upstreamKey},
		{"key in base_url's query", fmt.Sprintf(base, "https://relay.example/v1?key="+upstreamKey.value, "", ""), upstreamKey},
		{"credentials in a base_url without a scheme", fmt.Sprintf(base, "apikey:"+upstreamKey.value+"@relay.example/v1", "", ""), upstreamKey},
		{"an error beside an api_key", fmt.Sprintf(base, "https://relay.example/v1", fmt.Sprintf(", api_key: %q, timeout: 5", upstreamKey.value), ""), upstreamKey},
		{"Redis URL with the wrong scheme", fmt.Sprintf(base, "https://relay.example/v1", "", "cache: {redis_url: \"http://:"+redisPassword.value+"@127.0.0.1:1/0\"}\n"), redisPassword},
		{"unparseable Redis URL", fmt.Sprintf(base, "https://relay.example/v1", "", "cache: {redis_url: \"redis://:"+redisPassword.value+"@[::1/0\"}\n"), redisPassword},
		{"client key too short", fmt.Sprintf(base, "https://relay.example/v1", "", "client_keys: [\"SHORTKEY9c\"]\n"), secret{name: "short client key", value: "SHORTKEY9c", core: "SHORTKEY9c"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tc.doc), func(string) (string, bool) { return "", false })
			if err == nil {
				t.Fatalf("a broken config was accepted:\n%s", tc.doc)
			}
			if strings.Contains(err.Error(), tc.s.core) {
				t.Errorf("the error quotes the %s: %v", tc.s.name, err)
			}
		})
	}
}
