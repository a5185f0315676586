package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/config"
	"gopkg.in/yaml.v3"

	"github.com/relaygate/relaygate/infra/internal/stackconfig"
)

// The outputs the smoke test reads (SPEC.md), exactly.
var specOutputs = []string{
	"expectedGpuCount", "gatewayApiKey", "gatewayUrl", "hosts", "imageRef",
	"instanceIds", "latencyBudgetP95Ms", "ledgerEnabled", "prometheusUrl", "selfHostedModel", "selfHostedUpstream",
}

const (
	typeInstance      = "aws:ec2/instance:Instance"
	typeSecurityGroup = "aws:ec2/securityGroup:SecurityGroup"
	typeSubnet        = "aws:ec2/subnet:Subnet"
	typeContainer     = "docker:index/container:Container"
	typeRemoteImage   = "docker:index/remoteImage:RemoteImage"
	typeImage         = "docker:index/image:Image"
	typeDockerProv    = "pulumi:providers:docker"
	typeReady         = "command:remote:Command"
	typeALB           = "aws:lb/loadBalancer:LoadBalancer"
	typeTargetGroup   = "aws:lb/targetGroup:TargetGroup"
	typeTGAttachment  = "aws:lb/targetGroupAttachment:TargetGroupAttachment"
	typeListener      = "aws:lb/listener:Listener"
	typeReplGroup     = "aws:elasticache/replicationGroup:ReplicationGroup"
	typeCacheSubnets  = "aws:elasticache/subnetGroup:SubnetGroup"
	typeNetwork       = "docker:index/network:Network"
	typeVolume        = "docker:index/volume:Volume"
	typeDNSRecord     = "aws:route53/record:Record"
	typeRDSInstance   = "aws:rds/instance:Instance"
	typeRDSSubnets    = "aws:rds/subnetGroup:SubnetGroup"

	// instanceLabel is the label (and pull trigger) that ties a Docker
	// resource to the EC2 instance it runs on.
	instanceLabel = "relaygate.instance-id"

	invokeECRImage   = "aws:ecr/getImage:getImage"
	invokeLocalImage = "docker:index/getRemoteImage:getRemoteImage"
)

func TestProjectDeclaresEveryKeyTheProgramReads(t *testing.T) {
	t.Parallel()
	proj := loadProject(t)
	declared := slices.Sorted(maps.Keys(proj.Config))
	read := slices.Sorted(slices.Values(stackconfig.Keys))
	if !slices.Equal(declared, read) {
		t.Errorf("Pulumi.yaml declares %v\nthe program reads %v", declared, read)
	}
	for _, k := range stackconfig.OptionalSecretKeys {
		if _, ok := proj.Config[k]; ok {
			t.Errorf("Pulumi.yaml declares the optional secret %s: the CLI would then demand it in every stack", k)
		}
	}
	for k := range stackconfig.RenamedKeys {
		if _, ok := proj.Config[k]; ok {
			t.Errorf("Pulumi.yaml still declares %s, which the program no longer reads", k)
		}
	}
	for k, typ := range proj.Config {
		// The CLI merges a default as plain text, then refuses it for a
		// secret key ("must be encrypted as it's secret").
		if typ.Secret && (typ.Default != nil || typ.Value != nil) {
			t.Errorf("Pulumi.yaml gives the secret %s a default, which the CLI refuses in every stack that does not set it", k)
		}
	}
	if !proj.Config["gatewayApiKey"].Secret {
		t.Error("gatewayApiKey is not declared secret: true")
	}
	if proj.Runtime.Name() != "go" || proj.Main != "infra/" || proj.Name != "relaygate" {
		t.Errorf("project %s, runtime %s, main %s", proj.Name, proj.Runtime.Name(), proj.Main)
	}
}

// secretish matches the config keys that hold secrets.
var secretish = regexp.MustCompile(`(?i)(api_?key|token|password|secret|private|webhook)`)

// plainSecrets lists, as dotted paths, the values of a stack file under a
// secret-looking key that are not encrypted. An encrypted value is what
// `pulumi config set --secret` writes, a map {secure: <ciphertext>}; in a
// structured value (`--secret --path`) every leaf must be one.
func plainSecrets(stackFile []byte) ([]string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(stackFile, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: a stack file is a map", root.Line)
	}
	var found []string
	var walk func(path string, n *yaml.Node, secret bool)
	walk = func(path string, n *yaml.Node, secret bool) {
		switch {
		case n.Kind == yaml.AliasNode:
			walk(path, n.Alias, secret)
		case n.Kind == yaml.MappingNode && len(n.Content) == 2 && n.Content[0].Value == "secure":
			if v := n.Content[1]; v.Kind != yaml.ScalarNode || v.Value == "" {
				found = append(found, path)
			}
		case n.Kind == yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				walk(strings.TrimPrefix(path+"."+k, "."), n.Content[i+1], secret || secretish.MatchString(k))
			}
		case n.Kind == yaml.SequenceNode:
			for i, e := range n.Content {
				walk(fmt.Sprintf("%s[%d]", path, i), e, secret)
			}
		case secret:
			found = append(found, path)
		}
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "config" {
			walk("", root.Content[i+1], false)
		}
	}
	return found, nil
}

func TestPlainSecrets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, file string
		want       []string
	}{
		{"plain API key", "config:\n  relaygate:openaiApiKey: sk-plain\n", []string{"relaygate:openaiApiKey"}},
		{"encrypted API key", "config:\n  relaygate:openaiApiKey:\n    secure: AAABAJb0ciphertext\n", nil},
		{"plain webhook", "config:\n  relaygate:alertWebhookUrl: https://hooks.example.com/T0/B0/x\n", []string{"relaygate:alertWebhookUrl"}},
		{"encrypted webhook", "config:\n  relaygate:alertWebhookUrl: {secure: AAABAKc1}\n", nil},
		{"empty plain token", "config:\n  relaygate:apiToken: \"\"\n", []string{"relaygate:apiToken"}},
		{"empty ciphertext", "config:\n  relaygate:gatewayApiKey: {secure: \"\"}\n", []string{"relaygate:gatewayApiKey"}},
		{"secure beside another field", "config:\n  relaygate:gatewayApiKey: {secure: AAAB, plain: x}\n", []string{"relaygate:gatewayApiKey.secure", "relaygate:gatewayApiKey.plain"}},
		{"plain leaf of a structured secret", "config:\n  relaygate:dbPassword: {primary: {secure: AAAB}, replica: hunter2}\n", []string{"relaygate:dbPassword.replica"}},
		{"plain secret nested in a value", "config:\n  relaygate:upstreams:\n    - name: x\n      token: t0k3n\n", []string{"relaygate:upstreams[0].token"}},
		{"encrypted list items", "config:\n  relaygate:tokens:\n    - secure: AAAB\n    - secure: AAAC\n", nil},
		{"a private key", "config:\n  relaygate:sshPrivateKey: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n", []string{"relaygate:sshPrivateKey"}},
		{"ordinary values", "config:\n  aws:region: us-east-1\n  relaygate:sshPublicKey: ssh-ed25519 AAAA ops\n  relaygate:allowedCidrs: []\n", nil},
		{"secret-looking text outside config", "encryptionsalt: v1:abc\nsecretsprovider: passphrase\nconfig: {}\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := plainSecrets([]byte(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("plainSecrets = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestStackFilesHoldNoSecrets reads the committed stack files: a secret
// may be there only encrypted, as `pulumi config set --secret` writes it.
func TestStackFilesHoldNoSecrets(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "Pulumi.*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, stack := range []string{"dev", "prod", "local"} {
		if !slices.Contains(files, filepath.Join(repoRoot(t), "Pulumi."+stack+".yaml")) {
			t.Errorf("Pulumi.%s.yaml is missing", stack)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		found, err := plainSecrets(b)
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(f), err)
		}
		for _, k := range found {
			t.Errorf("%s holds %s in plain text; remove it, rotate it, and set it with `pulumi config set --secret`", filepath.Base(f), k)
		}
	}
}

