package gateway

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// journal is what egress needs of the store.
type journal interface {
	Complete(k store.Key, reply []byte) error
	CompleteAsync(k store.Key, reply []byte, done func(error))
	Outbox(k store.Key, reply []byte, flushBy time.Time) error
	OutboxAll(items []store.OutboxItem) []error
	OutboxUnsent(k store.Key, reply []byte, flushBy time.Time) error
	OutboxEntries() ([]store.OutboxEntry, error)
	OutboxEntry(k store.Key) (*store.OutboxEntry, error)
}

// answerMsg is the reply to a journaled request on its way out. build makes the
// reply at the moment it is handed to the broker, so that deadline_met, slack_ms
// and total_ms describe the publication, not the decision.
type answerMsg struct {
	topic    string
	key      store.Key
	deadline time.Time
	build    func(now time.Time) *protocol.Reply
	queued   time.Time // when Answer took it
}

// rawMsg is a stored reply published again to a duplicate of an answered
// request: best effort (the broker acknowledged the first copy).
type rawMsg struct {
	topic   string
	app     string
	status  protocol.Status
	payload []byte
	queued  time.Time
}

// EgressOptions size the egress queues and workers.
type egressOptions struct {
	// AnswerQueue bounds answers waiting for a worker; a full queue blocks the
	// scheduling loop (back-pressure: answers are never dropped, and the loop's
	// drain rate slows to what the broker takes).
	AnswerQueue int
	// AnswerWorkers make answers durable and hand them to the MQTT client. A
	// worker takes every answer waiting when it starts (the answers of a batch
	// come together), makes them durable in one group commit and hands them over.
	AnswerWorkers int
	// AckQueue bounds the groups of answers handed to the MQTT client and not yet
	// acknowledged by the broker; AckWorkers wait for those acknowledgements and
	// complete the requests in the journal. The device's latency ends at the
	// hand-over: the wait for the PUBACK and the journal's completion are off its
	// path.
	AckQueue, AckWorkers int
	// RawQueue bounds replies republished to duplicates of answered requests;
	// when it is full they are dropped and counted (the first copy is with the
	// broker already). Refusals and the other unjournaled replies are never
	// dropped: see Owe.
	RawQueue int
	// RawWorkers publish republished replies, each waiting for its PUBACK: at
	// most this many are in flight.
	RawWorkers int
	// RawMaxAge drops a raw reply that waited longer than this for a worker: its
	// retry_after_ms would be stale.
	RawMaxAge time.Duration
	// MaxLate bounds the publishes that timed out and are still awaited.
	MaxLate int
	// Durable commits each answer to the outbox before it is first published, so
	// that a repeat after a crash is the same bytes (mqtt.durable_replies).
	Durable bool
	// Gate bounds the packet ids the MQTT client holds: it must be the client's
	// Store (pubGate). Nil: a gate of the egress's own, which the client does not
	// store in, so that only the publishes entering the client count.
	Gate *pubGate
	// OwedMemory and OwedMemoryMax bound how long, and how many, owed replies
	// of unacknowledged requests are remembered for copies the broker delivers
	// again (owedLedger).
	OwedMemory    time.Duration
	OwedMemoryMax int
}

func defaultEgressOptions() egressOptions {
	// Few answers wait between the loop and the broker: a full answer queue
	// blocks the loop, so that its drain rate, and with it admission's estimate
	// of the wait, includes the time the broker takes (docs/protocol.md,
	// "Overload").
	return egressOptions{AnswerQueue: 64, AnswerWorkers: 64, AckQueue: 4096, AckWorkers: 64,
		RawQueue: 1024, RawWorkers: 32, RawMaxAge: time.Second, MaxLate: 4096, Durable: true,
		OwedMemory: 10 * time.Minute, OwedMemoryMax: defaultOwedMemoryMax}
}

// defaultOwedMemoryMax is the most owed replies egress remembers (owedLedger):
// about 690 bytes each with fashion's replies (the reply, its key and topic, the
// map's and the queue's share: BenchmarkOwedLedgerMemory), so about 11 MiB at
// most; at 1,200 answers from
// the estimate a second, the last 14 s of them.
const defaultOwedMemoryMax = 1 << 14

// egress publishes replies. Answers to journaled requests are made durable in the
// journal's outbox before they are first handed to the broker, so that a repeat of
// the request, before or after a crash, gets the same reply; they leave the journal
// (Complete) once the broker has acknowledged them (PUBACK). An answer decided while
// the broker is away is kept unsent, and stamped when it is finally published: past
// its deadline it becomes expired (broker_unavailable). A reply to a request that
// is not journaled (a refusal, a rejection, an answer from the estimate, an
// expired reply) is owed: it is handed to the broker at once and its request is
// acknowledged only when the broker has the reply (Owe). Replies republished to
// duplicates go through a separate bounded queue, best effort. Every publish
// takes a place at the gate first (pubGate: the MQTT client's packet ids); the
// answer and raw workers and the flusher wait for one, Owe never does.
type egress struct {
	// served reports whether an application is served; metrics label the others
	// "_unknown" so that arbitrary topic names cannot grow the label set.
	served func(app string) bool
	// replyTo, if set, is where the outbox's reply to a key goes, given its
	// journaled reply topic (Gateway.journaledReplyTo).
	replyTo func(topic string, k store.Key) string
	// journalError, if set, is told of every failed journal write.
	journalError func(error)
	client       mqtt.Client
	journal      journal
	timeout      time.Duration
	rate         float64
	now          func() time.Time
	log          zerolog.Logger
	noSpaceLog   zerolog.Logger // log, sampled (storeLog)
	failLog      zerolog.Logger // log, sampled: a failing broker fails every reply
	m            *metrics
	opts         egressOptions

	// reconnect, if set, has the broker connection dropped, so that the MQTT
	// client reconnects and resends what it holds (brokerConns.fail); it
	// reports whether there was a connection to drop. The egress drops one whose
	// stranded publishes call for it (stranded.go).
	reconnect func(error) bool

	// sendMu guards closed, the answers queued and the sends on raw against
	// Stop.
	sendMu sync.RWMutex
	closed bool
	// answers are the answers waiting for a worker, at most AnswerQueue
	// (answersMu; room is signalled when they are taken). answersKick (size 1)
	// wakes one worker when they become non-empty; Stop closes it.
	answersMu   sync.Mutex
	room        sync.Cond
	answers     []*answerMsg
	answersKick chan struct{}
	acks        chan []*handedOver
	raw         chan rawMsg
	answerW     sync.WaitGroup // answer workers
	stopOnce    sync.Once      // closes acks
	workers     sync.WaitGroup // ack and raw workers
	// delay is a moving average of how long an answer takes from Answer until it
	// is handed to the broker (its queue and the journal commit before it), in
	// ns; lastDelay is when it was last observed.
	delayMu   sync.Mutex
	delay     float64
	lastDelay time.Time

	late  sync.WaitGroup // awaitLate goroutines and the owed waiter
	nLate int            // running awaitLate goroutines (busyMu)
	// lateClosed is set by Close: awaitLate starts no more waiters (busyMu).
	lateClosed bool
	kick       chan struct{} // size 1: flush the outbox
	// busy holds the outbox keys being published by a worker or the flusher, or
	// whose timed-out publish the MQTT client still holds and will resend itself:
	// the flusher skips them, so that an answer in flight or a slow
	// acknowledgement does not become a second copy of the reply.
	busyMu sync.Mutex
	busy   map[store.Key]bool
	stop   chan struct{} // closed by Close: late waiters give up
	// gaveUp is closed by giveUp: no publish waits for the broker any more.
	gaveUp     chan struct{}
	giveUpOnce sync.Once

	// gate bounds the packet ids the client holds (opts.Gate).
	gate *pubGate

	// owed are the owed replies handed to the MQTT client whose PUBACK the owed
	// waiter has not seen yet, in the order they were handed over (owedMu;
	// owedKick, size 1, wakes the waiter). waiting are those not handed over yet
	// because every place at the gate was taken, in the order they came; the owed
	// sender hands them over as places free (owedMu; sendKick, size 1, wakes it).
	// Both unbounded on purpose: every one holds a request the gateway has not
	// acknowledged, so the broker's in-flight window bounds them; a bound here
	// would wait for PUBACKs that the MQTT client reads only after the requests
	// ahead of them (docs/reliability.md).
	owedMu   sync.Mutex
	owed     []owedReply
	waiting  []owedMsg
	owedKick chan struct{}
	sendKick chan struct{}
	// conn numbers the broker connections lost (connectionLost): an owed reply
	// still waiting from an earlier connection is not sent (its request's
	// acknowledgement would be dropped by paho; the broker delivers the request
	// again).
	conn atomic.Uint64
	// owedInFlight counts the owed replies handed over and not acknowledged
	// (those in owed and those the waiter is going through); it is what the
	// gauge sneakgate_unjournaled_replies_in_flight reads, set under owedMu.
	// owedClosed is set by Close: from then on none is counted, and the gauge
	// reads 0 (their requests are left for the broker to deliver again).
	owedInFlight int
	owedClosed   bool
	// ledger remembers owed replies for copies of their requests (owedLedger;
	// owedMu); remembered is its size, read without the lock.
	ledger     *owedLedger
	remembered atomic.Int64
}

