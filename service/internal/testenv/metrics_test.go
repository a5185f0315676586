package testenv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricValueSumsMatchingSeries: a selector that leaves out a label
// reads the sum over it, never whichever series sorts first.
func TestMetricValueSumsMatchingSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"api", "model"})
	reg.MustRegister(c)
	c.WithLabelValues("audio", "m").Add(2)
	c.WithLabelValues("chat", "m").Add(3)
	c.WithLabelValues("chat", "n").Add(7)
	tests := []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"model": "m"}, 5},
		{map[string]string{"model": "m", "api": "chat"}, 3},
		{map[string]string{"api": "chat"}, 10},
		{nil, 12},
		{map[string]string{"model": "z"}, 0},
	}
	for _, tt := range tests {
		if got := MetricValue(t, reg, "x_total", tt.labels); got != tt.want {
			t.Errorf("MetricValue(%v) = %v, want %v", tt.labels, got, tt.want)
		}
	}
}
