package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/infra/internal/stackconfig"
)

// ledgerContainerURL is the gateway's ledger URL on a host with a Postgres
// container and the operator's password.
const ledgerContainerURL = "postgres://relaygate:" + fakeLedgerPassword + "@ledger-db:5432/relaygate?sslmode=disable"

// checkLedgerGateway: the gateway container has the ledger's URL in its
// secret environment, names it only as ${LEDGER_POSTGRES_URL} in its
// uploaded config (which the gateway's loader accepts, ledger on), and
// keeps its spill files on a named volume.
func checkLedgerGateway(t *testing.T, d *deployment, gwName, wantURL string) {
	t.Helper()
	gw := d.named(t, typeContainer, gwName)
	checkSecretEnv(t, gw, map[string]string{stackconfig.LedgerURLEnv: wantURL}, nil)
	y := gatewayYAML(t, gw)
	if !strings.Contains(y, "postgres_url: ${"+stackconfig.LedgerURLEnv+"}") || strings.Contains(y, fakeLedgerPassword) {
		t.Errorf("%s: the uploaded config does not name the ledger URL's variable, or holds the password:\n%s", gwName, y)
	}
	g := loadGatewayConfig(t, gw)
	if !g.Ledger.Enabled() || g.Ledger.PostgresURL != wantURL || g.Ledger.SpillDir != "/var/lib/relaygate/ledger" {
		t.Errorf("%s: the gateway's ledger: on %t, URL as deployed %t, spill dir %q", gwName, g.Ledger.Enabled(), g.Ledger.PostgresURL == wantURL, g.Ledger.SpillDir)
	}
	vols := items(t, gw, "volumes")
	if len(vols) != 1 || getString(t, gw, "volumes", 0, "containerPath") != "/var/lib/relaygate/ledger" {
		t.Fatalf("%s: volumes %v, want the spill volume at /var/lib/relaygate/ledger", gwName, vols)
	}
	spill := getString(t, gw, "volumes", 0, "volumeName")
	if !slices.ContainsFunc(d.ofType(typeVolume), func(v recorded) bool {
		return getString(t, v, "name") == spill && strings.HasSuffix(spill, "-ledger-spill-data")
	}) {
		t.Errorf("%s: the spill volume %q is not a named volume of the stack", gwName, spill)
	}
}

// TestDevLedgerContainer: dev runs the ledger's Postgres beside each
// gateway on the host's private network: a named data volume, no published
// port, a pg_isready health check, the database and user relaygate with the
// operator's password, secret in the state; the gateway waits for it.
func TestDevLedgerContainer(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "dev", "aws", nil)
	if n := len(d.ofType(typeRDSInstance)); n != 0 {
		t.Errorf("dev created %d RDS instances", n)
	}
	if d.outputs["ledgerEnabled"].Value != true {
		t.Errorf("ledgerEnabled = %v, want true", d.outputs["ledgerEnabled"].Value)
	}
	h := "relaygate-dev-host-0"
	db := d.named(t, typeContainer, h+"-ledger-db")
	if img := getString(t, d.named(t, typeRemoteImage, h+"-ledger-db"), "name"); img != "postgres:17-bookworm" {
		t.Errorf("ledger database image %q, want postgres:17-bookworm", img)
	}
	if len(items(t, db, "ports")) != 0 {
		t.Errorf("the ledger database publishes a port: %v", get(t, db, "ports"))
	}
	if aliases := getStrings(t, db, "networksAdvanced", 0, "aliases"); !slices.Equal(aliases, []string{"ledger-db"}) {
		t.Errorf("ledger database aliases %v, want [ledger-db]", aliases)
	}
	if p := getString(t, db, "volumes", 0, "containerPath"); p != "/var/lib/postgresql/data" ||
		getString(t, db, "volumes", 0, "volumeName") != "relaygate-ledger-db-data" {
		t.Errorf("ledger database volume %v", get(t, db, "volumes"))
	}
	if tests := strings.Join(getStrings(t, db, "healthcheck", "tests"), " "); tests != "CMD pg_isready -h 127.0.0.1 -p 5432 -U relaygate -d relaygate" {
		t.Errorf("ledger database health check %q", tests)
	}
	if !get(t, db, "wait").BoolValue() || getString(t, db, "restart") != "unless-stopped" {
		t.Errorf("ledger database: wait %v, restart %q", get(t, db, "wait"), getString(t, db, "restart"))
	}
	checkContainerEnv(t, db, map[string]string{"POSTGRES_DB": "relaygate", "POSTGRES_USER": "relaygate", "POSTGRES_PASSWORD": fakeLedgerPassword},
		[]string{"POSTGRES_HOST_AUTH_METHOD"})
	if !slices.Contains(db.SecretOutputs, "envs") {
		t.Errorf("the ledger database's environment is not a secret output: %v", db.SecretOutputs)
	}
	gw := d.named(t, typeContainer, h+"-gateway")
	if !dependsOn(gw, typeContainer, h+"-ledger-db") {
		t.Errorf("the gateway does not wait for the ledger database: %v", gw.Deps)
	}
	checkLedgerGateway(t, d, h+"-gateway", ledgerContainerURL)
}

