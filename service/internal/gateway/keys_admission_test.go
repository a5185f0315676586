package gateway

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/budget"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// admissionReplica is a replica whose server the test closes itself:
// Close waits for every handler, charges included, to end.
type admissionReplica struct {
	srv *httptest.Server
	m   *metrics.Metrics
}

func startAdmissionReplica(t *testing.T, cfg *config.Config) *admissionReplica {
	t.Helper()
	// A failure guard for a loaded machine: Redis is paused for as long
	// as the test needs in TestOverlapRefusalAfterUpstreamStarted.
	e, err := budget.New(budget.Options{URL: cfg.Cache.RedisURL, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	m := metrics.New()
	srv := httptest.NewServer(New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m, Budgets: e}))
	t.Cleanup(srv.Close)
	return &admissionReplica{srv: srv, m: m}
}

func startCountingSim(t *testing.T, cfg upstreamsim.Config) (*upstreamsim.Server, string) {
	t.Helper()
	cfg.APIKey = simUpstrKey
	sim := upstreamsim.New(cfg)
	s := httptest.NewServer(sim)
	t.Cleanup(s.Close)
	return sim, s.URL
}

func simChats(sim *upstreamsim.Server) uint64 {
	return sim.Stats().Requests[upstreamsim.EndpointChatCompletions]
}

// evalCalls is how many scripts Redis has run: the gateway's admissions
// and charges.
func evalCalls(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_evalsha:") && !strings.HasPrefix(line, "cmdstat_eval:") {
			continue
		}
		_, rest, _ := strings.Cut(line, "calls=")
		v, _, _ := strings.Cut(rest, ",")
		c, _ := strconv.Atoi(v)
		n += c
	}
	return n
}

// admissionClient fails a request the gateway would leave hanging.
var admissionClient = &http.Client{Timeout: 30 * time.Second}

func admissionBody(stream bool) string {
	if stream {
		return `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
	}
	return `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
}

func postChat(t *testing.T, url, key, body string) result {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := admissionClient.Do(req)
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("chat body: %v", err)
	}
	return result{status: resp.StatusCode, header: resp.Header, body: b}
}

// wantNoUpstreamByte fails unless r is the gateway's own refusal: no
// header or byte of an upstream's answer.
func wantNoUpstreamByte(t *testing.T, r result) {
	t.Helper()
	if u := r.header.Get("X-Relaygate-Upstream"); u != "" {
		t.Errorf("refusal carries X-Relaygate-Upstream %q", u)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("refusal has Content-Type %q", ct)
	}
	if s := string(r.body); strings.Contains(s, "chatcmpl") || strings.Contains(s, "data:") {
		t.Errorf("refusal holds an upstream answer: %s", s)
	}
}

