package gpu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeDriver is a scripted NVML: a device set whose readings can each fail.
type fakeDriver struct {
	mu         sync.Mutex
	initErrs   []error // returned by successive Init calls; nil once used up
	countErr   error
	version    string
	versionErr error
	devices    []fakeDevice

	inits, shutdowns int
	counted          chan struct{} // receives after every successful DeviceCount, when set
}

type fakeDevice struct {
	name, uuid  string
	used, total uint64
	utilPercent uint32
	temp        int
	milliwatts  uint32
	errs        map[string]error // by reading: handle, name, uuid, memory, utilization, temperature, power
}

func (f *fakeDriver) Init() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inits++
	if len(f.initErrs) > 0 {
		err := f.initErrs[0]
		f.initErrs = f.initErrs[1:]
		return err
	}
	return nil
}

func (f *fakeDriver) Shutdown() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shutdowns++
	return nil
}

func (f *fakeDriver) DriverVersion() (string, error) { return f.version, f.versionErr }

func (f *fakeDriver) DeviceCount() (int, error) {
	f.mu.Lock()
	err, n := f.countErr, len(f.devices)
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if f.counted != nil {
		select {
		case f.counted <- struct{}{}:
		default:
		}
	}
	return n, nil
}

func (f *fakeDriver) Device(i int) (deviceReader, error) {
	d := f.devices[i]
	if err := d.errs["handle"]; err != nil {
		return nil, err
	}
	return d, nil
}

func (f *fakeDriver) calls() (inits, shutdowns int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inits, f.shutdowns
}

func (d fakeDevice) Name() (string, error)               { return d.name, d.errs["name"] }
func (d fakeDevice) UUID() (string, error)               { return d.uuid, d.errs["uuid"] }
func (d fakeDevice) Memory() (uint64, uint64, error)     { return d.used, d.total, d.errs["memory"] }
func (d fakeDevice) UtilizationPercent() (uint32, error) { return d.utilPercent, d.errs["utilization"] }
func (d fakeDevice) TemperatureCelsius() (int, error)    { return d.temp, d.errs["temperature"] }
func (d fakeDevice) PowerMilliwatts() (uint32, error)    { return d.milliwatts, d.errs["power"] }

var errNotSupported = errors.New("nvml device 1 power: ERROR_NOT_SUPPORTED")

func h100(i int) fakeDevice {
	return fakeDevice{
		name: "NVIDIA H100 80GB HBM3", uuid: "GPU-0000000" + string(rune('0'+i)),
		used: 40 << 30, total: 80 << 30, utilPercent: 73, temp: 61, milliwatts: 312500,
	}
}

func withErrs(d fakeDevice, errs map[string]error) fakeDevice {
	d.errs = errs
	return d
}

var fixedNow = time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC)

func newTestMonitor(t *testing.T, drv *fakeDriver, opts Options) *Monitor {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m := newMonitor(opts, drv)
	m.now = func() time.Time { return fixedNow }
	return m
}