// TestDevLedgerWithoutPassword: without ledgerDbPassword the container
// trusts its private network and the gateway's URL has no password.
func TestDevLedgerWithoutPassword(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "dev", "aws", map[string]setting{"relaygate:ledgerDbPassword": {unset: true}})
	db := d.named(t, typeContainer, "relaygate-dev-host-0-ledger-db")
	checkContainerEnv(t, db, map[string]string{"POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_USER": "relaygate"}, []string{"POSTGRES_PASSWORD"})
	checkLedgerGateway(t, d, "relaygate-dev-host-0-gateway", "postgres://relaygate@ledger-db:5432/relaygate?sslmode=disable")
}

// TestProdLedgerRDS: prod's ledger is one RDS for PostgreSQL instance:
// encrypted, Multi-AZ, in the private subnets, not public, reachable from
// the hosts' security group only, protected with a final snapshot, its
// password the secret; every host's gateway reaches it over TLS, and no host
// runs a Postgres container.
func TestProdLedgerRDS(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "prod", "aws", nil)
	insts := d.ofType(typeRDSInstance)
	if len(insts) != 1 {
		t.Fatalf("%d RDS instances, want 1", len(insts))
	}
	db := insts[0]
	for k, want := range map[string]string{"engine": "postgres", "engineVersion": "17", "instanceClass": "db.t4g.small", "storageType": "gp3",
		"username": "relaygate", "dbName": "relaygate", "identifier": "relaygate-prod-ledger", "finalSnapshotIdentifier": "relaygate-prod-ledger-final"} {
		if got := getString(t, db, k); got != want {
			t.Errorf("RDS %s = %q, want %q", k, got, want)
		}
	}
	for k, want := range map[string]bool{"storageEncrypted": true, "multiAz": true, "publiclyAccessible": false, "deletionProtection": true,
		"skipFinalSnapshot": false, "autoMinorVersionUpgrade": true} {
		if got := get(t, db, k); !got.IsBool() || got.BoolValue() != want {
			t.Errorf("RDS %s = %v, want %t", k, got, want)
		}
	}
	if n := get(t, db, "allocatedStorage").NumberValue(); n != 20 {
		t.Errorf("RDS allocatedStorage = %v", n)
	}
	if n := get(t, db, "backupRetentionPeriod").NumberValue(); n != 7 {
		t.Errorf("RDS backupRetentionPeriod = %v", n)
	}
	if pw := db.Inputs["password"]; !pw.IsSecret() || plain(pw).StringValue() != fakeLedgerPassword {
		t.Errorf("RDS password: secret %t, the configured one %t", pw.IsSecret(), plain(pw).StringValue() == fakeLedgerPassword)
	}
	if !db.Protect {
		t.Error("the RDS instance is not protected from `pulumi destroy` despite deletionProtection")
	}

	sn := d.ofType(typeRDSSubnets)
	if len(sn) != 1 {
		t.Fatalf("%d RDS subnet groups", len(sn))
	}
	ids := getStrings(t, sn[0], "subnetIds")
	if len(ids) < 2 {
		t.Errorf("the RDS subnet group has %d subnets; Multi-AZ needs two zones", len(ids))
	}
	for _, id := range ids {
		if !strings.Contains(id, "-private-") {
			t.Errorf("the ledger database is in a public subnet: %s", id)
		}
	}
	if got := getString(t, db, "dbSubnetGroupName"); got != sn[0].Name+"-generated" {
		t.Errorf("RDS subnet group %q, want %s's", got, sn[0].Name)
	}
	sg := d.named(t, typeSecurityGroup, "relaygate-prod-ledger-db")
	rules := ingressRules(t, sg)
	if len(rules) != 1 {
		t.Errorf("the ledger database's security group has %d rules", len(rules))
	}
	for _, r := range rules {
		if len(r.cidrs) != 0 || !slices.Equal(r.groups, []string{"relaygate-prod-hosts-id"}) || r.from != 5432 || r.to != 5432 {
			t.Errorf("the ledger database's security group admits %+v, want the hosts on 5432 only", r)
		}
	}
	if e := items(t, sg, "egress"); len(e) != 0 {
		t.Errorf("the ledger database's security group allows egress: %v", e)
	}
	if sgs := getStrings(t, db, "vpcSecurityGroupIds"); !slices.Equal(sgs, []string{"relaygate-prod-ledger-db-id"}) {
		t.Errorf("RDS security groups = %v", sgs)
	}
	hosts := d.named(t, typeSecurityGroup, "relaygate-prod-hosts")
	egress := false
	for i := range items(t, hosts, "egress") {
		if get(t, hosts, "egress", i, "fromPort").NumberValue() == 5432 {
			egress = slices.Equal(getStrings(t, hosts, "egress", i, "cidrBlocks"), []string{d.values["relaygate:vpcCidr"]})
		}
	}
	if !egress {
		t.Error("the hosts may not reach Postgres in the VPC")
	}

	address := "relaygate-prod-ledger.c0abcdefghij.us-east-1.rds.amazonaws.com"
	for i := range 3 {
		h := fmt.Sprintf("relaygate-prod-host-%d", i)
		for _, c := range d.ofType(typeContainer) {
			if c.Name == h+"-ledger-db" {
				t.Errorf("%s runs a Postgres container beside the RDS ledger", h)
			}
		}
		checkLedgerGateway(t, d, h+"-gateway", "postgres://relaygate:"+fakeLedgerPassword+"@"+address+":5432/relaygate?sslmode=require")
	}
}

