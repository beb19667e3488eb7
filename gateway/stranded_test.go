package gateway

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// strandedSetup is a real paho client (5 s write timeout) through brokerConns
// to b, an egress over it with a gate of 8 places and a 5 s publish timeout,
// told of lost connections as the gateway's is, and allowed to drop them.
func strandedSetup(t *testing.T, b *heldBroker) (mqtt.Client, *pubGate, *egress, *metrics, *fakeJournal) {
	t.Helper()
	gate := newPubGate(8)
	var conns brokerConns
	var e *egress
	o := mqtt.NewClientOptions().SetStore(gate).SetCustomOpenConnectionFn(conns.opener(b.dial)).
		SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) { e.connectionLost() })
	c := heldClient(t, b, o)
	m := newMetrics(nil)
	eo := defaultEgressOptions()
	eo.Gate = gate
	j := newFakeJournal()
	e = newEgress(c, j, 5*time.Second, 0, nil, eo, zerolog.Nop(), m)
	e.reconnect = conns.fail
	t.Cleanup(func() { e.Stop(context.Background()); e.Close() })
	return c, gate, e, m, j
}

// strand makes paho's writer wait on a server that has stopped reading, long
// enough that the publishes started by queue, each waiting behind two others,
// fail with paho's "publish was broken by timeout" (its write timeout, 5 s) while
// no single write takes that long, so that the connection stays up. It returns
// when they have failed and the server reads again, 6.5 s later, with every
// filler it published acknowledged.
func strand(t *testing.T, b *heldBroker, c mqtt.Client, queue ...func()) {
	t.Helper()
	b.stopReading()
	c.Publish("fill", 1, false, []byte("fill1")) // read: then the server stops
	c.Publish("fill", 1, false, []byte("fill2")) // the writer blocks on it
	synctest.Wait()
	time.Sleep(time.Second)
	for _, p := range []string{"fill3", "fill4"} { // one for the writer, one in paho's hand-over
		go c.Publish("fill", 1, false, []byte(p))
		synctest.Wait()
	}
	for _, q := range queue { // behind them
		go q()
		synctest.Wait()
	}
	time.Sleep(3500 * time.Millisecond)
	b.readOne() // fill2 written (4.5 s): the writer takes fill3 and blocks again
	synctest.Wait()
	time.Sleep(2 * time.Second) // 6.5 s: the queued publishes failed at 6 s
	b.resumeReading()
	synctest.Wait()
	b.ack(-1)
	synctest.Wait()
}

// A publish that paho fails because its writer did not take it within the
// write timeout keeps its packet id and stored packet, unsent, until a later
// connection resends it (paho 1.5.1 client.go line 830). On a connection that
// stays up, a reply to a request that is not journaled was then never sent and
// its request never acknowledged, and both places stayed held for good (before:
// after ten minutes the broker had not received the owed reply, the gate held
// 2 places, one connection). Now, once the broker has acknowledged nothing for
// the publish timeout, the egress drops the connection; the next one resends
// both, and their PUBACKs free the places.
func TestStrandedPublishesRenewTheConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newHeldBroker()
		c, gate, e, m, j := strandedSetup(t, b)
		var acked atomic.Bool
		owed := &protocol.Reply{V: 1, ID: "owed", App: "a", Device: "d", Status: protocol.StatusRejected, Reason: protocol.ReasonOverload}
		owedPayload, _ := owed.Marshal()
		k := store.Key{App: "a", Device: "d", ID: "answer"}
		strand(t, b, c,
			func() { e.Owe("t", owed, func() { acked.Store(true) }) },
			func() { e.Answer(okAnswer(k, time.Now().Add(time.Hour))) })
		if f := testutil.ToFloat64(m.publishFails); f != 2 {
			t.Fatalf("publish failures %v, want 2 (the owed reply and the answer broken by paho's write timeout)", f)
		}
		var answer string
		j.locked(func() { answer = string(j.outbox[k]) })
		if n, _ := b.receivedOf(string(owedPayload)); n != 0 || !c.IsConnectionOpen() || gate.inFlight() != 2 {
			t.Fatalf("after the timeouts: the owed reply received %d times, connected %v, %d places held; want 0, true, 2",
				n, c.IsConnectionOpen(), gate.inFlight())
		}

		// The broker acknowledged its last publish at 6.5 s: nothing more until
		// 11.5 s, then the connection is renewed.
		time.Sleep(4900 * time.Millisecond)
		synctest.Wait()
		if _, dials := b.receivedOf(""); dials != 1 {
			t.Fatalf("connection renewed before the publish timeout passed without a PUBACK (%d connections)", dials)
		}
		time.Sleep(3 * time.Second) // past 11.5 s, and paho's reconnection delay
		synctest.Wait()
		b.ack(-1)
		synctest.Wait()
		no, dials := b.receivedOf(string(owedPayload))
		na, _ := b.receivedOf(answer)
		if dials != 2 || no != 1 || na != 1 {
			t.Errorf("after the renewal: %d connections, the owed reply received %d times, the answer %d; want 2, 1, 1", dials, no, na)
		}
		if n := gate.inFlight(); n != 0 {
			t.Errorf("%d places held after the resent publishes were acknowledged, want 0", n)
		}
		if r := testutil.ToFloat64(m.strandedReconnects); r != 1 {
			t.Errorf("stranded_reconnects_total = %v, want 1", r)
		}
		if acked.Load() {
			// Its acknowledgement would go to the lost connection: the broker
			// delivers the request again instead.
			t.Error("the owed reply's request was acknowledged")
		}
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if _, dials := b.receivedOf(""); dials != 2 {
			t.Errorf("%d connections after ten quiet minutes, want 2", dials)
		}
	})
}

