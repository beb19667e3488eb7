package gateway

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

const (
	// defaultMaxInflightPublishes is mqtt.max_inflight_publishes' default: a
	// quarter of paho's packet ids, three times the most replies to requests that
	// are not journaled measured in flight (5,265, TestOverload5x's capacity
	// burst, docs/reliability.md).
	defaultMaxInflightPublishes = 16384
	// maxInflightPublishes is the most it may be: paho's 65,535 packet ids, less
	// some for the retained status and the subscription, which do not wait at
	// the gate.
	maxInflightPublishes = 65000
)

// pubGate bounds the MQTT packet ids the gateway's client holds. paho gives
// every QoS 1 publish (and subscription) a 16-bit packet id, holds it until the
// broker acknowledges the packet, and once all 65,535 are held fails every
// further Publish at once with "no message IDs available" (paho 1.5.1,
// messageids.go getID, client.go Publish; TestPahoRunsOutOfMessageIDs): the
// reply is not sent. The gate is the client's Store, so it sees exactly what
// holds an id: paho stores each outbound packet under "o.{id}" when it takes
// the id and deletes it when the broker acknowledges it, across reconnects
// (the persistent session resends what is stored, under the same id). A
// publisher acquires a place before it calls Publish and leaves once Publish
// has returned (entered); places are the stored packets plus the publishes
// between acquire and entered, at most limit.
//
// Waiting for a place waits for PUBACKs, which paho reads on the connection
// behind the request messages it delivers: nothing that the MQTT client's
// message handler waits for may wait here (egress.Owe never does). A wait ends
// without a place when the gate is closed (errStopping), when the connection is
// lost (interrupt: errNotConnected; the places held then free only once a later
// connection's resends are acknowledged) or when the waiter's context ends.
//
// A publish that paho fails without sending it (its write timeout: client.go
// line 830, "publish was broken by timeout") keeps its id and stored packet
// until a later connection resends it. The gate keeps those apart (strand), so
// that the egress can have the connection renewed (stranded.go).
//
// After a lost connection the gate has no place until paho, on the next
// connection, has listed what its store holds to resend it (resume calls All
// once the connection is up: client.go reconnect and resume). paho 1.5.1 lets
// Publish through as soon as the connection is up, before that list is taken:
// a publish in between was in the list, so resume sent it a second time (DUP,
// the same packet id), claimed its id again for a token of its own (completing
// the publisher's token before any PUBACK) and set its DUP flag while the
// writer was writing it (a data race; paho issue 703). On the first connection
// the gateway waits for Connect's token instead (brokerLink.resumed).
type pubGate struct {
	inner mqtt.Store
	limit int
	// waited, if set, is called each time a publish finds the gate full.
	waited func()
	// now is the clock of stranded and freed (time.Now).
	now func() time.Time
	// strandKick (size 1) is signalled when a packet is stranded.
	strandKick chan struct{}

	mu       sync.Mutex
	room     sync.Cond
	opened   bool
	keys     map[string]uint64 // outbound packets stored, with lost when they were stored
	entering int               // acquired, Publish not returned yet
	closed   bool
	lost     uint64 // interrupts so far
	// resuming is set when the connection is lost (interrupt) and cleared once
	// paho has listed the store for its resends on the next connection (All):
	// meanwhile the gate is full. resumed is closed when resuming is cleared.
	resuming bool
	resumed  chan struct{}
	// listing, if set, is called at the start of each All (tests).
	listing func()
	// stranded are the stored packets whose publish failed on the connection
	// that is still up, with when the gate was told (strand); freed is when a
	// PUBACK last freed a place (the broker's progress).
	stranded map[string]time.Time
	freed    time.Time
	// delNote, made by a waiter (deletion), is closed and dropped by the next
	// Del that frees a place, or Reset: the resend's PUBACK an egress waits for
	// (egress.awaitAcked). Nil without waiters, so a PUBACK costs nothing more.
	delNote chan struct{}
}

func newPubGate(limit int) *pubGate {
	g := &pubGate{inner: mqtt.NewMemoryStore(), limit: max(limit, 1), keys: map[string]uint64{},
		now: time.Now, strandKick: make(chan struct{}, 1), stranded: map[string]time.Time{},
		resumed: make(chan struct{})}
	close(g.resumed)
	g.room.L = &g.mu
	return g
}

// inFlight is how many packet ids the client holds for outbound packets (plus
// publishes entering).
func (g *pubGate) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.keys) + g.entering
}

