package stackconfig

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Keys are the project keys the program reads, all declared in Pulumi.yaml.
// The upstream API keys are not among them: their names follow each
// upstream's apiKeyEnv (see [SecretKeyForEnv]), and a stack only sets the
// ones its upstreams use.
var Keys = []string{
	"target", "instanceType", "hostCount", "expectedGpuCount", "rootVolumeGb",
	"amiNamePattern", "amiId", "amiOwner", "sshUser", "sshPublicKey", "cudaTestImage",
	"vpcCidr", "allowedCidrs", "operatorCidrs",
	"loadBalancer", "managedRedis", "redisNodeType", "tlsCertificateArn", "domainName", "hostedZoneId", "deletionProtection",
	"imageTag", "reuseImage", "imageRetainCount", "redisImage", "prometheusImage", "alertmanagerImage",
	"localGpu", "upstreamSimulator", "modelServer", "ledger",
	"latencyBudgetP95Ms", "upstreams", "models", "retry", "cacheTtl", "rateLimit",
	"gatewayApiKey",
}

// OptionalSecretKeys are secrets a stack may leave unset. They are not
// declared in Pulumi.yaml: the CLI merges a declared default as plain text
// and then refuses it for a `secret: true` key ("must be encrypted as it's
// secret", pkg/workspace/config.go), and a declared key without a default is
// required in every stack. The program insists that a set one is encrypted.
var OptionalSecretKeys = []string{"alertWebhookUrl", "hfToken", "ledgerDbPassword"}

// RenamedKeys are keys an older stack file may still hold, with what
// replaced them.
var RenamedKeys = map[string]string{
	"operatorCidr": "operatorCidrs, a list (e.g. [\"203.0.113.7/32\", \"<the deploy runner's address>/32\"])",
}

// GatewayAPIKeyEnv is the variable the gateway's client_keys entry expands.
const GatewayAPIKeyEnv = "GATEWAY_API_KEY"

// MinClientKeyLen matches the gateway's own rule for client keys.
const MinClientKeyLen = 16

