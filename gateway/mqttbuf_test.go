package gateway

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// The buffered opener is used for plain TCP brokers only, and what it returns
// reads what the peer wrote.
func TestBufferedOpener(t *testing.T) {
	t.Setenv("ALL_PROXY", "")
	t.Setenv("all_proxy", "")
	for _, b := range []string{"ssl://h:8883", "tls://h:8883", "ws://h:80", "wss://h:443", "unix:///run/m.sock", "::bad"} {
		if bufferedOpener(b) != nil {
			t.Errorf("%s: buffered opener, want paho's own", b)
		}
	}
	t.Setenv("ALL_PROXY", "socks5://proxy:1080")
	if bufferedOpener("tcp://h:1883") != nil {
		t.Error("with ALL_PROXY: buffered opener, want paho's own (it honours the proxy)")
	}
	t.Setenv("ALL_PROXY", "")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	want := []byte("\x30\x05hello\x40\x02\x00\x01")
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(want)
	}()
	for _, scheme := range []string{"tcp", "mqtt"} {
		if bufferedOpener(scheme+"://"+ln.Addr().String()) == nil {
			t.Fatalf("%s: no buffered opener", scheme)
		}
	}
	open := bufferedOpener("tcp://" + ln.Addr().String())
	u, _ := url.Parse("tcp://" + ln.Addr().String())
	conn, err := open(u, *mqtt.NewClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make([]byte, len(want))
	for i := range got { // one byte at a time, as paho reads a fixed header
		if _, err := io.ReadFull(conn, got[i:i+1]); err != nil {
			t.Fatal(err)
		}
	}
	if string(got) != string(want) {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// The batch writer sends every byte in order, what Close finds queued
// included, and once a socket write fails every later Write fails.
func TestBatchWriter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	open := bufferedOpener("tcp://" + ln.Addr().String())
	u, _ := url.Parse("tcp://" + ln.Addr().String())
	o := mqtt.NewClientOptions()
	o.WriteTimeout = time.Second
	conn, err := open(u, *o)
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i := range 2000 {
		p := []byte(fmt.Sprintf("packet %d;", i))
		want = append(want, p...)
		if n, err := conn.Write(p); err != nil || n != len(p) {
			t.Fatalf("Write: %d, %v", n, err)
		}
		if i%100 == 99 { // now and then the writer catches up
			time.Sleep(time.Millisecond)
		}
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != string(want) {
		t.Fatalf("the peer read %d bytes, want %d in order", len(b), len(want))
	}
	if _, err := conn.Write([]byte("late")); err == nil {
		t.Error("Write after Close succeeded")
	}

	// A peer that is gone: a write fails, and so does every later one.
	a, b := net.Pipe()
	b.Close()
	w := newBatchWriter(a, time.Second)
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatalf("the first Write only queues: %v", err)
	}
	<-w.done
	if _, err := w.Write([]byte("y")); err == nil {
		t.Error("Write after a failed write succeeded")
	}
	w.close(time.Second)
}

// gateConn is a net.Conn whose Write waits until the test lets it finish, and
// records the bytes it was given as they are when it finishes (a buffer
// changed during the write is sent changed).
type gateConn struct {
	net.Conn
	entered chan int      // the length of each write, as it begins
	release chan struct{} // one per write
	mu      sync.Mutex
	sent    []byte
}

func (c *gateConn) Write(p []byte) (int, error) {
	c.entered <- len(p)
	<-c.release
	c.mu.Lock()
	c.sent = append(c.sent, p...)
	c.mu.Unlock()
	return len(p), nil
}

func (c *gateConn) SetWriteDeadline(time.Time) error { return nil }

// A batch whose buffer grew past maxQueued is not reused, and neither is the
// buffer reused while it is written: new writes go to another buffer. The
// writer used to keep its previous spare buffer after such a batch, which was
// by then the buffer queuing new writes; the next batch was then written from
// the same buffer new writes were appended to, from its start: the bytes on
// the wire were overwritten while being sent (under a broker that read slowly,
// Mosquitto disconnected the gateway for a protocol error, and PUBACKs could
// be lost or sent for the wrong packet ids).
func TestBatchWriterDoesNotReuseABufferBeingWritten(t *testing.T) {
	c := &gateConn{entered: make(chan int), release: make(chan struct{})}
	w := newBatchWriter(c, 0)
	var want []byte
	write := func(p []byte) {
		t.Helper()
		want = append(want, p...)
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	fill := func(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

	write(fill(64, 'a')) // batch 1, small: its buffer becomes the spare
	<-c.entered
	// While batch 1 is written, batch 2 grows by append past maxQueued in
	// capacity (600 KiB, then 400 KiB: within maxQueued in length).
	write(fill(600<<10, 'b'))
	write(fill(400<<10, 'c'))
	c.release <- struct{}{}
	<-c.entered          // batch 2
	write(fill(32, 'd')) // queued in the spare (batch 1's buffer)
	c.release <- struct{}{}
	<-c.entered          // batch 3: the 32 bytes of 'd'
	write(fill(32, 'e')) // must not land in the buffer batch 3 is written from
	c.release <- struct{}{}
	<-c.entered // batch 4
	c.release <- struct{}{}
	w.close(time.Second)

	c.mu.Lock()
	defer c.mu.Unlock()
	if !bytes.Equal(c.sent, want) {
		i := 0
		for i < len(c.sent) && i < len(want) && c.sent[i] == want[i] {
			i++
		}
		t.Fatalf("sent %d bytes, want %d in order; first difference at byte %d: sent %q, want %q",
			len(c.sent), len(want), i, c.sent[i:min(i+8, len(c.sent))], want[i:min(i+8, len(want))])
	}
}
