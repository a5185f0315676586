package smoketest

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// healthDoc is the part of GET /health the checks read.
type healthDoc struct {
	Status    string `json:"status"`
	Version   string `json:"version"`
	Upstreams []struct {
		Name      string `json:"name"`
		Available bool   `json:"available"`
		Disabled  string `json:"disabled"`
		State     string `json:"state"`
		LastError string `json:"last_error"`
		// Probe is the upstream's active health probe, when it has one.
		Probe *struct {
			Up        bool   `json:"up"`
			Pending   bool   `json:"pending"`
			LastError string `json:"last_error"`
		} `json:"probe"`
	} `json:"upstreams"`
	Cache *redisDoc `json:"cache"`
	GPU   *gpuDoc   `json:"gpu"`
}

type redisDoc struct {
	Enabled   bool   `json:"enabled"`
	Up        *bool  `json:"up"`
	LastError string `json:"last_error"`
}

type gpuDoc struct {
	Available     bool   `json:"available"`
	Reason        string `json:"reason"`
	DriverVersion string `json:"driver_version"`
	Count         int    `json:"count"`
	Devices       []struct {
		Index            int     `json:"index"`
		Name             string  `json:"name"`
		MemoryUsedBytes  uint64  `json:"memory_used_bytes"`
		MemoryTotalBytes uint64  `json:"memory_total_bytes"`
		UtilizationRatio float64 `json:"utilization_ratio"`
	} `json:"devices"`
	UpdatedAt time.Time `json:"updated_at"`
}

// apiError is OpenAI's error shape, which the gateway answers with.
type apiError struct {
	Error struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    any    `json:"code"`
	} `json:"error"`
}

// get fetches path from the gateway, with the key when auth is set, and
// returns the status and up to 1 MiB of body.
func (r *runner) get(ctx context.Context, path string, auth bool) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.opts.Outputs.GatewayURL+path, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s: %w", path, err)
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+r.opts.Outputs.GatewayAPIKey)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, body, fmt.Errorf("GET %s: reading the answer: %w", path, err)
	}
	return resp.StatusCode, body, nil
}

func (r *runner) fetchHealth(ctx context.Context) (*healthDoc, error) {
	code, body, err := r.get(ctx, "/health", false)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /health answered HTTP %d: %s", code, snippet(body))
	}
	var h healthDoc
	if err := json.Unmarshal(body, &h); err != nil {
		return nil, fmt.Errorf("GET /health did not answer the gateway's JSON (%v): %s; is gatewayUrl pointing at Relaygate?", err, snippet(body))
	}
	return &h, nil
}

func (r *runner) checkHealth(ctx context.Context, s *Step) {
	h, err := r.fetchHealth(ctx)
	if err != nil {
		s.fail(r.reachError(ctx, "the gateway", err))
		return
	}
	r.health = h
	var ups, broken, probing []string
	for _, u := range h.Upstreams {
		switch {
		case u.Available:
			ups = append(ups, u.Name+" ok")
		case u.Disabled != "":
			ups = append(ups, u.Name+" disabled")
		case u.Probe != nil && !u.Probe.Up:
			// Its probe says it is not serving: a model server still
			// loading, or gone. The model_server check waits for it and
			// diagnoses it; the other upstreams decide this check.
			state := "down"
			if u.Probe.Pending {
				state = "not probed yet"
			}
			ups = append(ups, u.Name+" probe "+state)
			msg := u.Name + " (health probe " + state
			if u.Probe.LastError != "" {
				msg += ": " + u.Probe.LastError
			}
			probing = append(probing, msg+")")
		default:
			ups = append(ups, u.Name+" circuit "+u.State)
			msg := u.Name + " (circuit " + u.State
			if u.LastError != "" {
				msg += ": " + u.LastError
			}
			broken = append(broken, msg+")")
		}
	}
	detail := fmt.Sprintf("status %s; upstreams: %s; cache %s", h.Status, strings.Join(ups, ", "), h.Cache.describe())
	if h.Version != "" {
		detail += "; version " + h.Version
	}
	if len(probing) > 0 {
		detail += "; its probe keeps out " + strings.Join(probing, ", ")
	}
	switch {
	case h.Status == "draining":
		s.fail(detail, "the gateway is shutting down (draining): a deploy or restart is under way; run the smoke test again when it has finished")
	case len(broken) > 0:
		s.fail(detail+"; failing: "+strings.Join(broken, ", "),
			"an upstream's circuit is open: check its key (the stack secret named after its apiKeyEnv, e.g. `pulumi config set --secret holysheepApiKey …`), "+
				"its status page, and egress from the host (DNS, outbound 443); the circuit closes by itself once the upstream answers")
	case h.Status != "ok" && h.Status != "degraded":
		s.fail(detail, "the gateway reports no usable upstream: check the upstreams in the stack config and the gateway's log")
	default:
		// "degraded" with nothing broken means an upstream is disabled
		// on purpose (its key is unset), which is the operator's call.
		s.passf("%s", detail)
	}
}