func newEgress(c mqtt.Client, j journal, timeout time.Duration, rate float64, now func() time.Time,
	opts egressOptions, log zerolog.Logger, m *metrics) *egress {
	if now == nil {
		now = time.Now
	}
	e := &egress{client: c, journal: j, timeout: timeout, rate: rate, now: now, log: log, m: m, opts: opts,
		answersKick: make(chan struct{}, 1), acks: make(chan []*handedOver, opts.AckQueue),
		raw:  make(chan rawMsg, opts.RawQueue),
		kick: make(chan struct{}, 1), busy: map[store.Key]bool{}, stop: make(chan struct{}), gaveUp: make(chan struct{}),
		owedKick: make(chan struct{}, 1), sendKick: make(chan struct{}, 1), gate: opts.Gate,
		ledger: newOwedLedger(opts.OwedMemoryMax, opts.OwedMemory)}
	if e.gate == nil {
		e.gate = newPubGate(defaultMaxInflightPublishes)
	}
	e.noSpaceLog = log.Sample(rejectSampler())
	e.failLog = log.Sample(rejectSampler())
	e.room.L = &e.answersMu
	e.late.Add(3)
	go e.owedWaiter()
	go e.owedSender()
	go e.watchStranded()
	for range opts.AnswerWorkers {
		e.answerW.Add(1)
		go e.answerWorker()
	}
	serve(&e.workers, opts.AckWorkers, e.acks, func(hs []*handedOver) {
		for _, h := range hs {
			e.finishAnswer(h)
		}
	})
	serve(&e.workers, opts.RawWorkers, e.raw, e.sendRaw)
	return e
}

// serve starts n goroutines, tracked by wg, that call fn with each value from ch
// until it is closed.
func serve[T any](wg *sync.WaitGroup, n int, ch <-chan T, fn func(T)) {
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := range ch {
				fn(v)
			}
		}()
	}
}

// Answer queues the reply to a journaled request. It blocks while the answer
// queue is full (the broker is slower than the engine), and drops nothing: after
// Stop the request simply stays pending in the journal.
func (e *egress) Answer(a *answerMsg) {
	e.sendMu.RLock()
	defer e.sendMu.RUnlock()
	if e.closed {
		return
	}
	a.queued = e.now()
	e.answersMu.Lock()
	for len(e.answers) >= max(e.opts.AnswerQueue, 1) {
		e.room.Wait()
	}
	e.answers = append(e.answers, a)
	first := len(e.answers) == 1
	e.answersMu.Unlock()
	if first {
		select {
		case e.answersKick <- struct{}{}:
		default:
		}
	}
}

// answerWorker sends the answers queued whenever it is woken, all of them at
// once, until Stop and the queue is empty. A worker busy with some leaves the
// ones queued meanwhile to the next one woken.
func (e *egress) answerWorker() {
	defer e.answerW.Done()
	for range e.answersKick {
		e.sendQueued()
	}
	e.sendQueued() // what Stop found queued
}

func (e *egress) sendQueued() {
	e.answersMu.Lock()
	batch := e.answers
	e.answers = nil
	e.room.Broadcast()
	e.answersMu.Unlock()
	if len(batch) > 0 {
		e.sendAnswers(batch)
	}
}

// Delay is how long an answer has recently taken from Answer until it was handed
// to the broker: the part of a request's latency after the scheduling loop. With
// no answer in the last second it is 0: an old measurement must not keep
// refusing the requests that would renew it.
func (e *egress) Delay() time.Duration {
	e.delayMu.Lock()
	defer e.delayMu.Unlock()
	if e.now().Sub(e.lastDelay) > time.Second {
		return 0
	}
	return time.Duration(e.delay)
}

// egressDelayTau is the time constant of the egress delay's average: an
// answer's delay weighs 1 - exp(-dt/egressDelayTau), dt the time since the
// previous answer's (at least 1/64, so that a batch's answers, handed over
// together, count). An average by count alone (1/64 an answer) outlived the
// overload that raised it: after 8 s at 4,000 req/s it held about a second,
// admission refused every request whose budget was shorter (97% of them at
// 100 req/s, the gateway idle), and the few answers that got through, a burst
// each time the second without answers had passed, moved it by 1/64 each
// (TestEgressDelayForgetsAnOverload).
const egressDelayTau = 250 * time.Millisecond

