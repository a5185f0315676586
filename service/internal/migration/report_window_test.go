package migration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/testenv"
)

// serveSamples serves relaygate_inflight_requests as a scrape target with
// the given explicit timestamps, one series (label sample) per timestamp, so
// that a real Prometheus holds a gateway's presence at chosen past times.
// Prometheus keeps explicit timestamps (honor_timestamps) and ignores the
// same sample scraped again. It returns the target's host:port.
func serveSamples(t *testing.T, at []time.Time) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# TYPE relaygate_inflight_requests gauge\n")
	for i, ts := range at {
		fmt.Fprintf(&b, "relaygate_inflight_requests{sample=\"%d\"} 0 %d\n", i, ts.UnixMilli())
	}
	body := b.String()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestReportFindsRunsBetweenSteps checks where the report says its data
// starts when the gateway ran only at times an instant query every 1/720 of
// the window would not see: past a 60h window a step is longer than
// Prometheus's 5m lookback, and a run that ends more than 5m before the
// next step left no trace at any step.
//
// Two runs of the gauge, at explicit past timestamps (Prometheus appends
// nothing older than an hour before its newest sample, so both lie in the
// last 45 minutes): an early one of 3m30s placed just after a multiple of
// 10m (the step of a 5d window, which every step of a 30d window, 1h, is a
// multiple of too), so that the next step is 6m after its end, and a late
// one from 12m after it until a minute ago. Their timestamps are exact, so
// are the expected starts; nothing depends on how fast the machine is.
func TestReportFindsRunsBetweenSteps(t *testing.T) {
	const (
		grid  = 10 * time.Minute // the step of a 5d window
		every = 30 * time.Second // the runs' scrape interval
		day   = 24 * time.Hour
	)
	now := time.Now()
	base := now.Add(-45 * time.Minute).Truncate(grid).Add(grid)
	var early, late []time.Time
	for d := every; d <= 4*time.Minute; d += every {
		early = append(early, base.Add(d))
	}
	for ts := base.Add(16 * time.Minute); !ts.After(now.Add(-time.Minute)); ts = ts.Add(every) {
		late = append(late, ts)
	}
	earlyStart, earlyEnd := early[0], early[len(early)-1]
	lateEnd := late[len(late)-1]

	target := serveSamples(t, append(append([]time.Time{}, early...), late...))
	prom := testenv.StartPrometheus(t, testenv.PrometheusOptions{
		Targets: []string{target}, ScrapeInterval: 250 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := prom.WaitForSeries(ctx, fmt.Sprintf(`count(count_over_time(relaygate_inflight_requests[1h])) == %d`,
		len(early)+len(late))); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name   string
		window time.Duration
		end    time.Time
		start  time.Time // zero: no data
	}{
		// The early run alone, 10m before the end of a 30d window: no step
		// of an hour is within 5m after it.
		{"a short run inside a 30d window", 30 * day, earlyEnd.Add(10 * time.Minute), earlyStart},
		// Both runs in a 5d window: steps of 10m see the late run only, and
		// the covered time would be 16m too short.
		{"a run before a gap in a 5d window", 5 * day, lateEnd, earlyStart},
		// A window starting 15s before a sample of a run that began earlier
		// is covered from its start.
		{"a window starting inside a run", 10*time.Minute + 15*time.Second, lateEnd, lateEnd.Add(-10*time.Minute - 15*time.Second)},
		{"a 30d window ending before the first run", 30 * day, earlyStart.Add(-time.Minute), time.Time{}},
		// 721 steps of 5s: the first reaches 4s before the window, where
		// the late run's last sample is, 2s before the window starts.
		{"a window starting 2s after the last sample", time.Hour + time.Second, lateEnd.Add(time.Hour + 3*time.Second), time.Time{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, err := Report(ctx, ReportOptions{API: prom.API, Source: prom.URL, Window: c.window, End: c.end})
			if c.start.IsZero() {
				if !errors.Is(err, ErrNoData) {
					t.Errorf("err = %v, want ErrNoData", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !res.Start.Equal(c.start) || !res.End.Equal(c.end) || res.Covered != c.end.Sub(c.start) ||
				res.CoveredSeconds != c.end.Sub(c.start).Seconds() {
				t.Errorf("covered %v (%vs) from %v to %v, want %v from %v to %v",
					res.Covered, res.CoveredSeconds, res.Start, res.End, c.end.Sub(c.start), c.start.UTC(), c.end.UTC())
			}
			only := "of the " + res.Window + " window only"
			if partial := c.end.Sub(c.start) < c.window; strings.Contains(res.Summary(), only) != partial {
				t.Errorf("summary (data shorter than the window: %v): %s", partial, res.Summary())
			}
		})
	}
}
