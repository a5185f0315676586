package loadbalancer

import (
	"fmt"

	"github.com/pulumi/pulumi-command/sdk/go/command/local"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// InServiceArgs names one target of the group and what it waits for.
type InServiceArgs struct {
	Region         string
	TargetGroupARN pulumi.StringInput
	InstanceID     pulumi.StringInput
	Port           int
	// Trigger is what makes a new wait: the ID of the gateway container on
	// the target, so that each new gateway is waited for.
	Trigger pulumi.Input
	// After is what must be done first: the new gateway and the target's
	// attachment.
	After []pulumi.Resource
}

// InServiceTimeout bounds the wait: the AWS CLI's waiter gives up after 40
// checks 15 s apart, and a gateway that is not in service by then fails the
// deploy rather than letting the next host go down.
const InServiceTimeout = "12m"

// WaitInService is a step of a rolling deploy: it completes once the load
// balancer reports the target healthy (`aws elbv2 wait target-in-service`,
// run where `pulumi up` runs, with its AWS credentials), so that anything
// that depends on it, such as the next host's gateway, starts only while
// this one serves. A preview runs nothing.
func WaitInService(ctx *pulumi.Context, name string, args InServiceArgs, opts ...pulumi.ResourceOption) (*local.Command, error) {
	if args.Port <= 0 {
		return nil, fmt.Errorf("target %s: port %d", name, args.Port)
	}
	opts = append(opts, pulumi.DependsOn(args.After), pulumi.Timeouts(&pulumi.CustomTimeouts{Create: InServiceTimeout}))
	cmd, err := local.NewCommand(ctx, name, &local.CommandArgs{
		Create: pulumi.String(`aws elbv2 wait target-in-service --region "$AWS_REGION" --target-group-arn "$TARGET_GROUP" --targets "Id=$TARGET,Port=$PORT" && ` +
			`echo "relaygate: $TARGET is in service"`),
		Environment: pulumi.StringMap{
			"AWS_REGION":   pulumi.String(args.Region),
			"TARGET_GROUP": args.TargetGroupARN,
			"TARGET":       args.InstanceID,
			"PORT":         pulumi.Sprintf("%d", args.Port),
		},
		Triggers: pulumi.Array{args.Trigger},
	}, opts...)
	if err != nil {
		return nil, fmt.Errorf("target %s: waiting for it to be in service: %w", name, err)
	}
	return cmd, nil
}