// TestCommittedSecretsReachTheProgram: a secret committed encrypted that
// the operator's settings do not cover is set and secret, and the
// operator's settings win over the committed ones.
func TestCommittedSecretsReachTheProgram(t *testing.T) {
	t.Parallel()
	key := func(k string) config.Key { return config.MustMakeKey("relaygate", k) }
	stackFile := config.Map{
		key("alertWebhookUrl"): config.NewSecureValue("AAABAcommitted"),
		key("gatewayApiKey"):   config.NewSecureValue("AAABBcommitted"),
		key("openaiApiKey"):    config.NewSecureValue("AAABCcommitted"),
		key("instanceType"):    config.NewValue("g5.xlarge"),
	}
	got := withCommittedSecrets(stackFile, map[string]setting{
		"relaygate:gatewayApiKey": {value: fakeGatewayKey, secret: true},
		"relaygate:openaiApiKey":  {unset: true},
	})
	want := map[string]setting{
		"relaygate:alertWebhookUrl": {value: committedSecret, secret: true},
		"relaygate:gatewayApiKey":   {value: fakeGatewayKey, secret: true},
		"relaygate:openaiApiKey":    {unset: true},
	}
	if !maps.Equal(got, want) {
		t.Errorf("withCommittedSecrets = %+v, want %+v", got, want)
	}
}

func TestDevStack(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "dev", "aws", nil)
	checkOutputs(t, d)
	checkGPUHosts(t, d, 1)
	checkSecurityGroups(t, d)
	checkImage(t, d, true)
	checkHostContainers(t, d, 1, false)
	checkInstanceBound(t, d, 1, false)

	if n := len(d.ofType(typeALB)) + len(d.ofType(typeReplGroup)); n != 0 {
		t.Errorf("dev created %d load balancer/managed Redis resources", n)
	}
	ip := toStrings(t, d.outputs["hosts"].Value)[0]
	if got, want := d.outputs["gatewayUrl"].Value, "http://"+ip+":8000"; got != want {
		t.Errorf("gatewayUrl = %v, want %s", got, want)
	}
}

func TestProdStack(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "prod", "aws", nil)
	hosts := intValue(t, d.values["relaygate:hostCount"])
	if hosts < 2 {
		t.Fatalf("Pulumi.prod.yaml has hostCount %d; prod scales out", hosts)
	}
	checkOutputs(t, d)
	checkGPUHosts(t, d, hosts)
	checkSecurityGroups(t, d)
	checkImage(t, d, true)
	checkHostContainers(t, d, hosts, true)
	checkInstanceBound(t, d, hosts, true)

	// Hosts spread over availability zones.
	zoneOf := map[string]string{}
	for _, s := range d.ofType(typeSubnet) {
		zoneOf[s.Name+"-id"] = getString(t, s, "availabilityZone")
	}
	zones := map[string]bool{}
	for _, inst := range d.ofType(typeInstance) {
		zones[zoneOf[getString(t, inst, "subnetId")]] = true
	}
	if len(zones) != min(hosts, 4) {
		t.Errorf("%d hosts are in zones %v", hosts, zones)
	}

	// The load balancer: /ready health checks, every host attached.
	albs := d.ofType(typeALB)
	if len(albs) != 1 {
		t.Fatalf("%d load balancers", len(albs))
	}
	alb := albs[0]
	if getString(t, alb, "loadBalancerType") != "application" || !get(t, alb, "enableDeletionProtection").BoolValue() {
		t.Errorf("load balancer inputs: %v", alb.Inputs)
	}
	if subnets := getStrings(t, alb, "subnets"); len(subnets) < 2 {
		t.Errorf("load balancer subnets = %v", subnets)
	}
	tg := d.ofType(typeTargetGroup)[0]
	if getString(t, tg, "healthCheck", "path") != "/ready" || get(t, tg, "port").NumberValue() != 8000 {
		t.Errorf("target group: %v", tg.Inputs)
	}
	var attached []string
	for _, a := range d.ofType(typeTGAttachment) {
		attached = append(attached, getString(t, a, "targetId"))
	}
	slices.Sort(attached)
	instanceIDs := toStrings(t, d.outputs["instanceIds"].Value)
	slices.Sort(instanceIDs)
	if !slices.Equal(attached, instanceIDs) {
		t.Errorf("attached %v, instances %v", attached, instanceIDs)
	}
	if got := d.outputs["gatewayUrl"].Value; got != "http://"+getDNS(d) {
		t.Errorf("gatewayUrl = %v, want the load balancer", got)
	}
	if n := len(d.ofType(typeDNSRecord)); n != 0 {
		t.Errorf("%d DNS records without hostedZoneId", n)
	}

	// The shared Redis: encrypted, private, reachable from the hosts only.
	rgs := d.ofType(typeReplGroup)
	if len(rgs) != 1 {
		t.Fatalf("%d replication groups", len(rgs))
	}
	rg := rgs[0]
	for _, k := range []string{"atRestEncryptionEnabled", "transitEncryptionEnabled", "automaticFailoverEnabled", "multiAzEnabled"} {
		if !get(t, rg, k).BoolValue() {
			t.Errorf("replication group %s is not on", k)
		}
	}
	if getString(t, rg, "finalSnapshotIdentifier") == "" {
		t.Error("replication group takes no final snapshot despite deletionProtection")
	}
	cacheSubnets := getStrings(t, d.ofType(typeCacheSubnets)[0], "subnetIds")
	for _, id := range cacheSubnets {
		if !strings.Contains(id, "-private-") {
			t.Errorf("the cache is in a public subnet: %s", id)
		}
	}
	cacheSG := d.named(t, typeSecurityGroup, "relaygate-prod-cache")
	for _, r := range ingressRules(t, cacheSG) {
		if len(r.cidrs) != 0 || len(r.groups) != 1 || r.groups[0] != "relaygate-prod-hosts-id" || r.from != 6379 {
			t.Errorf("cache security group admits %+v", r)
		}
	}
	if sgs := getStrings(t, rg, "securityGroupIds"); !slices.Equal(sgs, []string{"relaygate-prod-cache-id"}) {
		t.Errorf("replication group security groups = %v", sgs)
	}
	yamlText := gatewayYAML(t, d.named(t, typeContainer, "relaygate-prod-host-0-gateway"))
	if !strings.Contains(yamlText, "redis_url: rediss://master.relaygate-prod.") {
		t.Errorf("the gateway does not use the shared Redis over TLS:\n%s", yamlText)
	}
	// The hosts' gateway port is for the load balancer only.
	for _, r := range ingressRules(t, d.named(t, typeSecurityGroup, "relaygate-prod-hosts")) {
		if r.from == 8000 && (len(r.cidrs) != 0 || !slices.Equal(r.groups, []string{"relaygate-prod-lb-id"})) {
			t.Errorf("hosts' gateway port admits %+v, want only the load balancer", r)
		}
	}
}

