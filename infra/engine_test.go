package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	pkgengine "github.com/pulumi/pulumi/pkg/v3/engine"
	"github.com/pulumi/pulumi/pkg/v3/resource/deploy"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
)

// TestCLIAcceptsTheCommittedStacks runs the CLI's own config validation
// (pkg/v3/workspace) on each committed stack with what docs/deploying.md
// has an operator set, as `pulumi preview` does before it runs anything.
func TestCLIAcceptsTheCommittedStacks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		stack   string
		changes map[string]setting
	}{
		{"dev", nil},
		{"prod", nil},
		{"local", nil},
		{"dev", map[string]setting{"relaygate:alertWebhookUrl": {value: "https://hooks.example.com/T0/B0/x", secret: true}}},
		// A gated model's token, undeclared like the webhook.
		{"prod", map[string]setting{"relaygate:hfToken": {value: "hf_testtoken7d2c9a0b1e", secret: true}}},
		// The ledger's password, undeclared too: optional on dev (the CLI
		// accepts prod without it; the program refuses it, below).
		{"dev", map[string]setting{"relaygate:ledgerDbPassword": {unset: true}}},
		{"prod", map[string]setting{"relaygate:ledgerDbPassword": {unset: true}}},
		{"local", map[string]setting{"relaygate:ledger": {value: `{"enabled":true}`}}},
	} {
		if _, _, err := cliConfig(t, tc.stack, withOperator(tc.stack, tc.changes)); err != nil {
			t.Errorf("stack %s %v: the CLI refuses it: %v", tc.stack, tc.changes, err)
		}
	}
}

// TestPreviewOfTheLedgerPassword: `pulumi preview` of prod, whose ledger
// is RDS, without ledgerDbPassword fails before anything is created and
// says how to set it; dev without it previews, warning that its Postgres
// container trusts the host's private network.
func TestPreviewOfTheLedgerPassword(t *testing.T) {
	t.Parallel()
	unset := map[string]setting{"relaygate:ledgerDbPassword": {unset: true}}
	prod := newStackRun(t, "prod", unset)
	events, err := prod.op(pkgengine.Update, true)
	if err == nil {
		t.Fatal("the preview of prod without ledgerDbPassword succeeded")
	}
	all := strings.Join(diags(events), "\n")
	for _, want := range []string{"relaygate:ledgerDbPassword: is not set but ledger.managed is true",
		`pulumi config set --secret ledgerDbPassword "$(openssl rand -hex 32)"`} {
		if !strings.Contains(all, want) {
			t.Errorf("the preview's diagnostics lack %q:\n%s", want, all)
		}
	}
	if steps := stepsOf(events); slices.ContainsFunc(steps, func(s string) bool { return strings.Contains(s, "aws:") }) {
		t.Errorf("the refused preview planned AWS resources: %v", steps)
	}

	dev := newStackRun(t, "dev", unset)
	events, err = dev.op(pkgengine.Update, true)
	if err != nil {
		t.Fatalf("preview of dev without ledgerDbPassword: %v\n%v", err, diags(events))
	}
	// The program's warnings go to the engine's log service.
	dev.log.mu.Lock()
	lines := slices.Clone(dev.log.lines)
	dev.log.mu.Unlock()
	if !slices.ContainsFunc(lines, func(l string) bool {
		return strings.HasPrefix(l, "WARNING") && strings.Contains(l, "ledgerDbPassword is not set, so the ledger's Postgres container trusts")
	}) {
		t.Errorf("no warning about the trusting ledger database: %q", lines)
	}
}

// TestFirstUp is the first `pulumi up` (preview, then update) of each stack
// on an empty state, through the real engine and the real program.
func TestFirstUp(t *testing.T) {
	t.Parallel()
	for _, stack := range []string{"dev", "prod", "local"} {
		t.Run(stack, func(t *testing.T) {
			t.Parallel()
			r := newStackRun(t, stack, nil)
			events := r.up()
			created := 0
			for _, s := range stepsOf(events) {
				if strings.HasPrefix(s, "create ") {
					created++
				}
			}
			if created == 0 {
				t.Fatalf("nothing created: %v", diags(events))
			}
			for _, d := range diags(events) {
				if strings.HasPrefix(d, "error") {
					t.Errorf("%s", d)
				}
			}
			// A second up with nothing changed changes nothing.
			again := r.up()
			for _, s := range stepsOf(again) {
				if !strings.HasPrefix(s, string(deploy.OpSame)) && !strings.HasPrefix(s, "read ") {
					t.Errorf("second up of %s: %s", stack, s)
				}
			}
		})
	}
}