// TestOverlapRefusalAfterUpstreamStarted: with admission: overlap, a
// verdict that refuses after the upstream call has started (Redis is
// paused until the simulator has the request, whose answer would take a
// minute) cancels the call; the client gets the refusal of strict
// admission and nothing of the upstream, whole or streamed; nothing is
// charged, and the refusal is counted late. The next request is refused
// on the replica alone: neither Redis nor the upstream hears of it.
func TestOverlapRefusalAfterUpstreamStarted(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run("stream="+strconv.FormatBool(stream), func(t *testing.T) {
			rds := testenv.StartRedis(t)
			rdb := redisClient(t, rds.URL)
			sim, simURL := startCountingSim(t, upstreamsim.Config{Latency: time.Minute})
			const secret = "sk-late-key-0123456789abc"
			cfg := keysConfig(t, rds.URL, simURL, `
keys: [{name: late, key: `+secret+`, budget: {usd: 1, period: day}, admission: overlap}]
`)
			r := startAdmissionReplica(t, cfg)
			spendKey := keySub("", "late").SpendKey("key", config.PeriodDay, time.Now())
			if err := rdb.Set(context.Background(), spendKey, answerCost, 0).Err(); err != nil {
				t.Fatal(err)
			}
			// Scripts wait while Redis is paused; GET and CLIENT do not.
			if err := rdb.Do(context.Background(), "CLIENT", "PAUSE", 60000, "WRITE").Err(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = rdb.Do(context.Background(), "CLIENT", "UNPAUSE").Err() })
			got := make(chan result, 1)
			go func() { got <- postChat(t, r.srv.URL, secret, admissionBody(stream)) }()
			for deadline := time.Now().Add(20 * time.Second); simChats(sim) == 0; time.Sleep(2 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the upstream never got the request")
				}
			}
			if err := rdb.Do(context.Background(), "CLIENT", "UNPAUSE").Err(); err != nil {
				t.Fatal(err)
			}
			res := <-got
			wantStatus(t, res, 429, "budget_exceeded", "The budget of key late is spent: $1.00 of $1.00")
			wantNoUpstreamByte(t, res)
			if s, _ := strconv.Atoi(res.header.Get("Retry-After")); s < 1 {
				t.Errorf("Retry-After %q", res.header.Get("Retry-After"))
			}

			// Refused for as long as Retry-After says, on this replica
			// alone.
			evals := evalCalls(t, rdb)
			res = postChat(t, r.srv.URL, secret, admissionBody(stream))
			wantStatus(t, res, 429, "budget_exceeded", "The budget of key late is spent: $1.00 of $1.00")
			wantNoUpstreamByte(t, res)
			if n := simChats(sim); n != 1 {
				t.Errorf("the upstream got %d requests, want 1: the held refusal reached it", n)
			}
			if n := evalCalls(t, rdb); n != evals {
				t.Errorf("Redis ran %d scripts for the held refusal, want none", n-evals)
			}

			r.srv.Close() // every handler, and its charge, is done
			if v, _ := rdb.Get(context.Background(), spendKey).Int64(); v != answerCost {
				t.Errorf("spend %d µ$ after two refusals, want %d: a refusal was charged", v, answerCost)
			}
			key := map[string]string{"key": "late"}
			if v := metricValue(t, r.m, "relaygate_spend_usd_total", key); v != 0 {
				t.Errorf("relaygate_spend_usd_total %v, want 0", v)
			}
			if v := metricValue(t, r.m, "relaygate_refusals_total", map[string]string{"key": "late", "reason": "budget_exceeded"}); v != 2 {
				t.Errorf("budget refusals %v, want 2", v)
			}
			if v := metricValue(t, r.m, "relaygate_refusals_late_total", map[string]string{"key": "late", "reason": "budget_exceeded"}); v != 1 {
				t.Errorf("late refusals %v, want 1 (the first)", v)
			}
			if v := metricValue(t, r.m, "relaygate_requests_total", map[string]string{"code": "429", "upstream": metrics.NoUpstream}); v != 2 {
				t.Errorf("429s of no upstream counted %v, want 2 (as strict admission counts them)", v)
			}
		})
	}
}

