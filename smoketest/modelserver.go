package smoketest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/relaygate/relaygate/internal/ctxsleep"
)

// DefaultModelServerWait is how long the model-server check waits for the
// self-hosted model to answer: a first start downloads the weights and
// every start loads them onto the GPU (the container's health check gives
// it 20 minutes; a deploy has already waited for that).
const DefaultModelServerWait = 15 * time.Minute

// DefaultUtilizationWindow is how long the check keeps the model busy while
// it watches the gateway's GPU readings, which NVML refreshes every 10 s.
const DefaultUtilizationWindow = 40 * time.Second

// minHeldShare is the share of GPU memory a loaded model server holds at
// the least: vLLM takes gpuMemoryUtilization (0.85 by default) of it up
// front for weights and KV cache.
const minHeldShare = 0.5

// Poll intervals; variables so tests need not wait on real servers' pace.
var (
	modelServerPoll = 10 * time.Second
	gpuPoll         = 2 * time.Second
)

// checkModelServer: the self-hosted model answers through the gateway from
// the model server (the X-Relaygate-Upstream header names it), and the
// gateway's NVML readings show the GPU's memory held and its utilization
// moving while the model works.
func (r *runner) checkModelServer(ctx context.Context, s *Step) {
	model, upstream := r.opts.Outputs.SelfHostedModel, r.opts.Outputs.SelfHostedUpstream
	t0 := time.Now()

	// 1. The model answers, once it has loaded.
	var resp openai.ChatCompletionResponse
	var lastDetail, lastHint string
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, r.opts.StepTimeout)
		var err error
		resp, err = r.openai.CreateChatCompletion(actx, openai.ChatCompletionRequest{
			Model: model, Messages: r.prompt(fmt.Sprintf("model server %s %d", r.runID, attempt)), MaxCompletionTokens: maxTokens,
		})
		cancel()
		if err == nil {
			break
		}
		lastDetail, lastHint = r.openaiError(ctx, "the self-hosted model's completion", err)
		code := httpStatus(err)
		if code == http.StatusUnauthorized || code == http.StatusNotFound || code == http.StatusBadRequest {
			s.fail(lastDetail, modelServerHint(code, lastDetail, ""))
			return
		}
		// 502, 503, 504, or no answer: the server may still be loading.
		upErr := r.upstreamError(ctx, upstream)
		if ctx.Err() != nil || time.Since(t0)+modelServerPoll > r.opts.ModelServerWait {
			s.fail(fmt.Sprintf("%s did not answer within %s: %s%s", model, r.opts.ModelServerWait, lastDetail, withUpstreamError(upErr)),
				modelServerHint(code, lastDetail+" "+upErr, lastHint))
			return
		}
		fmt.Fprintf(r.opts.Progress, "smoke: %-18s %s not answering yet after %s (%s%s); the model may still be loading, next try in %s\n",
			CheckModelServer, model, time.Since(t0).Round(time.Second), oneLine(clip(lastDetail, 120)), withUpstreamError(clip(upErr, 120)), modelServerPoll)
		if !ctxsleep.Sleep(ctx, modelServerPoll) {
			continue // the next try sees the context's end and fails
		}
	}
	r.okRequests++
	loaded := time.Since(t0)
	if got := resp.Header().Get("X-Relaygate-Upstream"); got != upstream {
		s.fail(fmt.Sprintf("%s was answered by upstream %q, not the model server (%q)", model, orNone(got), upstream),
			"the gateway fell back past the model server: its /health upstreams entry for "+upstream+" says why; "+
				"on the host, `docker logs --tail 200 relaygate-model-server` shows whether the model loaded")
		return
	}

	// 2. The GPU holds the model.
	h, err := r.fetchHealth(ctx)
	if err != nil {
		s.fail(r.reachError(ctx, "the gateway", err))
		return
	}
	g := h.GPU
	if g == nil || !g.Available || len(g.Devices) == 0 {
		reason := "no gpu section in /health"
		if g != nil {
			reason = orNone(g.Reason)
		}
		s.fail(fmt.Sprintf("%s answered, but the gateway reads no GPU (%s), so nothing shows the model runs on one", model, reason), gpuHint(reason))
		return
	}
	used, total := g.memory()
	if total == 0 || float64(used) < minHeldShare*float64(total) {
		s.fail(fmt.Sprintf("%s answered, but GPU memory in use is %s of %s (under %.0f%%): the model server does not hold the GPU",
			model, gibString(used), gibString(total), minHeldShare*100),
			"the model server runs without its GPUs: `docker inspect relaygate-model-server --format '{{.HostConfig.DeviceRequests}}'` must not be empty, "+
				"and its log must not say it fell back to CPU; `nvidia-smi` on the host lists the processes holding GPU memory")
		return
	}

	// 3. Utilization moves while the model works.
	peak, samples := r.loadAndWatch(ctx, model)
	if peak <= 0 {
		s.fail(fmt.Sprintf("%s answered and holds %s of %s GPU memory, but GPU utilization stayed at 0 over %d reading(s) in %s of generation",
			model, gibString(used), gibString(total), samples, r.opts.UtilizationWindow),
			"the gateway refreshes its NVML readings every 10 s: a window without a fresh reading says nothing, so run the check again; "+
				"if it stays at 0, `nvidia-smi dmon -s u` on the host while sending requests shows whether the GPU works at all")
		return
	}
	s.passf("%s answered via %s (ready after %s); GPU memory %s of %s held (%.0f%%); utilization up to %.0f%% under load",
		model, upstream, loaded.Round(time.Second), gibString(used), gibString(total), 100*float64(used)/float64(total), peak*100)
}