// TestHostReplacement replaces the GPU host of dev (a new SSH key, and
// `pulumi up --replace` of the instance): the new, empty host gets every
// container, and no delete of an old container is sent to it.
func TestHostReplacement(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(r *stackRun) []string
	}{
		{"new ssh key", func(r *stackRun) []string {
			r.set("sshPublicKey", setting{value: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRotatedKeyNotARealKey000000000000000000 ops@example"})
			return nil
		}},
		{"--replace", func(r *stackRun) []string { return []string{typeInstance + "::relaygate-dev-host-0"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newStackRun(t, "dev", nil)
			r.up()
			old := r.hostEngines()
			replace := tc.change(r)
			r.world.record("=== change")
			r.up(replace...)
			now := r.hostEngines()
			if len(old) != 1 || len(now) != 1 || old[0] == now[0] {
				t.Fatalf("host engines before %v, after %v: the instance was not replaced", old, now)
			}
			calls := r.world.calls()
			after := slices.Index(calls, "=== change")
			for _, c := range calls[after:] {
				if strings.HasPrefix(c, "delete ") && strings.HasSuffix(c, " on "+now[0]) {
					t.Errorf("a delete went to the new host: %s", c)
				}
			}
			objs := r.world.objects(now[0])
			for _, want := range []string{"container relaygate-gateway", "container relaygate-redis", "container relaygate-prometheus", "network relaygate"} {
				if !slices.Contains(objs, want) {
					t.Errorf("the new host lacks %s; it has %v\ncalls:\n%s", want, objs, strings.Join(calls[after:], "\n"))
				}
			}
		})
	}
}

// TestRollingProdUpdate deploys a new gateway image to prod's three hosts:
// the engine replaces one host's gateway at a time, each only once the
// previous host's new gateway is in service behind the load balancer, so
// at least two of three serve throughout.
func TestRollingProdUpdate(t *testing.T) {
	t.Parallel()
	r := newStackRun(t, "prod", nil)
	r.up()
	hosts := len(r.hostEngines())
	r.world.record("=== change")
	r.set("imageTag", setting{value: "prod-2"})
	r.up()
	calls := r.world.calls()
	calls = calls[slices.Index(calls, "=== change"):]

	serving := hosts
	var order []string
	least := serving
	for _, c := range calls {
		switch {
		case strings.HasPrefix(c, "delete Container ") && strings.Contains(c, "-gateway on "):
			serving--
			order = append(order, c)
		case strings.HasPrefix(c, "create Container ") && strings.Contains(c, "-gateway on "):
			serving++
			order = append(order, c)
		case strings.HasPrefix(c, "create Command ") && strings.Contains(c, "-in-service"):
			order = append(order, c)
		}
		least = min(least, serving)
	}
	t.Logf("order the engine took:\n%s", strings.Join(order, "\n"))
	if least < hosts-1 {
		t.Errorf("at one point only %d of %d gateways were up", least, hosts)
	}
	var want []string
	for i := range hosts {
		want = append(want,
			fmt.Sprintf("delete Container relaygate-prod-host-%d-gateway", i),
			fmt.Sprintf("create Container relaygate-prod-host-%d-gateway", i),
			fmt.Sprintf("create Command relaygate-prod-host-%d-in-service", i))
	}
	var got []string
	for _, o := range order {
		got = append(got, strings.Split(o, " on ")[0])
	}
	if !slices.Equal(got, want) {
		t.Errorf("gateway steps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestPreviewNeedsNoSSHKey is a pull request's preview of dev and prod after
// a deploy: it runs without the hosts' SSH key (which would give pull
// request code root on the hosts) and reaches no host.
func TestPreviewNeedsNoSSHKey(t *testing.T) {
	t.Parallel()
	for _, stack := range []string{"dev", "prod"} {
		t.Run(stack, func(t *testing.T) {
			t.Parallel()
			r := newStackRun(t, stack, nil)
			r.up()
			r.world.mu.Lock()
			r.world.sshAgent = false
			r.world.contacted = nil
			r.world.mu.Unlock()
			r.set("latencyBudgetP95Ms", setting{value: "1200"})
			events, err := r.op(pkgengine.Update, true)
			if err != nil {
				t.Fatalf("preview without the SSH key: %v\n%v", err, diags(events))
			}
			if len(r.world.contacted) > 0 {
				t.Errorf("the preview reached %v", r.world.contacted)
			}
			changed := false
			for _, s := range stepsOf(events) {
				changed = changed || strings.Contains(s, "-gateway")
			}
			if !changed {
				t.Errorf("the preview shows no change to the gateways: %v", stepsOf(events))
			}
		})
	}
}

// awsSecurityGroupText is the character set AWS accepts in a security
// group's description and in each rule's description (EC2 API Reference:
// CreateSecurityGroup, GroupDescription; IpRange and UserIdGroupPair,
// Description): "a-z, A-Z, 0-9, spaces, and ._-:/()#,@[]+=&;{}!$*", up to
// 255 characters.
var awsSecurityGroupText = regexp.MustCompile(`^[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{0,255}$`)

// TestAWSAcceptsTheDescriptions checks every security group and rule
// description the program sends, in every AWS stack, against AWS's
// documented character set: one AWS refuses fails the first `up` half-way.
func TestAWSAcceptsTheDescriptions(t *testing.T) {
	t.Parallel()
	for _, stack := range []string{"dev", "prod"} {
		t.Run(stack, func(t *testing.T) {
			t.Parallel()
			r := newStackRun(t, stack, nil)
			if _, err := r.op(pkgengine.Update, true); err != nil {
				t.Fatal(err)
			}
			checked := 0
			for _, e := range r.lastPlan {
				if e.Type != pkgengine.ResourcePreEvent {
					continue
				}
				m := e.Payload().(pkgengine.ResourcePreEventPayload).Metadata
				if m.Type != typeSecurityGroup || m.New == nil {
					continue
				}
				in := m.New.Inputs
				texts := []string{in["description"].StringValue()}
				for _, dir := range []string{"ingress", "egress"} {
					if v, ok := in[resource.PropertyKey(dir)]; ok && v.IsArray() {
						for _, rule := range v.ArrayValue() {
							if d, ok := rule.ObjectValue()["description"]; ok && d.IsString() {
								texts = append(texts, d.StringValue())
							}
						}
					}
				}
				for _, text := range texts {
					checked++
					if !awsSecurityGroupText.MatchString(text) {
						t.Errorf("%s: AWS refuses the description %q", m.URN.Name(), text)
					}
				}
			}
			if checked == 0 {
				t.Fatal("no security group description was checked")
			}
		})
	}
}

// TestRollback is what smoketest/cmd/rollback does after a bad deploy: the
// previous update's configuration again, with reuseImage on, and `up`. The
// image that update deployed comes back from the registry by digest; the
// current checkout is not built, and the image resource leaves the state
// without deleting anything in the registry.
func TestRollback(t *testing.T) {
	t.Parallel()
	for _, stack := range []string{"dev", "local"} {
		t.Run(stack, func(t *testing.T) {
			t.Parallel()
			r := newStackRun(t, stack, nil)
			r.set("imageTag", setting{value: "good"})
			r.up()
			r.set("imageTag", setting{value: "bad"})
			r.up()
			r.world.record("=== rollback")
			r.set("imageTag", setting{value: "good"})
			r.set("reuseImage", setting{value: "true"})
			r.up()
			calls := r.world.calls()
			calls = calls[slices.Index(calls, "=== rollback"):]
			for _, c := range calls {
				if strings.HasPrefix(c, "create Image ") || strings.HasPrefix(c, "update Image ") {
					t.Errorf("the rollback built an image: %s", c)
				}
			}
			if !slices.ContainsFunc(calls, func(c string) bool {
				return strings.HasPrefix(c, "create Container ") && strings.Contains(c, "-gateway")
			}) {
				t.Errorf("the rollback did not replace the gateway:\n%s", strings.Join(calls, "\n"))
			}
			for _, res := range r.snap.Resources {
				if string(res.URN.Type()) == typeImage {
					t.Errorf("the image %s is still in the state", res.URN.Name())
				}
			}
			// A later deploy with reuseImage off builds again.
			r.set("reuseImage", setting{value: "false"})
			r.set("imageTag", setting{value: "fixed"})
			r.up()
			if !slices.ContainsFunc(r.world.calls(), func(c string) bool { return strings.HasPrefix(c, "create Image ") && len(c) > 0 }) {
				t.Error("the deploy after the rollback built nothing")
			}
		})
	}
}

// TestHostAMI: a newer AMI published since the host was created replaces
// nothing; a replaced host, for a new key or by `pulumi up --replace`, gets
// the newest match: the engine's step generator checks a replacement's
// inputs again without ignoreChanges. A pinned amiId is exactly what runs.
func TestHostAMI(t *testing.T) {
	t.Parallel()
	r := newStackRun(t, "dev", nil)
	r.up()
	const newer, newest = "ami-0fedcba9876543210", "ami-0aaaabbbbccccdddd"
	publish := func(ami string) {
		r.world.mu.Lock()
		r.world.newestAMI = ami
		r.world.mu.Unlock()
	}
	publish(newer)
	if steps := stepsOf(r.up()); slices.ContainsFunc(steps, func(s string) bool { return strings.Contains(s, "Instance") && !strings.HasPrefix(s, "same") }) {
		t.Errorf("a newer AMI changed the host: %v", steps)
	}
	if got := r.instanceAMI(); got != fakeAMI {
		t.Errorf("host runs %s, want the one it was created with, %s", got, fakeAMI)
	}
	r.set("sshPublicKey", setting{value: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRotatedKeyNotARealKey000000000000000000 ops@example"})
	r.up()
	if got := r.instanceAMI(); got != newer {
		t.Errorf("the host replaced for its key runs %s, want the newest match %s", got, newer)
	}
	publish(newest)
	r.up(typeInstance + "::relaygate-dev-host-0")
	if got := r.instanceAMI(); got != newest {
		t.Errorf("after --replace the host runs %s, want the newest match %s", got, newest)
	}
	r.set("amiId", setting{value: newer})
	r.up()
	if got := r.instanceAMI(); got != newer {
		t.Errorf("with amiId %s the host runs %s", newer, got)
	}
	publish("ami-0123123123123123f")
	r.up(typeInstance + "::relaygate-dev-host-0")
	if got := r.instanceAMI(); got != newer {
		t.Errorf("with amiId %s pinned, --replace gave %s", newer, got)
	}
}

// TestHostKeysAreFiledByInstance: the Docker provider's ssh files each
// host's key under its instance, so a replaced host that gets an address an
// earlier host had is trusted on first use instead of refused.
func TestHostKeysAreFiledByInstance(t *testing.T) {
	t.Parallel()
	r := newStackRun(t, "prod", nil)
	r.up()
	ids := map[string]bool{}
	for _, res := range r.snap.Resources {
		if string(res.URN.Type()) == typeInstance {
			ids[string(res.ID)] = true
		}
	}
	n := 0
	for _, res := range r.snap.Resources {
		if string(res.URN.Type()) != typeDockerProv || !strings.Contains(res.URN.Name(), "-host-") {
			continue
		}
		n++
		var opts []string
		for _, v := range res.Inputs["sshOpts"].ArrayValue() {
			opts = append(opts, v.StringValue())
		}
		alias := ""
		for i, o := range opts {
			if i > 0 && opts[i-1] == "-o" && strings.HasPrefix(o, "HostKeyAlias=relaygate-") {
				alias = strings.TrimPrefix(o, "HostKeyAlias=relaygate-")
			}
		}
		if !ids[alias] || !slices.Contains(opts, "StrictHostKeyChecking=accept-new") {
			t.Errorf("%s: ssh options %v do not file the host key under its instance (%v)", res.URN.Name(), opts, ids)
		}
	}
	if n != 3 {
		t.Fatalf("%d host providers, want 3", n)
	}
}
