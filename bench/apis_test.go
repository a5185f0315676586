package bench

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"gopkg.in/yaml.v3"
)

// cannedStream writes the simulator's event sequence for api with tokens
// content events, flushing each event as the simulator does. typed=false
// drops the event: lines, which byType must not need.
func cannedStream(api *streamAPI, tokens int, typed bool) []string {
	ev := func(typ, data string) string {
		if typed {
			return "event: " + typ + "\ndata: " + data + "\n\n"
		}
		return "data: " + data + "\n\n"
	}
	typedEv := func(typ string) string { return ev(typ, `{"type":"`+typ+`"}`) }
	var out []string
	switch api {
	case apiChat:
		out = append(out, `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`+"\n\n")
		for i := range tokens {
			out = append(out, fmt.Sprintf(`data: {"choices":[{"index":0,"delta":{"content":"w%d "}}]}`+"\n\n", i))
		}
		out = append(out, `data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}`+"\n\n",
			`data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}`+"\n\n", "data: [DONE]\n\n")
	case apiMessages:
		// message_start and ping come in one write, as the simulator sends them.
		out = append(out, typedEv("message_start")+ev("ping", `{"type": "ping"}`), typedEv("content_block_start"))
		for i := range tokens {
			out = append(out, ev("content_block_delta", fmt.Sprintf(`{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"w%d "}}`, i)))
		}
		out = append(out, typedEv("content_block_stop"), typedEv("message_delta"), typedEv("message_stop"))
	case apiResponses:
		for _, t := range []string{"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"} {
			out = append(out, typedEv(t))
		}
		for i := range tokens {
			out = append(out, ev("response.output_text.delta", fmt.Sprintf(`{"type":"response.output_text.delta","delta":"w%d "}`, i)))
		}
		for _, t := range []string{"response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"} {
			out = append(out, typedEv(t))
		}
	}
	return out
}

// TestReadStreamAPIs reads each API's stream over loopback HTTP and checks
// that the events are counted and the first content event is found:
// content_block_delta for Messages, response.output_text.delta for
// Responses, the first non-empty delta.content for chat. Times are not
// checked; only that TTFT is not before the first event.
func TestReadStreamAPIs(t *testing.T) {
	const tokens = 5
	for _, api := range streamAPIs {
		for _, typed := range []bool{true, false} {
			if api == apiChat && !typed {
				continue
			}
			t.Run(fmt.Sprintf("%s/typed=%v", api.name, typed), func(t *testing.T) {
				var gotPath, gotAuth, gotKey string
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					gotPath, gotAuth, gotKey = r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("X-Api-Key")
					w.Header().Set("Content-Type", "text/event-stream")
					rc := http.NewResponseController(w)
					for _, chunk := range cannedStream(api, tokens, typed) {
						_, _ = w.Write([]byte(chunk))
						_ = rc.Flush()
					}
				}))
				defer srv.Close()
				sub := &subject{name: subjectDirect, bases: map[role]string{roleStream: srv.URL}, auth: "Bearer k1", client: srv.Client()}
				e := entry{label: subjectDirect, subject: sub, role: roleStream}
				timing, err := readStream(context.Background(), e, api, api.body(roleStream, tokens), streamShape{tokens: tokens, chunkDelay: time.Millisecond})
				if err != nil {
					t.Fatalf("readStream: %v", err)
				}
				if gotPath != api.path {
					t.Errorf("path %q, want %q", gotPath, api.path)
				}
				if api == apiMessages {
					if gotKey != "k1" || gotAuth != "" {
						t.Errorf("Messages auth: x-api-key %q, Authorization %q; want the key as x-api-key only", gotKey, gotAuth)
					}
				} else if gotAuth != "Bearer k1" {
					t.Errorf("Authorization %q, want Bearer k1", gotAuth)
				}
				if len(timing.gaps) != tokens+1 {
					t.Errorf("%d paced gaps, want %d", len(timing.gaps), tokens+1)
				}
				if timing.ttft < timing.ttfb || timing.total < timing.ttft {
					t.Errorf("ttfb %v, ttft %v, total %v: out of order", timing.ttfb, timing.ttft, timing.total)
				}
			})
		}
	}
}

