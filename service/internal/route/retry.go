package route

import (
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Policy is how many times one upstream is tried and how long to wait
// between tries.
type Policy struct {
	Attempts   int
	BackoffMin time.Duration
	BackoffMax time.Duration
}

// Backoff returns the wait before retry number n (1 for the first retry):
// exponential with full jitter, so that many gateways retrying a recovering
// upstream spread out instead of arriving together. A Retry-After from the
// upstream is a floor. ok is false when the upstream asks for a longer wait
// than BackoffMax: better to fall back now than to hold the client.
func (p Policy) Backoff(n int, retryAfter time.Duration) (wait time.Duration, ok bool) {
	if retryAfter > p.BackoffMax {
		return 0, false
	}
	ceil := p.BackoffMin << min(n-1, 30)
	if ceil <= 0 || ceil > p.BackoffMax {
		ceil = p.BackoffMax
	}
	wait = time.Duration(rand.Int64N(int64(ceil) + 1))
	if wait < retryAfter {
		wait = retryAfter
	}
	return wait, true
}

// RetryableStatus says whether an upstream status is worth another try:
// timeouts, conflicts, rate limits and server errors are; other 4xx say the
// request itself is wrong and would fail everywhere.
func RetryableStatus(code int) bool {
	switch {
	case code == http.StatusRequestTimeout, code == http.StatusConflict,
		code == http.StatusTooManyRequests, code >= 500:
		return true
	}
	return false
}

// maxRetryAfterSeconds is about 292 years, the longest time.Duration.
const maxRetryAfterSeconds = float64(math.MaxInt64 / int64(time.Second))

// ParseRetryAfter reads a Retry-After header in seconds or as an HTTP date.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		switch {
		case !(s > 0): // zero, negative or NaN
			return 0
		case s >= maxRetryAfterSeconds:
			// Past what a Duration holds (or +Inf): converting would
			// overflow to a negative wait and an immediate retry. It is
			// past backoff_max all the same, so the chain falls back.
			return math.MaxInt64
		}
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
