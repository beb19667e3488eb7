package gateway

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/rs/zerolog"

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

// loseOnRead is a journal that runs lose at the first OutboxEntry: the
// connection is lost while the flusher reads its chunk.
type loseOnRead struct {
	*fakeJournal
	once sync.Once
	lose func()
}

func (j *loseOnRead) OutboxEntry(k store.Key) (*store.OutboxEntry, error) {
	j.once.Do(j.lose)
	return j.fakeJournal.OutboxEntry(k)
}

// A chunk whose connection is lost after the flusher took its places, while it
// reads the chunk's replies, is left as it was: its unsent replies stay
// unsent, to be stamped when they go out, as the answer workers keep a batch
// whose connection was lost (sendPart). Before, the flusher wrote the whole
// chunk as sent, stamped now, and then could hand none of it over: the next
// connection got every one of those replies with the stamps of before the
// outage (deadline_met, slack_ms), however late, where one reply at a time it
// was one. Lost and back already (the places were taken on the connection
// lost), the chunk is not published either: until paho has listed its resends
// the gate has no place (pubGate.resuming).
func TestFlushKeepsAChunkUnsentWhenTheConnectionIsLost(t *testing.T) {
	for _, back := range []bool{false, true} {
		t.Run(fmt.Sprintf("back=%v", back), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const n = 3
				c := &fakeClient{}
				fj := newFakeJournal()
				t0 := time.Now()
				fj.entry = store.Entry{Received: t0, Deadline: t0.Add(time.Hour)}
				key := func(i int) store.Key { return store.Key{App: "a", Device: "d", ID: fmt.Sprint(i)} }
				for i := range n {
					if err := fj.OutboxUnsent(key(i), []byte(`{"v":1,"id":"`+key(i).ID+`","app":"a","device":"d","status":"ok","class":1}`), t0.Add(time.Hour)); err != nil {
						t.Fatal(err)
					}
				}
				var e *egress
				j := &loseOnRead{fakeJournal: fj, lose: func() {
					c.setDown(true)
					e.connectionLost()
					if back {
						c.setDown(false)
					}
				}}
				e = newEgress(c, j, time.Minute, 0, nil, defaultEgressOptions(), zerolog.Nop(), newMetrics(nil))
				t.Cleanup(func() {
					e.Stop(context.Background())
					e.Close()
				})
				e.flush(t.Context())
				if got := c.sent(); len(got) != 0 {
					t.Errorf("published %q, want nothing", got)
				}
				fj.locked(func() {
					if len(fj.unsent) != n || len(fj.outboxAlls) != 0 {
						t.Errorf("%d of %d replies still unsent, OutboxAll calls of %v items; want all unsent, none written", len(fj.unsent), n, fj.outboxAlls)
					}
				})
				if p := e.gate.inFlight(); p != 0 {
					t.Errorf("%d places held after the flush, want 0", p)
				}
				for i := range n {
					if e.isBusy(key(i)) {
						t.Errorf("key %d still claimed", i)
					}
				}
			})
		})
	}
}

// A cap too large to bind (mqtt.flush_rate accepts any rate from 0.01 up,
// .inf included) flushes in full chunks, as no cap (0) does. Before, the
// chunk's size was the rate's tenth converted to an int, which for a rate past
// about 9.2e19 is out of range (on amd64, the most negative int): chunks of
// one reply, each awaited before the next, the slow drain the chunks are for.
func TestFlushHugeRateIsChunked(t *testing.T) {
	for _, rate := range []float64{math.Inf(1), 1e300} {
		t.Run(fmt.Sprint(rate), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const n = 4
				var held []*fakeToken
				for range n {
					held = append(held, &fakeToken{done: make(chan struct{})})
				}
				c := &fakeClient{tokens: append([]*fakeToken(nil), held...)}
				j := newFakeJournal()
				for i := range n {
					k := store.Key{App: "a", Device: "d", ID: fmt.Sprint(i)}
					j.outbox[k] = []byte(`{"v":1,"id":"` + k.ID + `","app":"a","device":"d","status":"ok"}`)
				}
				e := startEgress(t, c, j, time.Minute, rate, defaultEgressOptions(), newMetrics(nil))
				done := make(chan struct{})
				go func() { e.flush(t.Context()); close(done) }()
				synctest.Wait() // every PUBACK is held
				if got := len(c.sent()); got != n {
					t.Errorf("handed over %d replies before any PUBACK, want all %d", got, n)
				}
				for _, h := range held {
					close(h.done)
				}
				<-done
			})
		})
	}
}
