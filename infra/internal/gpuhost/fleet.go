// Package gpuhost is the fleet of EC2 GPU hosts a stack's gateways run on,
// and the proof that each one is ready for GPU containers before anything is
// deployed onto it.
//
// A host is ready when its first-boot script (deploy/host/bootstrap.sh, run
// by cloud-init) has installed and configured the NVIDIA container toolkit
// and seen every GPU from inside a container. The Docker provider that
// deploys onto a host must depend on that host's Ready command: an instance
// in the "running" state can still be minutes away from having Docker up.
package gpuhost

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/iam"
	"github.com/pulumi/pulumi-command/sdk/go/command/remote"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/relaygate/relaygate/deploy"
	"github.com/relaygate/relaygate/infra/internal/awstags"
)

// Args configures a Fleet.
type Args struct {
	// Name prefixes the AWS Name tags, e.g. "relaygate-dev".
	Name string
	Tags map[string]string

	Count        int
	InstanceType string
	// ExpectedGPUs is the GPU count the bootstrap insists on seeing.
	ExpectedGPUs int
	RootVolumeGB int
	// AMINamePattern and AMIOwner select the most recent NVIDIA-driver AMI.
	AMINamePattern string
	AMIOwner       string
	// AMIID, when set, is the AMI every host runs, exactly: changing it
	// replaces the hosts. Empty, the lookup's newest match is used for a new
	// host, which keeps it (see NewFleet).
	AMIID string

	// SubnetIDs are spread over round-robin, one availability zone each.
	SubnetIDs       pulumi.StringArrayInput
	SecurityGroupID pulumi.StringInput

	SSHUser      string
	SSHPublicKey string
	// CUDATestImage runs nvidia-smi in the bootstrap's GPU check.
	CUDATestImage string
}

// Fleet is the component.
type Fleet struct {
	pulumi.ResourceState

	Hosts []*Host
	// PublicIPs and InstanceIDs are in host order.
	PublicIPs   pulumi.StringArrayOutput
	InstanceIDs pulumi.StringArrayOutput
	// AMIID is the pinned AMI, or the one the lookup chose on this run;
	// with a looked-up one, running hosts keep the image they were created
	// from (see NewFleet).
	AMIID string
}

// Host is one GPU instance.
type Host struct {
	pulumi.ResourceState

	Instance *ec2.Instance
	PublicIP pulumi.StringOutput
	// Ready completes once cloud-init has finished and the bootstrap's GPU
	// check passed; it fails the deploy otherwise.
	Ready *remote.Command
	// DockerHost is the ssh:// address of the host's Docker engine.
	DockerHost pulumi.StringOutput
}

// readyScript waits for cloud-init and then requires the bootstrap's marker,
// which it only writes after a container has seen every GPU. cloud-init exits
// 2 for "done, with recoverable warnings", which is not a failure here; the
// marker decides.
const readyScript = `set -u
cloud-init status --wait >/dev/null
rc=$?
if [ "$rc" -ne 1 ] && [ -f /var/lib/relaygate/bootstrap-ok ]; then
  echo "relaygate: host ready ($(cat /var/lib/relaygate/bootstrap-ok))"
  exit 0
fi
echo "relaygate: host bootstrap failed (cloud-init status exit $rc); last lines of its log:" >&2
sudo tail -n 60 /var/log/relaygate-bootstrap.log >&2 || sudo tail -n 60 /var/log/cloud-init-output.log >&2
exit 1
`

