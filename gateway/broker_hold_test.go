package gateway

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"
)

// holdBroker starts an embedded broker whose in-flight limit is maxInflight,
// guarding filter for the clients named; held receives a value each time it
// holds a publish.
func holdBroker(t *testing.T, maxInflight uint16, filter string, clients ...string) (*Broker, <-chan struct{}) {
	t.Helper()
	return holdBrokerWake(t, maxInflight, filter, nil, clients...)
}

// holdBrokerWake is holdBroker that also calls onWake each time the broker lets
// a held publish through.
func holdBrokerWake(t *testing.T, maxInflight uint16, filter string, onWake func(), clients ...string) (*Broker, <-chan struct{}) {
	t.Helper()
	held := make(chan struct{}, 1024)
	var guards []Guard
	for _, c := range clients {
		guards = append(guards, Guard{Client: c, Filter: filter})
	}
	b, err := startBroker(freeAddr(t), 1<<20, nil, nil, zerolog.Nop(), guards,
		brokerTuning{maxInflight: maxInflight, onHold: func() {
			select {
			case held <- struct{}{}:
			default:
			}
		}, onWake: onWake})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, held
}

// holdClient connects a paho client that acknowledges nothing by itself: every
// message it receives goes to the returned channel, unacknowledged.
func holdClient(t *testing.T, b *Broker, id string, filter string) (mqtt.Client, <-chan mqtt.Message) {
	t.Helper()
	got := make(chan mqtt.Message, 4096)
	o := mqtt.NewClientOptions().AddBroker("tcp://" + b.Addr()).SetClientID(id).SetAutoReconnect(false).
		SetCleanSession(false).SetAutoAckDisabled(true).SetOrderMatters(true).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	if filter != "" {
		if tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) { got <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", id, tok.Error())
		}
	}
	return c, got
}

// receive returns the next message on got, failing the test after 30 s.
func receive(t *testing.T, got <-chan mqtt.Message, what string) mqtt.Message {
	t.Helper()
	return within(t, got, "no "+what)
}

// waitHeld waits for the broker to hold a publish (held: holdBroker's channel),
// failing the test after 30 s.
func waitHeld(t *testing.T, held <-chan struct{}, what string) {
	t.Helper()
	within(t, held, what+" not held")
}

// within returns the next value on ch, failing the test with failure after 30 s.
func within[T any](t *testing.T, ch <-chan T, failure string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("%s within 30 s", failure)
	}
	var zero T
	return zero
}

