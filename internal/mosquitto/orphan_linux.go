//go:build linux

package mosquitto

import (
	"os/exec"
	"syscall"
)

// dieWithParent has the kernel kill the broker (SIGKILL) when the process that
// started it dies without stopping it: a test binary killed by -test.timeout or
// a signal, `sneakgate eval -live` or `bench` interrupted. Without it the broker
// ran on, holding its port, its files and whatever descriptors it inherited (a
// `flock` lock the caller ran under, say). The kernel sends the signal when the
// thread that started the broker exits; the Go runtime keeps its threads for
// the life of the process unless a goroutine locked to one exits, which nothing
// that starts a broker does.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
