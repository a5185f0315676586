package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	pkgengine "github.com/pulumi/pulumi/pkg/v3/engine"

	"github.com/relaygate/relaygate/infra/internal/stackconfig"
	gwconfig "github.com/relaygate/relaygate/service/config"
)

// fakeHFToken is a Hugging Face token an operator sets with --secret.
const fakeHFToken = "hf_testtoken7d2c9a0b1e"

// TestModelServerOnGPUHosts: every GPU host of dev and prod runs the model
// server on its GPUs, with the stack's model, its weights on a volume, a
// health check that waits out the load, and no port outside the host; the
// gateway comes after it and reaches it on the private network.
func TestModelServerOnGPUHosts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		stack, model string
		args         []string // beyond the ones every stack has
	}{
		{"dev", "Qwen/Qwen2.5-7B-Instruct-AWQ", []string{"--dtype", "float16", "--quantization", "awq"}},
		{"prod", "Qwen/Qwen2.5-7B-Instruct", []string{"--dtype", "bfloat16"}},
	} {
		t.Run(tc.stack, func(t *testing.T) {
			t.Parallel()
			d := mustRun(t, tc.stack, "aws", nil)
			checkOutputs(t, d)
			checkSecurityGroups(t, d) // the hosts open 22, 8000 and 9090 only
			if d.outputs["selfHostedModel"].Value != "qwen2.5-7b-instruct" || d.outputs["selfHostedUpstream"].Value != stackconfig.SelfHostedUpstream {
				t.Errorf("outputs selfHostedModel %v, selfHostedUpstream %v", d.outputs["selfHostedModel"].Value, d.outputs["selfHostedUpstream"].Value)
			}
			hosts := intValue(t, d.values["relaygate:hostCount"])
			for i := range hosts {
				h := fmt.Sprintf("relaygate-%s-host-%d", tc.stack, i)
				ms := d.named(t, typeContainer, h+"-model-server")
				if !strings.Contains(ms.Provider, h+"-docker") {
					t.Errorf("%s: model server deployed through %q, not the host's provider", h, ms.Provider)
				}
				img := d.named(t, typeRemoteImage, h+"-model-server")
				if getString(t, img, "name") != stackconfig.DefaultModelServerImage {
					t.Errorf("%s: model server image %q", h, getString(t, img, "name"))
				}
				if getString(t, ms, "gpus") != "all" {
					t.Errorf("%s: model server gpus = %v, want all", h, get(t, ms, "gpus"))
				}
				if ep := getStrings(t, ms, "entrypoints"); !slices.Equal(ep, []string{"python3", "-m", "vllm.entrypoints.openai.api_server"}) {
					t.Errorf("%s: entrypoint %v", h, ep)
				}
				want := append([]string{"--model", tc.model, "--served-model-name", "qwen2.5-7b-instruct", "--host", "0.0.0.0", "--port", "8000",
					"--download-dir", "/root/.cache/huggingface/hub", "--max-model-len", "8192", "--gpu-memory-utilization", "0.85",
					"--tensor-parallel-size", d.values["relaygate:expectedGpuCount"]}, tc.args...)
				if cmd := getStrings(t, ms, "command"); !slices.Equal(cmd, want) {
					t.Errorf("%s: model server command\n got %q\nwant %q", h, cmd, want)
				}
				if v := getString(t, ms, "volumes", 0, "volumeName"); v != "relaygate-huggingface-data" || getString(t, ms, "volumes", 0, "containerPath") != "/root/.cache/huggingface" {
					t.Errorf("%s: model server volumes %v", h, get(t, ms, "volumes"))
				}
				vol := d.named(t, typeVolume, h+"-huggingface")
				if getString(t, vol, "name") != "relaygate-huggingface-data" {
					t.Errorf("%s: weights volume %v", h, vol.Inputs)
				}
				if n := len(items(t, ms, "ports")); n != 0 {
					t.Errorf("%s: the model server publishes %d port(s): %v", h, n, get(t, ms, "ports"))
				}
				if alias := getStrings(t, ms, "networksAdvanced", 0, "aliases"); !slices.Equal(alias, []string{"model-server"}) {
					t.Errorf("%s: model server network aliases %v", h, alias)
				}
				hc := strings.Join(getStrings(t, ms, "healthcheck", "tests"), " ")
				if !strings.Contains(hc, "http://127.0.0.1:8000/health") || getString(t, ms, "healthcheck", "startPeriod") != "20m0s" {
					t.Errorf("%s: model server health check %q, start period %q", h, hc, getString(t, ms, "healthcheck", "startPeriod"))
				}
				if !get(t, ms, "wait").BoolValue() || get(t, ms, "waitTimeout").NumberValue() < 20*60 {
					t.Errorf("%s: wait %v for %v s, want a wait past the start period", h, get(t, ms, "wait"), get(t, ms, "waitTimeout"))
				}
				if get(t, ms, "shmSize").NumberValue() != 4096 {
					t.Errorf("%s: shmSize %v", h, get(t, ms, "shmSize"))
				}
				checkContainerEnv(t, ms, map[string]string{"VLLM_NO_USAGE_STATS": "1"}, []string{"HF_TOKEN"})

				gw := d.named(t, typeContainer, h+"-gateway")
				if !dependsOn(gw, typeContainer, h+"-model-server") {
					t.Errorf("%s: the gateway does not wait for the model server: deps %v", h, gw.Deps)
				}
				g := loadGatewayConfig(t, gw)
				if u, ok := g.Upstream("self-hosted"); !ok || u.BaseURL != "http://model-server:8000/v1" {
					t.Errorf("%s: no self-hosted upstream at http://model-server:8000/v1: %+v", h, u)
				}
				if i := slices.IndexFunc(g.Models, func(m gwconfig.Model) bool { return m.Name == "qwen2.5-7b-instruct" }); i < 0 ||
					len(g.Models[i].Route) == 0 || g.Models[i].Route[0].Upstream != "self-hosted" {
					t.Errorf("%s: qwen2.5-7b-instruct does not route to self-hosted first", h)
				}

				prom := d.named(t, typeContainer, h+"-prometheus")
				found := false
				for j := range items(t, prom, "uploads") {
					if getString(t, prom, "uploads", j, "file") == "/etc/prometheus/model-servers/model-server.json" {
						found = strings.Contains(getString(t, prom, "uploads", j, "content"), `"model-server:8000"`)
					}
				}
				if !found {
					t.Errorf("%s: Prometheus is not pointed at the model server", h)
				}
			}
		})
	}
}

