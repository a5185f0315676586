package stackconfig

import (
	"cmp"
	"fmt"
	"regexp"
	"strings"
)

// LedgerURLEnv is the gateway container's variable holding the ledger's
// Postgres URL (with its password); the rendered config only names it.
const LedgerURLEnv = "LEDGER_POSTGRES_URL"

// Defaults of the ledger fields a stack leaves out.
const (
	DefaultLedgerImage               = "postgres:17-bookworm"
	DefaultLedgerInstanceClass       = "db.t4g.small"
	DefaultLedgerAllocatedStorageGB  = 20
	DefaultLedgerBackupRetentionDays = 7
	DefaultLedgerEngineVersion       = "17"
)

// LedgerPasswordCommand is what an operator runs to set the ledger's
// database password. Hex, not base64: RDS refuses '/' in a master password,
// which base64 output holds about half the time.
const LedgerPasswordCommand = `pulumi config set --secret ledgerDbPassword "$(openssl rand -hex 32)"`

// Ledger is the Postgres the gateway's usage ledger writes to (config key
// ledger): a container beside each host's gateway, or one Amazon RDS
// instance shared by every host (managed).
type Ledger struct {
	Enabled bool
	// Image is the Postgres container's image (not managed).
	Image string
	// Managed runs Amazon RDS for PostgreSQL instead of a container.
	Managed             bool
	InstanceClass       string
	AllocatedStorageGB  int
	BackupRetentionDays int
	// EngineVersion is RDS's engine version, a major ("17") or major.minor.
	EngineVersion string
	// Password is the database user's password (secret key
	// ledgerDbPassword); required when managed. Unset on a container, the
	// database trusts the host's private Docker network.
	Password Secret
}

type ledgerJSON struct {
	Enabled             *bool  `json:"enabled"`
	Image               string `json:"image"`
	Managed             *bool  `json:"managed"`
	InstanceClass       string `json:"instanceClass"`
	AllocatedStorageGB  *int   `json:"allocatedStorageGb"`
	BackupRetentionDays *int   `json:"backupRetentionDays"`
	EngineVersion       string `json:"engineVersion"`
}

var (
	dbInstanceClassRE = regexp.MustCompile(`^db\.[a-z0-9]+\.[a-z0-9]+$`)
	engineVersionRE   = regexp.MustCompile(`^[0-9]{2}(\.[0-9]+)?$`)
)

// rdsPasswordOK is RDS's rule for a master password (CreateDBInstance,
// MasterUserPassword): 8 to 128 printable ASCII characters, none of
// / ' " @ or a space. The container stacks get the same rule, so a stack
// can move to RDS with its password.
func rdsPasswordOK(pw string) bool {
	if len(pw) < 8 || len(pw) > 128 {
		return false
	}
	for _, r := range pw {
		if r <= ' ' || r > '~' || strings.ContainsRune(`/'"@`, r) {
			return false
		}
	}
	return true
}

// parseLedger reads ledger and the ledgerDbPassword secret.
func (p *parser) parseLedger(c *Config) {
	var raw ledgerJSON
	if !p.object("ledger", &raw, "enabled, image, managed, instanceClass, allocatedStorageGb, backupRetentionDays, engineVersion") {
		return
	}
	l := Ledger{
		Enabled:             raw.Enabled == nil || *raw.Enabled,
		Image:               strings.TrimSpace(raw.Image),
		Managed:             raw.Managed != nil && *raw.Managed,
		InstanceClass:       strings.TrimSpace(raw.InstanceClass),
		AllocatedStorageGB:  DefaultLedgerAllocatedStorageGB,
		BackupRetentionDays: DefaultLedgerBackupRetentionDays,
		EngineVersion:       strings.TrimSpace(raw.EngineVersion),
	}
	// Read even when the ledger is off, so that a password stored in plain
	// text is refused either way.
	pw := p.optionalSecret("ledgerDbPassword")
	if pw.IsSet() && !rdsPasswordOK(pw.value) {
		// The value is a secret: say what is wrong, never what it is.
		p.fail("ledgerDbPassword", "must be 8 to 128 printable ASCII characters without / ' \" @ or spaces (RDS's rule; its value is not shown: it is a secret); run `%s`", LedgerPasswordCommand)
	}
	if !l.Enabled {
		c.Ledger = Ledger{}
		return
	}
	l.Password = pw
	l.Image = cmp.Or(l.Image, DefaultLedgerImage)
	l.InstanceClass = cmp.Or(l.InstanceClass, DefaultLedgerInstanceClass)
	l.EngineVersion = cmp.Or(l.EngineVersion, DefaultLedgerEngineVersion)
	l.AllocatedStorageGB = valueOr(raw.AllocatedStorageGB, l.AllocatedStorageGB)
	l.BackupRetentionDays = valueOr(raw.BackupRetentionDays, l.BackupRetentionDays)

	if l.Managed {
		if c.Target != TargetAWS {
			p.fail("ledger.managed", "is true but the stack's target is %q: Amazon RDS needs the aws target; set managed to false for a Postgres container", c.Target)
		}
		if !dbInstanceClassRE.MatchString(l.InstanceClass) {
			p.fail("ledger.instanceClass", "%q is not an RDS instance class such as %s", l.InstanceClass, DefaultLedgerInstanceClass)
		}
		// gp3 storage for RDS for PostgreSQL: 20 to 65,536 GiB.
		if l.AllocatedStorageGB < 20 || l.AllocatedStorageGB > 65536 {
			p.fail("ledger.allocatedStorageGb", "must be between 20 and 65536 GiB (RDS gp3 storage), got %d", l.AllocatedStorageGB)
		}
		// 0 would turn automated backups off; RDS allows at most 35 days.
		if l.BackupRetentionDays < 1 || l.BackupRetentionDays > 35 {
			p.fail("ledger.backupRetentionDays", "must be between 1 and 35 days (RDS's range; 0 would turn backups off), got %d", l.BackupRetentionDays)
		}
		if !engineVersionRE.MatchString(l.EngineVersion) {
			p.fail("ledger.engineVersion", "%q is not an RDS for PostgreSQL engine version such as %q or \"17.4\"", l.EngineVersion, DefaultLedgerEngineVersion)
		}
		if !pw.IsSet() {
			p.fail("ledgerDbPassword", "is not set but ledger.managed is true: the RDS instance needs a password; run `%s`", LedgerPasswordCommand)
		}
	} else {
		if !imageRefRE.MatchString(l.Image) {
			p.fail("ledger.image", "%q is not an image reference such as %s", l.Image, DefaultLedgerImage)
		}
		if !pw.IsSet() {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s is not set, so the ledger's Postgres container trusts every connection from the host's private Docker network "+
				"(only this stack's containers are on it, and it publishes no port); to require a password run `%s` before the first deploy "+
				"(the password is set when the database volume is first created)", fullKey("ledgerDbPassword"), LedgerPasswordCommand))
		}
	}
	c.Ledger = l
}
