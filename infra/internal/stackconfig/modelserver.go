package stackconfig

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// SelfHostedUpstream is the upstream name the program adds when the stack
// runs a model server on its GPU hosts; each host's gateway reaches its own
// host's server under this name. Stack files route models to it but do not
// declare it.
const SelfHostedUpstream = "self-hosted"

// DefaultModelServerImage is vLLM's OpenAI-compatible server, pinned. It is
// the last release line whose engine still falls back to the V0 engine on
// GPUs of compute capability below 8.0, which the dev stack's T4 (7.5) needs;
// a stack on Ampere or newer (g5, g6, p4d, p5) may set a newer tag.
const DefaultModelServerImage = "vllm/vllm-openai:v0.10.1.1"

// ModelServer is the OpenAI-compatible model server each GPU host runs on
// its GPUs (config key modelServer).
type ModelServer struct {
	Enabled bool
	Image   string
	// Model is the Hugging Face model ID the server loads.
	Model string
	// ServedName is the model name clients send (the server's
	// --served-model-name).
	ServedName           string
	MaxModelLen          int
	GPUMemoryUtilization float64
	// Dtype is vLLM's --dtype: auto, float16 (half), bfloat16, float32.
	Dtype string
	// Quantization is vLLM's --quantization (awq, gptq, fp8, …); empty lets
	// the server read it from the checkpoint.
	Quantization string
	// ParamsBillions is the model's parameter count, for the memory
	// estimate; from the config or, unset, the model name ("-7B-").
	ParamsBillions float64
	// KVBytesPerToken is the KV cache one token takes; 0 means the
	// estimate's default (see [EstimateModelMemory]).
	KVBytesPerToken int
	ExtraArgs       []string
	// ShmSizeMB is the container's /dev/shm, in MiB.
	ShmSizeMB int
	// TensorParallel is the GPUs one server spreads over: the host's
	// expectedGpuCount.
	TensorParallel int
	// HFToken is the Hugging Face token, for gated models (secret key
	// hfToken).
	HFToken Secret
}

// modelServerJSON is the config value's shape; pointers tell an unset field
// from a zero one, so that a stack file setting one field keeps the
// defaults of the others.
type modelServerJSON struct {
	Enabled              *bool    `json:"enabled"`
	Image                string   `json:"image"`
	Model                string   `json:"model"`
	ServedName           string   `json:"servedName"`
	MaxModelLen          *int     `json:"maxModelLen"`
	GPUMemoryUtilization *float64 `json:"gpuMemoryUtilization"`
	Dtype                string   `json:"dtype"`
	Quantization         string   `json:"quantization"`
	ParamsBillions       *float64 `json:"paramsBillions"`
	KVBytesPerToken      *int     `json:"kvBytesPerToken"`
	ExtraArgs            []string `json:"extraArgs"`
	ShmSizeMB            *int     `json:"shmSizeMb"`
}

// Defaults of the modelServer fields a stack leaves out.
const (
	DefaultMaxModelLen          = 8192
	DefaultGPUMemoryUtilization = 0.85
	DefaultShmSizeMB            = 4096
)

// GPUMemoryGiB is the memory of one GPU of each instance family, in GiB,
// from AWS's accelerated-computing instance pages (g4dn: NVIDIA T4 16 GiB;
// g5: A10G 24 GiB; g6/gr6: L4 24 GiB; g6e: L40S 48 GiB; p4d: A100 40 GiB;
// p4de: A100 80 GiB; p5: H100 80 GiB; p5e/p5en: H200 141 GiB).
var GPUMemoryGiB = map[string]float64{
	"g4dn": 16, "g5": 24, "g6": 24, "gr6": 24, "g6e": 48,
	"p4d": 40, "p4de": 80, "p5": 80, "p5e": 141, "p5en": 141,
}

// DefaultModel is what a stack that names no modelServer.model runs: one
// that fits its GPU with the default maxModelLen and memory share.
type DefaultModel struct {
	Model, ServedName, Quantization, Dtype string
	ParamsBillions                         float64
}

// DefaultModels are per instance family; families not listed (24 GiB or
// more) get DefaultModels[""]. Both are ungated, so they need no hfToken,
// and answer to the same name, so a route to it holds on every stack.
var DefaultModels = map[string]DefaultModel{
	// T4, 16 GiB: a 4-bit AWQ build in float16 (no bfloat16 on Turing).
	"g4dn": {Model: "Qwen/Qwen2.5-7B-Instruct-AWQ", ServedName: "qwen2.5-7b-instruct", Quantization: "awq", Dtype: "float16", ParamsBillions: 7.6},
	// A10G, L4 and larger: the 16-bit model.
	"": {Model: "Qwen/Qwen2.5-7B-Instruct", ServedName: "qwen2.5-7b-instruct", Dtype: "bfloat16", ParamsBillions: 7.6},
}

