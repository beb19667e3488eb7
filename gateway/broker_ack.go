package gateway

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The embedded broker acknowledges a device's request only once the gateway has.
//
// mochi-mqtt acknowledges a QoS 1 publish (PUBACK; PUBREC for QoS 2) before it
// hands the message to the subscribers, and the embedded broker lives in the
// gateway's process: a kill -9 of the gateway lost every request mochi had
// acknowledged to a device and the gateway had not journaled yet (up to the
// 7,680 the hold lets it hold), although the gateway itself acknowledges a
// request only after its journal commit. Now a publish that goes to a guarded
// subscription (the gateway's request filter; holdHook.targets) is relayed:
// holdHook.OnPublish hands it to the subscribers itself, through an inline
// client of its own (mochi's InjectPacket: no acknowledgement, the same
// delivery to every subscriber as mochi's), records against which packet id it
// went to each guarded subscriber, and rejects the original (mochi neither
// acknowledges nor delivers it). When the gateway's client acknowledges that
// delivery (its PUBACK, read in OnPacketRead), the device gets its PUBACK,
// written by a goroutine of the device's queue, never by the gateway's read
// loop or the device's: a device with many requests in flight is not held up
// per request. A kill -9 then loses only what no device was told had arrived:
// the device's MQTT client sends it again when it reconnects.
//
// Acknowledgements go out in the order the device's publishes came
// (MQTT-4.6.0-2): each connection has a queue (ackQueue), and an
// acknowledgement waits for those before it. A device's publish that does not
// go to the gateway (another topic, a QoS 0 subscriber) is acknowledged by
// mochi at once as before, unless acknowledgements are still owed to that
// connection: then it is relayed too and acknowledged in its turn.
//
// At QoS 2 the PUBREC waits so (writeAck then keeps it in the device's store
// for its PUBREL, as mochi does). The device's MQTT 5 receive quota is not
// charged for what waits: a 5.0 client keeps within the receive maximum by
// itself, and a 3.1.1 client, which has none, would be disconnected.
//
// What is never acknowledged on that connection: a request whose delivery to
// the gateway's client was dropped instead of acknowledged (its session ended
// without being kept, mochi's quota), one that reached no guarded subscriber,
// and any when the connection closed first. The device's client sends those
// again once it reconnects; the journal answers one it already holds as a
// duplicate.
//
// The gateway's client's own publishes are processed under spare packet ids
// (OnPacketRead), so that they neither delete nor hide the deliveries the
// gateway has to acknowledge; deliveries its session lost anyway are settled
// when it reconnects (reconcile). A request published before the gateway's
// client has subscribed waits for it in the hold (holdHook.reserve), where
// mochi acknowledged it and found no subscriber.
//
// Correlation: the relayed packet carries a token in Connect.ClientIdentifier,
// which mochi copies into each delivery (packets.Packet.Copy) and never
// encodes in a PUBLISH; OnQosPublish, called as mochi stores a delivery in a
// subscriber's in-flight store under its packet id, reads it there. A token is
// looked up only while its relay runs (InjectPacket is synchronous), so a
// delivery resent later, or a retained copy sent to a new subscriber, carries
// a token that no longer names anything.

// relayPrefix starts every relay token.
const relayPrefix = "\x00sneakgate-relay:"

// relay is a device's publish the broker hands to the subscribers itself.
type relay struct {
	origin string            // the publisher's client id (mochi's packet Origin)
	chosen map[string]string // guarded shared filter to member (admit's choice), or nil
	ack    *deferredAck
	track  bool     // deliveries to guarded subscribers owe the acknowledgement
	sent   []sentTo // deliveries recorded (only the relaying goroutine touches them)
}

// sentTo is a delivery recorded, with the connection whose store took it.
type sentTo struct {
	delivery
	cl *mqtt.Client
}

// delivery names a message the broker sent a guarded subscriber: its client id
// (its session: the packet ids stay when a reconnection takes it over) and the
// packet id.
type delivery struct {
	owner string
	id    uint16
}

// deferredAck is a device's publish waiting for its acknowledgement.
type deferredAck struct {
	q      *ackQueue
	id     uint16 // the device's packet id
	qos    byte
	always bool // not a request: acknowledged once handed over, whatever reached whom
	// owed counts the relay itself and each delivery to a guarded subscriber
	// not acknowledged yet; at 0 the acknowledgement is decided. delivered
	// counts the deliveries; failed is set when one was dropped, or the
	// relay failed.
	owed      atomic.Int32
	delivered atomic.Int32
	failed    atomic.Bool
	done, ok  bool // decided, and to be written (under q.mu)
}

