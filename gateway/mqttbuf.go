package gateway

import (
	"bufio"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// brokerReadBuffer is the read buffer of a plain TCP connection to the broker:
// room for several request messages (about 4 KiB each for a 784-value input in
// base64) per read call.
const brokerReadBuffer = 64 << 10

// bufferedConn reads the broker connection through a buffer and gathers its
// writes. paho reads each packet's fixed header one byte at a time and then its
// body, three or four read calls per packet on a bare socket; through the buffer,
// one call brings in whatever the broker has sent. paho also writes each packet
// with a call of its own, and the gateway's packets come in bursts (the PUBACKs
// of the requests one journal commit made durable, the replies of another):
// a batchWriter sends what a burst queued while its previous write was in the
// kernel in one write.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
	w *batchWriter
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufferedConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// SetWriteDeadline is a no-op: the batchWriter sets each write's deadline
// itself (paho sets one around each of its writes, which now only queue).
func (c *bufferedConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline only (see SetWriteDeadline).
func (c *bufferedConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// Close sends what is queued (paho writes DISCONNECT just before it closes;
// the broker publishes the will of a client that leaves without one), waiting
// at most closeFlushWait, then closes the connection.
func (c *bufferedConn) Close() error {
	c.w.close(closeFlushWait)
	return c.Conn.Close()
}

// closeFlushWait bounds how long Close waits for queued bytes to be sent.
const closeFlushWait = time.Second

// batchWriter queues writes and sends them from a goroutine of its own, one
// socket write for everything queued since the previous one began. A Write
// returns once its bytes are queued; a failed socket write fails every later
// Write (paho then drops the connection and reconnects, as it does when a
// write of its own fails: what was queued is lost with the connection, as
// what is in a socket's buffer is, and QoS 1 resends it). Write blocks while
// maxQueued bytes wait, so a broker that stops reading stops paho as before.
type batchWriter struct {
	conn net.Conn
	// timeout is each socket write's deadline (paho's write timeout; 0: none).
	timeout time.Duration

	mu     sync.Mutex
	room   sync.Cond // signalled when queued shrinks or err is set
	queued []byte
	spare  []byte // the buffer of the previous write, reused
	err    error  // the first failed write
	closed bool
	kick   chan struct{} // size 1: queued became non-empty, or closed
	done   chan struct{} // closed when the sender exits
}

// maxQueued is how many bytes Write queues before it blocks.
const maxQueued = 1 << 20

func newBatchWriter(conn net.Conn, timeout time.Duration) *batchWriter {
	w := &batchWriter{conn: conn, timeout: timeout, kick: make(chan struct{}, 1), done: make(chan struct{})}
	w.room.L = &w.mu
	go w.send()
	return w
}

// Write queues p for the sender.
func (w *batchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	for w.err == nil && !w.closed && len(w.queued) > 0 && len(w.queued)+len(p) > maxQueued {
		w.room.Wait()
	}
	switch {
	case w.err != nil:
		err := w.err
		w.mu.Unlock()
		return 0, err
	case w.closed:
		w.mu.Unlock()
		return 0, net.ErrClosed
	}
	first := len(w.queued) == 0
	w.queued = append(w.queued, p...)
	w.mu.Unlock()
	if first {
		w.signal()
	}
	return len(p), nil
}

func (w *batchWriter) signal() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// send writes what is queued until the writer is closed and empty, or a write
// fails.
func (w *batchWriter) send() {
	defer close(w.done)
	for range w.kick {
		w.mu.Lock()
		for len(w.queued) > 0 && w.err == nil {
			// The spare becomes the queue: it is no longer spare (were it kept,
			// the next batch would be written from the buffer new writes are
			// appended to, overwriting bytes while they are sent).
			b := w.queued
			w.queued, w.spare = w.spare[:0], nil
			w.mu.Unlock()
			if w.timeout > 0 {
				_ = w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
			}
			_, err := w.conn.Write(b)
			w.mu.Lock()
			if cap(b) <= maxQueued { // a larger one is left to the collector
				w.spare = b[:0]
			}
			if err != nil {
				w.err = err
			}
			w.room.Broadcast()
		}
		stop := w.closed || w.err != nil
		w.mu.Unlock()
		if stop {
			return
		}
	}
}

// close stops taking writes and waits, at most wait, for the queued bytes to
// be sent.
func (w *batchWriter) close(wait time.Duration) {
	w.mu.Lock()
	w.closed = true
	failed := w.err != nil
	w.room.Broadcast()
	w.mu.Unlock()
	w.signal()
	if failed {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
	}
}

// bufferedOpener returns a paho connection opener that dials a plain TCP broker
// as paho does, buffers its reads and gathers its writes, or nil where paho's
// own opener should be kept: TLS (whose connection already reads whole records
// into a buffer), WebSockets, Unix sockets, and a proxy set in ALL_PROXY (which
// paho's opener honours for TCP).
func bufferedOpener(broker string) mqtt.OpenConnectionFunc {
	u, err := url.Parse(broker)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "mqtt") {
		return nil
	}
	if os.Getenv("ALL_PROXY") != "" || os.Getenv("all_proxy") != "" {
		return nil
	}
	return func(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
		d := o.Dialer
		if d == nil { // paho's default
			d = &net.Dialer{Timeout: 30 * time.Second}
		}
		conn, err := d.Dial("tcp", uri.Host)
		if err != nil {
			return nil, err
		}
		return &bufferedConn{Conn: conn, r: bufio.NewReaderSize(conn, brokerReadBuffer),
			w: newBatchWriter(conn, o.WriteTimeout)}, nil
	}
}