func TestRefreshOnce(t *testing.T) {
	full := Device{
		Name: "NVIDIA H100 80GB HBM3", MemoryUsedBytes: 40 << 30, MemoryTotalBytes: 80 << 30,
		UtilizationRatio: 0.73, TemperatureCelsius: 61, PowerWatts: 312.5,
	}
	device := func(i int, edit func(*Device)) Device {
		d := full
		d.Index, d.UUID = i, "GPU-0000000"+string(rune('0'+i))
		if edit != nil {
			edit(&d)
		}
		return d
	}
	tests := []struct {
		name string
		drv  *fakeDriver
		want Snapshot
		// wantShutdowns counts NVML shutdowns: one after every successful
		// Init (RefreshOnce cleans up), none when Init never succeeded.
		wantShutdowns int
	}{
		{
			name: "two healthy GPUs",
			drv:  &fakeDriver{version: "550.54.15", devices: []fakeDevice{h100(0), h100(1)}},
			want: Snapshot{Available: true, DriverVersion: "550.54.15", Count: 2,
				Devices: []Device{device(0, nil), device(1, nil)}, UpdatedAt: fixedNow},
			wantShutdowns: 1,
		},
		{
			name: "unsupported power keeps the device",
			drv: &fakeDriver{version: "550.54.15", devices: []fakeDevice{
				h100(0), withErrs(h100(1), map[string]error{"power": errNotSupported}),
			}},
			want: Snapshot{Available: true, DriverVersion: "550.54.15", Count: 2, UpdatedAt: fixedNow,
				Devices: []Device{device(0, nil), device(1, func(d *Device) {
					d.PowerWatts = 0
					d.Errors = map[string]string{"power": errNotSupported.Error()}
				})}},
			wantShutdowns: 1,
		},
		{
			name: "lost GPU handle is reported, not dropped",
			drv: &fakeDriver{version: "550.54.15", devices: []fakeDevice{
				withErrs(h100(0), map[string]error{"handle": errors.New("nvml device 0 handle: ERROR_GPU_IS_LOST")}), h100(1),
			}},
			want: Snapshot{Available: true, DriverVersion: "550.54.15", Count: 2, UpdatedAt: fixedNow,
				Devices: []Device{
					{Index: 0, Errors: map[string]string{"handle": "nvml device 0 handle: ERROR_GPU_IS_LOST"}},
					device(1, nil),
				}},
			wantShutdowns: 1,
		},
		{
			name: "several readings fail on one device",
			drv: &fakeDriver{version: "550.54.15", devices: []fakeDevice{withErrs(h100(0), map[string]error{
				"name": errors.New("name: boom"), "memory": errors.New("memory: boom"),
				"utilization": errors.New("utilization: boom"), "temperature": errors.New("temperature: boom"),
			})}},
			want: Snapshot{Available: true, DriverVersion: "550.54.15", Count: 1, UpdatedAt: fixedNow,
				Devices: []Device{{Index: 0, UUID: "GPU-00000000", PowerWatts: 312.5, Errors: map[string]string{
					"name": "name: boom", "memory": "memory: boom", "utilization": "utilization: boom", "temperature": "temperature: boom",
				}}}},
			wantShutdowns: 1,
		},
		{
			name:          "driver loaded, no GPUs",
			drv:           &fakeDriver{version: "550.54.15"},
			want:          Snapshot{Available: true, DriverVersion: "550.54.15", Count: 0, Devices: []Device{}, UpdatedAt: fixedNow},
			wantShutdowns: 1,
		},
		{
			name:          "missing driver version costs only the label",
			drv:           &fakeDriver{versionErr: errors.New("nvml driver version: ERROR_UNKNOWN"), devices: []fakeDevice{h100(0)}},
			want:          Snapshot{Available: true, Count: 1, Devices: []Device{device(0, nil)}, UpdatedAt: fixedNow},
			wantShutdowns: 1,
		},
		{
			name: "init fails",
			drv:  &fakeDriver{initErrs: []error{errors.New("nvml init: libnvidia-ml.so.1 not found: ERROR_LIBRARY_NOT_FOUND")}},
			want: Snapshot{Reason: "nvml init: libnvidia-ml.so.1 not found: ERROR_LIBRARY_NOT_FOUND",
				Devices: []Device{}, UpdatedAt: fixedNow},
			wantShutdowns: 0,
		},
		{
			name:          "device count fails after init",
			drv:           &fakeDriver{countErr: errors.New("nvml device count: ERROR_DRIVER_NOT_LOADED"), devices: []fakeDevice{h100(0)}},
			want:          Snapshot{Reason: "nvml device count: ERROR_DRIVER_NOT_LOADED", Devices: []Device{}, UpdatedAt: fixedNow},
			wantShutdowns: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestMonitor(t, tt.drv, Options{})
			got := m.RefreshOnce(context.Background())
			assertSnapshot(t, got, tt.want)
			assertSnapshot(t, m.Snapshot(), tt.want)
			if _, shutdowns := tt.drv.calls(); shutdowns != tt.wantShutdowns {
				t.Errorf("NVML shutdowns = %d, want %d", shutdowns, tt.wantShutdowns)
			}
		})
	}
}

func assertSnapshot(t *testing.T, got, want Snapshot) {
	t.Helper()
	g, _ := json.MarshalIndent(got, "", "  ")
	w, _ := json.MarshalIndent(want, "", "  ")
	if !bytes.Equal(g, w) {
		t.Errorf("snapshot:\n%s\nwant:\n%s", g, w)
	}
}