// ackQueue is a connection's acknowledgements in the order of its publishes.
type ackQueue struct {
	a       *acks
	cl      *mqtt.Client
	mu      sync.Mutex
	pending []*deferredAck
	writing bool // a writer goroutine runs
	closed  bool // the connection ended: nothing more is written
}

// acks is the embedded broker's part of holdHook that owes devices their
// acknowledgements.
type acks struct {
	srv     *mqtt.Server
	inline  [6]*mqtt.Client // relay clients by MQTT protocol version (3, 4, 5)
	seq     atomic.Uint64
	relayMu sync.Mutex
	relays  map[string]*relay // by token, while they run
	delivMu sync.Mutex
	owed    map[delivery]*deferredAck
	queues  sync.Map // *mqtt.Client to *ackQueue
	// renumbered holds, per guarded subscriber, its publish being processed
	// under a spare packet id (renumbering); nRenumbered counts them;
	// lastDelivery is, per guarded client id, the packet id mochi gave its
	// last delivery (0 after a connection took its session over: mochi counts
	// from 0 again).
	renumbered   sync.Map
	nRenumbered  atomic.Int64
	lastDelivery map[string]*atomic.Uint32

	writeMu  sync.Mutex
	wStopped bool
	writers  sync.WaitGroup

	// written and withheld count acknowledgements written after the
	// gateway's, and those never written (see above); ambiguous counts
	// deliveries whose packet id was reused before the gateway acknowledged
	// it (never expected: each is withheld).
	written, withheld, ambiguous atomic.Int64
}

func (a *acks) setup(srv *mqtt.Server) {
	a.srv = srv
	a.relays = map[string]*relay{}
	a.owed = map[delivery]*deferredAck{}
	a.lastDelivery = map[string]*atomic.Uint32{}
	for _, v := range []byte{3, 4, 5} {
		c := srv.NewClient(nil, "local", "sneakgate-relay", true)
		c.Properties.ProtocolVersion = v
		a.inline[v] = c
	}
}

// inlineFor is the relay client for a publisher speaking MQTT version v:
// mochi stamps a message with its publisher's version, which decides whether
// its expiry applies.
func (a *acks) inlineFor(v byte) *mqtt.Client {
	if int(v) < len(a.inline) && a.inline[v] != nil {
		return a.inline[v]
	}
	return a.inline[4]
}

func (a *acks) relayOf(token string) *relay {
	if !strings.HasPrefix(token, relayPrefix) {
		return nil
	}
	a.relayMu.Lock()
	r := a.relays[token]
	a.relayMu.Unlock()
	return r
}

// relayed puts back the origin of a publish the broker relays (OnPublish, from
// the relay client): mochi set it to the relay client's id.
func (a *acks) relayed(pk packets.Packet) packets.Packet {
	if r := a.relayOf(pk.Connect.ClientIdentifier); r != nil {
		pk.Origin = r.origin
	}
	return pk
}

// queueOf is cl's acknowledgement queue, made on first use.
func (a *acks) queueOf(cl *mqtt.Client) *ackQueue {
	if v, ok := a.queues.Load(cl); ok {
		return v.(*ackQueue)
	}
	v, _ := a.queues.LoadOrStore(cl, &ackQueue{a: a, cl: cl})
	return v.(*ackQueue)
}

// acksPending reports whether acknowledgements are still owed to cl (or being
// written): its next publish must be acknowledged after them.
func (a *acks) acksPending(cl *mqtt.Client) bool {
	v, ok := a.queues.Load(cl)
	if !ok {
		return false
	}
	q := v.(*ackQueue)
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending) > 0 || q.writing
}

