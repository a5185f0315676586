package main

import (
	"strings"
	"testing"
)

// reuse is the configuration a rollback restores: an earlier update's
// imageTag, with reuseImage on.
func reuse(tag string) map[string]setting {
	return map[string]setting{
		"relaygate:reuseImage": {value: "true"},
		"relaygate:imageTag":   {value: tag},
	}
}

// TestReuseImageOnAWS: with reuseImage the program builds and pushes
// nothing; the hosts run the image ECR already holds under imageTag, by the
// digest ECR reports for it.
func TestReuseImageOnAWS(t *testing.T) {
	t.Parallel()
	const tag = "sha-6d4e5f6"
	for _, stack := range []string{"dev", "prod"} {
		t.Run(stack, func(t *testing.T) {
			t.Parallel()
			d := mustRun(t, stack, "aws", reuse(tag))
			if imgs := d.ofType(typeImage); len(imgs) != 0 {
				t.Errorf("reuseImage registered %d docker.Image resources; it must build nothing", len(imgs))
			}
			lookups := d.invokes(invokeECRImage)
			if len(lookups) != 1 {
				t.Fatalf("%d ECR image lookups, want 1", len(lookups))
			}
			lookup := recorded{Type: invokeECRImage, Inputs: lookups[0].Args}
			if repo, got := getString(t, lookup, "repositoryName"), getString(t, lookup, "imageTag"); repo != "relaygate/"+stack+"/gateway" || got != tag {
				t.Errorf("looked up %s:%s, want relaygate/%s/gateway:%s", repo, got, stack, tag)
			}
			if n := len(d.invokes(invokeLocalImage)); n != 0 {
				t.Errorf("an AWS stack looked up %d local images", n)
			}

			want := "123456789012.dkr.ecr.us-east-1.amazonaws.com/relaygate/" + stack + "/gateway@" + pushedImages[tag]
			if got := d.outputs["imageRef"].Value; got != want {
				t.Errorf("imageRef = %v, want %s", got, want)
			}
			checkOutputs(t, d)
			// The repository stays, or the rollback's up would delete it
			// with the images it exists to keep.
			checkRepository(t, d)
			hosts := intValue(t, d.values["relaygate:hostCount"])
			// Each host pulls that reference and runs what it pulled.
			checkHostContainers(t, d, hosts, stack == "prod")

			// The hosts pull with their own role: no registry token sits in
			// a provider's configuration, where a fresh one would show as a
			// change on every run.
			for _, p := range d.ofType(typeDockerProv) {
				if auth := items(t, p, "registryAuth"); len(auth) != 0 {
					t.Errorf("%s: registry auth %v in the provider", p.Name, auth)
				}
			}
		})
	}
}

func TestReuseImageLocal(t *testing.T) {
	t.Parallel()
	d := mustRun(t, "local", "local", map[string]setting{"relaygate:reuseImage": {value: "true"}})
	if d.values["relaygate:imageTag"] != "local" {
		t.Fatalf("Pulumi.local.yaml's imageTag is %q; this test expects local", d.values["relaygate:imageTag"])
	}
	if imgs := d.ofType(typeImage); len(imgs) != 0 {
		t.Errorf("reuseImage registered %d docker.Image resources; it must build nothing", len(imgs))
	}
	for _, r := range d.ofType(typeRemoteImage) {
		if strings.Contains(r.Name, "gateway") {
			t.Errorf("the local stack pulls the gateway image (%s); it is on the engine already", r.Name)
		}
	}
	lookups := d.invokes(invokeLocalImage)
	if len(lookups) != 1 {
		t.Fatalf("%d local image lookups, want 1", len(lookups))
	}
	lookup := recorded{Type: invokeLocalImage, Inputs: lookups[0].Args}
	if name := getString(t, lookup, "name"); name != "relaygate-gateway:local" {
		t.Errorf("looked up %s, want relaygate-gateway:local", name)
	}
	if !strings.Contains(lookups[0].Provider, "relaygate-local-docker") {
		t.Errorf("looked up on %q, not on the engine the containers run on", lookups[0].Provider)
	}
	for _, c := range d.calls {
		if strings.HasPrefix(c.Token, "aws:") {
			t.Errorf("local called %s", c.Token)
		}
	}

	id := localImages["relaygate-gateway:local"]
	if got := d.outputs["imageRef"].Value; got != id {
		t.Errorf("imageRef = %v, want the local image's ID %s", got, id)
	}
	checkOutputs(t, d)
	for _, name := range []string{"relaygate-local-gateway", "relaygate-local-upstream-sim"} {
		if img := getString(t, d.named(t, typeContainer, name), "image"); img != id {
			t.Errorf("%s runs %s, want the reused image %s", name, img, id)
		}
	}
}

// TestReuseImageMissing: a tag the registry does not hold (expired, or never
// pushed) fails the deploy, saying which and what to do, before anything
// runs it.
func TestReuseImageMissing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, stack, target string
		changes             map[string]setting
		want                []string
	}{
		{"expired ECR tag", "dev", "aws", reuse("sha-0ld0ld0"), []string{
			`reuseImage is on, but image tag "sha-0ld0ld0" cannot be found in ECR repository relaygate/dev/gateway`,
			"ImageNotFoundException", // the registry's own answer
			"has expired", "keeps only the newest 10 images (relaygate:imageRetainCount)",
			"set reuseImage to false",
		}},
		{"no local image", "local", "local", reuse("gone"), []string{
			"the local Docker engine has no image relaygate-gateway:gone to reuse",
			"did not find docker image 'relaygate-gateway:gone'",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := run(t, tt.stack, tt.target, tt.changes)
			if err == nil {
				t.Fatal("the program deployed a tag the registry does not hold")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			for _, r := range d.res {
				if r.Type == typeImage || r.Type == typeContainer || r.Type == typeRemoteImage {
					t.Errorf("registered %s %s although the image is missing", r.Type, r.Name)
				}
			}
		})
	}
}

// TestProjectDefaultBuilds: a stack that never mentions reuseImage builds,
// so an ordinary `up` of a new checkout still deploys it.
func TestProjectDefaultBuilds(t *testing.T) {
	t.Parallel()
	proj := loadProject(t)
	key, ok := proj.Config["reuseImage"]
	if !ok {
		t.Fatal("Pulumi.yaml does not declare reuseImage")
	}
	if key.Default != false || key.Type == nil || *key.Type != "boolean" {
		t.Errorf("reuseImage is declared %v with default %v, want a boolean defaulting to false", key.Type, key.Default)
	}
	for stack, target := range map[string]string{"dev": "aws", "prod": "aws", "local": "local"} {
		values, _, err := stackConfig(t, stack, operatorSettings(target))
		if err != nil {
			t.Fatal(err)
		}
		if v := values["relaygate:reuseImage"]; v != "false" {
			t.Errorf("Pulumi.%s.yaml sets reuseImage to %s; committed stacks build, only a rollback reuses", stack, v)
		}
	}
	if !strings.Contains(key.Description, "imageRetainCount") {
		t.Errorf("reuseImage's description does not say that expired tags fail: %q", key.Description)
	}
}
