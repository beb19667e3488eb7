package gateway

import (
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkBrokerConnWrite: what the embedded broker's connection wrapper
// (brokerConn) adds to a small write (a reply or a PUBACK) to a device that
// reads, against the bare TCP connection; the write timeout on, as for a
// device. Loopback, a reader that drains everything.
//
//	go test -run '^$' -bench BrokerConnWrite -count 5 ./gateway/
func BenchmarkBrokerConnWrite(b *testing.B) {
	for _, wrapped := range []bool{false, true} {
		name := "bare"
		if wrapped {
			name = "brokerConn"
		}
		b.Run(name, func(b *testing.B) {
			raw := drainedConn(b)
			var c net.Conn = raw
			if wrapped {
				c = &brokerConn{Conn: raw, l: &brokerListener{}, timeout: 10 * time.Second}
			}
			msg := make([]byte, 200) // a reply
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSendQueue: one reading of a socket's send queue (sendQueue: an
// ioctl), which brokerConn makes at most once a second per connection.
//
//	go test -run '^$' -bench SendQueue -count 5 ./gateway/
func BenchmarkSendQueue(b *testing.B) {
	c := drainedConn(b)
	if _, ok := sendQueue(c); !ok {
		b.Skip("the send queue cannot be read here (Linux only)")
	}
	for b.Loop() {
		sendQueue(c)
	}
}

// drainedConn is a loopback TCP connection whose peer reads and discards
// everything, closed at the benchmark's end.
func drainedConn(b *testing.B) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}