// NewFleet creates the hosts, their instance role and SSH key pair.
func NewFleet(ctx *pulumi.Context, name string, args Args, opts ...pulumi.ResourceOption) (*Fleet, error) {
	if args.Count < 1 {
		return nil, fmt.Errorf("gpu fleet %s: host count must be at least 1, got %d", name, args.Count)
	}
	f := &Fleet{}
	if err := ctx.RegisterComponentResource("relaygate:infra:GpuFleet", name, f, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(f)
	tags := func(suffix string) pulumi.StringMap { return awstags.Named(args.Name+"-"+suffix, args.Tags) }

	f.AMIID = args.AMIID
	if f.AMIID == "" {
		ami, err := ec2.LookupAmi(ctx, AMIQuery(args.AMINamePattern, args.AMIOwner), parent)
		if err != nil {
			return nil, fmt.Errorf("gpu fleet %s: looking up an AMI named %q owned by %s: %w", name, args.AMINamePattern, args.AMIOwner, err)
		}
		f.AMIID = ami.Id
	}
	// A newer AMI matching the pattern is published every few weeks; it must
	// not replace the hosts as a side effect of an unrelated deploy, so a
	// looked-up AMI is ignored once a host runs. Pulumi keeps an ignored
	// input on a replacement too, so a pinned amiId is how hosts move on.
	var amiOpts []pulumi.ResourceOption
	if args.AMIID == "" {
		amiOpts = append(amiOpts, pulumi.IgnoreChanges([]string{"ami"}))
	}

	partition, err := aws.GetPartition(ctx, nil, parent)
	if err != nil {
		return nil, fmt.Errorf("gpu fleet %s: AWS partition: %w", name, err)
	}
	assume, err := json.Marshal(map[string]any{
		"Version": "2012-10-17",
		"Statement": []map[string]any{{
			"Effect":    "Allow",
			"Principal": map[string]string{"Service": "ec2.amazonaws.com"},
			"Action":    "sts:AssumeRole",
		}},
	})
	if err != nil {
		return nil, err
	}
	role, err := iam.NewRole(ctx, name, &iam.RoleArgs{
		Description:      pulumi.String("Relaygate GPU hosts: Session Manager access and ECR pulls"),
		AssumeRolePolicy: pulumi.String(string(assume)),
		Tags:             tags("host-role"),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("gpu fleet %s: role: %w", name, err)
	}
	for _, policy := range ManagedPolicies {
		arn := fmt.Sprintf("arn:%s:iam::aws:policy/%s", partition.Partition, policy)
		if _, err := iam.NewRolePolicyAttachment(ctx, name+"-"+policy, &iam.RolePolicyAttachmentArgs{
			Role:      role.Name,
			PolicyArn: pulumi.String(arn),
		}, parent); err != nil {
			return nil, fmt.Errorf("gpu fleet %s: attaching %s: %w", name, policy, err)
		}
	}
	profile, err := iam.NewInstanceProfile(ctx, name, &iam.InstanceProfileArgs{
		Role: role.Name,
		Tags: tags("host-profile"),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("gpu fleet %s: instance profile: %w", name, err)
	}
	key, err := ec2.NewKeyPair(ctx, name, &ec2.KeyPairArgs{
		PublicKey: pulumi.String(args.SSHPublicKey),
		Tags:      tags("ssh"),
	}, parent)
	if err != nil {
		return nil, fmt.Errorf("gpu fleet %s: key pair: %w", name, err)
	}

	userData, err := UserData(args.ExpectedGPUs, args.SSHUser, args.CUDATestImage)
	if err != nil {
		return nil, fmt.Errorf("gpu fleet %s: %w", name, err)
	}
	subnets := args.SubnetIDs.ToStringArrayOutput()
	var ips, ids pulumi.StringArray
	for i := range args.Count {
		hostName := fmt.Sprintf("%s-host-%d", name, i)
		h := &Host{}
		if err := ctx.RegisterComponentResource("relaygate:infra:GpuHost", hostName, h, parent); err != nil {
			return nil, err
		}
		subnet := subnets.ApplyT(func(ids []string) (string, error) {
			if len(ids) == 0 {
				return "", fmt.Errorf("gpu host %s: no subnets", hostName)
			}
			return ids[i%len(ids)], nil
		}).(pulumi.StringOutput)

		inst, err := ec2.NewInstance(ctx, hostName, &ec2.InstanceArgs{
			Ami:                      pulumi.String(f.AMIID),
			InstanceType:             pulumi.String(args.InstanceType),
			SubnetId:                 subnet,
			VpcSecurityGroupIds:      pulumi.StringArray{args.SecurityGroupID},
			AssociatePublicIpAddress: pulumi.Bool(true),
			IamInstanceProfile:       profile.Name,
			KeyName:                  key.KeyName,
			UserData:                 pulumi.String(userData),
			// The bootstrap only runs on first boot, so an edited script
			// means a fresh host, not a silent no-op on the old one.
			UserDataReplaceOnChange: pulumi.Bool(true),
			EbsOptimized:            pulumi.Bool(true),
			MetadataOptions: &ec2.InstanceMetadataOptionsArgs{
				HttpEndpoint: pulumi.String("enabled"),
				HttpTokens:   pulumi.String("required"),
				// One hop: the host can reach the metadata service, its
				// containers cannot borrow the instance role.
				HttpPutResponseHopLimit: pulumi.Int(1),
			},
			RootBlockDevice: &ec2.InstanceRootBlockDeviceArgs{
				VolumeType:          pulumi.String("gp3"),
				VolumeSize:          pulumi.Int(args.RootVolumeGB),
				Encrypted:           pulumi.Bool(true),
				DeleteOnTermination: pulumi.Bool(true),
				Tags:                tags(fmt.Sprintf("host-%d-root", i)),
			},
			Tags: tags(fmt.Sprintf("host-%d", i)),
		}, append([]pulumi.ResourceOption{pulumi.Parent(h)}, amiOpts...)...)
		if err != nil {
			return nil, fmt.Errorf("gpu host %s: instance: %w", hostName, err)
		}

		ready, err := remote.NewCommand(ctx, hostName+"-ready", &remote.CommandArgs{
			Connection: remote.ConnectionArgs{
				Host: inst.PublicIp,
				User: pulumi.String(args.SSHUser),
				// No key here: the operator's ssh-agent authenticates, as it
				// does for the Docker provider, so no private key is ever
				// stored in the stack.
				DialErrorLimit: pulumi.Int(60),
				PerDialTimeout: pulumi.Int(10),
			},
			Create:   pulumi.String(readyScript),
			Triggers: pulumi.Array{inst.ID()},
		}, pulumi.Parent(h), pulumi.Timeouts(&pulumi.CustomTimeouts{Create: "40m"}))
		if err != nil {
			return nil, fmt.Errorf("gpu host %s: readiness check: %w", hostName, err)
		}

		h.Instance = inst
		h.PublicIP = inst.PublicIp
		h.Ready = ready
		h.DockerHost = pulumi.Sprintf("ssh://%s@%s", args.SSHUser, inst.PublicIp)
		if err := ctx.RegisterResourceOutputs(h, pulumi.Map{
			"instanceId": inst.ID(),
			"publicIp":   inst.PublicIp,
		}); err != nil {
			return nil, err
		}
		f.Hosts = append(f.Hosts, h)
		ips = append(ips, inst.PublicIp)
		ids = append(ids, inst.ID().ToStringOutput())
	}

	f.PublicIPs = ips.ToStringArrayOutput()
	f.InstanceIDs = ids.ToStringArrayOutput()
	if err := ctx.RegisterResourceOutputs(f, pulumi.Map{
		"publicIps":   f.PublicIPs,
		"instanceIds": f.InstanceIDs,
		"amiId":       pulumi.String(f.AMIID),
	}); err != nil {
		return nil, err
	}
	return f, nil
}

// ManagedPolicies are attached to the host role: Session Manager (a shell
// without opening SSH wider) and read-only ECR (pulling the gateway image
// on the host, e.g. to roll back by hand).
var ManagedPolicies = []string{"AmazonSSMManagedInstanceCore", "AmazonEC2ContainerRegistryReadOnly"}

// AMIQuery is the lookup for the most recent x86_64 EBS-backed HVM image
// whose name matches pattern.
func AMIQuery(pattern, owner string) *ec2.LookupAmiArgs {
	mostRecent := true
	return &ec2.LookupAmiArgs{
		MostRecent: &mostRecent,
		Owners:     []string{owner},
		Filters: []ec2.GetAmiFilter{
			{Name: "name", Values: []string{pattern}},
			{Name: "architecture", Values: []string{"x86_64"}},
			{Name: "virtualization-type", Values: []string{"hvm"}},
			{Name: "root-device-type", Values: []string{"ebs"}},
			{Name: "state", Values: []string{"available"}},
		},
	}
}

// UserData is deploy/host/bootstrap.sh with the host's settings exported
// right after its shebang. The values are checked here as well as in the
// stack config, because they end up in a root shell.
func UserData(expectedGPUs int, sshUser, cudaImage string) (string, error) {
	if expectedGPUs < 1 {
		return "", fmt.Errorf("user data: expected GPUs must be at least 1, got %d", expectedGPUs)
	}
	for what, v := range map[string]string{"SSH user": sshUser, "CUDA image": cudaImage} {
		if v == "" || strings.ContainsFunc(v, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._/:@-", r))
		}) {
			return "", fmt.Errorf("user data: %s %q has characters a shell would interpret", what, v)
		}
	}
	shebang, body, ok := strings.Cut(deploy.HostBootstrap, "\n")
	if !ok || !strings.HasPrefix(shebang, "#!") {
		return "", fmt.Errorf("user data: the embedded bootstrap script does not start with a #! line")
	}
	return fmt.Sprintf("%s\n# Set by the Relaygate Pulumi program.\nexport RELAYGATE_EXPECTED_GPUS=%d\nexport RELAYGATE_SSH_USER='%s'\nexport RELAYGATE_CUDA_IMAGE='%s'\n%s",
		shebang, expectedGPUs, sshUser, cudaImage, body), nil
}