func TestLocalStack(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "local", "local", nil)
	checkOutputs(t, d)
	for _, r := range d.res {
		if strings.HasPrefix(r.Type, "aws:") || r.Type == "pulumi:providers:aws" || strings.HasPrefix(r.Type, "command:") {
			t.Errorf("local created %s %s", r.Type, r.Name)
		}
	}
	for _, c := range d.calls {
		if strings.HasPrefix(c.Token, "aws:") {
			t.Errorf("local called %s", c.Token)
		}
	}
	if ids := toStrings(t, d.outputs["instanceIds"].Value); len(ids) != 0 {
		t.Errorf("instanceIds = %v, want []", ids)
	}
	if got := toStrings(t, d.outputs["hosts"].Value); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Errorf("hosts = %v", got)
	}
	if d.outputs["gatewayUrl"].Value != "http://127.0.0.1:8000" || d.outputs["prometheusUrl"].Value != "http://127.0.0.1:9090" {
		t.Errorf("URLs = %v, %v", d.outputs["gatewayUrl"].Value, d.outputs["prometheusUrl"].Value)
	}
	checkImage(t, d, false)

	// No instance: the local engine's resources keep the inputs they had.
	for _, typ := range []string{typeContainer, typeNetwork, typeVolume, typeRemoteImage} {
		for _, r := range d.ofType(typ) {
			if _, ok := labelsOf(t, r)[instanceLabel]; ok || !get(t, r, "triggers").IsNull() || r.DeletedWith != "" {
				t.Errorf("local %s %s is tied to an instance: labels %v, triggers %v, deletedWith %q",
					typ, r.Name, get(t, r, "labels"), get(t, r, "triggers"), r.DeletedWith)
			}
		}
	}

	gw := d.named(t, typeContainer, "relaygate-local-gateway")
	if getString(t, gw, "image") != d.outputs["imageRef"].Value {
		t.Errorf("gateway image %s is not the built image %v", getString(t, gw, "image"), d.outputs["imageRef"].Value)
	}
	if !get(t, gw, "gpus").IsNull() {
		t.Errorf("gateway asks for GPUs although Pulumi.local.yaml has localGpu false: %v", get(t, gw, "gpus"))
	}
	for _, c := range d.ofType(typeContainer) {
		for _, p := range items(t, c, "ports") {
			if ip := p.ObjectValue()["ip"].StringValue(); ip != "127.0.0.1" {
				t.Errorf("%s publishes on %s, want 127.0.0.1", c.Name, ip)
			}
		}
	}
	checkSecretEnv(t, gw, map[string]string{"GATEWAY_API_KEY": fakeGatewayKey}, []string{"HOLYSHEEP_API_KEY", "OPENAI_API_KEY"})
	checkRedis(t, d, "relaygate-local-redis")

	// Pulumi.local.yaml turns the simulator on, explicitly.
	if d.values["relaygate:upstreamSimulator"] != "true" {
		t.Fatal("Pulumi.local.yaml no longer turns the simulator on; update this test")
	}
	sim := d.named(t, typeContainer, "relaygate-local-upstream-sim")
	if ep := getStrings(t, sim, "entrypoints"); !slices.Equal(ep, []string{"/usr/local/bin/upstream-sim"}) {
		t.Errorf("simulator entrypoint = %v", ep)
	}
	if y := gatewayYAML(t, gw); !strings.Contains(y, "base_url: http://upstream-sim:9000/v1") {
		t.Errorf("gateway config does not route to the simulator:\n%s", y)
	}
}

func TestLocalStackWithGPU(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "local", "local", map[string]setting{
		"relaygate:localGpu":         {value: "true"},
		"relaygate:expectedGpuCount": {value: "2"},
	})
	if g := getString(t, d.named(t, typeContainer, "relaygate-local-gateway"), "gpus"); g != "all" {
		t.Errorf("gpus = %q", g)
	}
	if d.outputs["expectedGpuCount"].Value != 2 {
		t.Errorf("expectedGpuCount = %v", d.outputs["expectedGpuCount"].Value)
	}
}

