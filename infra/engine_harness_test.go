package main

// The engine harness runs the real program binary (go build ./infra) under
// Pulumi's own engine, github.com/pulumi/pulumi/pkg/v3/engine: its config
// validation, step generator, step executor, snapshot journal and
// serialization are the ones the CLI runs. Only the providers are fakes
// (fakes_test.go), because AWS and the GPU hosts cannot be reached from a
// test. The configuration reaches the engine the way `pulumi up` builds it:
// the committed stack file, the operator's `pulumi config set [--secret]`
// (encrypted with the passphrase crypter the CLI's passphrase secrets
// provider uses), then pkg/v3/workspace.ValidateStackConfigAndApplyProjectConfig.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	pkgengine "github.com/pulumi/pulumi/pkg/v3/engine"
	"github.com/pulumi/pulumi/pkg/v3/engine/lifecycletest/framework"
	"github.com/pulumi/pulumi/pkg/v3/resource/deploy"
	"github.com/pulumi/pulumi/pkg/v3/resource/deploy/deploytest"
	"github.com/pulumi/pulumi/pkg/v3/resource/plugin"
	pkgworkspace "github.com/pulumi/pulumi/pkg/v3/workspace"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag/colors"
	"github.com/pulumi/pulumi/sdk/v3/go/common/esc"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/config"
	"github.com/pulumi/pulumi/sdk/v3/go/common/workspace"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

var (
	programOnce sync.Once
	programPath string
	programErr  error
)

// programBinary builds the infra program once per test run, as the Go
// language host does before it runs a program.
func programBinary(t *testing.T) string {
	t.Helper()
	programOnce.Do(func() {
		dir, err := os.MkdirTemp("", "relaygate-infra-")
		if err != nil {
			programErr = err
			return
		}
		programPath = filepath.Join(dir, "relaygate-infra")
		out, err := exec.Command("go", "build", "-o", programPath, ".").CombinedOutput()
		if err != nil {
			programErr = fmt.Errorf("go build ./infra: %v\n%s", err, out)
		}
	})
	if programErr != nil {
		t.Fatal(programErr)
	}
	return programPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if programPath != "" {
		os.RemoveAll(filepath.Dir(programPath))
	}
	os.Exit(code)
}

// testPassphrase encrypts the operator's secrets like `pulumi stack init
// --secrets-provider passphrase` would.
const testPassphrase = "relaygate-engine-test"

// cliConfig is what the CLI hands the engine for a stack: the committed
// stack file plus the operator's settings, validated and merged with
// Pulumi.yaml by the CLI's own code. The error is the CLI's refusal.
func cliConfig(t *testing.T, stackName string, settings map[string]setting) (config.Map, config.Crypter, error) {
	t.Helper()
	proj := loadProject(t)
	sink := diag.DefaultSink(io.Discard, io.Discard, diag.FormatOptions{Color: colors.Never})
	ps, err := workspace.LoadProjectStack(sink, proj, filepath.Join(repoRoot(t), "Pulumi."+stackName+".yaml"))
	if err != nil {
		t.Fatalf("Pulumi.%s.yaml: %v", stackName, err)
	}
	crypter := config.NewSymmetricCrypterFromPassphrase(testPassphrase, []byte("relaygate-salt16"))
	for k, s := range settings {
		applySetting(t, ps.Config, crypter, k, s)
	}
	err = pkgworkspace.ValidateStackConfigAndApplyProjectConfig(
		context.Background(), stackName, proj, esc.Value{}, ps.Config, crypter, crypter)
	return ps.Config, crypter, err
}

// applySetting is `pulumi config set [--secret] key value` (or `config rm`)
// on a stack's configuration: a secret is stored as ciphertext, a value
// that starts as a JSON list or object as a structured value (what
// `--path 'k[0]'` stores).
func applySetting(t *testing.T, cfg config.Map, crypter config.Crypter, k string, s setting) {
	t.Helper()
	key, err := config.ParseKey(k)
	if err != nil {
		t.Fatalf("%s: %v", k, err)
	}
	switch {
	case s.unset:
		delete(cfg, key)
	case s.secret:
		ct, err := crypter.EncryptValue(context.Background(), s.value)
		if err != nil {
			t.Fatal(err)
		}
		cfg[key] = config.NewSecureValue(ct)
	case strings.HasPrefix(s.value, "[") || strings.HasPrefix(s.value, "{"):
		cfg[key] = config.NewObjectValue(s.value)
	default:
		cfg[key] = config.NewValue(s.value)
	}
}

// engineLog is the engine service a program sends its log lines to
// (PULUMI_ENGINE); the deploytest language runtime has none of its own.
type engineLog struct {
	pulumirpc.UnimplementedEngineServer
	mu    sync.Mutex
	lines []string
	root  string
}