// TestAdmissionModesRefusedUntil: a key of one request per minute, in
// both modes. The refusal of the second request reaches the upstream
// only with overlap (its call is cancelled, or never made when the
// verdict comes first), never with strict; the third is refused by the
// replica alone, in both. Only the first answer is charged.
func TestAdmissionModesRefusedUntil(t *testing.T) {
	bothModes(t, func(t *testing.T, mode string) {
		rds := testenv.StartRedis(t)
		rdb := redisClient(t, rds.URL)
		sim, simURL := startCountingSim(t, upstreamsim.Config{})
		const secret = "sk-rpm1-key-0123456789abc"
		cfg := keysConfigIn(t, mode, rds.URL, simURL, `
teams: [{name: t1, budget: {usd: 100, period: day}}]
keys: [{name: rpm1, team: t1, key: `+secret+`, rpm: 1}]
`)
		r := startAdmissionReplica(t, cfg)
		wantStatus(t, postChat(t, r.srv.URL, secret, admissionBody(false)), 200, "", "")
		for i := 0; i < 2; i++ {
			evals := evalCalls(t, rdb)
			before := simChats(sim)
			res := postChat(t, r.srv.URL, secret, admissionBody(i == 1))
			wantStatus(t, res, 429, "rate_limit_exceeded", "Rate limit reached for key rpm1: 1 requests per minute (rpm)")
			wantNoUpstreamByte(t, res)
			if s, _ := strconv.Atoi(res.header.Get("Retry-After")); s < 1 || s > 60 {
				t.Errorf("Retry-After %q", res.header.Get("Retry-After"))
			}
			hits, scripts := simChats(sim)-before, evalCalls(t, rdb)-evals
			switch {
			case i == 0 && scripts == 0:
				t.Errorf("the first refusal did not ask Redis")
			case i == 0 && mode == config.AdmissionStrict && hits != 0:
				t.Errorf("strict admission let a refused request reach the upstream")
			case i == 1 && (hits != 0 || scripts != 0):
				t.Errorf("the held refusal reached the upstream %d times and Redis %d times, want 0 and 0", hits, scripts)
			}
		}
		r.srv.Close()
		waitSpend(t, rdb, keySub("t1", "rpm1"), "team", answerCost)
		if v := metricValue(t, r.m, "relaygate_spend_usd_total", map[string]string{"key": "rpm1"}); v != 1 {
			t.Errorf("relaygate_spend_usd_total %v, want 1 (one answer)", v)
		}
		if v := metricValue(t, r.m, "relaygate_refusals_total", map[string]string{"key": "rpm1", "reason": "rate_limited"}); v != 2 {
			t.Errorf("rate-limited refusals %v, want 2", v)
		}
	})
}

// TestOverlapFailClosedCancelsUpstream: Redis stopped, an upstream that
// would take a minute: the fail-closed key's request is answered 503 at
// once, its upstream call cancelled; the fail-open key's is served. Both
// counted as with strict admission.
func TestOverlapFailClosedCancelsUpstream(t *testing.T) {
	rds := testenv.StartRedis(t)
	_, simURL := startCountingSim(t, upstreamsim.Config{Latency: time.Minute})
	_, fastURL := startCountingSim(t, upstreamsim.Config{})
	body := `
keys:
  - {name: open-key, key: sk-open-key-0123456789abc, rpm: 1000, on_redis_error: open}
  - {name: closed-key, key: sk-closed-key-0123456789abc, rpm: 1000, on_redis_error: closed}
`
	slow := startAdmissionReplica(t, keysConfigIn(t, config.AdmissionOverlap, rds.URL, simURL, body))
	fast := startAdmissionReplica(t, keysConfigIn(t, config.AdmissionOverlap, rds.URL, fastURL, body))
	rds.Stop()
	res := postChat(t, slow.srv.URL, "sk-closed-key-0123456789abc", admissionBody(false))
	wantStatus(t, res, 503, "budget_unavailable", "key closed-key cannot be checked now")
	wantNoUpstreamByte(t, res)
	if res.header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After %q, want 1", res.header.Get("Retry-After"))
	}
	wantStatus(t, postChat(t, fast.srv.URL, "sk-open-key-0123456789abc", admissionBody(true)), 200, "", "")
	slow.srv.Close()
	fast.srv.Close()
	if v := metricValue(t, slow.m, "relaygate_key_redis_errors_total", map[string]string{"key": "closed-key", "action": "refused"}); v != 1 {
		t.Errorf("fail-closed refusals %v, want 1", v)
	}
	if v := metricValue(t, fast.m, "relaygate_key_redis_errors_total", map[string]string{"key": "open-key", "action": "served"}); v != 1 {
		t.Errorf("fail-open requests served %v, want 1", v)
	}
}