// observeDelay folds one answer's delay into the moving average.
func (e *egress) observeDelay(d time.Duration) {
	e.m.egressTime.Observe(d.Seconds())
	e.delayMu.Lock()
	now := e.now()
	w := 1.0
	if !e.lastDelay.IsZero() {
		w = max(1.0/64, -math.Expm1(-float64(now.Sub(e.lastDelay))/float64(egressDelayTau)))
	}
	e.delay += (float64(d) - e.delay) * w
	e.lastDelay = now
	e.delayMu.Unlock()
}

// SendRaw queues a stored reply published again to a duplicate of an answered
// request without ever blocking: when the queue is full it is dropped and
// counted (the broker acknowledged the first copy).
func (e *egress) SendRaw(topic, app string, status protocol.Status, payload []byte) {
	e.sendMu.RLock()
	defer e.sendMu.RUnlock()
	if !e.closed {
		select {
		case e.raw <- rawMsg{topic: topic, app: app, status: status, payload: payload, queued: e.now()}:
			return
		default:
		}
	}
	e.m.dropped.WithLabelValues(string(status)).Inc()
}

// owedReply is an owed reply handed to the MQTT client: ack acknowledges its
// request once the broker has acknowledged payload (tok completed without
// error, and the client no longer stores it: awaitAcked).
type owedReply struct {
	tok     mqtt.Token
	payload []byte
	ack     func()
	app     string
	status  protocol.Status
	conn    uint64 // the connection its request arrived on (egress.conn)
	owedRef        // its ledger entry (gen 0: none)
}

// owedMsg is an owed reply waiting for a place at the gate.
type owedMsg struct {
	topic   string
	payload []byte
	ack     func()
	app     string
	status  protocol.Status
	conn    uint64 // the connection its request arrived on (egress.conn)
	owedRef        // its ledger entry (gen 0: none)
	// repeat: the reply remembered for a copy of its request (Repeat), which
	// went out before, or waits ahead of it: dropped unsent, it stays
	// remembered.
	repeat bool
}

// errStopping: egress is closed; the request is left unacknowledged.
var errStopping = errors.New("egress stopped")

// owedQoS0Limit is the most replies that may wait for a packet id before a
// reply to a QoS 0 request is dropped instead of queued (Owe): a few MiB of
// replies.
const owedQoS0Limit = 8192

// Owe publishes rep, the only reply to a request the gateway does not journal,
// and calls ack (the request's acknowledgement to the broker) once the broker has
// the reply (its PUBACK). It never waits, neither for the broker nor for a
// packet id, and never drops the reply: the reply is handed to the MQTT client
// at once, or, when the client holds as many packet ids as the gate allows,
// queued in order and handed over as PUBACKs free them (sneakgate_unjournaled_
// replies_waiting). Until the PUBACK the request stays unacknowledged, so if the
// gateway dies in between, the broker delivers the request again and it is
// answered again. Owe returns errNotConnected (the client is not connected) or
// errStopping (Close was called; the reply may have been handed over just
// before): the caller leaves the request unacknowledged, and the broker delivers
// it again when the session resumes. A publish that fails after the hand-over,
// and a reply still waiting when the connection is lost, leave their request
// unacknowledged too (counted in sneakgate_publish_failures_total).
//
// A nil ack is a request sent at QoS 0: there is nothing to acknowledge and
// nothing the broker would deliver again, so its reply is best effort, like the
// request. It waits in line like the others while fewer than owedQoS0Limit
// replies wait; beyond that it is dropped (sneakgate_replies_dropped_total), so
// that a device flooding refused requests at QoS 0, which no in-flight window
// holds back, cannot grow the line without bound.
//
// The reply to a QoS 1 request with an id is remembered until the request is
// acknowledged (owedLedger): Repeat gives it to a copy the broker delivers
// again meanwhile.
func (e *egress) Owe(topic string, rep *protocol.Reply, ack func()) error {
	return e.OweOn(topic, rep, ack, e.conn.Load())
}

// OweOn is Owe for a request that arrived on broker connection conn (egress.conn
// when it arrived). A reply to a request from an earlier connection than the
// current one is not handed over if it must wait for a place at the gate, and
// stays remembered when the broker acknowledges it: paho drops the request's
// acknowledgement, and the broker delivers the request again.
func (e *egress) OweOn(topic string, rep *protocol.Reply, ack func(), conn uint64) error {
	payload, err := rep.Marshal()
	if err != nil { // a Reply always marshals
		return err
	}
	return e.OweEncoded(topic, store.Key{App: rep.App, Device: rep.Device, ID: rep.ID}, payload, rep.Status, ack, conn, oweNew)
}

// Repeat is OweOn of the reply remembered for key (Owed), to a copy of its
// request: the same bytes, on the topic they went to, acknowledged (ack) once
// the broker has them.
func (e *egress) Repeat(key store.Key, r owedRecord, ack func(), conn uint64) error {
	return e.OweEncoded(r.topic, key, r.payload, r.status, ack, conn, oweRepeat)
}

// oweKind says what an owed reply is, for the ledger.
type oweKind uint8

const (
	oweNew    oweKind = iota // answered now, remembered in the ledger (remember)
	oweRepeat                // the ledger's reply again, to a copy (owedMsg.repeat)
	oweStored                // held by the journal: not remembered
)

// Owed returns the reply owed to key's request, handed to the broker (or
// waiting for a place at the gate) while the request is not acknowledged
// (owedLedger).
func (e *egress) Owed(key store.Key) (owedRecord, bool) {
	if e.remembered.Load() == 0 {
		return owedRecord{}, false // every request asks: no lock while none is held
	}
	e.owedMu.Lock()
	defer e.owedMu.Unlock()
	r, ok := e.ledger.get(key, e.now())
	e.countOwed() // get drops the expired ones
	return r, ok
}

// countOwed publishes the ledger's size (remembered, the gauge); owedMu held.
func (e *egress) countOwed() {
	n := e.ledger.len()
	e.remembered.Store(int64(n))
	e.m.owedRemembered.Set(float64(n))
}

