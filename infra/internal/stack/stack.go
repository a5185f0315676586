// Package stack wires the components into one Relaygate deployment for a
// validated stack configuration: GPU hosts on AWS (one host for dev; several
// behind a load balancer with a shared managed Redis for prod), or the same
// containers on the local Docker engine with no cloud resource at all.
package stack

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-command/sdk/go/command/remote"
	"github.com/pulumi/pulumi-docker/sdk/v4/go/docker"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/relaygate/relaygate/deploy"
	"github.com/relaygate/relaygate/infra/internal/containers"
	"github.com/relaygate/relaygate/infra/internal/gatewayconfig"
	"github.com/relaygate/relaygate/infra/internal/gpuhost"
	"github.com/relaygate/relaygate/infra/internal/ledgerdb"
	"github.com/relaygate/relaygate/infra/internal/loadbalancer"
	"github.com/relaygate/relaygate/infra/internal/network"
	"github.com/relaygate/relaygate/infra/internal/registry"
	"github.com/relaygate/relaygate/infra/internal/sharedredis"
	"github.com/relaygate/relaygate/infra/internal/stackconfig"
)

// Outputs are what the smoke test reads (SPEC.md, "Stack outputs").
type Outputs struct {
	GatewayURL    pulumi.StringOutput
	PrometheusURL pulumi.StringOutput
	// GatewayAPIKey is a secret output.
	GatewayAPIKey      pulumi.StringOutput
	ExpectedGPUCount   int
	LatencyBudgetP95Ms int
	ImageRef           pulumi.StringOutput
	// Hosts are the public addresses the gateways run on.
	Hosts pulumi.StringArrayOutput
	// InstanceIDs is empty for the local stack.
	InstanceIDs pulumi.StringArrayOutput
	// SelfHostedModel is the model name the hosts' model servers answer
	// to, and SelfHostedUpstream the gateway's upstream for them; both
	// empty when the stack runs no model server.
	SelfHostedModel    string
	SelfHostedUpstream string
	// LedgerEnabled says the gateways write the usage ledger to Postgres.
	LedgerEnabled bool
}

// Source is the repository checkout the gateway image is built from.
type Source struct {
	// Context is the build context (the repository root) and Dockerfile the
	// file in it, both relative to the program's working directory.
	Context    string
	Dockerfile string
}

// SourceFrom finds the build context from the project root (the directory
// of Pulumi.yaml) and the program's working directory. The paths are kept
// relative so that two operators' checkouts produce the same state.
func SourceFrom(root, workdir string) (Source, error) {
	if root == "" {
		// CLIs older than PULUMI_ROOT_DIRECTORY: look up from the program.
		for dir := workdir; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "Pulumi.yaml")); err == nil {
				root = dir
				break
			}
			if filepath.Dir(dir) == dir {
				return Source{}, fmt.Errorf("build context: no Pulumi.yaml in %s or above", workdir)
			}
		}
	}
	rel, err := filepath.Rel(workdir, root)
	if err != nil {
		return Source{}, fmt.Errorf("build context: %w", err)
	}
	dockerfile := filepath.Join(rel, "Dockerfile")
	if _, err := os.Stat(filepath.Join(root, "Dockerfile")); err != nil {
		return Source{}, fmt.Errorf("build context: %w", err)
	}
	return Source{Context: filepath.ToSlash(rel), Dockerfile: filepath.ToSlash(dockerfile)}, nil
}

// Deploy registers every resource of the stack.
func Deploy(ctx *pulumi.Context, cfg *stackconfig.Config, src Source) (*Outputs, error) {
	switch cfg.Target {
	case stackconfig.TargetAWS:
		return deployAWS(ctx, cfg, src)
	case stackconfig.TargetLocal:
		return deployLocal(ctx, cfg, src)
	}
	return nil, fmt.Errorf("stack %s: unknown target %q", cfg.Stack, cfg.Target)
}

// hostRedisMaxMemory and localRedisMaxMemory bound the Redis that runs next
// to a gateway: most of a GPU host's memory belongs to model servers, and a
// laptop's to everything else.
const (
	hostRedisMaxMemory  = "2gb"
	localRedisMaxMemory = "256mb"
)