func (e *engineLog) Log(_ context.Context, req *pulumirpc.LogRequest) (*emptypb.Empty, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lines = append(e.lines, fmt.Sprintf("%s: %s", req.GetSeverity(), req.GetMessage()))
	return &emptypb.Empty{}, nil
}

func (e *engineLog) GetRootResource(context.Context, *pulumirpc.GetRootResourceRequest) (*pulumirpc.GetRootResourceResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return &pulumirpc.GetRootResourceResponse{Urn: e.root}, nil
}

func (e *engineLog) SetRootResource(_ context.Context, req *pulumirpc.SetRootResourceRequest) (*pulumirpc.SetRootResourceResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.root = req.GetUrn()
	return &pulumirpc.SetRootResourceResponse{}, nil
}

func serveEngineLog(t *testing.T) (*engineLog, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	log := &engineLog{}
	pulumirpc.RegisterEngineServer(srv, log)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return log, lis.Addr().String()
}

// programRuntime is a language runtime that runs the built program the way
// pulumi-language-go does: in the program's directory, with the monitor,
// engine, stack and configuration in the PULUMI_* environment.
func programRuntime(t *testing.T, extraEnv []string) (deploytest.LanguageRuntimeFactory, *engineLog) {
	t.Helper()
	bin := programBinary(t)
	log, engineAddr := serveEngineLog(t)
	root := repoRoot(t)
	return deploytest.NewLanguageRuntimeF(func(info plugin.RunInfo, _ *deploytest.ResourceMonitor) error {
		cfg := map[string]string{}
		for k, v := range info.Config {
			cfg[k.String()] = v
		}
		var secretKeys []string
		for _, k := range info.ConfigSecretKeys {
			secretKeys = append(secretKeys, k.String())
		}
		cfgJSON, err := json.Marshal(cfg)
		if err != nil {
			return err
		}
		keysJSON, err := json.Marshal(secretKeys)
		if err != nil {
			return err
		}
		cmd := exec.Command(bin)
		cmd.Dir = filepath.Join(root, "infra")
		cmd.Env = append(os.Environ(),
			"PULUMI_MONITOR="+info.MonitorAddress,
			"PULUMI_ENGINE="+engineAddr,
			"PULUMI_PROJECT="+info.Project,
			"PULUMI_STACK="+info.Stack,
			"PULUMI_ORGANIZATION=organization",
			"PULUMI_ROOT_DIRECTORY="+root,
			"PULUMI_CONFIG="+string(cfgJSON),
			"PULUMI_CONFIG_SECRET_KEYS="+string(keysJSON),
			fmt.Sprintf("PULUMI_DRY_RUN=%t", info.DryRun),
			fmt.Sprintf("PULUMI_PARALLEL=%d", info.Parallel),
		)
		cmd.Env = append(cmd.Env, extraEnv...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			log.mu.Lock()
			defer log.mu.Unlock()
			return fmt.Errorf("program failed: %v\n%s\n%s", err, out, strings.Join(log.lines, "\n"))
		}
		return nil
	}), log
}

// stackRun is one stack's life under the engine: its configuration, its
// snapshot between operations, and the fake world its providers act on.
type stackRun struct {
	t        *testing.T
	name     string
	world    *world
	cfg      config.Map
	crypter  config.Crypter
	snap     *deploy.Snapshot
	env      []string
	log      *engineLog
	lastPlan []pkgengine.Event
}

// newStackRun validates the stack's configuration with the CLI's code and
// fails the test if the CLI would refuse it.
func newStackRun(t *testing.T, stackName string, changes map[string]setting) *stackRun {
	t.Helper()
	cfg, crypter, err := cliConfig(t, stackName, withOperator(stackName, changes))
	if err != nil {
		t.Fatalf("the Pulumi CLI refuses stack %s: %v", stackName, err)
	}
	return &stackRun{t: t, name: stackName, world: newWorld(), cfg: cfg, crypter: crypter}
}

// withOperator is the operator's settings for a stack (docs/deploying.md), with changes.
func withOperator(stackName string, changes map[string]setting) map[string]setting {
	target := "aws"
	if stackName == "local" {
		target = "local"
	}
	s := operatorSettings(target)
	for k, v := range changes {
		s[k] = v
	}
	return s
}

// set changes one setting, as `pulumi config set` would, and revalidates.
func (r *stackRun) set(key string, s setting) {
	r.t.Helper()
	if !strings.Contains(key, ":") {
		key = "relaygate:" + key
	}
	applySetting(r.t, r.cfg, r.crypter, key, s)
	if err := pkgworkspace.ValidateStackConfigAndApplyProjectConfig(
		context.Background(), r.name, loadProject(r.t), esc.Value{}, r.cfg, r.crypter, r.crypter); err != nil {
		r.t.Fatalf("the Pulumi CLI refuses %s after setting %s: %v", r.name, key, err)
	}
}

