package smoketest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"

	"github.com/relaygate/relaygate/deploy"
	"github.com/relaygate/relaygate/internal/ctxsleep"
)

// gatewayJob is the scrape job of the gateway in deploy/prometheus/prometheus.yml.
const gatewayJob = "relaygate"

// prometheusPoll is how often the smoke test asks Prometheus whether it
// has scraped yet: Prometheus offers no way to be told.
const prometheusPoll = 500 * time.Millisecond

// ProjectRules returns the names of the alerting and recording rules in
// this repository's deploy/prometheus/rules, the ones a deployed
// Prometheus must have loaded.
func ProjectRules() ([]string, error) {
	files, err := deploy.PrometheusFiles()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var names []string
	for _, path := range slices.Sorted(maps.Keys(files)) {
		if !strings.HasPrefix(path, "rules/") || !strings.HasSuffix(path, ".rules.yml") {
			continue
		}
		var doc struct {
			Groups []struct {
				Rules []struct {
					Alert  string `yaml:"alert"`
					Record string `yaml:"record"`
				} `yaml:"rules"`
			} `yaml:"groups"`
		}
		if err := yaml.Unmarshal([]byte(files[path]), &doc); err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		for _, g := range doc.Groups {
			for _, rule := range g.Rules {
				name := rule.Alert + rule.Record
				if name != "" && !seen[name] {
					seen[name] = true
					names = append(names, name)
				}
			}
		}
	}
	if len(names) == 0 {
		return nil, errors.New("deploy/prometheus/rules holds no rules")
	}
	return names, nil
}

func (r *runner) prometheus() (promv1.API, error) {
	c, err := api.NewClient(api.Config{Address: r.opts.Outputs.PrometheusURL, Client: r.http})
	if err != nil {
		return nil, fmt.Errorf("prometheus client: %w", err)
	}
	return promv1.NewAPI(c), nil
}

const prometheusReachHint = "; Prometheus is open only to operatorCidrs: run the smoke test from there"

func (r *runner) checkPrometheusTarget(ctx context.Context, s *Step) {
	prom, err := r.prometheus()
	if err != nil {
		s.fail(err.Error(), "check the prometheusUrl output")
		return
	}
	// Prometheus scrapes on its own schedule; wait for a verdict on every
	// gateway target, and then for the gateway's series to be stored.
	wait, cancel := context.WithTimeout(ctx, r.opts.PrometheusWait)
	defer cancel()
	var targets []promv1.ActiveTarget
	for {
		res, err := prom.Targets(wait)
		if err != nil {
			if wait.Err() != nil && ctx.Err() == nil && targets != nil {
				break
			}
			d, h := r.reachError(wait, "Prometheus", err)
			s.fail(d, h+prometheusReachHint)
			return
		}
		targets = targets[:0]
		unknown := false
		for _, t := range res.Active {
			if t.ScrapePool == gatewayJob || string(t.Labels[model.JobLabel]) == gatewayJob {
				targets = append(targets, t)
				unknown = unknown || t.Health == promv1.HealthUnknown
			}
		}
		if len(targets) > 0 && !unknown {
			break
		}
		if !ctxsleep.Sleep(wait, prometheusPoll) {
			break
		}
	}
	if len(targets) == 0 {
		s.fail(fmt.Sprintf("Prometheus has no target in job %q after %s", gatewayJob, r.opts.PrometheusWait),
			"Prometheus does not know the gateway: check targets/*.json next to its prometheus.yml (valid JSON listing the gateway's host:port) "+
				"and the Prometheus log for file_sd errors")
		return
	}
	var up, down []string
	for _, t := range targets {
		inst := string(t.Labels[model.InstanceLabel])
		switch t.Health {
		case promv1.HealthGood:
			up = append(up, inst)
		case promv1.HealthBad:
			down = append(down, fmt.Sprintf("%s (%s)", inst, t.LastError))
		default:
			down = append(down, inst+" (not scraped yet)")
		}
	}
	if len(down) > 0 {
		s.fail(fmt.Sprintf("%d of %d gateway targets down: %s", len(down), len(targets), strings.Join(down, "; ")),
			"Prometheus cannot scrape the gateway's /metrics: the security group must let Prometheus reach the gateway port, and the "+
				"address in targets/gateway.json must be the gateway's (inside Docker: the container name on the shared network)")
		return
	}
	query := fmt.Sprintf("sum(relaygate_requests_total{job=%q})", gatewayJob)
	var val float64
	for {
		v, _, _, err := prom.Query(wait, query, time.Now())
		if err == nil {
			if vec, ok := v.(model.Vector); ok && len(vec) > 0 {
				val = float64(vec[0].Value)
				break
			}
		} else if wait.Err() == nil {
			d, h := r.reachError(wait, "Prometheus", err)
			s.fail(d, h+prometheusReachHint)
			return
		}
		if !ctxsleep.Sleep(wait, prometheusPoll) {
			s.fail(fmt.Sprintf("targets up (%s) but Prometheus stored no relaygate_requests_total within %s", strings.Join(up, ", "), r.opts.PrometheusWait),
				"Prometheus scrapes the gateway but keeps none of its series: check metric_relabel_configs in prometheus.yml and that the target is Relaygate")
			return
		}
	}
	s.passf("%d gateway target(s) up (%s); Prometheus has relaygate_requests_total = %.0f", len(up), strings.Join(up, ", "), val)
}

