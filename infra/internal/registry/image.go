// Package registry builds the gateway image from the repository's Dockerfile
// and, for cloud stacks, pushes it to a private ECR repository; or, with
// Args.Reuse, builds nothing and looks up an image an earlier deploy left.
//
// Containers are given the image by digest, never by tag, so what runs is
// exactly the bytes that were built. The repository's tags are immutable, so
// a tag, the value a stack's configuration (and so its update history)
// records, names one image for good: a rollback that restores an old
// imageTag with Reuse set runs that update's image again, not the current
// checkout rebuilt under the old tag. The lifecycle policy keeps enough old
// images for such rollbacks.
package registry

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ecr"
	"github.com/pulumi/pulumi-docker/sdk/v4/go/docker"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"github.com/relaygate/relaygate/infra/internal/awstags"
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
	// Reuse builds nothing: the image must already be in the ECR
	// repository under Tag (or, for a local image, on the engine as
	// LocalName(Tag)). No docker.Image is registered, so the one in the
	// stack's state is dropped; its delete removes no image or tag.
	Reuse bool
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

	// Ref is how containers must refer to the image: the manifest digest
	// in the repository (repo@sha256:…), or for a local image its image ID
	// (sha256:…), whether built now or found by Reuse.
	Ref pulumi.StringOutput
	// RepositoryURL is empty for local images.
	RepositoryURL pulumi.StringOutput
}

// LocalName is the name an image built for the local engine gets; it is
// never pushed, so it needs no registry host.
func LocalName(tag string) string { return "relaygate-gateway:" + tag }

// New builds the image, and pushes it when Args.ECR is set. With Args.Reuse
// it builds nothing and looks the image up instead.
func New(ctx *pulumi.Context, name string, args Args, opts ...pulumi.ResourceOption) (*GatewayImage, error) {
	g := &GatewayImage{}
	if err := ctx.RegisterComponentResource("relaygate:infra:GatewayImage", name, g, opts...); err != nil {
		return nil, err
	}
	var err error
	if args.ECR == "" {
		err = g.local(ctx, name, args)
	} else {
		err = g.pushed(ctx, name, args)
	}
	if err != nil {
		return nil, fmt.Errorf("gateway image %s: %w", name, err)
	}
	return g, ctx.RegisterResourceOutputs(g, pulumi.Map{
		"ref":           g.Ref,
		"repositoryUrl": g.RepositoryURL,
	})
}

// local keeps the image on the engine that runs the containers. Local tags
// are not immutable: a build moves the tag, so Reuse finds the newest build
// under Tag, and a local rollback returns to the old image only when each
// deploy used its own imageTag.
func (g *GatewayImage) local(ctx *pulumi.Context, name string, args Args) error {
	g.RepositoryURL = pulumi.String("").ToStringOutput()
	image := LocalName(args.Tag)

	if args.Reuse {
		on := []pulumi.InvokeOption{pulumi.Parent(g)}
		if args.Provider != nil {
			on = append(on, pulumi.Provider(args.Provider))
		}
		// An invoke, not a docker.RemoteImage: it only searches the
		// engine's images, where a RemoteImage would try to pull a missing
		// one from Docker Hub and fail with a misleading message.
		found, err := docker.LookupRemoteImage(ctx, &docker.LookupRemoteImageArgs{Name: image}, on...)
		if err != nil {
			return fmt.Errorf("reuseImage is on, but the local Docker engine has no image %s to reuse "+
				"(`docker image ls relaygate-gateway` lists what it has; an up with reuseImage false builds it): %w", image, err)
		}
		if !strings.HasPrefix(found.Id, "sha256:") {
			return fmt.Errorf("the local Docker engine answered image %s with ID %q, not a sha256 image ID", image, found.Id)
		}
		// The image ID, the same reference a local build's repoDigest is.
		g.Ref = pulumi.String(found.Id).ToStringOutput()
		return nil
	}

	on := []pulumi.ResourceOption{pulumi.Parent(g)}
	if args.Provider != nil {
		on = append(on, pulumi.Provider(args.Provider))
	}
	img, err := docker.NewImage(ctx, name, &docker.ImageArgs{
		ImageName: pulumi.String(image),
		Build:     buildArgs(args),
		SkipPush:  pulumi.Bool(true),
	}, on...)
	if err != nil {
		return err
	}
	g.Ref = img.RepoDigest
	return nil
}

