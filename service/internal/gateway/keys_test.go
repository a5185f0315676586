package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/redis/go-redis/v9"
	openai "github.com/sashabaranov/go-openai"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/budget"
	"github.com/relaygate/relaygate/service/internal/cache"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// Every answer of the simulator has 16 completion tokens; at $62,500 per
// million output tokens (input free) each costs exactly $1.
const (
	keysPrice   = "{input_per_mtok: 0, output_per_mtok: 62500}"
	keysAdmin   = "sk-admin-key-for-keys-tests-0001"
	answerCost  = 1_000_000 // µ$
	simUpstrKey = "upstream-key-a"
)

func hexSum(k string) string { s := sha256.Sum256([]byte(k)); return hex.EncodeToString(s[:]) }

// keysConfig is a gateway config with models m and m2 on one upstream,
// Redis at redisURL and the teams and keys of body (YAML).
func keysConfig(t *testing.T, redisURL, upURL, body string) *config.Config {
	t.Helper()
	doc := fmt.Sprintf(`listen: "127.0.0.1:0"
cache: {redis_url: %q}
admin: {key: %q}
upstreams:
  - {name: a, base_url: %q, api_key: %q, apis: [chat, messages]}
models:
  - {name: m, route: [a], price: %s}
  - {name: m2, route: [a], price: %s}
retry: {attempts: 1, backoff_min: 1ms, backoff_max: 5ms}
log: {requests: false}
%s`, redisURL, keysAdmin, upURL+"/v1", simUpstrKey, keysPrice, keysPrice, body)
	cfg, err := config.Parse([]byte(doc), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("config: %v\n%s", err, doc)
	}
	return cfg
}

// keysConfigIn is keysConfig with every key's admission set to mode.
func keysConfigIn(t *testing.T, mode, redisURL, upURL, body string) *config.Config {
	t.Helper()
	cfg := keysConfig(t, redisURL, upURL, body)
	for i := range cfg.Keys {
		cfg.Keys[i].Admission = mode
	}
	return cfg
}

// bothModes runs test with keys admitted beside the upstream call and
// before it.
func bothModes(t *testing.T, test func(t *testing.T, mode string)) {
	for _, mode := range []string{config.AdmissionOverlap, config.AdmissionStrict} {
		t.Run(mode, func(t *testing.T) { test(t, mode) })
	}
}

// keysReplica is one gateway replica with its own Redis clients.
type keysReplica struct {
	url string
	gw  *Server
	m   *metrics.Metrics
}

func startReplica(t *testing.T, cfg *config.Config) *keysReplica {
	t.Helper()
	// The timeout is a failure guard for a loaded machine, not a bound
	// under test.
	e, err := budget.New(budget.Options{URL: cfg.Cache.RedisURL, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	m := metrics.New()
	gw := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m, Budgets: e})
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	return &keysReplica{url: srv.URL, gw: gw, m: m}
}

func startSim(t *testing.T, cfg upstreamsim.Config) string {
	t.Helper()
	cfg.APIKey = simUpstrKey
	s := httptest.NewServer(upstreamsim.New(cfg))
	t.Cleanup(s.Close)
	return s.URL
}

// chat posts a chat completion for model with key.
func chat(t *testing.T, url, key, model string) result {
	t.Helper()
	return post(t, url, "/v1/chat/completions", `{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`,
		"Authorization", "Bearer "+key)
}

func wantStatus(t *testing.T, r result, status int, code, contains string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if status == http.StatusOK {
		return
	}
	msg, _, c := openAIError(t, r.body)
	if c != code || !strings.Contains(msg, contains) {
		t.Fatalf("error %q %q; want code %q and a message containing %q", c, msg, code, contains)
	}
}

func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitSpend waits until Redis holds want µ$ for the scope of sub this
// day: a request is charged as its handler ends, just after its client
// has the answer. The deadline is a failure guard.
func waitSpend(t *testing.T, rdb *redis.Client, sub *budget.Subject, scope string, want int64) {
	t.Helper()
	key := sub.SpendKey(scope, config.PeriodDay, time.Now())
	var got int64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		got, _ = rdb.Get(context.Background(), key).Int64()
		if got == want {
			return
		}
	}
	t.Fatalf("spend of %s %s = %d µ$, want %d", scope, sub.Key.Name, got, want)
}

