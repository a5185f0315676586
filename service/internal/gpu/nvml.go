//go:build cgo

package gpu

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// systemDriver loads libnvidia-ml at Init time (dlopen), so the binary starts
// and runs on hosts without an NVIDIA driver.
func systemDriver() driver { return newNVMLDriver(nvml.New()) }

// nvmlDriver adapts go-nvml to driver. lib is an nvml.Interface so tests can
// hand it go-nvml's own mocks.
type nvmlDriver struct {
	lib nvml.Interface
	// temperatureV is whether the driver has nvmlDeviceGetTemperatureV, which
	// NVML 13 prefers; older drivers only have the deprecated call. Calling a
	// symbol the library lacks would crash, so this is looked up at Init.
	temperatureV bool
}

func newNVMLDriver(lib nvml.Interface) *nvmlDriver { return &nvmlDriver{lib: lib} }

func (d *nvmlDriver) Init() error {
	if ret := d.lib.Init(); ret != nvml.SUCCESS {
		return fmt.Errorf("nvml init: %s: %w", initHint(ret), ret)
	}
	d.temperatureV = d.lib.Extensions().LookupSymbol("nvmlDeviceGetTemperatureV") == nil
	return nil
}

// initHint turns the Init failures an operator actually meets into what to
// check; the NVML code follows it in the message.
func initHint(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "libnvidia-ml.so.1 not found (no NVIDIA driver on this host, or a container started without the NVIDIA runtime / --gpus)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "the NVIDIA kernel driver is not loaded (check nvidia-smi and dmesg)"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission to open /dev/nvidia* (run as a user in the video group or give the container the devices)"
	case nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		return "the NVIDIA user-space library and kernel driver versions differ (reboot or reload the driver after an upgrade)"
	default:
		return "NVML did not initialise"
	}
}

func (d *nvmlDriver) Shutdown() error {
	if ret := d.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("nvml shutdown: %w", ret)
	}
	return nil
}

func (d *nvmlDriver) DriverVersion() (string, error) {
	v, ret := d.lib.SystemGetDriverVersion()
	if ret != nvml.SUCCESS {
		return "", fmt.Errorf("nvml driver version: %w", ret)
	}
	return v, nil
}

func (d *nvmlDriver) DeviceCount() (int, error) {
	n, ret := d.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return 0, fmt.Errorf("nvml device count: %w", ret)
	}
	return n, nil
}

func (d *nvmlDriver) Device(index int) (deviceReader, error) {
	dev, ret := d.lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml device %d handle: %w", index, ret)
	}
	return nvmlDevice{dev: dev, index: index, temperatureV: d.temperatureV}, nil
}

type nvmlDevice struct {
	dev          nvml.Device
	index        int
	temperatureV bool
}

func (d nvmlDevice) fail(what string, ret nvml.Return) error {
	return fmt.Errorf("nvml device %d %s: %w", d.index, what, ret)
}

func (d nvmlDevice) Name() (string, error) {
	v, ret := d.dev.GetName()
	if ret != nvml.SUCCESS {
		return "", d.fail("name", ret)
	}
	return v, nil
}

func (d nvmlDevice) UUID() (string, error) {
	v, ret := d.dev.GetUUID()
	if ret != nvml.SUCCESS {
		return "", d.fail("uuid", ret)
	}
	return v, nil
}

func (d nvmlDevice) Memory() (used, total uint64, err error) {
	m, ret := d.dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return 0, 0, d.fail("memory", ret)
	}
	return m.Used, m.Total, nil
}

func (d nvmlDevice) UtilizationPercent() (uint32, error) {
	u, ret := d.dev.GetUtilizationRates()
	if ret != nvml.SUCCESS {
		return 0, d.fail("utilization", ret)
	}
	return u.Gpu, nil
}

func (d nvmlDevice) TemperatureCelsius() (int, error) {
	if d.temperatureV {
		t, ret := d.dev.GetTemperatureV().V1() // SensorType 0 is the GPU core
		if ret == nvml.SUCCESS {
			return int(t.Temperature), nil
		}
		if ret != nvml.ERROR_NOT_SUPPORTED && ret != nvml.ERROR_ARGUMENT_VERSION_MISMATCH {
			return 0, d.fail("temperature", ret)
		}
		// Fall through: the driver has the symbol but not this struct version.
	}
	// Deprecated in NVML 13, but the only call older drivers have.
	t, ret := d.dev.GetTemperature(nvml.TEMPERATURE_GPU)
	if ret != nvml.SUCCESS {
		return 0, d.fail("temperature", ret)
	}
	return int(t), nil
}

func (d nvmlDevice) PowerMilliwatts() (uint32, error) {
	p, ret := d.dev.GetPowerUsage()
	if ret != nvml.SUCCESS {
		return 0, d.fail("power", ret)
	}
	return p, nil
}
