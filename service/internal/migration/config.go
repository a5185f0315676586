package migration

import (
	"fmt"
	"os"
	"regexp"

	"gopkg.in/yaml.v3"

	"github.com/relaygate/relaygate/service/config"
)

// unusedClientKey stands in for a client key whose variable is unset. It is
// never sent anywhere: compare and report serve no clients.
const unusedClientKey = "relaygate-migration-unused-client-key"

// LoadConfig reads a gateway configuration for measuring with it. It is
// config.LoadFile with one difference: the gateway's client_keys are not
// needed to compare upstreams or read Prometheus, so a variable referenced
// only under client_keys may be unset (the team benchmarking a relay from a
// laptop has the provider keys, not necessarily the gateway's). Everything
// else is validated exactly as the gateway does, and an upstream whose key
// variable is unset is disabled just the same.
func LoadConfig(path string) (*config.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := parseConfig(data, os.LookupEnv)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

func parseConfig(data []byte, lookup func(string) (string, bool)) (*config.Config, error) {
	onlyClientKeys := clientKeyOnlyVars(data)
	return config.Parse(data, func(name string) (string, bool) {
		v, ok := lookup(name)
		if (!ok || v == "") && onlyClientKeys[name] {
			// One per variable: two keys must not be the same key.
			return unusedClientKey + "-" + name, true
		}
		return v, ok
	})
}

// clientKeyOnlyVars returns the variables referenced under the top-level
// client_keys, or as a named key's secret (keys[].key), and nowhere else. A variable that also feeds, say, an
// upstream's api_key is left alone, so the placeholder can never be sent to
// an upstream. A document that does not parse yields none: config.Parse then
// reports what is wrong with it.
func clientKeyOnlyVars(data []byte) map[string]bool {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil
	}
	inKeys, elsewhere := map[string]bool{}, map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		into := elsewhere
		switch v := root.Content[i+1]; root.Content[i].Value {
		case "client_keys":
			into = inKeys
		case "keys":
			if v.Kind == yaml.SequenceNode {
				for _, k := range v.Content {
					for j := 0; k.Kind == yaml.MappingNode && j+1 < len(k.Content); j += 2 {
						to := elsewhere
						if k.Content[j].Value == "key" {
							to = inKeys
						}
						collectVars(k.Content[j+1], to)
					}
				}
				continue
			}
		}
		collectVars(root.Content[i+1], into)
	}
	out := map[string]bool{}
	for name := range inKeys {
		if !elsewhere[name] {
			out[name] = true
		}
	}
	return out
}

func collectVars(n *yaml.Node, into map[string]bool) {
	if n.Kind == yaml.ScalarNode {
		for _, m := range envRef.FindAllStringSubmatch(n.Value, -1) {
			into[m[1]] = true
		}
		return
	}
	for _, c := range n.Content {
		collectVars(c, into)
	}
}
