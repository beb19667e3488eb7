package gateway

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// admission.ingress_bytes bounds the payload bytes queued for the handlers and
// in their hands, whatever the queue's length: a message that would go beyond
// it waits, unacknowledged, like one that finds the queue full, until a handler
// gives bytes back; one larger than the whole budget passes alone; a message
// waiting at shutdown is neither queued nor acknowledged and holds nothing.
func TestIngressBytesBoundPayloadsHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMetrics(nil)
		g := &Gateway{log: zerolog.Nop(), m: m, now: time.Now,
			in: make(chan arrival, 100), stopIngress: make(chan struct{}),
			inBytes: newIngressBudget(100, m.ingressBytes)}
		msg := func(n int) *fakeMessage { return newFakeMessage("sneakgate/req/fashion/d", make([]byte, n)) }
		// done is a handler finishing the next queued message.
		done := func() *fakeMessage {
			t.Helper()
			a := <-g.in
			g.inBytes.give(a.bytes)
			return a.msg.(*fakeMessage)
		}
		held := func(want float64) {
			t.Helper()
			if got := testutil.ToFloat64(m.ingressBytes); got != want {
				t.Fatalf("sneakgate_ingress_bytes %v, want %v", got, want)
			}
		}

		first := msg(60)
		g.onMessage(nil, first) // 60 of 100
		held(60)
		second := msg(60)
		handed := make(chan struct{})
		go func() { g.onMessage(nil, second); close(handed) }()
		synctest.Wait()
		select {
		case <-handed:
			t.Fatal("a message beyond admission.ingress_bytes was queued")
		default:
		}
		if got := testutil.ToFloat64(m.ingressWaits); got != 1 || g.ingressWaiting.Load() != 1 {
			t.Errorf("ingress_waits_total %v, waiting %d; want 1, 1", got, g.ingressWaiting.Load())
		}
		if done() != first {
			t.Fatal("the queue did not hold the first message")
		}
		<-handed
		held(60)
		if second.isAcked() {
			t.Error("a message acknowledged before a handler read it")
		}

		// Larger than the whole budget: it waits for every byte, then passes alone.
		big := msg(500)
		bigHanded := make(chan struct{})
		go func() { g.onMessage(nil, big); close(bigHanded) }()
		synctest.Wait()
		select {
		case <-bigHanded:
			t.Fatal("a message larger than the budget was queued beside another")
		default:
		}
		if done() != second {
			t.Fatal("the queue did not hold the second message")
		}
		<-bigHanded
		held(100)
		if done() != big {
			t.Fatal("the queue did not hold the big message")
		}
		held(0)

		// Shutdown while a message waits for bytes.
		g.onMessage(nil, msg(100))
		last := msg(10)
		returned := make(chan struct{})
		go func() { g.onMessage(nil, last); close(returned) }()
		synctest.Wait()
		close(g.stopIngress)
		<-returned
		held(100) // the queued one's; the waiting one took nothing
		if len(g.in) != 1 || last.isAcked() {
			t.Errorf("at shutdown: %d queued (want 1), waiting message acknowledged %v (want not)", len(g.in), last.isAcked())
		}
	})
}
