package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/relaygate/relaygate/service/internal/cache"
	"github.com/relaygate/relaygate/service/internal/metrics"
	"github.com/relaygate/relaygate/service/internal/testenv"
	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

// TestOpenAISurfaceSDK drives legacy completions, moderations, images,
// speech and transcriptions through a real gateway with the official SDK,
// the simulator as the upstream; the first upstream fails each request
// once with a 503, so every endpoint falls back.
func TestOpenAISurfaceSDK(t *testing.T) {
	failing := newFakeUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":{"message":"overloaded","type":"server_error"}}`)
	})
	_, sim := responsesSim(t, "upstream-key-b", upstreamsim.Config{CompletionTokens: 5})
	gwSrv, _, m := newGateway(t, gwOpts{attempts: 1, upstream: allAPIs, routeA: `a, {upstream: b, model: "sim-m"}`}, failing, sim)
	client := sdkClient(gwSrv.URL)
	ctx := context.Background()

	tests := []struct {
		name, api string
		call      func(t *testing.T) *http.Response
	}{
		{"completion", "completions", func(t *testing.T) *http.Response {
			var hr *http.Response
			c, err := client.Completions.New(ctx, openai.CompletionNewParams{Model: "m",
				Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")}},
				option.WithResponseInto(&hr))
			if err != nil {
				t.Fatalf("completion: %v", err)
			}
			if c.Object != "text_completion" || len(c.Choices) != 1 || len(strings.Fields(c.Choices[0].Text)) != 5 ||
				c.Usage.PromptTokens != 4 || c.Usage.CompletionTokens != 5 || c.Model != "sim-m" {
				t.Errorf("completion = %+v", c)
			}
			return hr
		}},
		{"completion stream", "completions", func(t *testing.T) *http.Response {
			var hr *http.Response
			st := client.Completions.NewStreaming(ctx, openai.CompletionNewParams{Model: "m",
				Prompt:        openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
				StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}},
				option.WithResponseInto(&hr))
			var text strings.Builder
			var usage openai.CompletionUsage
			for st.Next() {
				ch := st.Current()
				if len(ch.Choices) > 0 {
					text.WriteString(ch.Choices[0].Text)
				}
				if ch.Usage.TotalTokens > 0 {
					usage = ch.Usage
				}
			}
			if err := st.Err(); err != nil {
				t.Fatalf("stream: %v", err)
			}
			if len(strings.Fields(text.String())) != 5 || usage.PromptTokens != 4 || usage.CompletionTokens != 5 {
				t.Errorf("stream text %q usage %+v", text.String(), usage)
			}
			return hr
		}},
		{"moderation", "moderations", func(t *testing.T) *http.Response {
			var hr *http.Response
			res, err := client.Moderations.New(ctx, openai.ModerationNewParams{Model: "m",
				Input: openai.ModerationNewParamsInputUnion{OfStringArray: []string{"hello", "I will kill it"}}},
				option.WithResponseInto(&hr))
			if err != nil {
				t.Fatalf("moderation: %v", err)
			}
			if len(res.Results) != 2 || res.Results[0].Flagged || !res.Results[1].Flagged ||
				!res.Results[1].Categories.Violence || res.Results[1].CategoryScores.Violence < 0.5 {
				t.Errorf("moderation = %+v", res)
			}
			return hr
		}},
		{"image", "images", func(t *testing.T) *http.Response {
			var hr *http.Response
			res, err := client.Images.Generate(ctx, openai.ImageGenerateParams{Model: "m", Prompt: "a red fox", N: openai.Int(2)},
				option.WithResponseInto(&hr))
			if err != nil {
				t.Fatalf("image: %v", err)
			}
			if len(res.Data) != 2 {
				t.Fatalf("images = %+v", res)
			}
			png, err := base64.StdEncoding.DecodeString(res.Data[0].B64JSON)
			if err != nil || !bytes.Equal(png, upstreamsim.TinyPNG()) || res.Usage.OutputTokens != 544 {
				t.Errorf("image %v %q usage %+v", err, png, res.Usage)
			}
			return hr
		}},
		{"speech", "audio", func(t *testing.T) *http.Response {
			resp, err := client.Audio.Speech.New(ctx, openai.AudioSpeechNewParams{Model: "m", Input: "Good morning",
				Voice: openai.AudioSpeechNewParamsVoiceUnion{OfString: openai.String("alloy")}})
			if err != nil {
				t.Fatalf("speech: %v", err)
			}
			defer resp.Body.Close()
			audio, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(audio, upstreamsim.SpeechAudio("sim-m", "alloy", "Good morning")) ||
				resp.Header.Get("Content-Type") != "audio/mpeg" {
				t.Errorf("speech: %v, %d bytes of %s", err, len(audio), resp.Header.Get("Content-Type"))
			}
			return resp
		}},
		{"transcription", "audio", func(t *testing.T) *http.Response {
			file := bytes.Repeat([]byte("RIFF-audio-"), 3000)
			var hr *http.Response
			res, err := client.Audio.Transcriptions.New(ctx, openai.AudioTranscriptionNewParams{Model: "m",
				File: openai.File(bytes.NewReader(file), "hello.wav", "audio/wav"), Language: openai.String("en")},
				option.WithResponseInto(&hr))
			if err != nil {
				t.Fatalf("transcription: %v", err)
			}
			// The text is the simulator's function of the model it was
			// asked for and the file's bytes: the rename and the upload
			// both got there intact.
			if want := upstreamsim.TranscriptText("sim-m", sha256.Sum256(file)); res.Text != want {
				t.Errorf("transcript %q, want %q", res.Text, want)
			}
			return hr
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := metricValue(t, m, "relaygate_requests_total", map[string]string{"api": tc.api, "upstream": "b", "code": "200"})
			hr := tc.call(t)
			if up := hr.Header.Get("X-Relaygate-Upstream"); up != "b" {
				t.Errorf("answered by %q, want b after a's 503", up)
			}
			waitMetric(t, m, "relaygate_requests_total", map[string]string{"api": tc.api, "upstream": "b", "code": "200"}, before+1)
		})
	}
	if got := metricValue(t, m, "relaygate_fallbacks_total", map[string]string{"from": "a", "to": "b"}); got != float64(len(tests)) {
		t.Errorf("fallbacks = %v, want %d", got, len(tests))
	}
	// Usage: completions whole and streamed (4+5 each), images (4+544).
	if got := metricValue(t, m, "relaygate_tokens_total", map[string]string{"api": "completions", "kind": "completion"}); got != 10 {
		t.Errorf("completion tokens = %v, want 10", got)
	}
	if got := metricValue(t, m, "relaygate_tokens_total", map[string]string{"api": "images", "kind": "completion"}); got != 544 {
		t.Errorf("image output tokens = %v, want 544", got)
	}
}