var (
	regionRE       = regexp.MustCompile(`^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$`)
	instanceTypeRE = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z0-9]+$`)
	nameRE         = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	envRE          = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	imageTagRE     = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	// imageRefRE is deliberately narrow: cudaTestImage is written into the
	// host's user data, so it must not be able to carry shell syntax.
	imageRefRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:@-]*$`)
	unixUserRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	nodeTypeRE = regexp.MustCompile(`^cache\.[a-z0-9]+\.[a-z0-9]+$`)
	acmARNRE   = regexp.MustCompile(`^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[A-Za-z0-9-]+$`)
	// EC2 imports RSA and ED25519 public keys only.
	sshKeyTypesRE = regexp.MustCompile(`^(ssh-ed25519|ssh-rsa) [A-Za-z0-9+/=]+( .*)?$`)
	// domainNameRE is a fully qualified host name of two labels or more,
	// lower case, without a trailing dot or a wildcard.
	domainNameRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$`)
	hostedZoneRE = regexp.MustCompile(`^Z[A-Z0-9]{1,31}$`)
	// amiIDRE: EC2 image IDs are ami- and 8 or 17 hexadecimal digits.
	amiIDRE = regexp.MustCompile(`^ami-([0-9a-f]{8}|[0-9a-f]{17})$`)
)

// Parse reads every key from src and validates the whole configuration for
// stack, reporting all problems at once rather than the first.
func Parse(src Source, stack string) (*Config, error) {
	p := &parser{src: src}
	c := &Config{Stack: stack}

	c.Target = Target(p.str("target"))
	switch c.Target {
	case TargetAWS, TargetLocal:
	default:
		p.fail("target", "must be %q or %q, got %q", TargetAWS, TargetLocal, c.Target)
	}
	aws := c.Target == TargetAWS

	c.InstanceType = p.str("instanceType")
	c.HostCount = p.int("hostCount")
	c.ExpectedGPUCount = p.int("expectedGpuCount")
	c.RootVolumeGB = p.int("rootVolumeGb")
	c.AMINamePattern = p.str("amiNamePattern")
	c.AMIOwner = p.str("amiOwner")
	c.AMIID = strings.TrimSpace(p.str("amiId"))
	c.SSHUser = p.str("sshUser")
	c.SSHPublicKey = strings.TrimSpace(p.str("sshPublicKey"))
	c.CUDATestImage = p.str("cudaTestImage")
	vpc := p.str("vpcCidr")
	var allowed, operators []string
	p.json("allowedCidrs", &allowed)
	p.json("operatorCidrs", &operators)
	for _, old := range slices.Sorted(maps.Keys(RenamedKeys)) {
		if _, ok := src.Lookup(fullKey(old)); ok {
			p.fail(old, "is no longer read; it was replaced by %s", RenamedKeys[old])
		}
	}
	c.LoadBalancer = p.bool("loadBalancer")
	c.ManagedRedis = p.bool("managedRedis")
	c.RedisNodeType = p.str("redisNodeType")
	c.TLSCertificateARN = p.str("tlsCertificateArn")
	c.DomainName = strings.TrimSpace(p.str("domainName"))
	c.HostedZoneID = strings.TrimSpace(p.str("hostedZoneId"))
	c.DeletionProtection = p.bool("deletionProtection")
	c.ImageTag = p.str("imageTag")
	c.ReuseImage = p.bool("reuseImage")
	c.ImageRetainCount = p.int("imageRetainCount")
	c.RedisImage = p.str("redisImage")
	c.PrometheusImage = p.str("prometheusImage")
	c.AlertmanagerImage = p.str("alertmanagerImage")
	c.LocalGPU = p.bool("localGpu")
	c.UpstreamSimulator = p.bool("upstreamSimulator")
	latencyMs := p.int("latencyBudgetP95Ms")
	p.json("upstreams", &c.Upstreams)
	p.json("models", &c.Models)
	p.json("retry", &c.Retry)
	cacheTTL := p.str("cacheTtl")
	p.json("rateLimit", &c.RateLimit)
	c.GatewayAPIKey = p.secret("gatewayApiKey")
	c.AlertWebhookURL = p.optionalSecret("alertWebhookUrl")
	if c.AlertWebhookURL.IsSet() {
		// The URL is a secret (webhooks carry their token in it): the
		// message says what is wrong, never what it is.
		if u, err := url.Parse(c.AlertWebhookURL.value); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			p.fail("alertWebhookUrl", "is not an absolute http(s) URL (its value is not shown: it is a secret)")
		}
	}

	if aws {
		c.Region, _ = src.Lookup("aws:region")
		switch {
		case c.Region == "":
			p.fail("aws:region", "is not set; run `pulumi config set aws:region us-east-1` (or your region)")
		case !regionRE.MatchString(c.Region):
			p.fail("aws:region", "%q is not an AWS region name such as us-east-1", c.Region)
		}
		p.validateHosts(c)
		c.VPCCIDR = p.cidr("vpcCidr", vpc)
		switch {
		case !c.VPCCIDR.IsValid():
		case c.VPCCIDR.Bits() < 16 || c.VPCCIDR.Bits() > 24:
			p.fail("vpcCidr", "%s: use a /16 to /24 network so that every subnet fits", c.VPCCIDR)
		case c.LoadBalancer && c.VPCCIDR.Bits() > 23:
			// 16 subnets of a /24 are /28s; a load balancer needs /27s.
			p.fail("vpcCidr", "%s: with loadBalancer use a /16 to /23 network: an Application Load Balancer needs subnets of /27 or larger", c.VPCCIDR)
		}
		for i, s := range allowed {
			if pfx := p.cidr(fmt.Sprintf("allowedCidrs[%d]", i), s); pfx.IsValid() {
				c.AllowedCIDRs = append(c.AllowedCIDRs, pfx)
				if pfx.Bits() == 0 && c.TLSCertificateARN == "" {
					c.Warnings = append(c.Warnings, fmt.Sprintf("%s opens the gateway to the internet over plain HTTP, so client keys cross it unencrypted; set %s", fullKey("allowedCidrs"), fullKey("tlsCertificateArn")))
				}
			}
		}
		if len(operators) == 0 {
			p.fail("operatorCidrs", "is empty; list the networks allowed to reach SSH and Prometheus: yours and the deploy runner's, e.g. [\"203.0.113.7/32\"]")
		}
		for i, s := range operators {
			k := fmt.Sprintf("operatorCidrs[%d]", i)
			pfx := p.cidr(k, s)
			switch {
			case !pfx.IsValid():
			case pfx.Bits() == 0:
				p.fail(k, "is %s, which would open SSH and Prometheus to the whole internet; use your own address, e.g. 203.0.113.7/32", pfx)
			default:
				c.OperatorCIDRs = append(c.OperatorCIDRs, pfx)
			}
		}
		if !imageTagRE.MatchString(c.ImageTag) {
			p.fail("imageTag", "%q is not a valid image tag", c.ImageTag)
		}
		if c.ImageRetainCount < 2 || c.ImageRetainCount > 1000 {
			p.fail("imageRetainCount", "must be between 2 and 1000 so there is an image to roll back to, got %d", c.ImageRetainCount)
		}
		if c.HostCount > 1 && !c.LoadBalancer {
			p.fail("loadBalancer", "must be true when hostCount is %d: clients need one address for all hosts", c.HostCount)
		}
		if c.HostCount > 1 && !c.ManagedRedis {
			p.fail("managedRedis", "must be true when hostCount is %d: the cache and rate limits must be shared by all hosts", c.HostCount)
		}
		if c.ManagedRedis && !nodeTypeRE.MatchString(c.RedisNodeType) {
			p.fail("redisNodeType", "%q is not an ElastiCache node type such as cache.t4g.small", c.RedisNodeType)
		}
		if c.TLSCertificateARN != "" {
			if !acmARNRE.MatchString(c.TLSCertificateARN) {
				p.fail("tlsCertificateArn", "%q is not an ACM certificate ARN", c.TLSCertificateARN)
			}
			if !c.LoadBalancer {
				p.fail("tlsCertificateArn", "is only used by the load balancer; set loadBalancer to true or remove it")
			}
		}
		p.validateDomain(c)
		if c.UpstreamSimulator {
			p.fail("upstreamSimulator", "is a test tool and only allowed on the local target")
		}
		if c.LocalGPU {
			p.fail("localGpu", "only applies to the local target; AWS hosts always get their GPUs")
		}
	} else if c.Target == TargetLocal {
		if c.HostCount != 1 {
			p.fail("hostCount", "the local target runs one gateway on this machine; set it to 1, got %d", c.HostCount)
		}
		if c.LoadBalancer || c.ManagedRedis {
			p.fail("target", "local creates no cloud resources, so loadBalancer and managedRedis must be false")
		}
		switch {
		case c.ExpectedGPUCount < 0:
			p.fail("expectedGpuCount", "must not be negative, got %d", c.ExpectedGPUCount)
		case !c.LocalGPU && c.ExpectedGPUCount != 0:
			p.fail("expectedGpuCount", "is %d but localGpu is false, so the gateway will see no GPU; set it to 0 or set localGpu to true", c.ExpectedGPUCount)
		case c.LocalGPU && c.ExpectedGPUCount == 0:
			p.fail("expectedGpuCount", "is 0 but localGpu is true; set the number of GPUs this machine has")
		}
		if c.ImageTag != "" && !imageTagRE.MatchString(c.ImageTag) {
			p.fail("imageTag", "%q is not a valid image tag", c.ImageTag)
		}
		if c.ImageTag == "" && c.ReuseImage {
			p.fail("imageTag", "is empty, but reuseImage needs it to name the local image to run (relaygate-gateway:<imageTag>)")
		}
	}

	if !imageRefRE.MatchString(c.RedisImage) {
		p.fail("redisImage", "%q is not an image reference such as redis:7.4-alpine", c.RedisImage)
	}
	if !imageRefRE.MatchString(c.AlertmanagerImage) {
		p.fail("alertmanagerImage", "%q is not an image reference such as prom/alertmanager:v0.28.1", c.AlertmanagerImage)
	}
	if !imageRefRE.MatchString(c.PrometheusImage) {
		p.fail("prometheusImage", "%q is not an image reference such as prom/prometheus:v3.5.0", c.PrometheusImage)
	}
	if latencyMs < 1 || latencyMs > 600_000 {
		p.fail("latencyBudgetP95Ms", "must be between 1 and 600000 milliseconds, got %d", latencyMs)
	}
	c.LatencyBudgetP95 = time.Duration(latencyMs) * time.Millisecond
	if d, err := time.ParseDuration(cacheTTL); err != nil || d < time.Second {
		p.fail("cacheTtl", "%q must be a duration of at least 1s, e.g. \"1h\"", cacheTTL)
	} else {
		c.CacheTTL = d
	}
	p.parseModelServer(c)
	p.parseLedger(c)
	p.validateGateway(c)
	p.validateSecrets(c)

	if len(p.errs) > 0 {
		return nil, fmt.Errorf("stack %q has invalid configuration:\n%w", stack, errors.Join(p.errs...))
	}
	return c, nil
}

func (p *parser) validateHosts(c *Config) {
	family, _, _ := strings.Cut(c.InstanceType, ".")
	switch {
	case !instanceTypeRE.MatchString(c.InstanceType):
		p.fail("instanceType", "%q is not an EC2 instance type such as g5.xlarge", c.InstanceType)
	case unsupportedGPUFamilies[family] != "":
		p.fail("instanceType", "%q is not supported: %s; use a Turing or newer family (%s)", c.InstanceType, unsupportedGPUFamilies[family], strings.Join(slices.Sorted(maps.Keys(gpuFamilies)), ", "))
	case !gpuFamilies[family]:
		p.fail("instanceType", "%q is not an NVIDIA GPU instance type (families: %s)", c.InstanceType, strings.Join(slices.Sorted(maps.Keys(gpuFamilies)), ", "))
	}
	switch {
	case c.HostCount < 1:
		p.fail("hostCount", "must be at least 1, got %d", c.HostCount)
	case c.HostCount > 20:
		p.fail("hostCount", "must be at most 20, got %d; raise the limit in code if you mean it", c.HostCount)
	}
	if c.ExpectedGPUCount < 1 {
		p.fail("expectedGpuCount", "must be at least 1 on GPU hosts, got %d", c.ExpectedGPUCount)
	} else if n, ok := GPUsPerInstance[c.InstanceType]; ok && n != c.ExpectedGPUCount {
		p.fail("expectedGpuCount", "is %d but %s has %d GPU(s)", c.ExpectedGPUCount, c.InstanceType, n)
	}
	if c.RootVolumeGB < 100 || c.RootVolumeGB > 16384 {
		p.fail("rootVolumeGb", "must be between 100 and 16384 (NVIDIA-driver AMIs need at least 100 GB), got %d", c.RootVolumeGB)
	}
	if strings.TrimSpace(c.AMINamePattern) == "" {
		p.fail("amiNamePattern", "is empty; it selects the NVIDIA-driver AMI, e.g. \"Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *\"")
	}
	if c.AMIID != "" && !amiIDRE.MatchString(c.AMIID) {
		p.fail("amiId", "%q is not an AMI ID such as ami-0123456789abcdef0", c.AMIID)
	}
	if c.AMIOwner == "" {
		p.fail("amiOwner", "is empty; use \"amazon\" for AWS's own AMIs or an account ID")
	}
	if !unixUserRE.MatchString(c.SSHUser) {
		p.fail("sshUser", "%q is not a Unix user name", c.SSHUser)
	}
	switch {
	case c.SSHPublicKey == "":
		p.fail("sshPublicKey", "is not set; run `pulumi config set sshPublicKey \"$(cat ~/.ssh/id_ed25519.pub)\"`")
	case strings.Contains(c.SSHPublicKey, "PRIVATE KEY"):
		// Do not echo it: it is a private key in a plain-text file.
		p.fail("sshPublicKey", "holds a private key; remove it from the stack file, rotate that key, and set the .pub file's content")
	case !sshKeyTypesRE.MatchString(c.SSHPublicKey):
		p.fail("sshPublicKey", "is not an OpenSSH ssh-ed25519 or ssh-rsa public key line (ssh-ed25519 AAAA... comment), the types EC2 imports")
	}
	if !imageRefRE.MatchString(c.CUDATestImage) {
		p.fail("cudaTestImage", "%q is not an image reference such as nvidia/cuda:12.4.1-base-ubuntu22.04", c.CUDATestImage)
	}
}

