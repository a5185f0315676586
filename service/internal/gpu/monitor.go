// Package gpu reports the host's NVIDIA GPUs through NVML for /health and
// /metrics. A gateway often runs where there is no GPU at all (a laptop, a CI
// runner, a container started without the NVIDIA runtime), so the monitor never
// fails: it reports Available=false with the reason instead, and keeps trying,
// because the driver may only come up after the gateway has started.
package gpu

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInterval is how often Run refreshes when Options.Interval is zero.
// NVML reads take milliseconds, but ten seconds is finer than any scrape and
// keeps the cost invisible next to the requests being served.
const DefaultInterval = 10 * time.Second

// Device is one GPU as NVML last reported it.
type Device struct {
	Index              int     `json:"index"`
	Name               string  `json:"name"`
	UUID               string  `json:"uuid"`
	MemoryUsedBytes    uint64  `json:"memory_used_bytes"`
	MemoryTotalBytes   uint64  `json:"memory_total_bytes"`
	UtilizationRatio   float64 `json:"utilization_ratio"` // 0..1
	TemperatureCelsius float64 `json:"temperature_celsius"`
	PowerWatts         float64 `json:"power_watts"`
	// Errors names the readings NVML refused for this device (key: name, uuid,
	// memory, utilization, temperature, power or handle) and why. Such a
	// reading is zero above and left out of the metrics, so that a GPU which
	// cannot report its power (common on some boards) still shows the rest.
	Errors map[string]string `json:"errors,omitempty"`
}

// Snapshot is the result of one refresh. It goes into GET /health as "gpu".
// Snapshots are shared between readers: treat one as read-only.
type Snapshot struct {
	Available     bool      `json:"available"`
	Reason        string    `json:"reason,omitempty"` // why not, when !Available
	DriverVersion string    `json:"driver_version,omitempty"`
	Count         int       `json:"count"`
	Devices       []Device  `json:"devices"`
	UpdatedAt     time.Time `json:"updated_at,omitzero"`
}

// Options configures a Monitor.
type Options struct {
	// Interval between refreshes in Run; DefaultInterval when zero.
	Interval time.Duration
	// ExpectedCount is how many GPUs this host should have. It is exported
	// as relaygate_gpu_expected_count so an alert can compare, and raises the
	// log level when fewer are seen.
	ExpectedCount int
	// Logger receives state changes only (not one line per refresh);
	// slog.Default() when nil.
	Logger *slog.Logger
}

// driver is the seam between the monitor and NVML: the few calls a refresh
// makes, with NVML's return codes already turned into errors. The cgo build
// talks to libnvidia-ml; the !cgo build cannot, and tests use a fake.
type driver interface {
	Init() error
	Shutdown() error
	DriverVersion() (string, error)
	DeviceCount() (int, error)
	Device(index int) (deviceReader, error)
}

// deviceReader reads one GPU. Each reading fails on its own, because boards
// differ in what they support.
type deviceReader interface {
	Name() (string, error)
	UUID() (string, error)
	Memory() (used, total uint64, err error)
	UtilizationPercent() (uint32, error)
	TemperatureCelsius() (int, error)
	PowerMilliwatts() (uint32, error)
}

// Monitor keeps the latest Snapshot of the host's GPUs.
type Monitor struct {
	drv      driver
	interval time.Duration
	expected int
	log      *slog.Logger
	now      func() time.Time

	latest atomic.Pointer[Snapshot]

	// mu serialises refreshes, so that RefreshOnce and Run never interleave
	// NVML Init/Shutdown, and guards the fields below.
	mu          sync.Mutex
	initialised bool
	lastState   string
}

// NewMonitor returns a monitor over the system's NVML. Until the first
// refresh its Snapshot says it has not probed yet.
func NewMonitor(opts Options) *Monitor {
	return newMonitor(opts, systemDriver())
}