// TestSurfaceAPINotServed: an API no upstream of the route declares is a
// 400 naming the model and the API, in OpenAI's shape.
func TestSurfaceAPINotServed(t *testing.T) {
	up := newFakeUpstream(t, okCompletion)
	gwSrv, _, _ := newGateway(t, gwOpts{upstream: ", apis: [chat]"}, up)
	client := sdkClient(gwSrv.URL)
	ctx := context.Background()
	_, err := client.Moderations.New(ctx, openai.ModerationNewParams{Model: "m",
		Input: openai.ModerationNewParamsInputUnion{OfString: openai.String("hi")}})
	e := apiErrorOf(t, err)
	if e.StatusCode != http.StatusBadRequest || e.Code != "api_not_served" || !strings.Contains(e.Message, "moderations") {
		t.Errorf("moderation on a chat-only route: %d %s %s", e.StatusCode, e.Code, e.Message)
	}
	_, err = client.Audio.Transcriptions.New(ctx, openai.AudioTranscriptionNewParams{Model: "m",
		File: openai.File(strings.NewReader("x"), "a.wav", "audio/wav")})
	if e := apiErrorOf(t, err); e.StatusCode != http.StatusBadRequest || e.Code != "api_not_served" {
		t.Errorf("transcription on a chat-only route: %d %s %s", e.StatusCode, e.Code, e.Message)
	}
	if up.calls.Load() != 0 {
		t.Errorf("upstream asked %d times", up.calls.Load())
	}
}

