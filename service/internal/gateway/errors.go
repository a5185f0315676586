package gateway

import (
	"encoding/json"
	"net/http"

	"github.com/relaygate/relaygate/service/internal/anthropicapi"
)

// apiError is an error the gateway itself produces. It is kept in OpenAI's
// shape and written in the shape of the endpoint's API (see errorFormat),
// since clients' SDKs parse it.
type apiError struct {
	Status  int    `json:"-"`
	Message string `json:"message"`
	Type    string `json:"type"`
	Code    string `json:"code"`
	Param   any    `json:"param"`
}

func (e *apiError) Error() string { return e.Message }

// Error types, as OpenAI names them.
const (
	typeInvalidRequest = "invalid_request_error"
	typeAuth           = "authentication_error"
	typeRateLimit      = "rate_limit_error"
	typeUpstream       = "upstream_error"
	typeServer         = "server_error"
)

func errBadRequest(code, msg string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: code, Message: msg}
}

// errorFormat is the error shape an API's clients parse.
type errorFormat int

const (
	// formatOpenAI: {"error":{"message","type","code","param"}}.
	formatOpenAI errorFormat = iota
	// formatAnthropic: {"type":"error","error":{"type","message"}}.
	formatAnthropic
)

// write answers e in format f.
func (f errorFormat) write(w http.ResponseWriter, e *apiError) {
	if f == formatAnthropic {
		writeAnthropicError(w, e)
		return
	}
	writeError(w, e)
}

// writeError answers e in OpenAI's shape, the gateway's own paths' shape.
func writeError(w http.ResponseWriter, e *apiError) {
	body, _ := json.Marshal(struct {
		Error *apiError `json:"error"`
	}{e})
	writeErrorBody(w, e.Status, body)
}

func writeErrorBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// anthropicError is Anthropic's error body.
type anthropicError struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

func anthropicErrorBody(status int, msg string) []byte {
	var a anthropicError
	a.Type, a.Error.Type, a.Error.Message = "error", anthropicapi.ErrorType(status), msg
	body, _ := json.Marshal(&a)
	return body
}

func writeAnthropicError(w http.ResponseWriter, e *apiError) {
	writeErrorBody(w, e.Status, anthropicErrorBody(e.Status, e.Message))
}
