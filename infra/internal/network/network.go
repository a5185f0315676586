// Package network is the VPC a Relaygate stack runs in: public subnets for
// the GPU hosts (and the load balancer), private subnets for the managed
// Redis, and the security groups that decide who reaches what.
//
// The rules are the product's exposure policy, so they live in one place:
// the gateway port is open to the configured client networks (directly, or
// through the load balancer); SSH and Prometheus only to the operator's
// network; Redis and the ledger's Postgres only to the hosts. Egress is limited to HTTP(S), which is
// what upstream APIs, image pulls and package mirrors need. Amazon's DNS,
// NTP and instance metadata are not filtered by security groups, so they
// need no rule.
package network

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/relaygate/relaygate/infra/internal/awstags"
)

// SSHPort is the port the Docker provider and the readiness check use.
const SSHPort = 22

// RedisPort is ElastiCache's port.
const RedisPort = 6379

// PostgresPort is the ledger database's (RDS) port.
const PostgresPort = 5432

// Args configures a Network.
type Args struct {
	// Name prefixes the AWS Name tags, e.g. "relaygate-prod".
	Name string
	Tags map[string]string
	CIDR netip.Prefix
	// Zones gets one public (and, with PrivateSubnets, one private) subnet
	// each, in order. At most 8.
	Zones []string
	// PrivateSubnets adds subnets without a route to the internet, for the
	// managed Redis and the ledger database.
	PrivateSubnets bool
	// Cache adds the managed Redis's security group (in the private
	// subnets, so it needs PrivateSubnets).
	Cache bool
	// LedgerDatabase adds the security group of the ledger's RDS instance
	// (in the private subnets, so it needs PrivateSubnets).
	LedgerDatabase bool
	// ClientCIDRs may call the gateway (or the load balancer's listeners).
	ClientCIDRs []netip.Prefix
	// OperatorCIDRs may reach SSH and Prometheus on the hosts: the
	// operators' networks and the deploy runner's.
	OperatorCIDRs []netip.Prefix
	// GatewayPort is the port the gateway listens on on each host.
	GatewayPort int
	// PrometheusPort is Prometheus's port on each host.
	PrometheusPort int
	// ListenerPorts, when set, puts a load balancer security group in front
	// of the hosts: clients reach these ports on it, and only it reaches the
	// hosts' gateway port.
	ListenerPorts []int
}

// Network is the component.
type Network struct {
	pulumi.ResourceState

	VpcID pulumi.IDOutput
	// PublicSubnetIDs are in Args.Zones order.
	PublicSubnetIDs  pulumi.StringArrayOutput
	PrivateSubnetIDs pulumi.StringArrayOutput
	// HostSecurityGroupID guards the GPU hosts.
	HostSecurityGroupID pulumi.IDOutput
	// LoadBalancerSecurityGroupID is set when Args.ListenerPorts is.
	LoadBalancerSecurityGroupID pulumi.IDOutput
	// CacheSecurityGroupID is set when Args.Cache is.
	CacheSecurityGroupID pulumi.IDOutput
	// DatabaseSecurityGroupID is set when Args.LedgerDatabase is.
	DatabaseSecurityGroupID pulumi.IDOutput
}

// maxZones bounds the subnets: public subnets take slots 0-7 of the VPC's
// sixteen, private ones 8-15.
const maxZones = 8

