package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/service/internal/gpu"
)

// TestRun probes the real NVML of this host. Where no NVIDIA kernel driver is
// loaded (the CI machine) it must print an unavailable snapshot with a reason
// and fail only when GPUs are demanded; on a GPU host, -expect 1 must pass.
func TestRun(t *testing.T) {
	_, err := os.Stat("/proc/driver/nvidia/version")
	gpuHost := err == nil
	type probeCase struct {
		args     []string
		wantCode int
		wantErr  string
	}
	tests := []probeCase{
		{args: nil, wantCode: 0},
		{args: []string{"-expect", "x"}, wantCode: 2, wantErr: "invalid value"},
	}
	if gpuHost {
		tests = append(tests, probeCase{args: []string{"-expect", "1"}, wantCode: 0})
	} else {
		tests = append(tests, probeCase{args: []string{"-expect", "1"}, wantCode: 1,
			wantErr: "want at least 1 GPU(s), NVML reports 0: "})
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(t.Context(), tt.args, &stdout, &stderr); code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.wantCode, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.wantErr)
			}
			if tt.wantCode == 2 {
				return
			}
			var snap gpu.Snapshot
			if err := json.Unmarshal(stdout.Bytes(), &snap); err != nil {
				t.Fatalf("stdout is not a snapshot: %v\n%s", err, stdout.String())
			}
			if snap.UpdatedAt.IsZero() || snap.Available != gpuHost || (!snap.Available && snap.Reason == "") {
				t.Errorf("snapshot = %+v, want available=%t, with a reason when not", snap, gpuHost)
			}
		})
	}
}