// TestImpliedModel: moderations and image generations take an optional
// model; the SDKs send none by default, and OpenAI's API reference gives
// the model it means. The gateway routes by that model and names it to the
// upstream, renamed where the route says so.
func TestImpliedModel(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name, model, route, wantUpstream string
		call                             func(client openai.Client) error
	}{
		{"moderation", "omni-moderation-latest", "a", "omni-moderation-latest", func(client openai.Client) error {
			_, err := client.Moderations.New(ctx, openai.ModerationNewParams{
				Input: openai.ModerationNewParamsInputUnion{OfString: openai.String("hi")}})
			return err
		}},
		{"moderation renamed", "omni-moderation-latest", `{upstream: a, model: "relay-moderation"}`, "relay-moderation", func(client openai.Client) error {
			_, err := client.Moderations.New(ctx, openai.ModerationNewParams{
				Input: openai.ModerationNewParamsInputUnion{OfString: openai.String("hi")}})
			return err
		}},
		{"image", "dall-e-2", "a", "dall-e-2", func(client openai.Client) error {
			_, err := client.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "a red fox"})
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := newFakeUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, `{"id":"x","model":"any","results":[],"created":1,"data":[]}`)
			})
			gwSrv, _, _ := newGateway(t, gwOpts{model: tc.model, routeA: tc.route}, up)
			if err := tc.call(sdkClient(gwSrv.URL)); err != nil {
				t.Fatalf("call without a model: %v", err)
			}
			var sent struct{ Model *string }
			if err := json.Unmarshal(up.lastBody(), &sent); err != nil || sent.Model == nil || *sent.Model != tc.wantUpstream {
				t.Errorf("upstream got %s (%v), want model %q", up.lastBody(), err, tc.wantUpstream)
			}
		})
	}
	// A model key left empty is the same as none, and yields one model key.
	up := newFakeUpstream(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x","model":"any","results":[]}`)
	})
	gwSrv, _, _ := newGateway(t, gwOpts{model: "omni-moderation-latest"}, up)
	r := do(t, "POST", gwSrv.URL+"/v1/moderations", strings.NewReader(`{"model":"","input":"hi"}`), withKey()...)
	if r.status != http.StatusOK || string(up.lastBody()) != `{"model":"omni-moderation-latest","input":"hi"}` {
		t.Errorf("empty model: %d %s; upstream got %s", r.status, r.body, up.lastBody())
	}
	// Chat has no default model: still a 400 that says so.
	r = do(t, "POST", gwSrv.URL+"/v1/chat/completions", strings.NewReader(`{"messages":[{"role":"user","content":"hi"}]}`), withKey()...)
	if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "missing_model") {
		t.Errorf("chat without a model: %d %s", r.status, r.body)
	}
}

// TestTranscriptionForm covers the form reading: refusals, and the model
// renamed in place with every other byte as the client sent it.
func TestTranscriptionForm(t *testing.T) {
	var got []byte
	up := newFakeUpstream(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"text":"ok"}`)
	})
	gwSrv, _, _ := newGateway(t, gwOpts{upstream: allAPIs, routeA: `{upstream: a, model: "whisper-long-name"}`}, up)
	form := func(fields ...string) (string, []byte) {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		for i := 0; i+1 < len(fields); i += 2 {
			_ = mw.WriteField(fields[i], fields[i+1])
		}
		fw, _ := mw.CreateFormFile("file", "a.wav")
		_, _ = fw.Write([]byte("audio\r\n--not-a-boundary\r\nbytes"))
		_ = mw.Close()
		return mw.FormDataContentType(), b.Bytes()
	}
	tests := []struct {
		name   string
		ct     string
		body   []byte
		status int
		code   string
	}{
		{"not multipart", "application/json", []byte(`{"model":"m"}`), 400, "invalid_content_type"},
		{"no model", "", nil, 400, "missing_model"},
		{"model twice", "", nil, 400, "duplicate_key"},
		{"unknown model", "", nil, 404, "model_not_found"},
		{"broken form", "multipart/form-data; boundary=xyz", []byte("--xyz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm"), 400, "invalid_multipart"},
	}
	tests[1].ct, tests[1].body = form("language", "en")
	tests[2].ct, tests[2].body = form("model", "m", "model", "other")
	tests[3].ct, tests[3].body = form("model", "nope")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := post(t, gwSrv.URL, "/v1/audio/transcriptions", string(tc.body), "Content-Type", tc.ct)
			if _, _, code := openAIError(t, res.body); res.status != tc.status || code != tc.code {
				t.Errorf("got %d %s (%s), want %d %s", res.status, code, res.body, tc.status, tc.code)
			}
		})
	}
	ct, body := form("model", "m", "language", "en")
	res := post(t, gwSrv.URL, "/v1/audio/transcriptions", string(body), "Content-Type", ct)
	if res.status != 200 || string(res.body) != `{"text":"ok"}` {
		t.Fatalf("transcription: %d %s", res.status, res.body)
	}
	want := bytes.Replace(body, []byte("\r\n\r\nm\r\n"), []byte("\r\n\r\nwhisper-long-name\r\n"), 1)
	if !bytes.Equal(got, want) {
		t.Errorf("upstream got\n%q\nwant\n%q", got, want)
	}
}

// TestTranscriptionMemory: a large upload is held once, in the body
// buffer, and forwarded from it, renamed model and all.
func TestTranscriptionMemory(t *testing.T) {
	const size = 8 << 20
	var sum [sha256.Size]byte
	// The upstream streams the form through a hash, so that what it
	// allocates (counted too: it runs in this process) stays small.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mr, err := r.MultipartReader()
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		var model string
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			if p.FormName() == "model" {
				v, _ := io.ReadAll(p)
				model = string(v)
				continue
			}
			h := sha256.New()
			_, _ = io.Copy(h, p)
			h.Sum(sum[:0])
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"text":%q}`, model)
	}))
	t.Cleanup(srv.Close)
	up := &fakeUpstream{Server: srv}
	gwSrv, _, _ := newGateway(t, gwOpts{maxBody: 16 << 20, upstream: allAPIs, routeA: `{upstream: a, model: "whisper-1"}`}, up)

	file := bytes.Repeat([]byte{0xff, 0xfb, 0x90, 0x64}, size/4)
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	fw, _ := mw.CreateFormFile("file", "big.mp3")
	_, _ = fw.Write(file)
	_ = mw.WriteField("model", "m") // after the file: the parser must scan past it
	_ = mw.Close()
	body := b.Bytes()

	send := func() {
		req, _ := http.NewRequest(http.MethodPost, gwSrv.URL+"/v1/audio/transcriptions", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testClientKey)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != `{"text":"whisper-1"}` {
			t.Fatalf("transcription: %d %s", resp.StatusCode, got)
		}
	}
	send() // warm connections and pools
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	send()
	runtime.ReadMemStats(&after)
	if sum != sha256.Sum256(file) {
		t.Fatal("the upstream did not get the file's bytes")
	}
	// Everything in this process counts: client, gateway and upstream.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size*5/2 {
		t.Errorf("one %d MiB upload allocated %.1f MiB (%.2f× the file); want < 2.5×", size>>20, float64(alloc)/(1<<20), float64(alloc)/size)
	} else {
		t.Logf("one %d MiB upload allocated %.1f MiB (%.2f× the file)", size>>20, float64(alloc)/(1<<20), float64(alloc)/size)
	}
}

