// Command infra is Relaygate's Pulumi program (Pulumi.yaml: `main: infra/`).
// It reads and validates the stack's configuration, deploys the stack, and
// exports the outputs the smoke test reads (SPEC.md). Everything else lives
// in the components under internal/.
package main

import (
	"maps"
	"os"
	"slices"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/relaygate/relaygate/infra/internal/stack"
	"github.com/relaygate/relaygate/infra/internal/stackconfig"
)

func main() {
	pulumi.Run(program)
}

func program(ctx *pulumi.Context) error {
	outputs, err := build(ctx)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(outputs)) {
		ctx.Export(name, outputs[name])
	}
	return nil
}

// build deploys the stack and returns its outputs by name.
func build(ctx *pulumi.Context) (map[string]pulumi.Input, error) {
	cfg, err := stackconfig.Load(ctx)
	if err != nil {
		return nil, err
	}
	for _, w := range cfg.Warnings {
		if err := ctx.Log.Warn(w, nil); err != nil {
			return nil, err
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	src, err := stack.SourceFrom(ctx.RootDirectory(), wd)
	if err != nil {
		return nil, err
	}
	out, err := stack.Deploy(ctx, cfg, src)
	if err != nil {
		return nil, err
	}
	return map[string]pulumi.Input{
		"gatewayUrl":         out.GatewayURL,
		"prometheusUrl":      out.PrometheusURL,
		"gatewayApiKey":      pulumi.ToSecret(out.GatewayAPIKey),
		"expectedGpuCount":   pulumi.Int(out.ExpectedGPUCount),
		"latencyBudgetP95Ms": pulumi.Int(out.LatencyBudgetP95Ms),
		"imageRef":           out.ImageRef,
		"hosts":              out.Hosts,
		"instanceIds":        out.InstanceIDs,
		"selfHostedModel":    pulumi.String(out.SelfHostedModel),
		"selfHostedUpstream": pulumi.String(out.SelfHostedUpstream),
		"ledgerEnabled":      pulumi.Bool(out.LedgerEnabled),
	}, nil
}