func TestProdWithTLS(t *testing.T) {
	t.Parallel()
	const (
		cert   = "arn:aws:acm:us-east-1:123456789012:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
		domain = "gateway.example.com"
		zone   = "Z0123456789ABCDEFGHIJ"
	)
	d := mustRun(t, "prod", "aws", map[string]setting{
		"relaygate:tlsCertificateArn": {value: cert},
		"relaygate:domainName":        {value: domain},
		"relaygate:hostedZoneId":      {value: zone},
	})
	listeners := map[int]recorded{}
	for _, l := range d.ofType(typeListener) {
		listeners[int(get(t, l, "port").NumberValue())] = l
	}
	https, ok := listeners[443]
	if !ok || getString(t, https, "protocol") != "HTTPS" || getString(t, https, "certificateArn") != cert ||
		getString(t, https, "defaultActions", 0, "type") != "forward" {
		t.Errorf("HTTPS listener: %v", https.Inputs)
	}
	if http := listeners[80]; getString(t, http, "defaultActions", 0, "type") != "redirect" ||
		getString(t, http, "defaultActions", 0, "redirect", "protocol") != "HTTPS" {
		t.Errorf("port 80 does not redirect to HTTPS: %v", http.Inputs)
	}
	// Clients use the certificate's name, never the load balancer's own.
	if u, _ := d.outputs["gatewayUrl"].Value.(string); u != "https://"+domain {
		t.Errorf("gatewayUrl = %q, want https://%s", u, domain)
	}
	ports := map[int]bool{}
	for _, r := range ingressRules(t, d.named(t, typeSecurityGroup, "relaygate-prod-lb")) {
		ports[r.from] = true
	}
	if !ports[80] || !ports[443] || len(ports) != 2 {
		t.Errorf("load balancer security group ports = %v", ports)
	}

	// The alias record in the operator's zone points at the load balancer.
	records := d.ofType(typeDNSRecord)
	if len(records) != 1 {
		t.Fatalf("%d DNS records, want 1", len(records))
	}
	rec := records[0]
	if getString(t, rec, "zoneId") != zone || getString(t, rec, "name") != domain || getString(t, rec, "type") != "A" {
		t.Errorf("DNS record: zone %s, name %s, type %s", getString(t, rec, "zoneId"), getString(t, rec, "name"), getString(t, rec, "type"))
	}
	if aliases := items(t, rec, "aliases"); len(aliases) != 1 ||
		getString(t, rec, "aliases", 0, "name") != getDNS(d) || getString(t, rec, "aliases", 0, "zoneId") != albZoneID {
		t.Errorf("DNS record aliases = %v, want the load balancer %s in zone %s", get(t, rec, "aliases"), getDNS(d), albZoneID)
	}
	if len(items(t, rec, "records")) != 0 || !get(t, rec, "ttl").IsNull() {
		t.Errorf("an alias record has records %v / ttl %v", get(t, rec, "records"), get(t, rec, "ttl"))
	}

	// Without a hosted zone the operator creates the record: the URL still
	// uses the domain and no record is made.
	d = mustRun(t, "prod", "aws", map[string]setting{
		"relaygate:tlsCertificateArn": {value: cert},
		"relaygate:domainName":        {value: domain},
	})
	if u, _ := d.outputs["gatewayUrl"].Value.(string); u != "https://"+domain {
		t.Errorf("without hostedZoneId: gatewayUrl = %q, want https://%s", u, domain)
	}
	if n := len(d.ofType(typeDNSRecord)); n != 0 {
		t.Errorf("without hostedZoneId: %d DNS records", n)
	}
}

// TestPublicGateway opens the gateway to the internet: only the gateway
// port may then admit 0.0.0.0/0.
func TestPublicGateway(t *testing.T) {
	t.Parallel()
	for _, stack := range []string{"dev", "prod"} {
		t.Run(stack, func(t *testing.T) {
			t.Parallel()
			d := mustRun(t, stack, "aws", map[string]setting{"relaygate:allowedCidrs": {value: `["0.0.0.0/0"]`}})
			open := 0
			for _, sg := range d.ofType(typeSecurityGroup) {
				for _, r := range ingressRules(t, sg) {
					if !slices.Contains(r.cidrs, "0.0.0.0/0") {
						continue
					}
					open++
					public := r.from == 8000 && r.to == 8000 && stack == "dev" ||
						(r.from == 80 || r.from == 443) && r.from == r.to && sg.Name == "relaygate-prod-lb"
					if !public {
						t.Errorf("%s opens %d-%d to the internet", sg.Name, r.from, r.to)
					}
				}
			}
			if open == 0 {
				t.Error("allowedCidrs 0.0.0.0/0 opened nothing")
			}
		})
	}
}

func TestBrokenConfigFails(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		stack   string
		changes map[string]setting
		want    string
	}{
		{"missing operator networks", "dev", map[string]setting{"relaygate:operatorCidrs": {unset: true}}, "relaygate:operatorCidrs: is empty"},
		{"bad CIDR", "dev", map[string]setting{"relaygate:operatorCidrs": {value: `["198.51.100.7/33"]`}}, "relaygate:operatorCidrs[0]: \"198.51.100.7/33\" is not a CIDR block"},
		{"operator network open to the world", "prod", map[string]setting{"relaygate:operatorCidrs": {value: `["` + fakeOperatorCIDR + `", "0.0.0.0/0"]`}}, "relaygate:operatorCidrs[1]: is 0.0.0.0/0"},
		{"the old single operator network", "dev", map[string]setting{"relaygate:operatorCidr": {value: fakeOperatorCIDR}}, "relaygate:operatorCidr: is no longer read; it was replaced by operatorCidrs"},
		{"alert webhook in plain text", "dev", map[string]setting{"relaygate:alertWebhookUrl": {value: "https://hooks.example.com/T0/B0/" + fakeHolysheepKey}}, "relaygate:alertWebhookUrl: is stored in plain text"},
		{"bad allowed CIDR", "prod", map[string]setting{"relaygate:allowedCidrs": {value: `["10.0.0.0/8","everyone"]`}}, "relaygate:allowedCidrs[1]"},
		{"zero hosts", "prod", map[string]setting{"relaygate:hostCount": {value: "0"}}, "relaygate:hostCount: must be at least 1, got 0"},
		{"upstream key missing", "prod", map[string]setting{"relaygate:openaiApiKey": {unset: true}}, "relaygate:openaiApiKey: is not set"},
		{"upstream key in plain text", "dev", map[string]setting{"relaygate:holysheepApiKey": {value: fakeHolysheepKey}}, "relaygate:holysheepApiKey: is stored in plain text"},
		{"simulator in production", "prod", map[string]setting{"relaygate:upstreamSimulator": {value: "true"}}, "relaygate:upstreamSimulator: is a test tool"},
		{"certificate without a domain name", "prod", map[string]setting{
			"relaygate:tlsCertificateArn": {value: "arn:aws:acm:us-east-1:123456789012:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"},
		}, "relaygate:domainName: is not set but tlsCertificateArn is"},
		{"V100 hosts", "dev", map[string]setting{"relaygate:instanceType": {value: "p3.2xlarge"}}, "relaygate:instanceType: \"p3.2xlarge\" is not supported: its V100 GPUs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := run(t, tt.stack, "aws", tt.changes)
			if err == nil {
				t.Fatal("the program accepted the configuration")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error does not name the problem %q:\n%v", tt.want, err)
			}
			if len(d.res) > 0 {
				t.Errorf("the program registered %d resources before failing", len(d.res))
			}
			if strings.Contains(err.Error(), fakeHolysheepKey) {
				t.Error("the error shows a secret")
			}
		})
	}

	// A key deleted from the merged configuration: a damaged project file.
	values, secrets, err := stackConfig(t, "dev", operatorSettings("aws"))
	if err != nil {
		t.Fatal(err)
	}
	delete(values, "relaygate:instanceType")
	if _, err := runWith(t, "dev", values, secrets); err == nil || !strings.Contains(err.Error(), "relaygate:instanceType: is not set") {
		t.Errorf("missing instanceType: %v", err)
	}
}