// validateDomain checks the name clients use for the load balancer. With a
// certificate it is required: the load balancer's own name
// (<name>.elb.amazonaws.com) is one no ACM certificate can cover, so HTTPS
// to it fails verification in every client.
func (p *parser) validateDomain(c *Config) {
	switch d := c.DomainName; {
	case d == "":
		if c.TLSCertificateARN != "" {
			p.fail("domainName", "is not set but tlsCertificateArn is: clients must reach the load balancer by a name the certificate covers, "+
				"since no certificate can cover its *.elb.amazonaws.com name; run `pulumi config set domainName gateway.example.com` "+
				"(and hostedZoneId to have the program create its DNS record)")
		}
	case strings.ContainsAny(d, "/:"):
		p.fail("domainName", "%q must be a host name such as gateway.example.com, not a URL", d)
	case len(d) > 253 || !domainNameRE.MatchString(d):
		p.fail("domainName", "%q is not a host name such as gateway.example.com (lower case, no wildcard, no trailing dot)", d)
	case !c.LoadBalancer:
		p.fail("domainName", "names the load balancer; set loadBalancer to true or remove it")
	}
	switch {
	case c.HostedZoneID == "":
	case !hostedZoneRE.MatchString(c.HostedZoneID):
		p.fail("hostedZoneId", "%q is not a Route 53 hosted zone ID such as Z0123456789ABCDEFGHIJ", c.HostedZoneID)
	case c.DomainName == "":
		p.fail("hostedZoneId", "is set but domainName is not; set domainName to the name to create in that zone, or remove hostedZoneId")
	}
}

