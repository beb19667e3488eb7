//go:build !linux

package gateway

import "time"

// threadCPU reports false: the forward passes' CPU time is measured on Linux only.
func threadCPU() (time.Duration, bool) { return 0, false }