func (g *pubGate) full() bool { return g.resuming || len(g.keys)+g.entering >= g.limit }

// awaitResume waits until no resend list is awaited (see resuming), or ctx ends
// (false).
func (g *pubGate) awaitResume(ctx context.Context) bool {
	g.mu.Lock()
	ch := g.resumed
	g.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// generation numbers the connections lost so far (interrupt). A publisher
// reads it before it checks that the client is connected and passes it to
// acquire: a connection lost in between ends the wait at once, instead of a
// wait for places that free only once a later connection's resends are
// acknowledged.
func (g *pubGate) generation() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lost
}

// acquire waits for a place and takes it (see pubGate for the errors);
// errNotConnected also when the connection was lost since gen (generation). A
// wait is counted (waited) when count is set.
func (g *pubGate) acquire(ctx context.Context, count bool, gen uint64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.wait(ctx, count, gen); err != nil {
		return err
	}
	g.entering++
	return nil
}

// wait waits, g.mu held, until a place is free, or the wait ends without one.
func (g *pubGate) wait(ctx context.Context, count bool, gen uint64) error {
	if !g.closed && g.full() && g.lost == gen {
		if count && g.waited != nil {
			g.waited()
		}
		if ctx.Done() != nil {
			defer context.AfterFunc(ctx, func() {
				g.mu.Lock() // not before this waiter waits: it holds mu until then
				g.mu.Unlock()
				g.room.Broadcast()
			})()
		}
	}
	for !g.closed && g.full() && g.lost == gen && ctx.Err() == nil {
		g.room.Wait()
	}
	switch {
	case g.closed:
		return errStopping
	case g.lost != gen:
		return errNotConnected
	case !g.full():
		return nil
	}
	return ctx.Err()
}

// interrupt ends the waits in progress (errNotConnected): the connection was
// lost, and the places they wait for free only once a later connection has
// resent what the client holds and the broker has acknowledged it.
// What was stranded is not any more: the next connection resends it. Until
// that connection has listed what it resends (All), the gate is full.
func (g *pubGate) interrupt() {
	g.mu.Lock()
	g.lost++
	clear(g.stranded)
	if !g.resuming {
		g.resuming, g.resumed = true, make(chan struct{})
	}
	g.mu.Unlock()
	g.room.Broadcast()
}

// strand is told of a publish whose token completed with an error. If paho
// still stores its packet, stored on the connection that is still up, the
// packet was not sent and will not be on this connection (paho resends only
// when a session resumes): it is stranded, holding its place and packet id
// until the next connection resends it and the broker acknowledges it. A
// failure on a connection since lost, or one that took no packet id (not
// connected, no id available), is not.
func (g *pubGate) strand(t mqtt.Token) {
	pt, ok := t.(interface{ MessageID() uint16 })
	if !ok || pt.MessageID() == 0 {
		return
	}
	k := fmt.Sprintf("o.%d", pt.MessageID()) // paho's outboundKeyFromMID
	g.mu.Lock()
	on, stored := g.keys[k]
	added := false
	if _, was := g.stranded[k]; stored && on == g.lost && !was {
		g.stranded[k], added = g.now(), true
	}
	g.mu.Unlock()
	if added {
		select {
		case g.strandKick <- struct{}{}:
		default:
		}
	}
}

// strandedDue says how many packets are stranded (strand) and when they call
// for a new connection: quiet after the later of the oldest one's stranding
// and the last PUBACK that freed a place (the broker has acknowledged nothing
// since), and at the latest limit after the oldest one's stranding.
func (g *pubGate) strandedDue(quiet, limit time.Duration) (due time.Time, n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var oldest time.Time
	for _, at := range g.stranded {
		if oldest.IsZero() || at.Before(oldest) {
			oldest = at
		}
	}
	if len(g.stranded) == 0 {
		return time.Time{}, 0
	}
	from := oldest
	if g.freed.After(from) {
		from = g.freed
	}
	due = from.Add(quiet)
	if capped := oldest.Add(limit); capped.Before(due) {
		due = capped
	}
	return due, len(g.stranded)
}

// tryAcquire takes up to n places, those free now, and says how many it took.
func (g *pubGate) tryAcquire(n int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0
	}
	if g.resuming {
		return 0
	}
	took := max(min(n, g.limit-len(g.keys)-g.entering), 0)
	g.entering += took
	return took
}

// entered gives back the place of a publish that returned: what it stored
// (if anything) holds a place of its own from then on.
func (g *pubGate) entered() {
	g.mu.Lock()
	g.entering--
	g.mu.Unlock()
	g.room.Signal()
}

