// Package anthropicapi holds what the gateway and the upstream simulator
// must agree on about Anthropic's Messages API, written once.
package anthropicapi

import "net/http"

// ErrorType is the error type Anthropic's API gives with status
// ({"type":"error","error":{"type":…}}): its SDKs and Claude Code decide on
// retries and messages by it.
func ErrorType(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable, 529:
		return "overloaded_error"
	}
	if status >= 500 {
		return "api_error"
	}
	return "invalid_request_error"
}
