package gateway

import (
	"crypto/tls"
	"fmt"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// takeoverGate is a test hook (after the broker's own) that stops the first
// connection of client id's goroutine in its clean-up, once it has found it
// was not taken over (mochi calls OnUnsubscribed after that reading and before
// it removes the id from the clients), until release is closed; and reports
// the session of every later connection of id's once it is established.
type takeoverGate struct {
	mqtt.HookBase
	id          string
	entered     chan *mqtt.Client // the first connection, stopped
	release     chan struct{}
	established chan *mqtt.Client // a later connection's session

	mu      sync.Mutex
	first   *mqtt.Client
	stopped bool
}

func (h *takeoverGate) ID() string { return "test-takeover-gate" }

func (h *takeoverGate) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablished || b == mqtt.OnUnsubscribed
}

func (h *takeoverGate) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if cl.ID != h.id {
		return
	}
	h.mu.Lock()
	first := h.first == nil
	if first {
		h.first = cl
	}
	h.mu.Unlock()
	if !first {
		h.established <- cl
	}
}

func (h *takeoverGate) OnUnsubscribed(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	stop := cl == h.first && !h.stopped
	h.stopped = h.stopped || stop
	h.mu.Unlock()
	if stop {
		h.entered <- cl
		<-h.release
	}
}

// TestEmbeddedBrokerReconnectWhileOldEnds: a device whose connection has ended
// connects again under its client id while the old connection's goroutine is
// still cleaning up (it has read that it was not taken over and is about to
// remove the id from the broker's clients), and gets its messages on the new
// connection. Without takeoverHook the old goroutine removed the id after the
// new connection had registered under it: the new connection was subscribed
// but not among the clients, and got nothing (the interleaving
// TestEmbeddedBrokerStuckClientReconnects met now and then).
func TestEmbeddedBrokerReconnectWhileOldEnds(t *testing.T) {
	waiting := make(chan struct{}, 1)
	b, err := startBroker(freeAddr(t), 1<<20, nil, nil, zerolog.Nop(), nil, brokerTuning{
		onTakeoverWait: func() { waiting <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	gate := &takeoverGate{id: "cam-1", entered: make(chan *mqtt.Client, 1), release: make(chan struct{}),
		established: make(chan *mqtt.Client, 1)}
	if err := b.srv.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	releaseOnce := sync.OnceFunc(func() { close(gate.release) })
	t.Cleanup(releaseOnce)

	old := stuckClient(t, b, nil, "cam-1", "sg/resp/cam-1")
	pub, _ := pahoClient(t, b, nil, "sneakgate", "")
	old.Close()
	oldCl := within(t, gate.entered, "the old connection's clean-up did not start")
	oc := brokerConnOf(oldCl.Net.Conn)

	type connected struct {
		c   pahoConn
		err error
	}
	done := make(chan connected, 1)
	go func() {
		c, got, err := connectPaho(b, nil, "cam-1", "sg/resp/cam-1")
		done <- connected{pahoConn{c, got}, err}
	}()
	// The new connection either waits for the old one's clean-up (takeoverHook)
	// or, without it, registers first: either way the old one's goes on now.
	var newCl *mqtt.Client
	select {
	case <-waiting:
	case newCl = <-gate.established:
	case <-oc.done:
		t.Fatal("the old connection's goroutine ended while stopped")
	}
	releaseOnce()
	within(t, oc.done, "the old connection's goroutine did not end")
	nc := within(t, done, "the new connection did not connect and subscribe")
	if nc.err != nil {
		t.Fatal(nc.err)
	}
	t.Cleanup(func() { nc.c.c.Disconnect(50) })
	if newCl == nil {
		newCl = within(t, gate.established, "no session for the new connection")
	}
	if cl, ok := b.srv.Clients.Get("cam-1"); !ok || cl != newCl {
		t.Fatalf("the broker's client cam-1 is %p (%v), want the new connection's %p", cl, ok, newCl)
	}
	published(t, pub, "sg/resp/cam-1", []byte("again"))
	if m := receive(t, nc.c.got, "message on the new connection"); string(m.Payload()) != "again" {
		t.Fatalf("cam-1 got %q", m.Payload())
	}
}

// pahoConn is a paho client and the messages of its subscription.
type pahoConn struct {
	c   paho.Client
	got <-chan paho.Message
}

// connectPaho is pahoClient for another goroutine than the test's (and under
// it): it returns the error instead of failing the test, and the caller
// disconnects. With topic "" it subscribes to nothing.
func connectPaho(b *Broker, tc *tls.Config, id, topic string) (paho.Client, <-chan paho.Message, error) {
	got := make(chan paho.Message, 16)
	scheme := "tcp://"
	if tc != nil {
		scheme = "ssl://"
	}
	o := paho.NewClientOptions().AddBroker(scheme + b.Addr()).SetClientID(id).SetAutoReconnect(false).
		SetKeepAlive(0).SetConnectTimeout(5 * time.Second).SetWriteTimeout(time.Minute).
		SetTLSConfig(&tls.Config{InsecureSkipVerify: true})
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, nil, fmt.Errorf("connect %s: %v", id, tok.Error())
	}
	if topic == "" {
		return c, got, nil
	}
	if tok := c.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) { got <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		c.Disconnect(50)
		return nil, nil, fmt.Errorf("subscribe %s: %v", id, tok.Error())
	}
	return c, got, nil
}
