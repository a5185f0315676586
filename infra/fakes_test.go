package main

// Fake providers for the engine harness. Each one behaves, where the
// engine's decisions depend on it, like the real provider at the version the
// program's SDKs request, and each rule says which source it follows:
//
//   - docker 4.10.0: pulumi/pulumi-docker v4.10.0, a bridge of
//     kreuzwerker/terraform-provider-docker at 7e649b0
//     (internal/provider/*.go).
//   - aws 6.83.4: pulumi/pulumi-aws, a bridge of hashicorp/terraform-provider-aws.
//   - command 1.2.1: pulumi/pulumi-command (provider/pkg/provider).
//
// The fakes share a world: the Docker engines by address, with the objects
// on each, and a log of every call, so a test can see which engine a
// delete went to and in which order containers came and went.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/blang/semver"
	"github.com/pulumi/pulumi/pkg/v3/resource/deploy/deploytest"
	"github.com/pulumi/pulumi/pkg/v3/resource/plugin"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/tokens"
	"github.com/pulumi/pulumi/sdk/v3/go/property"
)

// localEngine is the address a docker provider without host reaches.
const localEngine = "unix:///var/run/docker.sock"

type world struct {
	mu  sync.Mutex
	log []string
	// engines maps a Docker engine's address to the objects on it
	// ("container relaygate-gateway").
	engines map[string]map[string]bool
	// sshAgent says whether the hosts' SSH key is in the agent: without it
	// nothing can reach an ssh:// engine.
	sshAgent bool
	// contacted are the ssh:// engines a provider reached.
	contacted []string
	// newestAMI is what the AMI lookup answers.
	newestAMI string
	// instances maps an instance ID to its Docker engine.
	instances map[string]string
	n         int
}

func newWorld() *world {
	return &world{engines: map[string]map[string]bool{localEngine: {}}, sshAgent: true, instances: map[string]string{}, newestAMI: fakeAMI}
}

func (w *world) record(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.log = append(w.log, fmt.Sprintf(format, args...))
}

func (w *world) calls() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.log)
}

func (w *world) next() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n++
	return w.n
}

func (w *world) loaders() []*deploytest.ProviderLoader {
	return []*deploytest.ProviderLoader{
		deploytest.NewProviderLoader("aws", semver.MustParse("6.83.4"), func() (plugin.Provider, error) {
			return w.provider("aws"), nil
		}),
		deploytest.NewProviderLoader("docker", semver.MustParse("4.10.0"), func() (plugin.Provider, error) {
			return w.provider("docker"), nil
		}),
		deploytest.NewProviderLoader("command", semver.MustParse("1.2.1"), func() (plugin.Provider, error) {
			return w.provider("command"), nil
		}),
	}
}

