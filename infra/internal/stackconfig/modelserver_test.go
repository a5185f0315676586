package stackconfig

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
)

// The GPU memory per instance family comes from AWS's instance type pages:
//   - g4dn (NVIDIA T4, 16 GiB per GPU): https://aws.amazon.com/ec2/instance-types/g4/
//   - g5 (NVIDIA A10G, 24 GiB per GPU): https://aws.amazon.com/ec2/instance-types/g5/
//   - g6 (NVIDIA L4, 24 GiB), g6e (L40S, 48 GiB): https://aws.amazon.com/ec2/instance-types/g6/,
//     https://aws.amazon.com/ec2/instance-types/g6e/
//   - p4d/p4de (A100 40/80 GiB), p5/p5e/p5en (H100 80 GiB, H200 141 GiB):
//     https://aws.amazon.com/ec2/instance-types/p4/, https://aws.amazon.com/ec2/instance-types/p5/
//
// (all summarised on https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html).
func TestGPUMemoryOfTheStacksFamilies(t *testing.T) {
	t.Parallel()
	for family, want := range map[string]float64{"g4dn": 16, "g5": 24} {
		if got := GPUMemoryGiB[family]; got != want {
			t.Errorf("GPUMemoryGiB[%s] = %g, want %g", family, got, want)
		}
	}
	for family := range gpuFamilies {
		if _, ok := GPUMemoryGiB[family]; !ok {
			t.Errorf("GPU family %s has no GPU memory: preview could not check a model fits it", family)
		}
	}
}

func TestParseModelServer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		values map[string]string
		want   ModelServer
	}{
		{"A10G defaults: 16-bit 7B", awsValues(), ModelServer{
			Enabled: true, Image: DefaultModelServerImage, Model: "Qwen/Qwen2.5-7B-Instruct", ServedName: "qwen2.5-7b-instruct",
			MaxModelLen: 8192, GPUMemoryUtilization: 0.85, Dtype: "bfloat16", ParamsBillions: 7.6, ShmSizeMB: 4096, TensorParallel: 1,
		}},
		{"T4 defaults: 4-bit AWQ in float16", with(awsValues(), "relaygate:instanceType", "g4dn.xlarge"), ModelServer{
			Enabled: true, Image: DefaultModelServerImage, Model: "Qwen/Qwen2.5-7B-Instruct-AWQ", ServedName: "qwen2.5-7b-instruct",
			MaxModelLen: 8192, GPUMemoryUtilization: 0.85, Dtype: "float16", Quantization: "awq", ParamsBillions: 7.6, ShmSizeMB: 4096, TensorParallel: 1,
		}},
		{"tensor parallel over the host's GPUs, size from the name", with(awsValues(), "relaygate:instanceType", "g5.12xlarge", "relaygate:expectedGpuCount", "4",
			"relaygate:models", `[{"name":"llama-70b","route":["self-hosted"],"price":{"inputPerMtok":0,"outputPerMtok":0}}]`,
			"relaygate:modelServer", `{"image":"vllm/vllm-openai:v0.11.0","model":"casperhansen/llama-3.3-70b-instruct-awq","servedName":"llama-70b",`+
				`"maxModelLen":4096,"gpuMemoryUtilization":0.9,"extraArgs":["--enable-prefix-caching","--max-num-seqs=64"],"shmSizeMb":16384}`), ModelServer{
			Enabled: true, Image: "vllm/vllm-openai:v0.11.0", Model: "casperhansen/llama-3.3-70b-instruct-awq", ServedName: "llama-70b",
			MaxModelLen: 4096, GPUMemoryUtilization: 0.9, Dtype: "auto", ParamsBillions: 70, ShmSizeMB: 16384, TensorParallel: 4,
			ExtraArgs: []string{"--enable-prefix-caching", "--max-num-seqs=64"},
		}},
		{"disabled", with(awsValues(), "relaygate:modelServer", `{"enabled":false}`, "relaygate:models",
			`[{"name":"gpt-4.1","route":["holysheep"],"price":{"inputPerMtok":2,"outputPerMtok":8}}]`), ModelServer{
			MaxModelLen: 8192, GPUMemoryUtilization: 0.85, ShmSizeMB: 4096, TensorParallel: 1,
		}},
		{"local stack: off", localValues(), ModelServer{MaxModelLen: 8192, GPUMemoryUtilization: 0.85, ShmSizeMB: 4096}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := mustParse(t, tt.values)
			got := c.ModelServer
			if got.HFToken.IsSet() {
				t.Error("an HF token without hfToken set")
			}
			got.HFToken = Secret{}
			if !modelServerEqual(got, tt.want) {
				t.Errorf("model server\n got %+v\nwant %+v", got, tt.want)
			}
			if len(c.Warnings) != 0 {
				t.Errorf("warnings: %q", c.Warnings)
			}
		})
	}
}