func (c *redisDoc) describe() string {
	switch {
	case c == nil || !c.Enabled:
		return "off"
	case c.Up != nil && !*c.Up:
		return "down (" + c.LastError + ")"
	default:
		return "up"
	}
}

func (r *runner) checkReady(ctx context.Context, s *Step) {
	code, body, err := r.get(ctx, "/ready", false)
	if err != nil {
		s.fail(r.reachError(ctx, "the gateway", err))
		return
	}
	if code == http.StatusOK {
		s.passf("ready (HTTP 200)")
		return
	}
	s.fail(fmt.Sprintf("GET /ready answered HTTP %d: %s", code, snippet(body)),
		"the gateway cannot serve: it is draining or no upstream takes traffic; the health check's upstreams say which and why. "+
			"A load balancer sends it no traffic until /ready answers 200")
}

func (r *runner) checkAuth(ctx context.Context, s *Step) {
	code, body, err := r.get(ctx, "/v1/models", true)
	if err != nil {
		s.fail(r.reachError(ctx, "the gateway", err))
		return
	}
	switch code {
	case http.StatusOK:
	case http.StatusUnauthorized:
		s.fail("the gateway refused the key from the stack output gatewayApiKey (HTTP 401: "+errorMessage(body)+")",
			"the gateway's client_keys do not contain the stack's gatewayApiKey: set the secret with "+
				"`pulumi config set --secret gatewayApiKey \"$(openssl rand -hex 24)\"` and run `make up STACK=…` so the gateway gets it, "+
				"or, if the gateway's config was edited by hand on the host, restart it from the stack")
		return
	default:
		s.fail(fmt.Sprintf("GET /v1/models answered HTTP %d: %s", code, errorMessage(body)),
			"the gateway did not list its models; its log says why")
		return
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		s.fail("GET /v1/models did not answer OpenAI's list shape: "+err.Error(), "is gatewayUrl pointing at Relaygate?")
		return
	}
	ids := make([]string, 0, len(list.Data))
	for _, m := range list.Data {
		ids = append(ids, m.ID)
	}
	model, why := pickModel(ids, r.opts.Model)
	if model == "" {
		s.fail(why, "pass -model with one of the gateway's models, or add a chat model to the stack's `models` config")
		return
	}
	r.model, r.authOK = model, true
	s.passf("key accepted; %d model(s); asking %s", len(ids), model)
}

// pickModel returns want when the gateway serves it, or else the first
// model that is not an embedding model; why says what went wrong.
func pickModel(ids []string, want string) (model, why string) {
	if want != "" {
		for _, id := range ids {
			if id == want {
				return want, ""
			}
		}
		return "", fmt.Sprintf("the gateway does not serve model %q; it lists: %s", want, strings.Join(ids, ", "))
	}
	for _, id := range ids {
		if !strings.Contains(strings.ToLower(id), "embed") {
			return id, ""
		}
	}
	if len(ids) == 0 {
		return "", "the gateway lists no models"
	}
	return "", "the gateway lists only embedding models: " + strings.Join(ids, ", ")
}

func (r *runner) checkGPU(ctx context.Context, s *Step) {
	want := r.opts.Outputs.ExpectedGPUCount
	h := r.health
	if h == nil {
		var err error
		if h, err = r.fetchHealth(ctx); err != nil {
			s.fail(r.reachError(ctx, "the gateway", err))
			return
		}
	}
	g := h.GPU
	if g == nil {
		if want == 0 {
			s.passf("no GPU expected; the gateway does not report GPUs")
			return
		}
		s.fail(fmt.Sprintf("expected %d GPU(s) but /health has no gpu section", want),
			"the running gateway predates GPU reporting: deploy the current image (`make up`), then run the smoke test again")
		return
	}
	seen := g.Count
	if !g.Available {
		seen = 0
	}
	switch {
	case want == 0 && seen == 0:
		s.passf("no GPU expected; the gateway sees none (%s)", orNone(g.Reason))
	case seen >= want:
		names := make([]string, 0, len(g.Devices))
		for _, d := range g.Devices {
			names = append(names, fmt.Sprintf("%d:%s", d.Index, d.Name))
		}
		extra := ""
		if seen > want {
			extra = fmt.Sprintf(" (more than the %d expected: raise expectedGpuCount so a lost GPU is noticed)", want)
		}
		s.passf("%d GPU(s), driver %s: %s%s", seen, orNone(g.DriverVersion), strings.Join(names, ", "), extra)
	case !g.Available:
		s.fail(fmt.Sprintf("expected %d GPU(s), the gateway sees none: %s", want, orNone(g.Reason)), gpuHint(g.Reason))
	default:
		s.fail(fmt.Sprintf("expected %d GPU(s), the gateway sees %d", want, seen),
			"fewer GPUs than expected: check that the gateway container is given all of them (`--gpus all`, not `device=0`; "+
				"NVIDIA_VISIBLE_DEVICES), that instanceType has that many GPUs, and `nvidia-smi` and `dmesg | grep -i xid` on the host for a GPU "+
				"that fell off the bus (drain and reboot the host); if the count is right, correct expectedGpuCount")
	}
}

