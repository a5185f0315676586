// Package stackconfig reads a Relaygate stack's configuration and refuses a
// broken one before any resource is registered.
//
// Parsing and validation are plain functions over a [Source], so every rule
// is table-tested without the Pulumi engine; [Load] only adapts a
// *pulumi.Context to that interface. Every error names the config key at
// fault, in the `relaygate:<key>` form `pulumi config` prints.
package stackconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Namespace is the project name: the program's keys are "relaygate:<key>".
const Namespace = "relaygate"

// GatewayPort is where the gateway listens inside its container and on the
// host. It is fixed because the SPEC, the Dockerfile's EXPOSE and the health
// check all name it.
const GatewayPort = 8000

// PrometheusPort is Prometheus's HTTP port on the host.
const PrometheusPort = 9090

// SimulatorUpstream is the upstream name the program adds when the local
// stack turns the offline upstream simulator on; stack files may route
// models to it but not declare it themselves.
const SimulatorUpstream = "upstream-sim"

// Target says where a stack runs.
type Target string

const (
	// TargetAWS runs GPU hosts on EC2 (the dev and prod stacks).
	TargetAWS Target = "aws"
	// TargetLocal runs the containers on this machine's Docker engine and
	// creates nothing in any cloud.
	TargetLocal Target = "local"
)

// Config is one stack's validated configuration.
type Config struct {
	Stack  string
	Target Target
	// Region is aws:region; empty for the local target.
	Region string

	// GPU hosts (aws).
	InstanceType     string
	HostCount        int
	ExpectedGPUCount int
	RootVolumeGB     int
	AMINamePattern   string
	AMIOwner         string
	// AMIID pins the hosts' AMI; empty, the newest AMINamePattern match.
	AMIID         string
	SSHUser       string
	SSHPublicKey  string
	CUDATestImage string

	// Network (aws).
	VPCCIDR      netip.Prefix
	AllowedCIDRs []netip.Prefix
	// OperatorCIDRs reach SSH and Prometheus: the operators' networks and
	// the deploy runner's.
	OperatorCIDRs []netip.Prefix

	// Scale-out pieces (aws).
	LoadBalancer       bool
	ManagedRedis       bool
	RedisNodeType      string
	TLSCertificateARN  string
	DeletionProtection bool
	// DomainName is the name clients reach the load balancer by, and the
	// name TLSCertificateARN's certificate must cover; required with it.
	DomainName string
	// HostedZoneID is the Route 53 zone the program writes DomainName's
	// alias record into; empty, the operator creates the record.
	HostedZoneID string

	// Images.
	ImageTag string
	// ReuseImage deploys the image already built under ImageTag (in the
	// stack's ECR repository, or on the local engine) instead of building
	// this checkout: a rollback must run the old image, not the current
	// source under the old tag.
	ReuseImage        bool
	ImageRetainCount  int
	RedisImage        string
	PrometheusImage   string
	AlertmanagerImage string

	// ModelServer is the OpenAI-compatible model server on each GPU host
	// (on the local target only with localGpu).
	ModelServer ModelServer

	// Ledger is the Postgres of the gateway's usage ledger.
	Ledger Ledger

	// Local target.
	LocalGPU          bool
	UpstreamSimulator bool

	// Gateway behaviour, rendered into its YAML.
	LatencyBudgetP95 time.Duration
	Upstreams        []Upstream
	Models           []Model
	Retry            Retry
	CacheTTL         time.Duration
	RateLimit        RateLimit

	// GatewayAPIKey is the Bearer key clients send.
	GatewayAPIKey Secret
	// UpstreamKeys maps an upstream's key variable (HOLYSHEEP_API_KEY) to
	// its value, for the keys the stack sets.
	UpstreamKeys map[string]Secret
	// AlertWebhookURL is where Alertmanager sends the alerts; unset, no
	// Alertmanager runs and alerts show only in Prometheus.
	AlertWebhookURL Secret

	// Warnings are problems that do not stop a deploy, e.g. a local stack
	// without a key for one of its upstreams.
	Warnings []string
}

