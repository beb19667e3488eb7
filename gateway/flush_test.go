package gateway

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/sneakgate/sneakgate/store"
)

// The flusher skips the replies being published (their keys busy: an answer
// worker's, or a late PUBACK awaited) without taking a place at the gate for
// them, as it did one reply at a time: with every place taken, a flush with
// nothing to publish neither waits for a PUBACK nor counts a wait. The chunked
// flusher (8fcc14c) took a place before it looked at the keys, so it waited for
// a PUBACK for each chunk of busy replies (a serving gateway's outbox is mostly
// those, and the gate is full exactly when PUBACKs are slow), counted each wait
// in sneakgate_mqtt_publish_waits_total, and took the places freed meanwhile
// from the answers waiting for them, only to give them back.
func TestFlushTakesNoPlaceForRepliesInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate, c, o := gatedOnePlace()
		var waits atomic.Int64
		gate.waited = func() { waits.Add(1) }
		gate.Put("o.1", packets.NewControlPacket(packets.Publish)) // the one place: a publish awaiting its PUBACK
		j := newFakeJournal()
		e := startEgress(t, c, j, time.Minute, 0, o, newMetrics(nil))
		key := func(i int) store.Key { return store.Key{App: "a", Device: "d", ID: fmt.Sprint(i)} }
		for i := range 3 {
			j.outbox[key(i)] = []byte(`{"v":1,"id":"` + key(i).ID + `","app":"a","device":"d","status":"ok"}`)
			e.claim(key(i)) // in flight
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { e.flush(ctx); close(done) }()
		synctest.Wait()
		select {
		case <-done:
		default:
			t.Error("with every reply in flight and every place taken, the flusher waits for a place")
		}
		cancel()
		<-done
		if n := waits.Load(); n != 0 {
			t.Errorf("%d publish waits counted for a flush with nothing to publish, want 0", n)
		}
		if n := len(c.sent()); n != 0 {
			t.Errorf("published %d, want 0", n)
		}

		// A free reply among busy ones still goes out once a place frees.
		j.locked(func() { j.outbox[key(3)] = []byte(`{"v":1,"id":"3","app":"a","device":"d","status":"ok"}`) })
		e.release(key(1))
		done = make(chan struct{})
		go func() { e.flush(t.Context()); close(done) }()
		synctest.Wait() // waiting for a place: key 1 is free
		gate.Del("o.1")
		synctest.Wait()
		gate.Del(c.heldKey(0)) // key 1's PUBACK frees the place for key 3
		<-done
		gate.Del(c.heldKey(1)) // key 3's PUBACK
		if got := c.sent(); len(got) != 2 {
			t.Errorf("published %q, want keys 1 and 3", got)
		}
		if n := gate.inFlight(); n != 0 {
			t.Errorf("%d places held after the flush, want 0", n)
		}
	})
}
