package gateway

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// A journaled answer handed to the broker, whose PUBACK has not come when the
// connection drops, is resent by paho on the next connection (persistent
// session). paho 1.5.1 resume (client.go line 1118, messageids.go claimID line
// 97) gives the resend a new token and completes the publisher's old token
// WITHOUT an error. finishAnswer took that for the broker's PUBACK: the
// request was completed in the journal (left the outbox) and counted in
// sneakgate_replies_total while the broker had acknowledged nothing; had the
// gateway then stopped or been killed before the resend's PUBACK, the reply
// was gone (paho's memory store dies with the process). Now the request stays
// in the outbox until the resend's PUBACK, and is completed then.
func TestAnswerNotCompletedBeforeResendIsAcked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newHeldBroker()
		_, gate, e, m, j := strandedSetup(t, b)
		k := store.Key{App: "a", Device: "d", ID: "1"}
		e.Answer(okAnswer(k, time.Now().Add(time.Hour)))
		synctest.Wait()
		if got, held, _, _ := b.counts(); got != 1 || held != 1 {
			t.Fatalf("broker received %d, holds %d; want 1, 1", got, held)
		}
		time.Sleep(time.Second) // within the 5 s publish timeout
		b.drop()                // the connection fails; the broker never acknowledged
		time.Sleep(2 * time.Second)
		synctest.Wait()
		got, held, _, _ := b.counts()
		_, dials := b.receivedOf("")
		if dials != 2 || got != 2 {
			t.Fatalf("connections %d, publishes received %d; want 2, 2 (the answer resent on the second connection)", dials, got)
		}
		completed, inOutbox := j.state(k)
		if len(completed) != 0 || !inOutbox {
			t.Errorf("the broker acknowledged nothing (it holds %d publishes, paho stores %d), yet the request was completed in the journal: completed %v, still in outbox %v", held, gate.inFlight(), completed, inOutbox)
		}
		if n := testutil.ToFloat64(m.replies.WithLabelValues("_unknown", "ok")); n != 0 {
			t.Errorf("sneakgate_replies_total counted %v replies the broker never acknowledged", n)
		}
		if !e.isBusy(k) {
			t.Error("the resent answer's key is not busy: the flusher may publish another copy")
		}

		b.ack(-1) // the resend's PUBACK (within the publish timeout)
		time.Sleep(time.Second)
		synctest.Wait()
		completed, inOutbox = j.state(k)
		if len(completed) != 1 || inOutbox || e.isBusy(k) {
			t.Errorf("after the resend's PUBACK: completed %v, in outbox %v, busy %v; want the request completed", completed, inOutbox, e.isBusy(k))
		}
		if n := testutil.ToFloat64(m.replies.WithLabelValues("_unknown", "ok")); n != 1 {
			t.Errorf("sneakgate_replies_total = %v after the resend's PUBACK, want 1", n)
		}
		if f := testutil.ToFloat64(m.publishFails); f != 0 {
			t.Errorf("publish failures %v, want 0 (acknowledged within the publish timeout)", f)
		}
	})
}

// The awaitLate path: the broker is slow, the answer's PUBACK misses the
// publish timeout (errPublishTimeout: the key stays busy, the reply in the
// outbox, awaitLate waits for the token). The connection then fails and paho
// resends the reply on the next one, completing the old token without an
// error: awaitLate completed the request (and counted the reply) although the
// broker had acknowledged neither copy, and a stop that gave up on the broker
// (mqtt.shutdown_timeout) left nothing in the outbox for the next start.
func TestLateAnswerNotCompletedOnResend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newHeldBroker()
		_, _, e, m, j := strandedSetup(t, b)
		k := store.Key{App: "a", Device: "d", ID: "1"}
		e.Answer(okAnswer(k, time.Now().Add(time.Hour)))
		time.Sleep(6 * time.Second) // past the 5 s publish timeout, no PUBACK
		synctest.Wait()
		if !e.isBusy(k) {
			t.Fatal("the timed-out answer is not awaited (awaitLate)")
		}
		b.drop() // the connection fails; paho resends on the next one
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got, _, _, _ := b.counts(); got != 2 {
			t.Fatalf("publishes received %d, want 2 (the answer resent)", got)
		}
		e.giveUp()
		e.Stop(context.Background()) // Close follows in the setup's cleanup
		completed, inOutbox := j.state(k)
		if !inOutbox {
			t.Errorf("after the stop the outbox does not hold the answer (completed %v): the next start has nothing to publish, and the broker never acknowledged it", completed)
		}
		if n := testutil.ToFloat64(m.replies.WithLabelValues("_unknown", "ok")); n != 0 {
			t.Errorf("sneakgate_replies_total counted %v replies the broker never acknowledged", n)
		}
	})
}

