// Package registry builds the gateway image from the repository's Dockerfile
// and, for cloud stacks, pushes it to a private ECR repository.
//
// Containers are given the image by digest, never by tag: a tag can move
// under a running stack (and is shared by every build of a stack), while a
// digest names exactly the bytes that were built, so a rollback to a previous
// stack state also rolls back to that state's image. The repository's
// lifecycle policy keeps enough old images for such rollbacks.
package registry

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ecr"
	"github.com/pulumi/pulumi-docker/sdk/v4/go/docker"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// HostPlatform is what the GPU hosts run: the AMIs are x86_64.
const HostPlatform = "linux/amd64"

// Args configures a GatewayImage.
type Args struct {
	// Context and Dockerfile are the build context (the repository root)
	// and the Dockerfile in it, relative to the program's working directory
	// so the state does not differ between operators' checkouts.
	Context    string
	Dockerfile string
	Tag        string
	// Platform is the target, e.g. HostPlatform; empty builds for the
	// engine's own platform (a laptop's local stack).
	Platform string

	// ECR pushes to a private repository of this name. Empty keeps the
	// image on the local Docker engine (the local stack).
	ECR string
	// RetainCount is how many images the ECR lifecycle policy keeps.
	RetainCount int
	// Protect keeps `pulumi destroy` from deleting the repository and the
	// images a rollback would need.
	Protect bool
	Tags    map[string]string

	// Provider is the Docker engine that builds (and for local stacks,
	// runs) the image; nil means the default provider.
	Provider *docker.Provider
}

// GatewayImage is the component.
type GatewayImage struct {
	pulumi.ResourceState

	// Ref is how containers must refer to the image: the pushed manifest
	// digest (repo@sha256:…), or for a local build its image ID (sha256:…).
	Ref pulumi.StringOutput
	// RegistryAuth lets a Docker provider on a host pull from the
	// repository; empty for local images.
	RegistryAuth docker.ProviderRegistryAuthArrayOutput
	// RepositoryURL is empty for local images.
	RepositoryURL pulumi.StringOutput
}

// New builds the image, and pushes it when Args.ECR is set.
func New(ctx *pulumi.Context, name string, args Args, opts ...pulumi.ResourceOption) (*GatewayImage, error) {
	g := &GatewayImage{}
	if err := ctx.RegisterComponentResource("relaygate:infra:GatewayImage", name, g, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(g)
	imgOpts := []pulumi.ResourceOption{parent}
	if args.Provider != nil {
		imgOpts = append(imgOpts, pulumi.Provider(args.Provider))
	}
	build := docker.DockerBuildArgs{
		Context:        pulumi.String(args.Context),
		Dockerfile:     pulumi.String(args.Dockerfile),
		BuilderVersion: docker.BuilderVersionBuilderBuildKit,
	}
	if args.Platform != "" {
		build.Platform = pulumi.String(args.Platform)
	}

	if args.ECR == "" {
		img, err := docker.NewImage(ctx, name, &docker.ImageArgs{
			ImageName: pulumi.String("relaygate-gateway:" + args.Tag),
			Build:     build,
			SkipPush:  pulumi.Bool(true),
		}, imgOpts...)
		if err != nil {
			return nil, fmt.Errorf("gateway image %s: %w", name, err)
		}
		g.Ref = img.RepoDigest
		g.RegistryAuth = docker.ProviderRegistryAuthArray{}.ToProviderRegistryAuthArrayOutput()
		g.RepositoryURL = pulumi.String("").ToStringOutput()
		return g, ctx.RegisterResourceOutputs(g, pulumi.Map{"ref": g.Ref})
	}

	tags := pulumi.StringMap{"Name": pulumi.String(args.ECR)}
	for k, v := range args.Tags {
		tags[k] = pulumi.String(v)
	}
	repo, err := ecr.NewRepository(ctx, name, &ecr.RepositoryArgs{
		Name: pulumi.String(args.ECR),
		// Tags move with every build; containers use digests.
		ImageTagMutability: pulumi.String("MUTABLE"),
		ImageScanningConfiguration: &ecr.RepositoryImageScanningConfigurationArgs{
			ScanOnPush: pulumi.Bool(true),
		},
		EncryptionConfigurations: ecr.RepositoryEncryptionConfigurationArray{
			ecr.RepositoryEncryptionConfigurationArgs{EncryptionType: pulumi.String("AES256")},
		},
		ForceDelete: pulumi.Bool(!args.Protect),
		Tags:        tags,
	}, parent, pulumi.Protect(args.Protect))
	if err != nil {
		return nil, fmt.Errorf("gateway image %s: repository: %w", name, err)
	}
	policy, err := LifecyclePolicy(args.RetainCount)
	if err != nil {
		return nil, fmt.Errorf("gateway image %s: %w", name, err)
	}
	if _, err := ecr.NewLifecyclePolicy(ctx, name, &ecr.LifecyclePolicyArgs{
		Repository: repo.Name,
		Policy:     pulumi.String(policy),
	}, parent); err != nil {
		return nil, fmt.Errorf("gateway image %s: lifecycle policy: %w", name, err)
	}

	creds := ecr.GetAuthorizationTokenOutput(ctx, ecr.GetAuthorizationTokenOutputArgs{
		RegistryId: repo.RegistryId,
	}, parent)
	user := creds.UserName()
	password := pulumi.ToSecret(creds.Password()).(pulumi.StringOutput)
	server := creds.ProxyEndpoint().ApplyT(registryHost).(pulumi.StringOutput)

	img, err := docker.NewImage(ctx, name, &docker.ImageArgs{
		ImageName: pulumi.Sprintf("%s:%s", repo.RepositoryUrl, args.Tag),
		Build:     build,
		Registry: docker.RegistryArgs{
			Server:   server,
			Username: user,
			Password: password,
		},
	}, imgOpts...)
	if err != nil {
		return nil, fmt.Errorf("gateway image %s: %w", name, err)
	}

	g.Ref = img.RepoDigest
	g.RepositoryURL = repo.RepositoryUrl
	g.RegistryAuth = docker.ProviderRegistryAuthArray{
		docker.ProviderRegistryAuthArgs{
			Address:  server,
			Username: user,
			Password: password,
		},
	}.ToProviderRegistryAuthArrayOutput()
	return g, ctx.RegisterResourceOutputs(g, pulumi.Map{
		"ref":           g.Ref,
		"repositoryUrl": repo.RepositoryUrl,
	})
}

// LifecyclePolicy expires images beyond the newest keep, tagged or not:
// every deploy pushes one, and the last keep are what a rollback can return
// to.
func LifecyclePolicy(keep int) (string, error) {
	if keep < 1 {
		return "", fmt.Errorf("lifecycle policy: must keep at least 1 image, got %d", keep)
	}
	b, err := json.Marshal(map[string]any{
		"rules": []map[string]any{{
			"rulePriority": 1,
			"description":  fmt.Sprintf("keep the newest %d images for rollbacks", keep),
			"selection": map[string]any{
				"tagStatus":   "any",
				"countType":   "imageCountMoreThan",
				"countNumber": keep,
			},
			"action": map[string]string{"type": "expire"},
		}},
	})
	return string(b), err
}

// registryHost turns ECR's proxy endpoint (https://123.dkr.ecr…) into the
// registry host Docker expects.
func registryHost(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		return u.Host
	}
	return strings.TrimPrefix(endpoint, "https://")
}
