package ledgerdb

import (
	"net/url"
	"strings"
	"testing"
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
