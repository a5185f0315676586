package stackconfig

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relaygate/relaygate/infra/internal/stackconfig/stackconfigtest"
)

var awsValues = stackconfigtest.AWSValues

func prodValues() map[string]string {
	v := awsValues()
	v["relaygate:hostCount"] = "3"
	v["relaygate:loadBalancer"] = "true"
	v["relaygate:managedRedis"] = "true"
	v["relaygate:deletionProtection"] = "true"
	v["relaygate:tlsCertificateArn"] = "arn:aws:acm:us-east-1:123456789012:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
	v["relaygate:domainName"] = "gateway.example.com"
	return v
}

func localValues() map[string]string {
	v := awsValues()
	delete(v, "aws:region")
	delete(v, "relaygate:holysheepApiKey")
	delete(v, "relaygate:openaiApiKey")
	delete(v, "relaygate:ledgerDbPassword")
	v["relaygate:target"] = "local"
	// As the committed local stack: its offline engine has no postgres image.
	v["relaygate:ledger"] = `{"enabled":false}`
	v["relaygate:sshPublicKey"] = ""
	v["relaygate:operatorCidrs"] = "[]"
	v["relaygate:allowedCidrs"] = "[]"
	v["relaygate:expectedGpuCount"] = "0"
	v["relaygate:upstreamSimulator"] = "true"
	v["relaygate:modelServer"] = `{"enabled":false}`
	v["relaygate:upstreams"] = "[]"
	v["relaygate:models"] = `[{"name":"gpt-4.1","route":["upstream-sim"],"price":{"inputPerMtok":2,"outputPerMtok":8}}]`
	return v
}

var source = stackconfigtest.NewSource