func (p *parser) validateGateway(c *Config) {
	upstreams := map[string]bool{}
	if len(c.Upstreams) == 0 && !c.UpstreamSimulator {
		p.fail("upstreams", "needs at least one upstream")
	}
	for i, u := range c.Upstreams {
		k := fmt.Sprintf("upstreams[%d]", i)
		switch {
		case !nameRE.MatchString(u.Name):
			p.fail(k+".name", "%q: use letters, digits, '.', '_' or '-'", u.Name)
		case u.Name == SimulatorUpstream:
			p.fail(k+".name", "%q is reserved for the simulator that upstreamSimulator adds", u.Name)
		case u.Name == SelfHostedUpstream:
			p.fail(k+".name", "%q is reserved for the model server that modelServer adds", u.Name)
		case upstreams[u.Name]:
			p.fail(k+".name", "%q is defined twice", u.Name)
		}
		upstreams[u.Name] = true
		if err := checkBaseURL(u.BaseURL); err != nil {
			p.fail(k+".baseUrl", "%v", err)
		}
		if u.APIKeyEnv != "" && (!envRE.MatchString(u.APIKeyEnv) || u.APIKeyEnv == GatewayAPIKeyEnv || u.APIKeyEnv == LedgerURLEnv) {
			p.fail(k+".apiKeyEnv", "%q must be an upper-case variable name other than %s and %s", u.APIKeyEnv, GatewayAPIKeyEnv, LedgerURLEnv)
		}
		if u.Timeout != 0 && u.ConnectTimeout > u.Timeout {
			p.fail(k+".connectTimeout", "%s is longer than timeout %s", u.ConnectTimeout.D(), u.Timeout.D())
		}
	}
	if c.UpstreamSimulator {
		upstreams[SimulatorUpstream] = true
	}
	if c.ModelServer.Enabled {
		upstreams[SelfHostedUpstream] = true
	}
	routedToServer := false

	if len(c.Models) == 0 {
		p.fail("models", "needs at least one model")
	}
	models := map[string]bool{}
	for i, m := range c.Models {
		k := fmt.Sprintf("models[%d]", i)
		switch {
		case strings.TrimSpace(m.Name) == "":
			p.fail(k+".name", "is required")
		case models[m.Name]:
			p.fail(k+".name", "%q is defined twice", m.Name)
		}
		models[m.Name] = true
		if len(m.Route) == 0 {
			p.fail(k+".route", "needs at least one upstream")
		}
		seen := map[string]bool{}
		for j, e := range m.Route {
			rk := fmt.Sprintf("%s.route[%d]", k, j)
			switch {
			case e.Upstream == SimulatorUpstream && !c.UpstreamSimulator:
				p.fail(rk, "routes to %q but upstreamSimulator is false", e.Upstream)
			case e.Upstream == SelfHostedUpstream && !c.ModelServer.Enabled:
				p.fail(rk, "routes to %q but modelServer is disabled", e.Upstream)
			case !upstreams[e.Upstream]:
				p.fail(rk, "upstream %q is not defined in upstreams", e.Upstream)
			case seen[e.Upstream]:
				p.fail(rk, "upstream %q appears twice", e.Upstream)
			}
			seen[e.Upstream] = true
			if e.Upstream == SelfHostedUpstream {
				routedToServer = true
				if name := cmp.Or(e.Model, m.Name); name != c.ModelServer.ServedName {
					p.fail(rk, "sends model %q to %q, which serves %q only (modelServer.servedName); set the entry's model to it", name, SelfHostedUpstream, c.ModelServer.ServedName)
				}
			}
			if e.Price != nil {
				p.price(rk+".price", *e.Price)
			}
		}
		p.price(k+".price", m.Price)
		if m.ReferencePrice != nil {
			p.price(k+".referencePrice", *m.ReferencePrice)
		}
	}

	if c.ModelServer.Enabled && !routedToServer && len(c.Models) > 0 {
		c.Warnings = append(c.Warnings, fmt.Sprintf("the model server on each host serves %s but no model routes to %q; add a model to %s so clients can use it",
			c.ModelServer.ServedName, SelfHostedUpstream, fullKey("models")))
	}

	if c.Retry.Attempts < 1 || c.Retry.Attempts > 10 {
		p.fail("retry.attempts", "must be between 1 and 10, got %d", c.Retry.Attempts)
	}
	if c.Retry.BackoffMax < c.Retry.BackoffMin {
		p.fail("retry.backoffMax", "%s is shorter than backoffMin %s", c.Retry.BackoffMax.D(), c.Retry.BackoffMin.D())
	}
	if c.RateLimit.RPM < 0 || c.RateLimit.TPM < 0 {
		p.fail("rateLimit", "limits must not be negative")
	}
}

