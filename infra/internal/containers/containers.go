// Package containers is the runtime stack on one Docker engine: a private
// network with the gateway, its Redis (unless the stack uses a managed one),
// Prometheus with the project's configuration and alert rules, and for local
// demos the offline upstream simulator.
//
// The same component runs on an EC2 GPU host (through a Docker provider over
// SSH) and on the operator's own engine (the local stack), so what is tested
// once holds for both.
package containers

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/pulumi/pulumi-docker/sdk/v4/go/docker"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/relaygate/relaygate/infra/internal/gatewayconfig"
	"github.com/relaygate/relaygate/infra/internal/stackconfig"
)

// Hostnames on the private network; the gateway config and Prometheus's
// targets refer to them.
const (
	GatewayHost    = "gateway"
	RedisHost      = "redis"
	SimulatorHost  = "upstream-sim"
	SimulatorPort  = 9000
	prometheusHost = "prometheus"
	// ModelServerHost is the model server on the private network; it
	// publishes no port, so only the containers there reach it.
	ModelServerHost = "model-server"
	ModelServerPort = 8000
	// AlertmanagerHost is Alertmanager on the private network.
	AlertmanagerHost = "alertmanager"
	alertmanagerPort = 9093
	// LedgerDBHost is the ledger's Postgres on the private network; it
	// publishes no port.
	LedgerDBHost = "ledger-db"
)

// LedgerDBDataDir is where the Postgres image keeps its data (PGDATA of the
// official image up to 17), on a named volume.
const LedgerDBDataDir = "/var/lib/postgresql/data"

// LedgerDBStopGrace is how long Docker waits for Postgres to stop (the
// image stops on SIGINT, a fast shutdown with a checkpoint) before it kills
// it, which would leave a crash recovery for the next start.
const LedgerDBStopGrace = 60 * time.Second

// AlertmanagerTargets is Prometheus's file_sd list of Alertmanagers
// (prometheus.yml reads alertmanagers/*.json) when one runs beside it.
var AlertmanagerTargets = fmt.Sprintf("[{\"targets\": [\"%s:%d\"]}]\n", AlertmanagerHost, alertmanagerPort)

// LocalRedisURL is the gateway's cache when Redis runs beside it.
var LocalRedisURL = fmt.Sprintf("redis://%s:6379/0", RedisHost)

// SimulatorURL is the simulator's base URL on the private network.
var SimulatorURL = fmt.Sprintf("http://%s:%d/v1", SimulatorHost, SimulatorPort)

// ModelServerURL is the model server's OpenAI base URL on the private
// network, the gateway's upstream stackconfig.SelfHostedUpstream.
var ModelServerURL = fmt.Sprintf("http://%s:%d/v1", ModelServerHost, ModelServerPort)

// ModelServerTargetsFile is the Prometheus file_sd file (relative to
// /etc/prometheus) that lists the model server; prometheus.yml's
// model-server job reads model-servers/*.json.
const ModelServerTargetsFile = "model-servers/model-server.json"

// ModelServerTargets is that file's content for the host's model server.
func ModelServerTargets(servedName string) string {
	return fmt.Sprintf("[{\"targets\": [\"%s:%d\"], \"labels\": {\"served_model\": %q}}]\n", ModelServerHost, ModelServerPort, servedName)
}

// ModelServerCacheDir is where the server keeps downloaded weights, on a
// named volume so that a new container does not download them again.
const ModelServerCacheDir = "/root/.cache/huggingface"

// ModelServerStartPeriod is how long Docker gives the model server before a
// failed health check counts: a first start downloads the weights (5 to 16
// GB) and every start loads them onto the GPU and profiles its memory.
const ModelServerStartPeriod = 20 * time.Minute

// InstanceLabel is the label each network, volume and container on an EC2
// host carries with the host's instance ID, and the RemoteImage trigger of
// the same name. See [Args.InstanceID].
const InstanceLabel = "relaygate.instance-id"

// SimulatorCommand starts the simulator from the gateway image.
var SimulatorCommand = []string{"/usr/local/bin/upstream-sim", "-listen", fmt.Sprintf(":%d", SimulatorPort)}

