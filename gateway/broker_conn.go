package gateway

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// brokerWriteTimeout is how long the embedded broker lets a write to a client
// make no progress (hands the socket less than brokerWriteChunk, and the
// client's TCP acknowledges less than that) before it closes the client's
// connection. mochi writes to a client without a deadline of its own (only the
// keepalive's, 1.5 x the keepalive, renewed whenever the client sends a packet;
// none for a keepalive of 0), and it writes under the client's lock, which a
// QoS 1 or 2 message to that client also takes (for its packet id) in the read
// loop of whoever published it: a client that stopped reading (a stuck device,
// one behind a dead NAT) with its socket buffers full stopped that loop, for
// good with a keepalive of 0. The publisher of replies is the gateway, so one
// such device stopped every reply, and every acknowledgement of a request the
// gateway sent, while it stayed. A write blocks only once the socket buffers
// (hundreds of KiB to MiB) are full, so a client this cuts has left that much
// unread and then read nothing for this long. The gateway's own client (the
// guarded subscribers') is exempt (writeTimeoutHook): it stops reading while
// its handlers are busy, and while it does nothing should reach it anyway.
const brokerWriteTimeout = 10 * time.Second

// brokerWriteChunk is the most of one write the broker hands the socket under
// one brokerWriteTimeout: a large message to a slow client that does read
// gets the timeout for each chunk, not for the whole message. A chunk that has
// not gone when the timeout passes still may, for another timeout, if the
// client acknowledged this much (or its socket's whole send queue) meanwhile:
// a socket whose send buffer is full does not take more until a third of it is
// acknowledged (Linux: up to about 1.3 MiB with tcp_wmem's default 4 MiB), so
// a client that reads a steady 100 KiB/s would otherwise be cut as if it had
// stopped. Where the send queue cannot be read (not Linux), each chunk must go
// within the timeout.
const brokerWriteChunk = 16 << 10

// brokerCloseWriteTimeout is how long, at Close, writes to a client may still
// take: mochi writes each client a DISCONNECT at Close, under the client's
// lock, so a client that stopped reading (keepalive 0: no deadline at all)
// kept Close, and the gateway's stop with it, waiting until systemd killed
// the gateway. Every connection gets this deadline at once (not one after
// another), so Close waits for it once however many clients are stuck.
const brokerCloseWriteTimeout = 2 * time.Second

// brokerConn is a connection of the embedded broker's (brokerListener; under
// TLS when the listener has it): each write, in chunks of brokerWriteChunk,
// must make progress within its timeout (brokerWriteTimeout, 0 for none: the
// chunk goes, or the client acknowledges a chunk's worth), and
// after closing(by) no write goes on past by. A write that times out closes
// the connection: mochi goes on writing a client's next packets after a failed
// write, and the next would follow a partly written packet. The deadlines mochi
// sets (the CONNECT's, the keepalive's) apply as they would on the bare
// connection; the earliest of them and these is the one in force.
type brokerConn struct {
	net.Conn // TCP
	l        *brokerListener

	mu       sync.Mutex
	timeout  time.Duration // for each chunk; 0: none
	deadline time.Time     // the write deadline set (SetDeadline, SetWriteDeadline)
	chunk    time.Time     // the chunk under way's: about now + timeout (chunkSlack)
	closeBy  time.Time     // Close's
	applied  time.Time     // the write deadline in force on Conn

	// Write's own (mochi writes to a connection from one goroutine at a time):
	// the socket's send queue as last read (queued, at queuedAt) and the bytes
	// the socket took since (sent), so that what the peer acknowledged since is
	// queued + sent - (the queue now).
	queued, sent int
	queuedAt     time.Time

	// takeoverHook's: done is closed once the connection's goroutine has
	// ended (brokerListener.Serve), settled once its session is established
	// or its goroutine has ended; disconnected (mochi's OnDisconnect ran) and
	// takers (connections taking its session over) are under takeoverHook.mu.
	done, settled chan struct{}
	settleOnce    sync.Once
	disconnected  bool
	takers        []*brokerConn
}

// newBrokerConn is a connection of l's over raw.
func newBrokerConn(raw net.Conn, l *brokerListener) *brokerConn {
	return &brokerConn{Conn: raw, l: l, timeout: l.write, done: make(chan struct{}), settled: make(chan struct{})}
}

// settle closes settled (once).
func (c *brokerConn) settle() { c.settleOnce.Do(func() { close(c.settled) }) }

// chunkSlack is how stale a chunk's deadline may be before a write renews it:
// a chunk gets between brokerWriteTimeout - chunkSlack and brokerWriteTimeout
// (a tenth of the timeout at most, for the tests' short timeouts).
// Renewing it at every write would move the connection's timer at every reply
// and PUBACK.
const chunkSlack = time.Second