// TestModelServerToken: a gated model's token reaches the model server as
// a secret and nowhere else in plain text.
func TestModelServerToken(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "prod", "aws", map[string]setting{
		"relaygate:hfToken": {value: fakeHFToken, secret: true},
		"relaygate:modelServer": {value: `{"model":"meta-llama/Llama-3.1-8B-Instruct","servedName":"qwen2.5-7b-instruct",` +
			`"paramsBillions":8,"dtype":"bfloat16"}`},
	})
	ms := d.named(t, typeContainer, "relaygate-prod-host-0-model-server")
	checkContainerEnv(t, ms, map[string]string{"HF_TOKEN": fakeHFToken}, nil)
	for name, o := range d.outputs {
		if strings.Contains(fmt.Sprint(o.Value), fakeHFToken) {
			t.Errorf("output %s holds the token", name)
		}
	}
	for _, r := range d.res {
		for k, v := range r.Inputs {
			if !v.ContainsSecrets() && strings.Contains(fmt.Sprint(plain(v)), fakeHFToken) {
				t.Errorf("%s %s: input %s holds the token in plain text", r.Type, r.Name, k)
			}
		}
	}

	if _, err := run(t, "prod", "aws", map[string]setting{"relaygate:hfToken": {value: fakeHFToken}}); err == nil ||
		!strings.Contains(err.Error(), "relaygate:hfToken: is stored in plain text") || strings.Contains(err.Error(), fakeHFToken) {
		t.Errorf("a plain-text token: %v", err)
	}
}