// While the broker keeps acknowledging other publishes, a stranded one does
// not renew the connection at once (each renewal resends everything in
// flight), but at the latest strandedLimit publish timeouts after it.
func TestStrandedPublishRenewsAtTheLatestAfterTheLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newHeldBroker()
		c, gate, e, _, _ := strandedSetup(t, b)
		strand(t, b, c, func() { e.SendRaw("t", "a", protocol.StatusOK, []byte("raw")) })
		if gate.inFlight() != 1 {
			t.Fatalf("%d places held after the timeout, want 1", gate.inFlight())
		}
		limit := strandedLimit * e.timeout
		for start := time.Now(); time.Since(start) < limit-7*time.Second; { // stranded at 6 s, 0.5 s before start
			c.Publish("busy", 1, false, []byte("busy"))
			synctest.Wait()
			b.ack(-1)
			time.Sleep(2 * time.Second)
			synctest.Wait()
		}
		if n, dials := b.receivedOf("raw"); dials != 1 || n != 0 {
			t.Fatalf("renewed before the limit while the broker acknowledged (%d connections, raw received %d times)", dials, n)
		}
		time.Sleep(5 * time.Second) // past the limit, and paho's reconnection delay
		synctest.Wait()
		b.ack(-1)
		synctest.Wait()
		if n, dials := b.receivedOf("raw"); dials != 2 || n != 1 || gate.inFlight() != 0 {
			t.Errorf("after the limit: %d connections, raw received %d times, %d places held; want 2, 1, 0", dials, n, gate.inFlight())
		}
	})
}

// strandToken is a failed publish's token with its packet id.
type strandToken struct {
	mqtt.Token
	id uint16
}

func (s strandToken) MessageID() uint16 { return s.id }

// Only a packet paho still stores, stored on the connection that is still up,
// is stranded; a PUBACK since (any place freed) moves the quiet deadline, the
// limit does not move; a lost connection or the packet's own PUBACK clears it.
func TestStrandedDue(t *testing.T) {
	now := time.Unix(1000, 0)
	gate := newPubGate(8)
	gate.now = func() time.Time { return now }
	gate.Open()
	put := func(id int) { gate.Put(fmt.Sprintf("o.%d", id), packets.NewControlPacket(packets.Publish)) }
	quiet, limit := 5*time.Second, time.Minute
	put(1)
	put(2)
	put(3)
	gate.strand(strandToken{id: 9}) // not stored
	gate.strand(strandToken{id: 0}) // no id taken
	if _, n := gate.strandedDue(quiet, limit); n != 0 {
		t.Fatalf("%d stranded, want 0", n)
	}
	gate.strand(strandToken{id: 1})
	due, n := gate.strandedDue(quiet, limit)
	if n != 1 || !due.Equal(now.Add(quiet)) {
		t.Fatalf("due %v with %d stranded, want %v with 1", due, n, now.Add(quiet))
	}
	strandedAt := now
	now = now.Add(4 * time.Second)
	gate.Del("o.2")                 // a PUBACK
	gate.strand(strandToken{id: 1}) // told twice: still stranded since the first time
	if due, _ := gate.strandedDue(quiet, limit); !due.Equal(now.Add(quiet)) {
		t.Errorf("after a PUBACK: due %v, want %v", due, now.Add(quiet))
	}
	now = strandedAt.Add(limit - time.Second)
	gate.Del("o.3")
	if due, _ := gate.strandedDue(quiet, limit); !due.Equal(strandedAt.Add(limit)) {
		t.Errorf("a PUBACK near the limit: due %v, want the limit %v", due, strandedAt.Add(limit))
	}
	gate.interrupt() // the next connection resends it
	if _, n := gate.strandedDue(quiet, limit); n != 0 {
		t.Errorf("%d stranded after the connection was lost, want 0", n)
	}
	gate.strand(strandToken{id: 1}) // stored on the lost connection: resent by the next
	if _, n := gate.strandedDue(quiet, limit); n != 0 {
		t.Errorf("a packet of a lost connection stranded")
	}
	put(4)
	gate.strand(strandToken{id: 4})
	gate.Del("o.4")
	if _, n := gate.strandedDue(quiet, limit); n != 0 || gate.inFlight() != 1 {
		t.Errorf("after its PUBACK: %d stranded, %d places held; want 0, 1", n, gate.inFlight())
	}
}