// OweEncoded is OweOn of a reply already encoded (payload, with its key and
// status; key.App is the reply's application even when it has no id), of the
// given kind: oweNew as OweOn; oweRepeat, Repeat's; or oweStored for a reply
// the journal holds as key's answer (an answer from the estimate it recorded,
// store.Answered, or that stored reply again for a copy), which the ledger
// does not remember: the journal gives it to any later copy
// (Gateway.repeatOwed leaves a key the journal knows to it).
func (e *egress) OweEncoded(topic string, key store.Key, payload []byte, status protocol.Status, ack func(), conn uint64, kind oweKind) error {
	app := key.App
	e.busyMu.Lock()
	closed := e.lateClosed
	e.busyMu.Unlock()
	if closed {
		return errStopping
	}
	if !e.client.IsConnectionOpen() {
		return errNotConnected
	}
	e.owedMu.Lock()
	if e.owedClosed {
		e.owedMu.Unlock()
		return errStopping
	}
	if len(e.waiting) > 0 || e.gate.tryAcquire(1) == 0 {
		// Every packet id place is taken: wait in line, behind the others.
		if ack == nil && len(e.waiting) >= owedQoS0Limit {
			e.owedMu.Unlock()
			e.m.dropped.WithLabelValues(string(status)).Inc()
			return nil
		}
		e.waiting = append(e.waiting, owedMsg{topic: topic, payload: payload, ack: ack, app: app,
			status: status, conn: conn, owedRef: e.remember(key, topic, payload, status, ack, kind), repeat: kind == oweRepeat})
		first := len(e.waiting) == 1
		e.m.owedWaiting.Set(float64(len(e.waiting)))
		e.owedMu.Unlock()
		e.m.publishWaits.Inc()
		if first {
			select {
			case e.sendKick <- struct{}{}:
			default:
			}
		}
		return nil
	}
	ref := e.remember(key, topic, payload, status, ack, kind)
	e.owedMu.Unlock()
	tok := e.client.Publish(topic, 1, false, payload)
	e.gate.entered()
	return e.handedOwed(owedReply{tok: tok, payload: payload, ack: ack, app: app, status: status, conn: conn, owedRef: ref})
}

// remember puts an owed reply in the ledger, if its request is one the broker
// can deliver again (QoS 1: ack is not nil) and has an id, and the journal does
// not hold it (kind oweStored); owedMu held.
func (e *egress) remember(key store.Key, topic string, payload []byte, status protocol.Status, ack func(), kind oweKind) owedRef {
	if ack == nil || key.ID == "" || kind == oweStored {
		return owedRef{}
	}
	now := e.now()
	gen := e.ledger.put(key, topic, payload, status, now)
	e.countOwed()
	return owedRef{key: key, gen: gen, at: now}
}

// forgetOwed drops ref's ledger entry (its request was acknowledged, or its reply
// was never handed over); owedMu held.
func (e *egress) forgetOwed(ref owedRef) {
	if ref.gen == 0 {
		return
	}
	e.ledger.forget(ref.key, ref.gen)
	e.countOwed()
}

// handedOwed gives an owed reply handed to the client to the owed waiter.
func (e *egress) handedOwed(o owedReply) error {
	e.owedMu.Lock()
	if e.owedClosed {
		// Closed meanwhile: nobody will acknowledge the request, which the broker
		// delivers again.
		e.owedMu.Unlock()
		return errStopping
	}
	e.owed = append(e.owed, o)
	first := len(e.owed) == 1
	e.owedInFlight++
	e.m.owed.Set(float64(e.owedInFlight))
	e.owedMu.Unlock()
	if first {
		select {
		case e.owedKick <- struct{}{}:
		default:
		}
	}
	return nil
}

// owedSender hands the waiting owed replies to the client, in order, each as a
// place at the gate frees, until Close. A reply whose request arrived on a
// connection since lost is not sent: its request's acknowledgement would be
// dropped with that connection, and the broker delivers the request again.
func (e *egress) owedSender() {
	defer e.late.Done()
	for {
		select {
		case <-e.sendKick:
		case <-e.stop:
			return
		}
		for {
			e.owedMu.Lock()
			n := len(e.waiting)
			e.owedMu.Unlock()
			if n == 0 {
				break
			}
			// The head stays in waiting while this waits, so that Owe queues
			// behind it instead of taking the place it waits for.
			if err := e.gate.acquire(context.Background(), false, e.gate.generation()); err != nil { // counted when it was queued
				if errors.Is(err, errStopping) {
					return
				}
				continue // connection lost: its replies were dropped (connectionLost)
			}
			e.owedMu.Lock()
			if e.owedClosed || len(e.waiting) == 0 { // closed, or dropped by connectionLost
				e.owedMu.Unlock()
				e.gate.entered()
				continue
			}
			w := e.waiting[0]
			e.waiting[0] = owedMsg{}
			e.waiting = e.waiting[1:]
			e.m.owedWaiting.Set(float64(len(e.waiting)))
			e.owedMu.Unlock()
			if w.conn != e.conn.Load() || !e.client.IsConnectionOpen() {
				e.gate.entered()
				e.m.publishFails.Inc()
				if !w.repeat {
					e.owedMu.Lock()
					e.forgetOwed(w.owedRef) // never handed over: a copy is answered anew
					e.owedMu.Unlock()
				}
				continue
			}
			tok := e.client.Publish(w.topic, 1, false, w.payload)
			e.gate.entered()
			if e.handedOwed(owedReply{tok: tok, payload: w.payload, ack: w.ack, app: w.app, status: w.status, conn: w.conn, owedRef: w.owedRef}) != nil {
				return
			}
		}
	}
}

// connectionLost is told that the broker connection was lost (before each
// reconnection attempt, so before the next connection delivers anything): owed
// replies still waiting for a place are not sent (counted in sneakgate_publish_failures_total);
// their requests are left unacknowledged, and the broker delivers them again
// when the session resumes.
func (e *egress) connectionLost() {
	e.conn.Add(1)
	e.gate.interrupt() // publishers waiting for a place: not connected
	e.owedMu.Lock()
	n := len(e.waiting)
	for _, w := range e.waiting {
		if !w.repeat { // a repeat's bytes went out before, or wait ahead of it
			e.forgetOwed(w.owedRef) // never handed over: a copy is answered anew
		}
	}
	e.waiting = nil
	e.m.owedWaiting.Set(0)
	e.owedMu.Unlock()
	if n > 0 {
		e.m.publishFails.Add(float64(n))
		e.log.Warn().Int("replies", n).Msg("connection lost with replies to requests that are not journaled waiting for a packet id; their requests are left unacknowledged for redelivery")
	}
}