// Args configures a Stack.
type Args struct {
	// Prefix names the containers, network and volumes, so that several
	// stacks can share one engine (e.g. "relaygate-local").
	Prefix string
	// Provider is the Docker engine to deploy on.
	Provider *docker.Provider
	// DependsOn is what must be done before the first container starts,
	// e.g. the host's readiness check.
	DependsOn []pulumi.Resource
	// InstanceID is the EC2 instance the engine runs on; nil for the local
	// engine. A replaced instance (new AMI, user data or SSH key) is a new,
	// empty engine at a new address: the provider's host changes, but no
	// Docker resource's inputs would, so Pulumi would create nothing there.
	// With it, every network, volume and container carries
	// [InstanceLabel] (a label change forces replacement) and every pulled
	// image has it as a trigger, so a new instance gets all of them.
	InstanceID pulumi.StringInput
	// Instance is the resource InstanceID belongs to. Resources on it are
	// marked deleted with it: when it goes, so do they, and the engine need
	// not reach a host that is being terminated to remove them.
	Instance pulumi.Resource

	// GatewayImage is the image reference by digest (or local image ID).
	GatewayImage pulumi.StringInput
	// PullGateway, when set, puts GatewayImage on the engine first and
	// returns the image ID the gateway runs (hosts, which pull from a
	// private registry with their own credentials); unset, the image is
	// already on the engine (a locally built one).
	PullGateway func(ref pulumi.StringInput) (pulumi.StringOutput, error)
	// GatewayConfig is the YAML uploaded to gatewayconfig.Path.
	GatewayConfig pulumi.StringInput
	// GatewayEnv is "NAME=value" entries, the secrets among them already
	// secret outputs.
	GatewayEnv pulumi.StringArrayInput
	// GPUs passes every GPU of the engine's host to the gateway.
	GPUs bool
	// GatewayAfter is what the gateway waits for besides its own Redis: in
	// a rolling deploy, the previous host's new gateway in service, so that
	// this host's old gateway is only removed then.
	GatewayAfter []pulumi.Resource
	// StopGrace is how long Docker waits after SIGTERM before it kills a
	// gateway being replaced, so that it drains (zero: Docker's default).
	StopGrace time.Duration
	// PublishIP is the host address the gateway and Prometheus ports are
	// bound to: 0.0.0.0 behind a security group, 127.0.0.1 on a laptop.
	PublishIP string

	// RunRedis starts Redis beside the gateway; false when the stack uses a
	// managed Redis.
	RunRedis   bool
	RedisImage string
	// RedisMaxMemory caps the cache, e.g. "1gb".
	RedisMaxMemory string

	PrometheusImage string
	// PrometheusFiles are uploaded under /etc/prometheus, keyed by path
	// relative to it ("prometheus.yml", "rules/…", "targets/…").
	PrometheusFiles map[string]string

	// Simulator starts the offline upstream simulator from the gateway
	// image. Only the local stack may set it.
	Simulator bool

	// ModelServer, when set, runs the model server on the engine's GPUs,
	// before the gateway, which reaches it at ModelServerURL.
	ModelServer *ModelServer

	// LedgerDB, when set, runs the ledger's Postgres beside the gateway,
	// before it, at LedgerDBHost.
	LedgerDB *LedgerDB

	// LedgerSpillDir, when set, is the gateway's ledger spill directory:
	// a named volume is mounted there, so that rows spilled while Postgres
	// was away survive a new gateway container.
	LedgerSpillDir string

	// Alertmanager, when set, runs beside Prometheus and takes its alerts;
	// PrometheusFiles must then point Prometheus at it
	// ("alertmanagers/alertmanager.json" holding AlertmanagerTargets).
	Alertmanager *Alertmanager
}

// Alertmanager is the container that sends the alerts on.
type Alertmanager struct {
	Image string
	// Config is alertmanager.yml, a secret: its receiver's URL carries the
	// webhook's token.
	Config pulumi.StringInput
}

// LedgerDB is the ledger's Postgres container.
type LedgerDB struct {
	Image string
	// DBName and User are the database and user the image creates when
	// its volume is new.
	DBName, User string
	// Password is the user's password, a secret; nil, the database trusts
	// every connection (only the containers on the private network reach
	// it). The image takes it when it creates its data directory only.
	Password pulumi.StringInput
}

// ModelServer is the OpenAI-compatible model server container (vLLM).
type ModelServer struct {
	Image string
	// Args are the server's arguments (ModelServerArgs).
	Args []string
	// Env is "NAME=value" entries; HF_TOKEN among them is a secret output.
	Env       pulumi.StringArrayInput
	ShmSizeMB int
}

