package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// The embedded broker acknowledges a device's request only once the gateway's
// client has (broker_ack.go). Before, mochi-mqtt acknowledged it before handing
// it to the gateway, in the gateway's own process: a kill -9 lost every request
// acknowledged to a device and not yet journaled.

// barrier makes a round trip on c's connection (a SUBSCRIBE and its SUBACK):
// once it returns, c has processed every packet the broker wrote it before the
// SUBACK, an acknowledgement of an earlier publish included.
func barrier(t *testing.T, c mqtt.Client) {
	t.Helper()
	if tok := c.Subscribe("sg/barrier", 0, func(mqtt.Client, mqtt.Message) {}); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("barrier: %v", tok.Error())
	}
}

// notAcked fails the test if tok (a device's publish) has completed.
func notAcked(t *testing.T, tok mqtt.Token, what string) {
	t.Helper()
	select {
	case <-tok.Done():
		t.Fatalf("%s was acknowledged to the device before the gateway's client acknowledged it (error %v)", what, tok.Error())
	default:
	}
}

// acked waits (30 s) for tok (a device's publish) to complete without error.
func acked(t *testing.T, tok mqtt.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: not acknowledged to the device within 30 s (%v)", what, tok.Error())
	}
}

// TestEmbeddedBrokerAcksAfterTheGateway: a device's QoS 1 request is
// acknowledged to it only after the gateway's client has acknowledged it.
// Before, mochi wrote the device its PUBACK before it even delivered the
// request: the device had it when the gateway received the request.
func TestEmbeddedBrokerAcksAfterTheGateway(t *testing.T) {
	const filter = "sg/req/+/+"
	b, _ := holdBroker(t, 0, filter, "sneakgate")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	dev, _ := holdClient(t, b, "cam-1", "")

	tok := dev.Publish("sg/req/fashion/cam-1", 1, false, "r1")
	m := receive(t, gwGot, "the request at the gateway")
	barrier(t, dev)
	notAcked(t, tok, "the request")
	m.Ack()
	acked(t, tok, "the request the gateway acknowledged")
	if w := b.hold.written.Load(); w != 1 {
		t.Errorf("acknowledgements written after the gateway's: %d, want 1", w)
	}
}

// TestEmbeddedBrokerAcksInOrder: acknowledgements reach a device in the order
// of its publishes (MQTT-4.6.0-2), whatever the order of the gateway's: one the
// gateway gave first waits for the earlier request's; a publish to a topic the
// gateway does not take waits in its turn too; and a device's publishes are
// read on while its acknowledgements wait.
func TestEmbeddedBrokerAcksInOrder(t *testing.T) {
	const filter = "sg/req/+/+"
	b, _ := holdBroker(t, 0, filter, "sneakgate")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	_, monGot := holdClient(t, b, "monitor", "sg/other")
	dev, _ := holdClient(t, b, "cam-1", "")

	t1 := dev.Publish("sg/req/fashion/cam-1", 1, false, "r1")
	t2 := dev.Publish("sg/req/fashion/cam-1", 1, false, "r2")
	t3 := dev.Publish("sg/other", 1, false, "x")
	m1 := receive(t, gwGot, "r1 at the gateway")
	m2 := receive(t, gwGot, "r2 at the gateway")
	if x := receive(t, monGot, "the other publish"); string(x.Payload()) != "x" {
		t.Fatalf("the monitor got %q", x.Payload())
	}
	m2.Ack()
	barrier(t, dev)
	notAcked(t, t1, "r1")
	notAcked(t, t2, "r2 (before r1, which the gateway had not acknowledged)")
	notAcked(t, t3, "the other publish (after r1, which the gateway had not acknowledged)")
	m1.Ack()
	acked(t, t1, "r1")
	acked(t, t2, "r2")
	acked(t, t3, "the other publish")
	// Nothing owed any more: the next publish elsewhere is mochi's again.
	acked(t, dev.Publish("sg/other", 1, false, "y"), "a publish with nothing owed")
}