func modelServerEqual(a, b ModelServer) bool {
	return slices.Equal(a.ExtraArgs, b.ExtraArgs) && fmt.Sprintf("%+v", withoutArgs(a)) == fmt.Sprintf("%+v", withoutArgs(b))
}

func withoutArgs(m ModelServer) ModelServer { m.ExtraArgs = nil; return m }

func TestModelServerToken(t *testing.T) {
	t.Parallel()
	v := with(awsValues(), "relaygate:modelServer", `{"model":"meta-llama/Llama-3.1-8B-Instruct","servedName":"llama-3.1-8b"}`,
		"relaygate:models", `[{"name":"llama-3.1-8b","route":["self-hosted","openai"],"price":{"inputPerMtok":0.1,"outputPerMtok":0.1}}]`)
	c := mustParse(t, v)
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "gated") || !strings.Contains(c.Warnings[0], "pulumi config set --secret hfToken") {
		t.Errorf("a gated model without a token: warnings %q", c.Warnings)
	}

	v["relaygate:hfToken"] = "hf_testtoken0123456789"
	c = mustParse(t, v)
	if !c.ModelServer.HFToken.IsSet() || len(c.Warnings) != 0 {
		t.Errorf("token set %v, warnings %q", c.ModelServer.HFToken.IsSet(), c.Warnings)
	}
	if s := c.ModelServer.HFToken.String(); strings.Contains(s, "hf_") {
		t.Errorf("the token prints as %q", s)
	}

	plain := source(v)
	delete(plain.Secrets, "relaygate:hfToken")
	_, err := Parse(plain, "test")
	if err == nil || !strings.Contains(err.Error(), "relaygate:hfToken: is stored in plain text") || strings.Contains(err.Error(), "hf_testtoken") {
		t.Errorf("a plain-text token: %v", err)
	}
}

// TestModelTooBigIsRefused: preview refuses what the GPU cannot hold, with
// the numbers that decide it.
func TestModelTooBigIsRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		values map[string]string
		want   []string
	}{
		{"16-bit 8B on a T4", with(awsValues(), "relaygate:instanceType", "g4dn.xlarge",
			"relaygate:models", `[{"name":"llama","route":["self-hosted"],"price":{"inputPerMtok":0,"outputPerMtok":0}}]`,
			"relaygate:modelServer", `{"model":"NousResearch/Meta-Llama-3.1-8B-Instruct","servedName":"llama","dtype":"float16"}`),
			// 8e9 × 2 bytes = 14.9 GiB; 8192 × 128 KiB = 1.0 GiB; 1.5 GiB
			// overhead: 17.4 GiB of the 0.85 × 16 = 13.6 GiB.
			[]string{"relaygate:modelServer.model: NousResearch/Meta-Llama-3.1-8B-Instruct does not fit the GPU memory of g4dn.xlarge",
				"needs about 17.4 GiB", "weights 14.9 GiB = 8 B parameters × 2.00 bytes / 1 GPU(s)",
				"KV cache 1.0 GiB = maxModelLen 8192 × 128 KiB per token", "overhead 1.5 GiB", "gets 13.6 GiB (gpuMemoryUtilization 0.85 × 16 GiB)"}},
		{"8B with a 32k context on an A10G", with(awsValues(),
			"relaygate:models", `[{"name":"llama","route":["self-hosted"],"price":{"inputPerMtok":0,"outputPerMtok":0}}]`,
			"relaygate:modelServer", `{"model":"meta-llama/Llama-3.1-8B-Instruct","servedName":"llama","maxModelLen":32768}`,
			"relaygate:hfToken", "hf_testtoken0123456789"),
			// 14.9 + 32768 × 128 KiB = 4.0 GiB + 1.5 = 20.4 > 0.85 × 24 = 20.4.
			[]string{"does not fit the GPU memory of g5.xlarge", "KV cache 4.0 GiB = maxModelLen 32768 × 128 KiB per token", "gets 20.4 GiB"}},
		{"unknown size", with(awsValues(), "relaygate:modelServer", `{"model":"acme/house-model","servedName":"qwen2.5-7b-instruct"}`),
			[]string{"relaygate:modelServer.paramsBillions: is not set and the model name \"acme/house-model\" shows no size"}},
		{"bfloat16 on a T4", with(awsValues(), "relaygate:instanceType", "g4dn.xlarge", "relaygate:modelServer", `{"dtype":"bfloat16","servedName":"qwen2.5-7b-instruct"}`),
			[]string{"relaygate:modelServer.dtype: is bfloat16 but the GPUs of g4dn.xlarge (NVIDIA T4, compute capability 7.5) have no bfloat16"}},
		{"bad fields", with(awsValues(), "relaygate:modelServer", `{"servedName":"qwen2.5-7b-instruct","gpuMemoryUtilization":0.99,"maxModelLen":10,"dtype":"int3","shmSizeMb":1,"extraArgs":["--port=1","a b"]}`),
			[]string{"modelServer.gpuMemoryUtilization: must be above 0 and at most 0.95", "modelServer.maxModelLen: must be between 256",
				"modelServer.dtype: \"int3\"", "modelServer.shmSizeMb", "modelServer.extraArgs[0]: --port is set from the other modelServer fields",
				"modelServer.extraArgs[1]: \"a b\""}},
		{"unknown field", with(awsValues(), "relaygate:modelServer", `{"modle":"x"}`),
			[]string{"relaygate:modelServer: json: unknown field \"modle\""}},
		{"route to a disabled server", with(awsValues(), "relaygate:modelServer", `{"enabled":false}`),
			[]string{"relaygate:models[1].route[0]: routes to \"self-hosted\" but modelServer is disabled"}},
		{"route under another name", with(awsValues(), "relaygate:models", `[{"name":"qwen","route":["self-hosted"],"price":{"inputPerMtok":0,"outputPerMtok":0}}]`),
			[]string{"relaygate:models[0].route[0]: sends model \"qwen\" to \"self-hosted\", which serves \"qwen2.5-7b-instruct\" only"}},
		{"declared self-hosted upstream", with(awsValues(), "relaygate:upstreams", `[{"name":"self-hosted","baseUrl":"http://10.0.0.1:8000/v1"}]`),
			[]string{"relaygate:upstreams[0].name: \"self-hosted\" is reserved"}},
		{"local without a GPU", with(localValues(), "relaygate:modelServer", `{"model":"Qwen/Qwen2.5-0.5B-Instruct"}`),
			[]string{"relaygate:modelServer.enabled: is true but localGpu is false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parseFails(t, tt.values, nil, tt.want)
		})
	}
}