// TestCLIRefuses: what the project schema makes the CLI refuse before the
// program runs.
func TestCLIRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, stack, target string
		changes             map[string]setting
		want                string
	}{
		{"plain gateway key", "local", "local", map[string]setting{"relaygate:gatewayApiKey": {value: fakeGatewayKey}},
			"'gatewayApiKey' must be encrypted"},
		{"missing gateway key", "local", "local", map[string]setting{"relaygate:gatewayApiKey": {unset: true}},
			"is missing configuration value 'gatewayApiKey'"},
		{"operator networks as one string", "dev", "aws", map[string]setting{"relaygate:operatorCidrs": {value: fakeOperatorCIDR}},
			"'operatorCidrs' must be of type 'array<string>'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := operatorSettings(tt.target)
			maps.Copy(s, tt.changes)
			if _, _, err := stackConfig(t, tt.stack, s); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func checkOutputs(t *testing.T, d *deployment) {
	t.Helper()
	if got := slices.Sorted(maps.Keys(d.outputs)); !slices.Equal(got, specOutputs) {
		t.Errorf("outputs = %v, want %v", got, specOutputs)
	}
	key := d.outputs["gatewayApiKey"]
	if !key.Secret || key.Value != fakeGatewayKey {
		t.Errorf("gatewayApiKey: secret %t, value is the configured key: %t", key.Secret, key.Value == fakeGatewayKey)
	}
	for name, o := range d.outputs {
		if name != "gatewayApiKey" && o.Secret {
			t.Errorf("output %s is secret; the smoke test reads it as plain", name)
		}
		if s := fmt.Sprint(o.Value); name != "gatewayApiKey" && strings.Contains(s, fakeGatewayKey) {
			t.Errorf("output %s contains the gateway key", name)
		}
		if s := fmt.Sprint(o.Value); strings.Contains(s, fakeLedgerPassword) || strings.Contains(s, "postgres://") {
			t.Errorf("output %s contains the ledger database's password or URL", name)
		}
	}
	if want := intValue(t, d.values["relaygate:expectedGpuCount"]); d.outputs["expectedGpuCount"].Value != want {
		t.Errorf("expectedGpuCount = %v, want %v", d.outputs["expectedGpuCount"].Value, want)
	}
	if want := intValue(t, d.values["relaygate:latencyBudgetP95Ms"]); d.outputs["latencyBudgetP95Ms"].Value != want {
		t.Errorf("latencyBudgetP95Ms = %v, want %v", d.outputs["latencyBudgetP95Ms"].Value, want)
	}
	if ref, _ := d.outputs["imageRef"].Value.(string); !strings.Contains(ref, "sha256:") {
		t.Errorf("imageRef %q is not a digest", ref)
	}
	for _, u := range []string{"gatewayUrl", "prometheusUrl"} {
		if s, _ := d.outputs[u].Value.(string); !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
			t.Errorf("%s = %q", u, s)
		}
	}
}

func checkGPUHosts(t *testing.T, d *deployment, want int) {
	t.Helper()
	insts := d.ofType(typeInstance)
	if len(insts) != want {
		t.Fatalf("%d instances, want %d", len(insts), want)
	}
	amis := d.invokes("aws:ec2/getAmi:getAmi")
	if len(amis) != 1 {
		t.Fatalf("%d AMI lookups, want 1", len(amis))
	}
	lookup := recorded{Type: "getAmi", Inputs: amis[0].Args}
	if !get(t, lookup, "mostRecent").BoolValue() || !slices.Equal(getStrings(t, lookup, "owners"), []string{d.values["relaygate:amiOwner"]}) {
		t.Errorf("AMI lookup: %v", amis[0].Args)
	}
	filters := map[string][]string{}
	for i := range items(t, lookup, "filters") {
		filters[getString(t, lookup, "filters", i, "name")] = getStrings(t, lookup, "filters", i, "values")
	}
	if !slices.Equal(filters["name"], []string{d.values["relaygate:amiNamePattern"]}) || !slices.Equal(filters["architecture"], []string{"x86_64"}) {
		t.Errorf("AMI filters = %v", filters)
	}

	var hosts []string
	for _, inst := range insts {
		if got, want := getString(t, inst, "instanceType"), d.values["relaygate:instanceType"]; got != want {
			t.Errorf("%s: instance type %s, want %s", inst.Name, got, want)
		}
		if ami := getString(t, inst, "ami"); ami != fakeAMI {
			t.Errorf("%s: AMI %s is not the looked-up %s", inst.Name, ami, fakeAMI)
		}
		if tokens := getString(t, inst, "metadataOptions", "httpTokens"); tokens != "required" {
			t.Errorf("%s: IMDS httpTokens %q, want required (IMDSv2)", inst.Name, tokens)
		}
		if !get(t, inst, "rootBlockDevice", "encrypted").BoolValue() || getString(t, inst, "rootBlockDevice", "volumeType") != "gp3" {
			t.Errorf("%s: root volume %v", inst.Name, get(t, inst, "rootBlockDevice"))
		}
		ud := getString(t, inst, "userData")
		for _, want := range []string{
			"export RELAYGATE_EXPECTED_GPUS=" + d.values["relaygate:expectedGpuCount"] + "\n",
			"nvidia-ctk runtime configure --runtime=docker",
			"docker run --rm --gpus all",
		} {
			if !strings.Contains(ud, want) {
				t.Errorf("%s: user data lacks %q", inst.Name, want)
			}
		}
		if getString(t, inst, "iamInstanceProfile") == "" || getString(t, inst, "keyName") == "" {
			t.Errorf("%s: no instance profile or key pair", inst.Name)
		}
		hosts = append(hosts, inst.Name)
	}

	var policies []string
	for _, a := range d.ofType("aws:iam/rolePolicyAttachment:RolePolicyAttachment") {
		policies = append(policies, getString(t, a, "policyArn"))
	}
	slices.Sort(policies)
	if want := []string{"arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly", "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}; !slices.Equal(policies, want) {
		t.Errorf("role policies = %v, want %v", policies, want)
	}

	// Every host waits for cloud-init before its Docker provider is used.
	for _, h := range hosts {
		ready := d.named(t, typeReady, h+"-ready")
		if !strings.Contains(getString(t, ready, "create"), "cloud-init status --wait") {
			t.Errorf("%s: readiness check does not wait for cloud-init", h)
		}
		prov := d.named(t, typeDockerProv, h+"-docker")
		if host := getString(t, prov, "host"); !regexp.MustCompile(`^ssh://ubuntu@198\.51\.100\.\d+$`).MatchString(host) {
			t.Errorf("%s: docker host %q", h, host)
		}
		if !dependsOn(prov, typeReady, h+"-ready") {
			t.Errorf("%s: the Docker provider does not depend on the readiness check: %v", h, prov.Deps)
		}
	}
	if got := len(toStrings(t, d.outputs["hosts"].Value)); got != want {
		t.Errorf("hosts output has %d addresses, want %d", got, want)
	}
	if got := len(toStrings(t, d.outputs["instanceIds"].Value)); got != want {
		t.Errorf("instanceIds output has %d IDs, want %d", got, want)
	}
}

// checkInstanceBound: every Docker resource on a host is tied to that
// host's EC2 instance, so a replaced instance (a new, empty engine behind
// the same provider) gets all of them created again: networks, volumes and
// containers carry the instance ID as a label (a changed label forces a
// replacement), pulled images have it as a trigger, and all of them go with
// the instance when it is deleted.
func checkInstanceBound(t *testing.T, d *deployment, hosts int, managedRedis bool) {
	t.Helper()
	ids := toStrings(t, d.outputs["instanceIds"].Value)
	if len(ids) != hosts {
		t.Fatalf("instanceIds = %v, want %d", ids, hosts)
	}
	// Per host: network, volumes (Redis unless managed, Prometheus),
	// containers (gateway, Prometheus, Redis unless managed) and pulls.
	want := map[string]int{typeNetwork: 1, typeVolume: 2, typeContainer: 3, typeRemoteImage: 2}
	if managedRedis {
		want = map[string]int{typeNetwork: 1, typeVolume: 1, typeContainer: 2, typeRemoteImage: 1}
	}
	// The model server: its container, weights volume and image.
	if d.outputs["selfHostedModel"].Value != "" {
		for _, typ := range []string{typeVolume, typeContainer, typeRemoteImage} {
			want[typ]++
		}
	}
	// The ledger: the gateway's spill volume; a Postgres container, its
	// data volume and image unless the stack's ledger is RDS.
	if d.outputs["ledgerEnabled"].Value == true {
		want[typeVolume]++
		if len(d.ofType(typeRDSInstance)) == 0 {
			for _, typ := range []string{typeVolume, typeContainer, typeRemoteImage} {
				want[typ]++
			}
		}
	}
	for i, id := range ids {
		h := fmt.Sprintf("relaygate-%s-host-%d", d.stack, i)
		got := map[string]int{}
		for typ := range want {
			for _, r := range d.ofType(typ) {
				if !strings.Contains(r.Provider, "::"+h+"-docker::") {
					continue
				}
				got[typ]++
				if typ == typeRemoteImage {
					if tr := plain(get(t, r, "triggers")); !tr.IsObject() || tr.ObjectValue()[instanceLabel].StringValue() != id {
						t.Errorf("%s: image %s is not triggered by instance %s: triggers %v", h, r.Name, id, tr)
					}
				} else if v := labelsOf(t, r)[instanceLabel]; v != id {
					t.Errorf("%s: %s %s has label %s=%q, want the instance ID %s", h, typ, r.Name, instanceLabel, v, id)
				}
				if !strings.HasSuffix(r.DeletedWith, "::"+h) || !strings.Contains(r.DeletedWith, typeInstance) {
					t.Errorf("%s: %s %s is not deleted with the instance: %q", h, typ, r.Name, r.DeletedWith)
				}
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: Docker resources on the host = %v, want %v", h, got, want)
		}
	}
}

// labelsOf reads a Docker resource's labels ([{label, value}]) as a map.
func labelsOf(t *testing.T, r recorded) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, l := range items(t, r, "labels") {
		m := l.ObjectValue()
		out[m["label"].StringValue()] = m["value"].StringValue()
	}
	return out
}

func dependsOn(r recorded, typ, name string) bool {
	for _, urn := range r.Deps {
		if strings.Contains(urn, typ) && strings.HasSuffix(urn, "::"+name) {
			return true
		}
	}
	return false
}

type rule struct {
	from, to int
	cidrs    []string
	groups   []string
}

func ingressRules(t *testing.T, sg recorded) []rule {
	t.Helper()
	var out []rule
	for i := range items(t, sg, "ingress") {
		out = append(out, rule{
			from:   int(get(t, sg, "ingress", i, "fromPort").NumberValue()),
			to:     int(get(t, sg, "ingress", i, "toPort").NumberValue()),
			cidrs:  getStrings(t, sg, "ingress", i, "cidrBlocks"),
			groups: getStrings(t, sg, "ingress", i, "securityGroups"),
		})
	}
	return out
}

// checkSecurityGroups: with the committed stack files (no public client
// network) nothing is open to the internet, and SSH and Prometheus are open
// to the operator's and the deploy runner's networks only.
func checkSecurityGroups(t *testing.T, d *deployment) {
	t.Helper()
	for _, sg := range d.ofType(typeSecurityGroup) {
		for _, r := range ingressRules(t, sg) {
			if slices.Contains(r.cidrs, "0.0.0.0/0") {
				t.Errorf("%s opens %d to 0.0.0.0/0", sg.Name, r.from)
			}
			if operators := []string{fakeOperatorCIDR, fakeRunnerCIDR}; (r.from == 22 || r.from == 9090) && !slices.Equal(r.cidrs, operators) {
				t.Errorf("%s opens %d to %v, want only operatorCidrs %v", sg.Name, r.from, r.cidrs, operators)
			}
		}
		for i := range items(t, sg, "egress") {
			port := int(get(t, sg, "egress", i, "fromPort").NumberValue())
			cidrs := getStrings(t, sg, "egress", i, "cidrBlocks")
			if slices.Contains(cidrs, "0.0.0.0/0") && port != 443 && port != 80 {
				t.Errorf("%s lets port %d out to the internet", sg.Name, port)
			}
		}
	}
	hosts := d.named(t, typeSecurityGroup, "relaygate-"+d.stack+"-hosts")
	ports := map[int]bool{}
	for _, r := range ingressRules(t, hosts) {
		ports[r.from] = true
	}
	if !ports[22] || !ports[8000] || !ports[9090] || len(ports) != 3 {
		t.Errorf("host security group ports = %v, want 22, 8000, 9090", slices.Sorted(maps.Keys(ports)))
	}
}

// checkImage: built from the repository's Dockerfile for the hosts'
// platform, pushed to ECR with ECR credentials (cloud) or kept local.
func checkImage(t *testing.T, d *deployment, pushed bool) {
	t.Helper()
	imgs := d.ofType(typeImage)
	if len(imgs) != 1 {
		t.Fatalf("%d images built", len(imgs))
	}
	if n := len(d.invokes(invokeECRImage)) + len(d.invokes(invokeLocalImage)); n != 0 {
		t.Errorf("a build also looked up %d existing images", n)
	}
	img := imgs[0]
	if getString(t, img, "build", "dockerfile") != "../Dockerfile" || getString(t, img, "build", "context") != ".." {
		t.Errorf("image build = %v", get(t, img, "build"))
	}
	skip := get(t, img, "skipPush")
	if !pushed {
		if !skip.IsBool() || !skip.BoolValue() {
			t.Error("the local image would be pushed")
		}
		if p := get(t, img, "build", "platform"); !p.IsNull() {
			t.Errorf("the local image is built for %v, not for this machine", p)
		}
		return
	}
	if p := getString(t, img, "build", "platform"); p != "linux/amd64" {
		t.Errorf("the host image is built for %s, want linux/amd64", p)
	}
	if skip.IsBool() && skip.BoolValue() {
		t.Error("the image is not pushed")
	}
	if getString(t, img, "registry", "username") != "AWS" || !strings.HasSuffix(getString(t, img, "registry", "server"), ".amazonaws.com") {
		t.Errorf("registry = %v", get(t, img, "registry"))
	}
	if pw := get(t, img, "registry").ObjectValue()["password"]; !pw.IsSecret() {
		t.Error("the registry password is not secret")
	}
	checkRepository(t, d)
	ref := d.outputs["imageRef"].Value.(string)
	if !strings.Contains(ref, ".dkr.ecr.") || !strings.Contains(ref, "@sha256:") {
		t.Errorf("imageRef %q is not an ECR digest reference", ref)
	}
}

// checkRepository: one ECR repository whose tags cannot move, and the
// lifecycle policy that keeps imageRetainCount images for rollbacks.
func checkRepository(t *testing.T, d *deployment) {
	t.Helper()
	repos := d.ofType("aws:ecr/repository:Repository")
	if len(repos) != 1 || len(d.ofType("aws:ecr/lifecyclePolicy:LifecyclePolicy")) != 1 {
		t.Fatalf("%d ECR repositories, want 1 with a lifecycle policy", len(repos))
	}
	if m := getString(t, repos[0], "imageTagMutability"); m != "IMMUTABLE" {
		t.Errorf("imageTagMutability = %s: a tag could then name another image than the one its update deployed", m)
	}
	policy := getString(t, d.ofType("aws:ecr/lifecyclePolicy:LifecyclePolicy")[0], "policy")
	if !strings.Contains(policy, fmt.Sprintf(`"countNumber":%s`, d.values["relaygate:imageRetainCount"])) {
		t.Errorf("lifecycle policy does not keep imageRetainCount images: %s", policy)
	}
}

// checkHostContainers: on every host the gateway runs the pushed image by
// digest with every GPU, its config uploaded and its secrets in a secret
// environment; Redis runs beside it unless the stack shares a managed one.
func checkHostContainers(t *testing.T, d *deployment, hosts int, managedRedis bool) {
	t.Helper()
	ref := d.outputs["imageRef"].Value.(string)
	for i := range hosts {
		h := fmt.Sprintf("relaygate-%s-host-%d", d.stack, i)
		// The host pulls with its own instance role, over SSH, and the
		// gateway runs the image ID that pull answered.
		pull := d.named(t, typeReady, h+"-pull-gateway")
		script := getString(t, pull, "create")
		if !strings.Contains(script, "ref='"+ref+"'") || !strings.Contains(script, "docker pull") {
			t.Errorf("%s does not pull the digest %s:\n%s", h, ref, script)
		}
		if tr := getStrings(t, pull, "triggers"); len(tr) != 2 || tr[0] != ref || !strings.HasPrefix(tr[1], "i-") {
			t.Errorf("%s: pull triggers %v, want the reference and the instance", h, tr)
		}
		gw := d.named(t, typeContainer, h+"-gateway")
		if img := getString(t, gw, "image"); img != "sha256:"+digest(script) {
			t.Errorf("%s: gateway image %s is not the pulled image", h, img)
		}
		if !strings.Contains(gw.Provider, h+"-docker") {
			t.Errorf("%s: gateway deployed through %q, not the host's provider", h, gw.Provider)
		}
		if g := getString(t, gw, "gpus"); g != "all" {
			t.Errorf("%s: gateway gpus = %q, want all", h, g)
		}
		if tests := getStrings(t, gw, "healthcheck", "tests"); !slices.Contains(tests, "-healthcheck") {
			t.Errorf("%s: gateway health check %v", h, tests)
		}
		if getString(t, gw, "restart") != "unless-stopped" || !get(t, gw, "wait").BoolValue() {
			t.Errorf("%s: restart %q, wait %v", h, getString(t, gw, "restart"), get(t, gw, "wait"))
		}
		// A replaced gateway drains: Docker waits for it instead of
		// killing it, and behind the load balancer it first waits to be
		// taken out (three failed checks 10s apart, plus a margin).
		wantGrace, wantDelay := 70.0, time.Duration(0)
		if d.stack == "prod" {
			wantGrace, wantDelay = 105, 35*time.Second
		}
		if got := get(t, gw, "destroyGraceSeconds").NumberValue(); got != wantGrace {
			t.Errorf("%s: destroyGraceSeconds %v, want %v", h, got, wantGrace)
		}
		checkSecretEnv(t, gw, map[string]string{
			"GATEWAY_API_KEY":   fakeGatewayKey,
			"HOLYSHEEP_API_KEY": fakeHolysheepKey,
			"OPENAI_API_KEY":    fakeOpenAIKey,
		}, nil)
		g := loadGatewayConfig(t, gw)
		if g.ShutdownDelay.D() != wantDelay || g.ShutdownTimeout.D() != time.Minute {
			t.Errorf("%s: the gateway drains with delay %s and timeout %s, want %s and 1m", h, g.ShutdownDelay, g.ShutdownTimeout, wantDelay)
		}
		if !slices.Equal(g.ClientKeys, []string{fakeGatewayKey}) {
			t.Errorf("%s: client_keys is not ${GATEWAY_API_KEY}", h)
		}
		keys := map[string]string{}
		for _, u := range g.Upstreams {
			keys[u.Name] = u.APIKey
		}
		if keys["holysheep"] != fakeHolysheepKey || keys["openai"] != fakeOpenAIKey {
			t.Errorf("%s: the upstreams' keys are not their ${VAR}s", h)
		}
		if got := strconv.Itoa(g.GPU.ExpectedCount); got != d.values["relaygate:expectedGpuCount"] {
			t.Errorf("%s: gpu.expected_count %s, want %s", h, got, d.values["relaygate:expectedGpuCount"])
		}
		if got := strconv.FormatInt(g.SLO.LatencyP95.D().Milliseconds(), 10); got != d.values["relaygate:latencyBudgetP95Ms"] {
			t.Errorf("%s: slo.latency_p95 %sms, want %s", h, got, d.values["relaygate:latencyBudgetP95Ms"])
		}

		prom := d.named(t, typeContainer, h+"-prometheus")
		var files []string
		for j := range items(t, prom, "uploads") {
			files = append(files, getString(t, prom, "uploads", j, "file"))
		}
		for _, want := range []string{"/etc/prometheus/prometheus.yml", "/etc/prometheus/targets/gateway.json"} {
			if !slices.Contains(files, want) {
				t.Errorf("%s: Prometheus uploads %v lack %s", h, files, want)
			}
		}
		if !slices.ContainsFunc(files, func(f string) bool { return strings.HasPrefix(f, "/etc/prometheus/rules/") }) {
			t.Errorf("%s: no alert rules uploaded: %v", h, files)
		}

		hasRedis := slices.ContainsFunc(d.ofType(typeContainer), func(r recorded) bool { return r.Name == h+"-redis" })
		if hasRedis == managedRedis {
			t.Errorf("%s: redis container %t with managed Redis %t", h, hasRedis, managedRedis)
		}
		if hasRedis {
			checkRedis(t, d, h+"-redis")
		}
	}
}

func checkRedis(t *testing.T, d *deployment, name string) {
	t.Helper()
	r := d.named(t, typeContainer, name)
	cmd := strings.Join(getStrings(t, r, "command"), " ")
	if !strings.Contains(cmd, "--appendonly yes") {
		t.Errorf("%s: %q is not append-only", name, cmd)
	}
	if getString(t, r, "volumes", 0, "containerPath") != "/data" {
		t.Errorf("%s: no data volume: %v", name, get(t, r, "volumes"))
	}
	if len(items(t, r, "ports")) != 0 {
		t.Errorf("%s publishes a port", name)
	}
}

// checkSecretEnv: the gateway's environment is secret as a whole and
// carries exactly the wanted values, none of absent; the uploaded config
// carries none of them.
func checkSecretEnv(t *testing.T, gw recorded, want map[string]string, absent []string) {
	t.Helper()
	checkContainerEnv(t, gw, want, absent)
	y := gatewayYAML(t, gw)
	for _, v := range want {
		if strings.Contains(y, v) {
			t.Errorf("%s: the uploaded config contains a secret value", gw.Name)
		}
	}
}

// checkContainerEnv: a container's environment is secret as a whole,
// holds want and none of absent. Values are not printed: they are secrets.
func checkContainerEnv(t *testing.T, c recorded, want map[string]string, absent []string) {
	t.Helper()
	if !c.Inputs["envs"].ContainsSecrets() {
		t.Errorf("%s: the container environment is not secret", c.Name)
	}
	got := map[string]string{}
	for _, e := range getStrings(t, c, "envs") {
		k, v, _ := strings.Cut(e, "=")
		got[k] = v
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s is not the configured value", c.Name, k)
		}
	}
	for _, k := range absent {
		if _, ok := got[k]; ok {
			t.Errorf("%s: %s is set although the stack has no such key", c.Name, k)
		}
	}
}

