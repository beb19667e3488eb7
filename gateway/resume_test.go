package gateway

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/store"
)

// After a lost connection, nothing is published on the next one before paho
// has listed what its store holds to resend it (resume). paho 1.5.1 lets
// Publish through as soon as the connection is up: an answer published before
// the list was taken was in it, and resume sent it a second time under the
// same packet id (with DUP set while paho's writer was writing it: the data
// race that failed TestServesAcrossBrokerRestart under -race about once in ten
// loaded runs). Here resume is held up for a second before it lists the store
// (standing in for its goroutine not being scheduled), and an answer comes
// meanwhile: before, the broker received it twice (1 reused id); now it waits
// for its place until the list is taken, and goes out once.
func TestNothingPublishedBeforeTheResumeLists(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newHeldBroker()
		gate := newPubGate(8)
		var holdUp atomic.Bool
		gate.listing = func() {
			if holdUp.CompareAndSwap(true, false) {
				time.Sleep(time.Second)
			}
		}
		var e *egress
		o := mqtt.NewClientOptions().SetStore(gate).
			SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) { e.connectionLost() })
		c := heldClient(t, b, o)
		eo := defaultEgressOptions()
		eo.Gate = gate
		j := newFakeJournal()
		e = newEgress(c, j, 5*time.Second, 0, nil, eo, zerolog.Nop(), newMetrics(nil))
		t.Cleanup(func() { e.Stop(context.Background()); e.Close() })

		holdUp.Store(true)
		b.drop()
		synctest.Wait() // reconnected at once; resume held up before its list
		if _, dials := b.receivedOf(""); dials != 2 || !c.IsConnectionOpen() {
			t.Fatalf("%d connections, connected %v; want the second one up", dials, c.IsConnectionOpen())
		}
		k := store.Key{App: "a", Device: "d", ID: "meanwhile"}
		e.Answer(okAnswer(k, time.Now().Add(time.Hour)))
		synctest.Wait()
		time.Sleep(2 * time.Second) // resume lists the store and resends
		synctest.Wait()
		if received, _, _, dupes := b.counts(); received != 1 || dupes != 0 {
			t.Fatalf("the broker received %d publishes (%d under an id it already held); want the answer once", received, dupes)
		}
		b.ack(-1)
		synctest.Wait()
		if n := gate.inFlight(); n != 0 {
			t.Errorf("%d places held after the PUBACK, want 0", n)
		}
		j.locked(func() {
			if _, ok := j.outbox[k]; ok && j.unsent[k] {
				t.Errorf("the answer was kept unsent")
			}
		})
	})
}