// relay hands cl's publish pk to the subscribers and owes cl its
// acknowledgement: once every guarded subscriber it reached has acknowledged
// it (track), or at once (not a request). p is what admit reserved for it,
// released once the message is in the subscribers' stores. It returns mochi's
// rejection: mochi neither acknowledges nor delivers pk itself.
func (h *holdHook) relay(cl *mqtt.Client, pk packets.Packet, p *passage, track bool) (packets.Packet, error) {
	a := &h.acks
	d := &deferredAck{id: pk.PacketID, qos: pk.FixedHeader.Qos, always: !track}
	d.owed.Store(1)
	q := a.queueOf(cl)
	q.push(d)
	r := &relay{origin: cl.ID, ack: d, track: track}
	if p != nil {
		r.chosen = p.chosen
	}
	token := relayPrefix + strconv.FormatUint(a.seq.Add(1), 36)
	a.relayMu.Lock()
	a.relays[token] = r
	a.relayMu.Unlock()

	out := pk
	out.Connect.ClientIdentifier = token
	// The topic is resolved already (mochi did, from cl's aliases).
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
	err := a.srv.InjectPacket(a.inlineFor(cl.Properties.ProtocolVersion), out)
	if err == nil {
		// Counted as received once already, as cl's.
		atomic.AddInt64(&a.srv.Info.PacketsReceived, -1)
		atomic.AddInt64(&a.srv.Info.MessagesReceived, -1)
	} else {
		d.failed.Store(true)
		h.log.Warn().Err(err).Str("client", cl.ID).Str("topic", pk.TopicName).Msg("embedded broker: relaying a publish failed: not acknowledged")
	}
	a.relayMu.Lock()
	delete(a.relays, token)
	a.relayMu.Unlock()
	for _, s := range r.sent {
		// Stored on a connection whose session was being taken over: mochi
		// copies the store to the new connection before registering it, and
		// reconcile settles, once the new one is established, what the copy
		// lacks. Stored after that, it is lost with the old connection.
		if !s.cl.IsTakenOver() {
			continue
		}
		if cur, ok := a.srv.Clients.Get(s.owner); ok && cur != s.cl {
			if m, ok := cur.State.Inflight.Get(s.id); !ok || m.Connect.ClientIdentifier != token {
				h.ownerAcked(s.owner, s.id, false)
			}
		}
	}
	if p != nil {
		h.unreserve(p.subs)
		h.release()
	}
	a.settle(d)
	return pk, packets.ErrRejectPacket
}

// OnQosPublish records a relayed request's delivery to a guarded subscriber
// (mochi calls it as it stores the message under the subscriber's packet id).
// A resend (Dup) or a message the broker did not relay is none.
func (h *holdHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Dup || !h.owners[cl.ID] {
		return
	}
	a := &h.acks
	a.lastDelivery[cl.ID].Store(uint32(pk.PacketID))
	r := a.relayOf(pk.Connect.ClientIdentifier)
	if r == nil || !r.track {
		return
	}
	k := delivery{cl.ID, pk.PacketID}
	a.delivMu.Lock()
	old := a.owed[k]
	if old == nil {
		a.owed[k] = r.ack
	} else {
		delete(a.owed, k)
	}
	a.delivMu.Unlock()
	if old != nil {
		// The packet id was given again before the subscriber acknowledged it
		// (not expected: see OnPacketRead): its next
		// acknowledgement could be either's, so neither is taken.
		a.ambiguous.Add(1)
		h.log.Warn().Str("client", cl.ID).Uint16("packet_id", pk.PacketID).
			Msg("embedded broker: a packet id given twice to the gateway's client before it acknowledged it: both requests left unacknowledged to their devices, which send them again when they reconnect")
		old.failed.Store(true)
		a.settle(old)
		r.ack.failed.Store(true)
		return
	}
	r.ack.owed.Add(1)
	r.ack.delivered.Add(1)
	r.sent = append(r.sent, sentTo{k, cl})
}

// OnPublishDropped: mochi dropped a relayed message for a subscriber after
// storing it (its pending writes were full).
func (h *holdHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	if !h.owners[cl.ID] {
		return
	}
	r := h.acks.relayOf(pk.Connect.ClientIdentifier)
	if r == nil {
		return
	}
	for i := len(r.sent) - 1; i >= 0; i-- {
		if r.sent[i].cl == cl {
			h.ownerAcked(cl.ID, r.sent[i].id, false)
			return
		}
	}
}

// ownerAcked settles the delivery with packet id id to guarded subscriber owner:
// acknowledged (ok), or dropped.
func (h *holdHook) ownerAcked(owner string, id uint16, ok bool) {
	a := &h.acks
	k := delivery{owner, id}
	a.delivMu.Lock()
	d := a.owed[k]
	delete(a.owed, k)
	a.delivMu.Unlock()
	if d == nil {
		return
	}
	if !ok {
		d.failed.Store(true)
	}
	a.settle(d)
}

