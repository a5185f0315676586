package main

// The harness runs the real program against Pulumi's mock engine, fed with a
// stack's real Pulumi.<stack>.yaml plus the values an operator sets with
// `pulumi config set`, validated and merged with Pulumi.yaml by the CLI's own
// code (cliConfig).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag/colors"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/config"
	"github.com/pulumi/pulumi/sdk/v3/go/common/workspace"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/internals"
)

// Values an operator provides per stack, never committed.
const (
	fakeGatewayKey   = "test-gateway-key-5d1c0e9a7b"
	fakeHolysheepKey = "test-holysheep-key-94f2"
	fakeOpenAIKey    = "test-openai-key-1a7e3c"
	fakeOperatorCIDR = "203.0.113.7/32"
	fakeRunnerCIDR   = "198.18.0.9/32"
	fakePublicKey    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHarnessKeyNotARealKey0000000000000000 ops@example"
	fakeAMI          = "ami-0123456789abcdef0"
	fakeECRPassword  = "test-ecr-password-77aa"
	// fakeLedgerPassword is what `openssl rand -hex 32` makes.
	fakeLedgerPassword = "9c1f5e0a7b2d48e3a6f1c0b9d7e2a4f8"
	// albZoneID is the hosted zone AWS gives load balancers in us-east-1.
	albZoneID = "Z35SXDOTRQ7X7K"
)

// setting is one `pulumi config set [--secret] key value`; an empty value
// with unset removes the key.
type setting struct {
	value  string
	secret bool
	unset  bool
}