func deployAWS(ctx *pulumi.Context, cfg *stackconfig.Config, src Source) (*Outputs, error) {
	name := "relaygate-" + cfg.Stack
	tags := map[string]string{"relaygate:stack": cfg.Stack, "relaygate:managed-by": "pulumi"}

	zones, err := pickZones(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var listeners []int
	if cfg.LoadBalancer {
		listeners = loadbalancer.ListenerPorts(cfg.TLSCertificateARN)
	}
	net, err := network.New(ctx, name, network.Args{
		Name:           name,
		Tags:           tags,
		CIDR:           cfg.VPCCIDR,
		Zones:          zones,
		PrivateSubnets: cfg.ManagedRedis || managedLedger(cfg),
		Cache:          cfg.ManagedRedis,
		LedgerDatabase: managedLedger(cfg),
		ClientCIDRs:    cfg.AllowedCIDRs,
		OperatorCIDRs:  cfg.OperatorCIDRs,
		GatewayPort:    stackconfig.GatewayPort,
		PrometheusPort: stackconfig.PrometheusPort,
		ListenerPorts:  listeners,
	})
	if err != nil {
		return nil, err
	}

	image, err := registry.New(ctx, name+"-gateway", registry.Args{
		Context:     src.Context,
		Dockerfile:  src.Dockerfile,
		Tag:         cfg.ImageTag,
		Reuse:       cfg.ReuseImage,
		Platform:    registry.HostPlatform,
		ECR:         fmt.Sprintf("relaygate/%s/gateway", cfg.Stack),
		RetainCount: cfg.ImageRetainCount,
		Protect:     cfg.DeletionProtection,
		Tags:        tags,
	})
	if err != nil {
		return nil, err
	}

	fleet, err := gpuhost.NewFleet(ctx, name, gpuhost.Args{
		Name:            name,
		Tags:            tags,
		Count:           cfg.HostCount,
		InstanceType:    cfg.InstanceType,
		ExpectedGPUs:    cfg.ExpectedGPUCount,
		RootVolumeGB:    cfg.RootVolumeGB,
		AMINamePattern:  cfg.AMINamePattern,
		AMIOwner:        cfg.AMIOwner,
		AMIID:           cfg.AMIID,
		SubnetIDs:       net.PublicSubnetIDs,
		SecurityGroupID: net.HostSecurityGroupID.ToStringOutput(),
		SSHUser:         cfg.SSHUser,
		SSHPublicKey:    cfg.SSHPublicKey,
		CUDATestImage:   cfg.CUDATestImage,
	})
	if err != nil {
		return nil, err
	}

	redisURL := pulumi.String(containers.LocalRedisURL).ToStringOutput()
	if cfg.ManagedRedis {
		cache, err := sharedredis.New(ctx, name, sharedredis.Args{
			Tags:               tags,
			SubnetIDs:          net.PrivateSubnetIDs,
			SecurityGroupID:    net.CacheSecurityGroupID.ToStringOutput(),
			NodeType:           cfg.RedisNodeType,
			DeletionProtection: cfg.DeletionProtection,
			FinalSnapshotName:  name + "-final",
		})
		if err != nil {
			return nil, err
		}
		redisURL = cache.URL
	}
	ledgerURL, ledgerDB := containerLedger(cfg)
	if managedLedger(cfg) {
		db, err := ledgerdb.New(ctx, name+"-ledger", ledgerdb.Args{
			Tags:               tags,
			SubnetIDs:          net.PrivateSubnetIDs,
			SecurityGroupID:    net.DatabaseSecurityGroupID.ToStringOutput(),
			Ledger:             cfg.Ledger,
			DeletionProtection: cfg.DeletionProtection,
		})
		if err != nil {
			return nil, err
		}
		ledgerURL = db.URL
	}
	gatewayYAML := renderGatewayConfig(cfg, redisURL, "")
	promFiles, alertmanager, err := alerting(cfg)
	modelServer := modelServerOf(cfg, promFiles)
	if err != nil {
		return nil, err
	}

	first := fleet.Hosts[0].PublicIP
	gatewayURL := pulumi.Sprintf("http://%s:%d", first, stackconfig.GatewayPort)
	var alb *loadbalancer.Balancer
	if cfg.LoadBalancer {
		var targets []pulumi.StringInput
		for _, h := range fleet.Hosts {
			targets = append(targets, h.Instance.ID().ToStringOutput())
		}
		alb, err = loadbalancer.New(ctx, name, loadbalancer.Args{
			Tags:               tags,
			VpcID:              net.VpcID.ToStringOutput(),
			SubnetIDs:          net.PublicSubnetIDs,
			SecurityGroupID:    net.LoadBalancerSecurityGroupID.ToStringOutput(),
			Targets:            targets,
			TargetPort:         stackconfig.GatewayPort,
			CertificateARN:     cfg.TLSCertificateARN,
			DomainName:         cfg.DomainName,
			HostedZoneID:       cfg.HostedZoneID,
			DeletionProtection: cfg.DeletionProtection,
		})
		if err != nil {
			return nil, err
		}
		gatewayURL = alb.URL
	}

	// Behind the load balancer the gateways are replaced one host at a time:
	// each host's gateway waits for the previous host's new one to be in
	// service, so at most one of them is out at any moment.
	var previous []pulumi.Resource
	for i, host := range fleet.Hosts {
		hostName := fmt.Sprintf("%s-host-%d", name, i)
		provider, err := docker.NewProvider(ctx, hostName+"-docker", &docker.ProviderArgs{
			Host: host.DockerHost,
			// The operator's ssh client and agent authenticate. A new host
			// has a new key: trust it on first use, refuse a changed one.
			// Its key is filed under the instance, not the address: a
			// public IP comes back to another instance after a
			// replacement, whose new key accept-new would refuse.
			SshOpts: pulumi.StringArray{
				pulumi.String("-o"), pulumi.String("StrictHostKeyChecking=accept-new"),
				pulumi.String("-o"), pulumi.Sprintf("HostKeyAlias=relaygate-%s", host.Instance.ID()),
				pulumi.String("-o"), pulumi.String("ConnectTimeout=30"),
				pulumi.String("-o"), pulumi.String("ServerAliveInterval=15"),
			},
			// Configuring the provider pings the daemon over SSH otherwise
			// (terraform-provider-docker's providerConfigure), so a preview,
			// which diffs without the daemon, would need the hosts' key.
			// The host's Ready check has already seen Docker run a GPU
			// container, and every real operation still reaches it.
			DisableDockerDaemonCheck: pulumi.Bool(true),
		}, pulumi.Parent(host), pulumi.DependsOn([]pulumi.Resource{host.Ready}),
			// A replaced instance is a new engine at a new address. Updated in
			// place (a provider's changed host is an update for the bridge),
			// the provider would send the old containers' deletes to the new,
			// empty host. Replaced with its instance, the old provider, still
			// pointed at the old host, deletes them there before that host
			// is terminated, and everything on it is created anew.
			pulumi.ReplaceWith([]pulumi.Resource{host.Instance}))
		if err != nil {
			return nil, fmt.Errorf("%s: docker provider: %w", hostName, err)
		}
		run, err := containers.New(ctx, hostName, containers.Args{
			Prefix:          "relaygate",
			Provider:        provider,
			DependsOn:       []pulumi.Resource{host.Ready},
			GatewayImage:    image.Ref,
			PullGateway:     pullOnHost(ctx, hostName, host, cfg.SSHUser, cfg.Region),
			GatewayConfig:   gatewayYAML,
			GatewayEnv:      gatewayEnv(cfg, ledgerURL),
			LedgerDB:        ledgerDB,
			LedgerSpillDir:  ledgerSpillDir(cfg),
			GPUs:            true,
			PublishIP:       "0.0.0.0",
			RunRedis:        !cfg.ManagedRedis,
			RedisImage:      cfg.RedisImage,
			RedisMaxMemory:  hostRedisMaxMemory,
			PrometheusImage: cfg.PrometheusImage,
			PrometheusFiles: promFiles,
			Alertmanager:    alertmanager,
			ModelServer:     modelServer,
			StopGrace:       drain(cfg).Grace(),
			// A replaced instance (new AMI, user data or key) is a bare
			// host behind the same provider: this makes every Docker
			// resource on it differ, so all of them are created again there.
			InstanceID:   host.Instance.ID().ToStringOutput(),
			Instance:     host.Instance,
			GatewayAfter: previous,
		}, pulumi.Parent(host))
		if err != nil {
			return nil, err
		}
		if alb != nil {
			inService, err := loadbalancer.WaitInService(ctx, hostName+"-in-service", loadbalancer.InServiceArgs{
				Region:         cfg.Region,
				TargetGroupARN: alb.TargetGroupARN,
				InstanceID:     host.Instance.ID().ToStringOutput(),
				Port:           stackconfig.GatewayPort,
				Trigger:        run.Gateway.ID(),
				After:          []pulumi.Resource{run.Gateway, alb.Attachments[i]},
			}, pulumi.Parent(host), pulumi.DeletedWith(host.Instance))
			if err != nil {
				return nil, err
			}
			previous = []pulumi.Resource{inService}
		}
	}

	return &Outputs{
		GatewayURL: gatewayURL,
		// Each host runs its own Prometheus; the first one's is the one the
		// smoke test checks.
		PrometheusURL:      pulumi.Sprintf("http://%s:%d", first, stackconfig.PrometheusPort),
		GatewayAPIKey:      cfg.GatewayAPIKey.Output(),
		ExpectedGPUCount:   cfg.ExpectedGPUCount,
		LatencyBudgetP95Ms: int(cfg.LatencyBudgetP95.Milliseconds()),
		ImageRef:           image.Ref,
		Hosts:              fleet.PublicIPs,
		InstanceIDs:        fleet.InstanceIDs,
		SelfHostedModel:    selfHostedModel(cfg),
		SelfHostedUpstream: selfHostedUpstream(cfg),
		LedgerEnabled:      cfg.Ledger.Enabled,
	}, nil
}

func deployLocal(ctx *pulumi.Context, cfg *stackconfig.Config, src Source) (*Outputs, error) {
	name := "relaygate-" + cfg.Stack
	// No host set: the provider uses DOCKER_HOST, else the local socket.
	provider, err := docker.NewProvider(ctx, name+"-docker", &docker.ProviderArgs{})
	if err != nil {
		return nil, fmt.Errorf("local docker provider: %w", err)
	}
	image, err := registry.New(ctx, name+"-gateway", registry.Args{
		Context:    src.Context,
		Dockerfile: src.Dockerfile,
		Tag:        cfg.ImageTag,
		Reuse:      cfg.ReuseImage,
		Provider:   provider,
	})
	if err != nil {
		return nil, err
	}
	simURL := ""
	if cfg.UpstreamSimulator {
		simURL = containers.SimulatorURL
	}
	promFiles, alertmanager, err := alerting(cfg)
	if err != nil {
		return nil, err
	}
	modelServer := modelServerOf(cfg, promFiles)
	ledgerURL, ledgerDB := containerLedger(cfg)
	if _, err := containers.New(ctx, name, containers.Args{
		Prefix:          name,
		Provider:        provider,
		GatewayImage:    image.Ref,
		GatewayConfig:   renderGatewayConfig(cfg, pulumi.String(containers.LocalRedisURL).ToStringOutput(), simURL),
		GatewayEnv:      gatewayEnv(cfg, ledgerURL),
		LedgerDB:        ledgerDB,
		LedgerSpillDir:  ledgerSpillDir(cfg),
		GPUs:            cfg.LocalGPU,
		PublishIP:       "127.0.0.1",
		RunRedis:        true,
		RedisImage:      cfg.RedisImage,
		RedisMaxMemory:  localRedisMaxMemory,
		PrometheusImage: cfg.PrometheusImage,
		PrometheusFiles: promFiles,
		Alertmanager:    alertmanager,
		ModelServer:     modelServer,
		Simulator:       cfg.UpstreamSimulator,
	}); err != nil {
		return nil, err
	}
	return &Outputs{
		GatewayURL:         pulumi.Sprintf("http://127.0.0.1:%d", stackconfig.GatewayPort),
		PrometheusURL:      pulumi.Sprintf("http://127.0.0.1:%d", stackconfig.PrometheusPort),
		GatewayAPIKey:      cfg.GatewayAPIKey.Output(),
		ExpectedGPUCount:   cfg.ExpectedGPUCount,
		LatencyBudgetP95Ms: int(cfg.LatencyBudgetP95.Milliseconds()),
		ImageRef:           image.Ref,
		Hosts:              pulumi.ToStringArray([]string{"127.0.0.1"}).ToStringArrayOutput(),
		InstanceIDs:        pulumi.ToStringArray([]string{}).ToStringArrayOutput(),
		SelfHostedModel:    selfHostedModel(cfg),
		SelfHostedUpstream: selfHostedUpstream(cfg),
		LedgerEnabled:      cfg.Ledger.Enabled,
	}, nil
}

// managedLedger says the stack's ledger is an RDS instance.
func managedLedger(cfg *stackconfig.Config) bool { return cfg.Ledger.Enabled && cfg.Ledger.Managed }

// containerLedger is, for a stack whose ledger runs as a container beside
// each gateway, that container and the gateway's URL for it (a secret
// output: it may hold the password); for any other stack, neither.
func containerLedger(cfg *stackconfig.Config) (pulumi.StringOutput, *containers.LedgerDB) {
	l := cfg.Ledger
	if !l.Enabled || l.Managed {
		return pulumi.StringOutput{}, nil
	}
	db := &containers.LedgerDB{Image: l.Image, DBName: ledgerdb.DBName, User: ledgerdb.User}
	// Plain TCP on the host's private Docker network, which nothing
	// outside the host reaches.
	url := pulumi.ToSecret(pulumi.String(ledgerdb.PostgresURL(containers.LedgerDBHost, "", "disable"))).(pulumi.StringOutput)
	if l.Password.IsSet() {
		db.Password = l.Password.Output()
		url = l.Password.Output().ApplyT(func(pw string) string {
			return ledgerdb.PostgresURL(containers.LedgerDBHost, pw, "disable")
		}).(pulumi.StringOutput)
	}
	return url, db
}

// ledgerSpillDir is where the gateway container mounts its spill volume;
// empty without the ledger.
func ledgerSpillDir(cfg *stackconfig.Config) string {
	if !cfg.Ledger.Enabled {
		return ""
	}
	return gatewayconfig.LedgerSpillDir
}

// pullOnHost pulls the gateway image on a host with the host's own instance
// role (AmazonEC2ContainerRegistryReadOnly) and answers its image ID. Given
// to the host's Docker provider instead (registryAuth), the ECR token, new
// on every run, would make every preview and up update each provider.
func pullOnHost(ctx *pulumi.Context, hostName string, host *gpuhost.Host, sshUser, region string) func(pulumi.StringInput) (pulumi.StringOutput, error) {
	return func(ref pulumi.StringInput) (pulumi.StringOutput, error) {
		cmd, err := remote.NewCommand(ctx, hostName+"-pull-gateway", &remote.CommandArgs{
			Connection: remote.ConnectionArgs{
				Host:           host.PublicIP,
				User:           pulumi.String(sshUser),
				DialErrorLimit: pulumi.Int(10),
				PerDialTimeout: pulumi.Int(10),
			},
			// ref is repo@sha256:…; the registry is its host part.
			Create: pulumi.Sprintf(`set -eu
ref='%s'
aws ecr get-login-password --region '%s' | docker login --username AWS --password-stdin "${ref%%%%/*}" >/dev/null
docker pull --quiet "$ref" >/dev/null
docker image inspect --format '{{.Id}}' "$ref"
`, ref, region),
			Triggers: pulumi.Array{ref, host.Instance.ID()},
		}, pulumi.Parent(host), pulumi.DependsOn([]pulumi.Resource{host.Ready}), pulumi.DeletedWith(host.Instance))
		if err != nil {
			return pulumi.StringOutput{}, err
		}
		return cmd.Stdout.ApplyT(strings.TrimSpace).(pulumi.StringOutput), nil
	}
}

// renderGatewayConfig renders the gateway's YAML once the Redis address is
// known (the managed Redis's endpoint only exists after it is created).
func renderGatewayConfig(cfg *stackconfig.Config, redisURL pulumi.StringOutput, simulatorURL string) pulumi.StringOutput {
	return redisURL.ApplyT(func(url string) (string, error) {
		ep := gatewayconfig.Endpoints{RedisURL: url, SimulatorURL: simulatorURL, Drain: drain(cfg)}
		if cfg.ModelServer.Enabled {
			ep.ModelServerURL = containers.ModelServerURL
		}
		b, err := gatewayconfig.Render(cfg, ep)
		return string(b), err
	}).(pulumi.StringOutput)
}

// modelServerOf is the model server container of a stack, nil when it runs
// none; it also points the host's Prometheus at the server (files is the
// host's Prometheus files, changed in place).
func modelServerOf(cfg *stackconfig.Config, files map[string]string) *containers.ModelServer {
	m := cfg.ModelServer
	if !m.Enabled {
		return nil
	}
	files[containers.ModelServerTargetsFile] = containers.ModelServerTargets(m.ServedName)
	// vLLM reports usage to its authors by default; a gateway's host
	// keeps its traffic to what it needs.
	env := pulumi.StringArray{pulumi.String("VLLM_NO_USAGE_STATS=1"), pulumi.String("DO_NOT_TRACK=1")}
	if m.HFToken.IsSet() {
		env = append(env, pulumi.Sprintf("HF_TOKEN=%s", m.HFToken.Output()))
	}
	return &containers.ModelServer{
		Image:     m.Image,
		Args:      containers.ModelServerArgs(m),
		Env:       pulumi.ToSecret(env).(pulumi.StringArrayOutput),
		ShmSizeMB: m.ShmSizeMB,
	}
}

func selfHostedModel(cfg *stackconfig.Config) string {
	if !cfg.ModelServer.Enabled {
		return ""
	}
	return cfg.ModelServer.ServedName
}

func selfHostedUpstream(cfg *stackconfig.Config) string {
	if !cfg.ModelServer.Enabled {
		return ""
	}
	return stackconfig.SelfHostedUpstream
}

// alerting returns the Prometheus files for a stack and, with
// alertWebhookUrl, the Alertmanager beside Prometheus that posts its alerts
// to that webhook. Without it, alerts show only in Prometheus.
func alerting(cfg *stackconfig.Config) (map[string]string, *containers.Alertmanager, error) {
	files, err := deploy.PrometheusFiles()
	if err != nil || !cfg.AlertWebhookURL.IsSet() {
		return files, nil, err
	}
	files["alertmanagers/alertmanager.json"] = containers.AlertmanagerTargets
	config := cfg.AlertWebhookURL.Output().ApplyT(func(url string) string {
		// The placeholder sits in single quotes in the YAML.
		return strings.Replace(deploy.AlertmanagerConfig, deploy.AlertWebhookPlaceholder, strings.ReplaceAll(url, "'", "''"), 1)
	}).(pulumi.StringOutput)
	return files, &containers.Alertmanager{Image: cfg.AlertmanagerImage, Config: config}, nil
}

// drainTimeout is how long a replaced gateway waits for its requests in
// flight: most completions, though not the longest streams (upstream
// timeouts go to minutes), which the client's retry must cover.
const drainTimeout = 60 * time.Second

// drain is how a stack's gateways stop: behind the load balancer they
// first wait for it to take them out (their /ready fails meanwhile).
func drain(cfg *stackconfig.Config) gatewayconfig.Drain {
	d := gatewayconfig.Drain{Timeout: drainTimeout}
	if cfg.LoadBalancer {
		d.Delay = loadbalancer.DrainDelay
	}
	return d
}

// gatewayEnv is the gateway container's environment: the values the
// rendered config's ${VAR} references expand to, ledgerURL among them when
// the stack has the ledger. Every entry is a secret output, in a stable
// order so that a deploy without changes shows none.
func gatewayEnv(cfg *stackconfig.Config, ledgerURL pulumi.StringOutput) pulumi.StringArrayOutput {
	env := pulumi.StringArray{pulumi.Sprintf("%s=%s", stackconfig.GatewayAPIKeyEnv, cfg.GatewayAPIKey.Output())}
	for _, name := range slices.Sorted(maps.Keys(cfg.UpstreamKeys)) {
		env = append(env, pulumi.Sprintf("%s=%s", name, cfg.UpstreamKeys[name].Output()))
	}
	if cfg.Ledger.Enabled {
		env = append(env, pulumi.Sprintf("%s=%s", stackconfig.LedgerURLEnv, pulumi.ToSecret(ledgerURL)))
	}
	return pulumi.ToSecret(env).(pulumi.StringArrayOutput)
}

// pickZones chooses the availability zones for the subnets: the configured
// hostCount (at least two where a load balancer, a multi-AZ Redis or the
// Multi-AZ ledger database needs them) among the zones that offer the instance type, in name order so the
// choice is stable between runs.
func pickZones(ctx *pulumi.Context, cfg *stackconfig.Config) ([]string, error) {
	locationType := "availability-zone"
	offers, err := ec2.GetInstanceTypeOfferings(ctx, &ec2.GetInstanceTypeOfferingsArgs{
		LocationType: &locationType,
		Filters: []ec2.GetInstanceTypeOfferingsFilter{
			{Name: "instance-type", Values: []string{cfg.InstanceType}},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("finding the zones of %s that offer %s: %w", cfg.Region, cfg.InstanceType, err)
	}
	return ChooseZones(offers.Locations, cfg)
}

// ChooseZones is pickZones' decision, apart from the AWS call.
func ChooseZones(offered []string, cfg *stackconfig.Config) ([]string, error) {
	zones := slices.Clone(offered)
	slices.Sort(zones)
	zones = slices.Compact(zones)
	want, minimum := cfg.HostCount, 1
	if cfg.LoadBalancer || cfg.ManagedRedis || managedLedger(cfg) {
		minimum = 2
	}
	want = max(want, minimum)
	if len(zones) < minimum {
		return nil, fmt.Errorf("%s is offered in %d availability zone(s) of %s (%v); this stack needs %d: pick another instanceType or region",
			cfg.InstanceType, len(zones), cfg.Region, zones, minimum)
	}
	return zones[:min(want, len(zones))], nil
}
