package metrics

import "testing"

// The metrics recorded for every request. Series are resolved once and
// cached, so after the first request these cost atomic adds, not label
// hashing. Run with
//
//	go test -run '^$' -bench . -benchmem ./service/internal/metrics/
func BenchmarkRecord(b *testing.B) {
	tests := []struct {
		name   string
		record func(m *Metrics)
	}{
		{"request", func(m *Metrics) { m.Request("gpt-4.1", "chat", "holysheep", 200, 0.0123) }},
		{"overhead", func(m *Metrics) { m.Overhead(0.000031) }},
		{"usage", func(m *Metrics) { m.Usage("gpt-4.1", "chat", "holysheep", 41, 38, 0.000270, 0.000386, true) }},
		{"upstream-duration", func(m *Metrics) { m.UpstreamDuration("holysheep", 0.0121) }},
		{"all-of-one-request", func(m *Metrics) {
			m.Inflight(1)
			m.UpstreamAttempt("holysheep", "success")
			m.UpstreamDuration("holysheep", 0.0121)
			m.Request("gpt-4.1", "chat", "holysheep", 200, 0.0123)
			m.Overhead(0.000031)
			m.Usage("gpt-4.1", "chat", "holysheep", 41, 38, 0.000270, 0.000386, true)
			m.Inflight(-1)
		}},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			m := New()
			tc.record(m) // resolve the series, as the first request does
			b.ReportAllocs()
			for b.Loop() {
				tc.record(m)
			}
		})
	}
}

// BenchmarkRecordParallel is the same under contention from every CPU, as
// when many requests finish at once.
func BenchmarkRecordParallel(b *testing.B) {
	m := New()
	m.Request("gpt-4.1", "chat", "holysheep", 200, 0.0123)
	m.Usage("gpt-4.1", "chat", "holysheep", 41, 38, 0.000270, 0.000386, true)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request("gpt-4.1", "chat", "holysheep", 200, 0.0123)
			m.Overhead(0.000031)
			m.Usage("gpt-4.1", "chat", "holysheep", 41, 38, 0.000270, 0.000386, true)
		}
	})
}