func (p *parser) validateSecrets(c *Config) {
	switch {
	case !c.GatewayAPIKey.IsSet():
	case c.GatewayAPIKey.Len() < MinClientKeyLen:
		p.fail("gatewayApiKey", "is %d characters; use at least %d, e.g. `openssl rand -hex 24`", c.GatewayAPIKey.Len(), MinClientKeyLen)
	case strings.IndexFunc(c.GatewayAPIKey.value, unicode.IsSpace) >= 0:
		p.fail("gatewayApiKey", "contains whitespace")
	}

	c.UpstreamKeys = map[string]Secret{}
	usable := c.UpstreamSimulator
	for _, u := range c.Upstreams {
		if u.APIKeyEnv == "" {
			usable = true
			continue
		}
		key := SecretKeyForEnv(u.APIKeyEnv)
		if _, done := c.UpstreamKeys[u.APIKeyEnv]; done {
			usable = true
			continue
		}
		if _, ok := p.src.Lookup(fullKey(key)); !ok {
			msg := fmt.Sprintf("%s is not set, so upstream %s is disabled; run `pulumi config set --secret %s <key>`", fullKey(key), u.Name, key)
			if c.Target == TargetAWS {
				p.fail(key, "is not set but upstream %s needs it; run `pulumi config set --secret %s <key>`", u.Name, key)
			} else {
				c.Warnings = append(c.Warnings, msg)
			}
			continue
		}
		if s := p.secret(key); s.IsSet() {
			c.UpstreamKeys[u.APIKeyEnv] = s
			usable = true
		}
	}
	if c.Target == TargetLocal && !usable {
		p.fail("upstreamSimulator", "is false and no upstream has a key, so the gateway could serve nothing; set an upstream key or turn the simulator on")
	}
}

