package smoketest

import (
	"strings"
	"testing"
	"time"
)

func TestPercentiles(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100..1, unsorted on purpose
	}
	cases := []struct {
		name string
		in   []time.Duration
		want Percentiles
	}{
		{"none", nil, Percentiles{}},
		{"one", ms(42), Percentiles{42, 42, 42, 42}},
		{"1..100 ms", ms(hundred...), Percentiles{50, 95, 99, 100}},
		{"one slow outlier in 20", ms(10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 900), Percentiles{10, 10, 900, 900}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentiles(tc.in); got != tc.want {
				t.Errorf("percentiles = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseServerTiming(t *testing.T) {
	cases := []struct {
		in          string
		gateway, up time.Duration
		ok          bool
	}{
		{"relaygate;dur=0.042, upstream;dur=812.5", 42 * time.Microsecond, 812500 * time.Microsecond, true},
		{"upstream;dur=3;desc=\"sim\",relaygate;dur=1", time.Millisecond, 3 * time.Millisecond, true},
		{"relaygate;dur=1", time.Millisecond, 0, false},
		{"relaygate;dur=x, upstream;dur=-1", 0, 0, false},
		{"", 0, 0, false},
	}
	for _, tc := range cases {
		g, u, ok := parseServerTiming(tc.in)
		if g != tc.gateway || u != tc.up || ok != tc.ok {
			t.Errorf("parseServerTiming(%q) = %v, %v, %v; want %v, %v, %v", tc.in, g, u, ok, tc.gateway, tc.up, tc.ok)
		}
	}
}

func TestSummarizeAndHint(t *testing.T) {
	d := func(ms int) time.Duration { return time.Duration(ms) * time.Millisecond }
	var samples []sample
	for i := 0; i < 19; i++ {
		samples = append(samples, sample{total: d(1210), gateway: d(2), upstream: d(1200), timed: true})
	}
	samples = append(samples, sample{err: "HTTP 502: upstream failed"}, sample{err: "HTTP 502: upstream failed"}, sample{total: d(5), err: "HTTP 429: slow down"})
	st := summarize(samples, 4, 500)
	if st.Requests != 22 || st.Errors != 3 || len(st.ErrorSamples) != 2 {
		t.Errorf("requests %d errors %d samples %q; want 22, 3 and the 2 distinct errors", st.Requests, st.Errors, st.ErrorSamples)
	}
	if st.Total.P95 != 1210 || st.Upstream.P95 != 1200 || st.Gateway.P95 != 2 || st.Network.P95 != 8 {
		t.Errorf("p95s total %v upstream %v gateway %v network %v; want 1210, 1200, 2, 8", st.Total.P95, st.Upstream.P95, st.Gateway.P95, st.Network.P95)
	}

	cases := []struct {
		name     string
		gw, up   float64
		netw     float64
		wantHint string
	}{
		{"upstream", 2, 1200, 8, "The upstream takes most of it"},
		{"gateway", 900, 100, 8, "The gateway itself takes most of it"},
		{"network", 2, 100, 1100, "The way between here and the gateway"},
		{"no server timing", 0, 0, 0, "no Server-Timing"},
	}
	for _, tc := range cases {
		st := &LatencyStats{BudgetP95MS: 500, Total: Percentiles{P95: 1210}, Gateway: Percentiles{P95: tc.gw}, Upstream: Percentiles{P95: tc.up}, Network: Percentiles{P95: tc.netw}}
		if h := latencyHint(st); !strings.Contains(h, tc.wantHint) || !strings.Contains(h, "over the 500ms budget") {
			t.Errorf("%s: hint %q, want %q", tc.name, h, tc.wantHint)
		}
	}
}

func TestPickModel(t *testing.T) {
	ids := []string{"text-embedding-3-small", "gpt-4.1", "claude-sonnet-4.5"}
	cases := []struct {
		ids       []string
		want, got string
		wantWhy   string
	}{
		{ids, "", "gpt-4.1", ""},
		{ids, "claude-sonnet-4.5", "claude-sonnet-4.5", ""},
		{ids, "gpt-5", "", `does not serve model "gpt-5"`},
		{[]string{"text-embedding-3-small"}, "", "", "only embedding models"},
		{nil, "", "", "lists no models"},
	}
	for _, tc := range cases {
		got, why := pickModel(tc.ids, tc.want)
		if got != tc.got || !strings.Contains(why, tc.wantWhy) {
			t.Errorf("pickModel(%v, %q) = %q, %q; want %q, %q", tc.ids, tc.want, got, why, tc.got, tc.wantWhy)
		}
	}
}

// TestGPUHint: the gateway's NVML reasons lead to the fix for their cause.
func TestGPUHint(t *testing.T) {
	cases := []struct{ reason, want string }{
		{"nvml init: libnvidia-ml.so.1 not found (no NVIDIA driver on this host, or a container started without the NVIDIA runtime / --gpus): ERROR_LIBRARY_NOT_FOUND", "nvidia-ctk runtime configure"},
		{"nvml init: the NVIDIA kernel driver is not loaded (check nvidia-smi and dmesg): ERROR_DRIVER_NOT_LOADED", "sudo modprobe nvidia"},
		{"built without cgo", "CGO_ENABLED=1"},
		{"nvml init: no permission to open /dev/nvidia*", "DeviceRequests"},
		{"nvml init: the NVIDIA user-space library and kernel driver versions differ", "reboot the host"},
		{"not probed yet", "nvidia-smi"},
	}
	for _, tc := range cases {
		if h := gpuHint(tc.reason); !strings.Contains(h, tc.want) {
			t.Errorf("gpuHint(%q) = %q, want it to contain %q", tc.reason, h, tc.want)
		}
	}
}
