package gateway

import (
	"time"

	"golang.org/x/sys/unix"
)

// threadCPU is the CPU time the calling thread has used so far, and true; the
// caller holds its goroutine on the thread (runtime.LockOSThread) between two
// readings that it subtracts. On Linux a reading is a system call (the vDSO
// serves only wall clocks).
func threadCPU() (time.Duration, bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, false
	}
	return time.Duration(ts.Nano()), true
}