// TestSurfaceCache, with a real Redis: a whole legacy completion at
// temperature 0 is cached like chat; its stream, moderations, images and
// speech always go to the upstream.
func TestSurfaceCache(t *testing.T) {
	rds := testenv.StartRedis(t)
	_, sim := responsesSim(t, "upstream-key-a", upstreamsim.Config{CompletionTokens: 4})
	cfg := gatewayConfig(t, gwOpts{upstream: allAPIs, extra: fmt.Sprintf("cache: {redis_url: %q, ttl: 1h}\n", rds.URL)}, sim)
	c, err := cache.New(cache.Options{URL: rds.URL, TTL: time.Hour, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	m := metrics.New()
	srv := httptest.NewServer(New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m, Cache: c}))
	t.Cleanup(srv.Close)

	tests := []struct {
		name, api, path, body string
		second                string // X-Cache of the second identical request
	}{
		{"completion", "completions", "/v1/completions", `{"model":"m","prompt":"cache me","temperature":0}`, "HIT"},
		{"moderation", "moderations", "/v1/moderations", `{"model":"m","input":"hi","temperature":0}`, "BYPASS"},
		{"image", "images", "/v1/images/generations", `{"model":"m","prompt":"fox","temperature":0}`, "BYPASS"},
		{"speech", "audio", "/v1/audio/speech", `{"model":"m","input":"hi","voice":"alloy","temperature":0}`, "BYPASS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first := post(t, srv.URL, tc.path, tc.body)
			if first.status != http.StatusOK {
				t.Fatalf("first: %d %s", first.status, first.body)
			}
			// Stored after the client has it, before the request is
			// counted: wait for the count.
			waitMetric(t, m, "relaygate_requests_total", map[string]string{"model": "m", "upstream": "a", "code": "200", "api": tc.api}, 1)
			second := post(t, srv.URL, tc.path, tc.body)
			if got := second.header.Get("X-Cache"); got != tc.second || second.status != http.StatusOK {
				t.Errorf("second: %d X-Cache %q, want %q", second.status, got, tc.second)
			}
			if tc.second == "HIT" && !bytes.Equal(first.body, second.body) {
				t.Errorf("cached answer differs:\n%s\n%s", first.body, second.body)
			}
		})
	}
	// The cached completion asked as a stream: only chat has a replay of
	// a whole answer as events, so the upstream streams it.
	st := post(t, srv.URL, "/v1/completions", `{"model":"m","prompt":"cache me","temperature":0,"stream":true}`)
	if st.status != http.StatusOK || st.header.Get("X-Cache") != "BYPASS" || !bytes.HasSuffix(st.body, []byte("data: [DONE]\n\n")) {
		t.Errorf("stream after a cached whole answer: %d X-Cache %q\n%s", st.status, st.header.Get("X-Cache"), st.body)
	}
}