// operatorSettings are what docs/deploying.md tells an operator to set.
func operatorSettings(target string) map[string]setting {
	s := map[string]setting{"relaygate:gatewayApiKey": {value: fakeGatewayKey, secret: true}}
	if target == "aws" {
		s["relaygate:operatorCidrs"] = setting{value: `["` + fakeOperatorCIDR + `", "` + fakeRunnerCIDR + `"]`}
		s["relaygate:sshPublicKey"] = setting{value: fakePublicKey}
		s["relaygate:holysheepApiKey"] = setting{value: fakeHolysheepKey, secret: true}
		s["relaygate:openaiApiKey"] = setting{value: fakeOpenAIKey, secret: true}
		// Required on prod (an RDS ledger), advised on dev.
		s["relaygate:ledgerDbPassword"] = setting{value: fakeLedgerPassword, secret: true}
	}
	return s
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func loadProject(t *testing.T) *workspace.Project {
	t.Helper()
	// LoadProject validates Pulumi.yaml against Pulumi's project schema,
	// including that every default has its declared type.
	proj, err := workspace.LoadProject(filepath.Join(repoRoot(t), "Pulumi.yaml"))
	if err != nil {
		t.Fatalf("Pulumi.yaml: %v", err)
	}
	return proj
}

// stackConfig returns the configuration the engine would hand the program
// for stack, as plain text with its secret keys: cliConfig's, the CLI's own
// validation and merge of the stack file, the operator's settings and
// Pulumi.yaml's defaults. The error is the CLI's refusal.
func stackConfig(t *testing.T, stackName string, settings map[string]setting) (map[string]string, []string, error) {
	t.Helper()
	ps, err := workspace.LoadProjectStack(diag.DefaultSink(io.Discard, io.Discard, diag.FormatOptions{Color: colors.Never}),
		loadProject(t), filepath.Join(repoRoot(t), "Pulumi."+stackName+".yaml"))
	if err != nil {
		t.Fatalf("Pulumi.%s.yaml: %v", stackName, err)
	}
	cfg, crypter, err := cliConfig(t, stackName, withCommittedSecrets(ps.Config, settings))
	if err != nil {
		return nil, nil, err
	}
	plain, err := cfg.Decrypt(crypter)
	if err != nil {
		t.Fatalf("Pulumi.%s.yaml: %v", stackName, err)
	}
	values := map[string]string{}
	for k, v := range plain {
		values[k.String()] = v
	}
	var secretKeys []string
	for _, k := range cfg.SecureKeys() {
		secretKeys = append(secretKeys, k.String())
	}
	slices.Sort(secretKeys)
	return values, secretKeys, nil
}

// committedSecret stands for a secret committed encrypted in a stack file
// (`secure: ...`, written by `pulumi config set --secret`), whose stack's
// secrets provider a test cannot decrypt with. It passes every secret's
// format check: a key of 16 characters or more without spaces, and an
// http(s) URL.
const committedSecret = "https://committed-secret.invalid/placeholder"

// committedPassword stands in for a committed ledgerDbPassword, whose rule
// (RDS's: no '/') committedSecret would break.
const committedPassword = "committed-secret-placeholder-0123"

// withCommittedSecrets is settings plus, for each encrypted value of the
// stack file that settings neither set nor unset, that value set and secret
// as committedSecret.
func withCommittedSecrets(stackFile config.Map, settings map[string]setting) map[string]setting {
	out := maps.Clone(settings)
	for k, v := range stackFile {
		if _, ok := out[k.String()]; !ok && v.Secure() {
			out[k.String()] = setting{value: committedSecret, secret: true}
			if k.String() == "relaygate:ledgerDbPassword" {
				out[k.String()] = setting{value: committedPassword, secret: true}
			}
		}
	}
	return out
}

// recorded is one resource the program registered.
type recorded struct {
	Type, Name string
	Inputs     resource.PropertyMap
	Provider   string
	Deps       []string
	// DeletedWith is the URN of the resource this one goes with.
	DeletedWith string
	// Protect is the resource's protect option; SecretOutputs its
	// additional secret outputs.
	Protect       bool
	SecretOutputs []string
}

type invoke struct {
	Token    string
	Args     resource.PropertyMap
	Provider string
}

// The images the mock registries hold, as earlier deploys left them: ECR
// tags (in any repository) with their manifest digests, and the local
// engine's images by name with their IDs. Every other tag is missing, as
// one the lifecycle policy expired would be.
var (
	pushedImages = map[string]string{"sha-6d4e5f6": "sha256:" + digest("manifest pushed as sha-6d4e5f6")}
	localImages  = map[string]string{"relaygate-gateway:local": "sha256:" + digest("image built as relaygate-gateway:local")}
)

// engine is the mock engine: it records every resource and invoke, and
// answers with the outputs a real provider would compute.
type engine struct {
	region string
	mu     sync.Mutex
	res    []recorded
	calls  []invoke
}

func (e *engine) NewResource(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	e.mu.Lock()
	n := len(e.res)
	rec := recorded{Type: args.TypeToken, Name: args.Name, Inputs: args.Inputs, Provider: args.Provider}
	if args.RegisterRPC != nil {
		rec.Deps = args.RegisterRPC.GetDependencies()
		rec.DeletedWith = args.RegisterRPC.GetDeletedWith()
		rec.Protect = args.RegisterRPC.GetProtect()
		rec.SecretOutputs = args.RegisterRPC.GetAdditionalSecretOutputs()
	}
	e.res = append(e.res, rec)
	e.mu.Unlock()

	outs := args.Inputs.Copy()
	id := fmt.Sprintf("%s-id", args.Name)
	str := func(k string) string {
		if v, ok := args.Inputs[resource.PropertyKey(k)]; ok && v.IsString() {
			return v.StringValue()
		}
		return ""
	}
	set := func(k, v string) { outs[resource.PropertyKey(k)] = resource.NewProperty(v) }
	switch args.TypeToken {
	case "aws:ec2/instance:Instance":
		id = fmt.Sprintf("i-%017x", n)
		set("publicIp", fmt.Sprintf("198.51.100.%d", 10+n%200))
	case "aws:ecr/repository:Repository":
		set("registryId", "123456789012")
		set("repositoryUrl", fmt.Sprintf("123456789012.dkr.ecr.%s.amazonaws.com/%s", e.region, str("name")))
	case "docker:index/image:Image":
		name := str("imageName")
		v, ok := args.Inputs["skipPush"]
		set("repoDigest", fakeRepoDigest(name, "sha256:"+digest(name), ok && v.IsBool() && v.BoolValue()))
	case "docker:index/remoteImage:RemoteImage":
		set("imageId", "sha256:"+digest(str("name")))
	case "aws:lb/loadBalancer:LoadBalancer":
		set("dnsName", args.Name+"-1234567890."+e.region+".elb.amazonaws.com")
		set("zoneId", albZoneID)
		set("arn", "arn:aws:elasticloadbalancing:"+e.region+":123456789012:loadbalancer/app/"+args.Name)
	case "aws:lb/targetGroup:TargetGroup":
		set("arn", "arn:aws:elasticloadbalancing:"+e.region+":123456789012:targetgroup/"+args.Name)
	case "aws:elasticache/replicationGroup:ReplicationGroup":
		set("primaryEndpointAddress", "master."+args.Name+".abcdef.use1.cache.amazonaws.com")
	case "aws:rds/instance:Instance":
		set("address", args.Name+".c0abcdefghij."+e.region+".rds.amazonaws.com")
	case "aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile", "aws:elasticache/subnetGroup:SubnetGroup", "aws:rds/subnetGroup:SubnetGroup":
		set("name", args.Name+"-generated")
	case "aws:ec2/keyPair:KeyPair":
		set("keyName", args.Name+"-generated")
	case "command:remote:Command":
		if create := str("create"); strings.Contains(create, "docker image inspect") {
			// A pull on a host answers the image ID.
			set("stdout", "sha256:"+digest(create)+"\n")
		} else {
			set("stdout", "relaygate: host ready")
		}
	}
	return id, outs, nil
}

func (e *engine) Call(args pulumi.MockCallArgs) (resource.PropertyMap, error) {
	e.mu.Lock()
	e.calls = append(e.calls, invoke{Token: args.Token, Args: args.Args, Provider: args.Provider})
	e.mu.Unlock()
	arg := func(k string) string {
		if v, ok := args.Args[resource.PropertyKey(k)]; ok && v.IsString() {
			return v.StringValue()
		}
		return ""
	}
	switch args.Token {
	case "aws:ecr/getImage:getImage":
		repo, tag := arg("repositoryName"), arg("imageTag")
		sum, ok := pushedImages[tag]
		if !ok {
			// What AWS answers DescribeImages for a tag it does not hold.
			return nil, fmt.Errorf("reading ECR Images: ImageNotFoundException: The image with imageId {imageDigest:'null', imageTag:'%s'} "+
				"does not exist within the repository with name '%s' in the registry with id '123456789012'", tag, repo)
		}
		return resource.NewPropertyMapFromMap(map[string]any{
			"id": sum, "imageDigest": sum, "imageTag": tag, "imageTags": []any{tag},
			"imagePushedAt": 1764000000, "imageSizeInBytes": 48_000_000,
			"imageUri":       fmt.Sprintf("123456789012.dkr.ecr.%s.amazonaws.com/%s@%s", e.region, repo, sum),
			"registryId":     "123456789012",
			"repositoryName": repo,
		}), nil
	case "docker:index/getRemoteImage:getRemoteImage":
		name := arg("name")
		id, ok := localImages[name]
		if !ok {
			return nil, fmt.Errorf("did not find docker image '%s'", name)
		}
		return resource.NewPropertyMapFromMap(map[string]any{"id": id, "name": name, "repoDigest": id}), nil
	case "aws:ec2/getAmi:getAmi":
		return resource.NewPropertyMapFromMap(map[string]any{
			"id": fakeAMI, "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250101", "architecture": "x86_64",
		}), nil
	case "aws:index/getPartition:getPartition":
		return resource.NewPropertyMapFromMap(map[string]any{"id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com"}), nil
	case "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
		// Deliberately unsorted: the program must choose zones stably.
		zones := []any{e.region + "d", e.region + "a", e.region + "c", e.region + "b"}
		return resource.NewPropertyMapFromMap(map[string]any{
			"id": e.region, "locations": zones,
			"locationTypes": []any{"availability-zone", "availability-zone", "availability-zone", "availability-zone"},
		}), nil
	case "aws:ecr/getAuthorizationToken:getAuthorizationToken":
		return resource.NewPropertyMapFromMap(map[string]any{
			"id": e.region, "userName": "AWS", "password": fakeECRPassword,
			"proxyEndpoint":      fmt.Sprintf("https://123456789012.dkr.ecr.%s.amazonaws.com", e.region),
			"authorizationToken": "QVdTOnRlc3Q=", "expiresAt": "2030-01-01T00:00:00Z",
		}), nil
	}
	return nil, fmt.Errorf("the program called %s, which the mock engine does not know", args.Token)
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// output is one awaited stack output.
type output struct {
	Value  any
	Secret bool
}

// deployment is the result of one program run.
type deployment struct {
	*engine
	stack   string
	values  map[string]string
	outputs map[string]output
}

// run runs the program for stackName with the operator's settings changed
// by changes, and returns what it registered. err is the program's error.
// mustRun is run for a stack that must deploy: it fails t on an error.
func mustRun(t *testing.T, stackName, target string, changes map[string]setting) *deployment {
	t.Helper()
	d, err := run(t, stackName, target, changes)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func run(t *testing.T, stackName, target string, changes map[string]setting) (*deployment, error) {
	t.Helper()
	settings := operatorSettings(target)
	maps.Copy(settings, changes)
	values, secretKeys, err := stackConfig(t, stackName, settings)
	if err != nil {
		t.Fatalf("the Pulumi CLI would refuse this configuration: %v", err)
	}
	return runWith(t, stackName, values, secretKeys)
}

// runWith runs the program on an exact configuration, bypassing the CLI's
// checks, as a damaged project or stack file would reach it.
func runWith(t *testing.T, stackName string, values map[string]string, secretKeys []string) (*deployment, error) {
	t.Helper()
	e := &engine{region: values["aws:region"]}
	var exports map[string]pulumi.Input
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		out, err := build(ctx)
		exports = out
		return err
	}, pulumi.WithMocks("relaygate", stackName, e), func(info *pulumi.RunInfo) {
		info.Config = values
		info.ConfigSecretKeys = secretKeys
		info.RootDirectory = repoRoot(t)
	})
	d := &deployment{engine: e, stack: stackName, values: values, outputs: map[string]output{}}
	if err != nil {
		return d, err
	}
	for name, in := range exports {
		r, err := internals.UnsafeAwaitOutput(context.Background(), pulumi.ToOutput(in))
		if err != nil {
			t.Fatalf("output %s: %v", name, err)
		}
		if !r.Known {
			t.Fatalf("output %s is unknown after an update", name)
		}
		d.outputs[name] = output{Value: r.Value, Secret: r.Secret}
	}
	return d, nil
}

// fakeRepoDigest is the repoDigest the docker provider reports for the
// image ref with digest sum: the local image's ID when it is not pushed
// (skipPush), else the repository (ref without its tag) @ sum.
func fakeRepoDigest(ref, sum string, skipPush bool) string {
	if skipPush {
		return sum
	}
	repo := ref
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo = ref[:i]
	}
	return repo + "@" + sum
}

