// Package loadbalancer puts an Application Load Balancer in front of a
// stack's gateways, so clients keep one address while hosts come and go.
//
// The target group health-checks the gateway's /ready endpoint, which
// answers 200 only when the gateway can serve; a host that is up but cannot
// reach its cache or upstreams is taken out of rotation.
package loadbalancer

import (
	"fmt"
	"time"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/lb"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/route53"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/relaygate/relaygate/infra/internal/awstags"
)

// HealthPath is the gateway endpoint the target group checks.
const HealthPath = "/ready"

// The target group's health check: a target failing it UnhealthyThreshold
// times, HealthCheckInterval apart, gets no new requests.
const (
	HealthCheckInterval = 10 * time.Second
	UnhealthyThreshold  = 3
)

// DrainDelay is how long a gateway must go on serving with /ready failing
// before it stops listening, so that the load balancer has taken it out.
const DrainDelay = HealthCheckInterval*UnhealthyThreshold + 5*time.Second

// Args configures a Balancer.
type Args struct {
	Tags            map[string]string
	VpcID           pulumi.StringInput
	SubnetIDs       pulumi.StringArrayInput
	SecurityGroupID pulumi.StringInput
	// Targets are the instance IDs of the gateways, all listening on
	// TargetPort.
	Targets    []pulumi.StringInput
	TargetPort int
	// CertificateARN turns on HTTPS on 443, with port 80 redirecting to it.
	// Without it the listener is plain HTTP on 80. It requires DomainName:
	// no certificate can cover the load balancer's own *.elb.amazonaws.com
	// name.
	CertificateARN string
	// DomainName is the name clients use (the certificate's); the URL is
	// built from it. Empty, the URL uses the load balancer's DNS name.
	DomainName string
	// HostedZoneID is the Route 53 zone DomainName's alias record is
	// created in. Empty, the operator creates the record.
	HostedZoneID       string
	DeletionProtection bool
}

// Balancer is the component.
type Balancer struct {
	pulumi.ResourceState

	// DNSName is the load balancer's own name, the target of DomainName's
	// DNS record.
	DNSName pulumi.StringOutput
	// URL is the gateway's base URL for clients.
	URL pulumi.StringOutput
	// TargetGroupARN is the group every gateway is a target of.
	TargetGroupARN pulumi.StringOutput
	// Attachments are the targets, in Args.Targets order.
	Attachments []*lb.TargetGroupAttachment
}

// ListenerPorts are the ports clients connect to, for the security group.
func ListenerPorts(certificateARN string) []int {
	if certificateARN != "" {
		return []int{80, 443}
	}
	return []int{80}
}

