package reliability

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/relaygate/relaygate/service/internal/upstreamsim"
)

func TestProbeThroughput(t *testing.T) {
	sim := startSim(t, upstreamsim.Config{CompletionTokens: 8, TokensPerChunk: 2})
	gw := startGateway(t, gatewaySpec{upstreams: []upstreamSpec{{name: "a", url: sim.base}}, route: []string{"a"}}.yaml(), nil)
	c := newClient(t, 64)
	start := time.Now()
	l := startLoad(t, c, loadSpec{requests: 5000, workers: 64,
		request: func(ctx context.Context, i int) *http.Request { return chat(ctx, gw.URL, clientKey, "m", i%2 == 0, "hello") },
		judge: func(i int, r reply) string {
			if i%2 == 0 {
				if err := wholeStream(r); err != nil {
					return "bad"
				}
				return "ok"
			}
			if err := wholeChat(r); err != nil {
				return "bad"
			}
			return "ok"
		}})
	tl := l.wait(t)
	t.Logf("%s in %s", tl, time.Since(start))
}