func keySub(team, key string) *budget.Subject {
	s := &budget.Subject{Key: budget.Scope{Name: key}}
	if team != "" {
		s.Team = &budget.Scope{Name: team}
	}
	return s
}

// TestKeyModelAllowLists: a key's and its team's allow-lists refuse
// other models with a 403 naming the model, in OpenAI's shape on chat and
// in Anthropic's on Messages, as the official SDKs parse them. Keys with
// only allow-lists never ask Redis: their enforcer's Redis does not exist.
func TestKeyModelAllowLists(t *testing.T) {
	sim := startSim(t, upstreamsim.Config{})
	cfg := keysConfig(t, "redis://127.0.0.1:1/0", sim, `
teams: [{name: search, models: [m]}]
keys:
  - {name: own-list, key: sk-own-list-key-0123456789, models: [m]}
  - {name: team-list, team: search, key: sk-team-list-key-0123456789}
  - {name: any-model, key: sk-any-model-key-0123456789}
`)
	r := startReplica(t, cfg)
	ctx := context.Background()
	oc := func(key string) *openai.Client {
		c := openai.DefaultConfig(key)
		c.BaseURL = r.url + "/v1"
		return openai.NewClientWithConfig(c)
	}
	msgs := []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hi"}}
	for _, tc := range []struct{ key, who string }{
		{"sk-own-list-key-0123456789", "Key own-list"},
		{"sk-team-list-key-0123456789", "Team search (of key team-list)"},
	} {
		_, err := oc(tc.key).CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: "m2", Messages: msgs})
		var apiErr *openai.APIError
		if !errors.As(err, &apiErr) || apiErr.HTTPStatusCode != 403 || apiErr.Code != "model_not_allowed" ||
			!strings.Contains(apiErr.Message, `model "m2"`) || !strings.HasPrefix(apiErr.Message, tc.who) {
			t.Errorf("%s asking for m2: %v; want a 403 model_not_allowed naming the model and %q", tc.key, err, tc.who)
		}
		if _, err := oc(tc.key).CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: "m", Messages: msgs}); err != nil {
			t.Errorf("%s asking for m: %v", tc.key, err)
		}
	}
	if _, err := oc("sk-any-model-key-0123456789").CreateChatCompletion(ctx, openai.ChatCompletionRequest{Model: "m2", Messages: msgs}); err != nil {
		t.Errorf("a key without allow-lists asking for m2: %v", err)
	}

	ac := anthropic.NewClient(option.WithBaseURL(r.url), option.WithAPIKey("sk-own-list-key-0123456789"), option.WithMaxRetries(0))
	_, err := ac.Messages.New(ctx, anthropic.MessageNewParams{Model: "m2", MaxTokens: 8, Messages: userText("x")})
	var aErr *anthropic.Error
	if !errors.As(err, &aErr) || aErr.StatusCode != 403 || string(aErr.Type()) != "permission_error" || !strings.Contains(aErr.Error(), `model \"m2\"`) {
		t.Errorf("Messages for m2: %v; want a 403 permission_error naming the model", err)
	}
	if _, err := ac.Messages.New(ctx, anthropic.MessageNewParams{Model: "m", MaxTokens: 8, Messages: userText("x")}); err != nil {
		t.Errorf("Messages for m: %v", err)
	}

	// GET /v1/models lists what the key may use.
	for key, want := range map[string]string{"sk-own-list-key-0123456789": "m", "sk-team-list-key-0123456789": "m",
		"sk-any-model-key-0123456789": "m,m2"} {
		list, err := oc(key).ListModels(ctx)
		var ids []string
		for _, m := range list.Models {
			ids = append(ids, m.ID)
		}
		if err != nil || strings.Join(ids, ",") != want {
			t.Errorf("models of %s: %v %v, want %s", key, ids, err, want)
		}
	}
	if _, err := oc("sk-own-list-key-0123456789").GetModel(ctx, "m2"); err == nil {
		t.Error("GET /v1/models/m2 with a key that may not use it: no error")
	}
	if _, err := oc("sk-any-model-key-0123456789").GetModel(ctx, "m2"); err != nil {
		t.Errorf("GET /v1/models/m2: %v", err)
	}

	if got := metricValue(t, r.m, "relaygate_refusals_total", map[string]string{"reason": "model_not_allowed", "key": "own-list"}); got != 2 {
		t.Errorf("refusals of own-list = %v, want 2", got)
	}
	if got := metricValue(t, r.m, "relaygate_key_redis_errors_total", nil); got != 0 {
		t.Errorf("keys without limits asked Redis: %v errors", got)
	}
	waitMetric(t, r.m, "relaygate_key_requests_total", map[string]string{"team": "search", "key": "team-list"}, 2)
}

