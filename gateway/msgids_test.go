package gateway

import (
	"bufio"
	"net"
	"net/url"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// heldBroker is the server end of one MQTT 3.1.1 connection over net.Pipe,
// inside a synctest bubble: it accepts the CONNECT, answers pings and
// subscriptions, and acknowledges a PUBLISH (PUBACK) only when the test says
// so, in the order they came, so that a real paho client runs with as many
// QoS 1 publishes in flight as the test wants.
type heldBroker struct {
	mu       sync.Mutex
	out      chan packets.ControlPacket // the current connection's writer's queue
	held     []uint16                   // PUBLISH ids received and not acknowledged, in order
	holding  map[uint16]bool            // the same ids
	received int                        // PUBLISHes received
	maxHeld  int                        // the most ever held at once
	dupes    int                        // PUBLISHes whose id was already held (an id reused)
}

func newHeldBroker() *heldBroker { return &heldBroker{holding: map[uint16]bool{}} }

// dial is the client's OpenConnectionFunc: each call is a new connection.
func (b *heldBroker) dial(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
	c, s := net.Pipe()
	out := make(chan packets.ControlPacket, 1<<18)
	b.mu.Lock()
	b.out = out
	b.mu.Unlock()
	go func() {
		w := bufio.NewWriter(s)
		for p := range out {
			if p.Write(w) != nil {
				return
			}
			if len(out) == 0 && w.Flush() != nil {
				return
			}
		}
	}()
	go b.serve(s, out)
	return c, nil
}

func (b *heldBroker) serve(s net.Conn, out chan packets.ControlPacket) {
	defer close(out)
	r := bufio.NewReaderSize(s, 64<<10)
	for {
		p, err := packets.ReadPacket(r)
		if err != nil {
			return
		}
		switch p := p.(type) {
		case *packets.ConnectPacket:
			out <- packets.NewControlPacket(packets.Connack)
		case *packets.PingreqPacket:
			out <- packets.NewControlPacket(packets.Pingresp)
		case *packets.SubscribePacket:
			ack := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
			ack.MessageID, ack.ReturnCodes = p.MessageID, make([]byte, len(p.Topics))
			out <- ack
		case *packets.PublishPacket:
			b.mu.Lock()
			b.received++
			if b.holding[p.MessageID] {
				b.dupes++
			}
			b.holding[p.MessageID] = true
			b.held = append(b.held, p.MessageID)
			b.maxHeld = max(b.maxHeld, len(b.held))
			b.mu.Unlock()
		case *packets.DisconnectPacket:
			s.Close()
			return
		}
	}
}

// ack acknowledges the n oldest held publishes (all of them when n < 0).
func (b *heldBroker) ack(n int) {
	b.mu.Lock()
	if n < 0 || n > len(b.held) {
		n = len(b.held)
	}
	ids := b.held[:n]
	b.held = append([]uint16(nil), b.held[n:]...)
	for _, id := range ids {
		delete(b.holding, id)
	}
	out := b.out
	b.mu.Unlock()
	for _, id := range ids {
		a := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
		a.MessageID = id
		out <- a
	}
}

func (b *heldBroker) counts() (received, held, maxHeld, dupes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.received, len(b.held), b.maxHeld, b.dupes
}

// heldClient connects a real paho client, with the gateway's session settings,
// to b (in the caller's synctest bubble).
func heldClient(t *testing.T, b *heldBroker, o *mqtt.ClientOptions) mqtt.Client {
	t.Helper()
	if o == nil {
		o = mqtt.NewClientOptions()
	}
	o.AddBroker("tcp://held.invalid:1883").SetClientID("gw").SetCleanSession(false).
		SetAutoAckDisabled(true).SetOrderMatters(true).SetWriteTimeout(5 * time.Second).
		SetKeepAlive(30 * time.Second).SetAutoReconnect(true).SetConnectRetry(true).
		SetCustomOpenConnectionFn(b.dial)
	c := mqtt.NewClient(o)
	tok := c.Connect()
	synctest.Wait()
	if !tok.WaitTimeout(time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// paho (1.5.1, messageids.go getID) gives each QoS 1 publish a 16-bit packet
// id until the broker's PUBACK frees it. With 65,535 unacknowledged, Publish
// does not block and reuses nothing: its token is complete at once with the
// error "no message IDs available" (client.go, Publish), and the message is
// not sent. One PUBACK later, publishing works again.
func TestPahoRunsOutOfMessageIDs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newHeldBroker()
		c := heldClient(t, b, nil)
		toks := make([]mqtt.Token, 0, 65535)
		for range 65535 {
			toks = append(toks, c.Publish("r", 1, false, []byte("x")))
		}
		synctest.Wait()
		if got, held, _, dupes := b.counts(); got != 65535 || held != 65535 || dupes != 0 {
			t.Fatalf("broker received %d publishes, holds %d, %d with a reused id", got, held, dupes)
		}
		for i, tok := range toks {
			select {
			case <-tok.Done():
				t.Fatalf("publish %d complete (%v) before its PUBACK", i, tok.Error())
			default:
			}
		}
		over := c.Publish("r", 1, false, []byte("x"))
		select {
		case <-over.Done():
		default:
			t.Fatal("the 65,536th publish in flight is not complete at once")
		}
		if err := over.Error(); err == nil || err.Error() != "no message IDs available" {
			t.Fatalf("the 65,536th publish in flight: error %v, want paho's \"no message IDs available\"", err)
		}
		synctest.Wait()
		if got, _, _, _ := b.counts(); got != 65535 {
			t.Fatalf("the refused publish was sent anyway: the broker received %d", got)
		}
		b.ack(1)
		synctest.Wait()
		if err := toks[0].Error(); err != nil {
			t.Fatalf("acknowledged publish: %v", err)
		}
		again := c.Publish("r", 1, false, []byte("x"))
		synctest.Wait()
		if got, _, _, dupes := b.counts(); got != 65536 || dupes != 0 {
			t.Fatalf("after one PUBACK: broker received %d publishes (want 65,536), %d with a reused id", got, dupes)
		}
		b.ack(-1)
		synctest.Wait()
		if err := again.Error(); err != nil {
			t.Fatalf("publish after a PUBACK freed an id: %v", err)
		}
	})
}
