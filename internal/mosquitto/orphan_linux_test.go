//go:build linux

package mosquitto

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// orphanChild names the environment variable that makes
// TestBrokerDiesWithItsParent run its child's part: start a broker in the
// directory it names, print its pid, and exit without stopping it.
const orphanChild = "SNEAKGATE_MOSQUITTO_ORPHAN_CHILD"

// TestBrokerDiesWithItsParent: a process that starts a broker and dies without
// stopping it, as a test binary killed by its -test.timeout does, leaves no
// broker running (dieWithParent).
func TestBrokerDiesWithItsParent(t *testing.T) {
	if dir := os.Getenv(orphanChild); dir != "" {
		b, err := New(dir, func(port int) string { return Config(port, dir, Options{}) })
		if err == nil {
			err = b.Start()
		}
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(2)
		}
		fmt.Printf("broker pid %d\n", b.Pid())
		os.Exit(0) // without Stop
	}
	if Find() == "" {
		t.Skip("mosquitto is not installed (make deps installs it)")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestBrokerDiesWithItsParent$", "-test.count=1")
	cmd.Env = append(os.Environ(), orphanChild+"="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	pid := 0
	for sc := bufio.NewScanner(bytes.NewReader(out)); sc.Scan(); {
		if s, ok := strings.CutPrefix(sc.Text(), "broker pid "); ok {
			pid, _ = strconv.Atoi(s)
		}
	}
	if pid <= 0 {
		t.Fatalf("child printed no broker pid:\n%s", out)
	}
	// The broker is not our child, so wait on a pidfd: readable once the
	// process has exited (a zombie counts: its new parent may not reap it).
	fd, err := unix.PidfdOpen(pid, 0)
	if err == unix.ESRCH {
		return // gone already (and reaped)
	}
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", pid, err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int((30 * time.Second).Milliseconds()))
	for err == unix.EINTR {
		n, err = unix.Poll(fds, int((30 * time.Second).Milliseconds()))
	}
	if err != nil {
		t.Fatalf("poll on the broker's pidfd: %v", err)
	}
	if n == 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("broker %d still running 30 s after the process that started it died", pid)
	}
}