// New creates the load balancer, its target group and listeners.
func New(ctx *pulumi.Context, name string, args Args, opts ...pulumi.ResourceOption) (*Balancer, error) {
	if len(args.Targets) == 0 {
		return nil, fmt.Errorf("load balancer %s: no targets", name)
	}
	if args.CertificateARN != "" && args.DomainName == "" {
		return nil, fmt.Errorf("load balancer %s: a certificate needs a domain name: clients cannot verify it against the load balancer's own name", name)
	}
	if args.HostedZoneID != "" && args.DomainName == "" {
		return nil, fmt.Errorf("load balancer %s: a hosted zone needs a domain name to create", name)
	}
	b := &Balancer{}
	if err := ctx.RegisterComponentResource("relaygate:infra:LoadBalancer", name, b, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(b)
	tags := awstags.Named(name, args.Tags)

	alb, err := lb.NewLoadBalancer(ctx, name, &lb.LoadBalancerArgs{
		LoadBalancerType: pulumi.String("application"),
		Internal:         pulumi.Bool(false),
		SecurityGroups:   pulumi.StringArray{args.SecurityGroupID},
		Subnets:          args.SubnetIDs,
		// Streams can sit quiet while a model thinks; the gateway's own
		// stream idle timeout should fire before this one.
		IdleTimeout:              pulumi.Int(300),
		DropInvalidHeaderFields:  pulumi.Bool(true),
		EnableDeletionProtection: pulumi.Bool(args.DeletionProtection),
		Tags:                     tags,
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("load balancer %s: %w", name, err)
	}
	tg, err := lb.NewTargetGroup(ctx, name, &lb.TargetGroupArgs{
		VpcId:      args.VpcID,
		Port:       pulumi.Int(args.TargetPort),
		Protocol:   pulumi.String("HTTP"),
		TargetType: pulumi.String("instance"),
		// Long enough for a streamed completion to finish on a host that is
		// being replaced.
		DeregistrationDelay: pulumi.Int(180),
		HealthCheck: &lb.TargetGroupHealthCheckArgs{
			Enabled:            pulumi.Bool(true),
			Path:               pulumi.String(HealthPath),
			Port:               pulumi.String("traffic-port"),
			Protocol:           pulumi.String("HTTP"),
			Matcher:            pulumi.String("200"),
			Interval:           pulumi.Int(int(HealthCheckInterval / time.Second)),
			Timeout:            pulumi.Int(5),
			HealthyThreshold:   pulumi.Int(2),
			UnhealthyThreshold: pulumi.Int(UnhealthyThreshold),
		},
		Tags: tags,
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("load balancer %s: target group: %w", name, err)
	}
	b.TargetGroupARN = tg.Arn
	for i, id := range args.Targets {
		att, err := lb.NewTargetGroupAttachment(ctx, fmt.Sprintf("%s-%d", name, i), &lb.TargetGroupAttachmentArgs{
			TargetGroupArn: tg.Arn,
			TargetId:       id,
			Port:           pulumi.Int(args.TargetPort),
		}, parent)
		if err != nil {
			return nil, fmt.Errorf("load balancer %s: attaching target %d: %w", name, i, err)
		}
		b.Attachments = append(b.Attachments, att)
	}

	forward := lb.ListenerDefaultActionArray{lb.ListenerDefaultActionArgs{
		Type:           pulumi.String("forward"),
		TargetGroupArn: tg.Arn,
	}}
	scheme := "http"
	if args.CertificateARN != "" {
		scheme = "https"
		if _, err := lb.NewListener(ctx, name+"-https", &lb.ListenerArgs{
			LoadBalancerArn: alb.Arn,
			Port:            pulumi.Int(443),
			Protocol:        pulumi.String("HTTPS"),
			CertificateArn:  pulumi.String(args.CertificateARN),
			SslPolicy:       pulumi.String("ELBSecurityPolicy-TLS13-1-2-2021-06"),
			DefaultActions:  forward,
		}, parent); err != nil {
			return nil, fmt.Errorf("load balancer %s: https listener: %w", name, err)
		}
		forward = lb.ListenerDefaultActionArray{lb.ListenerDefaultActionArgs{
			Type: pulumi.String("redirect"),
			Redirect: &lb.ListenerDefaultActionRedirectArgs{
				Protocol:   pulumi.String("HTTPS"),
				Port:       pulumi.String("443"),
				StatusCode: pulumi.String("HTTP_301"),
			},
		}}
	}
	if _, err := lb.NewListener(ctx, name+"-http", &lb.ListenerArgs{
		LoadBalancerArn: alb.Arn,
		Port:            pulumi.Int(80),
		Protocol:        pulumi.String("HTTP"),
		DefaultActions:  forward,
	}, parent); err != nil {
		return nil, fmt.Errorf("load balancer %s: http listener: %w", name, err)
	}

	if args.HostedZoneID != "" {
		if _, err := route53.NewRecord(ctx, name+"-dns", &route53.RecordArgs{
			ZoneId: pulumi.String(args.HostedZoneID),
			Name:   pulumi.String(args.DomainName),
			Type:   pulumi.String("A"),
			Aliases: route53.RecordAliasArray{route53.RecordAliasArgs{
				Name:   alb.DnsName,
				ZoneId: alb.ZoneId,
				// Route 53 follows the load balancer's own health.
				EvaluateTargetHealth: pulumi.Bool(true),
			}},
		}, parent); err != nil {
			return nil, fmt.Errorf("load balancer %s: DNS record %s: %w", name, args.DomainName, err)
		}
	}

	b.DNSName = alb.DnsName
	b.URL = pulumi.Sprintf("%s://%s", scheme, alb.DnsName)
	if args.DomainName != "" {
		b.URL = pulumi.Sprintf("%s://%s", scheme, args.DomainName)
	}
	return b, ctx.RegisterResourceOutputs(b, pulumi.Map{"dnsName": b.DNSName, "url": b.URL})
}