func TestSnapshotBeforeFirstRefresh(t *testing.T) {
	m := newTestMonitor(t, &fakeDriver{devices: []fakeDevice{h100(0)}}, Options{})
	got := m.Snapshot()
	if got.Available || got.Reason != "not probed yet" || got.Count != 0 {
		t.Fatalf("initial snapshot = %+v, want unavailable, not probed yet", got)
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	// /health must show an empty list, not null, and no zero timestamp.
	if want := `{"available":false,"reason":"not probed yet","count":0,"devices":[]}`; string(b) != want {
		t.Fatalf("JSON = %s, want %s", b, want)
	}
}

func TestSnapshotJSONNames(t *testing.T) {
	m := newTestMonitor(t, &fakeDriver{version: "550.54.15", devices: []fakeDevice{
		withErrs(h100(0), map[string]error{"power": errNotSupported}),
	}}, Options{})
	b, err := json.Marshal(m.RefreshOnce(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Available     *bool   `json:"available"`
		DriverVersion *string `json:"driver_version"`
		Count         *int    `json:"count"`
		UpdatedAt     *string `json:"updated_at"`
		Devices       []map[string]any
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Available == nil || got.DriverVersion == nil || got.Count == nil || got.UpdatedAt == nil || len(got.Devices) != 1 {
		t.Fatalf("top-level snake_case keys missing in %s", b)
	}
	for _, key := range []string{"index", "name", "uuid", "memory_used_bytes", "memory_total_bytes",
		"utilization_ratio", "temperature_celsius", "power_watts", "errors"} {
		if _, ok := got.Devices[0][key]; !ok {
			t.Errorf("device key %q missing in %s", key, b)
		}
	}
}

// hostGauges is the exposition of the gauges every scrape has, whether or
// not NVML answered.
func hostGauges(available, count, expected int) string {
	return fmt.Sprintf(`
# HELP relaygate_gpu_available 1 when NVML answered the last refresh, 0 when it could not (GET /health says why).
# TYPE relaygate_gpu_available gauge
relaygate_gpu_available %d
# HELP relaygate_gpu_count GPUs NVML reports on this host (0 when NVML is unavailable).
# TYPE relaygate_gpu_count gauge
relaygate_gpu_count %d
# HELP relaygate_gpu_expected_count GPUs this host is configured to have; alerts compare relaygate_gpu_count against it.
# TYPE relaygate_gpu_expected_count gauge
relaygate_gpu_expected_count %d
`, available, count, expected)
}

// h100Gauges is the exposition of h100(0)'s readings but power, which a
// driver may not report.
const h100Gauges = `
# HELP relaygate_gpu_memory_total_bytes GPU memory installed.
# TYPE relaygate_gpu_memory_total_bytes gauge
relaygate_gpu_memory_total_bytes{gpu="0"} 8.589934592e+10
# HELP relaygate_gpu_memory_used_bytes GPU memory in use.
# TYPE relaygate_gpu_memory_used_bytes gauge
relaygate_gpu_memory_used_bytes{gpu="0"} 4.294967296e+10
# HELP relaygate_gpu_temperature_celsius GPU core temperature.
# TYPE relaygate_gpu_temperature_celsius gauge
relaygate_gpu_temperature_celsius{gpu="0"} 61
# HELP relaygate_gpu_utilization_ratio Share of the last sample period the GPU was busy (0..1).
# TYPE relaygate_gpu_utilization_ratio gauge
relaygate_gpu_utilization_ratio{gpu="0"} 0.73
`

func TestCollector(t *testing.T) {
	tests := []struct {
		name     string
		drv      *fakeDriver
		expected int
		refresh  bool
		want     string // the order of families does not matter
	}{
		{
			name: "before first refresh",
			drv:  &fakeDriver{devices: []fakeDevice{h100(0)}}, expected: 1,
			want: hostGauges(0, 0, 1),
		},
		{
			name: "no NVML",
			drv:  &fakeDriver{initErrs: []error{errors.New("nvml init: ERROR_LIBRARY_NOT_FOUND")}}, expected: 2, refresh: true,
			want: hostGauges(0, 0, 2),
		},
		{
			name: "one GPU without power, one lost",
			drv: &fakeDriver{version: "550.54.15", devices: []fakeDevice{
				withErrs(h100(0), map[string]error{"power": errNotSupported}),
				withErrs(h100(1), map[string]error{"handle": errors.New("ERROR_GPU_IS_LOST")}),
			}},
			expected: 2, refresh: true,
			want: hostGauges(1, 2, 2) + `
# HELP relaygate_gpu_info Always 1; labels name each GPU and the driver.
# TYPE relaygate_gpu_info gauge
relaygate_gpu_info{driver_version="550.54.15",gpu="0",name="NVIDIA H100 80GB HBM3"} 1
relaygate_gpu_info{driver_version="550.54.15",gpu="1",name=""} 1
` + h100Gauges,
		},
		{
			name: "healthy GPU exports power",
			drv:  &fakeDriver{version: "550.54.15", devices: []fakeDevice{h100(0)}}, refresh: true,
			want: hostGauges(1, 1, 0) + `
# HELP relaygate_gpu_info Always 1; labels name each GPU and the driver.
# TYPE relaygate_gpu_info gauge
relaygate_gpu_info{driver_version="550.54.15",gpu="0",name="NVIDIA H100 80GB HBM3"} 1
# HELP relaygate_gpu_power_watts GPU board power draw.
# TYPE relaygate_gpu_power_watts gauge
relaygate_gpu_power_watts{gpu="0"} 312.5
` + h100Gauges,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestMonitor(t, tt.drv, Options{ExpectedCount: tt.expected})
			if tt.refresh {
				m.RefreshOnce(context.Background())
			}
			reg := prometheus.NewPedanticRegistry()
			if err := reg.Register(m.Collector()); err != nil {
				t.Fatalf("register: %v", err)
			}
			if err := testutil.GatherAndCompare(reg, strings.NewReader(tt.want)); err != nil {
				t.Fatal(err)
			}
			problems, err := testutil.GatherAndLint(reg)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				// relaygate_gpu_count and relaygate_gpu_expected_count are
				// contract names (SPEC.md) that predate the linter's opinion
				// on the _count suffix; everything else must pass.
				if strings.Contains(p.Text, `"_count" suffix`) {
					continue
				}
				t.Errorf("lint %s: %s", p.Metric, p.Text)
			}
		})
	}
}

// TestRunRetriesAndStops drives Run through a failed Init, a recovery and a
// cancellation, waiting on the fake's signals rather than on time.
func TestRunRetriesAndStops(t *testing.T) {
	drv := &fakeDriver{
		initErrs: []error{errors.New("nvml init: ERROR_DRIVER_NOT_LOADED")},
		version:  "550.54.15",
		devices:  []fakeDevice{h100(0)},
		counted:  make(chan struct{}, 1),
	}
	m := newTestMonitor(t, drv, Options{Interval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	select {
	case <-drv.counted:
	case <-time.After(30 * time.Second):
		t.Fatal("Run never got past the failed Init")
	}
	// The snapshot is stored right after DeviceCount returns; wait for it.
	deadline := time.After(30 * time.Second)
	for !m.Snapshot().Available {
		select {
		case <-drv.counted:
		case <-deadline:
			t.Fatalf("snapshot never became available: %+v", m.Snapshot())
		}
	}

	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	inits, shutdowns := drv.calls()
	if inits != 2 {
		t.Errorf("Init calls = %d, want 2 (one failed, one that stuck)", inits)
	}
	if shutdowns != 1 {
		t.Errorf("Shutdown calls = %d, want 1 on return", shutdowns)
	}
}

func TestLogsStateChangesOnce(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	drv := &fakeDriver{initErrs: []error{
		errors.New("nvml init: ERROR_LIBRARY_NOT_FOUND"),
		errors.New("nvml init: ERROR_LIBRARY_NOT_FOUND"),
		errors.New("nvml init: ERROR_LIBRARY_NOT_FOUND"),
	}, version: "550.54.15", devices: []fakeDevice{h100(0)}}
	m := newTestMonitor(t, drv, Options{ExpectedCount: 1, Logger: logger})
	for range 5 { // three failures, then two healthy refreshes
		m.RefreshOnce(context.Background())
	}
	out := buf.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 log lines (unavailable, then available), got %d:\n%s", len(lines), out)
	}
	if !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], "ERROR_LIBRARY_NOT_FOUND") {
		t.Errorf("first line should warn with the reason: %s", lines[0])
	}
	if !strings.Contains(lines[1], "level=INFO") || !strings.Contains(lines[1], "available=true") {
		t.Errorf("second line should report recovery at info: %s", lines[1])
	}
}