// TestTimeStreamFirstContent stamps canned events 1ms apart and checks
// which one TTFT, the total and the paced gaps come from.
func TestTimeStreamFirstContent(t *testing.T) {
	const tokens = 3
	t0 := time.Unix(1000, 0)
	for _, api := range streamAPIs {
		t.Run(api.name, func(t *testing.T) {
			evs, err := readEvents(bufio.NewReader(strings.NewReader(strings.Join(cannedStream(api, tokens, true), ""))), api)
			if err != nil {
				t.Fatal(err)
			}
			for i := range evs {
				evs[i].at = t0.Add(time.Duration(i+1) * time.Millisecond)
			}
			first := slices.IndexFunc(evs, func(e streamEvent) bool { return e.class == eventContent })
			wantFirst := map[string]int{"chat": 1, "messages": 3, "responses": 4}[api.name]
			if first != wantFirst {
				t.Fatalf("first content event at %d, want %d", first, wantFirst)
			}
			timing, err := timeStream(evs, t0, api, streamShape{tokens: tokens, chunkDelay: 3 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if want := time.Duration(first+1) * time.Millisecond; timing.ttft != want {
				t.Errorf("ttft %v, want %v (event %d)", timing.ttft, want, first)
			}
			if timing.ttfb != time.Millisecond || timing.total != time.Duration(len(evs))*time.Millisecond {
				t.Errorf("ttfb %v, total %v; want 1ms, %dms", timing.ttfb, timing.total, len(evs))
			}
			// Every gap is 1ms, under half the 3ms chunk delay: all held back.
			if len(timing.gaps) != tokens+1 || timing.heldBack != tokens+1 {
				t.Errorf("%d gaps, %d held back; want %d of each", len(timing.gaps), timing.heldBack, tokens+1)
			}
			if _, err := timeStream(evs, t0, api, streamShape{tokens: tokens + 1, chunkDelay: time.Millisecond}); err == nil {
				t.Errorf("a stream one content event short was accepted")
			}
		})
	}
}

// TestReadEventsUnfinished: a stream that ends before its last event is an
// error, not a short measurement.
func TestReadEventsUnfinished(t *testing.T) {
	for _, api := range streamAPIs {
		ev := cannedStream(api, 2, true)
		if _, err := readEvents(bufio.NewReader(strings.NewReader(strings.Join(ev[:len(ev)-1], ""))), api); err == nil {
			t.Errorf("%s: stream without its last event accepted", api.name)
		}
	}
}

// TestStreamAPIScenarios checks that each stream API gets a streams
// scenario with the same rate, simulator and answer length as chat's, and
// a body in its API's shape.
func TestStreamAPIScenarios(t *testing.T) {
	st := &stack{subjects: map[string]*subject{}}
	for _, n := range []string{subjectDirect, subjectGateway, subjectGatewayCache, subjectGoProxy, subjectNginx} {
		st.subjects[n] = &subject{name: n, gateway: strings.HasPrefix(n, "gateway")}
	}
	s := &suite{cfg: Config{Scenarios: []string{"streams", "streams-messages", "streams-responses"}, Tokens: 7, StreamRate: 30}, st: st}
	scs := s.scenarios()
	var names []string
	for _, sc := range scs {
		names = append(names, sc.name)
		if sc.kind != kindStreams || sc.rate != 30 {
			t.Errorf("%s: kind %q at %d/s, want streams at 30/s", sc.name, sc.kind, sc.rate)
		}
		labels := map[string]bool{}
		for _, e := range sc.entries {
			labels[e.label] = true
			if e.role != roleStream {
				t.Errorf("%s / %s: role %q, want %q", sc.name, e.label, e.role, roleStream)
			}
		}
		if !labels[subjectDirect] || !labels[subjectGateway] {
			t.Errorf("%s: rows %v, want direct and gateway (added = gateway − direct)", sc.name, labels)
		}
		body := sc.bodies[0]
		if !gjson.ValidBytes(body) || !gjson.GetBytes(body, "stream").Bool() || gjson.GetBytes(body, "model").Str != roleStream.model() {
			t.Errorf("%s: body %s is not a stream request for %s", sc.name, body, roleStream.model())
		}
		limit := map[string]string{"chat": "max_tokens", "messages": "max_tokens", "responses": "max_output_tokens"}[sc.streamAPI().name]
		if gjson.GetBytes(body, limit).Int() != 7 {
			t.Errorf("%s: %s = %s, want 7", sc.name, limit, gjson.GetBytes(body, limit).Raw)
		}
	}
	if want := []string{"streams", "streams-messages", "streams-responses"}; !slices.Equal(names, want) {
		t.Fatalf("scenarios %v, want %v", names, want)
	}
	for _, sc := range scs {
		if sc.group != scs[0].group || sc.group == "" {
			t.Errorf("%s: group %q, want the stream scenarios in one group (rounds interleaved)", sc.name, sc.group)
		}
	}
	if scs[0].streamAPI() != apiChat || scs[1].streamAPI() != apiMessages || scs[2].streamAPI() != apiResponses {
		t.Errorf("scenario APIs %s, %s, %s", scs[0].streamAPI().name, scs[1].streamAPI().name, scs[2].streamAPI().name)
	}
	if !gjson.GetBytes(scs[1].bodies[0], "messages.0.content").Exists() || !gjson.GetBytes(scs[2].bodies[0], "input").Exists() {
		t.Errorf("Messages body needs messages, Responses body input: %s / %s", scs[1].bodies[0], scs[2].bodies[0])
	}
}

// TestGatewayConfigAPIs: every simulator upstream declares the APIs the
// suite sends, or the gateway would refuse Messages and Responses.
func TestGatewayConfigAPIs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gw.yaml")
	sims := map[role]string{roleFast: "127.0.0.1:1", roleStream: "127.0.0.1:2", roleIdle: "127.0.0.1:3", roleFail: "127.0.0.1:4"}
	if err := writeGatewayConfig(path, "127.0.0.1:5", sims, ""); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Upstreams []struct {
			Name string   `yaml:"name"`
			APIs []string `yaml:"apis"`
		} `yaml:"upstreams"`
	}
	if err := yaml.Unmarshal(b, &conf); err != nil {
		t.Fatalf("gateway config: %v\n%s", err, b)
	}
	if len(conf.Upstreams) != 4 {
		t.Fatalf("%d upstreams, want 4", len(conf.Upstreams))
	}
	for _, u := range conf.Upstreams {
		for _, api := range streamAPIs {
			if !slices.Contains(u.APIs, api.name) {
				t.Errorf("upstream %s: apis %v lack %s", u.Name, u.APIs, api.name)
			}
		}
	}
}

