//go:build cgo

package gpu

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// TestNVMLLibraryMissing runs the real go-nvml package against a library path
// that cannot exist, which is what every host without an NVIDIA driver looks
// like to it: no crash, and a reason an operator can act on.
func TestNVMLLibraryMissing(t *testing.T) {
	lib := nvml.New(nvml.WithLibraryPath(filepath.Join(t.TempDir(), "libnvidia-ml.so.1")))
	m := newMonitor(Options{Logger: slog.New(slog.DiscardHandler)}, newNVMLDriver(lib))
	snap := m.RefreshOnce(context.Background())
	if snap.Available {
		t.Fatalf("snapshot available without a library: %+v", snap)
	}
	for _, want := range []string{"nvml init", "libnvidia-ml.so.1 not found", "ERROR_LIBRARY_NOT_FOUND"} {
		if !strings.Contains(snap.Reason, want) {
			t.Errorf("reason %q lacks %q", snap.Reason, want)
		}
	}
	if snap.Count != 0 || len(snap.Devices) != 0 || snap.UpdatedAt.IsZero() {
		t.Errorf("unavailable snapshot should be empty and stamped: %+v", snap)
	}
}

// TestSystemNVML uses whatever this host has. Where the NVIDIA kernel driver
// is not loaded (the CI machine) it must report unavailable with a reason;
// on a GPU host, RELAYGATE_EXPECT_GPU=1 makes it demand real readings.
func TestSystemNVML(t *testing.T) {
	m := NewMonitor(Options{Logger: slog.New(slog.DiscardHandler)})
	snap := m.RefreshOnce(context.Background())
	t.Logf("snapshot: %+v", snap)

	_, statErr := os.Stat("/proc/driver/nvidia/version")
	driverLoaded := statErr == nil
	expectGPU := os.Getenv("RELAYGATE_EXPECT_GPU") == "1"
	switch {
	case expectGPU:
		if !snap.Available || snap.Count == 0 {
			t.Fatalf("RELAYGATE_EXPECT_GPU=1 but NVML reports %+v", snap)
		}
	case !driverLoaded:
		if snap.Available {
			t.Fatalf("no NVIDIA kernel driver, yet NVML reports available: %+v", snap)
		}
		if !strings.HasPrefix(snap.Reason, "nvml init: ") || !strings.Contains(snap.Reason, "ERROR_") {
			t.Fatalf("reason %q should name the failed init and the NVML code", snap.Reason)
		}
	}
	if snap.Available {
		if snap.DriverVersion == "" || snap.Count != len(snap.Devices) {
			t.Errorf("available snapshot incomplete: %+v", snap)
		}
		for _, d := range snap.Devices {
			if d.Errors["handle"] != "" {
				t.Errorf("gpu %d: %s", d.Index, d.Errors["handle"])
				continue
			}
			if d.Name == "" || !strings.HasPrefix(d.UUID, "GPU-") || d.MemoryTotalBytes == 0 ||
				d.MemoryUsedBytes > d.MemoryTotalBytes || d.UtilizationRatio < 0 || d.UtilizationRatio > 1 {
				t.Errorf("gpu %d readings implausible: %+v", d.Index, d)
			}
		}
	}
}

// newDGX returns go-nvml's own mock of a DGX H100 with the readings its mock
// leaves out filled in, and the newer temperature call reported missing, as
// on a pre-NVML-13 driver.
func newDGX(t *testing.T) *server.Server {
	t.Helper()
	s := dgxh100.New()
	s.LookupSymbolFunc = func(symbol string) error {
		if symbol == "nvmlDeviceGetTemperatureV" {
			return errors.New("undefined symbol")
		}
		return nil
	}
	for i, d := range s.Devices {
		dev := d.(*server.Device)
		dev.MemoryInfo = nvml.Memory{Total: 80 << 30, Used: uint64(i+1) << 30, Free: 80<<30 - uint64(i+1)<<30}
		dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: uint32(10 * i), Memory: 5}, nvml.SUCCESS
		}
		dev.GetTemperatureFunc = func(sensor nvml.TemperatureSensors) (uint32, nvml.Return) {
			if sensor != nvml.TEMPERATURE_GPU {
				return 0, nvml.ERROR_INVALID_ARGUMENT
			}
			return uint32(40 + i), nvml.SUCCESS
		}
		dev.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 250_000, nvml.SUCCESS }
	}
	return s
}