// owedWaiter acknowledges the requests of owed replies as their PUBACKs come, in
// the order the replies were handed over (the broker acknowledges a client's
// publishes in order), until Close.
func (e *egress) owedWaiter() {
	defer e.late.Done()
	for {
		select {
		case <-e.owedKick:
		case <-e.stop:
			return
		}
		for {
			e.owedMu.Lock()
			batch := e.owed
			e.owed = nil
			e.owedMu.Unlock()
			if len(batch) == 0 {
				break
			}
			for _, o := range batch {
				select {
				case <-o.tok.Done():
				case <-e.stop:
					return // Close stopped counting them
				}
				if o.tok.Error() == nil && !e.awaitAcked(o.tok, o.payload, e.stop, nil) {
					return // resent, not acknowledged yet, and Close stopped counting them
				}
				e.owedMu.Lock()
				if !e.owedClosed {
					e.owedInFlight--
					e.m.owed.Set(float64(e.owedInFlight))
				}
				if o.tok.Error() == nil && o.conn == e.conn.Load() && o.status != protocol.StatusDegraded {
					// The broker has the reply and is about to have the
					// request's acknowledgement. A failed reply stays: the
					// request comes back with the session, and paho may resend
					// the reply itself. So does one whose request arrived on an
					// earlier connection than the current one (the reply was
					// handed over, or resent by paho, after a reconnection):
					// paho drops the request's acknowledgement, and the broker
					// delivers the request again. An answer from the estimate
					// stays too, for the device's own resends (owedLedger).
					e.forgetOwed(o.owedRef)
				}
				e.owedMu.Unlock()
				if err := o.tok.Error(); err != nil {
					// Not acknowledged: the broker delivers the request again when
					// the session resumes (a connection that stays up is renewed
					// if paho still holds the reply: stranded.go).
					e.gate.strand(o.tok)
					e.m.publishFails.Inc()
					e.failLog.Warn().Err(err).Str("app", o.app).Str("status", string(o.status)).
						Msg("reply to a request that is not journaled failed; the request is left unacknowledged for redelivery")
					continue
				}
				e.m.replies.WithLabelValues(e.appLabel(o.app), string(o.status)).Inc()
				if o.ack != nil { // nil: a QoS 0 request, nothing to acknowledge
					o.ack()
				}
			}
		}
	}
}

// sendAnswers makes answers durable (in one group commit), publishes them and
// has the ack workers complete them. Each answer is stamped once it holds its
// place at the gate (a packet id the client can give it), so that the wait for
// the broker's PUBACKs (every place taken) is never between its stamp
// (deadline_met) and its hand-over: a batch that finds fewer places free than
// answers goes out in parts, each stamped when its places are taken. An answer
// that cannot get a place (not connected, the connection lost meanwhile, Close)
// is kept unsent, to be stamped when it finally goes out.
func (e *egress) sendAnswers(batch []*answerMsg) {
	for len(batch) > 0 {
		places := 0
		gen := e.gate.generation()
		if e.client.IsConnectionOpen() && e.gate.acquire(context.Background(), true, gen) == nil {
			places = 1 + e.gate.tryAcquire(len(batch)-1)
		}
		part := batch
		if places > 0 {
			part = batch[:places]
		}
		batch = batch[len(part):]
		e.sendPart(part, places > 0)
	}
}

// sendPart sends answers that hold a place each at the gate (held), or keeps
// them unsent (not held). Every place is given back exactly once.
func (e *egress) sendPart(part []*answerMsg, held bool) {
	now := e.now()
	type built struct {
		a       *answerMsg
		rep     *protocol.Reply
		payload []byte
	}
	out := make([]built, 0, len(part))
	for _, a := range part {
		rep := a.build(now)
		payload, err := rep.Marshal()
		if err != nil { // a Reply always marshals; keep the request rather than lose it
			e.log.Error().Err(err).Msg("marshal reply")
			if held {
				e.gate.entered()
			}
			continue
		}
		out = append(out, built{a, rep, payload})
	}
	// outboxAll writes them all to the outbox in one group commit.
	outboxAll := func(unsent bool) []error {
		items := make([]store.OutboxItem, len(out))
		for i, b := range out {
			items[i] = store.OutboxItem{Key: b.a.key, Reply: b.payload, FlushBy: b.a.deadline, Unsent: unsent}
		}
		return e.journal.OutboxAll(items)
	}
	if !held || !e.client.IsConnectionOpen() {
		if held {
			for range out {
				e.gate.entered()
			}
		}
		// Nobody can see them yet: keep them unsent, to be stamped when they go out.
		for i, err := range outboxAll(true) {
			if err != nil {
				e.storeError("outbox", err)
				e.storeLog(err).Err(err).Stringer("key", out[i].a.key).Msg("outbox write failed; the request stays pending and is answered after a restart")
			}
		}
		return
	}
	for _, b := range out {
		e.claim(b.a.key) // a key the loop answers is nobody else's
	}
	var errs []error
	if e.opts.Durable {
		errs = outboxAll(false)
	}
	hs := make([]*handedOver, len(out))
	for i, b := range out {
		written := false
		if e.opts.Durable {
			if err := errs[i]; err != nil {
				// Publish anyway: the device is waiting. The request stays pending in
				// the journal, so a restart may answer it a second time.
				e.storeError("outbox", err)
				e.storeLog(err).Err(err).Stringer("key", b.a.key).Msg("outbox write failed; publishing without it")
			} else {
				written = true
			}
		}
		if !b.a.queued.IsZero() {
			e.observeDelay(e.now().Sub(b.a.queued))
		}
		hs[i] = e.handOver(context.Background(), true, b.a.topic, b.a.key, b.a.deadline, b.rep.App, b.rep.Status, b.payload)
		hs[i].written = written
	}
	if len(hs) > 0 {
		e.acks <- hs
	}
}

// handedOver is a reply in the outbox that was handed to the MQTT client (or
// failed to be), waiting for the broker's acknowledgement.
type handedOver struct {
	topic   string
	key     store.Key
	flushBy time.Time
	app     string
	status  protocol.Status
	payload []byte
	written bool // the journal's outbox holds it (false: not durable yet)
	tok     mqtt.Token
	err     error
	at      time.Time
}

// handOver hands a reply already in the outbox, whose key the caller claimed, to
// the MQTT client without waiting for the PUBACK; finishAnswer waits for the
// outcome. held: the caller holds a place at the gate for it, given back here;
// otherwise it waits for one.
func (e *egress) handOver(ctx context.Context, held bool, topic string, key store.Key, flushBy time.Time, app string, status protocol.Status, payload []byte) *handedOver {
	h := &handedOver{topic: topic, key: key, flushBy: flushBy, app: app, status: status, payload: payload,
		written: true}
	if held {
		h.tok, h.err = e.publishHeld(topic, payload)
	} else {
		h.tok, h.err = e.startPublish(ctx, topic, payload)
	}
	h.at = e.now() // the publish timeout counts from the hand-over, after any wait for a place
	return h
}

// publishAnswer hands a reply over (held: see handOver) and waits for the
// outcome (finishAnswer).
func (e *egress) publishAnswer(ctx context.Context, held bool, topic string, key store.Key, flushBy time.Time, app string, status protocol.Status, payload []byte) bool {
	return e.finishAnswer(e.handOver(ctx, held, topic, key, flushBy, app, status, payload))
}

