package main

import (
	"os"
	"runtime"
)

// gcBallast is the size of the allocation that raises the garbage collector's
// heap goal while the gateway serves (gcFloor).
const gcBallast = 32 << 20

// gcFloor keeps the garbage collector from running a dozen times a second under
// load. The gateway's live heap is small (a few MiB: the engine's buffers, the
// queues) while each request allocates kilobytes (the payload, the input, the
// journal record, the reply), so with the default GOGC=100 the heap goal is a
// few MiB and every cycle scans the stacks of the gateway's hundreds of
// goroutines (docs/benchmarks.md: the collector took about 15% of the gateway's
// CPU, 3% with the ballast). A never-touched, pointer-free 32 MiB allocation
// counts as live heap, so the goal becomes 2 x (live + 32 MiB): the collector
// runs a few times less often, it costs nothing to mark, its pages stay
// untouched (not resident; the garbage the larger goal lets pile up is: 135 MiB
// resident against 102 in that benchmark), and with a large live heap it adds
// at most 64 MiB to the goal. An
// operator who sets GOGC or GOMEMLIMIT decides instead: then it does nothing.
// The returned function keeps the ballast alive; call it when serving ends.
func gcFloor() (keep func()) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	ballast := make([]byte, gcBallast)
	return func() { runtime.KeepAlive(ballast) }
}
