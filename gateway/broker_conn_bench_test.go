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
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			}()
			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer raw.Close()
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
