// Package stackconfigtest is the stack configuration the tests of
// stackconfig and of the packages that render from it start from, so that
// a key added to the stack is added to every test's stack at once. Only
// tests import it.
package stackconfigtest

// Source is a stackconfig.Source over fixed values, the shape the engine
// hands a program: full keys, structured values as JSON.
type Source struct {
	Values map[string]string
	// Secrets are the keys stored with --secret.
	Secrets map[string]bool
}

func (s Source) Lookup(k string) (string, bool) { v, ok := s.Values[k]; return v, ok }
func (s Source) IsSecret(k string) bool         { return s.Secrets[k] }

// NewSource is a Source over values with the stack's secrets among them
// stored as secrets, as `pulumi config set --secret` stores them.
func NewSource(values map[string]string) Source {
	secrets := map[string]bool{}
	for _, k := range []string{"relaygate:gatewayApiKey", "relaygate:holysheepApiKey", "relaygate:openaiApiKey", "relaygate:alertWebhookUrl", "relaygate:hfToken", "relaygate:ledgerDbPassword"} {
		if _, ok := values[k]; ok {
			secrets[k] = true
		}
	}
	return Source{Values: values, Secrets: secrets}
}

// The stack's secrets: made up, of the shapes the checks want.
const (
	GatewayKey   = "gw-key-0123456789abcdef"
	HolysheepKey = "hs-secret-value-1"
	OpenAIKey    = "sk-openai-secret-value-2"
	// LedgerPassword is what `openssl rand -hex 32` makes.
	LedgerPassword = "5f0c1e7a9b3d42c8e6a1f0b7d3c9e2a4"
	PublicKey      = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4t0d7w9Yx2M0pQ9s1u3Y0qkTRelaygateTestKey0 ops@example"
)

// AWSValues is a complete, valid single-host AWS stack's configuration,
// keyed as the engine hands it to a program: full keys, structured values
// as JSON. Each call makes a new map, the caller's to change.
func AWSValues() map[string]string {
	return map[string]string{
		"aws:region":                   "us-east-1",
		"relaygate:target":             "aws",
		"relaygate:instanceType":       "g5.xlarge",
		"relaygate:hostCount":          "1",
		"relaygate:expectedGpuCount":   "1",
		"relaygate:rootVolumeGb":       "200",
		"relaygate:amiNamePattern":     "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *",
		"relaygate:amiOwner":           "amazon",
		"relaygate:amiId":              "",
		"relaygate:sshUser":            "ubuntu",
		"relaygate:sshPublicKey":       PublicKey,
		"relaygate:cudaTestImage":      "nvidia/cuda:12.4.1-base-ubuntu22.04",
		"relaygate:vpcCidr":            "10.40.0.0/16",
		"relaygate:allowedCidrs":       `["198.51.100.0/24"]`,
		"relaygate:operatorCidrs":      `["203.0.113.7/32","198.18.0.9/32"]`,
		"relaygate:loadBalancer":       "false",
		"relaygate:managedRedis":       "false",
		"relaygate:redisNodeType":      "cache.t4g.small",
		"relaygate:tlsCertificateArn":  "",
		"relaygate:domainName":         "",
		"relaygate:hostedZoneId":       "",
		"relaygate:deletionProtection": "false",
		"relaygate:imageTag":           "dev",
		"relaygate:reuseImage":         "false",
		"relaygate:imageRetainCount":   "10",
		"relaygate:redisImage":         "redis:7.4-alpine",
		"relaygate:prometheusImage":    "prom/prometheus:v3.5.0",
		"relaygate:alertmanagerImage":  "prom/alertmanager:v0.28.1",
		"relaygate:localGpu":           "false",
		"relaygate:upstreamSimulator":  "false",
		"relaygate:modelServer":        `{"enabled":true}`,
		"relaygate:ledger":             `{"enabled":true}`,
		"relaygate:latencyBudgetP95Ms": "1500",
		"relaygate:upstreams": `[{"name":"holysheep","baseUrl":"https://api.holysheep.ai/v1","apiKeyEnv":"HOLYSHEEP_API_KEY","timeout":"180s","connectTimeout":"30s"},` +
			`{"name":"openai","baseUrl":"https://api.openai.com/v1","apiKeyEnv":"OPENAI_API_KEY"}]`,
		"relaygate:models": `[{"name":"gpt-4.1","route":["holysheep",{"upstream":"openai","model":"gpt-4.1-2025-04-14","price":{"inputPerMtok":2,"outputPerMtok":8}}],` +
			`"price":{"inputPerMtok":1.5,"outputPerMtok":6},"referencePrice":{"inputPerMtok":2,"outputPerMtok":8}},` +
			`{"name":"qwen2.5-7b-instruct","route":["self-hosted"],"price":{"inputPerMtok":0.35,"outputPerMtok":0.35}}]`,
		"relaygate:retry":           `{"attempts":3,"backoffMin":"200ms","backoffMax":"10s"}`,
		"relaygate:cacheTtl":        "1h",
		"relaygate:rateLimit":       `{"rpm":0,"tpm":0}`,
		"relaygate:gatewayApiKey":   GatewayKey,
		"relaygate:holysheepApiKey": HolysheepKey,
		"relaygate:openaiApiKey":    OpenAIKey,
		// What docs/deploying.md has an operator set on an AWS stack.
		"relaygate:ledgerDbPassword": LedgerPassword,
	}
}