// SecretKeyForEnv names the secret config key that holds the value of an
// upstream's key variable: HOLYSHEEP_API_KEY is read from holysheepApiKey.
func SecretKeyForEnv(env string) string {
	var b strings.Builder
	for i, w := range strings.Split(strings.ToLower(env), "_") {
		if w == "" {
			continue
		}
		if i > 0 && b.Len() > 0 {
			w = strings.ToUpper(w[:1]) + w[1:]
		}
		b.WriteString(w)
	}
	return b.String()
}

type parser struct {
	src  Source
	errs []error
}

func fullKey(key string) string {
	if strings.Contains(key, ":") {
		return key
	}
	return Namespace + ":" + key
}

func (p *parser) fail(key, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", fullKey(key), fmt.Sprintf(format, args...)))
}

// lookup finds a key; its absence is an error because Pulumi.yaml gives
// every key a default, so a missing one means a broken project file or a
// stack file that unset it.
func (p *parser) lookup(key string) (string, bool) {
	v, ok := p.src.Lookup(fullKey(key))
	if !ok {
		p.fail(key, "is not set (Pulumi.yaml declares it; is the stack file or project file damaged?)")
	}
	return v, ok
}

func (p *parser) str(key string) string {
	v, _ := p.lookup(key)
	return v
}