// close fails every acquire from then on, waiting ones included.
func (g *pubGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.room.Broadcast()
}

// The mqtt.Store methods: paho's own MemoryStore, counted.

func (g *pubGate) Open() {
	g.inner.Open()
	g.mu.Lock()
	g.opened = true
	g.mu.Unlock()
}

func (g *pubGate) Put(key string, p packets.ControlPacket) {
	g.inner.Put(key, p)
	if !strings.HasPrefix(key, "o.") {
		return
	}
	g.mu.Lock()
	if g.opened { // MemoryStore ignores a Put while closed
		g.keys[key] = g.lost
	}
	g.mu.Unlock()
}

// Get gives paho a stored publish as a copy of its own: paho's resume sets
// the DUP flag on what Get returns (client.go line 1114) while a writer may
// still be writing the stored packet, one queued to the outgoing channel
// before the connection dropped and taken by the next connection's writer (a
// data race; paho issue 703). The copy reads only the fields a writer does not
// write (PublishPacket.Write sets RemainingLength) and shares the payload, so a
// resend costs one small allocation. Other packets are returned as stored.
func (g *pubGate) Get(key string) packets.ControlPacket {
	p := g.inner.Get(key)
	pub, ok := p.(*packets.PublishPacket)
	if !ok {
		return p
	}
	c := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	c.Dup, c.Qos, c.Retain = pub.Dup, pub.Qos, pub.Retain
	c.TopicName, c.MessageID, c.Payload = pub.TopicName, pub.MessageID, pub.Payload
	return c
}

// All is paho's list of what it resends on a new connection (resume; also
// Connect, before the first): once taken, publishing is safe again.
func (g *pubGate) All() []string {
	if g.listing != nil {
		g.listing()
	}
	keys := g.inner.All()
	g.mu.Lock()
	wake := g.resuming
	if wake {
		g.resuming = false
		close(g.resumed)
	}
	g.mu.Unlock()
	if wake {
		g.room.Broadcast()
	}
	return keys
}

func (g *pubGate) Del(key string) {
	g.inner.Del(key)
	g.mu.Lock()
	_, freed := g.keys[key]
	freed = freed && g.opened
	if freed {
		delete(g.keys, key)
		delete(g.stranded, key)
		g.freed = g.now()
		g.noteDeletion()
	}
	g.mu.Unlock()
	if freed {
		g.room.Signal()
	}
}

// deletion returns a channel closed when a stored outbound packet is next
// deleted (a PUBACK) or the store reset. Take it before looking at the store,
// so that a deletion in between is not missed.
func (g *pubGate) deletion() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.delNote == nil {
		g.delNote = make(chan struct{})
	}
	return g.delNote
}

// noteDeletion wakes the deletion waiters; g.mu is held.
func (g *pubGate) noteDeletion() {
	if g.delNote != nil {
		close(g.delNote)
		g.delNote = nil
	}
}

func (g *pubGate) Close() {
	g.inner.Close()
	g.mu.Lock()
	g.opened = false // MemoryStore keeps its packets for the next Open
	g.mu.Unlock()
}

func (g *pubGate) Reset() {
	g.inner.Reset()
	g.mu.Lock()
	clear(g.keys)
	clear(g.stranded)
	g.noteDeletion()
	g.mu.Unlock()
	g.room.Broadcast()
}

// stores reports whether the MQTT client still stores the packet of t, a
// QoS 1 publish of payload: its packet id is stored (as the gate counts it,
// which a store closed by a disconnection keeps) with that payload. Once the
// broker has acknowledged the packet its id may be taken again: another
// packet stored under it (not a publish of the same bytes) is not t's.
func (g *pubGate) stores(t mqtt.Token, payload []byte) bool {
	pt, ok := t.(interface{ MessageID() uint16 })
	if !ok || pt.MessageID() == 0 {
		return false
	}
	k := outboundKey(pt.MessageID())
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, stored := g.keys[k]; !stored {
		return false
	}
	if !g.opened {
		return true // closed (Disconnect): what the gate counts stays stored
	}
	switch p := g.inner.Get(k).(type) {
	case nil:
		return true // deleted just now (Del updates the gate after the store): look again
	case *packets.PublishPacket:
		return bytes.Equal(p.Payload, payload)
	default:
		return false
	}
}

// outboundKey is the key paho stores an outbound packet under (store.go
// outboundKeyFromMID).
func outboundKey(id uint16) string { return "o." + strconv.Itoa(int(id)) }