// ModelServerArgs are vLLM's OpenAI server arguments for m.
func ModelServerArgs(m stackconfig.ModelServer) []string {
	args := []string{
		"--model", m.Model,
		"--served-model-name", m.ServedName,
		"--host", "0.0.0.0",
		"--port", fmt.Sprint(ModelServerPort),
		"--download-dir", ModelServerCacheDir + "/hub",
		"--max-model-len", fmt.Sprint(m.MaxModelLen),
		"--gpu-memory-utilization", strconv.FormatFloat(m.GPUMemoryUtilization, 'f', -1, 64),
		"--tensor-parallel-size", fmt.Sprint(max(m.TensorParallel, 1)),
		"--dtype", m.Dtype,
	}
	if m.Quantization != "" {
		args = append(args, "--quantization", m.Quantization)
	}
	return append(args, m.ExtraArgs...)
}

// modelServerEntrypoint runs the OpenAI server module, which has taken
// --model in every vLLM release, whatever the image's own ENTRYPOINT is.
var modelServerEntrypoint = []string{"python3", "-m", "vllm.entrypoints.openai.api_server"}

// Stack is the component.
type Stack struct {
	pulumi.ResourceState

	Gateway      *docker.Container
	Redis        *docker.Container
	Prometheus   *docker.Container
	Simulator    *docker.Container
	Alertmanager *docker.Container
	ModelServer  *docker.Container
	LedgerDB     *docker.Container
}

