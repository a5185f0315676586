package stackconfig

// gpuFamilies are the EC2 families with NVIDIA GPUs that the x86_64
// NVIDIA-driver AMIs boot on. Graviton GPU families (g5g) are left out: the
// image is built for linux/amd64. So are the families in
// [unsupportedGPUFamilies].
var gpuFamilies = map[string]bool{
	"g4dn": true, "g5": true, "g6": true, "g6e": true, "gr6": true,
	"p4d": true, "p4de": true, "p5": true, "p5e": true, "p5en": true,
}

// unsupportedGPUFamilies are NVIDIA GPU families the hosts cannot use, with
// the reason. The default AMI ("Deep Learning Base OSS Nvidia Driver") ships
// NVIDIA's open kernel modules, which only drive Turing and newer GPUs: on a
// V100 the driver never loads, and the deploy would only fail after a slow,
// paid boot, when the bootstrap finds no GPU.
var unsupportedGPUFamilies = map[string]string{"p3": v100, "p3dn": v100}

const v100 = "its V100 GPUs are not supported by the NVIDIA open kernel modules of the OSS-driver AMI, so the host would boot without a usable GPU"

// GPUsPerInstance is the GPU count of common GPU instance types (from AWS's
// instance type pages), so a stack that sets expectedGpuCount wrong for its
// instance type fails at preview rather than in the smoke test. Types not
// listed are accepted as the stack says.
var GPUsPerInstance = map[string]int{
	"g4dn.xlarge": 1, "g4dn.2xlarge": 1, "g4dn.4xlarge": 1, "g4dn.8xlarge": 1, "g4dn.16xlarge": 1,
	"g4dn.12xlarge": 4, "g4dn.metal": 8,
	"g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.8xlarge": 1, "g5.16xlarge": 1,
	"g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
	"g6.xlarge": 1, "g6.2xlarge": 1, "g6.4xlarge": 1, "g6.8xlarge": 1, "g6.16xlarge": 1,
	"g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8,
	"g6e.xlarge": 1, "g6e.2xlarge": 1, "g6e.4xlarge": 1, "g6e.8xlarge": 1, "g6e.16xlarge": 1,
	"g6e.12xlarge": 4, "g6e.24xlarge": 4, "g6e.48xlarge": 8,
	"p4d.24xlarge": 8, "p4de.24xlarge": 8,
	"p5.48xlarge": 8, "p5e.48xlarge": 8, "p5en.48xlarge": 8,
}
