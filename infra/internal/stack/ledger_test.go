package stack

import (
	"context"
	"fmt"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/internals"

	"github.com/relaygate/relaygate/infra/internal/stackconfig"
)

type noResources struct{}

func (noResources) NewResource(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	return "", nil, fmt.Errorf("unexpected resource %s", args.TypeToken)
}

func (noResources) Call(args pulumi.MockCallArgs) (resource.PropertyMap, error) {
	return nil, fmt.Errorf("unexpected call %s", args.Token)
}

// TestContainerLedger: the gateway's URL for the Postgres container beside
// it is a secret output, with the password or (without one) none; a stack
// whose ledger is off or RDS gets no container.
func TestContainerLedger(t *testing.T) {
	t.Parallel()
	const pw = "5f0c1e7a9b3d42c8e6a1f0b7d3c9e2a4"
	for _, tt := range []struct {
		name    string
		ledger  stackconfig.Ledger
		wantURL string // "" for no container
	}{
		{"with the password", stackconfig.Ledger{Enabled: true, Image: "postgres:17-bookworm", Password: stackconfig.NewSecret(pw)},
			"postgres://relaygate:" + pw + "@ledger-db:5432/relaygate?sslmode=disable"},
		{"trusting the private network", stackconfig.Ledger{Enabled: true, Image: "postgres:17-bookworm"},
			"postgres://relaygate@ledger-db:5432/relaygate?sslmode=disable"},
		{"RDS", stackconfig.Ledger{Enabled: true, Managed: true, Password: stackconfig.NewSecret(pw)}, ""},
		{"off", stackconfig.Ledger{}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var url pulumi.StringOutput
			var hasDB bool
			err := pulumi.RunErr(func(ctx *pulumi.Context) error {
				u, db := containerLedger(&stackconfig.Config{Ledger: tt.ledger})
				url, hasDB = u, db != nil
				if db != nil && db.Image != tt.ledger.Image {
					return fmt.Errorf("image %q", db.Image)
				}
				return nil
			}, pulumi.WithMocks("relaygate", "dev", noResources{}))
			if err != nil {
				t.Fatal(err)
			}
			if hasDB != (tt.wantURL != "") {
				t.Fatalf("container %t, want %t", hasDB, tt.wantURL != "")
			}
			if !hasDB {
				return
			}
			r, err := internals.UnsafeAwaitOutput(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			if !r.Secret || r.Value != tt.wantURL {
				t.Errorf("URL: secret %t, %v; want %s", r.Secret, r.Value, tt.wantURL)
			}
		})
	}
}