// TestEstimateModelMemory pins the estimate's arithmetic on the stacks'
// defaults, which must fit with room to spare.
func TestEstimateModelMemory(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                string
		m                   ModelServer
		gpuGiB              float64
		weights, kv, budget float64 // GiB
	}{
		{"dev: 7.6B AWQ on a T4", ModelServer{Model: "Qwen/Qwen2.5-7B-Instruct-AWQ", Quantization: "awq", Dtype: "float16", ParamsBillions: 7.6,
			MaxModelLen: 8192, GPUMemoryUtilization: 0.85, TensorParallel: 1}, 16, 5.31, 0.95, 13.6},
		{"prod: 7.6B bf16 on an A10G", ModelServer{Model: "Qwen/Qwen2.5-7B-Instruct", Dtype: "bfloat16", ParamsBillions: 7.6,
			MaxModelLen: 8192, GPUMemoryUtilization: 0.85, TensorParallel: 1}, 24, 14.16, 0.95, 20.4},
		{"AWQ read from the name, split over 4 GPUs", ModelServer{Model: "x/Llama-3.3-70B-Instruct-AWQ", ParamsBillions: 70, Dtype: "auto",
			MaxModelLen: 4096, GPUMemoryUtilization: 0.9, TensorParallel: 4}, 24, 12.22, 1.09, 21.6},
		{"explicit KV bytes per token", ModelServer{Model: "m", ParamsBillions: 7.6, Dtype: "auto", KVBytesPerToken: 57344,
			MaxModelLen: 32768, GPUMemoryUtilization: 0.85, TensorParallel: 1}, 24, 14.16, 1.75, 20.4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := EstimateModelMemory(&tt.m, tt.gpuGiB)
			for _, c := range []struct {
				what      string
				got, want float64
			}{{"weights", e.Weights / gib, tt.weights}, {"kv", e.KVCache / gib, tt.kv}, {"budget", e.Budget / gib, tt.budget}} {
				if math.Abs(c.got-c.want) > 0.01 {
					t.Errorf("%s = %.3f GiB, want %.2f", c.what, c.got, c.want)
				}
			}
			if e.Need != e.Weights+e.KVCache+1.5*gib {
				t.Errorf("need %.0f is not weights + KV cache + 1.5 GiB", e.Need)
			}
			if e.Need > e.Budget {
				t.Errorf("needs %.1f GiB of %.1f", e.Need/gib, e.Budget/gib)
			}
		})
	}
}

func TestParamsFromName(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]float64{
		"Qwen/Qwen2.5-7B-Instruct": 7, "meta-llama/Llama-3.1-8B-Instruct": 8, "Qwen/Qwen2.5-0.5B-Instruct": 0.5,
		"mistralai/Mixtral-8x7B-v0.1": 0, "acme/house-model": 0, "google/gemma-2-9b-it": 9, "Qwen2.5-14B": 14,
	} {
		got, ok := ParamsFromName(name)
		if ok != (want > 0) || got != want {
			t.Errorf("ParamsFromName(%q) = %g, %v; want %g", name, got, ok, want)
		}
	}
}
