package gateway

import (
	"context"
	"strings"
	"sync"

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
type pubGate struct {
	inner mqtt.Store
	limit int
	// waited, if set, is called each time a publish finds the gate full.
	waited func()

	mu       sync.Mutex
	room     sync.Cond
	opened   bool
	keys     map[string]bool // outbound packets stored
	entering int             // acquired, Publish not returned yet
	closed   bool
	lost     uint64 // interrupts so far
}

func newPubGate(limit int) *pubGate {
	g := &pubGate{inner: mqtt.NewMemoryStore(), limit: max(limit, 1), keys: map[string]bool{}}
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

func (g *pubGate) full() bool { return len(g.keys)+g.entering >= g.limit }

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
func (g *pubGate) interrupt() {
	g.mu.Lock()
	g.lost++
	g.mu.Unlock()
	g.room.Broadcast()
}

// tryAcquire takes up to n places, those free now, and says how many it took.
func (g *pubGate) tryAcquire(n int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
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
		g.keys[key] = true
	}
	g.mu.Unlock()
}

func (g *pubGate) Get(key string) packets.ControlPacket { return g.inner.Get(key) }
func (g *pubGate) All() []string                        { return g.inner.All() }

func (g *pubGate) Del(key string) {
	g.inner.Del(key)
	g.mu.Lock()
	freed := g.opened && g.keys[key]
	if freed {
		delete(g.keys, key)
	}
	g.mu.Unlock()
	if freed {
		g.room.Signal()
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
	g.mu.Unlock()
	g.room.Broadcast()
}