// New deploys the containers.
func New(ctx *pulumi.Context, name string, args Args, opts ...pulumi.ResourceOption) (*Stack, error) {
	if args.Provider == nil {
		return nil, fmt.Errorf("containers %s: a Docker provider is required", name)
	}
	if _, ok := args.PrometheusFiles["prometheus.yml"]; !ok {
		return nil, fmt.Errorf("containers %s: the Prometheus files have no prometheus.yml", name)
	}
	s := &Stack{}
	if err := ctx.RegisterComponentResource("relaygate:infra:Containers", name, s, opts...); err != nil {
		return nil, err
	}
	on := []pulumi.ResourceOption{pulumi.Parent(s), pulumi.Provider(args.Provider)}
	if len(args.DependsOn) > 0 {
		on = append(on, pulumi.DependsOn(args.DependsOn))
	}
	if args.Instance != nil {
		on = append(on, pulumi.DeletedWith(args.Instance))
	}
	// Container, network and volume names are fixed so that `docker ps` on
	// a host reads well; the old one must go before its replacement can
	// take the name. (A volume's ID is its name: deleted after its
	// replacement was created, the old one would be the new one.)
	replace := append(slices.Clone(on), pulumi.DeleteBeforeReplace(true))
	logs := pulumi.StringMap{"max-size": pulumi.String("50m"), "max-file": pulumi.String("5")}
	hostLabels := map[string]pulumi.StringInput{}
	var triggers pulumi.StringMapInput
	if args.InstanceID != nil {
		hostLabels[InstanceLabel] = args.InstanceID
		triggers = pulumi.StringMap{InstanceLabel: args.InstanceID}
	}

	net, err := docker.NewNetwork(ctx, name, &docker.NetworkArgs{
		Name:   pulumi.String(args.Prefix),
		Driver: pulumi.String("bridge"),
		Labels: networkLabels(hostLabels),
	}, replace...)
	if err != nil {
		return nil, fmt.Errorf("containers %s: network: %w", name, err)
	}
	attach := func(alias string) docker.ContainerNetworksAdvancedArray {
		return docker.ContainerNetworksAdvancedArray{docker.ContainerNetworksAdvancedArgs{
			Name:    net.Name,
			Aliases: pulumi.StringArray{pulumi.String(alias)},
		}}
	}
	pull := func(what string, ref pulumi.StringInput) (pulumi.StringOutput, error) {
		img, err := docker.NewRemoteImage(ctx, fmt.Sprintf("%s-%s", name, what), &docker.RemoteImageArgs{
			Name: ref,
			// Keep pulled images so a rollback starts without a pull.
			KeepLocally: pulumi.Bool(true),
			Triggers:    triggers,
		}, on...)
		if err != nil {
			return pulumi.StringOutput{}, fmt.Errorf("containers %s: pulling %s image: %w", name, what, err)
		}
		return img.ImageId, nil
	}
	// volume is a named volume of the engine, its data kept across new
	// containers.
	volume := func(what string) (*docker.Volume, error) {
		v, err := docker.NewVolume(ctx, name+"-"+what, &docker.VolumeArgs{
			Name:   pulumi.String(args.Prefix + "-" + what + "-data"),
			Labels: volumeLabels(hostLabels),
		}, replace...)
		if err != nil {
			return nil, fmt.Errorf("containers %s: %s volume: %w", name, what, err)
		}
		return v, nil
	}
	// run starts the container what (its name after the prefix, its
	// resource's after the component's) on the private network as alias.
	// Every container of the stack restarts unless stopped, keeps five
	// 50 MB log files and carries the host's labels, or c.Labels where set.
	run := func(what, alias string, c *docker.ContainerArgs, opts []pulumi.ResourceOption) (*docker.Container, error) {
		c.Name = pulumi.String(args.Prefix + "-" + what)
		c.NetworksAdvanced = attach(alias)
		c.Restart = pulumi.String("unless-stopped")
		c.MustRun = pulumi.Bool(true)
		c.LogOpts = logs
		if c.Labels == nil {
			c.Labels = containerLabels(hostLabels)
		}
		ctr, err := docker.NewContainer(ctx, name+"-"+what, c, opts...)
		if err != nil {
			return nil, fmt.Errorf("containers %s: %s: %w", name, what, err)
		}
		return ctr, nil
	}
	// publish binds port on PublishIP to the same port in the container.
	publish := func(port int) docker.ContainerPortArray {
		return docker.ContainerPortArray{docker.ContainerPortArgs{
			Internal: pulumi.Int(port),
			External: pulumi.Int(port),
			Ip:       pulumi.String(args.PublishIP),
		}}
	}
	var gatewayDeps []pulumi.Resource

	if args.RunRedis {
		image, err := pull("redis", pulumi.String(args.RedisImage))
		if err != nil {
			return nil, err
		}
		vol, err := volume("redis")
		if err != nil {
			return nil, err
		}
		s.Redis, err = run("redis", RedisHost, &docker.ContainerArgs{
			Image: image,
			// Append-only persistence: cache entries and rate-limit windows
			// survive a restart; LRU eviction keeps memory bounded.
			Command: pulumi.ToStringArray([]string{
				"redis-server", "--appendonly", "yes", "--appendfsync", "everysec",
				"--maxmemory", args.RedisMaxMemory, "--maxmemory-policy", "allkeys-lru",
			}),
			Volumes: mount(vol, "/data"),
			Healthcheck: &docker.ContainerHealthcheckArgs{
				Tests:       pulumi.ToStringArray([]string{"CMD", "redis-cli", "ping"}),
				Interval:    pulumi.String("10s"),
				Timeout:     pulumi.String("3s"),
				Retries:     pulumi.Int(5),
				StartPeriod: pulumi.String("10s"),
			},
			Wait:        pulumi.Bool(true),
			WaitTimeout: pulumi.Int(120),
		}, replace)
		if err != nil {
			return nil, err
		}
		gatewayDeps = append(gatewayDeps, s.Redis)
	}

	if db := args.LedgerDB; db != nil {
		image, err := pull("ledger-db", pulumi.String(db.Image))
		if err != nil {
			return nil, err
		}
		vol, err := volume("ledger-db")
		if err != nil {
			return nil, err
		}
		env := pulumi.StringArray{pulumi.Sprintf("POSTGRES_DB=%s", db.DBName), pulumi.Sprintf("POSTGRES_USER=%s", db.User)}
		if db.Password != nil {
			env = append(env, pulumi.Sprintf("POSTGRES_PASSWORD=%s", db.Password))
		} else {
			env = append(env, pulumi.String("POSTGRES_HOST_AUTH_METHOD=trust"))
		}
		// The environment may carry the password: secret in the state.
		dbOpts := append(slices.Clone(replace), pulumi.AdditionalSecretOutputs([]string{"envs"}))
		// No published port: only the containers on the private network
		// reach it.
		s.LedgerDB, err = run("ledger-db", LedgerDBHost, &docker.ContainerArgs{
			Image:   image,
			Envs:    pulumi.ToSecret(env).(pulumi.StringArrayOutput),
			Volumes: mount(vol, LedgerDBDataDir),
			// Docker's 64 MiB /dev/shm is short for parallel queries.
			ShmSize: pulumi.Int(256),
			// Over TCP: while the image initialises a new volume, its
			// temporary server listens on the Unix socket only, so this
			// passes once the real server takes connections.
			Healthcheck: &docker.ContainerHealthcheckArgs{
				Tests: pulumi.ToStringArray([]string{"CMD", "pg_isready", "-h", "127.0.0.1", "-p", "5432",
					"-U", db.User, "-d", db.DBName}),
				Interval:    pulumi.String("10s"),
				Timeout:     pulumi.String("5s"),
				Retries:     pulumi.Int(5),
				StartPeriod: pulumi.String("30s"),
			},
			// The entrypoint drops from root to the postgres user, which
			// needs no setuid binary.
			SecurityOpts:        pulumi.StringArray{pulumi.String("no-new-privileges:true")},
			DestroyGraceSeconds: pulumi.Int(int(LedgerDBStopGrace / time.Second)),
			Wait:                pulumi.Bool(true),
			WaitTimeout:         pulumi.Int(180),
		}, dbOpts)
		if err != nil {
			return nil, err
		}
		gatewayDeps = append(gatewayDeps, s.LedgerDB)
	}

	gatewayImage := args.GatewayImage.ToStringOutput()
	if args.PullGateway != nil {
		if gatewayImage, err = args.PullGateway(args.GatewayImage); err != nil {
			return nil, fmt.Errorf("containers %s: pulling the gateway image: %w", name, err)
		}
	}
	// The gateway and simulator only open sockets: they need no capability
	// and must not gain privileges through a setuid binary.
	dropAll := &docker.ContainerCapabilitiesArgs{Drops: pulumi.StringArray{pulumi.String("ALL")}}
	noNewPrivileges := pulumi.StringArray{pulumi.String("no-new-privileges:true")}

	if args.Simulator {
		s.Simulator, err = run("upstream-sim", SimulatorHost, &docker.ContainerArgs{
			Image:       gatewayImage,
			Entrypoints: pulumi.ToStringArray(SimulatorCommand[:1]),
			Command:     pulumi.ToStringArray(SimulatorCommand[1:]),
			// The image has no shell or curl; the gateway binary's health
			// probe can GET any URL.
			Healthcheck: &docker.ContainerHealthcheckArgs{
				Tests: pulumi.ToStringArray([]string{"CMD", "/usr/local/bin/gateway", "-healthcheck",
					"-healthcheck-url", fmt.Sprintf("http://127.0.0.1:%d/v1/models", SimulatorPort)}),
				Interval: pulumi.String("15s"),
				Timeout:  pulumi.String("5s"),
				Retries:  pulumi.Int(3),
			},
			Capabilities: dropAll,
			SecurityOpts: noNewPrivileges,
			Labels:       containerLabels(withLabel(hostLabels, "relaygate.test-tool", pulumi.String("true"))),
		}, replace)
		if err != nil {
			return nil, err
		}
		gatewayDeps = append(gatewayDeps, s.Simulator)
	}

	if ms := args.ModelServer; ms != nil {
		image, err := pull("model-server", pulumi.String(ms.Image))
		if err != nil {
			return nil, err
		}
		cache, err := volume("huggingface")
		if err != nil {
			return nil, err
		}
		// The environment may carry HF_TOKEN: secret in the state as a whole.
		msOpts := append(slices.Clone(replace), pulumi.AdditionalSecretOutputs([]string{"envs"}))
		// No published port: the gateway and Prometheus reach it on the
		// private network, nothing outside the host does.
		s.ModelServer, err = run("model-server", ModelServerHost, &docker.ContainerArgs{
			Image:       image,
			Entrypoints: pulumi.ToStringArray(modelServerEntrypoint),
			Command:     pulumi.ToStringArray(ms.Args),
			Envs:        ms.Env,
			Gpus:        pulumi.String("all"),
			// PyTorch's data loaders and NCCL (tensor parallelism) share
			// tensors through /dev/shm; Docker's 64 MiB is too small.
			ShmSize: pulumi.Int(ms.ShmSizeMB),
			Volumes: mount(cache, ModelServerCacheDir),
			// /health answers 200 once the model is loaded. The image has
			// python3 (curl is not promised).
			Healthcheck: &docker.ContainerHealthcheckArgs{
				Tests: pulumi.ToStringArray([]string{"CMD", "python3", "-c",
					fmt.Sprintf("import urllib.request; urllib.request.urlopen('http://127.0.0.1:%d/health', timeout=5)", ModelServerPort)}),
				Interval:      pulumi.String("30s"),
				Timeout:       pulumi.String("10s"),
				Retries:       pulumi.Int(3),
				StartPeriod:   pulumi.String(ModelServerStartPeriod.String()),
				StartInterval: pulumi.String("10s"),
			},
			SecurityOpts: noNewPrivileges,
			// `pulumi up` waits until the model is loaded (the gateway
			// comes after it) and fails if it never is: an OOM or a
			// refused download shows in `docker logs` of the container.
			Wait:        pulumi.Bool(true),
			WaitTimeout: pulumi.Int(int((ModelServerStartPeriod + 5*time.Minute) / time.Second)),
		}, msOpts)
		if err != nil {
			return nil, err
		}
		gatewayDeps = append(gatewayDeps, s.ModelServer)
	}

	gwOpts := slices.Clone(replace)
	gatewayDeps = append(gatewayDeps, args.GatewayAfter...)
	if len(gatewayDeps) > 0 {
		gwOpts = append(gwOpts, pulumi.DependsOn(gatewayDeps))
	}
	gw := &docker.ContainerArgs{
		Image:   gatewayImage,
		Command: pulumi.ToStringArray([]string{"-config", gatewayconfig.Path}),
		Envs:    args.GatewayEnv,
		Uploads: docker.ContainerUploadArray{docker.ContainerUploadArgs{
			File:    pulumi.String(gatewayconfig.Path),
			Content: args.GatewayConfig,
		}},
		Ports: publish(stackconfig.GatewayPort),
		Healthcheck: &docker.ContainerHealthcheckArgs{
			Tests:       pulumi.ToStringArray([]string{"CMD", "/usr/local/bin/gateway", "-healthcheck"}),
			Interval:    pulumi.String("15s"),
			Timeout:     pulumi.String("5s"),
			Retries:     pulumi.Int(3),
			StartPeriod: pulumi.String("30s"),
		},
		Capabilities: dropAll,
		SecurityOpts: noNewPrivileges,
		// `pulumi up` fails if the gateway never turns healthy, instead of
		// reporting success for a crash-looping container.
		Wait:        pulumi.Bool(true),
		WaitTimeout: pulumi.Int(180),
	}
	if args.StopGrace > 0 {
		// Without it the provider removes the old container by force
		// (SIGKILL): every request in flight is cut and the load balancer
		// goes on sending to a dead target until its checks fail.
		gw.DestroyGraceSeconds = pulumi.Int(int(args.StopGrace.Round(time.Second) / time.Second))
	}
	if args.GPUs {
		gw.Gpus = pulumi.String("all")
	}
	if args.LedgerSpillDir != "" {
		// A new volume takes the ownership of the image's directory, which
		// the Dockerfile gives the gateway's user.
		spill, err := volume("ledger-spill")
		if err != nil {
			return nil, err
		}
		gw.Volumes = mount(spill, args.LedgerSpillDir)
	}
	// The environment carries the API keys: keep the whole field secret in
	// the state even where an entry is not.
	gwOpts = append(gwOpts, pulumi.AdditionalSecretOutputs([]string{"envs"}))
	if s.Gateway, err = run("gateway", GatewayHost, gw, gwOpts); err != nil {
		return nil, err
	}

	promImage, err := pull("prometheus", pulumi.String(args.PrometheusImage))
	if err != nil {
		return nil, err
	}
	promVol, err := volume("prometheus")
	if err != nil {
		return nil, err
	}
	var uploads docker.ContainerUploadArray
	for _, rel := range slices.Sorted(maps.Keys(args.PrometheusFiles)) {
		uploads = append(uploads, docker.ContainerUploadArgs{
			File:    pulumi.String("/etc/prometheus/" + rel),
			Content: pulumi.String(args.PrometheusFiles[rel]),
		})
	}
	s.Prometheus, err = run("prometheus", prometheusHost, &docker.ContainerArgs{
		Image: promImage,
		Command: pulumi.ToStringArray([]string{
			"--config.file=/etc/prometheus/prometheus.yml",
			"--storage.tsdb.path=/prometheus",
			"--storage.tsdb.retention.time=15d",
			fmt.Sprintf("--web.listen-address=:%d", stackconfig.PrometheusPort),
		}),
		Uploads:     uploads,
		Volumes:     mount(promVol, "/prometheus"),
		Ports:       publish(stackconfig.PrometheusPort),
		Healthcheck: readyCheck(stackconfig.PrometheusPort),
		Wait:        pulumi.Bool(true),
		WaitTimeout: pulumi.Int(120),
	}, replace)
	if err != nil {
		return nil, err
	}

	if am := args.Alertmanager; am != nil {
		amImage, err := pull("alertmanager", pulumi.String(am.Image))
		if err != nil {
			return nil, err
		}
		// Silences and notification state survive a new container.
		amVol, err := volume("alertmanager")
		if err != nil {
			return nil, err
		}
		amOpts := append(slices.Clone(replace), pulumi.AdditionalSecretOutputs([]string{"uploads"}))
		s.Alertmanager, err = run("alertmanager", AlertmanagerHost, &docker.ContainerArgs{
			Image: amImage,
			Command: pulumi.ToStringArray([]string{
				"--config.file=/etc/alertmanager/alertmanager.yml",
				"--storage.path=/alertmanager",
			}),
			Uploads: docker.ContainerUploadArray{docker.ContainerUploadArgs{
				File:    pulumi.String("/etc/alertmanager/alertmanager.yml"),
				Content: am.Config,
			}},
			Volumes:     mount(amVol, "/alertmanager"),
			Healthcheck: readyCheck(alertmanagerPort),
			Wait:        pulumi.Bool(true),
			WaitTimeout: pulumi.Int(120),
		}, amOpts)
		if err != nil {
			return nil, err
		}
	}

	return s, ctx.RegisterResourceOutputs(s, pulumi.Map{
		"gateway":    s.Gateway.Name,
		"prometheus": s.Prometheus.Name,
	})
}