// gpuHint turns the gateway's NVML reason into the fix for its usual cause.
func gpuHint(reason string) string {
	const (
		driver = "driver: on the host `nvidia-smi` must list the GPUs; if it fails, the kernel driver is not loaded " +
			"(`sudo modprobe nvidia`, `dmesg | grep -i nvrm`) or the AMI has none (amiNamePattern must name an NVIDIA-driver AMI)"
		toolkit = "container toolkit: `docker run --rm --gpus all nvidia/cuda:12.4.1-base-ubuntu22.04 nvidia-smi` on the host must work; " +
			"if not, install nvidia-container-toolkit and run `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`"
		gpus = "--gpus: the gateway container must be created with the GPUs (`docker inspect <container> --format '{{.HostConfig.DeviceRequests}}'` " +
			"must not be empty) and NVIDIA_DRIVER_CAPABILITIES including utility, so the toolkit mounts libnvidia-ml.so.1 into it"
		nvml = "no NVML in the image: the gateway must be built with CGO_ENABLED=1 (the Dockerfile's build stage) to load libnvidia-ml"
	)
	r := strings.ToLower(reason)
	switch {
	case strings.Contains(r, "without cgo"):
		return nvml
	case strings.Contains(r, "not loaded"):
		return driver
	case strings.Contains(r, "libnvidia-ml") || strings.Contains(r, "library not found") || strings.Contains(r, "not found"):
		return "NVML cannot be loaded in the container. Check in order: " + driver + "; " + toolkit + "; " + gpus
	case strings.Contains(r, "permission"):
		return "the gateway cannot open /dev/nvidia*: " + gpus
	case strings.Contains(r, "version"):
		return "the NVIDIA library and kernel driver versions differ after a driver upgrade: reboot the host"
	default:
		return "Check in order: " + driver + "; " + toolkit + "; " + gpus + "; " + nvml
	}
}

// reachError explains a failed request to a service: what happened and
// what to do, for the errors an operator actually meets.
func (r *runner) reachError(ctx context.Context, what string, err error) (detail, hint string) {
	var dnsErr *net.DNSError
	var certErr *x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var urlErr *url.Error
	netTimeout := false
	if errors.As(err, &urlErr) && urlErr.Timeout() {
		netTimeout = true
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (netTimeout && ctx.Err() != nil):
		return fmt.Sprintf("%s did not answer in time (%v)", what, err),
			"the host may be down or a firewall drops the traffic: check that the instances run (instanceIds), that your address is in " +
				"allowedCidrs/operatorCidrs, and the container's log on the host"
	case errors.Is(err, context.Canceled):
		return "interrupted", "the smoke test was interrupted; run it again"
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("%s refused the connection (%v)", what, err),
			"nothing listens there: the container is not running or crashed at start; on the host run `docker ps -a` and `docker logs` " +
				"on it (a config error names its key and line)"
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("cannot resolve %s's host (%v)", what, err),
			"check the URL in the stack outputs (`pulumi stack output`); a new load balancer's DNS name can take a minute to appear"
	case errors.As(err, &certErr) || errors.As(err, &hostErr):
		return fmt.Sprintf("TLS with %s failed (%v)", what, err),
			"the certificate does not match the URL or is not trusted: check tlsCertificateArn and that the URL uses the certificate's name"
	case netTimeout:
		return fmt.Sprintf("%s did not answer in time (%v)", what, err),
			"a firewall may drop the traffic: your address must be in allowedCidrs/operatorCidrs"
	default:
		return fmt.Sprintf("cannot reach %s: %v", what, err),
			"check the URL in the stack outputs and that the host is up and reachable from here"
	}
}

// errorMessage returns OpenAI's error.message from a body, or its start.
func errorMessage(body []byte) string {
	var e apiError
	if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
		if code, ok := e.Error.Code.(string); ok && code != "" {
			return e.Error.Message + " [" + code + "]"
		}
		return e.Error.Message
	}
	return snippet(body)
}

func snippet(b []byte) string {
	s := oneLine(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	if s == "" {
		return "(empty body)"
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none reported"
	}
	return s
}

// sortedKeys returns m's keys in order, for stable report text.