func TestParseValidStacks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		values map[string]string
		check  func(t *testing.T, c *Config)
	}{
		{"single aws host", awsValues(), func(t *testing.T, c *Config) {
			if c.Target != TargetAWS || c.Region != "us-east-1" || c.HostCount != 1 || c.InstanceType != "g5.xlarge" {
				t.Errorf("target/region/hosts/type = %s/%s/%d/%s", c.Target, c.Region, c.HostCount, c.InstanceType)
			}
			if want := []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("198.18.0.9/32")}; !slices.Equal(c.OperatorCIDRs, want) {
				t.Errorf("operator CIDRs = %v, want %v", c.OperatorCIDRs, want)
			}
			if len(c.AllowedCIDRs) != 1 || c.AllowedCIDRs[0].String() != "198.51.100.0/24" {
				t.Errorf("allowed CIDRs = %v", c.AllowedCIDRs)
			}
			if c.LatencyBudgetP95 != 1500*time.Millisecond || c.CacheTTL != time.Hour {
				t.Errorf("latency budget %s, cache TTL %s", c.LatencyBudgetP95, c.CacheTTL)
			}
			if len(c.UpstreamKeys) != 2 || !c.UpstreamKeys["HOLYSHEEP_API_KEY"].IsSet() || !c.UpstreamKeys["OPENAI_API_KEY"].IsSet() {
				t.Errorf("upstream keys = %v", c.UpstreamKeys)
			}
			r := c.Models[0].Route
			if len(r) != 2 || r[0].Upstream != "holysheep" || r[1].Model != "gpt-4.1-2025-04-14" || r[1].Price == nil || r[1].Price.OutputPerMTok != 8 {
				t.Errorf("route = %+v", r)
			}
			if c.Upstreams[0].Timeout.D() != 180*time.Second || c.Upstreams[1].Timeout != 0 {
				t.Errorf("upstream timeouts = %s, %s", c.Upstreams[0].Timeout.D(), c.Upstreams[1].Timeout.D())
			}
			if len(c.Warnings) != 0 {
				t.Errorf("warnings = %q", c.Warnings)
			}
			if c.ImageTag != "dev" || c.ReuseImage {
				t.Errorf("imageTag %q, reuseImage %t; want dev, false", c.ImageTag, c.ReuseImage)
			}
		}},
		{"a rollback reuses the image of its tag", with(awsValues(), "relaygate:reuseImage", "true", "relaygate:imageTag", "sha-6d4e5f6"), func(t *testing.T, c *Config) {
			if !c.ReuseImage || c.ImageTag != "sha-6d4e5f6" {
				t.Errorf("imageTag %q, reuseImage %t; want sha-6d4e5f6, true", c.ImageTag, c.ReuseImage)
			}
		}},
		{"local reuse", with(localValues(), "relaygate:reuseImage", "true"), func(t *testing.T, c *Config) {
			if !c.ReuseImage || c.ImageTag != "dev" {
				t.Errorf("imageTag %q, reuseImage %t; want dev, true", c.ImageTag, c.ReuseImage)
			}
		}},
		{"prod scale-out", prodValues(), func(t *testing.T, c *Config) {
			if c.HostCount != 3 || !c.LoadBalancer || !c.ManagedRedis || !c.DeletionProtection {
				t.Errorf("hosts %d, lb %t, redis %t, protection %t", c.HostCount, c.LoadBalancer, c.ManagedRedis, c.DeletionProtection)
			}
			if c.DomainName != "gateway.example.com" || c.HostedZoneID != "" {
				t.Errorf("domain %q, zone %q", c.DomainName, c.HostedZoneID)
			}
		}},
		{"prod with a Route 53 zone", with(prodValues(), "relaygate:hostedZoneId", "Z0123456789ABCDEFGHIJ"), func(t *testing.T, c *Config) {
			if c.DomainName != "gateway.example.com" || c.HostedZoneID != "Z0123456789ABCDEFGHIJ" {
				t.Errorf("domain %q, zone %q", c.DomainName, c.HostedZoneID)
			}
		}},
		{"plain HTTP load balancer under a domain", with(prodValues(), "relaygate:tlsCertificateArn", ""), func(t *testing.T, c *Config) {
			if c.DomainName != "gateway.example.com" || c.TLSCertificateARN != "" {
				t.Errorf("domain %q, certificate %q", c.DomainName, c.TLSCertificateARN)
			}
		}},
		{"local with simulator and no upstream keys", localValues(), func(t *testing.T, c *Config) {
			if c.Target != TargetLocal || !c.UpstreamSimulator || c.Region != "" || len(c.UpstreamKeys) != 0 {
				t.Errorf("target %s, simulator %t, region %q, keys %v", c.Target, c.UpstreamSimulator, c.Region, c.UpstreamKeys)
			}
		}},
		{"public gateway without TLS warns", with(awsValues(), "relaygate:allowedCidrs", `["0.0.0.0/0"]`), func(t *testing.T, c *Config) {
			if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "relaygate:tlsCertificateArn") {
				t.Errorf("warnings = %q", c.Warnings)
			}
		}},
		{"local upstream without key is a warning", func() map[string]string {
			v := localValues()
			v["relaygate:upstreams"] = `[{"name":"openai","baseUrl":"https://api.openai.com/v1","apiKeyEnv":"OPENAI_API_KEY"}]`
			return v
		}(), func(t *testing.T, c *Config) {
			if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "relaygate:openaiApiKey") {
				t.Errorf("warnings = %q", c.Warnings)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, tt.values)
			tt.check(t, c)
		})
	}
}

func with(v map[string]string, kv ...string) map[string]string {
	for i := 0; i+1 < len(kv); i += 2 {
		v[kv[i]] = kv[i+1]
	}
	return v
}