// mount is v mounted at path in the container.
func mount(v *docker.Volume, path string) docker.ContainerVolumeArray {
	return docker.ContainerVolumeArray{docker.ContainerVolumeArgs{
		VolumeName: v.Name, ContainerPath: pulumi.String(path),
	}}
}

// readyCheck is the health check of Prometheus and Alertmanager: their
// images have busybox's wget, and both answer /-/ready.
func readyCheck(port int) *docker.ContainerHealthcheckArgs {
	return &docker.ContainerHealthcheckArgs{
		Tests: pulumi.ToStringArray([]string{"CMD", "wget", "-q", "-O", "/dev/null",
			fmt.Sprintf("http://127.0.0.1:%d/-/ready", port)}),
		Interval: pulumi.String("15s"),
		Timeout:  pulumi.String("5s"),
		Retries:  pulumi.Int(3),
	}
}

// withLabel is labels plus one more, leaving labels as it was.
func withLabel(labels map[string]pulumi.StringInput, k string, v pulumi.StringInput) map[string]pulumi.StringInput {
	out := maps.Clone(labels)
	out[k] = v
	return out
}

// The label helpers return nil for no labels, so a resource without any
// (the local stack's) keeps the inputs it always had. Each Docker resource
// type has its own label type; sortedLabels builds any of them, in key
// order so the inputs never differ from one run to the next.

