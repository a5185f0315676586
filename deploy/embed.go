// Package deploy holds the files the infra program ships onto hosts and into
// containers. They are embedded so that `pulumi up` needs nothing but the
// program, and they stay plain files so that shellcheck and promtool check
// them where they are.
package deploy

import (
	"embed"
	"fmt"
	"io/fs"
	"strings"
)

// HostBootstrap is the GPU host's first-boot script (host/bootstrap.sh),
// run by cloud-init as the instance's user data.
//
//go:embed host/bootstrap.sh
var HostBootstrap string

// prometheusDir holds the Prometheus configuration as prometheus.yml refers
// to it: rules and targets relative to the file. The rules' unit tests
// (*.rules.test.yml) are left out; they are for promtool, not for Prometheus.
//
//go:embed prometheus/prometheus.yml prometheus/rules/*.rules.yml prometheus/targets/*.json prometheus/alertmanagers/*.json prometheus/model-servers/*.json
var prometheusDir embed.FS

// AlertmanagerConfig is Alertmanager's configuration
// (prometheus/alertmanager.yml), with AlertWebhookPlaceholder where the
// stack's secret webhook URL goes.
//
//go:embed prometheus/alertmanager.yml
var AlertmanagerConfig string

// AlertWebhookPlaceholder is the URL in AlertmanagerConfig that the stack's
// alertWebhookUrl replaces.
const AlertWebhookPlaceholder = "http://127.0.0.1:9/alert-webhook-url-placeholder"

// PrometheusFiles returns the Prometheus configuration files keyed by their
// path relative to the configuration directory, e.g. "prometheus.yml" and
// "rules/relaygate.rules.yml", so they can be uploaded under one directory.
func PrometheusFiles() (map[string]string, error) {
	files := map[string]string{}
	err := fs.WalkDir(prometheusDir, "prometheus", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := prometheusDir.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := strings.CutPrefix(p, "prometheus/")
		files[rel] = string(b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("embedded prometheus files: %w", err)
	}
	return files, nil
}
