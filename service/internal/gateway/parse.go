package gateway

import (
	"cmp"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/relaygate/relaygate/service/config"
	"github.com/relaygate/relaygate/service/internal/jsondepth"
)

// endpoint is an API the gateway forwards.
type endpoint int

const (
	epChat endpoint = iota
	epEmbeddings
	// epMessages and epCountTokens are Anthropic's Messages API.
	epMessages
	epCountTokens
	// epResponses is OpenAI's Responses API.
	epResponses
	// The rest of OpenAI's surface: legacy completions, moderations,
	// image generation, and speech and transcription (audio).
	epCompletions
	epModerations
	epImages
	epSpeech
	epTranscriptions
)

// api is the config name of the API the endpoint belongs to (config.APIChat
// …): which upstreams may serve it, and the api label of its metrics.
func (e endpoint) api() string {
	switch e {
	case epChat:
		return config.APIChat
	case epEmbeddings:
		return config.APIEmbeddings
	case epMessages, epCountTokens:
		return config.APIMessages
	case epResponses:
		return config.APIResponses
	case epCompletions:
		return config.APICompletions
	case epModerations:
		return config.APIModerations
	case epImages:
		return config.APIImages
	case epSpeech, epTranscriptions:
		return config.APIAudio
	}
	return "unknown"
}

// upstreamPath is appended to an upstream's base URL (which ends in /v1).
func (e endpoint) upstreamPath() string {
	switch e {
	case epEmbeddings:
		return "/embeddings"
	case epMessages:
		return "/messages"
	case epCountTokens:
		return "/messages/count_tokens"
	case epResponses:
		return "/responses"
	case epCompletions:
		return "/completions"
	case epModerations:
		return "/moderations"
	case epImages:
		return "/images/generations"
	case epSpeech:
		return "/audio/speech"
	case epTranscriptions:
		return "/audio/transcriptions"
	}
	return "/chat/completions"
}

// errorFormat is the shape in which the endpoint's clients parse errors.
func (e endpoint) errorFormat() errorFormat {
	if e == epMessages || e == epCountTokens {
		return formatAnthropic
	}
	return formatOpenAI
}

// streams reports whether a request to the endpoint may ask for a stream.
func (e endpoint) streams() bool {
	return e == epChat || e == epMessages || e == epResponses || e == epCompletions
}

// billsTokens reports whether the endpoint's answers always report token
// usage, so that one without it counts as usage unknown. Moderations and
// audio answers report none; images report usage only for some models
// (gpt-image-1, not dall-e), which is read when present.
func (e endpoint) billsTokens() bool {
	switch e {
	case epModerations, epImages, epSpeech, epTranscriptions:
		return false
	}
	return true
}

// jsonAnswer reports whether the endpoint answers JSON, whose usage the
// gateway reads; speech answers audio bytes and transcriptions may answer
// text, SRT or VTT.
func (e endpoint) jsonAnswer() bool { return e != epSpeech && e != epTranscriptions }

// request is what the gateway reads of a client's body: only the fields
// that decide routing, streaming and caching. Everything else goes to the
// upstream as the client wrote it.
type request struct {
	model string
	// modelStart/modelEnd locate the model's JSON string in the body, to
	// rename it for an upstream that spells the model differently.
	modelStart, modelEnd int
	// modelImplied: the body names no model and the endpoint has a
	// documented default (implicitModel), which is routed and then
	// written into the upstream's body.
	modelImplied bool
	stream       bool
	streamSet    bool // the body has a "stream" key
	streamStart  int
	streamEnd    int
	// streamOptions locates the "stream_options" value (-1: absent).
	streamOptionsStart, streamOptionsEnd int
	includeUsage                         bool
	// temperatureZero: the client asked for a deterministic answer.
	temperatureZero bool
	// objectStart is the offset just past the body's opening brace.
	objectStart int
	// maxTokens (the larger of max_tokens, max_completion_tokens and
	// max_output_tokens, 0: unset) and choices (n) bound the usage an
	// answer may report.
	maxTokens, choices int64
	// previousID is a Responses request's previous_response_id: the
	// request must go to the upstream that created that response.
	previousID string
	// noStore: a Responses request with "store": false, whose response
	// the upstream keeps nowhere, so there is no id to remember.
	noStore bool
	// formType is a transcription's multipart/form-data Content-Type, its
	// boundary and all; modelStart/modelEnd then locate the model part's
	// raw value (form.go).
	formType string
}

// bytesToString views b as a string without copying; b must not change
// while the string is in use (the request body is never modified in place).
func bytesToString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// maxNesting bounds how deeply a request body may nest arrays and objects.
// gjson validates nesting by recursion, one stack frame per level, so a
// body of millions of '[' (well under max_body_bytes) overflows the stack
// and kills the whole process, which no recover can catch. Real requests
// (JSON-schema tool parameters included) nest a few dozen levels; 512 is
// far above that and far below what any stack needs.
const maxNesting = 512

