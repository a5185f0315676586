package defaults

import (
	"testing"
	"time"
)

func TestPositive(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in, out time.Duration
	}{
		{"unset takes the default", 0, time.Second},
		{"negative takes the default", -time.Minute, time.Second},
		{"set stays", time.Millisecond, time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.in
			Positive(&v, time.Second)
			if v != tc.out {
				t.Errorf("Positive(%v) = %v, want %v", tc.in, v, tc.out)
			}
		})
	}
	n := 0
	Positive(&n, 30)
	if n != 30 {
		t.Errorf("an unset int became %d, want 30", n)
	}
}