// TestKeyRateLimitsAcrossReplicas: per-key and per-team RPM and TPM hold
// across two gateway replicas sharing one Redis; a request refused by one
// bucket takes nothing from the other.
func TestKeyRateLimitsAcrossReplicas(t *testing.T) { bothModes(t, testKeyRateLimitsAcrossReplicas) }

func testKeyRateLimitsAcrossReplicas(t *testing.T, mode string) {
	rds := testenv.StartRedis(t)
	rdb := redisClient(t, rds.URL)
	sim := startSim(t, upstreamsim.Config{})
	cfg := keysConfigIn(t, mode, rds.URL, sim, `
teams:
  - {name: search, rpm: 5}
  - {name: batch, tpm: 10}
keys:
  - {name: k1, team: search, key: sk-k1-key-0123456789abc, rpm: 3}
  - {name: k2, team: search, key: sk-k2-key-0123456789abc}
  - {name: k3, key: sk-k3-key-0123456789abc, tpm: 10}
  - {name: k4, team: batch, key: sk-k4-key-0123456789abc}
`)
	r1, r2 := startReplica(t, cfg), startReplica(t, cfg)
	reps := []*keysReplica{r1, r2}

	for i := 0; i < 3; i++ {
		wantStatus(t, chat(t, reps[i%2].url, "sk-k1-key-0123456789abc", "m"), 200, "", "")
	}
	r := chat(t, r2.url, "sk-k1-key-0123456789abc", "m")
	wantStatus(t, r, 429, "rate_limit_exceeded", "key k1: 3 requests per minute")
	if s, _ := strconv.Atoi(r.header.Get("Retry-After")); s < 1 {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	// The team has 2 of its 5 left: k1's refusal took none.
	wantStatus(t, chat(t, r2.url, "sk-k2-key-0123456789abc", "m"), 200, "", "")
	wantStatus(t, chat(t, r1.url, "sk-k2-key-0123456789abc", "m"), 200, "", "")
	wantStatus(t, chat(t, r2.url, "sk-k2-key-0123456789abc", "m"), 429, "rate_limit_exceeded", "team search: 5 requests per minute")
	if got := metricValue(t, r2.m, "relaygate_refusals_total", map[string]string{"reason": "rate_limited", "team": "search"}); got != 2 {
		t.Errorf("rate-limited refusals of team search on replica 2 = %v, want 2", got)
	}

	// TPM: one answer (16 completion tokens and the prompt's) spends a
	// bucket of 10, so the next request, on the other replica, waits.
	for _, c := range []struct{ team, key, scope, want string }{
		{"", "k3", "key", "key k3: 10 tokens per minute"},
		{"batch", "k4", "team", "team batch: 10 tokens per minute"},
	} {
		secret := "sk-" + c.key + "-key-0123456789abc"
		wantStatus(t, chat(t, r1.url, secret, "m"), 200, "", "")
		waitSpend(t, rdb, keySub(c.team, c.key), "key", answerCost)
		wantStatus(t, chat(t, r2.url, secret, "m"), 429, "rate_limit_exceeded", c.want)
	}
}

// TestKeyRotation: two secrets of one name both work, and share the
// name's limits and series.
func TestKeyRotation(t *testing.T) { bothModes(t, testKeyRotation) }

func testKeyRotation(t *testing.T, mode string) {
	rds := testenv.StartRedis(t)
	sim := startSim(t, upstreamsim.Config{})
	cfg := keysConfigIn(t, mode, rds.URL, sim, `
keys:
  - name: rotating
    key_sha256: [`+hexSum("sk-old-secret-0123456789")+`, `+hexSum("sk-new-secret-0123456789")+`]
    rpm: 2
`)
	r := startReplica(t, cfg)
	wantStatus(t, chat(t, r.url, "sk-old-secret-0123456789", "m"), 200, "", "")
	wantStatus(t, chat(t, r.url, "sk-new-secret-0123456789", "m"), 200, "", "")
	wantStatus(t, chat(t, r.url, "sk-old-secret-0123456789", "m"), 429, "rate_limit_exceeded", "key rotating")
	wantStatus(t, chat(t, r.url, "sk-neither-secret-0123456789", "m"), 401, "invalid_api_key", "Incorrect API key")
	waitMetric(t, r.m, "relaygate_key_requests_total", map[string]string{"key": "rotating"}, 3)
}

// TestKeyBudgetsAcrossReplicas: a key's day budget and its team's month
// budget, charged from real usage on two replicas, refuse the request that
// would start over budget with 429 budget_exceeded, the reset time and a
// Retry-After until it; /admin/spend, Redis and Prometheus agree.
func TestKeyBudgetsAcrossReplicas(t *testing.T) { bothModes(t, testKeyBudgetsAcrossReplicas) }

func testKeyBudgetsAcrossReplicas(t *testing.T, mode string) {
	rds := testenv.StartRedis(t)
	rdb := redisClient(t, rds.URL)
	sim := startSim(t, upstreamsim.Config{})
	cfg := keysConfigIn(t, mode, rds.URL, sim, `
teams:
  - {name: search, budget: {usd: 5, period: month}}
keys:
  - {name: kb, team: search, key: sk-kb-key-0123456789abc, budget: {usd: 3, period: day}}
  - {name: kc, team: search, key: sk-kc-key-0123456789abc}
`)
	r1, r2 := startReplica(t, cfg), startReplica(t, cfg)
	reps := []*keysReplica{r1, r2}
	ac := func(r *keysReplica, key string) error {
		c := anthropic.NewClient(option.WithBaseURL(r.url), option.WithAPIKey(key), option.WithMaxRetries(0))
		_, err := c.Messages.New(context.Background(), anthropic.MessageNewParams{Model: "m", MaxTokens: 16, Messages: userText("x")})
		return err
	}
	spent := int64(0)
	for i := 0; i < 3; i++ {
		// Chat and Messages alike are charged.
		if i == 1 {
			if err := ac(reps[i%2], "sk-kb-key-0123456789abc"); err != nil {
				t.Fatal(err)
			}
		} else {
			wantStatus(t, chat(t, reps[i%2].url, "sk-kb-key-0123456789abc", "m"), 200, "", "")
		}
		spent += answerCost
		waitSpend(t, rdb, keySub("search", "kb"), "key", spent)
	}
	before := time.Now().UTC()
	r := chat(t, r2.url, "sk-kb-key-0123456789abc", "m")
	_, dayEnd := budget.Bounds(config.PeriodDay, before)
	wantStatus(t, r, 429, "budget_exceeded", "The budget of key kb is spent: $3.00 of $3.00 this day (UTC). It resets at "+dayEnd.Format(time.RFC3339))
	if s, _ := strconv.Atoi(r.header.Get("Retry-After")); s < 1 || time.Duration(s-1)*time.Second > dayEnd.Sub(before) {
		t.Errorf("Retry-After %q; the day ends in %s", r.header.Get("Retry-After"), dayEnd.Sub(before))
	}
	var aErr *anthropic.Error
	if err := ac(r1, "sk-kb-key-0123456789abc"); !errors.As(err, &aErr) || aErr.StatusCode != 429 || !strings.Contains(aErr.Error(), "budget of key kb") {
		t.Errorf("Messages over budget: %v", err)
	}

	// The team has $2 left of its month's $5: kc spends it.
	for i := 0; i < 2; i++ {
		wantStatus(t, chat(t, reps[i%2].url, "sk-kc-key-0123456789abc", "m"), 200, "", "")
		waitSpend(t, rdb, keySub("search", "kc"), "key", int64(i+1)*answerCost)
	}
	_, monthEnd := budget.Bounds(config.PeriodMonth, time.Now())
	wantStatus(t, chat(t, r1.url, "sk-kc-key-0123456789abc", "m"), 429, "budget_exceeded",
		"The budget of team search is spent: $5.00 of $5.00 this month (UTC). It resets at "+monthEnd.Format(time.RFC3339))

	var promSpend float64
	for _, rep := range reps {
		promSpend += metricValue(t, rep.m, "relaygate_spend_usd_total", map[string]string{"team": "search"})
	}
	if got := metricValue(t, r1.m, "relaygate_refusals_total", map[string]string{"reason": "budget_exceeded"}) +
		metricValue(t, r2.m, "relaygate_refusals_total", map[string]string{"reason": "budget_exceeded"}); got != 3 {
		t.Errorf("budget refusals = %v, want 3", got)
	}
	if got := metricValue(t, r1.m, "relaygate_budget_remaining_usd", map[string]string{"scope": "team", "name": "search"}); got != 0 {
		t.Errorf("team remaining on replica 1 = %v, want 0", got)
	}

	spend := adminSpend(t, r2.url, "team=search")
	want := map[string][3]float64{"key/kb": {3, 3, 0}, "key/kc": {2, -1, -1}, "team/search": {5, 5, 0}}
	if len(spend.Scopes) != len(want) {
		t.Fatalf("/admin/spend?team=search: %+v", spend.Scopes)
	}
	var adminTeam float64
	for _, s := range spend.Scopes {
		w, ok := want[s.Scope+"/"+s.Name]
		if !ok || s.SpendUSD != w[0] || (w[1] >= 0 && (s.BudgetUSD == nil || *s.BudgetUSD != w[1] || *s.RemainingUSD != w[2])) ||
			(w[1] < 0 && s.BudgetUSD != nil) || !s.Tracked {
			t.Errorf("/admin/spend line %+v; want spend, budget, remaining %v", s, w)
		}
		if s.Scope == "team" {
			adminTeam = s.SpendUSD
			if s.Period != "month" || !s.Reset.Equal(monthEnd) {
				t.Errorf("team period %s resets %s, want month, %s", s.Period, s.Reset, monthEnd)
			}
		}
	}
	if fmt.Sprintf("%.2f", promSpend) != fmt.Sprintf("%.2f", adminTeam) {
		t.Errorf("Prometheus says the team spent $%.6f, /admin/spend $%.6f", promSpend, adminTeam)
	}
	if d := adminSpend(t, r1.url, "key=kb&period=month"); len(d.Scopes) != 1 || d.Scopes[0].SpendUSD != 3 || d.Scopes[0].BudgetUSD != nil {
		t.Errorf("kb's month (its budget is per day): %+v", d.Scopes)
	}
	for q, code := range map[string]int{"team=nope": 404, "key=nope": 404, "period=week": 400} {
		if r := adminGet(t, r1.url, q, keysAdmin); r.status != code {
			t.Errorf("/admin/spend?%s: %d, want %d", q, r.status, code)
		}
	}
	if r := adminGet(t, r1.url, "", "sk-kb-key-0123456789abc"); r.status != 401 {
		t.Errorf("/admin/spend with a client key: %d, want 401", r.status)
	}
}

type spendAnswer struct {
	Scopes []spendScope `json:"scopes"`
}

func adminGet(t *testing.T, url, query, key string) result {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url+"/admin/spend?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, resp.Header, b}
}

func adminSpend(t *testing.T, url, query string) spendAnswer {
	t.Helper()
	r := adminGet(t, url, query, keysAdmin)
	var a spendAnswer
	if r.status != 200 || json.Unmarshal(r.body, &a) != nil {
		t.Fatalf("/admin/spend?%s: %d %s", query, r.status, r.body)
	}
	return a
}

// TestBudgetBoundaryConcurrent: 200 clients, half of them streaming, on
// two replicas, send requests until the key's budget refuses them. Every
// answer is charged; the spend overshoots the budget by what was in flight
// when it was reached, at most one answer per client.
func TestBudgetBoundaryConcurrent(t *testing.T) { bothModes(t, testBudgetBoundaryConcurrent) }

func testBudgetBoundaryConcurrent(t *testing.T, mode string) {
	rds := testenv.StartRedis(t)
	rdb := redisClient(t, rds.URL)
	// A little latency keeps the requests in flight together.
	sim := startSim(t, upstreamsim.Config{Latency: 20 * time.Millisecond})
	const budgetUSD, clients = 500, 200
	cfg := keysConfigIn(t, mode, rds.URL, sim, fmt.Sprintf(`
keys: [{name: hot, key: sk-hot-key-0123456789abc, budget: {usd: %d, period: day}}]
`, budgetUSD))
	reps := []*keysReplica{startReplica(t, cfg), startReplica(t, cfg)}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	t.Cleanup(hc.CloseIdleConnections)

	var served, refused, other atomic.Int64
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			body := `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
			if c%2 == 1 {
				body = `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
			}
			// Each client's share of the budget is 2.5 answers: a client
			// still served after 10 is not being refused.
			for i := 0; i < 10; i++ {
				req, _ := http.NewRequest(http.MethodPost, reps[c%2].url+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer sk-hot-key-0123456789abc")
				resp, err := hc.Do(req)
				if err != nil {
					other.Add(1)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == 200:
					served.Add(1)
				case resp.StatusCode == 429 && strings.Contains(string(b), "budget_exceeded"):
					refused.Add(1)
					return
				default:
					other.Add(1)
					return
				}
			}
			other.Add(1) // never refused
		}(c)
	}
	wg.Wait()
	if other.Load() != 0 {
		t.Fatalf("%d clients failed otherwise or were never refused", other.Load())
	}
	n := served.Load()
	waitSpend(t, rdb, keySub("", "hot"), "key", n*answerCost)
	overshoot := n - budgetUSD
	t.Logf("budget $%d, %d clients: %d answers served and charged ($%d), overshoot $%d (%d answers), %d refused",
		budgetUSD, clients, n, n, overshoot, overshoot, refused.Load())
	if n < budgetUSD || overshoot > clients {
		t.Errorf("served %d answers of $1 on a $%d budget with %d clients: the overshoot must be within [0, %d]", n, budgetUSD, clients, clients)
	}
	var prom float64
	for _, r := range reps {
		prom += metricValue(t, r.m, "relaygate_spend_usd_total", map[string]string{"key": "hot"})
	}
	if fmt.Sprintf("%.2f", prom) != fmt.Sprintf("%.2f", float64(n)) {
		t.Errorf("Prometheus spend $%.6f, Redis $%d", prom, n)
	}
	wantStatus(t, chat(t, reps[0].url, "sk-hot-key-0123456789abc", "m"), 429, "budget_exceeded", "key hot")
}