func mustStackName(t interface{ Fatal(...any) }, name string) tokens.StackName {
	s, err := tokens.ParseStackName(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// replaceKeys are the inputs whose change forces a new resource, by type.
// A type whose entry is nil replaces on any change but those in updatable.
var replaceKeys = map[string][]string{
	// terraform-provider-aws internal/service/ec2/ec2_instance.go: ForceNew
	// on ami, availability_zone, subnet_id, key_name,
	// associate_public_ip_address, private_ip, tenancy; user_data forces a
	// new instance with user_data_replace_on_change.
	"aws:ec2/instance:Instance": {"ami", "availabilityZone", "subnetId", "keyName", "associatePublicIpAddress", "privateIp", "tenancy"},
	// ec2_key_pair.go: every argument is ForceNew but tags.
	"aws:ec2/keyPair:KeyPair": {"publicKey", "keyName", "keyNamePrefix"},
	// vpc_security_group.go: name, description and vpc_id are ForceNew.
	"aws:ec2/securityGroup:SecurityGroup":                {"name", "namePrefix", "description", "vpcId"},
	"aws:ec2/subnet:Subnet":                              {"cidrBlock", "availabilityZone", "vpcId"},
	"aws:ec2/vpc:Vpc":                                    {"cidrBlock"},
	"aws:ecr/repository:Repository":                      {"name"},
	"aws:lb/targetGroup:TargetGroup":                     {"name", "port", "protocol", "vpcId", "targetType"},
	"aws:lb/targetGroupAttachment:TargetGroupAttachment": {"targetGroupArn", "targetId", "port"},
	"aws:elasticache/replicationGroup:ReplicationGroup":  {"replicationGroupId", "subnetGroupName", "atRestEncryptionEnabled"},
	// pulumi-command: triggers are replaceOnChanges.
	"command:remote:Command": {"triggers"},
	"command:local:Command":  {"triggers"},
	// terraform-provider-docker resource_docker_{network,volume,image}.go:
	// every argument is ForceNew (keep_locally excepted for images).
	"docker:index/network:Network":         nil,
	"docker:index/volume:Volume":           nil,
	"docker:index/remoteImage:RemoteImage": nil,
	// resource_docker_container.go: every argument is ForceNew except those
	// in updatable below (resourceDockerContainerUpdate).
	"docker:index/container:Container": nil,
}

var updatable = map[string][]string{
	"docker:index/container:Container": {"restart", "mustRun", "wait", "waitTimeout", "destroyGraceSeconds",
		"healthcheck", "memory", "memorySwap", "memoryReservation", "cpuShares", "cpuSet", "cpuPeriod", "cpuQuota",
		"rm", "start", "attach", "logs", "maxRetryCount", "removeVolumes", "init", "containerReadRefreshTimeoutMilliseconds"},
	"docker:index/remoteImage:RemoteImage": {"keepLocally"},
}

// dockerObject is the name a Docker resource has on its engine; images
// have none that conflicts.
func dockerObject(typ string, in resource.PropertyMap) string {
	name := ""
	if v, ok := in["name"]; ok && v.IsString() {
		name = v.StringValue()
	}
	switch typ {
	case "docker:index/container:Container":
		return "container " + name
	case "docker:index/network:Network":
		return "network " + name
	case "docker:index/volume:Volume":
		return "volume " + name
	}
	return ""
}

func (w *world) provider(pkg string) *deploytest.Provider {
	var (
		mu        sync.Mutex
		host      = localEngine
		unchecked bool
	)
	engineOf := func() string {
		mu.Lock()
		defer mu.Unlock()
		return host
	}
	p := &deploytest.Provider{Package: tokens.Package(pkg)}

	// pulumi-terraform-bridge DiffConfig: a changed provider argument is an
	// update of the provider, never a replacement (SDKv2 provider schemas
	// have no ForceNew), so resources keep their provider across a change
	// of docker's host.
	p.DiffConfigF = func(_ context.Context, req plugin.DiffConfigRequest) (plugin.DiffConfigResponse, error) {
		oldIn, newIn := resource.ToResourcePropertyMap(req.OldInputs), resource.ToResourcePropertyMap(req.NewInputs)
		d := oldIn.Diff(newIn)
		if d == nil || !d.AnyChanges() {
			return plugin.DiffResult{Changes: plugin.DiffNone}, nil
		}
		return plugin.DiffResult{Changes: plugin.DiffSome, ChangedKeys: d.ChangedKeys()}, nil
	}
	// terraform-provider-docker provider.go providerConfigure: the client
	// pings the daemon unless disable_docker_daemon_check; over ssh:// that
	// needs the hosts' key. (The engine configures a provider whose
	// arguments are still unknown in a preview without calling it.)
	p.ConfigureF = func(_ context.Context, req plugin.ConfigureRequest) (plugin.ConfigureResponse, error) {
		in := resource.ToResourcePropertyMap(req.Inputs)
		mu.Lock()
		if v, ok := in["host"]; ok && v.IsString() && v.StringValue() != "" {
			host = v.StringValue()
		}
		if v, ok := in["disableDockerDaemonCheck"]; ok && v.IsBool() {
			unchecked = v.BoolValue()
		}
		h, skip := host, unchecked
		mu.Unlock()
		if pkg == "docker" && strings.HasPrefix(h, "ssh://") && !skip {
			if err := w.reach(h); err != nil {
				return plugin.ConfigureResponse{}, fmt.Errorf("Error pinging Docker server, please make sure that %s is reachable and has a  '_ping' endpoint. Error: %w", h, err)
			}
		}
		return plugin.ConfigureResponse{}, nil
	}
	p.DiffF = func(_ context.Context, req plugin.DiffRequest) (plugin.DiffResult, error) {
		typ := string(req.Type)
		oldIn, newIn := resource.ToResourcePropertyMap(req.OldInputs), resource.ToResourcePropertyMap(req.NewInputs)
		if typ == "docker:index/image:Image" {
			// pulumi-docker provider/image.go diff: the registry's
			// password (a fresh ECR token each run) is not a change.
			oldIn, newIn = withoutRegistryPassword(oldIn), withoutRegistryPassword(newIn)
		}
		d := oldIn.Diff(newIn)
		if d == nil || !d.AnyChanges() {
			return plugin.DiffResult{Changes: plugin.DiffNone}, nil
		}
		changed := d.ChangedKeys()
		var replace []resource.PropertyKey
		keys, listed := replaceKeys[typ]
		for _, k := range changed {
			switch {
			case listed && keys == nil && !slices.Contains(updatable[typ], string(k)):
				replace = append(replace, k)
			case slices.Contains(keys, string(k)):
				replace = append(replace, k)
			case typ == "aws:ec2/instance:Instance" && k == "userData":
				if v, ok := newIn["userDataReplaceOnChange"]; ok && v.IsBool() && v.BoolValue() {
					replace = append(replace, k)
				}
			}
		}
		return plugin.DiffResult{Changes: plugin.DiffSome, ChangedKeys: changed, ReplaceKeys: replace}, nil
	}
	p.CreateF = func(_ context.Context, req plugin.CreateRequest) (plugin.CreateResponse, error) {
		typ, in := string(req.Type), resource.ToResourcePropertyMap(req.Properties)
		id, outs := w.outputs(typ, req.Name, in, req.Preview)
		if req.Preview {
			return plugin.CreateResponse{Properties: resource.FromResourcePropertyMap(outs)}, nil
		}
		if pkg == "docker" {
			at := engineOf()
			if err := w.dockerCreate(at, typ, req.Name, in); err != nil {
				return plugin.CreateResponse{}, err
			}
		}
		if typ == "command:local:Command" {
			if err := w.inService(in); err != nil {
				return plugin.CreateResponse{}, err
			}
		}
		w.record("create %s %s%s", shortType(typ), req.Name, w.where(pkg, engineOf()))
		return plugin.CreateResponse{ID: resource.ID(id), Properties: resource.FromResourcePropertyMap(outs)}, nil
	}
	p.UpdateF = func(_ context.Context, req plugin.UpdateRequest) (plugin.UpdateResponse, error) {
		typ := string(req.Type)
		_, outs := w.outputs(typ, req.Name, resource.ToResourcePropertyMap(req.NewInputs), req.Preview)
		if !req.Preview {
			if pkg == "docker" {
				if err := w.reach(engineOf()); err != nil {
					return plugin.UpdateResponse{}, err
				}
			}
			w.record("update %s %s%s", shortType(typ), req.Name, w.where(pkg, engineOf()))
		}
		return plugin.UpdateResponse{Properties: resource.FromResourcePropertyMap(outs)}, nil
	}
	p.DeleteF = func(_ context.Context, req plugin.DeleteRequest) (plugin.DeleteResponse, error) {
		typ := string(req.Type)
		at := engineOf()
		w.record("delete %s %s%s", shortType(typ), req.Name, w.where(pkg, at))
		if pkg == "docker" {
			if err := w.dockerDelete(at, typ, resource.ToResourcePropertyMap(req.Inputs)); err != nil {
				return plugin.DeleteResponse{}, err
			}
		}
		if typ == "aws:ec2/instance:Instance" {
			w.terminate(req.Outputs)
		}
		return plugin.DeleteResponse{}, nil
	}
	p.InvokeF = func(_ context.Context, req plugin.InvokeRequest) (plugin.InvokeResponse, error) {
		out, err := w.invoke(string(req.Tok), resource.ToResourcePropertyMap(req.Args))
		if err != nil {
			return plugin.InvokeResponse{}, err
		}
		return plugin.InvokeResponse{Properties: resource.FromResourcePropertyMap(out)}, nil
	}
	return p
}

func (w *world) where(pkg, engine string) string {
	if pkg != "docker" {
		return ""
	}
	return " on " + engine
}

func shortType(typ string) string {
	if i := strings.LastIndex(typ, ":"); i >= 0 {
		return typ[i+1:]
	}
	return typ
}

func withoutRegistryPassword(m resource.PropertyMap) resource.PropertyMap {
	m = m.Copy()
	if r, ok := m["registry"]; ok && r.IsObject() {
		o := r.ObjectValue().Copy()
		delete(o, "password")
		m["registry"] = resource.NewProperty(o)
	}
	return m
}

// reach is an ssh:// connection to an engine: it needs the key, and a host
// that exists.
func (w *world) reach(engine string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !strings.HasPrefix(engine, "ssh://") {
		return nil
	}
	w.contacted = append(w.contacted, engine)
	if !w.sshAgent {
		return fmt.Errorf("error during connect: %s: ssh: handshake failed: ssh: unable to authenticate, attempted methods [none publickey], no supported methods remain", engine)
	}
	if _, ok := w.engines[engine]; !ok {
		return fmt.Errorf("error during connect: %s: dial tcp: connect: connection refused", engine)
	}
	return nil
}

// dockerCreate puts an object on an engine; Docker refuses a name in use
// ("Conflict. The container name ... is already in use").
func (w *world) dockerCreate(engine, typ, name string, in resource.PropertyMap) error {
	return w.onEngine(engine, typ, in, func(objs map[string]bool, obj string) error {
		if objs[obj] {
			return fmt.Errorf("Error response from daemon: Conflict. The %s name is already in use (%s on %s)", obj, name, engine)
		}
		objs[obj] = true
		return nil
	})
}

// dockerDelete removes an object; Docker answers a missing one with "No
// such container", which the provider reports as a failed delete.
func (w *world) dockerDelete(engine, typ string, in resource.PropertyMap) error {
	return w.onEngine(engine, typ, in, func(objs map[string]bool, obj string) error {
		if !objs[obj] {
			return fmt.Errorf("Error response from daemon: No such %s on %s", obj, engine)
		}
		delete(objs, obj)
		return nil
	})
}

// onEngine reaches an engine and, for an object Docker names, runs change
// on the engine's objects.
func (w *world) onEngine(engine, typ string, in resource.PropertyMap, change func(objs map[string]bool, obj string) error) error {
	if err := w.reach(engine); err != nil {
		return err
	}
	obj := dockerObject(typ, in)
	if obj == "" {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return change(w.engines[engine], obj)
}

// terminate takes an instance's Docker engine away with it.
func (w *world) terminate(outputs property.Map) {
	out := resource.ToResourcePropertyMap(outputs)
	if ip, ok := out["publicIp"]; ok && ip.IsString() {
		w.mu.Lock()
		for e := range w.engines {
			if strings.HasSuffix(e, "@"+ip.StringValue()) {
				delete(w.engines, e)
			}
		}
		w.mu.Unlock()
	}
}

func fakeDigest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// outputs is a created resource's ID and outputs: its inputs plus what the
// real provider computes. In a preview the computed ones are unknown.
func (w *world) outputs(typ, name string, in resource.PropertyMap, preview bool) (string, resource.PropertyMap) {
	outs := in.Copy()
	str := func(k string) string {
		if v, ok := in[resource.PropertyKey(k)]; ok && v.IsString() {
			return v.StringValue()
		}
		return ""
	}
	set := func(k, v string) {
		if preview {
			outs[resource.PropertyKey(k)] = resource.MakeComputed(resource.NewProperty(""))
			return
		}
		outs[resource.PropertyKey(k)] = resource.NewProperty(v)
	}
	n := w.next()
	id := fmt.Sprintf("%s-%d", name, n)
	switch typ {
	case "aws:ec2/instance:Instance":
		id = fmt.Sprintf("i-%017x", n)
		ip := fmt.Sprintf("198.51.100.%d", n%250+1)
		set("publicIp", ip)
		if !preview {
			// cloud-init starts Docker on the new host (deploy/host/bootstrap.sh).
			engine := fmt.Sprintf("ssh://ubuntu@%s", ip)
			w.mu.Lock()
			w.engines[engine] = map[string]bool{}
			w.instances[id] = engine
			w.mu.Unlock()
		}
	case "aws:ecr/repository:Repository":
		set("registryId", "123456789012")
		set("repositoryUrl", "123456789012.dkr.ecr.us-east-1.amazonaws.com/"+str("name"))
	case "docker:index/image:Image":
		ref := str("imageName")
		v, ok := in["skipPush"]
		set("repoDigest", fakeRepoDigest(ref, "sha256:"+fakeDigest(fmt.Sprintf("%s %d", ref, n)), ok && v.IsBool() && v.BoolValue()))
	case "docker:index/remoteImage:RemoteImage":
		set("imageId", "sha256:"+fakeDigest(str("name")))
		set("repoDigest", str("name"))
	case "aws:lb/loadBalancer:LoadBalancer":
		set("dnsName", name+"-1234567890.us-east-1.elb.amazonaws.com")
		set("zoneId", albZoneID)
		set("arn", "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/"+name)
	case "aws:lb/targetGroup:TargetGroup":
		set("arn", "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/"+name)
	case "aws:lb/listener:Listener":
		set("arn", "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/"+name)
	case "aws:elasticache/replicationGroup:ReplicationGroup":
		set("primaryEndpointAddress", "master."+name+".abcdef.use1.cache.amazonaws.com")
	case "aws:rds/instance:Instance":
		set("address", name+".c0abcdefghij.us-east-1.rds.amazonaws.com")
		set("arn", "arn:aws:rds:us-east-1:123456789012:db:"+name)
	case "aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile", "aws:elasticache/subnetGroup:SubnetGroup", "aws:rds/subnetGroup:SubnetGroup":
		if str("name") == "" {
			// Auto-named, with a random suffix per physical resource.
			set("name", fmt.Sprintf("%s-%07x", name, n))
		}
		set("arn", "arn:aws:iam::123456789012:role/"+name)
	case "aws:ec2/keyPair:KeyPair":
		set("keyName", fmt.Sprintf("%s-%07x", name, n))
	case "command:remote:Command", "command:local:Command":
		out := "relaygate: ready"
		if strings.Contains(str("create"), "docker image inspect") {
			// A pull answers the image ID, which follows the reference.
			out = "sha256:" + fakeDigest(str("create")) + "\n"
		}
		set("stdout", out)
		set("stderr", "")
	case "docker:index/container:Container", "docker:index/network:Network", "docker:index/volume:Volume":
	default:
		set("arn", "arn:aws:fake:us-east-1:123456789012:"+name)
	}
	return id, outs
}

// invoke answers the data sources the program reads.
func (w *world) invoke(tok string, args resource.PropertyMap) (resource.PropertyMap, error) {
	arg := func(k string) string {
		if v, ok := args[resource.PropertyKey(k)]; ok && v.IsString() {
			return v.StringValue()
		}
		return ""
	}
	switch tok {
	case "aws:ecr/getImage:getImage":
		repo, tag := arg("repositoryName"), arg("imageTag")
		sum := "sha256:" + fakeDigest("pushed "+tag)
		return resource.NewPropertyMapFromMap(map[string]any{
			"id": sum, "imageDigest": sum, "imageTag": tag, "imageTags": []any{tag},
			"registryId": "123456789012", "repositoryName": repo,
		}), nil
	case "docker:index/getRemoteImage:getRemoteImage":
		name := arg("name")
		id := "sha256:" + fakeDigest("built "+name)
		return resource.NewPropertyMapFromMap(map[string]any{"id": id, "name": name, "repoDigest": id}), nil
	case "aws:ec2/getAmi:getAmi":
		w.mu.Lock()
		ami := w.newestAMI
		w.mu.Unlock()
		return resource.NewPropertyMapFromMap(map[string]any{"id": ami, "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250101"}), nil
	case "aws:index/getPartition:getPartition":
		return resource.NewPropertyMapFromMap(map[string]any{"id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com"}), nil
	case "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
		return resource.NewPropertyMapFromMap(map[string]any{
			"id": "us-east-1", "locations": []any{"us-east-1d", "us-east-1a", "us-east-1c", "us-east-1b"},
		}), nil
	case "aws:ecr/getAuthorizationToken:getAuthorizationToken":
		// A fresh token on every run, as ECR gives.
		return resource.NewPropertyMapFromMap(map[string]any{
			"id": "us-east-1", "userName": "AWS", "password": fmt.Sprintf("ecr-token-%d", w.next()),
			"proxyEndpoint":      "https://123456789012.dkr.ecr.us-east-1.amazonaws.com",
			"authorizationToken": "QVdTOnRlc3Q=", "expiresAt": "2030-01-01T00:00:00Z",
		}), nil
	}
	return nil, fmt.Errorf("the fake providers do not know invoke %s", tok)
}

// objects lists what an engine holds.
func (w *world) objects(engine string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for o := range w.engines[engine] {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}

// inService is `aws elbv2 wait target-in-service` for the target in a
// command's environment: the load balancer finds it healthy only while a
// gateway runs on that instance.
func (w *world) inService(in resource.PropertyMap) error {
	env, ok := in["environment"]
	if !ok || !env.IsObject() {
		return nil
	}
	target := env.ObjectValue()["TARGET"]
	for target.IsSecret() {
		target = target.SecretValue().Element
	}
	if !target.IsString() {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	engine := w.instances[target.StringValue()]
	if !w.engines[engine]["container relaygate-gateway"] {
		return fmt.Errorf("Waiter TargetInService failed: Max attempts exceeded (no gateway on %s)", target.StringValue())
	}
	return nil
}
