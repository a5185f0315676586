package smoketest

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// Outputs are the stack outputs the smoke test reads, named as SPEC.md names
// them. They come from the Automation API or from a file written by
// `pulumi stack output --json --show-secrets`.
type Outputs struct {
	GatewayURL    string
	PrometheusURL string
	// GatewayAPIKey is a secret: String and the JSON report never show it.
	GatewayAPIKey      string
	ExpectedGPUCount   int
	LatencyBudgetP95Ms int
	ImageRef           string
	Hosts              []string
	InstanceIDs        []string
	// SelfHostedModel is the model the hosts' model servers answer to and
	// SelfHostedUpstream the gateway's upstream for them; empty (or
	// absent, from an older stack) when the stack runs no model server.
	SelfHostedModel    string
	SelfHostedUpstream string
	// LedgerEnabled says the stack gives its gateways a usage ledger
	// (Postgres); false when absent, from a stack older than the ledger.
	LedgerEnabled bool
}

// String leaves the key out, so an Outputs printed with %v or %+v by
// mistake does not leak it.
func (o Outputs) String() string {
	key := "(empty)"
	if o.GatewayAPIKey != "" {
		key = "[secret]"
	}
	return fmt.Sprintf("{gatewayUrl:%s prometheusUrl:%s gatewayApiKey:%s expectedGpuCount:%d latencyBudgetP95Ms:%d imageRef:%s hosts:%v instanceIds:%v selfHostedModel:%s selfHostedUpstream:%s ledgerEnabled:%t}",
		o.GatewayURL, o.PrometheusURL, key, o.ExpectedGPUCount, o.LatencyBudgetP95Ms, o.ImageRef, o.Hosts, o.InstanceIDs, o.SelfHostedModel, o.SelfHostedUpstream, o.LedgerEnabled)
}

// GoString is String, for %#v.
func (o Outputs) GoString() string { return o.String() }

// secretPlaceholder is what `pulumi stack output --json` prints for a secret
// without --show-secrets.
const secretPlaceholder = "[secret]"

// ReadOutputsFile reads a file in the shape of
// `pulumi stack output --json --show-secrets`.
func ReadOutputsFile(path string) (Outputs, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Outputs{}, fmt.Errorf("read outputs: %w", err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return Outputs{}, fmt.Errorf("outputs file %s is not the JSON object `pulumi stack output --json --show-secrets` writes: %w", path, err)
	}
	o, err := ParseOutputs(raw)
	if err != nil {
		return Outputs{}, fmt.Errorf("outputs file %s: %w", path, err)
	}
	return o, nil
}

// ParseOutputs checks and converts raw stack outputs (JSON-decoded values:
// strings, float64 numbers, []any lists). Every problem is reported, each
// naming its output, so one run shows all that is wrong with a stack.
func ParseOutputs(raw map[string]any) (Outputs, error) {
	var o Outputs
	var errs []error
	str := func(name string, required bool) string {
		v, ok := raw[name]
		if !ok || v == nil {
			if required {
				errs = append(errs, fmt.Errorf("output %s is missing", name))
			}
			return ""
		}
		s, ok := v.(string)
		if !ok {
			errs = append(errs, fmt.Errorf("output %s is a %T, want a string", name, v))
			return ""
		}
		return s
	}
	num := func(name string) int {
		v, ok := raw[name]
		if !ok || v == nil {
			errs = append(errs, fmt.Errorf("output %s is missing", name))
			return 0
		}
		var f float64
		switch n := v.(type) {
		case float64:
			f = n
		case int:
			f = float64(n)
		case json.Number:
			var err error
			if f, err = n.Float64(); err != nil {
				errs = append(errs, fmt.Errorf("output %s: %w", name, err))
				return 0
			}
		case string:
			// Some tools stringify numbers; accept a plain integer.
			i, err := strconv.Atoi(strings.TrimSpace(n))
			if err != nil {
				errs = append(errs, fmt.Errorf("output %s is %q, want a whole number", name, n))
				return 0
			}
			f = float64(i)
		default:
			errs = append(errs, fmt.Errorf("output %s is a %T, want a number", name, v))
			return 0
		}
		if f != math.Trunc(f) || f < 0 || f > math.MaxInt32 {
			errs = append(errs, fmt.Errorf("output %s is %v, want a whole number ≥ 0", name, f))
			return 0
		}
		return int(f)
	}
	boolean := func(name string) bool {
		switch v := raw[name].(type) {
		case nil:
			return false
		case bool:
			return v
		case string:
			// Some tools stringify booleans.
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				errs = append(errs, fmt.Errorf("output %s is %q, want true or false", name, v))
			}
			return b
		default:
			errs = append(errs, fmt.Errorf("output %s is a %T, want true or false", name, v))
			return false
		}
	}
	list := func(name string) []string {
		v, ok := raw[name]
		if !ok || v == nil {
			return nil
		}
		items, ok := v.([]any)
		if !ok {
			errs = append(errs, fmt.Errorf("output %s is a %T, want a list of strings", name, v))
			return nil
		}
		out := make([]string, 0, len(items))
		for i, it := range items {
			s, ok := it.(string)
			if !ok {
				errs = append(errs, fmt.Errorf("output %s[%d] is a %T, want a string", name, i, it))
				continue
			}
			out = append(out, s)
		}
		return out
	}

	o.GatewayURL = strings.TrimRight(str("gatewayUrl", true), "/")
	o.PrometheusURL = strings.TrimRight(str("prometheusUrl", false), "/")
	o.GatewayAPIKey = str("gatewayApiKey", true)
	o.ExpectedGPUCount = num("expectedGpuCount")
	o.LatencyBudgetP95Ms = num("latencyBudgetP95Ms")
	o.ImageRef = str("imageRef", false)
	o.Hosts = list("hosts")
	o.InstanceIDs = list("instanceIds")
	o.SelfHostedModel = str("selfHostedModel", false)
	o.SelfHostedUpstream = str("selfHostedUpstream", false)
	o.LedgerEnabled = boolean("ledgerEnabled")
	if (o.SelfHostedModel == "") != (o.SelfHostedUpstream == "") {
		errs = append(errs, fmt.Errorf("outputs selfHostedModel %q and selfHostedUpstream %q must be set together", o.SelfHostedModel, o.SelfHostedUpstream))
	}

	if o.GatewayAPIKey == secretPlaceholder {
		errs = append(errs, errors.New("output gatewayApiKey is the placeholder \"[secret]\": write the file with `pulumi stack output --json --show-secrets`"))
		o.GatewayAPIKey = ""
	}
	for _, u := range []struct{ name, value string }{{"gatewayUrl", o.GatewayURL}, {"prometheusUrl", o.PrometheusURL}} {
		if u.value == "" {
			continue
		}
		if err := checkBaseURL(u.value); err != nil {
			errs = append(errs, fmt.Errorf("output %s: %w", u.name, err))
		}
	}
	if o.LatencyBudgetP95Ms == 0 && raw["latencyBudgetP95Ms"] != nil && len(errs) == 0 {
		errs = append(errs, errors.New("output latencyBudgetP95Ms is 0: a p95 budget of zero cannot be met; set latencyBudgetP95Ms in the stack config"))
	}
	return o, errors.Join(errs...)
}

func checkBaseURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		// Not echoed: an unparsable URL may still hold a password.
		return errors.New("not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q is not an http(s) URL", s)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	if u.User != nil {
		return errors.New("the URL carries credentials; the smoke test sends the key as a Bearer header instead")
	}
	return nil
}
