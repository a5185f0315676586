package upstreamsim

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// The rest of OpenAI's surface: legacy completions (whole and streamed),
// moderations, image generation, speech and transcription. Answers are as
// deterministic as chat's: the same request gets the same text, verdict,
// image or audio, so tests can check what went through a gateway.

// tinyPNG is a valid 1×1 transparent PNG, the simulator's every image.
var tinyPNG = []byte{
	0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
	0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
	0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
	0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
	0x42, 0x60, 0x82,
}

// TinyPNG returns the image every image generation answers with.
func TinyPNG() []byte { return append([]byte(nil), tinyPNG...) }

// digestPrompt hashes a legacy prompt (a string, or an array of strings or
// token ids) as digestMessages hashes messages.
func digestPrompt(model string, prompt gjson.Result) promptDigest {
	h := fnvOffset.add(model)
	n := 0
	add := func(v gjson.Result) {
		s := v.Str
		if v.Type != gjson.String {
			s = v.Raw
		}
		h = h.add(s)
		n += len(s)
	}
	if prompt.IsArray() {
		prompt.ForEach(func(_, v gjson.Result) bool { add(v); return true })
	} else {
		add(prompt)
	}
	return promptDigest{seed: uint64(h), textBytes: n}
}

// serveCompletions answers POST /v1/completions with a text_completion, or
// its chunks and [DONE] when the request streams.
func (s *Server) serveCompletions(w http.ResponseWriter, r *http.Request) {
	mr, ok := s.admit(w, r)
	if !ok {
		return
	}
	req := chatRequest{modelRequest: mr}
	prompt := req.doc.Get("prompt")
	if !prompt.Exists() || prompt.Type == gjson.Null {
		s.rejectBadRequest(w, "prompt", "You must provide a 'prompt' parameter.")
		return
	}
	if v := req.doc.Get("max_tokens"); v.Exists() && v.Type != gjson.Null {
		if v.Type != gjson.Number || v.Int() < 1 || float64(v.Int()) != v.Num {
			s.rejectBadRequest(w, "max_tokens", "Invalid 'max_tokens': expected an integer of at least 1.")
			return
		}
		req.maxTokens = int(v.Int())
	}
	req.digest = digestPrompt(req.model, prompt)
	req.stream = req.doc.Get("stream").Type == gjson.True
	req.includeUsage = req.doc.Get("stream_options.include_usage").Type == gjson.True
	if !s.simulate(w, r, &req.modelRequest) {
		return
	}
	if req.stream {
		s.streamCompletion(w, r, &req)
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	n, _ := req.completionTokens()
	b := appendCompletionHead(*bp, &req)
	b = append(b, `{"text":"`...)
	b = appendWords(b, req.digest.seed, n)
	b = append(b, `","index":0,"logprobs":null,"finish_reason":"`...)
	b = appendFinish(b, &req, n)
	b = append(b, '}')
	*bp = b
	s.answer(w, b)
}

// appendCompletionHead appends a text_completion up to its choices array.
func appendCompletionHead(dst []byte, req *chatRequest) []byte {
	dst = appendID(append(dst, `{"id":"`...), "cmpl-", &req.rng)
	dst = append(dst, `","object":"text_completion","created":`...)
	dst = strconv.AppendInt(dst, time.Now().Unix(), 10)
	dst = append(dst, `,"model":`...)
	dst = appendJSONString(dst, req.model)
	return append(dst, `,"system_fingerprint":"`+systemFingerprint+`","choices":[`...)
}

// streamCompletion streams a legacy completion as OpenAI does: text
// chunks, a finish chunk, with include_usage a usage chunk whose choices
// are empty, then [DONE].
func (s *Server) streamCompletion(w http.ResponseWriter, r *http.Request, req *chatRequest) {
	cfg := req.cfg
	// Legacy completions draw no cut, so the stream always starts.
	ew, _ := s.startStream(w, r, cfg, false)
	emit := ew.emit
	bp := getBuf()
	defer putBuf(bp)
	b := appendCompletionHead(append((*bp)[:0], "data: "...), req)
	prefix := len(b)
	defer func() { *bp = b }()

	n, _ := req.completionTokens()
	words := newWordStream(req.digest.seed)
	for done := 0; done < n; {
		if done > 0 && !ew.pause() {
			return
		}
		b = append(b[:prefix], `{"text":"`...)
		for k := 0; k < cfg.TokensPerChunk && done < n; k, done = k+1, done+1 {
			b = words.appendNext(b)
		}
		b = append(b, `","index":0,"logprobs":null,"finish_reason":null}]}`+"\n\n"...)
		if !emit(b) {
			return
		}
	}
	b = append(b[:prefix], `{"text":"","index":0,"logprobs":null,"finish_reason":"`...)
	b = append(b, req.finishReason()...)
	b = append(b, `"}]}`+"\n\n"...)
	if !emit(b) {
		return
	}
	if req.includeUsage {
		b = append(b[:prefix], `],"usage":`...)
		b = appendUsage(b, estimateTokens(req.digest.textBytes), n)
		b = append(b, "}\n\n"...)
		if !emit(b) {
			return
		}
	}
	ew.end(doneEvent)
}

// moderationCategories are the categories of OpenAI's moderation result.
var moderationCategories = []string{
	"harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
	"self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors",
	"violence", "violence/graphic",
}

// serveModerations answers POST /v1/moderations: one result per input,
// flagged for "violence" when the text holds the word "kill" (a rule
// simple enough for tests to expect).
func (s *Server) serveModerations(w http.ResponseWriter, r *http.Request) {
	req, ok := s.admit(w, r)
	if !ok {
		return
	}
	input := req.doc.Get("input")
	var inputs []string
	switch {
	case input.Type == gjson.String:
		inputs = []string{input.Str}
	case input.IsArray() && !isEmptyArray(input):
		input.ForEach(func(_, v gjson.Result) bool {
			inputs = append(inputs, v.Get("text").String()+v.Str)
			return true
		})
	default:
		s.rejectBadRequest(w, "input", "'input' must be a non-empty string or array.")
		return
	}
	if !s.simulate(w, r, &req) {
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	b := appendID(append(*bp, `{"id":"`...), "modr-", &req.rng)
	b = append(b, `","model":`...)
	b = appendJSONString(b, req.model)
	b = append(b, `,"results":[`...)
	for i, in := range inputs {
		if i > 0 {
			b = append(b, ',')
		}
		violent := strings.Contains(strings.ToLower(in), "kill")
		b = append(b, `{"flagged":`...)
		b = strconv.AppendBool(b, violent)
		for k, part := range [2]string{`,"categories":{`, `,"category_scores":{`} {
			b = append(b, part...)
			for j, c := range moderationCategories {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendJSONString(b, c)
				b = append(b, ':')
				hit := violent && c == "violence"
				switch {
				case k == 0:
					b = strconv.AppendBool(b, hit)
				case hit:
					b = append(b, "0.97"...)
				default:
					b = append(b, "0.0001"...)
				}
			}
			b = append(b, '}')
		}
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	*bp = b
	s.answer(w, b)
}

// serveImages answers POST /v1/images/generations with n tiny PNGs, as
// base64 (the default) or as data: URLs with response_format "url", and
// gpt-image-1's usage.
func (s *Server) serveImages(w http.ResponseWriter, r *http.Request) {
	req, ok := s.admit(w, r)
	if !ok {
		return
	}
	prompt := req.doc.Get("prompt")
	if prompt.Type != gjson.String || prompt.Str == "" {
		s.rejectBadRequest(w, "prompt", "You must provide a 'prompt' parameter.")
		return
	}
	n := 1
	if v := req.doc.Get("n"); v.Exists() && v.Type != gjson.Null {
		if v.Type != gjson.Number || v.Int() < 1 || v.Int() > 10 {
			s.rejectBadRequest(w, "n", "Invalid 'n': expected an integer from 1 to 10.")
			return
		}
		n = int(v.Int())
	}
	asURL := req.doc.Get("response_format").Str == "url"
	if !s.simulate(w, r, &req) {
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	b := append(*bp, `{"created":`...)
	b = strconv.AppendInt(b, time.Now().Unix(), 10)
	b = append(b, `,"data":[`...)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		if asURL {
			b = append(b, `{"url":"data:image/png;base64,`...)
		} else {
			b = append(b, `{"b64_json":"`...)
		}
		b = base64.StdEncoding.AppendEncode(b, tinyPNG)
		b = append(b, `","revised_prompt":`...)
		b = appendJSONString(b, prompt.Str)
		b = append(b, '}')
	}
	in, out := estimateTokens(len(prompt.Str)), 272*n // OpenAI's low-quality 1024² image
	b = append(b, `],"usage":{"input_tokens":`...)
	b = strconv.AppendInt(b, int64(in), 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, int64(out), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(in+out), 10)
	b = append(b, `,"input_tokens_details":{"text_tokens":`...)
	b = strconv.AppendInt(b, int64(in), 10)
	b = append(b, `,"image_tokens":0}}}`...)
	*bp = b
	s.answer(w, b)
}

// speechTypes are the Content-Types of speech's response_format values.
var speechTypes = map[string]string{
	"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
	"wav": "audio/wav", "pcm": "audio/pcm",
}

// SpeechAudio returns the bytes the simulator answers a speech request
// with: a deterministic function of the model, voice and input, so tests
// can compare what reached the client.
func SpeechAudio(model, voice, input string) []byte {
	seed := fnvOffset.add(model).add(voice).add(input)
	b := []byte("ID3\x04\x00\x00\x00\x00\x00\x00") // an MP3's ID3v2 header
	rng := newSplitMix(uint64(seed), 0)
	for range 64 + len(input) {
		b = binary.LittleEndian.AppendUint64(b, rng.next())
	}
	return b
}

// serveSpeech answers POST /v1/audio/speech with audio bytes, not JSON.
func (s *Server) serveSpeech(w http.ResponseWriter, r *http.Request) {
	req, ok := s.admit(w, r)
	if !ok {
		return
	}
	input, voice := req.doc.Get("input"), req.doc.Get("voice")
	if input.Type != gjson.String || input.Str == "" {
		s.rejectBadRequest(w, "input", "You must provide an 'input' parameter.")
		return
	}
	if voice.Type != gjson.String || voice.Str == "" {
		s.rejectBadRequest(w, "voice", "You must provide a 'voice' parameter.")
		return
	}
	format := req.doc.Get("response_format").Str
	if format == "" {
		format = "mp3"
	}
	ct, known := speechTypes[format]
	if !known {
		s.rejectBadRequest(w, "response_format", "Invalid 'response_format': expected mp3, opus, aac, flac, wav or pcm.")
		return
	}
	if !s.simulate(w, r, &req) {
		return
	}
	audio := SpeechAudio(req.model, voice.Str, input.Str)
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.Itoa(len(audio)))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(audio); err != nil {
		s.stats.cancelled.Add(1)
	}
}

// TranscriptText is the text the simulator transcribes a file to: words
// drawn from the model and the file's SHA-256, so a test knows from the
// text alone that the upstream got the very bytes and the model it sent.
func TranscriptText(model string, sum [sha256.Size]byte) string {
	return string(appendWords(nil, uint64(fnvOffset.add(model).add(string(sum[:]))), 8))
}

// serveTranscriptions answers POST /v1/audio/transcriptions, a
// multipart/form-data upload, with {"text": …}. The form is read as it
// arrives: the file is hashed, never held.
func (s *Server) serveTranscriptions(w http.ResponseWriter, r *http.Request) {
	cfg := s.cfg.Load()
	if !s.precheck(w, r, cfg) {
		return
	}
	mr, err := r.MultipartReader()
	if err != nil {
		s.rejectBadRequest(w, "", "This endpoint takes a multipart/form-data upload.")
		return
	}
	var model string
	var sum [sha256.Size]byte
	haveFile := false
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.rejectBadRequest(w, "", "We could not parse the multipart body of your request.")
			return
		}
		switch p.FormName() {
		case "model":
			v, _ := io.ReadAll(io.LimitReader(p, 256))
			model = string(v)
		case "file":
			h := sha256.New()
			if _, err := io.Copy(h, p); err != nil {
				s.rejectBadRequest(w, "file", "We could not read the uploaded file.")
				return
			}
			h.Sum(sum[:0])
			haveFile = true
		}
	}
	switch {
	case model == "":
		s.rejectBadRequest(w, "model", "You must provide a model parameter.")
		return
	case !haveFile:
		s.rejectBadRequest(w, "file", "You must provide a 'file' parameter.")
		return
	case !cfg.knownModel(model):
		s.rejectUnknownModel(w, model)
		return
	}
	req := s.newModelRequest(cfg, gjson.Result{}, model)
	if !s.simulate(w, r, &req) {
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	b := append(*bp, `{"text":`...)
	b = appendJSONString(b, TranscriptText(model, sum))
	b = append(b, '}')
	*bp = b
	s.answer(w, b)
}
