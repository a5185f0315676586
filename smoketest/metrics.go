package smoketest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/relaygate/relaygate/internal/ctxsleep"
)

type metricFamilies map[string]*dto.MetricFamily

// requiredMetrics are the SPEC's series a gateway exports once it has
// answered a request. Series with per-model or per-upstream labels appear
// with their first sample, so the ones below depend on what the run did;
// GPU utilisation and the like only exist with a GPU.
func (r *runner) requiredMetrics() []string {
	names := []string{
		"relaygate_requests_total",
		"relaygate_request_duration_seconds",
		"relaygate_overhead_seconds",
		"relaygate_cache_requests_total",
		"relaygate_upstream_up",
		"relaygate_inflight_requests",
		"relaygate_gpu_count",
	}
	if r.okRequests > 0 {
		names = append(names, "relaygate_upstream_duration_seconds", "relaygate_tokens_total")
	}
	if r.streamSeen {
		names = append(names, "relaygate_ttft_seconds")
	}
	return names
}

func (r *runner) scrapeMetrics(ctx context.Context) (metricFamilies, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.opts.Outputs.GatewayURL+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	// Ask for the text format: it is what the parser reads.
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := r.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("GET /metrics answered HTTP %d: %s", resp.StatusCode, snippet(b))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, fmt.Errorf("GET /metrics is not Prometheus text: %w", err)
	}
	return mf, nil
}

// sum adds up a counter's or gauge's samples, or a histogram's counts,
// over the series whose labels match.
func (m metricFamilies) sum(name string, labels map[string]string) float64 {
	f := m[name]
	if f == nil {
		return 0
	}
	total := 0.0
next:
	for _, s := range f.GetMetric() {
		for k, v := range labels {
			found := false
			for _, l := range s.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
					break
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case s.Counter != nil:
			total += s.GetCounter().GetValue()
		case s.Gauge != nil:
			total += s.GetGauge().GetValue()
		case s.Histogram != nil:
			total += float64(s.GetHistogram().GetSampleCount())
		case s.Untyped != nil:
			total += s.GetUntyped().GetValue()
		}
	}
	return total
}

// metricsSettle bounds the wait for the gateway's counters to include the
// run's last requests.
const metricsSettle = 5 * time.Second

// metricsMoved compares after with the scrape taken before the run.
func (r *runner) metricsMoved(after metricFamilies) (detail string, stuck []string) {
	ok200 := map[string]string{"code": "200"}
	reqDelta := after.sum("relaygate_requests_total", ok200) - r.baseline.sum("relaygate_requests_total", ok200)
	tokDelta := after.sum("relaygate_tokens_total", nil) - r.baseline.sum("relaygate_tokens_total", nil)
	durDelta := after.sum("relaygate_request_duration_seconds", nil) - r.baseline.sum("relaygate_request_duration_seconds", nil)
	hitDelta := after.sum("relaygate_cache_requests_total", map[string]string{"result": "hit"}) -
		r.baseline.sum("relaygate_cache_requests_total", map[string]string{"result": "hit"})
	ttftDelta := after.sum("relaygate_ttft_seconds", nil) - r.baseline.sum("relaygate_ttft_seconds", nil)
	detail = fmt.Sprintf("during the run: +%.0f requests answered 200 (smoke test made %d), +%.0f tokens, +%.0f cache hits, +%.0f stream TTFTs",
		reqDelta, r.okRequests, tokDelta, hitDelta, ttftDelta)
	// A stream is left out of the 200s: when the client closes right after
	// [DONE] (go-openai does) before the upstream's end reaches the gateway,
	// the gateway counts it as 499. Its duration is recorded either way.
	if reqDelta < float64(r.okRequests-r.okStreams) || durDelta < float64(r.okRequests) {
		stuck = append(stuck, "relaygate_requests_total/relaygate_request_duration_seconds did not count every answered request")
	}
	if r.okRequests > 0 && tokDelta <= 0 {
		stuck = append(stuck, "relaygate_tokens_total did not move (the upstream reports no usage, so cost and savings are not counted either)")
	}
	if r.cacheHitSeen && hitDelta < 1 {
		stuck = append(stuck, `relaygate_cache_requests_total{result="hit"} did not count the cache hit`)
	}
	if r.streamSeen && ttftDelta < 1 {
		stuck = append(stuck, "relaygate_ttft_seconds did not record the stream")
	}
	return detail, stuck
}

func (r *runner) checkMetrics(ctx context.Context, s *Step) {
	after, err := r.scrapeMetrics(ctx)
	if err != nil {
		d, h := r.reachError(ctx, "the gateway's /metrics", err)
		s.fail(d, h+"; Prometheus needs /metrics too")
		return
	}
	required := r.requiredMetrics()
	var missing []string
	for _, name := range required {
		if after[name] == nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		s.fail("GET /metrics lacks "+strings.Join(missing, ", "),
			"the gateway runs an image that does not export SPEC.md's metrics, or gatewayUrl points at something else; deploy the current image")
		return
	}
	if len(r.opts.Outputs.Hosts) > 1 {
		// Behind a load balancer each scrape reaches some host, whose
		// counters are its own: before and after cannot be compared. The
		// Prometheus target check sees every host.
		s.passf("all %d required series exported (counters are per host behind the load balancer: the Prometheus check sums them)", len(required))
		return
	}
	if r.baselineErr != nil {
		s.fail("could not read /metrics before the requests: "+r.baselineErr.Error(), "run the smoke test again; if it persists, see the gateway's log")
		return
	}
	// The gateway counts a request after its answer has gone out, so the
	// last answers may not be counted yet when /metrics is read; give the
	// counters a moment to catch up before calling them stuck.
	detail, stuck := r.metricsMoved(after)
	settle, cancel := context.WithTimeout(ctx, metricsSettle)
	defer cancel()
	for len(stuck) > 0 && ctxsleep.Sleep(settle, 100*time.Millisecond) {
		if after, err = r.scrapeMetrics(settle); err != nil {
			break
		}
		detail, stuck = r.metricsMoved(after)
	}
	if len(stuck) > 0 {
		s.fail(detail+"; "+strings.Join(stuck, "; "),
			"the gateway that answered is not the one whose /metrics was read (several gateways behind one URL without a hosts output?), "+
				"or an upstream answers without usage; check the gateway's log")
		return
	}
	s.passf("%s", detail)
}