// op runs one engine operation (pkgengine.Update, or engine.Destroy) and
// returns its events; dryRun is a preview, which keeps the snapshot.
func (r *stackRun) op(op framework.TestOp, dryRun bool, replace ...string) ([]pkgengine.Event, error) {
	r.t.Helper()
	runtimeF, log := programRuntime(r.t, r.env)
	r.log = log
	loaders := r.world.loaders()
	hostF := deploytest.NewPluginHostF(nil, nil, runtimeF, nil, nil, loaders...)
	proj := workspace.Project{Name: "relaygate", Runtime: workspace.NewProjectRuntimeInfo("go", nil)}
	target := deploy.Target{
		Name:      mustStackName(r.t, r.name),
		Config:    r.cfg,
		Decrypter: r.crypter,
		Snapshot:  framework.CloneSnapshot(r.t, r.snap),
	}
	opts := framework.TestUpdateOptions{
		T:                r.t,
		HostF:            hostF,
		SkipDisplayTests: true,
	}
	for _, name := range replace {
		opts.ReplaceTargets = deploy.NewUrnTargets([]string{r.urnOf(name)})
	}
	var events []pkgengine.Event
	snap, err := op.RunStep(proj, target, opts, dryRun, nil,
		func(_ workspace.Project, _ deploy.Target, _ pkgengine.JournalEntries, evs []pkgengine.Event, err error) error {
			events = evs
			return err
		}, "")
	if err == nil && !dryRun {
		r.snap = snap
	}
	r.lastPlan = events
	return events, err
}

// up is `pulumi up --yes` (which previews first) and fails the test on error.
func (r *stackRun) up(replace ...string) []pkgengine.Event {
	r.t.Helper()
	r.world.record("--- preview")
	if _, err := r.op(pkgengine.Update, true, replace...); err != nil {
		r.t.Fatalf("preview of %s: %v", r.name, err)
	}
	r.world.record("--- up")
	events, err := r.op(pkgengine.Update, false, replace...)
	if err != nil {
		r.t.Fatalf("up of %s: %v\nprovider calls:\n%s", r.name, err, strings.Join(r.world.calls(), "\n"))
	}
	return events
}

// urnOf finds the URN of the resource in the snapshot named "type::name".
func (r *stackRun) urnOf(name string) string {
	r.t.Helper()
	typ, name, _ := strings.Cut(name, "::")
	if r.snap != nil {
		for _, res := range r.snap.Resources {
			if string(res.URN.Type()) == typ && res.URN.Name() == name && !res.Delete {
				return string(res.URN)
			}
		}
	}
	r.t.Fatalf("no resource named %s in the snapshot of %s", name, r.name)
	return ""
}

// stepsOf are the operations the engine performed on resources, in the
// order they were reported, as "op type name".
func stepsOf(events []pkgengine.Event) []string {
	var out []string
	for _, e := range events {
		if e.Type != pkgengine.ResourceOutputsEvent {
			continue
		}
		m := e.Payload().(pkgengine.ResourceOutputsEventPayload).Metadata
		out = append(out, fmt.Sprintf("%s %s %s", m.Op, m.URN.Type(), m.URN.Name()))
	}
	return out
}

// diags are the engine's diagnostics of an operation, errors first.
func diags(events []pkgengine.Event) []string {
	var out []string
	for _, e := range events {
		if e.Type == pkgengine.DiagEvent {
			p := e.Payload().(pkgengine.DiagEventPayload)
			out = append(out, fmt.Sprintf("%s: %s", p.Severity, strings.TrimSpace(p.Message)))
		}
	}
	return out
}

// hostEngines are the ssh:// Docker engines of the stack's live hosts.
func (r *stackRun) hostEngines() []string {
	r.world.mu.Lock()
	defer r.world.mu.Unlock()
	var out []string
	for e := range r.world.engines {
		if strings.HasPrefix(e, "ssh://") {
			out = append(out, e)
		}
	}
	slices.Sort(out)
	return out
}

// instanceAMI is the AMI of the stack's one live instance.
func (r *stackRun) instanceAMI() string {
	r.t.Helper()
	ami := ""
	for _, res := range r.snap.Resources {
		if string(res.URN.Type()) == typeInstance && !res.Delete {
			if ami != "" {
				r.t.Fatalf("more than one instance in %s", r.name)
			}
			ami = res.Inputs["ami"].StringValue()
		}
	}
	return ami
}