// TestEmbeddedBrokerHoldsInsteadOfDropping reproduces the loss of acknowledged
// requests (docs/deployment.md, "The embedded broker") with the embedded broker
// and a small in-flight limit: the gateway's client holds the limit of requests
// unacknowledged while a device publishes three times as many. mochi-mqtt alone
// acknowledges every one to the device and drops those beyond the limit; the
// broker must instead hold the device's publishes, unacknowledged, until the
// gateway acknowledges, and then deliver every one, in order.
func TestEmbeddedBrokerHoldsInsteadOfDropping(t *testing.T) {
	const filter = "sg/req/+/+"
	b, held := holdBroker(t, 8, filter, "sneakgate")
	limit := b.hold.limit
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	dev, _ := holdClient(t, b, "cam-1", "")

	n := 3 * limit
	toks := make([]mqtt.Token, n)
	for i := range toks {
		toks[i] = dev.Publish("sg/req/fashion/cam-1", 1, false, strconv.Itoa(i))
	}
	allAcked := make(chan struct{})
	go func() {
		for _, tok := range toks {
			<-tok.Done()
		}
		close(allAcked)
	}()

	// The gateway takes the limit's worth and acknowledges none.
	var first []mqtt.Message
	for range limit {
		first = append(first, receive(t, gwGot, "request up to the limit"))
	}
	select {
	case <-held:
	case <-allAcked:
		// Without the hold: the device had every publish acknowledged; a
		// publish to another topic behind them on its connection is processed
		// after them, so the drop counter is final once it is acknowledged.
		if tok := dev.Publish("sg/other", 1, false, "barrier"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		t.Fatalf("the broker acknowledged all %d publishes while the subscriber held %d unacknowledged, and dropped %d of them",
			n, limit, b.Dropped())
	case <-time.After(30 * time.Second):
		t.Fatal("the broker neither held a publish nor acknowledged them all")
	}
	for i, tok := range toks[limit:] {
		select {
		case <-tok.Done():
			t.Fatalf("publish %d acknowledged while the subscriber had no room", limit+i)
		default:
		}
	}

	// The gateway acknowledges as it goes: every request arrives, in order.
	for _, m := range first {
		m.Ack()
	}
	msgs := first
	for len(msgs) < n {
		m := receive(t, gwGot, fmt.Sprintf("request %d of %d", len(msgs), n))
		m.Ack()
		msgs = append(msgs, m)
	}
	for i, m := range msgs {
		if string(m.Payload()) != strconv.Itoa(i) {
			t.Fatalf("request %d is %q", i, m.Payload())
		}
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	if d := b.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}
	if b.Held() < 1 {
		t.Errorf("Held() = %d, want at least 1", b.Held())
	}
}

// TestEmbeddedBrokerHoldSharedGroup: in a guarded shared group, a request goes to
// a member with room: one member that acknowledges nothing takes no more than
// the limit, the other the rest, and nothing is dropped.
func TestEmbeddedBrokerHoldSharedGroup(t *testing.T) {
	const filter = "$share/g/sg/req/+/+"
	b, _ := holdBroker(t, 8, filter, "gw-a", "gw-b")
	limit := b.hold.limit
	_, stuck := holdClient(t, b, "gw-a", filter)
	_, busy := holdClient(t, b, "gw-b", filter)
	dev, _ := holdClient(t, b, "cam-1", "")
	n := 4 * limit
	for i := range n {
		dev.Publish("sg/req/fashion/cam-1", 1, false, strconv.Itoa(i))
	}
	seen := map[string]bool{}
	toStuck := 0
	for len(seen) < n {
		select {
		case m := <-stuck:
			toStuck++
			seen[string(m.Payload())] = true
		case m := <-busy:
			m.Ack()
			seen[string(m.Payload())] = true
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d requests delivered (dropped %d)", len(seen), n, b.Dropped())
		}
	}
	if toStuck > limit {
		t.Errorf("the member that acknowledges nothing got %d, over the limit %d", toStuck, limit)
	}
	if d := b.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}
}

// TestEmbeddedBrokerCloseReleasesHeld: closing the broker while it holds a
// publish returns (mochi's Close waits for every client's read loop, one of
// which is held), and the held publish is not delivered.
func TestEmbeddedBrokerCloseReleasesHeld(t *testing.T) {
	const filter = "sg/req/+/+"
	b, held := holdBroker(t, 8, filter, "sneakgate")
	limit := b.hold.limit
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	dev, _ := holdClient(t, b, "cam-1", "")
	for i := range limit + 1 {
		dev.Publish("sg/req/fashion/cam-1", 1, false, strconv.Itoa(i))
	}
	for range limit {
		receive(t, gwGot, "request up to the limit")
	}
	waitHeld(t, held, "the publish beyond the limit")
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return while a publish was held")
	}
	select {
	case m := <-gwGot:
		t.Fatalf("the held publish %q was delivered", m.Payload())
	default:
	}
}

// TestEmbeddedBrokerHoldsOnlyForTheGateway: another subscriber to the request
// filter that acknowledges nothing (a monitor, a stale persistent session) holds
// no device: it loses its own copies as before, and the gateway, which
// acknowledges everything, gets every request.
func TestEmbeddedBrokerHoldsOnlyForTheGateway(t *testing.T) {
	const filter = "sg/req/+/+"
	b, _ := holdBroker(t, 8, filter, "sneakgate")
	limit := b.hold.limit
	gw := make(chan mqtt.Message, 4096)
	o := mqtt.NewClientOptions().AddBroker("tcp://" + b.Addr()).SetClientID("sneakgate").SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer c.Disconnect(50)
	if tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) { gw <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	holdClient(t, b, "monitor", filter) // acknowledges nothing
	dev, _ := holdClient(t, b, "cam-1", "")
	n := 3 * limit
	for i := range n {
		dev.Publish("sg/req/fashion/cam-1", 1, false, strconv.Itoa(i))
	}
	for i := range n {
		// Before 2026-12-01's fix the monitor's full in-flight store held the
		// device for good: 8 of 24 arrived.
		receive(t, gw, fmt.Sprintf("request %d of %d at the gateway", i+1, n))
	}
}