// finishAnswer waits for the broker's acknowledgement of a reply handed over
// and completes the request. A reply that fails stays in the outbox (counted
// when it was not yet) for the flusher; one whose PUBACK is late is awaited,
// bounded. The key is released once nothing waits for it any more. It reports
// whether the broker has the reply.
func (e *egress) finishAnswer(h *handedOver) bool {
	err := h.err
	if err == nil {
		if err = e.waitPublish(h.tok, h.payload, h.at); err != nil && !errors.Is(err, errPublishTimeout) {
			e.gate.strand(h.tok) // failed, perhaps unsent: stranded.go
		}
	}
	if err == nil {
		e.m.replies.WithLabelValues(e.appLabel(h.app), string(h.status)).Inc()
		k := h.key
		e.journal.CompleteAsync(k, h.payload, func(err error) {
			if err != nil {
				e.completeFailed(k, err)
			}
			e.release(k)
		})
		return true
	}
	e.m.publishFails.Inc()
	if !h.written {
		// Not in the outbox yet (durable replies off, or the write failed). A reply
		// never handed to the broker is kept unsent, to be stamped anew when it
		// goes out; one the broker may have is kept as it is. (A reply already
		// written as sent keeps its bytes either way: a duplicate may have them.)
		keep := e.journal.Outbox
		if errors.Is(err, errNotConnected) || errors.Is(err, errStopping) {
			keep = e.journal.OutboxUnsent
		}
		if werr := keep(h.key, h.payload, h.flushBy); werr != nil {
			e.storeError("outbox", werr)
			e.storeLog(werr).Err(werr).Stringer("key", h.key).Msg("outbox write failed; the request stays pending and is answered after a restart")
		}
	}
	if errors.Is(err, errPublishTimeout) {
		e.awaitLate(h.key, h.tok, h.app, h.status, h.payload)
	} else {
		e.release(h.key)
	}
	e.failLog.Warn().Err(err).Stringer("key", h.key).Msg("reply kept in the outbox until the broker has it")
	return false
}

// sendRaw publishes a republished reply and waits (bounded) for its PUBACK; one
// that waited too long in the queue, or finds the broker away, is dropped and
// counted.
func (e *egress) sendRaw(r rawMsg) {
	if e.opts.RawMaxAge > 0 && e.now().Sub(r.queued) > e.opts.RawMaxAge {
		e.m.dropped.WithLabelValues(string(r.status)).Inc()
		return
	}
	if t, err := e.publish(context.Background(), r.topic, r.payload); err != nil && !errors.Is(err, errPublishTimeout) {
		// On a timeout the MQTT client still holds it and sends it after all.
		if t != nil {
			e.gate.strand(t)
		}
		e.m.dropped.WithLabelValues(string(r.status)).Inc()
		return
	}
	e.m.replies.WithLabelValues(e.appLabel(r.app), string(r.status)).Inc()
}

// claim marks k busy and reports whether it was free.
func (e *egress) claim(k store.Key) bool {
	e.busyMu.Lock()
	defer e.busyMu.Unlock()
	if e.busy[k] {
		return false
	}
	e.busy[k] = true
	return true
}

func (e *egress) release(k store.Key) {
	e.busyMu.Lock()
	delete(e.busy, k)
	e.busyMu.Unlock()
}

func (e *egress) isBusy(k store.Key) bool {
	e.busyMu.Lock()
	defer e.busyMu.Unlock()
	return e.busy[k]
}

// awaitLate keeps waiting for a publish that timed out and whose reply is in the
// outbox, keeping its key busy: if the broker acknowledges it after all (it, or
// the MQTT client's resend of it: awaitAcked), the request is completed (and
// leaves the outbox); if it fails, the flusher takes over. At most MaxLate are
// awaited; beyond that the key is released at once and the flusher may publish
// a second, identical copy.
func (e *egress) awaitLate(k store.Key, t mqtt.Token, app string, status protocol.Status, payload []byte) {
	e.busyMu.Lock()
	if e.nLate >= e.opts.MaxLate || e.lateClosed {
		delete(e.busy, k)
		e.busyMu.Unlock()
		return
	}
	e.nLate++
	e.busyMu.Unlock()
	e.late.Add(1)
	go func() {
		defer e.late.Done()
		defer func() {
			e.busyMu.Lock()
			delete(e.busy, k)
			e.nLate--
			e.busyMu.Unlock()
		}()
		select {
		case <-t.Done():
		case <-e.stop:
			return
		}
		if t.Error() != nil {
			e.gate.strand(t)
			return
		}
		if e.awaitAcked(t, payload, e.stop, nil) {
			e.m.replies.WithLabelValues(e.appLabel(app), string(status)).Inc()
			e.complete(k, payload)
		}
	}()
}

// storeLog is the error event for a failed journal write: sampled when the
// journal's disk is full (store.ErrNoSpace), when every answer's write may fail
// for a while and the store has logged why.
func (e *egress) storeLog(err error) *zerolog.Event {
	if errors.Is(err, store.ErrNoSpace) {
		return e.noSpaceLog.Error()
	}
	return e.log.Error()
}

// storeError counts a failed journal operation and passes the error on.
func (e *egress) storeError(op string, err error) {
	e.m.storeErrors.WithLabelValues(op).Inc()
	if e.journalError != nil {
		e.journalError(err)
	}
}

func (e *egress) complete(k store.Key, payload []byte) {
	if err := e.journal.Complete(k, payload); err != nil {
		e.completeFailed(k, err)
	}
}

func (e *egress) completeFailed(k store.Key, err error) {
	e.storeError("complete", err)
	e.storeLog(err).Err(err).Stringer("key", k).Msg("journal complete failed; the same reply may be published again after a restart")
}