func (p *parser) int(key string) int {
	v, ok := p.lookup(key)
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		p.fail(key, "must be a whole number, got %q", v)
	}
	return n
}

func (p *parser) bool(key string) bool {
	v, ok := p.lookup(key)
	if !ok {
		return false
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		p.fail(key, "must be true or false, got %q", v)
	}
	return b
}

// json decodes a structured value strictly: a misspelt field is an error,
// not a silently ignored setting.
func (p *parser) json(key string, out any) {
	p.object(key, out, "")
}

// object decodes key's JSON into out, refusing unknown fields; fields, when
// set, lists the known ones in the error. It reports whether out was read:
// false for an unset key or a refused value.
func (p *parser) object(key string, out any, fields string) bool {
	v, ok := p.lookup(key)
	if !ok {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(v)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		if fields != "" {
			p.fail(key, "%v (fields: %s)", err, fields)
		} else {
			p.fail(key, "%v", err)
		}
		return false
	}
	return true
}

// secret reads a value that must have been set with --secret. The value is
// never put in a message.
func (p *parser) secret(key string) Secret {
	v, ok := p.src.Lookup(fullKey(key))
	switch {
	case !ok || v == "":
		p.fail(key, "is not set; run `pulumi config set --secret %s <value>`", key)
		return Secret{}
	case !p.src.IsSecret(fullKey(key)):
		p.fail(key, "is stored in plain text in the stack file; remove it, rotate it, and run `pulumi config set --secret %s <value>`", key)
		return Secret{}
	}
	return Secret{value: v}
}

// optionalSecret is secret for a key a stack may leave unset.
func (p *parser) optionalSecret(key string) Secret {
	v, ok := p.src.Lookup(fullKey(key))
	if !ok || v == "" {
		return Secret{}
	}
	if !p.src.IsSecret(fullKey(key)) {
		p.fail(key, "is stored in plain text in the stack file; remove it, rotate it, and run `pulumi config set --secret %s <value>`", key)
		return Secret{}
	}
	return Secret{value: v}
}

func (p *parser) cidr(key, s string) netip.Prefix {
	pfx, err := netip.ParsePrefix(strings.TrimSpace(s))
	switch {
	case err != nil:
		p.fail(key, "%q is not a CIDR block such as 203.0.113.0/24", s)
		return netip.Prefix{}
	case !pfx.Addr().Is4():
		p.fail(key, "%q: only IPv4 CIDR blocks are supported", s)
		return netip.Prefix{}
	case pfx.Masked() != pfx:
		p.fail(key, "%q has host bits set; did you mean %s?", s, pfx.Masked())
		return netip.Prefix{}
	}
	return pfx
}

func (p *parser) price(key string, pr Price) {
	if pr.InputPerMTok < 0 || pr.OutputPerMTok < 0 {
		p.fail(key, "prices must not be negative")
	}
}

func checkBaseURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return errors.New("is required")
	case err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https"):
		return fmt.Errorf("%q is not an absolute http(s) URL", raw)
	case u.User != nil:
		return errors.New("must not carry credentials; use apiKeyEnv and a secret")
	case u.RawQuery != "" || u.Fragment != "":
		return errors.New("must not have a query or fragment")
	}
	return nil
}
