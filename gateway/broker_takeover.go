package gateway

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// takeoverHook keeps a connection whose session is taken over (a device that
// connects again under its client id) from unregistering the connection that
// takes it over. mochi's goroutine of a connection that ended removes its
// client id from the broker's clients (a clean session) unless the connection
// has been taken over by then, which the new connection's goroutine marks
// only after it has closed the old connection; the two goroutines do not wait
// for each other. When the old goroutine read the mark before it was set and
// removed the id after the new connection had registered it, the new
// connection stayed open and subscribed but out of the clients, and mochi
// delivers to a subscriber only through them: the device got no message (no
// reply) until it connected once more, and with keepalive 0 it did not know.
// A stuck device that connects again hits it most (its old connection ends
// when the write timeout closes it, while the new connection waits to write it
// the DISCONNECT), a device that drops and reconnects at once too.
// TestEmbeddedBrokerStuckClientReconnects, TestEmbeddedBrokerReconnectWhileOldEnds.
//
// The hook orders the two: a connection that starts taking over a session
// whose connection has already ended (its OnDisconnect ran) waits until that
// connection's goroutine is over, its clean-up done; and a connection that
// ends while a takeover of it is under way waits in its OnDisconnect until the
// takeover has marked it (the new connection's session is established, or its
// goroutine is over), so that it reads the mark.
type takeoverHook struct {
	mqtt.HookBase
	srv *mqtt.Server
	// onWait, if set, is called before a takeover waits for the old
	// connection's goroutine to end (tests).
	onWait func()

	mu sync.Mutex
}

func (h *takeoverHook) ID() string { return "sneakgate-takeover" }

func (h *takeoverHook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish || b == mqtt.OnSessionEstablished || b == mqtt.OnDisconnect
}

// OnSessionEstablish runs in the new connection's goroutine just before mochi
// looks for a session to take over under the client's id.
func (h *takeoverHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	nc := brokerConnOf(cl.Net.Conn)
	if nc == nil {
		return
	}
	old, ok := h.srv.Clients.Get(cl.ID)
	if !ok || old == cl {
		return
	}
	oc := brokerConnOf(old.Net.Conn)
	if oc == nil {
		return
	}
	h.mu.Lock()
	if !oc.disconnected {
		// The old connection's OnDisconnect, if it comes before the
		// takeover has marked it, waits for nc.
		oc.takers = append(oc.takers, nc)
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	if h.onWait != nil {
		h.onWait()
	}
	<-oc.done
}

// OnSessionEstablished runs once the takeover, if any, has marked the old
// connection.
func (h *takeoverHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if c := brokerConnOf(cl.Net.Conn); c != nil {
		c.settle()
	}
}

// OnDisconnect runs in an ended connection's goroutine before mochi reads
// whether the connection was taken over.
func (h *takeoverHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	c := brokerConnOf(cl.Net.Conn)
	if c == nil {
		return
	}
	h.mu.Lock()
	c.disconnected = true
	takers := c.takers
	c.takers = nil
	h.mu.Unlock()
	for _, t := range takers {
		<-t.settled
	}
}
