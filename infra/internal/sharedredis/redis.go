// Package sharedredis is the managed Redis (ElastiCache) that a multi-host
// stack's gateways share, so a cached answer or a client's rate-limit window
// is the same whichever host a request lands on.
//
// It lives in private subnets, admits only the hosts' security group,
// encrypts in transit (the gateway connects with rediss://) and at rest, and
// runs a replica in a second zone with automatic failover.
package sharedredis

import (
	"fmt"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/elasticache"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/relaygate/relaygate/infra/internal/awstags"
)

// EngineVersion is the Redis version ElastiCache runs.
const EngineVersion = "7.1"

// Args configures a Redis.
type Args struct {
	Tags            map[string]string
	SubnetIDs       pulumi.StringArrayInput
	SecurityGroupID pulumi.StringInput
	NodeType        string
	// DeletionProtection protects the group from `pulumi destroy` and takes
	// a final snapshot if it is deleted anyway.
	DeletionProtection bool
	// FinalSnapshotName names that snapshot; required with protection.
	FinalSnapshotName string
}

// Redis is the component.
type Redis struct {
	pulumi.ResourceState

	// URL is the gateway's cache.redis_url: TLS to the primary endpoint.
	URL pulumi.StringOutput
}

// New creates the subnet group and the replication group.
func New(ctx *pulumi.Context, name string, args Args, opts ...pulumi.ResourceOption) (*Redis, error) {
	if args.DeletionProtection && args.FinalSnapshotName == "" {
		return nil, fmt.Errorf("shared redis %s: deletion protection needs a final snapshot name", name)
	}
	r := &Redis{}
	if err := ctx.RegisterComponentResource("relaygate:infra:SharedRedis", name, r, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(r)
	tags := awstags.Named(name, args.Tags)

	subnets, err := elasticache.NewSubnetGroup(ctx, name, &elasticache.SubnetGroupArgs{
		Description: pulumi.String("Relaygate shared Redis: private subnets"),
		SubnetIds:   args.SubnetIDs,
		Tags:        tags,
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("shared redis %s: subnet group: %w", name, err)
	}
	rg := &elasticache.ReplicationGroupArgs{
		Description:              pulumi.String("Relaygate response cache and rate limits, shared by every gateway"),
		Engine:                   pulumi.String("redis"),
		EngineVersion:            pulumi.String(EngineVersion),
		NodeType:                 pulumi.String(args.NodeType),
		Port:                     pulumi.Int(6379),
		NumCacheClusters:         pulumi.Int(2),
		AutomaticFailoverEnabled: pulumi.Bool(true),
		MultiAzEnabled:           pulumi.Bool(true),
		AtRestEncryptionEnabled:  pulumi.Bool(true),
		TransitEncryptionEnabled: pulumi.Bool(true),
		SubnetGroupName:          subnets.Name,
		SecurityGroupIds:         pulumi.StringArray{args.SecurityGroupID},
		Tags:                     tags,
	}
	rgOpts := []pulumi.ResourceOption{parent}
	if args.DeletionProtection {
		rg.SnapshotRetentionLimit = pulumi.Int(7)
		rg.FinalSnapshotIdentifier = pulumi.String(args.FinalSnapshotName)
		rgOpts = append(rgOpts, pulumi.Protect(true))
	}
	group, err := elasticache.NewReplicationGroup(ctx, name, rg, rgOpts...)
	if err != nil {
		return nil, fmt.Errorf("shared redis %s: replication group: %w", name, err)
	}
	r.URL = pulumi.Sprintf("rediss://%s:6379/0", group.PrimaryEndpointAddress)
	return r, ctx.RegisterResourceOutputs(r, pulumi.Map{"url": r.URL})
}