// where returns the elements of xs that keep holds for, in order.
func where[T any](xs []T, keep func(T) bool) []T {
	var out []T
	for _, x := range xs {
		if keep(x) {
			out = append(out, x)
		}
	}
	return out
}

func (d *deployment) ofType(typ string) []recorded {
	return where(d.res, func(r recorded) bool { return r.Type == typ })
}

func (d *deployment) named(t *testing.T, typ, name string) recorded {
	t.Helper()
	for _, r := range d.ofType(typ) {
		if r.Name == name {
			return r
		}
	}
	var names []string
	for _, r := range d.ofType(typ) {
		names = append(names, r.Name)
	}
	t.Fatalf("no %s named %s (have %v)", typ, name, names)
	return recorded{}
}

func (d *deployment) invokes(token string) []invoke {
	return where(d.calls, func(c invoke) bool { return c.Token == token })
}

// plain strips secret markers, for comparing values.
func plain(v resource.PropertyValue) resource.PropertyValue {
	switch {
	case v.IsSecret():
		return plain(v.SecretValue().Element)
	case v.IsArray():
		var out []resource.PropertyValue
		for _, e := range v.ArrayValue() {
			out = append(out, plain(e))
		}
		return resource.NewProperty(out)
	case v.IsObject():
		m := resource.PropertyMap{}
		for k, e := range v.ObjectValue() {
			m[k] = plain(e)
		}
		return resource.NewProperty(m)
	}
	return v
}

