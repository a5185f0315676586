package stack

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/infra/internal/gatewayconfig"
	"github.com/relaygate/relaygate/infra/internal/stackconfig"
)

func TestChooseZones(t *testing.T) {
	t.Parallel()
	offered := []string{"us-east-1f", "us-east-1a", "us-east-1c", "us-east-1a"}
	tests := []struct {
		name    string
		cfg     stackconfig.Config
		offered []string
		want    []string
		err     string
	}{
		{"one host, one zone", stackconfig.Config{HostCount: 1}, offered, []string{"us-east-1a"}, ""},
		{"load balancer needs two", stackconfig.Config{HostCount: 1, LoadBalancer: true}, offered, []string{"us-east-1a", "us-east-1c"}, ""},
		{"one zone per host", stackconfig.Config{HostCount: 3, LoadBalancer: true, ManagedRedis: true}, offered, []string{"us-east-1a", "us-east-1c", "us-east-1f"}, ""},
		{"the Multi-AZ ledger database needs two", stackconfig.Config{HostCount: 1, Ledger: stackconfig.Ledger{Enabled: true, Managed: true}}, offered, []string{"us-east-1a", "us-east-1c"}, ""},
		{"a ledger container does not", stackconfig.Config{HostCount: 1, Ledger: stackconfig.Ledger{Enabled: true}}, offered, []string{"us-east-1a"}, ""},
		{"more hosts than zones share them", stackconfig.Config{HostCount: 5, LoadBalancer: true, ManagedRedis: true}, offered, []string{"us-east-1a", "us-east-1c", "us-east-1f"}, ""},
		{"too few zones for a load balancer", stackconfig.Config{HostCount: 2, LoadBalancer: true, InstanceType: "p5.48xlarge", Region: "us-east-1"}, []string{"us-east-1a"}, nil, "p5.48xlarge is offered in 1 availability zone(s) of us-east-1"},
		{"not offered at all", stackconfig.Config{HostCount: 1, InstanceType: "g6e.xlarge", Region: "eu-north-1"}, nil, nil, "offered in 0 availability zone(s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ChooseZones(tt.offered, &tt.cfg)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("ChooseZones = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestSourceFrom(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "Dockerfile"), []byte("FROM scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	workdir := filepath.Join(root, "infra")
	if err := os.Mkdir(workdir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := SourceFrom(root, workdir)
	if err != nil || src.Context != ".." || src.Dockerfile != "../Dockerfile" {
		t.Errorf("SourceFrom(root, root/infra) = %+v, %v", src, err)
	}
	if src, err := SourceFrom(root, root); err != nil || src.Context != "." || src.Dockerfile != "Dockerfile" {
		t.Errorf("SourceFrom(root, root) = %+v, %v", src, err)
	}
	if _, err := SourceFrom("", workdir); err == nil {
		t.Error("a checkout without Pulumi.yaml was accepted")
	}
	if err := os.WriteFile(filepath.Join(root, "Pulumi.yaml"), []byte("name: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if src, err := SourceFrom("", workdir); err != nil || src.Context != ".." {
		t.Errorf("SourceFrom without a root, from root/infra = %+v, %v", src, err)
	}
	if _, err := SourceFrom(workdir, root); err == nil {
		t.Error("a root without a Dockerfile was accepted")
	}
}

// directiveRE is a Dockerfile parser directive (Dockerfile reference,
// "Parser directives": `# directive=value`, only before the first other
// line).
var directiveRE = regexp.MustCompile(`^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=`)

// TestDockerfileNeedsNoFrontendImage keeps the `# syntax=` directive out of
// the Dockerfile: with it, the build the Docker provider runs fails on a
// Docker 20.10 engine (a real `pulumi up` of the local stack showed it), and
// it needs the frontend image from a registry.
func TestDockerfileNeedsNoFrontendImage(t *testing.T) {
	t.Parallel()
	check := func(dockerfile string) error {
		for _, line := range strings.Split(dockerfile, "\n") {
			m := directiveRE.FindStringSubmatch(line)
			if m == nil {
				return nil
			}
			if strings.EqualFold(m[1], "syntax") {
				return fmt.Errorf("the Dockerfile names a frontend image: %q", line)
			}
		}
		return nil
	}
	for _, tc := range []struct {
		text string
		ok   bool
	}{
		{"# syntax=docker/dockerfile:1\nFROM scratch\n", false},
		{"#escape=`\n# Syntax = docker/dockerfile:1.7\nFROM scratch\n", false},
		{"# a comment\n# syntax=docker/dockerfile:1\nFROM scratch\n", true}, // not a directive after a comment
		{"FROM scratch\n", true},
	} {
		if err := check(tc.text); (err == nil) != tc.ok {
			t.Errorf("%q: error %v, want ok=%t", tc.text, err, tc.ok)
		}
	}
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if err := check(string(b)); err != nil {
		t.Error(err)
	}
}

// TestDockerfileCreatesTheLedgerSpillDir: the gateway image holds the
// ledger's spill directory, owned by the gateway's user (distroless
// nonroot, uid 65532). A new named volume mounted there copies that
// ownership (checked once against Docker 20.10: `stat` in the fresh
// volume showed 65532:65532); were the directory missing from the image,
// the volume would be root's and the gateway could not spill.
func TestDockerfileCreatesTheLedgerSpillDir(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	dir := gatewayconfig.LedgerSpillDir
	if !strings.Contains(text, "RUN mkdir -p /out-ledger"+dir+"\n") {
		t.Errorf("the build stage does not create %s under /out-ledger", dir)
	}
	parent := filepath.Dir(dir)
	if !strings.Contains(text, "COPY --from=build --chown=65532:65532 /out-ledger"+parent+"/ "+parent+"/\n") {
		t.Errorf("the runtime image does not copy %s owned by 65532", dir)
	}
	if !strings.Contains(text, "USER nonroot:nonroot") {
		t.Error("the gateway no longer runs as nonroot (65532); update the spill directory's owner")
	}
}
