package anthropicapi

import "testing"

// TestErrorType follows Anthropic's errors page: each HTTP status its API
// answers with, and the type it names.
func TestErrorType(t *testing.T) {
	tests := []struct {
		status int
		want   string
	}{
		{400, "invalid_request_error"},
		{401, "authentication_error"},
		{403, "permission_error"},
		{404, "not_found_error"},
		{413, "request_too_large"},
		{429, "rate_limit_error"},
		{500, "api_error"},
		{502, "api_error"},
		{503, "overloaded_error"},
		{529, "overloaded_error"},
		{422, "invalid_request_error"},
	}
	for _, tt := range tests {
		if got := ErrorType(tt.status); got != tt.want {
			t.Errorf("ErrorType(%d) = %q, want %q", tt.status, got, tt.want)
		}
	}
}