func gatewayYAML(t *testing.T, gw recorded) string {
	t.Helper()
	if f := getString(t, gw, "uploads", 0, "file"); f != "/etc/relaygate/gateway.yaml" {
		t.Fatalf("%s uploads %s, want the gateway config", gw.Name, f)
	}
	return getString(t, gw, "uploads", 0, "content")
}

func getDNS(d *deployment) string {
	for _, r := range d.res {
		if r.Type == typeALB {
			return r.Name + "-1234567890." + d.region + ".elb.amazonaws.com"
		}
	}
	return ""
}

func toStrings(t *testing.T, v any) []string {
	t.Helper()
	var out []string
	b, _ := json.Marshal(v)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%v is not a list of strings", v)
	}
	return out
}

func intValue(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil {
		t.Fatalf("%q is not a number", s)
	}
	return n
}

// TestAlertsGoToTheWebhook: with alertWebhookUrl, each host runs an
// Alertmanager beside Prometheus, Prometheus sends its alerts there, and the
// webhook URL (its token included) stays secret. Without it, Prometheus
// has no Alertmanager and no Alertmanager runs.
func TestAlertsGoToTheWebhook(t *testing.T) {
	t.Parallel()
	const hook = "https://hooks.example.com/services/T000/B000/s3cr3t-token"
	d := mustRun(t, "prod", "aws", map[string]setting{"relaygate:alertWebhookUrl": {value: hook, secret: true}})
	for i := range 3 {
		h := fmt.Sprintf("relaygate-prod-host-%d", i)
		am := d.named(t, typeContainer, h+"-alertmanager")
		if !am.Inputs["uploads"].ContainsSecrets() {
			t.Errorf("%s: the Alertmanager config, which holds the webhook's token, is not secret", h)
		}
		if c := getString(t, am, "uploads", 0, "content"); !strings.Contains(c, "url: '"+hook+"'") || strings.Contains(c, "placeholder") {
			t.Errorf("%s: the Alertmanager config does not send to the webhook:\n%s", h, c)
		}
		if img := getString(t, d.named(t, typeRemoteImage, h+"-alertmanager"), "name"); img != d.values["relaygate:alertmanagerImage"] || img == "" {
			t.Errorf("%s: pulls Alertmanager %q, want the configured %q", h, img, d.values["relaygate:alertmanagerImage"])
		}
		prom := d.named(t, typeContainer, h+"-prometheus")
		found := false
		for j := range items(t, prom, "uploads") {
			if getString(t, prom, "uploads", j, "file") == "/etc/prometheus/alertmanagers/alertmanager.json" {
				found = true
				if c := getString(t, prom, "uploads", j, "content"); !strings.Contains(c, `"alertmanager:9093"`) {
					t.Errorf("%s: Prometheus's Alertmanager list is %s", h, c)
				}
			}
		}
		if !found {
			t.Errorf("%s: Prometheus is not told about the Alertmanager", h)
		}
	}
	for _, o := range d.outputs {
		if s, ok := o.Value.(string); ok && strings.Contains(s, "s3cr3t-token") {
			t.Error("an output carries the webhook URL")
		}
	}

	plain := mustRun(t, "dev", "aws", nil)
	for _, c := range plain.ofType(typeContainer) {
		if strings.HasSuffix(c.Name, "-alertmanager") {
			t.Errorf("%s runs without alertWebhookUrl", c.Name)
		}
	}
	prom := plain.named(t, typeContainer, "relaygate-dev-host-0-prometheus")
	for j := range items(t, prom, "uploads") {
		if getString(t, prom, "uploads", j, "file") == "/etc/prometheus/alertmanagers/alertmanager.json" &&
			strings.TrimSpace(getString(t, prom, "uploads", j, "content")) != "[]" {
			t.Errorf("Prometheus is given an Alertmanager although none runs")
		}
	}
}