func TestNVMLDriverMapsDGX(t *testing.T) {
	s := newDGX(t)
	// Board 3 cannot report power; board 5 fell off the bus.
	s.Devices[3].(*server.Device).GetPowerUsageFunc = func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	lost := s.DeviceGetHandleByIndexFunc
	s.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i == 5 {
			return nil, nvml.ERROR_GPU_IS_LOST
		}
		return lost(i)
	}

	m := newMonitor(Options{Logger: slog.New(slog.DiscardHandler)}, newNVMLDriver(s))
	snap := m.RefreshOnce(context.Background())
	if !snap.Available || snap.Count != 8 || len(snap.Devices) != 8 || snap.DriverVersion != "550.54.15" {
		t.Fatalf("snapshot = %+v", snap)
	}
	tests := []struct {
		index      int
		wantErrors map[string]string
		wantPower  float64
	}{
		{index: 0, wantPower: 250},
		{index: 3, wantPower: 0, wantErrors: map[string]string{"power": "nvml device 3 power: ERROR_NOT_SUPPORTED"}},
		{index: 5, wantErrors: map[string]string{"handle": "nvml device 5 handle: ERROR_GPU_IS_LOST"}},
		{index: 7, wantPower: 250},
	}
	for _, tt := range tests {
		d := snap.Devices[tt.index]
		if len(d.Errors) != len(tt.wantErrors) {
			t.Errorf("gpu %d errors = %v, want %v", tt.index, d.Errors, tt.wantErrors)
		}
		for k, v := range tt.wantErrors {
			if d.Errors[k] != v {
				t.Errorf("gpu %d error %s = %q, want %q", tt.index, k, d.Errors[k], v)
			}
		}
		if d.Index != tt.index || d.PowerWatts != tt.wantPower {
			t.Errorf("gpu %d: index %d power %v, want power %v", tt.index, d.Index, d.PowerWatts, tt.wantPower)
		}
		if _, lost := tt.wantErrors["handle"]; lost {
			continue
		}
		want := Device{
			Index: tt.index, Name: "NVIDIA H100 80GB HBM3", UUID: s.Devices[tt.index].(*server.Device).UUID,
			MemoryUsedBytes: uint64(tt.index+1) << 30, MemoryTotalBytes: 80 << 30,
			UtilizationRatio: float64(10*tt.index) / 100, TemperatureCelsius: float64(40 + tt.index),
			PowerWatts: tt.wantPower, Errors: d.Errors,
		}
		if d.Name != want.Name || d.UUID != want.UUID || d.MemoryUsedBytes != want.MemoryUsedBytes ||
			d.MemoryTotalBytes != want.MemoryTotalBytes || d.UtilizationRatio != want.UtilizationRatio ||
			d.TemperatureCelsius != want.TemperatureCelsius {
			t.Errorf("gpu %d = %+v, want %+v", tt.index, d, want)
		}
	}
}

func TestNVMLInitFailureReasons(t *testing.T) {
	tests := []struct {
		ret  nvml.Return
		want string
	}{
		{nvml.ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1 not found"},
		{nvml.ERROR_DRIVER_NOT_LOADED, "kernel driver is not loaded"},
		{nvml.ERROR_NO_PERMISSION, "no permission"},
		{nvml.ERROR_LIB_RM_VERSION_MISMATCH, "versions differ"},
		{nvml.ERROR_UNKNOWN, "NVML did not initialise"},
	}
	for _, tt := range tests {
		t.Run(tt.ret.Error(), func(t *testing.T) {
			s := newDGX(t)
			s.InitFunc = func() nvml.Return { return tt.ret }
			snap := newMonitor(Options{Logger: slog.New(slog.DiscardHandler)}, newNVMLDriver(s)).
				RefreshOnce(context.Background())
			if snap.Available || !strings.Contains(snap.Reason, tt.want) || !strings.HasSuffix(snap.Reason, tt.ret.Error()) {
				t.Fatalf("snapshot = %+v, want unavailable with %q and %s", snap, tt.want, tt.ret.Error())
			}
		})
	}
}

// TestNVMLDriverLosesDriver checks the recovery path: a device count failure
// after a good Init shuts NVML down so the next refresh initialises afresh.
func TestNVMLDriverLosesDriver(t *testing.T) {
	s := newDGX(t)
	var inits, shutdowns int
	s.InitFunc = func() nvml.Return { inits++; return nvml.SUCCESS }
	s.ShutdownFunc = func() nvml.Return { shutdowns++; return nvml.SUCCESS }
	count := s.DeviceGetCountFunc
	s.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_DRIVER_NOT_LOADED }

	m := newMonitor(Options{Logger: slog.New(slog.DiscardHandler)}, newNVMLDriver(s))
	ctx := context.Background()
	m.refresh(ctx)
	if snap := m.Snapshot(); snap.Available || !strings.Contains(snap.Reason, "device count: ERROR_DRIVER_NOT_LOADED") {
		t.Fatalf("snapshot = %+v", snap)
	}
	s.DeviceGetCountFunc = count
	m.refresh(ctx)
	if snap := m.Snapshot(); !snap.Available || snap.Count != 8 {
		t.Fatalf("after recovery snapshot = %+v", snap)
	}
	m.shutdown(ctx)
	if inits != 2 || shutdowns != 2 {
		t.Fatalf("inits=%d shutdowns=%d, want 2 and 2", inits, shutdowns)
	}
}
