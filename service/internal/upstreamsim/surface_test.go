package upstreamsim

import (
	"bytes"
	"crypto/sha256"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

// TestSurfaceEndpoints checks each of the rest of OpenAI's endpoints over
// loopback: its answer's shape and its refusals of bad requests.
func TestSurfaceEndpoints(t *testing.T) {
	sim, ts := startSim(t, Config{APIKey: "k", CompletionTokens: 3, Models: []string{"m"}})
	tests := []struct {
		name, path, body string
		status           int
		check            func(t *testing.T, ct string, b []byte)
	}{
		{"completion", "/v1/completions", `{"model":"m","prompt":"abcdefgh"}`, 200, func(t *testing.T, ct string, b []byte) {
			r := gjson.ParseBytes(b)
			if r.Get("object").Str != "text_completion" || len(strings.Fields(r.Get("choices.0.text").Str)) != 3 ||
				r.Get("usage.prompt_tokens").Int() != 2 || r.Get("usage.completion_tokens").Int() != 3 {
				t.Errorf("completion %s", b)
			}
		}},
		{"completion stream", "/v1/completions", `{"model":"m","prompt":"abcdefgh","stream":true,"stream_options":{"include_usage":true}}`, 200,
			func(t *testing.T, ct string, b []byte) {
				s := string(b)
				if ct != "text/event-stream" || strings.Count(s, `"object":"text_completion"`) != 5 ||
					!strings.Contains(s, `"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3`) || !strings.HasSuffix(s, "data: [DONE]\n\n") {
					t.Errorf("stream %s %s", ct, s)
				}
			}},
		{"completion without prompt", "/v1/completions", `{"model":"m"}`, 400, nil},
		{"moderation", "/v1/moderations", `{"model":"m","input":["fine","kill"]}`, 200, func(t *testing.T, ct string, b []byte) {
			r := gjson.ParseBytes(b)
			if r.Get("results.#").Int() != 2 || r.Get("results.0.flagged").Bool() || !r.Get("results.1.categories.violence").Bool() {
				t.Errorf("moderation %s", b)
			}
		}},
		{"image url", "/v1/images/generations", `{"model":"m","prompt":"fox","response_format":"url"}`, 200, func(t *testing.T, ct string, b []byte) {
			if u := gjson.GetBytes(b, "data.0.url").Str; !strings.HasPrefix(u, "data:image/png;base64,") {
				t.Errorf("image %s", b)
			}
		}},
		{"image without prompt", "/v1/images/generations", `{"model":"m"}`, 400, nil},
		{"speech", "/v1/audio/speech", `{"model":"m","input":"hi","voice":"alloy","response_format":"wav"}`, 200, func(t *testing.T, ct string, b []byte) {
			if ct != "audio/wav" || !bytes.Equal(b, SpeechAudio("m", "alloy", "hi")) {
				t.Errorf("speech %s, %d bytes", ct, len(b))
			}
		}},
		{"speech without voice", "/v1/audio/speech", `{"model":"m","input":"hi"}`, 400, nil},
		{"unknown model", "/v1/moderations", `{"model":"x","input":"hi"}`, 404, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := post(t, ts, http.MethodPost, tc.path, "k", tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if tc.check != nil {
				tc.check(t, resp.Header.Get("Content-Type"), b)
			}
		})
	}
	st := sim.Stats()
	if st.Requests[EndpointCompletions] != 3 || st.Requests[EndpointModerations] != 2 || st.Requests[EndpointImages] != 2 || st.Requests[EndpointSpeech] != 2 {
		t.Errorf("requests %v", st.Requests)
	}
}

// TestTranscriptions: the text is the function of the model and the
// file's bytes that TranscriptText computes; a form without either is
// refused.
func TestTranscriptions(t *testing.T) {
	sim, ts := startSim(t, Config{APIKey: "k"})
	file := []byte("not really audio, but bytes all the same")
	form := func(model string, withFile bool) (string, *bytes.Buffer) {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		if model != "" {
			_ = mw.WriteField("model", model)
		}
		if withFile {
			fw, _ := mw.CreateFormFile("file", "a.mp3")
			_, _ = fw.Write(file)
		}
		_ = mw.Close()
		return mw.FormDataContentType(), &b
	}
	tests := []struct {
		name     string
		model    string
		file     bool
		status   int
		wantText string
	}{
		{"ok", "whisper-1", true, 200, TranscriptText("whisper-1", sha256.Sum256(file))},
		{"no model", "", true, 400, ""},
		{"no file", "whisper-1", false, 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct, body := form(tc.model, tc.file)
			req, _ := http.NewRequestWithContext(testContext(t), http.MethodPost, ts.URL+"/v1/audio/transcriptions", body)
			req.Header.Set("Authorization", "Bearer k")
			req.Header.Set("Content-Type", ct)
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var out bytes.Buffer
			_, _ = out.ReadFrom(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, out.Bytes())
			}
			if tc.wantText != "" && gjson.GetBytes(out.Bytes(), "text").Str != tc.wantText {
				t.Errorf("text %s, want %q", out.Bytes(), tc.wantText)
			}
		})
	}
	if got := sim.Stats().Requests[EndpointTranscriptions]; got != 3 {
		t.Errorf("transcriptions counted %d, want 3", got)
	}
}