// sendQueueEvery is how often a write reads the socket's send queue (an ioctl,
// a few microseconds on a kernel with page-table isolation) to know later what
// the peer acknowledged: not at every write. A reading up to this old counts
// acknowledgements from up to this long before a chunk began as the chunk's
// progress, so a client that stopped reading may get one more timeout.
const sendQueueEvery = time.Second

// applyLocked puts the earliest of the write deadlines in force. c.mu held.
func (c *brokerConn) applyLocked() error {
	var d time.Time
	for _, t := range []time.Time{c.deadline, c.chunk, c.closeBy} {
		if !t.IsZero() && (d.IsZero() || t.Before(d)) {
			d = t
		}
	}
	if d.Equal(c.applied) {
		return nil
	}
	c.applied = d
	return c.Conn.SetWriteDeadline(d)
}

func (c *brokerConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), brokerWriteChunk)
		var now time.Time // read once per chunk, and only with a timeout
		c.mu.Lock()
		timeout := c.timeout
		if timeout > 0 {
			now = time.Now()
			// The chunk's deadline stays set between writes (a deadline that
			// passes with no write under way does nothing) and is renewed once
			// it is more than chunkSlack stale.
			if c.chunk.Before(now.Add(timeout - min(chunkSlack, timeout/10))) {
				c.chunk = now.Add(timeout)
				_ = c.applyLocked()
			}
		}
		c.mu.Unlock()
		if timeout > 0 && now.Sub(c.queuedAt) >= sendQueueEvery {
			if q, ok := sendQueue(c.Conn); ok {
				c.queued, c.queuedAt, c.sent = q, now, 0
			}
		}
		m, err := c.Conn.Write(p[:n])
		written += m
		c.sent += m
		p = p[m:]
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if !c.queuedAt.IsZero() && c.chunkOnlyPassed() {
					// The peer acknowledged queued + sent - q1 since the last
					// reading; that reading becomes q1.
					if q1, ok := sendQueue(c.Conn); ok {
						acked := c.queued + c.sent - q1
						enough := min(brokerWriteChunk, c.queued+c.sent)
						c.queued, c.queuedAt, c.sent = q1, time.Now(), 0
						if acked >= enough {
							continue // a new chunk, with a new deadline
						}
					}
				}
				c.stalled()
			}
			return written, err
		}
	}
	return written, nil
}

// chunkOnlyPassed reports whether, of the write deadlines, only the chunk's
// has passed (a write may then go on if its peer took a chunk meanwhile).
func (c *brokerConn) chunkOnlyPassed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	return !c.chunk.IsZero() && !now.Before(c.chunk) &&
		(c.deadline.IsZero() || now.Before(c.deadline)) && c.closeBy.IsZero()
}

// stalled closes the connection after a write timed out (logged unless the
// broker is closing).
func (c *brokerConn) stalled() {
	c.mu.Lock()
	closing, timeout := !c.closeBy.IsZero(), c.timeout
	c.mu.Unlock()
	if !closing && c.l.log != nil {
		c.l.log.Warn("embedded broker: a client took no data for the write timeout or its keepalive's deadline: connection closed",
			"remote", c.RemoteAddr().String(), "write_timeout", timeout.String())
	}
	c.Conn.Close()
}

func (c *brokerConn) SetDeadline(t time.Time) error {
	if err := c.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *brokerConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	return c.applyLocked()
}

// closing bounds every write, the one under way included, by by.
func (c *brokerConn) closing(by time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeBy.IsZero() || by.Before(c.closeBy) {
		c.closeBy = by
	}
	_ = c.applyLocked()
}

// exempt lifts the write timeout (not Close's).
func (c *brokerConn) exempt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timeout = 0
	c.chunk = time.Time{}
	_ = c.applyLocked()
}

// brokerConnOf is the brokerConn under a client's connection (nil if none).
func brokerConnOf(c net.Conn) *brokerConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	bc, _ := c.(*brokerConn)
	return bc
}

// writeTimeoutHook exempts the guarded subscribers' clients (the gateway's)
// from brokerWriteTimeout once they have authenticated, before their CONNACK
// and any resent message: while the gateway does not read, its messages wait
// (and devices' publishes to it wait too, as mochi takes the gateway's lock
// for their packet ids: back-pressure, as holdHook's).
type writeTimeoutHook struct {
	mqtt.HookBase
	exempt map[string]bool
}

func (h *writeTimeoutHook) ID() string { return "sneakgate-write-timeout" }

func (h *writeTimeoutHook) Provides(b byte) bool { return b == mqtt.OnSessionEstablish }

func (h *writeTimeoutHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if h.exempt[cl.ID] {
		if c := brokerConnOf(cl.Net.Conn); c != nil {
			c.exempt()
		}
	}
}
