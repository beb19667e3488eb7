package devices

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// silentBroker is an MQTT 3.1.1 server for one client that accepts its
// CONNECT and SUBSCRIBEs and answers its PINGREQs but never acknowledges a
// PUBLISH: each PUBLISH it reads goes to the channel.
func silentBroker(t *testing.T) (addr string, published <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	pub := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				r := bufio.NewReader(c)
				for {
					h, err := r.ReadByte()
					if err != nil {
						return
					}
					n, shift := 0, 0
					for {
						b, err := r.ReadByte()
						if err != nil {
							return
						}
						n |= int(b&0x7f) << shift
						if b&0x80 == 0 {
							break
						}
						shift += 7
					}
					body := make([]byte, n)
					if _, err := io.ReadFull(r, body); err != nil {
						return
					}
					var out []byte
					switch h >> 4 {
					case 1: // CONNECT: accepted
						out = []byte{0x20, 2, 0, 0}
					case 8: // SUBSCRIBE: granted QoS 1 (one filter)
						out = []byte{0x90, 3, body[0], body[1], 1}
					case 12: // PINGREQ
						out = []byte{0xd0, 0}
					case 3: // PUBLISH: no PUBACK
						pub <- struct{}{}
					case 14: // DISCONNECT
						return
					}
					if out != nil {
						if _, err := c.Write(out); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), pub
}

// TestClientCloseWhilePublishWaits: Close ends a Do that still waits for its
// request's PUBACK with ErrClosed, as it ends one waiting for the reply
// (TestClientPipelineAndErrors; its Do sometimes still waited for the PUBACK
// when the responder had the request, and got paho's "connection lost before
// Publish completed").
func TestClientCloseWhilePublishWaits(t *testing.T) {
	addr, published := silentBroker(t)
	c := dial(t, "tcp://"+addr, "close", ClientOptions{})
	errc := make(chan error, 1)
	go func() { _, err := c.Do(context.Background(), "tiny", "r1", []float32{1, 2, 3}, 0); errc <- err }()
	select {
	case <-published:
	case <-time.After(30 * time.Second):
		t.Fatal("the request was not published within 30 s")
	}
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Do waiting for its PUBACK, after Close: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Do did not return within 30 s of Close")
	}
}
