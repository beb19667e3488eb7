//go:build !linux

package mosquitto

import "os/exec"

// dieWithParent does nothing here: only Linux can tie the broker's life to its
// parent's (orphan_linux.go); a broker whose parent dies without stopping it
// runs on.
func dieWithParent(*exec.Cmd) {}