// Stop stops taking replies and waits, at most until ctx ends, for the queued ones
// to be published. Answers still queued then stay pending in the journal.
func (e *egress) Stop(ctx context.Context) {
	e.sendMu.Lock()
	if !e.closed {
		e.closed = true
		close(e.answersKick)
		close(e.raw)
	}
	e.sendMu.Unlock()
	done := make(chan struct{})
	go func() {
		e.stopOnce.Do(func() {
			e.answerW.Wait() // they hand answers to the ack workers
			close(e.acks)
		})
		e.workers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// giveUp ends every wait for the broker, for a stop that cannot wait any
// longer (mqtt.shutdown_timeout): no publish waits for a place at the gate any
// more (answers not handed over are kept unsent in the outbox, to be stamped
// when they go out after the next start; the flusher and the owed sender stop;
// republished replies are dropped and counted), and none waits for its PUBACK
// (an answer whose PUBACK has not come stays in the outbox, and is published
// again after the next start). Replies to requests that are not journaled still
// waiting leave their requests unacknowledged, for the broker to deliver again.
func (e *egress) giveUp() {
	e.giveUpOnce.Do(func() {
		close(e.gaveUp)
		e.gate.close()
	})
}

// gaveUpOnBroker reports whether giveUp was called.
func (e *egress) gaveUpOnBroker() bool {
	select {
	case <-e.gaveUp:
		return true
	default:
		return false
	}
}

// Close makes late waiters and the owed waiter give up, and no new one start
// (workers still running after a Stop that timed out may try; Owe refuses from
// then on and its requests stay unacknowledged); call it after Stop, before the
// journal closes. It returns how many replies to requests that are not
// journaled it gave up (in flight or waiting): their requests are left
// unacknowledged, and the broker delivers them again.
func (e *egress) Close() (unacknowledged int) {
	e.busyMu.Lock()
	e.lateClosed = true
	e.busyMu.Unlock()
	e.owedMu.Lock()
	if !e.owedClosed {
		unacknowledged = e.owedInFlight + len(e.waiting)
	}
	e.owedClosed, e.owed, e.owedInFlight, e.waiting = true, nil, 0, nil
	e.m.owed.Set(0)
	e.m.owedWaiting.Set(0)
	e.owedMu.Unlock()
	close(e.stop)
	e.gate.close() // publishers waiting for a place give up (errStopping)
	e.late.Wait()
	return unacknowledged
}

// appLabel is app as a metric label: "_unknown" for an application not served.
func (e *egress) appLabel(app string) string {
	if e.served != nil && e.served(app) {
		return app
	}
	return "_unknown"
}

// startPublish hands payload to the MQTT client at QoS 1 without waiting for
// the PUBACK. It waits for a place at the gate (a packet id the client can
// give it): errStopping once Close has closed the gate, errNotConnected when the
// connection is lost meanwhile, ctx's error when it ends first.
func (e *egress) startPublish(ctx context.Context, topic string, payload []byte) (mqtt.Token, error) {
	gen := e.gate.generation() // before the check: a loss after it ends the wait
	if !e.client.IsConnectionOpen() {
		return nil, errNotConnected
	}
	if err := e.gate.acquire(ctx, true, gen); err != nil {
		return nil, err
	}
	return e.publishHeld(topic, payload)
}

// publishHeld hands payload to the MQTT client at QoS 1 in a place the caller
// took at the gate, and gives the place back (what the client stores holds a
// place of its own from then on).
func (e *egress) publishHeld(topic string, payload []byte) (mqtt.Token, error) {
	defer e.gate.entered()
	if !e.client.IsConnectionOpen() { // lost since the place was taken
		return nil, errNotConnected
	}
	return e.client.Publish(topic, 1, false, payload), nil
}

// waitPublish waits until the broker has acknowledged a publish of payload
// started at start (its token t completed without an error and, if the MQTT
// client resent it on a new connection, the resend acknowledged: awaitAcked),
// at most the publish timeout counted from start, or until giveUp.
func (e *egress) waitPublish(t mqtt.Token, payload []byte, start time.Time) error {
	var timeout <-chan time.Time
	select {
	case <-t.Done():
	default:
		wait := time.NewTimer(max(e.timeout-e.now().Sub(start), time.Millisecond))
		defer wait.Stop()
		timeout = wait.C
		select {
		case <-t.Done():
		case <-timeout:
			return errPublishTimeout
		case <-e.gaveUp:
			return errPublishTimeout
		}
	}
	if err := t.Error(); errors.Is(err, mqtt.ErrNotConnected) {
		return fmt.Errorf("%w: %v", errNotConnected, err)
	} else if err != nil {
		return err
	}
	if !e.gate.stores(t, payload) {
		return nil
	}
	if timeout == nil { // t was done at once: the timer was not started
		wait := time.NewTimer(max(e.timeout-e.now().Sub(start), time.Millisecond))
		defer wait.Stop()
		timeout = wait.C
	}
	if !e.awaitAcked(t, payload, e.gaveUp, timeout) {
		return errPublishTimeout
	}
	return nil
}

// Resent publishes. With the gateway's persistent session paho (1.5.1) resends
// what it stores on each new connection (client.go resume, line 1118): it gives
// each stored publish a token of its own and, taking its packet id for it
// (messageids.go claimID, line 97), completes the publisher's token WITHOUT an
// error, before the broker has acknowledged either copy. The broker's PUBACK,
// by contrast, deletes the stored packet before it completes the token
// (net.go line 197, persistInbound, before line 227). So a token completed
// without an error whose packet the client still stores (pubGate.stores) was
// resent, not acknowledged: taking it for a PUBACK would complete its request
// in the journal (the outbox no longer holds the reply) or acknowledge it (a
// request not journaled) while only the client's memory holds the reply, lost
// with the process or with a stop that gives up on the broker. awaitAcked
// waits, after such a token completed, until the stored packet goes: the
// resend's PUBACK (the gate's Del, which wakes it: pubGate.deletion; paho
// tells nothing else).

// awaitAcked waits, t having completed without an error, until the broker has
// acknowledged the packet of t (payload): at once unless the client still
// stores it (resent, above). It reports false when stop is closed or timeout
// fires first (either may be nil).
func (e *egress) awaitAcked(t mqtt.Token, payload []byte, stop <-chan struct{}, timeout <-chan time.Time) bool {
	if !e.gate.stores(t, payload) {
		return true
	}
	for {
		deleted := e.gate.deletion() // before looking again: a Del in between closes it
		if !e.gate.stores(t, payload) {
			return true
		}
		select {
		case <-deleted:
		case <-stop:
			return false
		case <-timeout:
			return false
		}
	}
}

// Errors of publish.
var (
	// errPublishTimeout: the broker did not acknowledge in time; the MQTT client
	// still holds the message and may deliver it later.
	errPublishTimeout = errors.New("publish not acknowledged in time")
	// errNotConnected: the message was not handed to the broker at all.
	errNotConnected = errors.New("not connected to the broker")
)

// publish publishes at QoS 1 and waits for the PUBACK up to the timeout. On
// errPublishTimeout the returned token is still pending: the client keeps the
// message and resends it after a reconnect.
func (e *egress) publish(ctx context.Context, topic string, payload []byte) (mqtt.Token, error) {
	t, err := e.startPublish(ctx, topic, payload)
	if err != nil {
		return nil, err
	}
	return t, e.waitPublish(t, payload, e.now())
}

// Kick asks the flusher to flush the outbox (on reconnect).
func (e *egress) Kick() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Flusher flushes the outbox whenever kicked and every interval, until ctx ends.
func (e *egress) Flusher(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.kick:
		case <-t.C:
		}
		e.flush(ctx)
	}
}

// flushChunk is the most outbox replies the flusher stamps in one journal
// commit and hands to the MQTT client before it waits for their PUBACKs.
const flushChunk = 256

