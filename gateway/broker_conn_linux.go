package gateway

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// sendQueue is how many bytes c's socket holds that its peer has not
// acknowledged yet (SIOCOUTQ: sent and unacknowledged, and not yet sent).
func sendQueue(c net.Conn) (int, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || ierr != nil {
		return 0, false
	}
	return n, true
}