// TestEmbeddedBrokerAcksQoS2AfterTheGateway: a QoS 2 request gets its PUBREC
// only after the gateway's client (subscribed at QoS 1) acknowledged it; the
// flow then completes (PUBREL, PUBCOMP).
func TestEmbeddedBrokerAcksQoS2AfterTheGateway(t *testing.T) {
	const filter = "sg/req/+/+"
	b, _ := holdBroker(t, 0, filter, "sneakgate")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	dev, _ := holdClient(t, b, "cam-1", "")
	// mochi writes the PUBCOMP before it deletes the flow from the client's
	// in-flight store (server.go, processPubrel), then calls OnQosComplete: the
	// device's token may complete before the store is cleared.
	done := &qosCompleteHook{client: "cam-1", done: make(chan struct{}, 1)}
	if err := b.srv.AddHook(done, nil); err != nil {
		t.Fatal(err)
	}

	tok := dev.Publish("sg/req/fashion/cam-1", 2, false, "r1")
	m := receive(t, gwGot, "the request at the gateway")
	barrier(t, dev)
	notAcked(t, tok, "the QoS 2 request")
	m.Ack()
	acked(t, tok, "the QoS 2 request the gateway acknowledged")
	select {
	case <-done.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the broker did not complete the QoS 2 flow")
	}
	// The PUBREC was kept until the PUBREL, and the PUBCOMP cleared it.
	cl, ok := b.srv.Clients.Get("cam-1")
	if !ok {
		t.Fatal("cam-1 not connected")
	}
	if n := cl.State.Inflight.Len(); n != 0 {
		t.Errorf("cam-1's in-flight store holds %d after the QoS 2 flow", n)
	}
}

// TestEmbeddedBrokerAckAfterTheDeviceLeft: a device whose connection ends
// before the gateway acknowledged its request gets nothing written then; once
// reconnected it sends the request again (its session, DUP), which reaches the
// gateway again and is acknowledged, and later requests are acknowledged as
// usual.
func TestEmbeddedBrokerAckAfterTheDeviceLeft(t *testing.T) {
	const filter = "sg/req/+/+"
	b, _ := holdBroker(t, 0, filter, "sneakgate")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	proxy := cutProxy(t, b.Addr())
	dev, connected := reconnectingDevice(t, proxy, "cam-1")

	dev.Publish("sg/req/fashion/cam-1", 1, false, "r1")
	first := receive(t, gwGot, "r1 at the gateway")
	proxy.cut()
	within(t, connected, "the device did not reconnect")
	// The old connection has ended (the session was taken over): the
	// gateway's acknowledgement has nowhere to go.
	first.Ack()
	again := receive(t, gwGot, "r1 sent again after reconnecting")
	if string(again.Payload()) != "r1" {
		t.Fatalf("after the reconnect the gateway got %q, want r1 sent again", again.Payload())
	}
	again.Ack()
	tok := dev.Publish("sg/req/fashion/cam-1", 1, false, "r2")
	m := receive(t, gwGot, "r2 at the gateway")
	if string(m.Payload()) != "r2" {
		t.Fatalf("the gateway got %q, want r2", m.Payload())
	}
	m.Ack()
	acked(t, tok, "r2")
}

// TestEmbeddedBrokerAcksThroughGatewayTakeover: the gateway's client
// reconnects with its persistent session before acknowledging a request; the
// new connection gets it again (same session) and its acknowledgement reaches
// the device.
func TestEmbeddedBrokerAcksThroughGatewayTakeover(t *testing.T) {
	const filter = "sg/req/+/+"
	b, _ := holdBroker(t, 0, filter, "sneakgate")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	dev, _ := holdClient(t, b, "cam-1", "")
	tok := dev.Publish("sg/req/fashion/cam-1", 1, false, "r1")
	receive(t, gwGot, "r1 at the gateway")

	gw2 := reconnectGateway(t, b)
	m := receive(t, gw2, "r1 resent to the new connection")
	barrier(t, dev)
	notAcked(t, tok, "r1")
	m.Ack()
	acked(t, tok, "r1, acknowledged by the new connection")
}

// reconnectGateway connects the gateway's client "sneakgate" again, taking its
// persistent session over; it acknowledges nothing by itself.
func reconnectGateway(t *testing.T, b *Broker) <-chan mqtt.Message {
	t.Helper()
	got := make(chan mqtt.Message, 64)
	o := mqtt.NewClientOptions().AddBroker("tcp://" + b.Addr()).SetClientID("sneakgate").SetAutoReconnect(false).
		SetCleanSession(false).SetAutoAckDisabled(true).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { got <- m })
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("reconnect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return got
}