// pushed keeps the image in a private ECR repository the hosts pull from.
func (g *GatewayImage) pushed(ctx *pulumi.Context, name string, args Args) error {
	parent := pulumi.Parent(g)
	tags := awstags.Named(args.ECR, args.Tags)
	// The repository and its policy stay registered with Reuse too: they
	// hold the images every rollback needs.
	repo, err := ecr.NewRepository(ctx, name, &ecr.RepositoryArgs{
		Name: pulumi.String(args.ECR),
		// IMMUTABLE, so that the imageTag an update's configuration records
		// names that update's image for good and Reuse gets exactly it back.
		// The normal path keeps working: docker.Image (pulumi-docker v4)
		// hashes the build context into its inputs in Check and builds and
		// pushes only when an input differs from the state (a rotated ECR
		// password alone does not count), so an `up` with the tag and the
		// checkout unchanged pushes nothing, and a deploy under a new tag
		// pushes a new tag. Only a changed checkout under a tag the
		// repository already holds is refused (at the push, before the
		// containers change): that tag already names another image, so
		// such a build needs a new imageTag.
		ImageTagMutability: pulumi.String("IMMUTABLE"),
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
		return fmt.Errorf("repository: %w", err)
	}
	policy, err := LifecyclePolicy(args.RetainCount)
	if err != nil {
		return err
	}
	if _, err := ecr.NewLifecyclePolicy(ctx, name, &ecr.LifecyclePolicyArgs{
		Repository: repo.Name,
		Policy:     pulumi.String(policy),
	}, parent); err != nil {
		return fmt.Errorf("lifecycle policy: %w", err)
	}

	creds := ecr.GetAuthorizationTokenOutput(ctx, ecr.GetAuthorizationTokenOutputArgs{
		RegistryId: repo.RegistryId,
	}, parent)
	user := creds.UserName()
	password := pulumi.ToSecret(creds.Password()).(pulumi.StringOutput)
	server := creds.ProxyEndpoint().ApplyT(registryHost).(pulumi.StringOutput)
	g.RepositoryURL = repo.RepositoryUrl

	if args.Reuse {
		// A plain invoke by the repository's name, which the program sets:
		// a missing tag then fails the program at once, in preview too,
		// with the message below rather than as a failed resource.
		found, err := ecr.GetImage(ctx, &ecr.GetImageArgs{RepositoryName: args.ECR, ImageTag: &args.Tag}, parent)
		if err != nil {
			return fmt.Errorf("reuseImage is on, but image tag %q cannot be found in ECR repository %s: %w; "+
				"a tag that is gone was never pushed or has expired: the repository keeps only the newest %d images "+
				"(relaygate:imageRetainCount). Roll back to a newer update, or set reuseImage to false to build this checkout under a new imageTag",
				args.Tag, args.ECR, err, args.RetainCount)
		}
		if !strings.HasPrefix(found.ImageDigest, "sha256:") {
			return fmt.Errorf("ECR answered image tag %q of repository %s with digest %q, not a sha256 digest", args.Tag, args.ECR, found.ImageDigest)
		}
		// The same repo@digest form a push's repoDigest has, so a rollback
		// hands the containers the very reference the old update did.
		g.Ref = pulumi.Sprintf("%s@%s", repo.RepositoryUrl, found.ImageDigest)
		return nil
	}

	imgOpts := []pulumi.ResourceOption{parent}
	if args.Provider != nil {
		imgOpts = append(imgOpts, pulumi.Provider(args.Provider))
	}
	img, err := docker.NewImage(ctx, name, &docker.ImageArgs{
		ImageName: pulumi.Sprintf("%s:%s", repo.RepositoryUrl, args.Tag),
		Build:     buildArgs(args),
		Registry: docker.RegistryArgs{
			Server:   server,
			Username: user,
			Password: password,
		},
	}, imgOpts...)
	if err != nil {
		return err
	}
	g.Ref = img.RepoDigest
	return nil
}

func buildArgs(args Args) docker.DockerBuildArgs {
	build := docker.DockerBuildArgs{
		Context:        pulumi.String(args.Context),
		Dockerfile:     pulumi.String(args.Dockerfile),
		BuilderVersion: docker.BuilderVersionBuilderBuildKit,
	}
	if args.Platform != "" {
		build.Platform = pulumi.String(args.Platform)
	}
	return build
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