// parseRequest validates the body and reads the fields the gateway needs in
// one pass over the top-level keys, without decoding the rest.
func parseRequest(b []byte, ep endpoint) (request, *apiError) {
	req := request{streamOptionsStart: -1}
	if jsondepth.Exceeds(b, maxNesting) {
		return req, errBadRequest("nesting_too_deep", fmt.Sprintf("The request body nests arrays and objects more than %d levels deep; the gateway refuses such bodies.", maxNesting))
	}
	if !gjson.ValidBytes(b) || !utf8.Valid(b) {
		return req, errBadRequest("invalid_json", "We could not parse the JSON body of your request: it is not valid JSON (or not UTF-8).")
	}
	s := bytesToString(b)
	root := gjson.Parse(s)
	if !root.IsObject() {
		return req, errBadRequest("invalid_json", "The request body must be a JSON object.")
	}
	req.objectStart = root.Index + 1
	var hasMessages, hasInput, hasPrompt bool
	var typeErr *apiError
	keys := keySet{read: readKeys}
	root.ForEach(func(key, v gjson.Result) bool {
		if typeErr = keys.add(key.Str); typeErr != nil {
			return false
		}
		switch key.Str {
		case "model":
			if v.Type != gjson.String {
				typeErr = errBadRequest("invalid_type", "Invalid type for 'model': expected a string, but got "+typeName(v)+".")
				return false
			}
			req.model = v.Str
			req.modelStart, req.modelEnd = v.Index, v.Index+len(v.Raw)
		case "stream":
			if v.Type != gjson.True && v.Type != gjson.False && v.Type != gjson.Null {
				typeErr = errBadRequest("invalid_type", "Invalid type for 'stream': expected a boolean, but got "+typeName(v)+".")
				return false
			}
			req.stream, req.streamSet = v.Type == gjson.True, true
			req.streamStart, req.streamEnd = v.Index, v.Index+len(v.Raw)
		case "stream_options":
			if v.Type != gjson.Null && !v.IsObject() {
				typeErr = errBadRequest("invalid_type", "Invalid type for 'stream_options': expected an object, but got "+typeName(v)+".")
				return false
			}
			req.streamOptionsStart, req.streamOptionsEnd = v.Index, v.Index+len(v.Raw)
			// Duplicate and case-variant include_usage keys are refused
			// (keySet), so the upstream reads the one read here.
			req.includeUsage = false
			opts := keySet{read: streamOptionKeys}
			v.ForEach(func(k, val gjson.Result) bool {
				if typeErr = opts.add(k.Str); typeErr != nil {
					return false
				}
				if k.Str == "include_usage" {
					req.includeUsage = val.Type == gjson.True
				}
				return true
			})
			if typeErr != nil {
				return false
			}
		case "temperature":
			req.temperatureZero = v.Type == gjson.Number && v.Num == 0
		case "previous_response_id":
			if ep != epResponses {
				break
			}
			if v.Type != gjson.String && v.Type != gjson.Null {
				typeErr = errBadRequest("invalid_type", "Invalid type for 'previous_response_id': expected a string, but got "+typeName(v)+".")
				return false
			}
			req.previousID = v.Str
		case "store":
			if ep != epResponses {
				break
			}
			if v.Type != gjson.True && v.Type != gjson.False && v.Type != gjson.Null {
				typeErr = errBadRequest("invalid_type", "Invalid type for 'store': expected a boolean, but got "+typeName(v)+".")
				return false
			}
			req.noStore = v.Type == gjson.False
		case "max_tokens", "max_completion_tokens", "max_output_tokens", "n", "best_of":
			// Read for usage bounds only; the upstream judges the values.
			if v.Type == gjson.Number && v.Num >= 1 && v.Num < 1<<53 {
				// best_of: legacy completions bill every candidate.
				if key.Str == "n" || key.Str == "best_of" {
					req.choices = max(req.choices, int64(v.Num))
				} else {
					req.maxTokens = max(req.maxTokens, int64(v.Num))
				}
			}
		case "messages":
			if !v.IsArray() {
				typeErr = errBadRequest("invalid_type", "Invalid type for 'messages': expected an array, but got "+typeName(v)+".")
				return false
			}
			hasMessages = len(v.Raw) > 2 && v.Get("#").Int() > 0
		case "input":
			hasInput = true
		case "prompt":
			hasPrompt = true
		}
		return true
	})
	if typeErr != nil {
		return req, typeErr
	}
	if req.model == "" {
		if req.model = implicitModel(ep); req.model == "" {
			return req, errBadRequest("missing_model", "You must provide a model parameter.")
		}
		req.modelImplied = true
	}
	switch ep {
	case epChat, epMessages, epCountTokens:
		if !hasMessages {
			return req, errBadRequest("missing_messages", "'messages' must be a non-empty array.")
		}
	case epCompletions, epImages:
		if !hasPrompt {
			return req, errBadRequest("missing_prompt", "You must provide a 'prompt' parameter.")
		}
	case epEmbeddings, epModerations, epSpeech:
		if !hasInput {
			return req, errBadRequest("missing_input", "You must provide an 'input' parameter.")
		}
	case epResponses:
		// input may be absent (a follow-up that only adds instructions,
		// a stored prompt): the upstream judges that.
		if req.previousID != "" && !validResponseID(req.previousID) {
			e := errBadRequestParam("invalid_previous_response_id", "Invalid 'previous_response_id': "+
				"expected an id such as 'resp_…' (letters, digits, '_' and '-', at most 128 characters).", "previous_response_id")
			return req, e
		}
	}
	return req, nil
}