// TestEmbeddedBrokerKeepsDeliveryUnderGatewayPublish: the gateway's client
// publishes (a reply) under the packet id of a request the broker delivered it
// and it has not acknowledged. MQTT keeps the two directions' packet ids apart;
// mochi deleted the delivery from the session, so when the gateway reconnected
// the request was not sent again, and the device, never acknowledged, waited
// until it reconnected itself. The delivery is kept.
func TestEmbeddedBrokerKeepsDeliveryUnderGatewayPublish(t *testing.T) {
	const filter = "sg/req/+/+"
	b, _ := holdBroker(t, 0, filter, "sneakgate")
	gw, gwGot := holdClient(t, b, "sneakgate", filter)
	dev, _ := holdClient(t, b, "cam-1", "")
	// Four requests acknowledged, the fifth not: the broker sent it under
	// packet id 5, the gateway's paho numbers its own packets from 1 (its
	// SUBSCRIBE took 1).
	for i := range 4 {
		dev.Publish("sg/req/fashion/cam-1", 1, false, "r"+strconv.Itoa(i))
		receive(t, gwGot, "an earlier request").Ack()
	}
	tok := dev.Publish("sg/req/fashion/cam-1", 1, false, "r1")
	m := receive(t, gwGot, "r1 at the gateway")
	// Publish until one takes the request's packet id.
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatalf("the gateway's publishes never took packet id %d", m.MessageID())
		}
		pt := gw.Publish("sg/res/fashion/cam-1", 1, false, "reply")
		if !pt.WaitTimeout(10*time.Second) || pt.Error() != nil {
			t.Fatalf("the gateway's publish: %v", pt.Error())
		}
		if pt.(*mqtt.PublishToken).MessageID() == m.MessageID() {
			break
		}
	}
	gw2 := reconnectGateway(t, b)
	again := receive(t, gw2, "r1 resent to the new connection (the session lost it under the gateway's publish?)")
	if string(again.Payload()) != "r1" {
		t.Fatalf("the new connection got %q, want r1", again.Payload())
	}
	barrier(t, dev)
	notAcked(t, tok, "r1")
	again.Ack()
	acked(t, tok, "r1")
}

// TestEmbeddedBrokerHoldsUntilTheGatewaySubscribes: a request published before
// the gateway's client has subscribed (a device that reconnects faster than the
// gateway after a restart) waits, unacknowledged, instead of being
// acknowledged and dropped for want of a subscriber; it reaches the gateway
// once it subscribes.
func TestEmbeddedBrokerHoldsUntilTheGatewaySubscribes(t *testing.T) {
	const filter = "sg/req/+/+"
	b, held := holdBroker(t, 0, filter, "sneakgate")
	dev, _ := holdClient(t, b, "cam-1", "")
	tok := dev.Publish("sg/req/fashion/cam-1", 1, false, "r1")
	waitHeld(t, held, "the request before the gateway connected")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	m := receive(t, gwGot, "the held request once the gateway subscribed")
	if string(m.Payload()) != "r1" {
		t.Fatalf("the gateway got %q", m.Payload())
	}
	notAcked(t, tok, "r1")
	m.Ack()
	acked(t, tok, "r1")
	if d := b.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}
}

