package ledgerdb

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/internals"

	"github.com/relaygate/relaygate/infra/internal/stackconfig"
)

// TestIdentifier: the instance identifier must be one RDS accepts, or the
// first `up` fails at the database. The rules, from the Amazon RDS User
// Guide, "Naming constraints in Amazon RDS"
// (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/CHAP_Limits.html#RDS_Limits.Constraints)
// and the CreateDBInstance API reference (DBInstanceIdentifier): 1 to 63
// letters, digits or hyphens; the first character a letter; no two
// consecutive hyphens; no trailing hyphen. RDS stores it in lower case, so
// the program writes it so, and a diff never sees "Prod" against "prod".
// The final snapshot's name (<identifier>-final, DBSnapshotIdentifier)
// follows the same rules, up to 255 characters.
func TestIdentifier(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, want string }{
		{"relaygate-prod-ledger", "relaygate-prod-ledger"},
		{"relaygate-Prod_EU.2-ledger", "relaygate-prod-eu-2-ledger"},
		{"relaygate--a--ledger-", "relaygate-a-ledger"},
		{"relaygate-" + strings.Repeat("x", 52) + "-ledger", "relaygate-" + strings.Repeat("x", 52)}, // cut at 63, then the hyphen left at the end
	} {
		got, err := Identifier(tt.name)
		if err != nil || got != tt.want {
			t.Errorf("Identifier(%q) = %q, %v; want %q", tt.name, got, err, tt.want)
		}
		if len(got) > 63 || strings.Contains(got, "--") || strings.HasSuffix(got, "-") || got[0] < 'a' || got[0] > 'z' {
			t.Errorf("Identifier(%q) = %q breaks RDS's rules", tt.name, got)
		}
	}
	for _, bad := range []string{"", "---", "1-ledger", "_"} {
		if got, err := Identifier(bad); err == nil {
			t.Errorf("Identifier(%q) = %q, want an error", bad, got)
		}
	}
}

// TestPostgresURL: the password is percent-encoded, so every character the
// program lets through (RDS's rule) reads back unchanged with the URL
// parser pgx uses, and the gateway's own check (no '@', '#', '?' outside
// the user part) holds.
func TestPostgresURL(t *testing.T) {
	t.Parallel()
	for _, pw := range []string{"5f0c1e7a9b3d42c8", "a+b=c%d#e?f:g[h]&$!~", ""} {
		raw := PostgresURL("ledger-db", pw, "disable")
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		got, set := u.User.Password()
		if got != pw || set != (pw != "") || u.User.Username() != "relaygate" {
			t.Errorf("%q: user %q, password read back %t", raw, u.User.Username(), got == pw)
		}
		if u.Host != "ledger-db:5432" || u.Path != "/relaygate" || u.Query().Get("sslmode") != "disable" || strings.ContainsAny(u.Host+u.Path, "@#?") {
			t.Errorf("%q: host %q, path %q, query %q", raw, u.Host, u.Path, u.RawQuery)
		}
	}
}

type mocks struct{}

func (mocks) NewResource(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	outs := args.Inputs.Copy()
	switch args.TypeToken {
	case "aws:rds/instance:Instance":
		outs["address"] = resource.NewProperty(args.Name + ".c0abcdefghij.us-east-1.rds.amazonaws.com")
	case "aws:rds/subnetGroup:SubnetGroup":
		outs["name"] = resource.NewProperty(args.Name + "-0a1b2c3")
	}
	return args.Name + "-id", outs, nil
}

func (mocks) Call(args pulumi.MockCallArgs) (resource.PropertyMap, error) {
	return nil, fmt.Errorf("unexpected call %s", args.Token)
}

// TestURLIsSecret: the gateway's URL carries the password, so it is a
// secret output, and it reaches the instance's address over TLS.
func TestURLIsSecret(t *testing.T) {
	t.Parallel()
	const pw = "5f0c1e7a9b3d42c8e6a1f0b7d3c9e2a4"
	var got pulumi.StringOutput
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		d, err := New(ctx, "relaygate-prod-ledger", Args{
			SubnetIDs:       pulumi.ToStringArray([]string{"subnet-a", "subnet-b"}).ToStringArrayOutput(),
			SecurityGroupID: pulumi.String("sg-1"),
			Ledger: stackconfig.Ledger{Enabled: true, Managed: true, InstanceClass: "db.t4g.small", AllocatedStorageGB: 20,
				BackupRetentionDays: 7, EngineVersion: "17", Password: stackconfig.NewSecret(pw)},
		})
		if err != nil {
			return err
		}
		got = d.URL
		return nil
	}, pulumi.WithMocks("relaygate", "prod", mocks{}))
	if err != nil {
		t.Fatal(err)
	}
	r, err := internals.UnsafeAwaitOutput(context.Background(), got)
	if err != nil {
		t.Fatal(err)
	}
	want := "postgres://relaygate:" + pw + "@relaygate-prod-ledger.c0abcdefghij.us-east-1.rds.amazonaws.com:5432/relaygate?sslmode=require"
	if !r.Secret || r.Value != want {
		t.Errorf("URL: secret %t, as expected %t", r.Secret, r.Value == want)
	}

	// Without a password there is no instance to create.
	err = pulumi.RunErr(func(ctx *pulumi.Context) error {
		_, err := New(ctx, "relaygate-prod-ledger", Args{Ledger: stackconfig.Ledger{Enabled: true, Managed: true}})
		return err
	}, pulumi.WithMocks("relaygate", "prod", mocks{}))
	if err == nil || !strings.Contains(err.Error(), "no password") {
		t.Errorf("New without a password: %v", err)
	}
}
