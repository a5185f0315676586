package gpu

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names are part of the product contract (SPEC.md) and of the alert
// rules in deploy/prometheus; change them in all three places or none.
var (
	descAvailable = prometheus.NewDesc("relaygate_gpu_available",
		"1 when NVML answered the last refresh, 0 when it could not (GET /health says why).", nil, nil)
	descCount = prometheus.NewDesc("relaygate_gpu_count",
		"GPUs NVML reports on this host (0 when NVML is unavailable).", nil, nil)
	descExpected = prometheus.NewDesc("relaygate_gpu_expected_count",
		"GPUs this host is configured to have; alerts compare relaygate_gpu_count against it.", nil, nil)
	descInfo = prometheus.NewDesc("relaygate_gpu_info",
		"Always 1; labels name each GPU and the driver.", []string{"gpu", "name", "driver_version"}, nil)
	descUtilization = prometheus.NewDesc("relaygate_gpu_utilization_ratio",
		"Share of the last sample period the GPU was busy (0..1).", []string{"gpu"}, nil)
	descMemoryUsed = prometheus.NewDesc("relaygate_gpu_memory_used_bytes",
		"GPU memory in use.", []string{"gpu"}, nil)
	descMemoryTotal = prometheus.NewDesc("relaygate_gpu_memory_total_bytes",
		"GPU memory installed.", []string{"gpu"}, nil)
	descTemperature = prometheus.NewDesc("relaygate_gpu_temperature_celsius",
		"GPU core temperature.", []string{"gpu"}, nil)
	descPower = prometheus.NewDesc("relaygate_gpu_power_watts",
		"GPU board power draw.", []string{"gpu"}, nil)
)

// Collector exports the latest snapshot. It reads the stored snapshot only,
// so a scrape never waits on NVML.
func (m *Monitor) Collector() prometheus.Collector { return collector{m} }

type collector struct{ m *Monitor }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAvailable, descCount, descExpected, descInfo,
		descUtilization, descMemoryUsed, descMemoryTotal, descTemperature, descPower} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.m.Snapshot()
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	available := 0.0
	if snap.Available {
		available = 1
	}
	gauge(descAvailable, available)
	gauge(descCount, float64(snap.Count))
	gauge(descExpected, float64(c.m.expected))
	for _, d := range snap.Devices {
		gpu := strconv.Itoa(d.Index)
		gauge(descInfo, 1, gpu, d.Name, snap.DriverVersion)
		// A reading the device refused is left out rather than exported as 0:
		// a 0 °C or 0 W series would look like data to a dashboard.
		if d.readable("utilization") {
			gauge(descUtilization, d.UtilizationRatio, gpu)
		}
		if d.readable("memory") {
			gauge(descMemoryUsed, float64(d.MemoryUsedBytes), gpu)
			gauge(descMemoryTotal, float64(d.MemoryTotalBytes), gpu)
		}
		if d.readable("temperature") {
			gauge(descTemperature, d.TemperatureCelsius, gpu)
		}
		if d.readable("power") {
			gauge(descPower, d.PowerWatts, gpu)
		}
	}
}

// readable reports whether the device answered the named reading; a device
// whose handle NVML would not give answered none.
func (d Device) readable(field string) bool {
	if _, failed := d.Errors["handle"]; failed {
		return false
	}
	_, failed := d.Errors[field]
	return !failed
}
