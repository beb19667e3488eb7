package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat: USER_HZ, which is
// 100 on every Linux architecture Go supports (sysconf(_SC_CLK_TCK) without cgo).
const clockTick = 10 * time.Millisecond

// CPUTime is the CPU time a process has used: all its threads, user and system.
type CPUTime struct {
	User, System time.Duration
}

// Total is User + System.
func (c CPUTime) Total() time.Duration { return c.User + c.System }

// Sub returns c - o.
func (c CPUTime) Sub(o CPUTime) CPUTime {
	return CPUTime{User: c.User - o.User, System: c.System - o.System}
}

// ReadCPU returns the CPU time process pid has used so far (utime and stime of
// /proc/PID/stat; 0 means this process). The resolution is 10 ms.
func ReadCPU(pid int) (CPUTime, error) {
	p := "/proc/self/stat"
	if pid != 0 {
		p = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return CPUTime{}, err
	}
	return parseStat(b)
}

// parseStat reads utime and stime (fields 14 and 15) from a /proc/PID/stat line.
// The second field, the command name in parentheses, may contain spaces and
// parentheses, so the fields are counted from the last ')'.
func parseStat(b []byte) (CPUTime, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return CPUTime{}, fmt.Errorf("bench: /proc stat: no command name in %q", b)
	}
	// After ")": field 3 (state) is rest[0]; utime and stime are fields 14 and 15.
	rest := strings.Fields(string(b[i+1:]))
	if len(rest) < 13 {
		return CPUTime{}, fmt.Errorf("bench: /proc stat: %d fields after the command name, want at least 13", len(rest))
	}
	var t [2]time.Duration
	for k, f := range rest[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil || n < 0 {
			return CPUTime{}, fmt.Errorf("bench: /proc stat: bad CPU time field %q", f)
		}
		t[k] = time.Duration(n) * clockTick
	}
	return CPUTime{User: t[0], System: t[1]}, nil
}

// loadAvg returns the 1-minute load average from /proc/loadavg, or -1.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}
