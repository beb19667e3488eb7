package gateway

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
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
	dials    int                        // connections opened
	payloads []string                   // the payload of every PUBLISH received, in order
	conn     net.Conn                   // the server end of the current connection
	// permits, while not nil, paces the server's reading: it reads the packet
	// it is waiting for, then one more for each value received (stopReading,
	// readOne, resumeReading), so that the client's writer blocks meanwhile
	// (net.Pipe has no buffer).
	permits chan struct{}
}

func newHeldBroker() *heldBroker { return &heldBroker{holding: map[uint16]bool{}} }

// dial is the client's OpenConnectionFunc: each call is a new connection.
func (b *heldBroker) dial(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
	c, s := net.Pipe()
	out := make(chan packets.ControlPacket, 1<<18)
	b.mu.Lock()
	b.out = out
	b.conn = s
	b.dials++
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
		b.mu.Lock()
		permits := b.permits
		b.mu.Unlock()
		if permits != nil {
			<-permits
		}
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
			b.payloads = append(b.payloads, string(p.Payload))
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

// stopReading makes the server stop reading once it has the packet it is
// waiting for (if any): the client's next write blocks until readOne or
// resumeReading.
func (b *heldBroker) stopReading() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.permits == nil {
		b.permits = make(chan struct{}, 1024)
	}
}

// readOne lets the server read one more packet.
func (b *heldBroker) readOne() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.permits <- struct{}{}
}

// resumeReading lets the server read as fast as the client writes again.
func (b *heldBroker) resumeReading() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.permits)
	b.permits = nil
}

// drop closes the current connection from the server's end.
func (b *heldBroker) drop() {
	b.mu.Lock()
	s := b.conn
	b.mu.Unlock()
	s.Close()
}

// receivedOf returns how many PUBLISHes carried payload, and the connections
// opened so far.
func (b *heldBroker) receivedOf(payload string) (n, dials int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.payloads {
		if p == payload {
			n++
		}
	}
	return n, b.dials
}

func (b *heldBroker) counts() (received, held, maxHeld, dupes int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.received, len(b.held), b.maxHeld, b.dupes
}

// heldClient connects a real paho client, with the gateway's session settings,
// to b (in the caller's synctest bubble). An opener set in o must open b's
// connections (b.dial).
func heldClient(t *testing.T, b *heldBroker, o *mqtt.ClientOptions) mqtt.Client {
	t.Helper()
	if o == nil {
		o = mqtt.NewClientOptions()
	}
	if o.CustomOpenConnectionFn == nil {
		o.SetCustomOpenConnectionFn(b.dial)
	}
	o.AddBroker("tcp://held.invalid:1883").SetClientID("gw").SetCleanSession(false).
		SetAutoAckDisabled(true).SetOrderMatters(true).SetWriteTimeout(5 * time.Second).
		SetKeepAlive(30 * time.Second).SetAutoReconnect(true).SetConnectRetry(true)
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

// Owed replies (to requests that are not journaled) never wait, and the broker
// can send a backlog far beyond its in-flight window (Mosquitto 2.0.11,
// docs/reliability.md) that the gateway answers faster than the broker
// acknowledges. With 65,635 owed to a broker that holds its PUBACKs, paho ran
// out of packet ids and failed the last 100 publishes: their requests stayed
// unacknowledged for as long as the connection lasted, each holding a place in
// the broker's in-flight window. Now the client holds at most
// mqtt.max_inflight_publishes (16,384 by default) and the rest wait in order in
// the gateway; an answer to a journaled request waits for a place too; all of
// them reach the broker, every request is acknowledged, nothing fails.
func TestOwedRepliesBeyondPahoMessageIDs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 65535 + 100
		const limit = defaultMaxInflightPublishes
		b := newHeldBroker()
		gate := newPubGate(limit)
		c := heldClient(t, b, mqtt.NewClientOptions().SetStore(gate))
		m := newMetrics(nil)
		gate.waited = m.publishWaits.Inc
		o := defaultEgressOptions()
		o.Gate = gate
		j := newFakeJournal()
		e := newEgress(c, j, time.Minute, 0, nil, o, zerolog.Nop(), m)
		t.Cleanup(func() { e.Stop(context.Background()); e.Close() })
		var mu sync.Mutex
		acked := 0
		for i := range n {
			rep := &protocol.Reply{V: 1, ID: fmt.Sprint(i), App: "a", Device: "d", Status: protocol.StatusRejected, Reason: protocol.ReasonOverload}
			if err := e.Owe("t", rep, func() { mu.Lock(); acked++; mu.Unlock() }); err != nil {
				t.Fatalf("Owe %d: %v", i, err)
			}
		}
		answers := make([]store.Key, 10)
		for i := range answers {
			answers[i] = store.Key{App: "a", Device: "d", ID: fmt.Sprint("answer", i)}
			e.Answer(okAnswer(answers[i], time.Now().Add(time.Hour)))
		}
		synctest.Wait()
		got, held, _, _ := b.counts()
		if got != limit || held != limit || gate.inFlight() != limit {
			t.Fatalf("before any PUBACK: the broker received %d publishes and holds %d, the client %d; want %d each", got, held, gate.inFlight(), limit)
		}
		if w, f := testutil.ToFloat64(m.owed), testutil.ToFloat64(m.owedWaiting); w != limit || f != n-limit {
			t.Errorf("unjournaled replies in flight %v, waiting %v; want %d, %d", w, f, limit, n-limit)
		}
		// Each owed reply queued, and each answer worker that took some answers.
		if w := testutil.ToFloat64(m.publishWaits); w < n-limit+1 || w > n-limit+float64(len(answers)) {
			t.Errorf("publish_waits_total = %v, want %d and 1 to %d answer workers", w, n-limit, len(answers))
		}
		for b.ack(-1); ; b.ack(-1) {
			synctest.Wait()
			if _, held, _, _ := b.counts(); held == 0 {
				break
			}
		}
		got, _, maxHeld, dupes := b.counts()
		mu.Lock()
		defer mu.Unlock()
		if got != n+len(answers) || acked != n || dupes != 0 {
			t.Errorf("%d owed replies and %d answers: the broker received %d (%d with a reused id), %d requests acknowledged",
				n, len(answers), got, dupes, acked)
		}
		if maxHeld > limit {
			t.Errorf("the broker held up to %d publishes unacknowledged, more than mqtt.max_inflight_publishes %d", maxHeld, limit)
		}
		j.locked(func() {
			if len(j.completed) != len(answers) {
				t.Errorf("%d of %d answers completed", len(j.completed), len(answers))
			}
		})
		for name, g := range map[string]float64{"publish failures": testutil.ToFloat64(m.publishFails),
			"in flight": testutil.ToFloat64(m.owed), "waiting": testutil.ToFloat64(m.owedWaiting), "client": float64(gate.inFlight())} {
			if g != 0 {
				t.Errorf("%s: %v at the end, want 0", name, g)
			}
		}
	})
}