// TestEmbeddedBrokerAcksManyInFlight: devices with many requests in flight
// each get every acknowledgement, in the order of their publishes, as the
// gateway acknowledges in an order of its own (here the reverse of arrival, in
// batches of 37): nothing is withheld or left owed. The devices are raw MQTT
// clients that read their PUBACKs in the order the broker wrote them.
func TestEmbeddedBrokerAcksManyInFlight(t *testing.T) {
	const filter = "sg/req/+/+"
	const devices, each = 8, 50
	b, _ := holdBroker(t, 0, filter, "sneakgate")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	orders := make([]chan []uint16, devices)
	for d := range devices {
		id := fmt.Sprintf("cam-%d", d)
		c := dialRaw(t, b.Addr())
		_ = c.SetDeadline(time.Now().Add(60 * time.Second))
		r := bufio.NewReader(c)
		rawConnect(t, c, r, id)
		var out []byte
		for i := 1; i <= each; i++ {
			out = append(out, rawPublish("sg/req/fashion/"+id, uint16(i), strconv.Itoa(i))...)
		}
		if _, err := c.Write(out); err != nil {
			t.Fatal(err)
		}
		orders[d] = make(chan []uint16, 1)
		go func() {
			var ids []uint16
			for range each {
				var ack [4]byte
				if _, err := io.ReadFull(r, ack[:]); err != nil || ack[0] != 0x40 || ack[1] != 2 {
					break
				}
				ids = append(ids, uint16(ack[2])<<8|uint16(ack[3]))
			}
			orders[d] <- ids
		}()
	}
	var batch []mqtt.Message
	for range devices * each {
		batch = append(batch, receive(t, gwGot, "a request"))
		if len(batch) == 37 {
			for i := len(batch) - 1; i >= 0; i-- {
				batch[i].Ack()
			}
			batch = batch[:0]
		}
	}
	for i := len(batch) - 1; i >= 0; i-- {
		batch[i].Ack()
	}
	for d := range devices {
		ids := within(t, orders[d], "acknowledgements")
		if len(ids) != each {
			t.Fatalf("cam-%d got %d of %d acknowledgements: %v", d, len(ids), each, ids)
		}
		for i, id := range ids {
			if int(id) != i+1 {
				t.Fatalf("cam-%d's acknowledgements came in the order %v", d, ids)
			}
		}
	}
	if w := b.hold.written.Load(); w != devices*each {
		t.Errorf("acknowledgements written: %d, want %d", w, devices*each)
	}
	if w := b.hold.withheld.Load(); w != 0 {
		t.Errorf("acknowledgements withheld: %d, want 0", w)
	}
	b.hold.delivMu.Lock()
	owed := len(b.hold.owed)
	b.hold.delivMu.Unlock()
	if owed != 0 {
		t.Errorf("%d deliveries still owed", owed)
	}
}

// rawConnect sends an MQTT 3.1.1 CONNECT (clean session, keepalive 0) for id
// on c and reads its CONNACK from r.
func rawConnect(t *testing.T, c net.Conn, r io.Reader, id string) {
	t.Helper()
	connect := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, byte(len(id) >> 8), byte(len(id))}, id...)
	if _, err := c.Write(append([]byte{0x10, byte(len(connect))}, connect...)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(r, ack); err != nil || !bytes.Equal(ack, []byte{0x20, 2, 0, 0}) {
		t.Fatalf("%s: CONNACK % x, %v", id, ack, err)
	}
}

// rawPublish is a QoS 1 PUBLISH (short: a remaining length under 128).
func rawPublish(topic string, id uint16, payload string) []byte {
	body := append([]byte{byte(len(topic) >> 8), byte(len(topic))}, topic...)
	body = append(body, byte(id>>8), byte(id))
	body = append(body, payload...)
	return append([]byte{0x32, byte(len(body))}, body...)
}

// TestEmbeddedBrokerAcksAfterCommit: through a gateway running its embedded
// broker, a device's request is acknowledged only once the journal holds it:
// while the journal's commit is held up, the request has reached the gateway
// but the device has no PUBACK; it gets one after the commit, and its reply.
// Before, the device had its PUBACK while the commit had not even begun, and
// a kill -9 then (the broker is in the gateway's process) lost the request.
func TestEmbeddedBrokerAcksAfterCommit(t *testing.T) {
	addr := freeAddr(t)
	cfg := testConfig(t, "tcp://"+addr, t.TempDir())
	cfg.MQTT.Embedded.Enabled, cfg.MQTT.Embedded.Listen = true, addr
	inPut, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	startGateway(t, cfg, Options{BeforeCommit: func(ops []store.Op) error {
		for _, op := range ops {
			if op.Kind == store.OpPut {
				once.Do(func() { close(inPut) })
				<-release // the commit waits for the test
			}
		}
		return nil
	}})
	var released sync.Once
	letGo := func() { released.Do(func() { close(release) }) }
	t.Cleanup(letGo) // before the gateway's stop, which would wait for the commit
	_, samples := fashionSamples(t)
	dev := newDevice(t, "tcp://"+addr, "cam-commit")
	payload, _ := json.Marshal(map[string]any{"id": "r1", "deadline_ms": 60000, "input": samples.Row(0)})
	tok := dev.c.Publish(protocol.RequestTopic("sneakgate", "fashion", "cam-commit"), 1, false, payload)
	within(t, inPut, "the request's journal commit did not begin")
	barrier(t, dev.c)
	notAcked(t, tok, "the request (its journal commit not done)")
	letGo()
	acked(t, tok, "the journaled request")
	if r := dev.await([]string{"r1"}, 30*time.Second)["r1"]; r.Status != protocol.StatusOK {
		t.Fatalf("reply: %+v", r)
	}
}