// Upstream is an OpenAI-compatible API the gateway forwards to.
type Upstream struct {
	Name    string `json:"name"`
	BaseURL string `json:"baseUrl"`
	// APIKeyEnv is the environment variable holding this upstream's key in
	// the gateway container; the value comes from the secret config key
	// named by [SecretKeyForEnv]. Empty: the upstream takes no key.
	APIKeyEnv      string   `json:"apiKeyEnv,omitempty"`
	Timeout        Duration `json:"timeout,omitempty"`
	ConnectTimeout Duration `json:"connectTimeout,omitempty"`
}

// Model is a model clients may ask for and the upstreams serving it.
type Model struct {
	Name           string       `json:"name"`
	Route          []RouteEntry `json:"route"`
	Price          Price        `json:"price"`
	ReferencePrice *Price       `json:"referencePrice,omitempty"`
}

// RouteEntry is one link of a model's chain: an upstream name, or an object
// that also renames the model for that upstream and prices it there.
type RouteEntry struct {
	Upstream string `json:"upstream"`
	Model    string `json:"model,omitempty"`
	Price    *Price `json:"price,omitempty"`
}

// UnmarshalJSON accepts "holysheep" as well as {"upstream": "holysheep", ...}.
func (e *RouteEntry) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err == nil {
		*e = RouteEntry{Upstream: name}
		return nil
	}
	type plain RouteEntry
	var p plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("route entry must be an upstream name or {upstream, model, price}: %w", err)
	}
	*e = RouteEntry(p)
	return nil
}

// Price is in US dollars per million tokens.
type Price struct {
	InputPerMTok  float64 `json:"inputPerMtok"`
	OutputPerMTok float64 `json:"outputPerMtok"`
}

// Retry bounds attempts on one upstream before the gateway falls back.
type Retry struct {
	Attempts   int      `json:"attempts"`
	BackoffMin Duration `json:"backoffMin"`
	BackoffMax Duration `json:"backoffMax"`
}

// RateLimit is per client key; 0 turns a limit off.
type RateLimit struct {
	RPM int `json:"rpm"`
	TPM int `json:"tpm"`
}

// Duration is written with a unit in config ("200ms", "3m").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalJSON parses "200ms"; a bare number is refused because its unit
// would be a guess.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration %s must be a string with a unit, e.g. \"30s\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration: write it with a unit, e.g. \"30s\"", s)
	}
	*d = Duration(v)
	return nil
}

// Secret is a config value that must not be printed. Its String and
// GoString methods hide it, so a Config that ends up in a log line or an
// error message by mistake still does not leak it.
type Secret struct{ value string }

// NewSecret wraps a value.
func NewSecret(v string) Secret { return Secret{value: v} }

// IsSet reports whether the value is non-empty.
func (s Secret) IsSet() bool { return s.value != "" }

// Len is the value's length, for validation messages that must not show it.
func (s Secret) Len() int { return len(s.value) }

func (s Secret) String() string {
	if s.value == "" {
		return "[unset]"
	}
	return "[secret]"
}

// GoString hides the value from %#v too.
func (s Secret) GoString() string { return s.String() }

// Output is the value as a Pulumi secret output: it stays encrypted in the
// state and masked in the CLI wherever it flows.
func (s Secret) Output() pulumi.StringOutput {
	return pulumi.ToSecret(pulumi.String(s.value)).(pulumi.StringOutput)
}

// Source is where raw configuration comes from: the Pulumi engine in a
// deploy, a map in tests. Keys are full ("relaygate:hostCount",
// "aws:region"); structured values arrive as JSON, the way the engine passes
// them to a program.
type Source interface {
	Lookup(key string) (string, bool)
	IsSecret(key string) bool
}

type contextSource struct{ ctx *pulumi.Context }

func (s contextSource) Lookup(key string) (string, bool) { return s.ctx.GetConfig(key) }
func (s contextSource) IsSecret(key string) bool         { return s.ctx.IsConfigSecret(key) }

// Load reads and validates the running stack's configuration.
func Load(ctx *pulumi.Context) (*Config, error) {
	return Parse(contextSource{ctx}, ctx.Stack())
}
