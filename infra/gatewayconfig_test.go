package main

import (
	"strings"
	"testing"

	gwconfig "github.com/relaygate/relaygate/service/config"
)

// TestEveryStackRendersAConfigTheGatewayLoads runs the program for every
// committed stack and loads each gateway container's uploaded config with
// the gateway's own loader, in that container's environment: what a deploy
// writes is what the gateway in it accepts.
func TestEveryStackRendersAConfigTheGatewayLoads(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ stack, target string }{{"dev", "aws"}, {"prod", "aws"}, {"local", "local"}} {
		t.Run(tt.stack, func(t *testing.T) {
			t.Parallel()
			d := mustRun(t, tt.stack, tt.target, nil)
			n := 0
			for _, c := range d.ofType(typeContainer) {
				if !strings.HasSuffix(c.Name, "-gateway") {
					continue
				}
				n++
				g := loadGatewayConfig(t, c)
				if len(g.Models) == 0 || len(g.ClientKeys) != 1 || g.Cache.RedisURL == "" {
					t.Errorf("%s: loaded %d models, %d client keys, redis %q", c.Name, len(g.Models), len(g.ClientKeys), g.Cache.RedisURL)
				}
				for _, w := range g.Warnings {
					t.Logf("%s: %s", c.Name, w)
				}
			}
			if n == 0 {
				t.Fatal("no gateway container")
			}
		})
	}
}

// loadGatewayConfig loads a gateway container's uploaded config with the
// gateway's own loader, in that container's environment.
func loadGatewayConfig(t *testing.T, gw recorded) *gwconfig.Config {
	t.Helper()
	env := map[string]string{}
	for _, e := range getStrings(t, gw, "envs") {
		k, v, _ := strings.Cut(e, "=")
		env[k] = v
	}
	y := gatewayYAML(t, gw)
	g, err := gwconfig.Parse([]byte(y), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("%s: the gateway refuses its config: %v\n%s", gw.Name, err, y)
	}
	return g
}
