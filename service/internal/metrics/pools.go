package metrics

import "github.com/prometheus/client_golang/prometheus"

// poolSeries are the metrics of pools and health probes.
type poolSeries struct {
	inflight   *prometheus.GaugeVec
	probes     *prometheus.CounterVec
	hourlyCost *prometheus.GaugeVec
}

func newPoolSeries(register func(prometheus.Collector)) poolSeries {
	p := poolSeries{
		inflight: gaugeVec("relaygate_upstream_inflight",
			"Attempts outstanding at each upstream now: what a least_busy pool balances on.",
			"upstream"),
		probes: counterVec("relaygate_health_probes_total",
			"Active health probes of each upstream, by result (pass, fail).",
			"upstream", "result"),
		hourlyCost: gaugeVec("relaygate_upstream_hourly_cost_usd",
			"The configured hourly cost of a self-hosted upstream's hosts (hourly_cost_usd), paid whether or not it serves: sum it over time to check what its tokens were priced at.",
			"upstream"),
	}
	register(p.inflight)
	register(p.probes)
	register(p.hourlyCost)
	return p
}

// UpstreamInflight is an upstream's outstanding-attempts gauge, resolved
// once: it moves on every attempt.
func (m *Metrics) UpstreamInflight(upstream string) prometheus.Gauge {
	return m.pools.inflight.WithLabelValues(upstream)
}

// HealthProbe counts one health probe of an upstream.
func (m *Metrics) HealthProbe(upstream string, pass bool) {
	result := "fail"
	if pass {
		result = "pass"
	}
	m.pools.probes.WithLabelValues(upstream, result).Inc()
}

// UpstreamHourlyCost exports an upstream's hourly cost; zero removes it.
func (m *Metrics) UpstreamHourlyCost(upstream string, usd float64) {
	if usd <= 0 {
		m.pools.hourlyCost.DeleteLabelValues(upstream)
		return
	}
	m.pools.hourlyCost.WithLabelValues(upstream).Set(usd)
}

// UpstreamPoolsRemoved removes the pool series of an upstream a reload
// took out of the config.
func (m *Metrics) UpstreamPoolsRemoved(upstream string) {
	m.pools.inflight.DeleteLabelValues(upstream)
	m.pools.hourlyCost.DeleteLabelValues(upstream)
}