// TestModelTooBigForTheGPU: a model the T4 cannot hold is refused before
// anything is registered, with the numbers.
func TestModelTooBigForTheGPU(t *testing.T) {
	t.Parallel()
	d, err := run(t, "dev", "aws", map[string]setting{
		"relaygate:modelServer": {value: `{"model":"Qwen/Qwen2.5-14B-Instruct","servedName":"qwen2.5-7b-instruct","dtype":"float16"}`},
	})
	want := "relaygate:modelServer.model: Qwen/Qwen2.5-14B-Instruct does not fit the GPU memory of g4dn.xlarge: per GPU it needs about 29.3 GiB " +
		"(weights 26.1 GiB = 14 B parameters × 2.00 bytes / 1 GPU(s); KV cache 1.8 GiB = maxModelLen 8192 × 224 KiB per token / 1; overhead 1.5 GiB) " +
		"but gets 13.6 GiB (gpuMemoryUtilization 0.85 × 16 GiB)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %v\nwant one containing %s", err, want)
	}
	if d != nil && len(d.res) > 0 {
		t.Errorf("%d resources registered for a refused stack", len(d.res))
	}
}

// TestPreviewRefusesAModelTooBig: the same through the real engine, as
// `pulumi preview` runs it.
func TestPreviewRefusesAModelTooBig(t *testing.T) {
	t.Parallel()
	r := newStackRun(t, "prod", map[string]setting{
		"relaygate:modelServer": {value: `{"model":"Qwen/Qwen2.5-7B-Instruct","servedName":"qwen2.5-7b-instruct","maxModelLen":65536,"paramsBillions":7.6}`},
	})
	events, err := r.op(pkgengine.Update, true)
	if err == nil {
		t.Fatalf("the preview passed: %v", stepsOf(events))
	}
	text := strings.Join(diags(events), "\n")
	for _, want := range []string{"does not fit the GPU memory of g5.xlarge", "KV cache 7.6 GiB = maxModelLen 65536 × 122 KiB per token", "gets 20.4 GiB"} {
		if !strings.Contains(text, want) {
			t.Errorf("preview diagnostics lack %q:\n%s", want, text)
		}
	}
	for _, s := range stepsOf(events) {
		if strings.HasPrefix(s, "create ") && strings.Contains(s, "model-server") {
			t.Errorf("the preview plans %s", s)
		}
	}
}

// TestLocalStackHasNoModelServer: the committed local stack runs on an
// engine with neither a GPU nor the vLLM image.
func TestLocalStackHasNoModelServer(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "local", "local", nil)
	for _, typ := range []string{typeContainer, typeRemoteImage, typeVolume} {
		for _, r := range d.ofType(typ) {
			if strings.Contains(r.Name, "model-server") || strings.Contains(r.Name, "huggingface") {
				t.Errorf("local registers %s %s", typ, r.Name)
			}
		}
	}
	for _, r := range d.ofType(typeRemoteImage) {
		if strings.Contains(getString(t, r, "name"), "vllm") {
			t.Errorf("local pulls %s", getString(t, r, "name"))
		}
	}
	if d.outputs["selfHostedModel"].Value != "" || d.outputs["selfHostedUpstream"].Value != "" {
		t.Errorf("outputs selfHostedModel %v, selfHostedUpstream %v; want empty", d.outputs["selfHostedModel"].Value, d.outputs["selfHostedUpstream"].Value)
	}
	if y := gatewayYAML(t, d.named(t, typeContainer, "relaygate-local-gateway")); strings.Contains(y, "self-hosted") {
		t.Errorf("the local gateway has a self-hosted upstream:\n%s", y)
	}

	// Turned on without a GPU, it is refused.
	if _, err := run(t, "local", "local", map[string]setting{"relaygate:modelServer": {value: `{"model":"Qwen/Qwen2.5-0.5B-Instruct"}`}}); err == nil ||
		!strings.Contains(err.Error(), "relaygate:modelServer.enabled: is true but localGpu is false") {
		t.Errorf("a local model server without a GPU: %v", err)
	}
}