func without(v map[string]string, keys ...string) map[string]string {
	for _, k := range keys {
		delete(v, k)
	}
	return v
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		values map[string]string
		plain  []string // keys stored without --secret
		want   []string // every one must appear in the error
	}{
		{"missing key", without(awsValues(), "relaygate:instanceType"), nil,
			[]string{"relaygate:instanceType: is not set"}},
		{"missing region", without(awsValues(), "aws:region"), nil,
			[]string{"aws:region: is not set"}},
		{"bad region", with(awsValues(), "aws:region", "Virginia"), nil,
			[]string{"aws:region: \"Virginia\" is not an AWS region"}},
		{"unknown target", with(awsValues(), "relaygate:target", "gcp"), nil,
			[]string{"relaygate:target: must be \"aws\" or \"local\""}},
		{"zero hosts", with(awsValues(), "relaygate:hostCount", "0"), nil,
			[]string{"relaygate:hostCount: must be at least 1, got 0"}},
		{"host count not a number", with(awsValues(), "relaygate:hostCount", "three"), nil,
			[]string{"relaygate:hostCount: must be a whole number"}},
		{"bad operator CIDR", with(awsValues(), "relaygate:operatorCidrs", `["203.0.113.7/33"]`), nil,
			[]string{"relaygate:operatorCidrs[0]: \"203.0.113.7/33\" is not a CIDR block"}},
		{"operator CIDR with host bits", with(awsValues(), "relaygate:operatorCidrs", `["203.0.113.7/32","198.18.0.9/24"]`), nil,
			[]string{"relaygate:operatorCidrs[1]: \"198.18.0.9/24\" has host bits set; did you mean 198.18.0.0/24"}},
		{"operator CIDR open to the world", with(awsValues(), "relaygate:operatorCidrs", `["203.0.113.7/32","0.0.0.0/0"]`), nil,
			[]string{"relaygate:operatorCidrs[1]: is 0.0.0.0/0"}},
		{"IPv6 operator CIDR", with(awsValues(), "relaygate:operatorCidrs", `["2001:db8::/64"]`), nil,
			[]string{"relaygate:operatorCidrs[0]: \"2001:db8::/64\": only IPv4"}},
		{"no operator CIDR", with(awsValues(), "relaygate:operatorCidrs", `[]`), nil,
			[]string{"relaygate:operatorCidrs: is empty"}},
		{"operator CIDRs not a list", with(awsValues(), "relaygate:operatorCidrs", `"203.0.113.7/32"`), nil,
			[]string{"relaygate:operatorCidrs: json: cannot unmarshal"}},
		{"operator CIDRs missing", without(awsValues(), "relaygate:operatorCidrs"), nil,
			[]string{"relaygate:operatorCidrs: is not set"}},
		{"the old single operator CIDR", with(awsValues(), "relaygate:operatorCidr", "203.0.113.7/32"), nil,
			[]string{"relaygate:operatorCidr: is no longer read; it was replaced by operatorCidrs"}},
		{"the old single operator CIDR on local", with(localValues(), "relaygate:operatorCidr", ""), nil,
			[]string{"relaygate:operatorCidr: is no longer read"}},
		{"bad allowed CIDR", with(awsValues(), "relaygate:allowedCidrs", `["198.51.100.0/24","nope"]`), nil,
			[]string{"relaygate:allowedCidrs[1]: \"nope\""}},
		{"IPv6 allowed CIDR", with(awsValues(), "relaygate:allowedCidrs", `["2001:db8::/32"]`), nil,
			[]string{"relaygate:allowedCidrs[0]: \"2001:db8::/32\": only IPv4"}},
		{"allowed CIDRs not a list", with(awsValues(), "relaygate:allowedCidrs", `"198.51.100.0/24"`), nil,
			[]string{"relaygate:allowedCidrs: json: cannot unmarshal"}},
		{"VPC too small", with(awsValues(), "relaygate:vpcCidr", "10.40.0.0/26"), nil,
			[]string{"relaygate:vpcCidr: 10.40.0.0/26: use a /16 to /24"}},
		{"VPC too small for a load balancer", with(awsValues(), "relaygate:vpcCidr", "10.40.0.0/24", "relaygate:loadBalancer", "true", "relaygate:hostCount", "2"), nil,
			[]string{"relaygate:vpcCidr: 10.40.0.0/24: with loadBalancer use a /16 to /23"}},
		{"SSH key type EC2 cannot import", with(awsValues(), "relaygate:sshPublicKey", "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= me@laptop"), nil,
			[]string{"relaygate:sshPublicKey: is not an OpenSSH ssh-ed25519 or ssh-rsa public key line"}},
		{"not a GPU instance", with(awsValues(), "relaygate:instanceType", "t3.large"), nil,
			[]string{"relaygate:instanceType: \"t3.large\" is not an NVIDIA GPU instance type"}},
		{"V100 instance (p3)", with(awsValues(), "relaygate:instanceType", "p3.2xlarge"), nil,
			[]string{"relaygate:instanceType: \"p3.2xlarge\" is not supported: its V100 GPUs are not supported by the NVIDIA open kernel modules"}},
		{"V100 instance (p3dn)", with(awsValues(), "relaygate:instanceType", "p3dn.24xlarge", "relaygate:expectedGpuCount", "8"), nil,
			[]string{"relaygate:instanceType: \"p3dn.24xlarge\" is not supported: its V100 GPUs"}},
		{"GPU count does not match instance", with(awsValues(), "relaygate:instanceType", "g5.12xlarge"), nil,
			[]string{"relaygate:expectedGpuCount: is 1 but g5.12xlarge has 4 GPU(s)"}},
		{"several hosts without load balancer or shared redis", with(awsValues(), "relaygate:hostCount", "2"), nil,
			[]string{"relaygate:loadBalancer: must be true", "relaygate:managedRedis: must be true"}},
		{"bad node type", with(prodValues(), "relaygate:redisNodeType", "t4g.small"), nil,
			[]string{"relaygate:redisNodeType"}},
		{"bad certificate ARN", with(prodValues(), "relaygate:tlsCertificateArn", "arn:aws:iam::123456789012:cert"), nil,
			[]string{"relaygate:tlsCertificateArn: \"arn:aws:iam::123456789012:cert\" is not an ACM certificate ARN"}},
		{"certificate without a domain name", with(prodValues(), "relaygate:domainName", ""), nil,
			[]string{"relaygate:domainName: is not set but tlsCertificateArn is", "*.elb.amazonaws.com"}},
		{"domain name as a URL", with(prodValues(), "relaygate:domainName", "https://gateway.example.com"), nil,
			[]string{"relaygate:domainName: \"https://gateway.example.com\" must be a host name"}},
		{"wildcard domain name", with(prodValues(), "relaygate:domainName", "*.example.com"), nil,
			[]string{"relaygate:domainName: \"*.example.com\" is not a host name"}},
		{"domain name without load balancer", with(awsValues(), "relaygate:domainName", "gateway.example.com"), nil,
			[]string{"relaygate:domainName: names the load balancer"}},
		{"bad AMI ID", with(awsValues(), "relaygate:amiId", "ami-12345"), nil,
			[]string{"relaygate:amiId: \"ami-12345\" is not an AMI ID"}},
		{"bad hosted zone", with(prodValues(), "relaygate:hostedZoneId", "example.com"), nil,
			[]string{"relaygate:hostedZoneId: \"example.com\" is not a Route 53 hosted zone ID"}},
		{"hosted zone without domain name", with(prodValues(), "relaygate:tlsCertificateArn", "", "relaygate:domainName", "", "relaygate:hostedZoneId", "Z0123456789ABCDEFGHIJ"), nil,
			[]string{"relaygate:hostedZoneId: is set but domainName is not"}},
		{"root volume too small", with(awsValues(), "relaygate:rootVolumeGb", "20"), nil,
			[]string{"relaygate:rootVolumeGb: must be between 100"}},
		{"no SSH key", with(awsValues(), "relaygate:sshPublicKey", ""), nil,
			[]string{"relaygate:sshPublicKey: is not set"}},
		{"private key as public key", with(awsValues(), "relaygate:sshPublicKey", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END OPENSSH PRIVATE KEY-----"), nil,
			[]string{"relaygate:sshPublicKey: holds a private key"}},
		{"CUDA image with shell syntax", with(awsValues(), "relaygate:cudaTestImage", "nvidia/cuda;reboot"), nil,
			[]string{"relaygate:cudaTestImage"}},
		{"reuseImage not a boolean", with(awsValues(), "relaygate:reuseImage", "yes please"), nil,
			[]string{"relaygate:reuseImage: must be true or false, got \"yes please\""}},
		{"reuseImage missing", without(awsValues(), "relaygate:reuseImage"), nil,
			[]string{"relaygate:reuseImage: is not set"}},
		{"local reuse without a tag", with(localValues(), "relaygate:reuseImage", "true", "relaygate:imageTag", ""), nil,
			[]string{"relaygate:imageTag: is empty, but reuseImage needs it"}},
		{"retain count zero", with(awsValues(), "relaygate:imageRetainCount", "0"), nil,
			[]string{"relaygate:imageRetainCount: must be between 2 and 1000"}},
		{"simulator on aws", with(awsValues(), "relaygate:upstreamSimulator", "true"), nil,
			[]string{"relaygate:upstreamSimulator: is a test tool and only allowed on the local target"}},
		{"latency budget zero", with(awsValues(), "relaygate:latencyBudgetP95Ms", "0"), nil,
			[]string{"relaygate:latencyBudgetP95Ms: must be between 1 and 600000"}},
		{"cache TTL without unit", with(awsValues(), "relaygate:cacheTtl", "3600"), nil,
			[]string{"relaygate:cacheTtl"}},
		{"route to undefined upstream", with(awsValues(), "relaygate:models", `[{"name":"m","route":["holysheep","azure"],"price":{"inputPerMtok":1,"outputPerMtok":1}}]`), nil,
			[]string{"relaygate:models[0].route[1]: upstream \"azure\" is not defined"}},
		{"route to simulator that is off", with(awsValues(), "relaygate:models", `[{"name":"m","route":["upstream-sim"],"price":{"inputPerMtok":1,"outputPerMtok":1}}]`), nil,
			[]string{"relaygate:models[0].route[0]: routes to \"upstream-sim\" but upstreamSimulator is false"}},
		{"misspelt model field", with(awsValues(), "relaygate:models", `[{"name":"m","routes":["holysheep"]}]`), nil,
			[]string{"relaygate:models: json: unknown field \"routes\""}},
		{"negative price", with(awsValues(), "relaygate:models", `[{"name":"m","route":["holysheep"],"price":{"inputPerMtok":-1,"outputPerMtok":1}}]`), nil,
			[]string{"relaygate:models[0].price: prices must not be negative"}},
		{"no models", with(awsValues(), "relaygate:models", `[]`), nil,
			[]string{"relaygate:models: needs at least one model"}},
		{"upstream timeout without unit", with(awsValues(), "relaygate:upstreams", `[{"name":"openai","baseUrl":"https://api.openai.com/v1","timeout":30}]`), nil,
			[]string{"relaygate:upstreams: duration 30 must be a string with a unit"}},
		{"upstream URL with credentials", with(awsValues(), "relaygate:upstreams", `[{"name":"holysheep","baseUrl":"https://user:pw@api.holysheep.ai/v1"},{"name":"openai","baseUrl":"https://api.openai.com/v1"}]`), nil,
			[]string{"relaygate:upstreams[0].baseUrl: must not carry credentials"}},
		{"retry backoff inverted", with(awsValues(), "relaygate:retry", `{"attempts":3,"backoffMin":"10s","backoffMax":"1s"}`), nil,
			[]string{"relaygate:retry.backoffMax: 1s is shorter than backoffMin 10s"}},
		{"missing gateway key", without(awsValues(), "relaygate:gatewayApiKey"), nil,
			[]string{"relaygate:gatewayApiKey: is not set; run `pulumi config set --secret gatewayApiKey"}},
		{"gateway key in plain text", awsValues(), []string{"relaygate:gatewayApiKey"},
			[]string{"relaygate:gatewayApiKey: is stored in plain text"}},
		{"short gateway key", with(awsValues(), "relaygate:gatewayApiKey", "short-key"), nil,
			[]string{"relaygate:gatewayApiKey: is 9 characters; use at least 16"}},
		{"upstream key in plain text", awsValues(), []string{"relaygate:openaiApiKey"},
			[]string{"relaygate:openaiApiKey: is stored in plain text"}},
		{"alert webhook in plain text", with(awsValues(), "relaygate:alertWebhookUrl", "https://hooks.example.com/T000/B000/XXXX"), []string{"relaygate:alertWebhookUrl"},
			[]string{"relaygate:alertWebhookUrl: is stored in plain text"}},
		{"alert webhook not a URL", with(awsValues(), "relaygate:alertWebhookUrl", "hooks.example.com/T000/B000/XXXX"), nil,
			[]string{"relaygate:alertWebhookUrl: is not an absolute http(s) URL (its value is not shown"}},
		{"upstream key missing on aws", without(awsValues(), "relaygate:openaiApiKey"), nil,
			[]string{"relaygate:openaiApiKey: is not set but upstream openai needs it"}},
		{"local with nothing to serve", with(localValues(), "relaygate:upstreamSimulator", "false",
			"relaygate:upstreams", `[{"name":"openai","baseUrl":"https://api.openai.com/v1","apiKeyEnv":"OPENAI_API_KEY"}]`,
			"relaygate:models", `[{"name":"m","route":["openai"],"price":{"inputPerMtok":1,"outputPerMtok":1}}]`), nil,
			[]string{"relaygate:upstreamSimulator: is false and no upstream has a key"}},
		{"local GPU count without GPU", with(localValues(), "relaygate:expectedGpuCount", "1"), nil,
			[]string{"relaygate:expectedGpuCount: is 1 but localGpu is false"}},
		{"local with several hosts", with(localValues(), "relaygate:hostCount", "2"), nil,
			[]string{"relaygate:hostCount: the local target runs one gateway"}},
		{"local with cloud pieces", with(localValues(), "relaygate:managedRedis", "true"), nil,
			[]string{"relaygate:target: local creates no cloud resources"}},
		{"every problem at once", with(awsValues(), "relaygate:hostCount", "0", "relaygate:operatorCidrs", `["x"]`, "relaygate:imageTag", "bad tag"), nil,
			[]string{"relaygate:hostCount", "relaygate:operatorCidrs[0]", "relaygate:imageTag"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parseFails(t, tt.values, tt.plain, tt.want, stackconfigtest.GatewayKey, stackconfigtest.HolysheepKey, stackconfigtest.OpenAIKey, "b3BlbnNzaC1rZXktdjEAAAA")
		})
	}
}

