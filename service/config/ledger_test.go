package config

import (
	"strings"
	"testing"
	"time"
)

func TestLedgerDefaultsAndOff(t *testing.T) {
	cfg, err := Parse([]byte(minimal), env(map[string]string{"RELAY_KEY": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Ledger.Enabled() || cfg.Ledger != (Ledger{}) {
		t.Errorf("without ledger: %+v, want it off and empty", cfg.Ledger)
	}
	doc := minimal + "ledger: {postgres_url: \"${PG_URL}\"}\n"
	cfg, err = Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k", "PG_URL": "postgres://rg:s3cret@db.internal:5432/relaygate?sslmode=require"}))
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Ledger
	want := Ledger{
		PostgresURL:   "postgres://rg:s3cret@db.internal:5432/relaygate?sslmode=require",
		SpillDir:      DefaultLedgerSpillDir,
		BatchInterval: Duration(DefaultLedgerBatchInterval),
		BatchRows:     DefaultLedgerBatchRows,
		QueueRows:     DefaultLedgerQueueRows,
		FsyncInterval: Duration(DefaultLedgerFsyncInterval),
		WriteTimeout:  Duration(DefaultLedgerWriteTimeout),
	}
	if l != want {
		t.Errorf("ledger = %+v\nwant %+v", l, want)
	}
	if !l.Enabled() {
		t.Error("a postgres_url turns the ledger on")
	}
}

func TestLedgerSettings(t *testing.T) {
	doc := minimal + `ledger:
  postgres_url: postgres://127.0.0.1:5432/ledger
  spill_dir: /tmp/spill
  batch_interval: 50ms
  batch_rows: 100
  queue_rows: 2000
  fsync_interval: 1s
  write_timeout: 2s
`
	cfg, err := Parse([]byte(doc), env(map[string]string{"RELAY_KEY": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Ledger
	if l.SpillDir != "/tmp/spill" || l.BatchInterval.D() != 50*time.Millisecond || l.BatchRows != 100 ||
		l.QueueRows != 2000 || l.FsyncInterval.D() != time.Second || l.WriteTimeout.D() != 2*time.Second {
		t.Errorf("ledger = %+v: the file's values must be kept", l)
	}
}

// TestBrokenLedgerConfigs: each mistake names its line and key, and never
// quotes the URL, which may hold a password.
func TestBrokenLedgerConfigs(t *testing.T) {
	lineOf := func(doc, key string) string {
		for i, line := range strings.Split(doc, "\n") {
			if strings.Contains(line, key+":") {
				return "line " + itoa(i+1) + ": "
			}
		}
		t.Fatalf("no %s in the document", key)
		return ""
	}
	tests := []struct {
		name, ledger, key, want string
		vars                    map[string]string
	}{
		{"not a postgres url", "  postgres_url: mysql://u:hunter2@db/x\n", "ledger.postgres_url", "must be a postgres:// or postgresql:// URL", nil},
		{"no host", "  postgres_url: postgres:///x\n", "ledger.postgres_url", "with a host", nil},
		{"ambiguous password", "  postgres_url: \"postgres://u:hun#ter2@db/x\"\n", "ledger.postgres_url", "percent-encode", nil},
		{"unset variable", "  postgres_url: ${PG_URL}\n", "ledger.postgres_url", "PG_URL is not set", nil},
		{"settings without url", "  spill_dir: /tmp/x\n", "ledger.postgres_url", "the ledger is off", nil},
		{"zero batch rows", "  postgres_url: postgres://db/x\n  batch_rows: -1\n", "ledger.batch_rows", "between 1 and 100000", nil},
		{"queue too big", "  postgres_url: postgres://db/x\n  queue_rows: 100000000\n", "ledger.queue_rows", "between 1 and 10000000", nil},
		{"long fsync", "  postgres_url: postgres://db/x\n  fsync_interval: 2m\n", "ledger.fsync_interval", "between 1ms and 1m", nil},
		{"long batch", "  postgres_url: postgres://db/x\n  batch_interval: 2m\n", "ledger.batch_interval", "between 1ms and 1m", nil},
		{"short write timeout", "  postgres_url: postgres://db/x\n  write_timeout: 1ms\n", "ledger.write_timeout", "under 10ms", nil},
		{"bare number", "  postgres_url: postgres://db/x\n  batch_interval: 200\n", "ledger.batch_interval", "not a duration", nil},
		{"unknown key", "  postgres_url: postgres://db/x\n  spill: /x\n", "ledger", "unknown key \"spill\"", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := minimal + "ledger:\n" + tc.ledger
			vars := map[string]string{"RELAY_KEY": "k"}
			_, err := Parse([]byte(doc), env(vars))
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, tc.key) {
				t.Errorf("error %q: want %q about %s", msg, tc.want, tc.key)
			}
			// The line is that of the key at fault, or of the key the
			// message is about when the file has none.
			lines := strings.Split(strings.TrimSpace(tc.ledger), "\n")
			last, _, _ := strings.Cut(strings.TrimSpace(lines[len(lines)-1]), ":")
			if tc.name == "settings without url" {
				last = "ledger"
			}
			if !strings.Contains(msg, lineOf(doc, last)) {
				t.Errorf("error %q does not name the line of %s", msg, last)
			}
			if strings.Contains(msg, "hunter2") || strings.Contains(msg, "hun#ter2") {
				t.Errorf("error %q quotes the password", msg)
			}
		})
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func TestRedactPostgresURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"postgres://rg:s3cret@db:5432/x?sslmode=require", "postgres://rg:xxxxx@db:5432/x?sslmode=require"},
		{"postgres://rg@db/x?password=s3cret", "postgres://rg@db/x?password=xxxxx"},
		{"postgres://db/x?sslpassword=s3cret&sslmode=verify-full", "postgres://db/x?sslmode=verify-full&sslpassword=xxxxx"},
		{"postgres://rg:s3#cret@db/x", "[redacted 26 chars]"},
	}
	for _, tc := range tests {
		if got := RedactPostgresURL(tc.in); got != tc.want {
			t.Errorf("RedactPostgresURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	cfg, err := Parse([]byte(minimal+"ledger: {postgres_url: \"postgres://rg:s3cret@db/x\"}\n"), env(map[string]string{"RELAY_KEY": "k"}))
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Redacted(); strings.Contains(r.Ledger.PostgresURL, "s3cret") {
		t.Errorf("Redacted ledger.postgres_url = %q", r.Ledger.PostgresURL)
	}
	if !strings.Contains(cfg.Ledger.PostgresURL, "s3cret") {
		t.Error("Redacted changed the config it copied")
	}
}