// implicitModel is the model OpenAI's API reference gives an endpoint whose
// model parameter is optional: a client leaving it out (the SDKs let it)
// means that model, so the gateway routes it by that name. Endpoints
// where the model is required have none.
func implicitModel(ep endpoint) string {
	switch ep {
	case epModerations:
		return "omni-moderation-latest"
	case epImages:
		return "dall-e-2"
	}
	return ""
}

func typeName(v gjson.Result) string {
	switch v.Type {
	case gjson.String:
		return "a string"
	case gjson.Number:
		return "a number"
	case gjson.True, gjson.False:
		return "a boolean"
	case gjson.Null:
		return "null"
	}
	if v.IsArray() {
		return "an array"
	}
	return "an object"
}

// upstreamBody returns the body to send to one upstream: the client's bytes,
// with the model renamed when the upstream spells it differently, stream
// forced on for the streaming endpoint, and usage asked for on streams so
// the gateway can count tokens. usageAdded reports whether the client did
// not ask for usage itself, so the extra usage event must not reach it.
func upstreamBody(b []byte, req *request, model string, stream bool) (out []byte, usageAdded bool) {
	var edits [3]edit
	n := 0
	insert := ""
	if stream && !req.stream {
		if req.streamSet {
			edits[n] = edit{req.streamStart, req.streamEnd, "true"}
			n++
		} else {
			insert += `"stream":true,`
		}
	}
	if stream && !req.includeUsage {
		usageAdded = true
		if req.streamOptionsStart < 0 {
			insert += `"stream_options":{"include_usage":true},`
		} else {
			edits[n] = edit{req.streamOptionsStart, req.streamOptionsEnd, streamOptionsWithUsage(b[req.streamOptionsStart:req.streamOptionsEnd])}
			n++
		}
	}
	// An implied model is named to the upstream, which may be a relay with
	// defaults of its own, or spell the model differently.
	switch name := cmp.Or(model, req.model); {
	case req.modelImplied && req.modelEnd == 0: // no "model" key at all
		insert += `"model":` + jsonString(name) + ","
	case req.modelImplied, model != "" && model != req.model: // "model":"" counts as absent
		edits[n] = edit{req.modelStart, req.modelEnd, jsonString(name)}
		n++
	}
	if insert == "" && n == 0 {
		return b, usageAdded
	}
	all := edits[:n]
	if insert != "" {
		all = append([]edit{{req.objectStart, req.objectStart, insert}}, all...)
	}
	sortEdits(all)
	return applyEdits(make([]byte, 0, len(b)+len(insert)+64), b, all), usageAdded
}

// streamOptionsWithUsage returns a stream_options value (an object or null)
// with include_usage set, keeping any other options the client gave. Every
// include_usage key the client wrote is dropped, so no duplicate can
// override the one the gateway sets.
func streamOptionsWithUsage(raw []byte) string {
	v := gjson.ParseBytes(raw)
	var b strings.Builder
	b.WriteString(`{"include_usage":true`)
	if v.IsObject() {
		v.ForEach(func(k, val gjson.Result) bool {
			if k.Str != "include_usage" {
				b.WriteByte(',')
				b.WriteString(k.Raw)
				b.WriteByte(':')
				b.WriteString(val.Raw)
			}
			return true
		})
	}
	b.WriteByte('}')
	return b.String()
}

// jsonString quotes s as a JSON string (strconv.Quote writes Go escapes
// such as \x01 that JSON does not have).
func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func sortEdits(e []edit) {
	for i := 1; i < len(e); i++ {
		for j := i; j > 0 && e[j].start < e[j-1].start; j-- {
			e[j], e[j-1] = e[j-1], e[j]
		}
	}
}