func (r *runner) checkPrometheusRules(ctx context.Context, s *Step) {
	want := r.opts.Rules
	if len(want) == 0 {
		var err error
		if want, err = ProjectRules(); err != nil {
			s.fail("the smoke test could not read the project's rules: "+err.Error(), "rebuild the smoke test from this repository")
			return
		}
	}
	prom, err := r.prometheus()
	if err != nil {
		s.fail(err.Error(), "check the prometheusUrl output")
		return
	}
	res, err := prom.Rules(ctx, nil)
	if err != nil {
		d, h := r.reachError(ctx, "Prometheus", err)
		s.fail(d, h+prometheusReachHint)
		return
	}
	type loaded struct {
		health    promv1.RuleHealth
		lastError string
		firing    bool
	}
	got := map[string]loaded{}
	for _, g := range res.Groups {
		for _, rule := range g.Rules {
			switch v := rule.(type) {
			case promv1.AlertingRule:
				got[v.Name] = loaded{v.Health, v.LastError, v.State == "firing"}
			case promv1.RecordingRule:
				got[v.Name] = loaded{health: v.Health, lastError: v.LastError}
			}
		}
	}
	var missing, broken, firing []string
	for _, name := range want {
		l, ok := got[name]
		switch {
		case !ok:
			missing = append(missing, name)
		case l.health == promv1.RuleHealthBad:
			broken = append(broken, name+": "+l.lastError)
		case l.firing:
			firing = append(firing, name)
		}
	}
	sort.Strings(firing)
	switch {
	case len(missing) > 0:
		s.fail(fmt.Sprintf("Prometheus has %d of the project's %d rules; missing: %s", len(want)-len(missing), len(want), strings.Join(missing, ", ")),
			"Prometheus did not load deploy/prometheus/rules: check that its prometheus.yml has `rule_files: [rules/*.rules.yml]`, that the rules "+
				"directory was shipped next to it, `promtool check rules` on the files, and the Prometheus log; then reload it (SIGHUP or restart)")
	case len(broken) > 0:
		s.fail("rules fail to evaluate: "+strings.Join(broken, "; "),
			"a rule's query errors in this Prometheus: run deploy/prometheus/check.sh and compare the Prometheus version (prometheusImage)")
	default:
		detail := fmt.Sprintf("all %d project rules loaded and evaluating", len(want))
		if len(firing) > 0 {
			detail += "; firing now: " + strings.Join(firing, ", ")
		}
		s.passf("%s", detail)
	}
}