// OnPacketRead sees every packet a client sends before mochi processes it.
//
// A guarded subscriber's PUBACK (PUBREC at QoS 2) acknowledges a delivery
// (reason codes of 0x80 and above refuse it). It is taken here rather than in
// OnQosComplete, which mochi also calls for the acknowledgement of the
// subscriber's own publishes.
//
// A guarded subscriber's own QoS 1 publish is processed under a spare packet
// id, and its PUBACK written under its own (OnPacketEncode). In MQTT the two
// directions' packet ids are separate; in mochi a client's publish and the
// broker's deliveries to it share its in-flight store, and the gateway's
// client numbers its replies on its own, in turn, as mochi numbers the
// requests it delivers to it, so the two run close together:
//   - a reply under the id of a request delivered and not yet acknowledged
//     deleted that delivery from the gateway's session (processPublish, meant
//     for a resent QoS 2 publish): it was not sent again after a reconnect, and
//     its id could go to another request before the gateway had acknowledged
//     the first;
//   - a request delivered under an id at the moment a reply with that id was
//     processed took the reply's place in the store (mochi checks the id is
//     free under the client's lock, which processPublish does not take), so
//     mochi did not report the delivery (OnQosPublish), and the reply's end
//     deleted it: its device was never acknowledged (1 request in 40,000 at
//     4,000 req/s with devsim).
//
// The spare id is half the id space away from the last id mochi gave a
// delivery to that client (spareID), where mochi, which gives the ids after
// it in turn, does not come for some 30,000 more deliveries. (Its QoS 2
// publishes, which the gateway does not make, are left to mochi; reconcile
// settles the deliveries they delete.)
func (h *holdHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !h.owners[cl.ID] {
		return pk, nil
	}
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec:
		h.ownerAcked(cl.ID, pk.PacketID, pk.ReasonCode < packets.ErrUnspecifiedError.Code)
	case packets.Publish:
		if pk.FixedHeader.Qos != 1 {
			break
		}
		base := uint16(h.acks.lastDelivery[cl.ID].Load()) + 1<<15
		if x, ok := spareID(cl, base); ok {
			h.acks.renumbered.Store(cl, renumbering{spare: x, own: pk.PacketID})
			h.acks.nRenumbered.Add(1)
			pk.PacketID = x
		}
	}
	return pk, nil
}

// renumbering is a guarded subscriber's publish processed under a spare
// packet id.
type renumbering struct{ spare, own uint16 }

// spareID is the first packet id from base on that cl's in-flight store does
// not hold (of 64 tried).
func spareID(cl *mqtt.Client, base uint16) (uint16, bool) {
	for i := range uint16(64) {
		x := base + i
		if x == 0 {
			continue
		}
		if _, ok := cl.State.Inflight.Get(x); !ok {
			return x, true
		}
	}
	return 0, false
}

// OnPacketEncode writes a renumbered publish's PUBACK under the subscriber's
// own packet id.
func (h *holdHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Puback || h.acks.nRenumbered.Load() == 0 {
		return pk
	}
	if v, ok := h.acks.renumbered.Load(cl); ok && v.(renumbering).spare == pk.PacketID {
		pk.PacketID = v.(renumbering).own
	}
	return pk
}

// OnPacketProcessed ends a renumbering (OnPacketRead).
func (h *holdHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type != packets.Publish || h.acks.nRenumbered.Load() == 0 {
		return
	}
	if _, ok := h.acks.renumbered.LoadAndDelete(cl); ok {
		h.acks.nRenumbered.Add(-1)
	}
}

// reconcile settles, when a guarded subscriber's session is taken over by a
// new connection, the deliveries its in-flight store no longer holds: mochi
// will not send them again, so their acknowledgement will not come (what
// mochi may delete without telling: a delivery under the id of the
// subscriber's own QoS 2 publish; one stored on the old connection as the
// new one took its session over). Their publishers are not acknowledged.
func (h *holdHook) reconcile(cl *mqtt.Client) {
	a := &h.acks
	a.lastDelivery[cl.ID].Store(0)
	var lost []*deferredAck
	a.delivMu.Lock()
	for k, d := range a.owed {
		if k.owner != cl.ID {
			continue
		}
		if _, ok := cl.State.Inflight.Get(k.id); !ok {
			delete(a.owed, k)
			lost = append(lost, d)
		}
	}
	a.delivMu.Unlock()
	for _, d := range lost {
		d.failed.Store(true)
		a.settle(d)
	}
}