func containerLabels(m map[string]pulumi.StringInput) docker.ContainerLabelArrayInput {
	if len(m) == 0 {
		return nil
	}
	return docker.ContainerLabelArray(sortedLabels(m, func(k, v pulumi.StringInput) docker.ContainerLabelInput {
		return docker.ContainerLabelArgs{Label: k, Value: v}
	}))
}

func networkLabels(m map[string]pulumi.StringInput) docker.NetworkLabelArrayInput {
	if len(m) == 0 {
		return nil
	}
	return docker.NetworkLabelArray(sortedLabels(m, func(k, v pulumi.StringInput) docker.NetworkLabelInput {
		return docker.NetworkLabelArgs{Label: k, Value: v}
	}))
}

func volumeLabels(m map[string]pulumi.StringInput) docker.VolumeLabelArrayInput {
	if len(m) == 0 {
		return nil
	}
	return docker.VolumeLabelArray(sortedLabels(m, func(k, v pulumi.StringInput) docker.VolumeLabelInput {
		return docker.VolumeLabelArgs{Label: k, Value: v}
	}))
}

func sortedLabels[T any](m map[string]pulumi.StringInput, label func(k, v pulumi.StringInput) T) []T {
	out := make([]T, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, label(pulumi.String(k), m[k]))
	}
	return out
}
