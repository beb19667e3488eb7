package gateway

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/scheduler"
)

// listenNotify listens on a unixgram socket in a temporary directory and sets
// $NOTIFY_SOCKET to it (and the watchdog to WatchdogSec=30s for this process).
func listenNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", p)
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	return c
}

// received returns the datagrams waiting on c, without waiting for more.
func received(t *testing.T, c *net.UnixConn) []string {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		buf := make([]byte, 256)
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if rerr == syscall.EAGAIN {
			return got
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		got = append(got, string(buf[:n]))
	}
}

func expectNotified(t *testing.T, c *net.UnixConn, what string, want ...string) {
	t.Helper()
	got := received(t, c)
	if len(got) != len(want) {
		t.Fatalf("%s: received %q, want %q", what, got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: received %q, want %q", what, got, want)
		}
	}
}

// TestNotifierReadyWatchdogStopping: READY=1 and STOPPING=1 reach
// $NOTIFY_SOCKET; WATCHDOG=1 goes every WatchdogSec/3 while the heartbeat is
// fresh, and none while it is stale.
func TestNotifierReadyWatchdogStopping(t *testing.T) {
	c := listenNotify(t)
	synctest.Test(t, func(t *testing.T) {
		n := newNotifier(time.Now, zerolog.Nop())
		if n.interval != 30*time.Second {
			t.Fatalf("watchdog interval %v, want 30s", n.interval)
		}
		n.Ready()
		expectNotified(t, c, "ready", "READY=1")

		var beat atomic.Int64
		beat.Store(time.Now().UnixNano())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { n.Watchdog(ctx, func() time.Time { return time.Unix(0, beat.Load()) }); close(done) }()

		// The loop goes round: a ping every 10 s.
		for range 3 {
			time.Sleep(10 * time.Second)
			synctest.Wait()
			expectNotified(t, c, "fresh heartbeat", "WATCHDOG=1")
			beat.Store(time.Now().UnixNano())
		}
		// The loop is stuck: 10 s after its last heartbeat still pings (under
		// WatchdogSec/2), 20 and 30 s after do not.
		time.Sleep(10 * time.Second)
		synctest.Wait()
		expectNotified(t, c, "heartbeat 10 s old", "WATCHDOG=1")
		for range 2 {
			time.Sleep(10 * time.Second)
			synctest.Wait()
			expectNotified(t, c, "stale heartbeat")
		}
		// It goes round again: pings resume.
		beat.Store(time.Now().UnixNano())
		time.Sleep(10 * time.Second)
		synctest.Wait()
		expectNotified(t, c, "heartbeat fresh again", "WATCHDOG=1")

		n.Stopping()
		cancel()
		<-done
		expectNotified(t, c, "stopping", "STOPPING=1")
	})
}

// TestNotifierWithoutSystemd: without $NOTIFY_SOCKET and $WATCHDOG_USEC nothing
// is sent and the watchdog returns at once.
func TestNotifierWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	n := newNotifier(time.Now, zerolog.Nop())
	if n.interval != 0 {
		t.Fatalf("watchdog interval %v without systemd", n.interval)
	}
	n.Ready()
	n.Stopping()
	n.Watchdog(context.Background(), func() time.Time { return time.Time{} }) // returns at once
}

// TestLoopHeartbeat: an idle loop refreshes its heartbeat about every second;
// while a batch runs (here one that hangs for a minute) it does not, and it
// does again once the batch is answered.
func TestLoopHeartbeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return time.Minute }, resident: map[scheduler.VariantID]bool{}}
		l, ans, cancel := startLoop(t, f, "edf")
		defer cancel()
		age := func() time.Duration { return time.Since(l.heartbeat.Load()) }
		time.Sleep(10*time.Second + time.Millisecond)
		synctest.Wait()
		if a := age(); a > heartbeatEvery {
			t.Fatalf("idle loop: heartbeat %v old", a)
		}
		submit(t, l, "hang", 5*time.Minute, nil)
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if a := age(); a < 29*time.Second {
			t.Fatalf("loop on a hung batch: heartbeat only %v old", a)
		}
		time.Sleep(40 * time.Second)
		synctest.Wait()
		if len(ans.got) != 1 {
			t.Fatalf("answered %d of 1", len(ans.got))
		}
		if a := age(); a > heartbeatEvery {
			t.Fatalf("after the batch: heartbeat %v old", a)
		}
	})
}