// storeWatch is a mochi hook that records, for one client, the packet ids its
// in-flight store took: deliveries (PUBLISH) and the broker's acknowledgements
// of its own publishes (PUBACK).
type storeWatch struct {
	mochi.HookBase
	client string
	mu     sync.Mutex
	sent   []uint16 // deliveries
	acks   []uint16 // its own publishes
}

func (w *storeWatch) ID() string           { return "test-store-watch" }
func (w *storeWatch) Provides(b byte) bool { return b == mochi.OnQosPublish }
func (w *storeWatch) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	if cl.ID != w.client {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch pk.FixedHeader.Type {
	case packets.Publish:
		w.sent = append(w.sent, pk.PacketID)
	case packets.Puback:
		w.acks = append(w.acks, pk.PacketID)
	}
}

// TestEmbeddedBrokerGatewayPublishesApart: the gateway's client's own QoS 1
// publishes (its replies) are processed under packet ids half the id space
// away from those of the requests the broker delivers it, and each is
// acknowledged to it under its own id. mochi keeps both in the client's one
// in-flight store: a reply numbered like a request in flight deleted that
// request from the session, and a request delivered under the id of a reply
// being processed took the reply's place unreported, and was then deleted with
// it (its device never acknowledged).
func TestEmbeddedBrokerGatewayPublishesApart(t *testing.T) {
	const filter = "sg/req/+/+"
	b, _ := holdBroker(t, 0, filter, "sneakgate")
	w := &storeWatch{client: "sneakgate"}
	if err := b.srv.AddHook(w, nil); err != nil {
		t.Fatal(err)
	}
	gw, gwGot := holdClient(t, b, "sneakgate", filter)
	dev, _ := holdClient(t, b, "cam-1", "")
	for i := range 20 {
		tok := dev.Publish("sg/req/fashion/cam-1", 1, false, strconv.Itoa(i))
		m := receive(t, gwGot, "a request")
		// The reply goes out under the next id paho gives, the request's
		// neighbour or the request's own.
		if pt := gw.Publish("sg/res/fashion/cam-1", 1, false, "reply"); !pt.WaitTimeout(10*time.Second) || pt.Error() != nil {
			t.Fatalf("reply %d not acknowledged to the gateway (under its own id): %v", i, pt.Error())
		}
		m.Ack()
		acked(t, tok, "request "+strconv.Itoa(i))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.acks) != 20 || len(w.sent) != 20 {
		t.Fatalf("the gateway's store took %d deliveries and %d acknowledgements of its publishes, want 20 and 20", len(w.sent), len(w.acks))
	}
	for _, a := range w.acks {
		for _, d := range w.sent {
			if dist := min(a-d, d-a); dist < 1<<14 {
				t.Fatalf("a publish of the gateway's was processed under packet id %d, %d from the delivery %d (deliveries %v, its publishes %v)",
					a, dist, d, w.sent, w.acks)
			}
		}
	}
}

// qosCompleteHook signals each QoS 2 flow of client's publishes that the
// broker completes (OnQosComplete on the PUBREL, called once the flow has left
// the client's in-flight store).
type qosCompleteHook struct {
	mochi.HookBase
	client string
	done   chan struct{}
}

func (h *qosCompleteHook) ID() string { return "qos-complete" }
func (h *qosCompleteHook) Provides(b byte) bool {
	return b == mochi.OnQosComplete
}
func (h *qosCompleteHook) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	if cl.ID != h.client || pk.FixedHeader.Type != packets.Pubrel {
		return
	}
	select {
	case h.done <- struct{}{}:
	default:
	}
}