// TestKeyRedisDown: with Redis stopped, a fail-open key is served and a
// fail-closed key refused, both counted; once Redis is back both serve.
func TestKeyRedisDown(t *testing.T) { bothModes(t, testKeyRedisDown) }

func testKeyRedisDown(t *testing.T, mode string) {
	rds := testenv.StartRedis(t)
	sim := startSim(t, upstreamsim.Config{})
	cfg := keysConfigIn(t, mode, rds.URL, sim, `
keys:
  - {name: open-key, key: sk-open-key-0123456789abc, rpm: 1000, on_redis_error: open}
  - {name: closed-key, key: sk-closed-key-0123456789abc, rpm: 1000, on_redis_error: closed}
`)
	r := startReplica(t, cfg)
	wantStatus(t, chat(t, r.url, "sk-open-key-0123456789abc", "m"), 200, "", "")
	wantStatus(t, chat(t, r.url, "sk-closed-key-0123456789abc", "m"), 200, "", "")

	rds.Stop()
	wantStatus(t, chat(t, r.url, "sk-open-key-0123456789abc", "m"), 200, "", "")
	res := chat(t, r.url, "sk-closed-key-0123456789abc", "m")
	wantStatus(t, res, 503, "budget_unavailable", "key closed-key cannot be checked now")
	if res.header.Get("Retry-After") == "" {
		t.Error("no Retry-After on the fail-closed refusal")
	}
	if got := metricValue(t, r.m, "relaygate_key_redis_errors_total", map[string]string{"key": "open-key", "action": "served"}); got != 1 {
		t.Errorf("fail-open requests served without Redis = %v, want 1", got)
	}
	if got := metricValue(t, r.m, "relaygate_refusals_total", map[string]string{"key": "closed-key", "reason": "redis_unavailable"}); got != 1 {
		t.Errorf("fail-closed refusals = %v, want 1", got)
	}
	if got := metricValue(t, r.m, "relaygate_key_redis_errors_total", map[string]string{"key": "closed-key", "action": "refused"}); got != 1 {
		t.Errorf("fail-closed redis errors = %v, want 1", got)
	}
	waitMetric(t, r.m, "relaygate_key_redis_errors_total", map[string]string{"key": "open-key", "action": "uncharged"}, 1)

	rds.Restart()
	// The guard probes Redis again after its back-off; the deadline is a
	// failure guard.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if chat(t, r.url, "sk-closed-key-0123456789abc", "m").status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fail-closed key is still refused with Redis back")
		}
	}
}