func newMonitor(opts Options, drv driver) *Monitor {
	m := &Monitor{
		drv:      drv,
		interval: opts.Interval,
		expected: opts.ExpectedCount,
		log:      opts.Logger,
		now:      time.Now,
	}
	if m.interval <= 0 {
		m.interval = DefaultInterval
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	m.latest.Store(&Snapshot{Reason: "not probed yet", Devices: []Device{}})
	return m
}

// Snapshot returns the latest refresh without waiting on NVML, so request
// handlers can call it freely.
func (m *Monitor) Snapshot() Snapshot {
	return *m.latest.Load()
}

// Run refreshes at once and then every interval until ctx is done, keeping
// NVML initialised in between and shutting it down on return. Call it once,
// in its own goroutine.
func (m *Monitor) Run(ctx context.Context) {
	ticker := time.NewTicker(m.interval)
	defer ticker.Stop()
	defer m.shutdown(ctx)
	for {
		m.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// RefreshOnce initialises NVML, takes one snapshot, shuts NVML down again and
// returns the snapshot. It is for one-shot tools such as gpu-probe.
func (m *Monitor) RefreshOnce(ctx context.Context) Snapshot {
	m.refresh(ctx)
	m.shutdown(ctx)
	return m.Snapshot()
}

func (m *Monitor) refresh(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	if !m.initialised {
		if err := m.drv.Init(); err != nil {
			m.publish(ctx, m.unavailable(err.Error()))
			return
		}
		m.initialised = true
	}
	snap, err := m.collect()
	if err != nil {
		// NVML answered Init but not the device count: the driver went away
		// or was reloaded. Start over on the next refresh.
		m.shutdownLocked(ctx)
		m.publish(ctx, m.unavailable(err.Error()))
		return
	}
	m.publish(ctx, snap)
}

func (m *Monitor) unavailable(reason string) *Snapshot {
	return &Snapshot{Reason: reason, Devices: []Device{}, UpdatedAt: m.now().UTC()}
}

func (m *Monitor) collect() (*Snapshot, error) {
	count, err := m.drv.DeviceCount()
	if err != nil {
		return nil, err
	}
	snap := &Snapshot{Available: true, Count: count, Devices: make([]Device, 0, count)}
	// A missing driver version only costs a label; the devices still count.
	if v, err := m.drv.DriverVersion(); err == nil {
		snap.DriverVersion = v
	}
	for i := range count {
		snap.Devices = append(snap.Devices, readDevice(m.drv, i))
	}
	snap.UpdatedAt = m.now().UTC()
	return snap, nil
}

// readDevice fills what the device answers and records the rest in Errors,
// so one unsupported reading never hides the GPU.
func readDevice(drv driver, index int) Device {
	d := Device{Index: index}
	fail := func(field string, err error) {
		if d.Errors == nil {
			d.Errors = make(map[string]string)
		}
		d.Errors[field] = err.Error()
	}
	r, err := drv.Device(index)
	if err != nil {
		fail("handle", err)
		return d
	}
	if v, err := r.Name(); err != nil {
		fail("name", err)
	} else {
		d.Name = v
	}
	if v, err := r.UUID(); err != nil {
		fail("uuid", err)
	} else {
		d.UUID = v
	}
	if used, total, err := r.Memory(); err != nil {
		fail("memory", err)
	} else {
		d.MemoryUsedBytes, d.MemoryTotalBytes = used, total
	}
	if v, err := r.UtilizationPercent(); err != nil {
		fail("utilization", err)
	} else {
		d.UtilizationRatio = float64(v) / 100
	}
	if v, err := r.TemperatureCelsius(); err != nil {
		fail("temperature", err)
	} else {
		d.TemperatureCelsius = float64(v)
	}
	if v, err := r.PowerMilliwatts(); err != nil {
		fail("power", err)
	} else {
		d.PowerWatts = float64(v) / 1000
	}
	return d
}

// publish stores snap and logs only when the picture changes, so a host
// without a GPU says why once instead of every interval.
func (m *Monitor) publish(ctx context.Context, snap *Snapshot) {
	m.latest.Store(snap)
	state, degraded := m.describe(snap)
	if state == m.lastState {
		return
	}
	m.lastState = state
	level := slog.LevelInfo
	if degraded {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.Bool("available", snap.Available),
		slog.Int("count", snap.Count),
		slog.Int("expected", m.expected),
	}
	if snap.Reason != "" {
		attrs = append(attrs, slog.String("reason", snap.Reason))
	}
	if snap.DriverVersion != "" {
		attrs = append(attrs, slog.String("driver_version", snap.DriverVersion))
	}
	if errs := deviceErrors(snap); errs != "" {
		attrs = append(attrs, slog.String("device_errors", errs))
	}
	m.log.LogAttrs(ctx, level, "gpu telemetry state changed", attrs...)
}

// describe reduces a snapshot to what is worth logging about (not the
// readings, which change every refresh) and says whether it needs attention.
func (m *Monitor) describe(snap *Snapshot) (state string, degraded bool) {
	errs := deviceErrors(snap)
	state = fmt.Sprintf("available=%t reason=%q count=%d driver=%q errors=%q",
		snap.Available, snap.Reason, snap.Count, snap.DriverVersion, errs)
	degraded = snap.Count < m.expected || errs != ""
	return state, degraded
}

func deviceErrors(snap *Snapshot) string {
	var parts []string
	for _, d := range snap.Devices {
		for field, msg := range d.Errors {
			parts = append(parts, fmt.Sprintf("gpu %d %s: %s", d.Index, field, msg))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func (m *Monitor) shutdown(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.shutdownLocked(ctx)
}

func (m *Monitor) shutdownLocked(ctx context.Context) {
	if !m.initialised {
		return
	}
	m.initialised = false
	if err := m.drv.Shutdown(); err != nil {
		m.log.LogAttrs(ctx, slog.LevelWarn, "nvml shutdown failed", slog.String("error", err.Error()))
	}
}
