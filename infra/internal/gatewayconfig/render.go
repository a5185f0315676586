// Package gatewayconfig renders the gateway's YAML configuration from a
// stack's configuration, in the shape the gateway's loader reads (SPEC.md).
//
// The rendered file is uploaded into the container in plain text, so it
// holds no secret: every key is a ${VAR} reference that the gateway expands
// from its environment, and the container gets the values as secret
// environment variables. Render cannot leak a secret even by mistake: it has
// no way to read one (stackconfig.Secret hides its value from this package).
package gatewayconfig

import (
	"bytes"
	"fmt"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/relaygate/relaygate/infra/internal/stackconfig"
	"github.com/relaygate/relaygate/service/config"
)

// Path is where the file is uploaded in the gateway container; the image's
// CMD points the gateway at it.
const Path = "/etc/relaygate/gateway.yaml"

// Endpoints are the addresses that depend on where the stack runs, and how
// the gateway stops there.
type Endpoints struct {
	// RedisURL is the cache and rate-limit store: the Redis container on a
	// host's private Docker network, or the shared ElastiCache endpoint.
	RedisURL string
	// SimulatorURL is the offline upstream simulator's base URL; empty when
	// the stack does not run it.
	SimulatorURL string
	// ModelServerURL is the base URL of the host's own model server on the
	// private Docker network, the upstream stackconfig.SelfHostedUpstream;
	// empty when the stack runs none.
	ModelServerURL string
	// Drain is how the gateway stops when its container is replaced.
	Drain Drain
}

// Drain is a gateway's graceful stop (shutdown_delay, shutdown_timeout).
type Drain struct {
	// Delay: it goes on serving with /ready failing, so that a load
	// balancer in front takes it out before it stops listening.
	Delay time.Duration
	// Timeout: then it waits this long for the requests in flight.
	Timeout time.Duration
}

// Grace is how long Docker must wait after SIGTERM before it kills the
// container, so that the drain runs to its end.
func (d Drain) Grace() time.Duration { return d.Delay + d.Timeout + 10*time.Second }

// Render returns the gateway's YAML for c. It builds the gateway's own
// config types (service/config) rather than a copy of them, so a key the
// gateway renames or drops breaks this build, not a deploy.
func Render(c *stackconfig.Config, ep Endpoints) ([]byte, error) {
	if ep.RedisURL == "" {
		return nil, fmt.Errorf("gateway config for stack %s: no Redis URL", c.Stack)
	}
	if c.UpstreamSimulator != (ep.SimulatorURL != "") {
		return nil, fmt.Errorf("gateway config for stack %s: upstreamSimulator is %t but the simulator URL is %q", c.Stack, c.UpstreamSimulator, ep.SimulatorURL)
	}
	if c.ModelServer.Enabled != (ep.ModelServerURL != "") {
		return nil, fmt.Errorf("gateway config for stack %s: modelServer.enabled is %t but the model server URL is %q", c.Stack, c.ModelServer.Enabled, ep.ModelServerURL)
	}
	doc := config.Config{
		Listen:     fmt.Sprintf(":%d", stackconfig.GatewayPort),
		ClientKeys: []string{envRef(stackconfig.GatewayAPIKeyEnv)},
		Retry: config.Retry{
			Attempts:   c.Retry.Attempts,
			BackoffMin: config.Duration(c.Retry.BackoffMin),
			BackoffMax: config.Duration(c.Retry.BackoffMax),
		},
		Cache:           config.Cache{RedisURL: ep.RedisURL, TTL: config.Duration(c.CacheTTL)},
		RateLimit:       config.RateLimit{RPM: c.RateLimit.RPM, TPM: c.RateLimit.TPM},
		GPU:             config.GPU{ExpectedCount: c.ExpectedGPUCount},
		SLO:             config.SLO{LatencyP95: config.Duration(c.LatencyBudgetP95)},
		ShutdownDelay:   config.Duration(ep.Drain.Delay),
		ShutdownTimeout: config.Duration(ep.Drain.Timeout),
	}
	if c.Ledger.Enabled {
		// The URL carries the database password: the file names the
		// variable only. The spill directory is where the container
		// mounts its volume (LedgerSpillDir), so rows spilled while
		// Postgres is away survive a new container.
		doc.Ledger = config.Ledger{PostgresURL: envRef(stackconfig.LedgerURLEnv), SpillDir: LedgerSpillDir}
	}
	for _, u := range c.Upstreams {
		out := config.Upstream{
			Name:           u.Name,
			BaseURL:        u.BaseURL,
			Timeout:        config.Duration(u.Timeout),
			ConnectTimeout: config.Duration(u.ConnectTimeout),
		}
		if u.APIKeyEnv != "" {
			out.APIKey = envRef(u.APIKeyEnv)
		}
		doc.Upstreams = append(doc.Upstreams, out)
	}
	if ep.SimulatorURL != "" {
		doc.Upstreams = append(doc.Upstreams, config.Upstream{Name: stackconfig.SimulatorUpstream, BaseURL: ep.SimulatorURL})
	}
	if ep.ModelServerURL != "" {
		// A model server answers only once its model is loaded, and a long
		// completion on one GPU takes minutes.
		// Its /health probe keeps the gateway off a server that has gone
		// (or restarts, loading its model again) before a client finds out.
		doc.Upstreams = append(doc.Upstreams, config.Upstream{Name: stackconfig.SelfHostedUpstream, BaseURL: ep.ModelServerURL,
			Timeout: config.Duration(ModelServerTimeout), ConnectTimeout: config.Duration(10 * time.Second),
			Health: &config.HealthCheck{Path: "/health", Interval: config.Duration(ModelServerProbeInterval)}})
	}
	for _, m := range c.Models {
		out := config.Model{Name: m.Name, Price: toPrice(m.Price)}
		if m.ReferencePrice != nil {
			p := toPrice(*m.ReferencePrice)
			out.ReferencePrice = &p
		}
		for _, e := range m.Route {
			r := config.RouteEntry{Upstream: e.Upstream, Model: e.Model}
			if e.Price != nil {
				p := toPrice(*e.Price)
				r.Price = &p
			}
			out.Route = append(out.Route, r)
		}
		doc.Models = append(doc.Models, out)
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "# Generated by the Relaygate Pulumi program for stack %q.\n"+
		"# Edit Pulumi.%s.yaml and run `pulumi up`; changes made here are overwritten.\n", c.Stack, c.Stack)
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("gateway config for stack %s: %w", c.Stack, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("gateway config for stack %s: %w", c.Stack, err)
	}
	return out.Bytes(), nil
}

// LedgerSpillDir is the ledger's spill directory in the gateway container,
// on a named volume; the gateway image creates it owned by its user.
const LedgerSpillDir = config.DefaultLedgerSpillDir

// ModelServerTimeout bounds one request to the self-hosted upstream.
const ModelServerTimeout = 5 * time.Minute

// ModelServerProbeInterval is how often the gateway probes the model
// server's /health.
const ModelServerProbeInterval = 10 * time.Second

func envRef(name string) string { return "${" + name + "}" }

func toPrice(p stackconfig.Price) config.Price {
	return config.Price{InputPerMTok: p.InputPerMTok, OutputPerMTok: p.OutputPerMTok}
}
