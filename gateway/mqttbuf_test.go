package gateway

import (
	"fmt"
	"io"
	"net"
	"net/url"
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