// TestCompareStreamAPIs checks the ratios to chat and the 10% verdicts.
func TestCompareStreamAPIs(t *testing.T) {
	// Added TTFT is a tenth of TTFT in every row: its ratios follow TTFT's.
	row := func(addedP50, addedP95, ttftP50, ttftP95 float64) Row {
		return Row{Label: subjectGateway, Subject: subjectGateway, Requests: 10,
			Added: &Percentiles{P50: addedP50, P95: addedP95}, TTFT: &Percentiles{P50: ttftP50, P95: ttftP95},
			TTFTAdded: &Percentiles{P50: ttftP50 / 10, P95: ttftP95 / 10}}
	}
	sc := func(name, api string, r Row) ScenarioResult {
		return ScenarioResult{Name: name, Kind: string(kindStreams), API: api, Rows: []Row{{Label: subjectDirect}, r}}
	}
	rep := &Report{Scenarios: []ScenarioResult{
		sc("streams", "chat", row(100, 200, 5000, 6000)),
		sc("streams-messages", "messages", row(105, 219, 5100, 6500)),
		sc("streams-responses", "responses", row(120, 150, 5000, 6000)),
	}}
	cs := compareStreamAPIs(rep)
	if len(cs) != 3 {
		t.Fatalf("%d comparisons, want 3", len(cs))
	}
	want := []struct {
		api, verdict string
		addedP50     float64
	}{{"chat", "reference", 1}, {"messages", Met, 1.05}, {"responses", NotMet, 1.2}}
	for i, w := range want {
		c := cs[i]
		if c.API != w.api || c.Verdict != w.verdict || math.Abs(float64(c.AddedP50Vs)-w.addedP50) > 1e-9 {
			t.Errorf("comparison %d = %s %s added p50 %.3f×, want %s %s %.3f× (%s)", i, c.API, c.Verdict, c.AddedP50Vs, w.api, w.verdict, w.addedP50, c.Note)
		}
	}
	if !strings.Contains(cs[2].Note, "added p50 1.20×") {
		t.Errorf("responses note %q does not name the ratio over 1.10", cs[2].Note)
	}
	if r := float64(cs[1].TTFTAddedP95Vs); math.Abs(r-6500.0/6000) > 1e-9 {
		t.Errorf("messages added TTFT p95 ratio %v, want %v", r, 6500.0/6000)
	}

	// Added TTFT over 1.10× chat's fails the API even when TTFT at the
	// client, diluted by the chunk delay, is within 10%.
	slow := row(100, 200, 5000, 6000)
	slow.TTFTAdded.P50 = 600 // chat's 500
	rep.Scenarios[1].Rows[1] = slow
	if c := compareStreamAPIs(rep)[1]; c.Verdict != NotMet || !strings.Contains(c.Note, "added TTFT p50 1.20×") {
		t.Errorf("added TTFT 1.2× chat's: %s (%s), want NOT MET naming it", c.Verdict, c.Note)
	}

	// Chat's added time at or under 0 (noise) gives no ratio, not a pass.
	rep.Scenarios[0].Rows[1] = row(-3, 200, 5000, 6000)
	rep.Scenarios[1].Rows[1] = row(105, 200, 5000, 6000)
	if c := compareStreamAPIs(rep)[1]; c.Verdict != NotMeasured || !math.IsNaN(float64(c.AddedP50Vs)) {
		t.Errorf("with chat's added p50 negative: %s, ratio %v; want NOT MEASURED, NaN", c.Verdict, c.AddedP50Vs)
	}
	// Only chat streams run: no comparison section.
	if cs := compareStreamAPIs(&Report{Scenarios: rep.Scenarios[:1]}); cs != nil {
		t.Errorf("chat alone gave %d comparisons, want none", len(cs))
	}
}