// TestLocalLedgerOff: the committed local stack runs no ledger (its
// offline engine has no postgres image): no container, no spill volume,
// no URL, no ledger section. Turned on, it runs the container as dev does.
func TestLocalLedgerOff(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "local", "local", nil)
	if d.outputs["ledgerEnabled"].Value != false {
		t.Errorf("ledgerEnabled = %v, want false", d.outputs["ledgerEnabled"].Value)
	}
	for _, r := range d.res {
		if strings.Contains(r.Name, "ledger") {
			t.Errorf("the local stack without the ledger registered %s %s", r.Type, r.Name)
		}
	}
	gw := d.named(t, typeContainer, "relaygate-local-gateway")
	checkSecretEnv(t, gw, nil, []string{stackconfig.LedgerURLEnv})
	if len(items(t, gw, "volumes")) != 0 || strings.Contains(gatewayYAML(t, gw), "ledger") || loadGatewayConfig(t, gw).Ledger.Enabled() {
		t.Error("the local gateway has a ledger although Pulumi.local.yaml turns it off")
	}

	on := mustRun(t, "local", "local", map[string]setting{"relaygate:ledger": {value: `{"enabled":true}`}})
	db := on.named(t, typeContainer, "relaygate-local-ledger-db")
	if len(items(t, db, "ports")) != 0 {
		t.Errorf("the local ledger database publishes a port")
	}
	checkContainerEnv(t, db, map[string]string{"POSTGRES_HOST_AUTH_METHOD": "trust"}, []string{"POSTGRES_PASSWORD"})
	checkLedgerGateway(t, on, "relaygate-local-gateway", "postgres://relaygate@ledger-db:5432/relaygate?sslmode=disable")
}

// TestManagedLedgerOnOneHost: dev with an RDS ledger gets private subnets
// in two zones for it, and no managed Redis's security group.
func TestManagedLedgerOnOneHost(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "dev", "aws", map[string]setting{"relaygate:ledger": {value: `{"managed":true}`}})
	if n := len(d.ofType(typeRDSInstance)); n != 1 {
		t.Fatalf("%d RDS instances", n)
	}
	db := d.ofType(typeRDSInstance)[0]
	if !get(t, db, "skipFinalSnapshot").BoolValue() || db.Protect || !get(t, db, "deletionProtection").IsNull() {
		t.Errorf("dev (no deletionProtection): skipFinalSnapshot %v, protect %t, deletionProtection %v", get(t, db, "skipFinalSnapshot"), db.Protect, get(t, db, "deletionProtection"))
	}
	private := 0
	for _, s := range d.ofType(typeSubnet) {
		if strings.Contains(s.Name, "-private-") {
			private++
		}
	}
	if private < 2 {
		t.Errorf("%d private subnets, want 2 zones' for the Multi-AZ database", private)
	}
	for _, sg := range d.ofType(typeSecurityGroup) {
		if sg.Name == "relaygate-dev-cache" {
			t.Error("dev without managedRedis has a cache security group")
		}
	}
	if n := len(d.ofType(typeReplGroup)); n != 0 {
		t.Errorf("%d replication groups", n)
	}
}

// TestManagedLedgerNeedsPassword: prod (an RDS ledger) without
// ledgerDbPassword is refused before anything is registered, with the
// command that sets it; one stored in plain text too.
func TestManagedLedgerNeedsPassword(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		change setting
		want   []string
	}{
		{"unset", setting{unset: true}, []string{"relaygate:ledgerDbPassword: is not set but ledger.managed is true", stackconfig.LedgerPasswordCommand}},
		{"plain text", setting{value: fakeLedgerPassword}, []string{"relaygate:ledgerDbPassword: is stored in plain text"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := run(t, "prod", "aws", map[string]setting{"relaygate:ledgerDbPassword": tt.change})
			if err == nil {
				t.Fatal("the program accepted prod without an encrypted ledgerDbPassword")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), fakeLedgerPassword) {
				t.Error("the error shows the password")
			}
			if len(d.res) > 0 {
				t.Errorf("the program registered %d resources before failing", len(d.res))
			}
		})
	}
}
