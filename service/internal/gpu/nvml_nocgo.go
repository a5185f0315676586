//go:build !cgo

package gpu

import "errors"

// go-nvml binds libnvidia-ml through cgo; a CGO_ENABLED=0 build has no way to
// reach it, and says so rather than pretending there is no GPU.
var errNoCgo = errors.New("built without cgo")

func systemDriver() driver { return noCgoDriver{} }

type noCgoDriver struct{}

func (noCgoDriver) Init() error                      { return errNoCgo }
func (noCgoDriver) Shutdown() error                  { return nil }
func (noCgoDriver) DriverVersion() (string, error)   { return "", errNoCgo }
func (noCgoDriver) DeviceCount() (int, error)        { return 0, errNoCgo }
func (noCgoDriver) Device(int) (deviceReader, error) { return nil, errNoCgo }