// New creates the network.
func New(ctx *pulumi.Context, name string, args Args, opts ...pulumi.ResourceOption) (*Network, error) {
	if len(args.Zones) == 0 || len(args.Zones) > maxZones {
		return nil, fmt.Errorf("network %s: need 1 to %d availability zones, got %d", name, maxZones, len(args.Zones))
	}
	if len(args.ListenerPorts) > 0 && len(args.Zones) < 2 {
		return nil, fmt.Errorf("network %s: a load balancer needs subnets in at least 2 availability zones, got %d", name, len(args.Zones))
	}
	if args.Cache && !args.PrivateSubnets {
		return nil, fmt.Errorf("network %s: the managed Redis needs private subnets", name)
	}
	if args.LedgerDatabase && (!args.PrivateSubnets || len(args.Zones) < 2) {
		// An RDS subnet group must span two zones, for the Multi-AZ standby.
		return nil, fmt.Errorf("network %s: the ledger database needs private subnets in at least 2 availability zones", name)
	}
	n := &Network{}
	if err := ctx.RegisterComponentResource("relaygate:infra:Network", name, n, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(n)
	tags := func(suffix string) pulumi.StringMap { return awstags.Named(args.Name+"-"+suffix, args.Tags) }
	vpcCIDR := args.CIDR.String()

	vpc, err := ec2.NewVpc(ctx, name, &ec2.VpcArgs{
		CidrBlock:          pulumi.String(vpcCIDR),
		EnableDnsSupport:   pulumi.Bool(true),
		EnableDnsHostnames: pulumi.Bool(true),
		Tags:               tags("vpc"),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("network %s: vpc: %w", name, err)
	}
	igw, err := ec2.NewInternetGateway(ctx, name, &ec2.InternetGatewayArgs{
		VpcId: vpc.ID(),
		Tags:  tags("igw"),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("network %s: internet gateway: %w", name, err)
	}
	public, err := ec2.NewRouteTable(ctx, name+"-public", &ec2.RouteTableArgs{
		VpcId: vpc.ID(),
		Routes: ec2.RouteTableRouteArray{
			ec2.RouteTableRouteArgs{CidrBlock: pulumi.String("0.0.0.0/0"), GatewayId: igw.ID()},
		},
		Tags: tags("public"),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("network %s: public route table: %w", name, err)
	}

	var publicIDs, privateIDs pulumi.StringArray
	for i, zone := range args.Zones {
		cidr, err := Subnet(args.CIDR, i)
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", name, err)
		}
		sn, err := ec2.NewSubnet(ctx, fmt.Sprintf("%s-public-%s", name, zone), &ec2.SubnetArgs{
			VpcId:            vpc.ID(),
			CidrBlock:        pulumi.String(cidr.String()),
			AvailabilityZone: pulumi.String(zone),
			// Hosts ask for their public address explicitly; nothing else
			// launched here should get one by accident.
			MapPublicIpOnLaunch: pulumi.Bool(false),
			Tags:                tags("public-" + zone),
		}, parent)
		if err != nil {
			return nil, fmt.Errorf("network %s: public subnet in %s: %w", name, zone, err)
		}
		if _, err := ec2.NewRouteTableAssociation(ctx, fmt.Sprintf("%s-public-%s", name, zone), &ec2.RouteTableAssociationArgs{
			SubnetId:     sn.ID(),
			RouteTableId: public.ID(),
		}, parent); err != nil {
			return nil, fmt.Errorf("network %s: route table association in %s: %w", name, zone, err)
		}
		publicIDs = append(publicIDs, sn.ID().ToStringOutput())

		if !args.PrivateSubnets {
			continue
		}
		cidr, err = Subnet(args.CIDR, maxZones+i)
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", name, err)
		}
		// No route table: the VPC's main table only routes inside the VPC.
		priv, err := ec2.NewSubnet(ctx, fmt.Sprintf("%s-private-%s", name, zone), &ec2.SubnetArgs{
			VpcId:               vpc.ID(),
			CidrBlock:           pulumi.String(cidr.String()),
			AvailabilityZone:    pulumi.String(zone),
			MapPublicIpOnLaunch: pulumi.Bool(false),
			Tags:                tags("private-" + zone),
		}, parent)
		if err != nil {
			return nil, fmt.Errorf("network %s: private subnet in %s: %w", name, zone, err)
		}
		privateIDs = append(privateIDs, priv.ID().ToStringOutput())
	}

	// Every client network, plus the operator's so the smoke test can run
	// from there.
	clients := cidrStrings(append(slices.Clone(args.ClientCIDRs), args.OperatorCIDRs...))
	operator := cidrStrings(args.OperatorCIDRs)
	webEgress := ec2.SecurityGroupEgressArray{
		tcpEgress(443, pulumi.StringArray{pulumi.String("0.0.0.0/0")}, "HTTPS: upstream APIs, registries, package mirrors"),
		tcpEgress(80, pulumi.StringArray{pulumi.String("0.0.0.0/0")}, "HTTP: Ubuntu package mirrors"),
	}

	hostIngress := ec2.SecurityGroupIngressArray{
		tcpIngress(SSHPort, operator, "SSH from the operator: Docker provider and readiness check"),
		tcpIngress(args.PrometheusPort, operator, "Prometheus from the operator"),
	}
	if len(args.ListenerPorts) > 0 {
		var lbIngress ec2.SecurityGroupIngressArray
		for _, p := range args.ListenerPorts {
			lbIngress = append(lbIngress, tcpIngress(p, clients, "gateway clients"))
		}
		lb, err := ec2.NewSecurityGroup(ctx, name+"-lb", &ec2.SecurityGroupArgs{
			VpcId:       vpc.ID(),
			Description: pulumi.String("Relaygate load balancer: listeners open to the gateway clients"),
			Ingress:     lbIngress,
			// The targets are in this VPC; the VPC's block avoids a cycle
			// with the host group, which admits this group by ID.
			Egress: ec2.SecurityGroupEgressArray{
				tcpEgress(args.GatewayPort, pulumi.StringArray{pulumi.String(vpcCIDR)}, "to the gateways and their health checks"),
			},
			Tags: tags("lb"),
		}, parent)
		if err != nil {
			return nil, fmt.Errorf("network %s: load balancer security group: %w", name, err)
		}
		n.LoadBalancerSecurityGroupID = lb.ID()
		hostIngress = append(hostIngress, ec2.SecurityGroupIngressArgs{
			Protocol:       pulumi.String("tcp"),
			FromPort:       pulumi.Int(args.GatewayPort),
			ToPort:         pulumi.Int(args.GatewayPort),
			SecurityGroups: pulumi.StringArray{lb.ID().ToStringOutput()},
			Description:    pulumi.String("gateway from the load balancer only"),
		})
	} else {
		hostIngress = append(hostIngress, tcpIngress(args.GatewayPort, clients, "gateway clients"))
	}
	hostEgress := webEgress
	if args.Cache {
		hostEgress = append(hostEgress, tcpEgress(RedisPort, pulumi.StringArray{pulumi.String(vpcCIDR)}, "the managed Redis"))
	}
	if args.LedgerDatabase {
		hostEgress = append(hostEgress, tcpEgress(PostgresPort, pulumi.StringArray{pulumi.String(vpcCIDR)}, "the ledger database"))
	}
	host, err := ec2.NewSecurityGroup(ctx, name+"-hosts", &ec2.SecurityGroupArgs{
		VpcId:       vpc.ID(),
		Description: pulumi.String("Relaygate GPU hosts"),
		Ingress:     hostIngress,
		Egress:      hostEgress,
		Tags:        tags("hosts"),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("network %s: host security group: %w", name, err)
	}
	n.HostSecurityGroupID = host.ID()

	if args.Cache {
		cache, err := ec2.NewSecurityGroup(ctx, name+"-cache", &ec2.SecurityGroupArgs{
			VpcId:       vpc.ID(),
			Description: pulumi.String("Relaygate managed Redis: the GPU hosts only"),
			Ingress: ec2.SecurityGroupIngressArray{
				ec2.SecurityGroupIngressArgs{
					Protocol:       pulumi.String("tcp"),
					FromPort:       pulumi.Int(RedisPort),
					ToPort:         pulumi.Int(RedisPort),
					SecurityGroups: pulumi.StringArray{host.ID().ToStringOutput()},
					Description:    pulumi.String("Redis from the GPU hosts"),
				},
			},
			// An explicit empty list removes AWS's default allow-all egress;
			// Redis never initiates connections.
			Egress: ec2.SecurityGroupEgressArray{},
			Tags:   tags("cache"),
		}, parent)
		if err != nil {
			return nil, fmt.Errorf("network %s: cache security group: %w", name, err)
		}
		n.CacheSecurityGroupID = cache.ID()
	}
	if args.LedgerDatabase {
		db, err := ec2.NewSecurityGroup(ctx, name+"-ledger-db", &ec2.SecurityGroupArgs{
			VpcId:       vpc.ID(),
			Description: pulumi.String("Relaygate ledger database: the GPU hosts only"),
			Ingress: ec2.SecurityGroupIngressArray{
				ec2.SecurityGroupIngressArgs{
					Protocol:       pulumi.String("tcp"),
					FromPort:       pulumi.Int(PostgresPort),
					ToPort:         pulumi.Int(PostgresPort),
					SecurityGroups: pulumi.StringArray{host.ID().ToStringOutput()},
					Description:    pulumi.String("Postgres from the GPU hosts"),
				},
			},
			// Postgres never initiates connections.
			Egress: ec2.SecurityGroupEgressArray{},
			Tags:   tags("ledger-db"),
		}, parent)
		if err != nil {
			return nil, fmt.Errorf("network %s: ledger database security group: %w", name, err)
		}
		n.DatabaseSecurityGroupID = db.ID()
	}

	n.VpcID = vpc.ID()
	n.PublicSubnetIDs = publicIDs.ToStringArrayOutput()
	n.PrivateSubnetIDs = privateIDs.ToStringArrayOutput()
	if err := ctx.RegisterResourceOutputs(n, pulumi.Map{
		"vpcId":               n.VpcID,
		"publicSubnetIds":     n.PublicSubnetIDs,
		"privateSubnetIds":    n.PrivateSubnetIDs,
		"hostSecurityGroupId": n.HostSecurityGroupID,
	}); err != nil {
		return nil, err
	}
	return n, nil
}

// Subnet returns the index-th of the sixteen equal subnets of vpc (its
// prefix length plus 4).
func Subnet(vpc netip.Prefix, index int) (netip.Prefix, error) {
	bits := vpc.Bits() + 4
	if !vpc.Addr().Is4() || bits > 28 {
		return netip.Prefix{}, fmt.Errorf("VPC block %s is too small for 16 subnets (AWS's smallest subnet is a /28)", vpc)
	}
	if index < 0 || index >= 16 {
		return netip.Prefix{}, fmt.Errorf("subnet index %d is out of range 0-15", index)
	}
	a := vpc.Masked().Addr().As4()
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	base += uint32(index) << (32 - bits)
	addr := netip.AddrFrom4([4]byte{byte(base >> 24), byte(base >> 16), byte(base >> 8), byte(base)})
	return netip.PrefixFrom(addr, bits), nil
}

func cidrStrings(ps []netip.Prefix) pulumi.StringArray {
	seen := map[netip.Prefix]bool{}
	var out pulumi.StringArray
	for _, p := range ps {
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, pulumi.String(p.String()))
	}
	return out
}

func tcpIngress(port int, cidrs pulumi.StringArray, why string) ec2.SecurityGroupIngressArgs {
	return ec2.SecurityGroupIngressArgs{
		Protocol:    pulumi.String("tcp"),
		FromPort:    pulumi.Int(port),
		ToPort:      pulumi.Int(port),
		CidrBlocks:  cidrs,
		Description: pulumi.String(why),
	}
}

func tcpEgress(port int, cidrs pulumi.StringArray, why string) ec2.SecurityGroupEgressArgs {
	return ec2.SecurityGroupEgressArgs{
		Protocol:    pulumi.String("tcp"),
		FromPort:    pulumi.Int(port),
		ToPort:      pulumi.Int(port),
		CidrBlocks:  cidrs,
		Description: pulumi.String(why),
	}
}
