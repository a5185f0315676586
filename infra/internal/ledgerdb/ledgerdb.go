// Package ledgerdb is the Postgres of the gateway's usage ledger on a
// multi-host stack: one Amazon RDS for PostgreSQL instance that every
// host's gateway writes its rows to.
//
// It lives in private subnets, admits only the hosts' security group, is
// not publicly accessible, encrypts its storage, runs a standby in a second
// zone (Multi-AZ) and keeps automated backups. The gateway connects with
// TLS (sslmode=require; RDS for PostgreSQL 15 and later also refuses plain
// connections by default, rds.force_ssl).
package ledgerdb

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/rds"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/relaygate/relaygate/infra/internal/awstags"
	"github.com/relaygate/relaygate/infra/internal/stackconfig"
)

// The database and its user, the same on a container and on RDS.
const (
	DBName = "relaygate"
	User   = "relaygate"
	Port   = 5432
)

// Args configures a Database.
type Args struct {
	Tags            map[string]string
	SubnetIDs       pulumi.StringArrayInput
	SecurityGroupID pulumi.StringInput
	Ledger          stackconfig.Ledger
	// DeletionProtection protects the instance from `pulumi destroy` and
	// from deletion in AWS, and takes a final snapshot if it is deleted
	// anyway.
	DeletionProtection bool
}

// Database is the component.
type Database struct {
	pulumi.ResourceState

	// Address is the instance's DNS name.
	Address pulumi.StringOutput
	// URL is the gateway's ledger.postgres_url, password included: a
	// secret output.
	URL pulumi.StringOutput
}

// New creates the subnet group and the instance. name is sanitized into an
// RDS identifier (see Identifier).
func New(ctx *pulumi.Context, name string, args Args, opts ...pulumi.ResourceOption) (*Database, error) {
	if !args.Ledger.Password.IsSet() {
		return nil, fmt.Errorf("ledger database %s: no password (ledgerDbPassword)", name)
	}
	id, err := Identifier(name)
	if err != nil {
		return nil, fmt.Errorf("ledger database %s: %w", name, err)
	}
	d := &Database{}
	if err := ctx.RegisterComponentResource("relaygate:infra:LedgerDatabase", name, d, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(d)
	tags := awstags.Named(id, args.Tags)

	// Auto-named from id (lower case, as RDS stores subnet group names).
	subnets, err := rds.NewSubnetGroup(ctx, id, &rds.SubnetGroupArgs{
		Description: pulumi.String("Relaygate usage ledger: private subnets"),
		SubnetIds:   args.SubnetIDs,
		Tags:        tags,
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("ledger database %s: subnet group: %w", name, err)
	}
	l := args.Ledger
	in := &rds.InstanceArgs{
		Identifier:              pulumi.String(id),
		Engine:                  pulumi.String("postgres"),
		EngineVersion:           pulumi.String(l.EngineVersion),
		AutoMinorVersionUpgrade: pulumi.Bool(true),
		InstanceClass:           pulumi.String(l.InstanceClass),
		AllocatedStorage:        pulumi.Int(l.AllocatedStorageGB),
		StorageType:             pulumi.String("gp3"),
		StorageEncrypted:        pulumi.Bool(true),
		MultiAz:                 pulumi.Bool(true),
		PubliclyAccessible:      pulumi.Bool(false),
		DbSubnetGroupName:       subnets.Name,
		VpcSecurityGroupIds:     pulumi.StringArray{args.SecurityGroupID},
		Port:                    pulumi.Int(Port),
		DbName:                  pulumi.String(DBName),
		Username:                pulumi.String(User),
		Password:                l.Password.Output(),
		BackupRetentionPeriod:   pulumi.Int(l.BackupRetentionDays),
		CopyTagsToSnapshot:      pulumi.Bool(true),
		Tags:                    tags,
	}
	instOpts := []pulumi.ResourceOption{parent, pulumi.AdditionalSecretOutputs([]string{"password"})}
	if args.DeletionProtection {
		in.DeletionProtection = pulumi.Bool(true)
		in.SkipFinalSnapshot = pulumi.Bool(false)
		in.FinalSnapshotIdentifier = pulumi.String(id + "-final")
		// Automated backups go with a deleted instance unless kept.
		in.DeleteAutomatedBackups = pulumi.Bool(false)
		instOpts = append(instOpts, pulumi.Protect(true))
	} else {
		in.SkipFinalSnapshot = pulumi.Bool(true)
	}
	inst, err := rds.NewInstance(ctx, id, in, instOpts...)
	if err != nil {
		return nil, fmt.Errorf("ledger database %s: instance: %w", name, err)
	}
	d.Address = inst.Address
	d.URL = pulumi.ToSecret(pulumi.All(inst.Address, l.Password.Output()).ApplyT(func(v []any) string {
		return PostgresURL(v[0].(string), v[1].(string), "require")
	})).(pulumi.StringOutput)
	return d, ctx.RegisterResourceOutputs(d, pulumi.Map{"address": d.Address})
}

// PostgresURL is the gateway's ledger URL for the database at host, the
// password percent-encoded (empty: none).
func PostgresURL(host, password, sslmode string) string {
	u := url.URL{Scheme: "postgres", User: url.User(User), Host: fmt.Sprintf("%s:%d", host, Port), Path: "/" + DBName,
		RawQuery: url.Values{"sslmode": {sslmode}}.Encode()}
	if password != "" {
		u.User = url.UserPassword(User, password)
	}
	return u.String()
}

var (
	notIdentifierRE = regexp.MustCompile(`[^a-z0-9]+`)
	identifierRE    = regexp.MustCompile(`^[a-z]([a-z0-9]|-[a-z0-9])*$`)
)

// maxIdentifierLen is RDS's limit for a PostgreSQL DB instance identifier.
const maxIdentifierLen = 63

// Identifier turns a resource name (which holds the stack's name) into an
// RDS DB instance identifier: lower case letters, digits and single
// hyphens, starting with a letter, not ending with a hyphen, at most 63
// characters (see the test for the rules' source).
func Identifier(name string) (string, error) {
	id := strings.Trim(notIdentifierRE.ReplaceAllString(strings.ToLower(name), "-"), "-")
	if len(id) > maxIdentifierLen {
		id = strings.TrimRight(id[:maxIdentifierLen], "-")
	}
	if !identifierRE.MatchString(id) {
		return "", fmt.Errorf("%q makes no RDS identifier (letters, digits and hyphens, starting with a letter)", name)
	}
	return id, nil
}