// get walks a path of keys and indexes ("rootBlockDevice", "encrypted").
func get(t *testing.T, r recorded, path ...any) resource.PropertyValue {
	t.Helper()
	v := resource.NewProperty(r.Inputs)
	for _, p := range path {
		for v.IsSecret() {
			v = v.SecretValue().Element
		}
		switch p := p.(type) {
		case string:
			if !v.IsObject() {
				t.Fatalf("%s %s: %v is not an object at %q", r.Type, r.Name, v, p)
			}
			v = v.ObjectValue()[resource.PropertyKey(p)]
		case int:
			if !v.IsArray() || p >= len(v.ArrayValue()) {
				t.Fatalf("%s %s: no element %d in %v", r.Type, r.Name, p, v)
			}
			v = v.ArrayValue()[p]
		}
	}
	return v
}

// items is the list at path; an absent list is empty.
func items(t *testing.T, r recorded, path ...any) []resource.PropertyValue {
	t.Helper()
	v := plain(get(t, r, path...))
	switch {
	case v.IsNull():
		return nil
	case !v.IsArray():
		t.Fatalf("%s %s: %v is not a list: %v", r.Type, r.Name, path, v)
	}
	return v.ArrayValue()
}

func getString(t *testing.T, r recorded, path ...any) string {
	t.Helper()
	v := plain(get(t, r, path...))
	if !v.IsString() {
		t.Fatalf("%s %s: %v is not a string: %v", r.Type, r.Name, path, v)
	}
	return v.StringValue()
}

func getStrings(t *testing.T, r recorded, path ...any) []string {
	t.Helper()
	v := plain(get(t, r, path...))
	if v.IsNull() {
		return nil
	}
	if !v.IsArray() {
		t.Fatalf("%s %s: %v is not a list: %v", r.Type, r.Name, path, v)
	}
	var out []string
	for _, e := range v.ArrayValue() {
		out = append(out, e.StringValue())
	}
	return out
}