// flush publishes waiting replies in deadline order, at most rate per second,
// and stops after the chunk with the first failure (the broker is still away;
// the rest of that chunk was handed over already). A reply that may
// have been delivered already is published again unchanged; an unsent one is
// stamped now (restamp) and made durable as sent before it goes out.
//
// It works in chunks, as the answer workers do: it takes up to flushChunk
// places at the gate, makes the chunk's unsent replies durable as sent in one
// group commit, hands the chunk over and then waits for its acknowledgements.
// One reply at a time, each its own commit and round trip to the broker, the
// outbox drained at about 250 replies a second on a 2-core machine whatever
// mqtt.flush_rate said: minutes after an outage of a busy gateway.
func (e *egress) flush(ctx context.Context) {
	if !e.client.IsConnectionOpen() {
		return
	}
	entries, err := e.journal.OutboxEntries()
	if err != nil {
		e.storeError("outbox_read", err)
		e.log.Error().Err(err).Msg("outbox read failed")
		return
	}
	if len(entries) == 0 {
		return
	}
	chunk, gap := flushChunk, time.Duration(0)
	if e.rate > 0 {
		gap = time.Duration(float64(time.Second) / e.rate)
		// A tenth of a second's worth at a time, so that the cap holds over
		// short spans too.
		// (Bounded before the conversion: a huge rate's tenth is no int.)
		chunk = max(1, int(min(flushChunk, e.rate/10)))
	}
	logged := false // the log line comes with the first reply really flushed
	for len(entries) > 0 {
		if ctx.Err() != nil {
			return
		}
		// Skip the replies being published before waiting for a place: most of
		// a serving gateway's outbox, and the gate is full when their PUBACKs
		// are slow. (flushTake skips those that turn busy meanwhile.)
		for len(entries) > 0 && e.isBusy(entries[0].Key) {
			entries = entries[1:]
		}
		if len(entries) == 0 {
			return
		}
		// Take places at the gate (packet ids the client can give) before an
		// unsent reply is stamped, waiting for the first at most until the
		// flusher stops or the connection is lost.
		gen := e.gate.generation()
		if !e.client.IsConnectionOpen() || e.gate.acquire(ctx, true, gen) != nil {
			return
		}
		places := 1 + e.gate.tryAcquire(min(chunk, len(entries))-1)
		var part []flushReply
		part, entries = e.flushTake(entries, places)
		for range places - len(part) {
			e.gate.entered()
		}
		if len(part) == 0 {
			continue
		}
		if !logged {
			// Not before: most of a serving gateway's outbox is replies whose
			// publish is under way, which this flush skips.
			e.log.Info().Int("replies", len(part)+len(entries)).Msg("flushing the outbox")
			logged = true
		}
		ok := e.flushPart(ctx, gen, part)
		if !ok {
			e.log.Warn().Int("left", len(entries)).Msg("outbox flush interrupted")
			return
		}
		if gap > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(gap * time.Duration(len(part))):
			}
		}
	}
}

// flushReply is an outbox entry the flusher claimed, as the journal holds it now.
type flushReply struct {
	oe      store.OutboxEntry
	payload []byte
	status  protocol.Status
}

// flushTake claims up to n of entries, the first ones that are free and still
// in the outbox, and returns them (read afresh) and the entries after the last
// one it looked at.
func (e *egress) flushTake(entries []store.OutboxEntry, n int) (part []flushReply, rest []store.OutboxEntry) {
	i := 0
	for ; i < len(entries) && len(part) < n; i++ {
		oe := entries[i]
		if !e.claim(oe.Key) {
			continue // being published, or its first publish may still be acknowledged
		}
		// The list is a snapshot: since it was read, a worker may have completed
		// this entry, or turned it from sent into unsent. Act on it as it is now.
		cur, err := e.journal.OutboxEntry(oe.Key)
		if err != nil || cur == nil {
			if err != nil {
				e.storeError("outbox_read", err)
			}
			e.release(oe.Key)
			continue
		}
		part = append(part, flushReply{oe: *cur, payload: cur.Reply})
	}
	return part, entries[i:]
}

// flushPart publishes part, whose keys the flusher claimed, each holding a
// place at the gate taken on connection gen (generation): the unsent replies
// are stamped now and written as sent in one group commit, then every reply is
// handed over, then their PUBACKs are awaited. It reports whether the broker
// has them all.
func (e *egress) flushPart(ctx context.Context, gen uint64, part []flushReply) bool {
	now := e.now()
	var items []store.OutboxItem
	var restamped []int
	for i := range part {
		f := &part[i]
		if !f.oe.Unsent {
			continue
		}
		rep, err := protocol.ParseReply(f.oe.Reply)
		if err != nil {
			e.log.Error().Err(err).Stringer("key", f.oe.Key).Msg("unreadable reply in the outbox: published as it is")
			continue
		}
		restamp(rep, f.oe.Received, f.oe.Deadline, now)
		f.status = rep.Status
		if payload, err := rep.Marshal(); err == nil {
			f.payload = payload
		}
		items = append(items, store.OutboxItem{Key: f.oe.Key, Reply: f.payload, FlushBy: f.oe.FlushBy})
		restamped = append(restamped, i)
	}
	if e.gate.generation() != gen || !e.client.IsConnectionOpen() {
		// Lost since the places were taken (reading the chunk takes a while):
		// written as sent, the chunk's unsent replies would keep stamps of
		// before the outage whenever they go out. Keep them unsent, as the
		// answer workers do (sendPart).
		for _, f := range part {
			e.gate.entered()
			e.release(f.oe.Key)
		}
		return false
	}
	failed := map[int]bool{}
	if len(items) > 0 {
		for n, err := range e.journal.OutboxAll(items) {
			if err != nil {
				// Publishing bytes the journal does not hold would let a repeat
				// differ from them: leave it unsent for the next flush.
				e.storeError("outbox", err)
				e.storeLog(err).Err(err).Stringer("key", items[n].Key).Msg("outbox write failed; flush stopped")
				failed[restamped[n]] = true
			}
		}
	}
	hs := make([]*handedOver, 0, len(part))
	for i := range part {
		f := &part[i]
		if failed[i] {
			e.gate.entered()
			e.release(f.oe.Key)
			continue
		}
		if f.status == "" {
			if rep, err := protocol.ParseReply(f.payload); err == nil {
				f.status = rep.Status
			}
		}
		topic := f.oe.ReplyTo
		if e.replyTo != nil {
			topic = e.replyTo(topic, f.oe.Key)
		}
		hs = append(hs, e.handOver(ctx, true, topic, f.oe.Key, f.oe.FlushBy, f.oe.App, f.status, f.payload))
	}
	ok := len(failed) == 0
	for _, h := range hs {
		if !e.finishAnswer(h) { // releases the key
			ok = false
		}
	}
	return ok
}
