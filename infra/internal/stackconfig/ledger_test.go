package stackconfig

import (
	"strings"
	"testing"
)

func TestParseLedger(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		values map[string]string
		want   Ledger // Password compared by IsSet only
		warn   string // a warning that must be given, "" for none about the ledger
	}{
		{"defaults: a container with the password", awsValues(),
			Ledger{Enabled: true, Image: "postgres:17-bookworm", InstanceClass: "db.t4g.small", AllocatedStorageGB: 20, BackupRetentionDays: 7, EngineVersion: "17", Password: NewSecret("x")}, ""},
		{"a container without a password trusts the private network", without(awsValues(), "relaygate:ledgerDbPassword"),
			Ledger{Enabled: true, Image: "postgres:17-bookworm", InstanceClass: "db.t4g.small", AllocatedStorageGB: 20, BackupRetentionDays: 7, EngineVersion: "17"},
			"relaygate:ledgerDbPassword is not set, so the ledger's Postgres container trusts every connection"},
		{"managed, every field set", with(prodValues(), "relaygate:ledger",
			`{"managed":true,"instanceClass":"db.m7g.large","allocatedStorageGb":100,"backupRetentionDays":14,"engineVersion":"17.4"}`),
			Ledger{Enabled: true, Image: "postgres:17-bookworm", Managed: true, InstanceClass: "db.m7g.large", AllocatedStorageGB: 100, BackupRetentionDays: 14, EngineVersion: "17.4", Password: NewSecret("x")}, ""},
		{"off", with(awsValues(), "relaygate:ledger", `{"enabled":false,"managed":true}`), Ledger{}, ""},
		{"off on the local stack", localValues(), Ledger{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, tt.values)
			got := c.Ledger
			if got.Password.IsSet() != tt.want.Password.IsSet() {
				t.Errorf("password set %t, want %t", got.Password.IsSet(), tt.want.Password.IsSet())
			}
			got.Password, tt.want.Password = Secret{}, Secret{}
			if got != tt.want {
				t.Errorf("ledger = %+v\nwant     %+v", got, tt.want)
			}
			var ledgerWarnings []string
			for _, w := range c.Warnings {
				if strings.Contains(w, "ledger") {
					ledgerWarnings = append(ledgerWarnings, w)
				}
			}
			switch {
			case tt.warn == "" && len(ledgerWarnings) > 0:
				t.Errorf("unexpected warnings %q", ledgerWarnings)
			case tt.warn != "" && (len(ledgerWarnings) != 1 || !strings.Contains(ledgerWarnings[0], tt.warn) ||
				!strings.Contains(ledgerWarnings[0], LedgerPasswordCommand)):
				t.Errorf("warnings %q, want one containing %q and the command to set it", ledgerWarnings, tt.warn)
			}
		})
	}
}

func TestParseLedgerRejects(t *testing.T) {
	t.Parallel()
	managed := `{"managed":true}`
	tests := []struct {
		name   string
		values map[string]string
		plain  []string
		want   []string
	}{
		{"managed without a password", without(with(prodValues(), "relaygate:ledger", managed), "relaygate:ledgerDbPassword"), nil,
			[]string{"relaygate:ledgerDbPassword: is not set but ledger.managed is true", LedgerPasswordCommand}},
		{"password in plain text", awsValues(), []string{"relaygate:ledgerDbPassword"},
			[]string{"relaygate:ledgerDbPassword: is stored in plain text"}},
		{"password in plain text with the ledger off", with(awsValues(), "relaygate:ledger", `{"enabled":false}`), []string{"relaygate:ledgerDbPassword"},
			[]string{"relaygate:ledgerDbPassword: is stored in plain text"}},
		// base64 output often holds '/', which RDS refuses.
		{"password with a slash", with(awsValues(), "relaygate:ledgerDbPassword", "q0Zk/8Jw9PbT+e2Lr1yV"), nil,
			[]string{"relaygate:ledgerDbPassword: must be 8 to 128 printable ASCII characters without / ' \" @", "openssl rand -hex 32"}},
		{"password too short", with(awsValues(), "relaygate:ledgerDbPassword", "short7"), nil,
			[]string{"relaygate:ledgerDbPassword: must be 8 to 128"}},
		{"password with a space", with(awsValues(), "relaygate:ledgerDbPassword", "correct horse battery"), nil,
			[]string{"relaygate:ledgerDbPassword: must be 8 to 128"}},
		{"managed on the local target", with(localValues(), "relaygate:ledger", managed), nil,
			[]string{"relaygate:ledger.managed: is true but the stack's target is \"local\""}},
		{"bad instance class", with(prodValues(), "relaygate:ledger", `{"managed":true,"instanceClass":"t4g.small"}`), nil,
			[]string{"relaygate:ledger.instanceClass: \"t4g.small\" is not an RDS instance class"}},
		{"too little storage", with(prodValues(), "relaygate:ledger", `{"managed":true,"allocatedStorageGb":10}`), nil,
			[]string{"relaygate:ledger.allocatedStorageGb: must be between 20 and 65536"}},
		{"backups off", with(prodValues(), "relaygate:ledger", `{"managed":true,"backupRetentionDays":0}`), nil,
			[]string{"relaygate:ledger.backupRetentionDays: must be between 1 and 35"}},
		{"bad engine version", with(prodValues(), "relaygate:ledger", `{"managed":true,"engineVersion":"latest"}`), nil,
			[]string{"relaygate:ledger.engineVersion: \"latest\" is not an RDS for PostgreSQL engine version"}},
		{"bad image", with(awsValues(), "relaygate:ledger", `{"image":"postgres 17"}`), nil,
			[]string{"relaygate:ledger.image: \"postgres 17\" is not an image reference"}},
		{"misspelt field", with(awsValues(), "relaygate:ledger", `{"enable":true}`), nil,
			[]string{"relaygate:ledger: json: unknown field \"enable\"", "fields: enabled, image, managed"}},
		{"missing key", without(awsValues(), "relaygate:ledger"), nil,
			[]string{"relaygate:ledger: is not set"}},
		{"an upstream key variable that is the ledger's", with(awsValues(), "relaygate:upstreams",
			`[{"name":"holysheep","baseUrl":"https://api.holysheep.ai/v1","apiKeyEnv":"LEDGER_POSTGRES_URL"}]`), nil,
			[]string{"relaygate:upstreams[0].apiKeyEnv: \"LEDGER_POSTGRES_URL\" must be an upper-case variable name other than GATEWAY_API_KEY and LEDGER_POSTGRES_URL"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parseFails(t, tt.values, tt.plain, tt.want, tt.values["relaygate:ledgerDbPassword"])
		})
	}
}