// noBF16Families have GPUs without bfloat16 (T4: compute capability 7.5).
var noBF16Families = map[string]bool{"g4dn": true}

var (
	// paramsInNameRE finds a parameter count in a model name: the "7B" of
	// Qwen2.5-7B-Instruct, the "8B" of Llama-3.1-8B-Instruct.
	paramsInNameRE = regexp.MustCompile(`(?i)(?:^|[-_])(\d+(?:\.\d+)?)b(?:$|[-_])`)
	// hfModelRE is a Hugging Face model ID (org/name) or a bare name.
	hfModelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$`)
	// servedNameRE: what clients put in "model".
	servedNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)
	// extraArgRE keeps extra arguments to flags and plain values: they are
	// a container's command, never a shell's, but a stray newline or quote
	// is a mistake worth refusing.
	extraArgRE = regexp.MustCompile(`^[A-Za-z0-9_.,:=/@+-]+$`)
)

var dtypes = map[string]bool{"auto": true, "half": true, "float16": true, "bfloat16": true, "float": true, "float32": true}

// ownedArgs are the flags the program sets itself; extraArgs may not
// repeat them, since which one wins would be the server's business.
var ownedArgs = []string{"--model", "--served-model-name", "--host", "--port", "--max-model-len",
	"--gpu-memory-utilization", "--tensor-parallel-size", "--dtype", "--quantization", "--download-dir"}

// gatedOrgs publish models that Hugging Face only serves with a token of an
// account that accepted their licence.
var gatedOrgs = []string{"meta-llama/", "google/gemma", "mistralai/"}

// ModelMemory is the estimate a model server's GPU memory is checked with.
type ModelMemory struct {
	// Per GPU, in bytes.
	Weights, KVCache, Overhead, Need, Budget float64
	BytesPerParam                            float64
	KVBytesPerToken                          float64
}

// fixedOverheadBytes covers activations, CUDA graphs and the CUDA context
// on each GPU: vLLM's start-up profile measures about 1 to 2 GiB for 7-8B
// models.
const fixedOverheadBytes = 1.5 * gib

const gib = 1 << 30

// EstimateModelMemory estimates what one GPU of the server holds, kept
// simple on purpose:
//   - weights: parameters × bytes per parameter (2 for 16-bit, 4 for
//     float32, 1.1 for fp8, 0.75 for 4-bit AWQ/GPTQ: published 4-bit 7-8B
//     checkpoints weigh 0.7 bytes a parameter, their embeddings and output
//     layer staying 16-bit), split over the tensor-parallel GPUs;
//   - KV cache: one full sequence of maxModelLen tokens, which vLLM
//     requires at start, at kvBytesPerToken (default 16 KiB per billion
//     parameters: exact for Llama-3-8B's grouped-query attention, 32 layers
//     × 8 KV heads × 128 × K and V × 2 bytes = 128 KiB, and above Qwen2.5-7B's
//     56 KiB), doubled for float32;
//   - 1.5 GiB of overhead per GPU.
//
// It must fit in gpuMemoryUtilization × the GPU's memory.
func EstimateModelMemory(m *ModelServer, gpuGiB float64) ModelMemory {
	var e ModelMemory
	q := strings.ToLower(m.Quantization)
	name := strings.ToLower(m.Model)
	dtype := strings.ToLower(m.Dtype)
	switch {
	case q == "awq" || q == "awq_marlin" || q == "gptq" || q == "gptq_marlin" || q == "bitsandbytes" ||
		(q == "" && (strings.Contains(name, "awq") || strings.Contains(name, "gptq") || strings.Contains(name, "int4") || strings.Contains(name, "4bit"))):
		e.BytesPerParam = 0.75
	case q == "fp8" || (q == "" && strings.Contains(name, "fp8")):
		e.BytesPerParam = 1.1
	case dtype == "float32" || dtype == "float":
		e.BytesPerParam = 4
	default:
		e.BytesPerParam = 2
	}
	tp := float64(max(m.TensorParallel, 1))
	e.Weights = m.ParamsBillions * 1e9 * e.BytesPerParam / tp
	e.KVBytesPerToken = float64(m.KVBytesPerToken)
	if e.KVBytesPerToken == 0 {
		e.KVBytesPerToken = 16 * 1024 * m.ParamsBillions
		if dtype == "float32" || dtype == "float" {
			e.KVBytesPerToken *= 2
		}
	}
	e.KVCache = float64(m.MaxModelLen) * e.KVBytesPerToken / tp
	e.Overhead = fixedOverheadBytes
	e.Need = e.Weights + e.KVCache + e.Overhead
	e.Budget = m.GPUMemoryUtilization * gpuGiB * gib
	return e
}

// ParamsFromName reads a parameter count, in billions, from a model name.
func ParamsFromName(model string) (float64, bool) {
	base := model[strings.LastIndex(model, "/")+1:]
	m := paramsInNameRE.FindStringSubmatch(base)
	if m == nil {
		return 0, false
	}
	var v float64
	if _, err := fmt.Sscanf(m[1], "%g", &v); err != nil || v <= 0 {
		return 0, false
	}
	return v, true
}

// parseModelServer reads modelServer (and the hfToken secret) and checks it
// against the hosts' GPUs.
func (p *parser) parseModelServer(c *Config) {
	var raw modelServerJSON
	if !p.object("modelServer", &raw, "enabled, image, model, servedName, maxModelLen, gpuMemoryUtilization, dtype, quantization, paramsBillions, kvBytesPerToken, extraArgs, shmSizeMb") {
		return
	}
	m := ModelServer{
		Enabled:              raw.Enabled == nil || *raw.Enabled,
		Image:                raw.Image,
		Model:                strings.TrimSpace(raw.Model),
		ServedName:           strings.TrimSpace(raw.ServedName),
		MaxModelLen:          DefaultMaxModelLen,
		GPUMemoryUtilization: DefaultGPUMemoryUtilization,
		Dtype:                strings.ToLower(raw.Dtype),
		Quantization:         strings.ToLower(raw.Quantization),
		ExtraArgs:            raw.ExtraArgs,
		ShmSizeMB:            DefaultShmSizeMB,
		TensorParallel:       c.ExpectedGPUCount,
	}
	c.ModelServer = m
	// Read even when disabled, so that a token stored in plain text is
	// refused either way.
	token := p.optionalSecret("hfToken")
	if !m.Enabled {
		return
	}
	m.HFToken = token
	m.Image = cmp.Or(m.Image, DefaultModelServerImage)
	m.MaxModelLen = valueOr(raw.MaxModelLen, m.MaxModelLen)
	m.GPUMemoryUtilization = valueOr(raw.GPUMemoryUtilization, m.GPUMemoryUtilization)
	m.ShmSizeMB = valueOr(raw.ShmSizeMB, m.ShmSizeMB)
	m.KVBytesPerToken = valueOr(raw.KVBytesPerToken, m.KVBytesPerToken)
	m.Dtype = cmp.Or(m.Dtype, "auto")

	if m.Model == "" && c.Target == TargetAWS {
		family, _, _ := strings.Cut(c.InstanceType, ".")
		d, ok := DefaultModels[family]
		if !ok {
			d = DefaultModels[""]
		}
		m.Model = d.Model
		m.ServedName = cmp.Or(m.ServedName, d.ServedName)
		m.Quantization = cmp.Or(m.Quantization, d.Quantization)
		if raw.Dtype == "" {
			m.Dtype = d.Dtype
		}
		if raw.ParamsBillions == nil {
			raw.ParamsBillions = &d.ParamsBillions
		}
	}
	if c.Target == TargetLocal && !c.LocalGPU {
		p.fail("modelServer.enabled", "is true but localGpu is false: the model server needs a GPU; set modelServer to {enabled: false} (the committed local stack does)")
	}
	if !imageRefRE.MatchString(m.Image) {
		p.fail("modelServer.image", "%q is not an image reference such as %s", m.Image, DefaultModelServerImage)
	}
	switch {
	case m.Model == "":
		p.fail("modelServer.model", "is required when the model server is enabled: a Hugging Face model ID such as Qwen/Qwen2.5-7B-Instruct")
	case !hfModelRE.MatchString(m.Model):
		p.fail("modelServer.model", "%q is not a Hugging Face model ID such as Qwen/Qwen2.5-7B-Instruct", m.Model)
	}
	if m.ServedName == "" && m.Model != "" {
		m.ServedName = strings.ToLower(m.Model[strings.LastIndex(m.Model, "/")+1:])
	}
	if m.ServedName != "" && !servedNameRE.MatchString(m.ServedName) {
		p.fail("modelServer.servedName", "%q: use letters, digits and . _ : / -", m.ServedName)
	}
	if m.MaxModelLen < 256 || m.MaxModelLen > 1<<20 {
		p.fail("modelServer.maxModelLen", "must be between 256 and 1048576 tokens, got %d", m.MaxModelLen)
	}
	if m.GPUMemoryUtilization <= 0 || m.GPUMemoryUtilization > 0.95 {
		p.fail("modelServer.gpuMemoryUtilization", "must be above 0 and at most 0.95 (the rest is the CUDA context's and the driver's), got %g", m.GPUMemoryUtilization)
	}
	if !dtypes[m.Dtype] {
		p.fail("modelServer.dtype", "%q is not one of auto, float16, bfloat16, float32", m.Dtype)
	}
	if m.Quantization != "" && !nameRE.MatchString(m.Quantization) {
		p.fail("modelServer.quantization", "%q is not a vLLM quantization method such as awq", m.Quantization)
	}
	if m.ShmSizeMB < 64 || m.ShmSizeMB > 65536 {
		p.fail("modelServer.shmSizeMb", "must be between 64 and 65536 MiB, got %d", m.ShmSizeMB)
	}
	if m.KVBytesPerToken < 0 {
		p.fail("modelServer.kvBytesPerToken", "must not be negative, got %d", m.KVBytesPerToken)
	}
	for i, a := range m.ExtraArgs {
		k := fmt.Sprintf("modelServer.extraArgs[%d]", i)
		flag, _, _ := strings.Cut(a, "=")
		switch {
		case !extraArgRE.MatchString(a):
			p.fail(k, "%q: an argument may hold letters, digits and _ . , : = / @ + - only", a)
		case slices.Contains(ownedArgs, flag):
			p.fail(k, "%s is set from the other modelServer fields; use those instead", flag)
		}
	}
	if raw.ParamsBillions != nil {
		m.ParamsBillions = *raw.ParamsBillions
		if m.ParamsBillions <= 0 || m.ParamsBillions > 2000 {
			p.fail("modelServer.paramsBillions", "must be above 0 and at most 2000, got %g", m.ParamsBillions)
		}
	} else if m.Model != "" {
		var ok bool
		if m.ParamsBillions, ok = ParamsFromName(m.Model); !ok {
			p.fail("modelServer.paramsBillions", "is not set and the model name %q shows no size such as \"-7B-\"; set the parameter count in billions so the memory estimate can check it fits", m.Model)
		}
	}
	if !m.HFToken.IsSet() {
		for _, org := range gatedOrgs {
			if strings.HasPrefix(strings.ToLower(m.Model), org) {
				c.Warnings = append(c.Warnings, fmt.Sprintf("%s is usually a gated model and %s is not set: the model server will fail to download it; "+
					"accept its licence on huggingface.co and run `pulumi config set --secret hfToken <token>`", m.Model, fullKey("hfToken")))
				break
			}
		}
	}
	c.ModelServer = m
	if c.Target == TargetAWS {
		p.checkModelFits(c)
	}
}

// checkModelFits refuses, at preview, a model the hosts' GPUs cannot hold.
func (p *parser) checkModelFits(c *Config) {
	m := &c.ModelServer
	family, _, _ := strings.Cut(c.InstanceType, ".")
	if noBF16Families[family] && m.Dtype == "bfloat16" {
		p.fail("modelServer.dtype", "is bfloat16 but the GPUs of %s (NVIDIA T4, compute capability 7.5) have no bfloat16; use float16", c.InstanceType)
	}
	gpuGiB, ok := GPUMemoryGiB[family]
	if !ok || m.ParamsBillions <= 0 || m.TensorParallel < 1 || m.GPUMemoryUtilization <= 0 || m.MaxModelLen <= 0 {
		return
	}
	e := EstimateModelMemory(m, gpuGiB)
	if e.Need > e.Budget {
		p.fail("modelServer.model", "%s does not fit the GPU memory of %s: per GPU it needs about %.1f GiB "+
			"(weights %.1f GiB = %g B parameters × %.2f bytes / %d GPU(s); KV cache %.1f GiB = maxModelLen %d × %.0f KiB per token / %d; overhead %.1f GiB) "+
			"but gets %.1f GiB (gpuMemoryUtilization %g × %g GiB); use a smaller or quantized model (e.g. an AWQ build), a shorter maxModelLen, or a larger instanceType",
			m.Model, c.InstanceType, e.Need/gib, e.Weights/gib, m.ParamsBillions, e.BytesPerParam, m.TensorParallel,
			e.KVCache/gib, m.MaxModelLen, e.KVBytesPerToken/1024, m.TensorParallel, e.Overhead/gib,
			e.Budget/gib, m.GPUMemoryUtilization, gpuGiB)
	}
}

// valueOr is *v, or otherwise for a field the stack leaves unset (nil).
func valueOr[T any](v *T, otherwise T) T {
	if v == nil {
		return otherwise
	}
	return *v
}
