package gpuhost

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/relaygate/relaygate/deploy"
)

func TestUserData(t *testing.T) {
	t.Parallel()
	ud, err := UserData(4, "ubuntu", "nvidia/cuda:12.4.1-base-ubuntu22.04")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(ud, "\n", 6)
	want := []string{
		"#!/usr/bin/env bash",
		"# Set by the Relaygate Pulumi program.",
		"export RELAYGATE_EXPECTED_GPUS=4",
		"export RELAYGATE_SSH_USER='ubuntu'",
		"export RELAYGATE_CUDA_IMAGE='nvidia/cuda:12.4.1-base-ubuntu22.04'",
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("line %d = %q, want %q", i+1, lines[i], w)
		}
	}
	if !strings.HasSuffix(ud, strings.SplitN(deploy.HostBootstrap, "\n", 2)[1]) {
		t.Error("the bootstrap script's body is not carried unchanged")
	}
	if bash, err := exec.LookPath("bash"); err == nil {
		cmd := exec.Command(bash, "-n")
		cmd.Stdin = strings.NewReader(ud)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("bash -n: %v\n%s", err, out)
		}
	}
}

func TestUserDataRefusesShellSyntax(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		gpus      int
		user, img string
	}{
		{"no GPUs", 0, "ubuntu", "nvidia/cuda:12.4.1-base-ubuntu22.04"},
		{"command in user", 1, "ubuntu;reboot", "nvidia/cuda:12.4.1-base-ubuntu22.04"},
		{"quote in image", 1, "ubuntu", "nvidia/cuda'$(id)'"},
		{"space in image", 1, "ubuntu", "nvidia/cuda latest"},
		{"empty user", 1, "", "nvidia/cuda:12.4.1-base-ubuntu22.04"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if ud, err := UserData(tt.gpus, tt.user, tt.img); err == nil {
				t.Errorf("accepted:\n%.300s", ud)
			}
		})
	}
}

func TestAMIQuery(t *testing.T) {
	t.Parallel()
	q := AMIQuery("Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *", "amazon")
	if q.MostRecent == nil || !*q.MostRecent {
		t.Error("the lookup must take the most recent image")
	}
	if len(q.Owners) != 1 || q.Owners[0] != "amazon" {
		t.Errorf("owners = %v", q.Owners)
	}
	filters := map[string]string{}
	for _, f := range q.Filters {
		filters[f.Name] = strings.Join(f.Values, ",")
	}
	for name, want := range map[string]string{
		"name":                "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *",
		"architecture":        "x86_64",
		"virtualization-type": "hvm",
		"root-device-type":    "ebs",
		"state":               "available",
	} {
		if filters[name] != want {
			t.Errorf("filter %s = %q, want %q", name, filters[name], want)
		}
	}
}