// loadAndWatch keeps the model generating for the utilization window while
// it reads the gateway's GPU section, and returns the highest utilization
// of any GPU in a reading taken after the load began.
func (r *runner) loadAndWatch(ctx context.Context, model string) (peak float64, samples int) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.UtilizationWindow)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				_, _ = r.openai.CreateChatCompletion(ctx, openai.ChatCompletionRequest{
					Model: model, Messages: r.prompt(fmt.Sprintf("GPU load %s %d-%d; write a long paragraph", r.runID, w, i)),
					MaxCompletionTokens: 256, Temperature: 0.7,
				})
			}
		}()
	}
	defer wg.Wait()
	for {
		if h, err := r.fetchHealth(ctx); err == nil && h.GPU != nil {
			if h.GPU.UpdatedAt.IsZero() || h.GPU.UpdatedAt.After(start) {
				samples++
				for _, d := range h.GPU.Devices {
					peak = max(peak, d.UtilizationRatio)
				}
			}
		}
		if peak > 0 || !ctxsleep.Sleep(ctx, gpuPoll) {
			return peak, samples
		}
	}
}

// upstreamError is the gateway's last error for an upstream, from /health.
func (r *runner) upstreamError(ctx context.Context, name string) string {
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, err := r.fetchHealth(hctx)
	if err != nil {
		return ""
	}
	for _, u := range h.Upstreams {
		if u.Name == name {
			return u.LastError
		}
	}
	return ""
}

func withUpstreamError(e string) string {
	if e == "" {
		return ""
	}
	return "; the gateway's last error from it: " + e
}

// modelServerHint is the diagnosis for a model that does not answer, from
// the gateway's status and what the server said.
func modelServerHint(code int, text, fallback string) string {
	const logs = "On the host, `docker logs --tail 200 relaygate-model-server` shows the server's own error. "
	t := strings.ToLower(text)
	switch {
	case code == http.StatusNotFound:
		return "the gateway does not know the self-hosted model: the stack's `models` must route selfHostedModel to the self-hosted upstream"
	case code == http.StatusUnauthorized:
		return "the gateway refused the stack's gatewayApiKey; see the auth check"
	case strings.Contains(t, "out of memory") || strings.Contains(t, "oom"):
		return "CUDA out of memory: " + logs + "Lower modelServer.gpuMemoryUtilization or maxModelLen, or pick a smaller or quantized model; " +
			"`nvidia-smi` shows whether another process holds GPU memory (RelaygateGPUMemoryExhausted)"
	case strings.Contains(t, "gated") || strings.Contains(t, "401") || strings.Contains(t, "403") || strings.Contains(t, "access to model"):
		return "a gated model without access: set the secret hfToken of an account that accepted the model's licence " +
			"(`pulumi config set --secret hfToken <token>`) and run `pulumi up`"
	case strings.Contains(t, "driver") || strings.Contains(t, "no kernel image") || strings.Contains(t, "cuda"):
		return "the GPU stack: " + logs + "'CUDA driver version is insufficient' or 'no kernel image' means the image's CUDA needs a newer driver " +
			"than the AMI's: pin an older modelServer.image or update the AMI; `nvidia-smi` on the host must list the GPUs"
	case strings.Contains(t, "refused") || strings.Contains(t, "no such host") || code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout:
		return "the model is not loaded: " + logs + "Still downloading or loading: run the smoke test again later (-model-server-wait); " +
			"exited: its last lines name the cause (CUDA out of memory, a gated model without hfToken, a driver too old for the image)"
	case fallback != "":
		return fallback
	default:
		return "the model is not loaded: " + logs
	}
}

// httpStatus is the HTTP status in a go-openai error, 0 for none.
func httpStatus(err error) int {
	var apiErr *openai.APIError
	var reqErr *openai.RequestError
	switch {
	case errors.As(err, &apiErr):
		return apiErr.HTTPStatusCode
	case errors.As(err, &reqErr):
		return reqErr.HTTPStatusCode
	}
	return 0
}

// memory sums the GPUs' memory in use and installed.
func (g *gpuDoc) memory() (used, total uint64) {
	for _, d := range g.Devices {
		used += d.MemoryUsedBytes
		total += d.MemoryTotalBytes
	}
	return used, total
}

func gibString(b uint64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
