package registry

import (
	"encoding/json"
	"testing"
)

func TestLifecyclePolicy(t *testing.T) {
	t.Parallel()
	raw, err := LifecyclePolicy(30)
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Rules []struct {
			RulePriority int `json:"rulePriority"`
			Selection    struct {
				TagStatus   string `json:"tagStatus"`
				CountType   string `json:"countType"`
				CountNumber int    `json:"countNumber"`
			} `json:"selection"`
			Action struct {
				Type string `json:"type"`
			} `json:"action"`
		} `json:"rules"`
	}
	if err := json.Unmarshal([]byte(raw), &p); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	if len(p.Rules) != 1 {
		t.Fatalf("rules = %+v", p.Rules)
	}
	r := p.Rules[0]
	if r.RulePriority != 1 || r.Selection.TagStatus != "any" || r.Selection.CountType != "imageCountMoreThan" ||
		r.Selection.CountNumber != 30 || r.Action.Type != "expire" {
		t.Errorf("rule = %+v", r)
	}
	if _, err := LifecyclePolicy(0); err == nil {
		t.Error("a policy keeping no image was accepted")
	}
}

func TestRegistryHost(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"https://123456789012.dkr.ecr.us-east-1.amazonaws.com": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
		"123456789012.dkr.ecr.us-east-1.amazonaws.com":         "123456789012.dkr.ecr.us-east-1.amazonaws.com",
	} {
		if got := registryHost(in); got != want {
			t.Errorf("registryHost(%q) = %q, want %q", in, got, want)
		}
	}
}