// TestEmbeddedBrokerHoldKeepsTheConnection: a hold longer than 1.5 x the
// device's keepalive (mochi's read and write deadline, renewed only as its
// read loop goes round) neither closes the device's connection nor fails the
// replies written to it meanwhile; the held request is delivered once the
// gateway acknowledges.
//
// The device's keepalive is 2 s: mochi computes the deadline in whole seconds
// (keepalive + keepalive/2), 3 s for 2 s but 1 s for 1 s, the very moment paho
// pings an idle connection at the earliest. With 1 s, a device that the test
// goroutine left idle for a second under CPU load was dropped before its last
// publish reached the hold, and the wait for the hold, which had no deadline,
// hung the test until go test's 10-minute timeout. Every wait here has one, and
// a lost connection ends it at once.
func TestEmbeddedBrokerHoldKeepsTheConnection(t *testing.T) {
	const filter = "sg/req/+/+"
	b, held := holdBroker(t, 8, filter, "sneakgate")
	limit := b.hold.limit
	gw, gwGot := holdClient(t, b, "sneakgate", filter)
	lost := make(chan error, 1)
	replies := make(chan mqtt.Message, 16)
	o := mqtt.NewClientOptions().AddBroker("tcp://" + b.Addr()).SetClientID("cam-1").SetAutoReconnect(false).
		SetCleanSession(true).SetKeepAlive(2 * time.Second).SetPingTimeout(time.Minute).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	dev := mqtt.NewClient(o)
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer dev.Disconnect(50)
	if tok := dev.Subscribe("sg/res/cam-1", 1, func(_ mqtt.Client, m mqtt.Message) { replies <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for i := range limit + 1 {
		dev.Publish("sg/req/fashion/cam-1", 1, false, strconv.Itoa(i))
	}
	var first []mqtt.Message
	for len(first) < limit {
		select {
		case m := <-gwGot:
			first = append(first, m)
		case err := <-lost:
			t.Fatalf("the device's connection was lost before the hold (%d of %d requests arrived): %v", len(first), limit, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d requests arrived within 30 s", len(first), limit)
		}
	}
	select {
	case <-held:
	case err := <-lost:
		t.Fatalf("the device's connection was lost before its last publish was held: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the device's last publish not held within 30 s")
	}
	// Past mochi's 3 s deadline for a 2 s keepalive: the hold must outlast it
	// (this wait is the condition under test, not a synchronisation).
	time.Sleep(4 * time.Second)
	if tok := gw.Publish("sg/res/cam-1", 1, false, "reply"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	receive(t, replies, "reply to the held device")
	for _, m := range first {
		m.Ack()
	}
	receive(t, gwGot, "held request")
	select {
	case err := <-lost:
		t.Errorf("the device's connection was lost: %v", err)
	default:
	}
}

// TestEmbeddedBrokerHoldWakesInOrder: 50 devices held behind a gateway that
// holds its limit (8) unacknowledged are let through in the order they were
// held, one per acknowledgement, and each held publish is woken once: a release
// wakes no more held publishers than it makes room for (before, each
// acknowledgement woke every held publisher to check again).
func TestEmbeddedBrokerHoldWakesInOrder(t *testing.T) {
	const filter = "sg/req/+/+"
	const devices = 50
	var wakes atomic.Int64
	b, held := holdBrokerWake(t, 8, filter, func() { wakes.Add(1) }, "sneakgate")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	unacked := fillToLimit(t, b, gwGot)
	toks := holdDevices(t, b, held, devices)
	if w := wakes.Load(); w != 0 {
		t.Fatalf("%d held publishes woken while the gateway acknowledged nothing", w)
	}
	for i := range devices {
		unacked[0].Ack()
		unacked = unacked[1:]
		m := receive(t, gwGot, fmt.Sprintf("held request %d", i))
		if want := fmt.Sprintf("cam-%02d", i); string(m.Payload()) != want {
			t.Fatalf("request %d let through is %q, want %q (first held, first through)", i, m.Payload(), want)
		}
		if w := wakes.Load(); w != int64(i+1) {
			t.Fatalf("after %d acknowledgements, %d held publishes woken, want %d", i+1, w, i+1)
		}
		unacked = append(unacked, m)
	}
	// A device's request is acknowledged once the gateway has (broker_ack.go).
	for _, m := range unacked {
		m.Ack()
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	if d := b.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}
	if h := b.Held(); h != devices {
		t.Errorf("Held() = %d, want %d", h, devices)
	}
}

func TestLevelsMatch(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"sg/req/+/+", "sg/req/fashion/cam-1", true},
		{"sg/req/+/+", "sg/req/fashion", false},
		{"sg/req/+/+", "sg/req/fashion/cam-1/x", false},
		{"sg/req/+/+", "sg/res/fashion/cam-1", false},
		{"sg/req/#", "sg/req", true},
		{"sg/req/#", "sg/req/a/b/c", true},
		{"sg/req/#", "sg/res/a", false},
		{"#", "", true},
		{"+", "", true},
		{"+", "a/b", false},
		{"a", "a", true},
		{"a", "a/", false},
		{"a/+", "a/", true},
	} {
		if got := levelsMatch(strings.Split(c.filter, "/"), c.topic); got != c.want {
			t.Errorf("levelsMatch(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

// TestEmbeddedBrokerHoldsThroughTakeover: the gateway reconnects with its
// persistent session while it holds its limit unacknowledged and devices are
// held. mochi copies the old connection's in-flight store to the new one and
// then clears the old one (OnQosDropped per message) before registering the
// new one; that is no room. Found by review: the hold let a held publish
// through per cleared message, acknowledged to its device, and mochi dropped
// it at the new connection's full store (4 of 4 here).
func TestEmbeddedBrokerHoldsThroughTakeover(t *testing.T) {
	const filter = "sg/req/+/+"
	const devices = 4
	var wakes atomic.Int64
	b, held := holdBrokerWake(t, 8, filter, func() { wakes.Add(1) }, "sneakgate")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	fillToLimit(t, b, gwGot)
	holdDevices(t, b, held, devices)
	// The gateway reconnects: the same client id, its session (subscription
	// and unacknowledged requests) kept; it acknowledges nothing by itself.
	gw2 := make(chan mqtt.Message, 64)
	o := mqtt.NewClientOptions().AddBroker("tcp://" + b.Addr()).SetClientID("sneakgate").SetAutoReconnect(false).
		SetCleanSession(false).SetAutoAckDisabled(true).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { gw2 <- m })
	c2 := mqtt.NewClient(o)
	if tok := c2.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("reconnect: %v", tok.Error())
	}
	t.Cleanup(func() { c2.Disconnect(50) })
	if w, d := wakes.Load(), b.Dropped(); w != 0 || d != 0 {
		t.Fatalf("at the takeover %d held publishes were let through and %d messages dropped; want none", w, d)
	}
	// The new connection gets the old one's unacknowledged requests again;
	// acknowledging them lets the held ones through.
	seen := map[string]bool{}
	for len(seen) < devices {
		m := receive(t, gw2, fmt.Sprintf("requests at the new connection (%d of the held ones so far)", len(seen)))
		m.Ack()
		if p := string(m.Payload()); strings.HasPrefix(p, "cam-") {
			seen[p] = true
		}
	}
	if d := b.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}
}

// fillToLimit has a client publish as many requests as b lets the gateway hold
// unacknowledged and returns them as the gateway (gwGot, acknowledging
// nothing) received them.
func fillToLimit(t *testing.T, b *Broker, gwGot <-chan mqtt.Message) []mqtt.Message {
	t.Helper()
	filler, _ := holdClient(t, b, "filler", "")
	for i := range b.hold.limit {
		filler.Publish("sg/req/fashion/filler", 1, false, "f"+strconv.Itoa(i))
	}
	got := make([]mqtt.Message, 0, b.hold.limit)
	for range b.hold.limit {
		got = append(got, receive(t, gwGot, "request up to the limit"))
	}
	return got
}

// holdDevices connects n devices cam-00, cam-01, ... one after the other, each
// publishing its id as a request, and waits until b holds each publish (held:
// holdBroker's channel); it returns the publishes' tokens.
func holdDevices(t *testing.T, b *Broker, held <-chan struct{}, n int) []mqtt.Token {
	t.Helper()
	toks := make([]mqtt.Token, n)
	for i := range n {
		id := fmt.Sprintf("cam-%02d", i)
		dev, _ := holdClient(t, b, id, "")
		toks[i] = dev.Publish("sg/req/fashion/"+id, 1, false, id)
		waitHeld(t, held, id+"'s publish")
	}
	return toks
}

// TestEmbeddedBrokerHeldDeviceReconnects: when a device's connection is lost
// while the broker holds its request (a network failure; a device that gives up
// on its ping) and the device reconnects before the gateway has room, the held
// copy is not delivered, and the copy the device sends again (its persistent
// session, DUP set) is held in turn and delivered once the gateway has room:
// the gateway gets the request exactly once, and nothing is dropped. Two things
// keep the old copy back: the hook gives it up once its connection is closed
// (the session takeover closes it), and mochi delivers a QoS 1 publish only
// after writing its PUBACK, which fails on a closed connection. (Where the
// gateway gets room before the broker sees the connection gone, the old copy
// can be delivered too, as QoS 1 allows; the journal answers the second as a
// duplicate.) paho completes the first publish's token when it resends, so the
// device's token says nothing here.
func TestEmbeddedBrokerHeldDeviceReconnects(t *testing.T) {
	const filter = "sg/req/+/+"
	b, held := holdBroker(t, 8, filter, "sneakgate")
	_, gwGot := holdClient(t, b, "sneakgate", filter)
	filled := fillToLimit(t, b, gwGot)

	// The device reaches the broker through a proxy whose connections the test
	// can cut, as a network failure would: both ends see the connection end.
	proxy := cutProxy(t, b.Addr())
	dev, connected := reconnectingDevice(t, proxy, "cam-1")
	dev.Publish("sg/req/fashion/cam-1", 1, false, "r1")
	waitHeld(t, held, "the request")
	proxy.cut() // the network fails under the held request

	// The device reconnects and sends its request again; the broker holds that
	// copy too (the gateway is still at its limit).
	within(t, connected, "the device did not reconnect")
	waitHeld(t, held, "the request sent again after reconnecting")
	select {
	case m := <-gwGot:
		t.Fatalf("the gateway got %q while at its limit", m.Payload())
	default:
	}
	for _, m := range filled {
		m.Ack()
	}
	m := receive(t, gwGot, "the held request")
	if string(m.Payload()) != "r1" {
		t.Fatalf("the gateway got %q, want r1", m.Payload())
	}
	m.Ack()
	// A later request from the same device arrives after anything the broker
	// still had of r1: the gateway must get r2 next, not a second r1.
	dev.Publish("sg/req/fashion/cam-1", 1, false, "r2")
	if m := receive(t, gwGot, "the next request"); string(m.Payload()) != "r2" {
		t.Fatalf("after r1 the gateway got %q, want r2 (a second copy of the held request?)", m.Payload())
	}
	if d := b.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}
}

// tcpProxy forwards connections to a broker; cut ends every connection it
// carries, on both sides. While dropPubacks is set it leaves out the PUBACKs
// the broker sends (packets).
type tcpProxy struct {
	addr        string
	dropPubacks atomic.Bool
	mu          sync.Mutex
	conns       []net.Conn
}

// reconnectingDevice connects a device with a persistent session as id through
// proxy, reconnecting every 100-200 ms after a cut; connected receives once per
// connection (the first already taken).
func reconnectingDevice(t *testing.T, proxy *tcpProxy, id string) (mqtt.Client, <-chan struct{}) {
	t.Helper()
	connected := make(chan struct{}, 4)
	o := mqtt.NewClientOptions().AddBroker("tcp://" + proxy.addr).SetClientID(id).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetryInterval(100 * time.Millisecond).
		SetMaxReconnectInterval(200 * time.Millisecond).SetKeepAlive(30 * time.Second).
		SetOnConnectHandler(func(mqtt.Client) { connected <- struct{}{} })
	dev := mqtt.NewClient(o)
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { dev.Disconnect(50) })
	<-connected
	return dev, connected
}

// cutProxy starts a tcpProxy to target on a free loopback port, closed with the
// test.
func cutProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { p.packets(in, out); in.Close() }()
		}
	}()
	return p
}

func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