// mustParse is the config of values, which must parse.
func mustParse(t *testing.T, values map[string]string) *Config {
	t.Helper()
	c, err := Parse(source(values), "test")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

// parseFails checks that Parse refuses values, with the keys in plain
// stored without --secret, in an error that holds each of want and none of
// secrets (an empty one is passed over).
func parseFails(t *testing.T, values map[string]string, plain, want []string, secrets ...string) {
	t.Helper()
	src := source(values)
	for _, k := range plain {
		src.Secrets[k] = false
	}
	c, err := Parse(src, "test")
	if err == nil {
		t.Fatalf("Parse accepted it: %+v", c)
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not contain %q:\n%s", w, msg)
		}
	}
	for _, secret := range secrets {
		if secret != "" && strings.Contains(msg, secret) {
			t.Errorf("error leaks a secret value:\n%s", msg)
		}
	}
}

func TestSecretKeyForEnv(t *testing.T) {
	t.Parallel()
	for env, want := range map[string]string{
		"HOLYSHEEP_API_KEY": "holysheepApiKey",
		"OPENAI_API_KEY":    "openaiApiKey",
		"ANTHROPIC_KEY":     "anthropicKey",
		"TOKEN":             "token",
		"A__B":              "aB",
	} {
		if got := SecretKeyForEnv(env); got != want {
			t.Errorf("SecretKeyForEnv(%q) = %q, want %q", env, got, want)
		}
	}
}

func TestSecretIsNeverFormatted(t *testing.T) {
	t.Parallel()
	c := mustParse(t, awsValues())
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, c)
		for _, secret := range []string{stackconfigtest.GatewayKey, stackconfigtest.HolysheepKey, stackconfigtest.OpenAIKey} {
			if strings.Contains(out, secret) {
				t.Errorf("%s of the config shows a secret value", verb)
			}
		}
	}
	if got := fmt.Sprint(NewSecret("")); got != "[unset]" {
		t.Errorf("empty secret prints %q", got)
	}
}