// connectionEnded closes cl's acknowledgement queue: what it still owes is not
// written.
func (a *acks) connectionEnded(cl *mqtt.Client) {
	if _, ok := a.renumbered.LoadAndDelete(cl); ok {
		a.nRenumbered.Add(-1)
	}
	v, ok := a.queues.LoadAndDelete(cl)
	if !ok {
		return
	}
	q := v.(*ackQueue)
	q.mu.Lock()
	q.closed = true
	n := 0
	for _, d := range q.pending {
		if !d.done || d.ok {
			n++
		}
	}
	q.pending = nil
	q.mu.Unlock()
	a.withheld.Add(int64(n))
}

// settle gives up one share of d (the relay's own, or a delivery's); the last
// decides it.
func (a *acks) settle(d *deferredAck) {
	if d.owed.Add(-1) == 0 {
		d.q.decide(d, d.always || !d.failed.Load() && d.delivered.Load() > 0)
	}
}

func (q *ackQueue) push(d *deferredAck) {
	d.q = q
	q.mu.Lock()
	if !q.closed {
		q.pending = append(q.pending, d)
	}
	q.mu.Unlock()
}

// decide records whether d is written, and starts the queue's writer when the
// acknowledgements at its head are all decided.
func (q *ackQueue) decide(d *deferredAck, ok bool) {
	q.mu.Lock()
	d.done, d.ok = true, ok
	if !ok && !q.closed {
		q.a.withheld.Add(1)
	}
	if q.closed || q.writing || len(q.pending) == 0 || !q.pending[0].done {
		q.mu.Unlock()
		return
	}
	q.writing = true
	q.mu.Unlock()
	if !q.a.startWriter() {
		q.mu.Lock()
		q.writing = false
		q.mu.Unlock()
		return
	}
	go q.write()
}

// write writes the decided acknowledgements at the head of the queue, in
// order, until the head is undecided.
func (q *ackQueue) write() {
	defer q.a.writers.Done()
	for {
		q.mu.Lock()
		n := 0
		for n < len(q.pending) && q.pending[n].done {
			n++
		}
		if n == 0 || q.closed {
			q.writing = false
			q.mu.Unlock()
			return
		}
		batch := q.pending[:n:n]
		q.pending = q.pending[n:]
		if len(q.pending) == 0 {
			q.pending = nil // push appends past batch, never over it
		}
		q.mu.Unlock()
		for _, d := range batch {
			if d.ok {
				q.a.writeAck(q.cl, d)
			}
		}
	}
}

// writeAck writes the device its PUBACK (QoS 1) or PUBREC (QoS 2, kept in its
// in-flight store until its PUBREL, as mochi does), with reason code success.
func (a *acks) writeAck(cl *mqtt.Client, d *deferredAck) {
	if cl.Closed() {
		a.withheld.Add(1)
		return
	}
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: d.id}
	if d.qos == 2 {
		ack.FixedHeader.Type, ack.Created = packets.Pubrec, time.Now().Unix()
		cl.State.Inflight.DecreaseReceiveQuota()
		if cl.State.Inflight.Set(ack) {
			atomic.AddInt64(&a.srv.Info.Inflight, 1)
		}
	}
	a.written.Add(1) // before the write: once the device has it, it is counted
	if err := cl.WritePacket(ack); err != nil {
		a.written.Add(-1)
		a.withheld.Add(1)
	}
}

// startWriter counts a writer goroutine in, unless the broker is closing.
func (a *acks) startWriter() bool {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	if a.wStopped {
		return false
	}
	a.writers.Add(1)
	return true
}

// stopWriters starts no writer from now on (Close then waits for those
// running).
func (a *acks) stopWriters() {
	a.writeMu.Lock()
	a.wStopped = true
	a.writeMu.Unlock()
}

// logAcks logs, at Close, how many acknowledgements the broker wrote after the
// gateway's, how many it withheld, and how many deliveries the gateway's
// client had not acknowledged.
func (h *holdHook) logAcks() {
	a := &h.acks
	a.delivMu.Lock()
	owed := len(a.owed)
	a.delivMu.Unlock()
	h.log.Info().Int64("written", a.written.Load()).Int64("withheld", a.withheld.Load()).
		Int64("ambiguous", a.ambiguous.Load()).Int("unacknowledged_by_the_gateway", owed).
		Msg("embedded broker closed: devices' acknowledgements written after the gateway's, withheld (their publishers send them again), and requests the gateway had not acknowledged")
}