// The same late answer, whose resend the broker then acknowledges: awaitLate
// completes the request and counts the reply once the resend's PUBACK came,
// not before.
func TestLateAnswerCompletedOnResendAck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newHeldBroker()
		_, gate, e, m, j := strandedSetup(t, b)
		k := store.Key{App: "a", Device: "d", ID: "1"}
		e.Answer(okAnswer(k, time.Now().Add(time.Hour)))
		time.Sleep(6 * time.Second)
		synctest.Wait()
		b.drop()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		completed, _ := j.state(k)
		if len(completed) != 0 || !e.isBusy(k) {
			t.Fatalf("before any PUBACK: completed %v, busy %v; want none, true", completed, e.isBusy(k))
		}
		b.ack(-1)
		time.Sleep(time.Second)
		synctest.Wait()
		completed, inOutbox := j.state(k)
		if len(completed) != 1 || inOutbox || e.isBusy(k) {
			t.Errorf("after the resend's PUBACK: completed %v, in outbox %v, busy %v; want the request completed", completed, inOutbox, e.isBusy(k))
		}
		if n := testutil.ToFloat64(m.replies.WithLabelValues("_unknown", "ok")); n != 1 {
			t.Errorf("sneakgate_replies_total = %v, want 1", n)
		}
		if n := gate.inFlight(); n != 0 {
			t.Errorf("%d places held after the PUBACKs, want 0", n)
		}
	})
}

// A reply to a request that is not journaled, resent by paho on the next
// connection: the owed waiter counted it (and acknowledged its request) when
// paho completed its token for the resend, before any PUBACK. Now it waits
// for the resend's PUBACK; until then the reply counts as in flight.
func TestOwedReplyNotCountedBeforeResendIsAcked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newHeldBroker()
		_, _, e, m, _ := strandedSetup(t, b)
		var acked atomic.Bool
		rep := &protocol.Reply{V: 1, ID: "owed", App: "a", Device: "d", Status: protocol.StatusRejected, Reason: protocol.ReasonOverload}
		if err := e.Owe("t", rep, func() { acked.Store(true) }); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		time.Sleep(time.Second)
		b.drop()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got, _, _, _ := b.counts(); got != 2 {
			t.Fatalf("publishes received %d, want 2 (the reply resent)", got)
		}
		status := string(protocol.StatusRejected)
		if acked.Load() {
			t.Error("the request was acknowledged before the broker acknowledged its reply")
		}
		if n := testutil.ToFloat64(m.replies.WithLabelValues("_unknown", status)); n != 0 {
			t.Errorf("sneakgate_replies_total counted %v replies the broker never acknowledged", n)
		}
		if n := testutil.ToFloat64(m.owed); n != 1 {
			t.Errorf("unjournaled replies in flight %v, want 1", n)
		}
		b.ack(-1)
		time.Sleep(time.Second)
		synctest.Wait()
		if !acked.Load() {
			t.Error("the request was not acknowledged after the resend's PUBACK")
		}
		if n := testutil.ToFloat64(m.replies.WithLabelValues("_unknown", status)); n != 1 {
			t.Errorf("sneakgate_replies_total = %v after the resend's PUBACK, want 1", n)
		}
		if n := testutil.ToFloat64(m.owed); n != 0 {
			t.Errorf("unjournaled replies in flight %v, want 0", n)
		}
	})
}

// idToken is a token with a packet id.
type idToken struct {
	mqtt.Token
	id uint16
}

func (t idToken) MessageID() uint16 { return t.id }

// pubGate.stores: a publish is stored while its packet id is, with its
// payload; not once deleted, nor when its id was taken again by another
// packet; still while the store is closed (a disconnection keeps it).
func TestPubGateStoresResentPublish(t *testing.T) {
	g := newPubGate(8)
	g.Open()
	put := func(id uint16, payload string) {
		p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		p.Qos, p.MessageID, p.TopicName, p.Payload = 1, id, "t", []byte(payload)
		g.Put(outboundKey(id), p)
	}
	tok := idToken{id: 5}
	if g.stores(tok, []byte("a")) {
		t.Error("stores a publish never stored")
	}
	put(5, "a")
	if !g.stores(tok, []byte("a")) {
		t.Error("does not store a stored publish")
	}
	if g.stores(tok, []byte("b")) || g.stores(idToken{id: 6}, []byte("a")) || g.stores(idToken{}, []byte("a")) {
		t.Error("stores another payload, another id, or id 0")
	}
	g.Close()
	if !g.stores(tok, []byte("a")) {
		t.Error("a closed store does not keep the publish")
	}
	g.Open()
	g.Del(outboundKey(5))
	if g.stores(tok, []byte("a")) {
		t.Error("stores a deleted publish")
	}
	put(5, "b") // the id taken again
	if g.stores(tok, []byte("a")) {
		t.Error("takes another publish under the same id for the first")
	}
	g.Del(outboundKey(5))
	s := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
	s.MessageID, s.Topics, s.Qoss = 5, []string{"t"}, []byte{1}
	g.Put(outboundKey(5), s)
	if g.stores(tok, []byte("a")) {
		t.Error("takes a subscription under the same id for the publish")
	}
}