// TestBacklogBeyondInflightPublishes: the whole path against a real Mosquitto
// (2.0.11 sends a resumed session's backlog past its in-flight window). 3,000
// requests wait for the gateway's session, all past their deadline (answered
// expired without a journal write: owed replies); the gateway may hold 4
// publishes unacknowledged. Every request gets exactly one reply, none fails,
// every request is acknowledged on its reply's PUBACK, and the gauges read 0.
func TestBacklogBeyondInflightPublishes(t *testing.T) {
	const n = 3000
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.MQTT.MaxInflightPublishes = 4
	startGateway(t, cfg, Options{}).stop(t) // the session now exists and keeps what comes
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-backlog")
	topic := protocol.RequestTopic("sneakgate", "fashion", "cam-backlog")
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprint("b", i)
		dev.publish(topic, (&protocol.Payload{ID: ids[i], DeadlineMS: 500, SentAt: time.Now().Add(-10 * time.Second),
			Input: samples.Row(i % 100)}).Marshal())
	}
	gw := startGateway(t, cfg, Options{})
	for id, r := range dev.await(ids, 60*time.Second) {
		if r.Status != protocol.StatusExpired || r.Reason != protocol.ReasonExpiredBeforeReceipt {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	reg := gw.g.reg
	replied := func() float64 {
		return metricValue(t, reg, "sneakgate_replies_total", "app", "fashion", "status", string(protocol.StatusExpired))
	}
	// Counted (and the request acknowledged) on the reply's PUBACK, which may
	// come just after the device has the reply.
	for deadline := time.Now().Add(30 * time.Second); replied() < n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := replied(); got != n {
		t.Errorf("replies acknowledged by the broker (and their requests acknowledged): %v, want %d", got, n)
	}
	for _, name := range []string{"sneakgate_publish_failures_total", "sneakgate_unjournaled_replies_in_flight",
		"sneakgate_unjournaled_replies_waiting", "sneakgate_mqtt_publishes_in_flight"} {
		if v := metricValue(t, reg, name); v != 0 {
			t.Errorf("%s = %v, want 0", name, v)
		}
	}
	waits := metricValue(t, reg, "sneakgate_mqtt_publish_waits_total")
	if waits == 0 {
		t.Error("no publish waited for a place: the bound of 4 was not exercised")
	}
	t.Logf("%v publishes waited for a place", waits)
	for _, id := range ids {
		if c := dev.count(id); c != 1 {
			t.Errorf("%s answered %d times", id, c)
		}
	}
	gw.stop(t) // a clean stop with nothing in flight leaves every gauge at 0
	for _, name := range []string{"sneakgate_unjournaled_replies_in_flight", "sneakgate_unjournaled_replies_waiting",
		"sneakgate_mqtt_publishes_in_flight"} {
		if v := metricValue(t, reg, name); v != 0 {
			t.Errorf("%s = %v after the gateway stopped, want 0", name, v)
		}
	}
}
