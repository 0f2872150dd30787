package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Build compiles nats-server (from the module this project depends on) and
// the worker into dir, and returns their paths.
func Build(dir string) (natsServer, worker string, err error) {
	natsServer, worker = filepath.Join(dir, "nats-server"), filepath.Join(dir, "worker")
	for bin, pkg := range map[string]string{natsServer: "github.com/nats-io/nats-server/v2", worker: "github.com/passkeys/worker/cmd/worker"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return natsServer, worker, nil
}

// FUSEAvailable tells whether this machine can mount the lazyfs disks the
// power faults need (root, and /dev/fuse).
func FUSEAvailable() bool {
	if os.Geteuid() != 0 {
		return false
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// PowerFaults tells whether kind needs the lazyfs disks.
func PowerFaults(kind string) bool { return kind == FaultPowerOne || kind == FaultPowerAll }