// TestKeyChargedWhenClientLeaves: a stream whose client hangs up as soon
// as it has [DONE] (as go-openai does), and a whole answer whose client
// closes its connection unread, are charged all the same.
func TestKeyChargedWhenClientLeaves(t *testing.T) { bothModes(t, testKeyChargedWhenClientLeaves) }

func testKeyChargedWhenClientLeaves(t *testing.T, mode string) {
	rds := testenv.StartRedis(t)
	rdb := redisClient(t, rds.URL)
	sim := startSim(t, upstreamsim.Config{ChunkDelay: time.Millisecond})
	cfg := keysConfigIn(t, mode, rds.URL, sim, `
keys: [{name: leaver, key: sk-leaver-key-0123456789abc, budget: {usd: 100, period: day}}]
`)
	r := startReplica(t, cfg)
	for i, body := range []string{
		`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
	} {
		tr := &http.Transport{}
		req, _ := http.NewRequest(http.MethodPost, r.url+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer sk-leaver-key-0123456789abc")
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %v", i, resp, err)
		}
		if i == 0 {
			var seen strings.Builder
			buf := make([]byte, 512)
			for !strings.Contains(seen.String(), "[DONE]") {
				n, err := resp.Body.Read(buf)
				seen.Write(buf[:n])
				if err != nil {
					t.Fatalf("stream ended without [DONE]: %v", err)
				}
			}
		}
		resp.Body.Close()
		tr.CloseIdleConnections()
		waitSpend(t, rdb, keySub("", "leaver"), "key", int64(i+1)*answerCost)
	}
}

// TestKeyCacheScopes: a named key's rotated secrets share its cache;
// under cache.scope team the keys of one team share, and no other key.
func TestKeyCacheScopes(t *testing.T) { bothModes(t, testKeyCacheScopes) }

func testKeyCacheScopes(t *testing.T, mode string) {
	rds := testenv.StartRedis(t)
	sim := startSim(t, upstreamsim.Config{})
	for _, scope := range []string{"key", "team"} {
		t.Run(scope, func(t *testing.T) {
			doc := `
teams: [{name: search}]
keys:
  - {name: a, team: search, key: [sk-a-old-key-0123456789, sk-a-new-key-0123456789]}
  - {name: b, team: search, key: sk-b-key-0123456789abc}
  - {name: c, key: sk-c-key-0123456789abc}
`
			cfg := keysConfigIn(t, mode, rds.URL, sim, doc)
			cfg.Cache.Scope = scope
			c, err := cache.New(cache.Options{URL: rds.URL, TTL: time.Hour, Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			m := metrics.New()
			srv := httptest.NewServer(New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m, Cache: c}))
			t.Cleanup(srv.Close)
			body := `{"model":"m","temperature":0,"messages":[{"role":"user","content":"scope ` + scope + `"}]}`
			ask := func(key string) string {
				r := post(t, srv.URL, "/v1/chat/completions", body, "Authorization", "Bearer "+key)
				if r.status != 200 {
					t.Fatalf("%s: %d %s", key, r.status, r.body)
				}
				return r.header.Get("X-Cache")
			}
			if got := ask("sk-a-old-key-0123456789"); got != "MISS" {
				t.Fatalf("first: X-Cache %q", got)
			}
			// Stored after the answer, before the request is counted.
			waitMetric(t, m, "relaygate_key_requests_total", map[string]string{"key": "a"}, 1)
			if got := ask("sk-a-new-key-0123456789"); got != "HIT" {
				t.Errorf("a's other secret: X-Cache %q, want HIT", got)
			}
			want := map[string]string{"key": "MISS", "team": "HIT"}[scope]
			if got := ask("sk-b-key-0123456789abc"); got != want {
				t.Errorf("b, of the same team: X-Cache %q, want %s", got, want)
			}
			if got := ask("sk-c-key-0123456789abc"); got != "MISS" {
				t.Errorf("c, of no team: X-Cache %q, want MISS", got)
			}
		})
	}
}

// TestKeyReloadForgetsSeries: a reload that removes a key, or a budget,
// removes their series; a remaining-budget series exists only once Redis
// has said what is spent.
func TestKeyReloadForgetsSeries(t *testing.T) {
	rds := testenv.StartRedis(t)
	sim := startSim(t, upstreamsim.Config{})
	r := startReplica(t, keysConfig(t, rds.URL, sim, `
teams: [{name: t, budget: {usd: 10, period: month}}]
keys:
  - {name: a, team: t, key: sk-reload-a-0123456789, budget: {usd: 5, period: day}}
  - {name: b, team: t, key: sk-reload-b-0123456789}
`))
	count := func(name string, labels map[string]string) int {
		t.Helper()
		n := 0
		fams, err := r.m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() != name {
				continue
			}
		series:
			for _, m := range f.GetMetric() {
				have := map[string]string{}
				for _, l := range m.GetLabel() {
					have[l.GetName()] = l.GetValue()
				}
				for k, v := range labels {
					if have[k] != v {
						continue series
					}
				}
				n++
			}
		}
		return n
	}
	if n := count("relaygate_budget_remaining_usd", nil); n != 0 {
		t.Errorf("%d remaining-budget series before any request, want none", n)
	}
	wantStatus(t, chat(t, r.url, "sk-reload-b-0123456789", "m"), 200, "", "")
	wantStatus(t, chat(t, r.url, "sk-reload-a-0123456789", "m"), 200, "", "")
	waitMetric(t, r.m, "relaygate_budget_remaining_usd", map[string]string{"scope": "key", "name": "a"}, 4)
	if got := metricValue(t, r.m, "relaygate_budget_remaining_usd", map[string]string{"scope": "team", "name": "t"}); got != 8 {
		t.Errorf("team remaining %v, want 8", got)
	}
	if count("relaygate_key_requests_total", map[string]string{"key": "b"}) != 1 {
		t.Fatal("no series for key b")
	}
	r.gw.Reload(keysConfig(t, rds.URL, sim, `
teams: [{name: t, budget: {usd: 10, period: month}}]
keys: [{name: a, team: t, key: sk-reload-a-0123456789}]
`))
	if n := count("relaygate_key_requests_total", map[string]string{"key": "b"}) + count("relaygate_refusals_total", map[string]string{"key": "b"}); n != 0 {
		t.Errorf("%d series of removed key b remain", n)
	}
	if n := count("relaygate_budget_remaining_usd", map[string]string{"scope": "key"}); n != 0 {
		t.Errorf("%d key budget series remain after a's budget was removed", n)
	}
	if n := count("relaygate_budget_remaining_usd", map[string]string{"scope": "team", "name": "t"}); n != 1 {
		t.Errorf("the team's budget series: %d, want 1 (it still has one)", n)
	}
	if n := count("relaygate_key_requests_total", map[string]string{"key": "a"}); n != 1 {
		t.Errorf("key a's series: %d, want 1", n)
	}
}
