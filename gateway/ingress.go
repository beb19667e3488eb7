package gateway

import (
	"errors"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
	"github.com/sneakgate/sneakgate/store"
)

// Ingress is bounded end to end, and it acknowledges a request only once the
// request is journaled or its terminal reply is with the broker. paho calls
// onMessage on its router goroutine, one message at a time
// (SetOrderMatters(true)); onMessage hands the message to a bounded queue read
// by a fixed pool of workers and, when that queue is full, waits for room: the
// MQTT client stops reading, and the broker keeps what it has not sent (flow
// control, instead of acknowledging messages nobody has read). Workers parse,
// admit, journal, acknowledge and submit. A request answered without being
// journaled (refused, rejected, answered from its estimate, expired on arrival)
// is acknowledged when the broker has acknowledged its reply (egress.Owe).
//
// The workers never wait for a PUBACK: the MQTT client reads the broker's
// PUBACKs on the same connection, behind the requests onMessage may be waiting
// to hand over, so a worker waiting for one while onMessage waits for a worker
// would stall the connection.

// arrival is a request message and when it reached the gateway.
type arrival struct {
	msg mqtt.Message
	at  time.Time
	// bytes is what the message took from the ingress budget (given back
	// when its handler is done).
	bytes int64
	// conn is the broker connection it arrived on (egress.conn).
	conn uint64
}

// connMessage is a request message with the broker connection it arrived on
// (egress.conn), which handle passes down to the reply: paho drops the
// acknowledgement of a message that arrived on an earlier connection, so the
// broker delivers it again (egress.Owe).
type connMessage struct {
	mqtt.Message
	conn uint64
}

// arrivedOn is the broker connection msg arrived on: the one handle recorded,
// or the current one.
func (g *Gateway) arrivedOn(msg mqtt.Message) uint64 {
	if m, ok := msg.(connMessage); ok {
		return m.conn
	}
	return g.connection()
}

// connection is the current broker connection's number (egress.conn; 0 before
// the egress exists).
func (g *Gateway) connection() uint64 {
	if g.egress == nil {
		return 0
	}
	return g.egress.conn.Load()
}

// onMessage is the MQTT handler for requests (paho's router goroutine).
func (g *Gateway) onMessage(_ mqtt.Client, msg mqtt.Message) {
	if msg.Retained() {
		// A retained "request" would be replayed to the gateway on every
		// reconnect; requests are never retained (docs/protocol.md). Sampled
		// (rejectLog): a device may leave one on any number of topics.
		g.m.ignored.WithLabelValues("retained").Inc()
		g.rejectLog.Warn().Str("topic", msg.Topic()).Msg("retained message on a request topic ignored; clear it with an empty retained publish")
		msg.Ack()
		return
	}
	if g.draining.Load() {
		return // not acknowledged: the broker redelivers it to the next session
	}
	a := arrival{msg: msg, at: g.now(), bytes: g.inBytes.weight(len(msg.Payload())), conn: g.connection()}
	taken := g.inBytes.tryTake(a.bytes)
	if taken {
		select {
		case g.in <- a:
			return
		default:
		}
	}
	// The workers are behind, or the messages they hold and those queued for
	// them take admission.ingress_bytes: wait (the time counts against the
	// request's deadline). Meanwhile the broker holds the messages it has not
	// sent, and the readiness probe says overloaded.
	g.m.ingressWaits.Inc()
	g.lastIngressWait.Store(a.at)
	g.ingressWaiting.Add(1) // paho's router is one goroutine: 0 or 1
	defer g.ingressWaiting.Add(-1)
	if !taken && !g.inBytes.take(a.bytes, g.stopIngress) {
		return // stopping: not acknowledged, the broker redelivers it to the next session
	}
	select {
	case g.in <- a:
	case <-g.stopIngress:
		// Stopping: not acknowledged, the broker redelivers it to the next session.
		g.inBytes.give(a.bytes)
	}
}

// handleAndGive handles a and then gives back the bytes it took from the
// ingress budget (a handler's panic is recovered inside handle; the deferred
// give covers one that is not).
func (g *Gateway) handleAndGive(a arrival) {
	defer g.inBytes.give(a.bytes)
	g.handle(a)
}

// owe publishes rep, the reply to a request that is not journaled, and
// acknowledges msg once the broker has the reply. A reply the MQTT client cannot
// take now (not connected, stopping) leaves the request unacknowledged: the
// broker delivers it again when the session resumes.
func (g *Gateway) owe(msg mqtt.Message, topic string, rep *protocol.Reply) {
	ack := msg.Ack
	if msg.Qos() == 0 {
		// Nothing to acknowledge: holding the message until the reply's PUBACK
		// would keep its payload alive outside admission.ingress_bytes; and the
		// reply is best effort (egress.Owe).
		ack = nil
	}
	g.oweFailed(g.egress.OweOn(topic, rep, ack, g.arrivedOn(msg)), store.Key{App: rep.App, Device: rep.Device, ID: rep.ID}, rep.Status)
}

// oweFailed logs (sampled) an owed reply the MQTT client could not take; err
// nil: nothing to say.
func (g *Gateway) oweFailed(err error, key store.Key, status protocol.Status) {
	if err != nil {
		g.rejectLog.Warn().Err(err).Str("app", key.App).Str("device", key.Device).Str("id", key.ID).
			Str("status", string(status)).Msg("reply not handed to the broker; request left unacknowledged for redelivery")
	}
}

// repeatOwed answers a copy of a request whose reply went to the broker without
// the request being journaled with the same bytes, on the topic they went to (a
// copy rejected unknown_app after a reload would name the device's own), and
// reports whether it did (egress.Owed): a copy the broker delivers again (DUP
// set) while the request is not acknowledged (the connection was lost before
// the reply's PUBACK, or the request arrived on a connection since lost), and
// any copy, within the ledger's bounds, of a request answered from its estimate
// (degraded), as a journaled request's copies get its stored reply. Answered
// anew, such a copy would often contradict the first reply: an answer from the
// estimate first, then expired because the outage took its budget. The
// device's client resends a request whose PUBACK it never had (a broker that
// stopped), and the broker passes it on as a new message, DUP clear. A retry of
// a refused request (DUP clear, typically after retry_after_ms) is a new
// request, as the protocol says. The copy is acknowledged once the broker has
// the reply, like the first. A key the journal knows is left to the journal's
// answer (Gateway.answeredBefore, duplicate): the remembered reply would
// contradict it. answering is called just before the reply is handed over
// (from then on a panic does not answer the copy anew: handle).
func (g *Gateway) repeatOwed(msg mqtt.Message, replyTo string, key store.Key, answering func()) bool {
	if msg.Qos() == 0 || replyTo == "" {
		return false
	}
	r, ok := g.egress.Owed(key)
	if !ok || (!msg.Duplicate() && r.status != protocol.StatusDegraded) {
		return false
	}
	// The journal may have stored the key since (the device's own retry,
	// admitted while this copy's first delivery was not acknowledged): then
	// its answer is the one that counts, and the paths below give it. A failed
	// lookup is left to them too (they look up again, and report it).
	if res, err := g.journal.Lookup(key); (err != nil && !errors.Is(err, store.ErrInvalid)) || (err == nil && res.Dup != store.New) {
		return false
	}
	g.m.duplicates.WithLabelValues("unjournaled").Inc()
	g.log.Debug().Stringer("key", key).Msg("copy of a request answered without the journal: the same reply published again")
	answering()
	g.oweFailed(g.egress.Repeat(key, r, msg.Ack, g.arrivedOn(msg)), key, r.status)
	return true
}

// handle admits one request. It acknowledges a request only after the journal has
// committed it; a request it cannot journal while stopping is left
// unacknowledged, so the broker delivers it again when the session resumes. A
// panic is recovered: a request whose header parsed and whose reply is not yet
// handed over nor the request handed to the journal is rejected internal
// (panicked), one the journal failed to store because it broke or is stopping
// is left unacknowledged, one journaled as new and not yet handed to the loop
// is handed to it all the same (submitAfterPanic), and any other (its reply
// being handed over, or the loop has it) is acknowledged and dropped.
func (g *Gateway) handle(a arrival) {
	var msg mqtt.Message = connMessage{Message: a.msg, conn: a.conn}
	// Shutdown sets draining, then takes the write lock: from then on workers
	// leave messages unacknowledged, and shutdown waits for those already inside.
	if !g.admitting.TryRLock() {
		return
	}
	defer g.admitting.RUnlock()
	// The application looked up below is the one the job is submitted under
	// (Reload waits for handlers in flight before it swaps applications).
	g.swapping.RLock()
	defer g.swapping.RUnlock()
	reserved := false // a queue place this handler holds
	var req *protocol.Request
	// onPanic is what the recover below does with the request, by how far its
	// handling got: panicAnswer from when its header parsed until the handler
	// starts answering it or hands it to the journal, panicLeave after a
	// journal write that failed because the journal broke or is stopping.
	onPanic := panicAck
	var journaled *job // the request, once journaled as new (panicSubmit)
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		g.m.handlerPanics.Inc()
		if reserved {
			g.loop.ReleaseFor(req.Device) // reserved: req parsed
		}
		switch onPanic {
		case panicAnswer:
			g.log.Error().Interface("panic", p).Str("topic", msg.Topic()).Msg("request handler panicked before answering or journaling the request; answered rejected internal (or as a repeat)")
			g.panicked(msg, req)
		case panicLeave:
			g.log.Error().Interface("panic", p).Str("topic", msg.Topic()).Msg("request handler panicked after a failed journal write; message left for redelivery")
		case panicSubmit:
			g.log.Error().Interface("panic", p).Str("topic", msg.Topic()).Msg("request handler panicked after journaling the request; handed to the loop all the same")
			g.submitAfterPanic(journaled)
		default:
			// Its reply was being handed over, or it is journaled (the loop
			// or the next session answers it).
			g.log.Error().Interface("panic", p).Str("topic", msg.Topic()).Msg("request handler panicked; message acknowledged and dropped")
			msg.Ack()
		}
	}()
	// Received is when the message arrived, not when a worker got to it: time in
	// the hand-off queue counts against the deadline.
	now := a.at
	// The input is decoded only once the request is admitted: refusing one under
	// overload costs little more than reading its header.
	var rej *protocol.Rejection
	req, rej = protocol.ParseHeader(msg.Topic(), msg.Payload(), now, g.env)
	if rej != nil {
		if rej.Reason == protocol.ReasonDeadlinePast || rej.Reason == protocol.ReasonDeadlineTooSoon || rej.Reason == protocol.ReasonUnknownApp {
			if rej.ID != "" {
				// A copy whose first delivery another worker is journaling
				// waits for it, as the paths below do: otherwise the lookup,
				// which sees only committed records, misses the first copy,
				// and the id gets this rejection and then the first copy's
				// answer.
				key := store.Key{App: rej.App, Device: rej.Device, ID: rej.ID}
				defer g.claim(key)()
				if g.repeatOwed(msg, rej.ReplyTo, key, func() {}) { // onPanic: panicAck
					return
				}
			}
			if g.answeredBefore(msg, rej) {
				return // a redelivered copy of a request the journal knows, or a failed lookup
			}
		}
		g.reject(msg, rej)
		return
	}
	onPanic = panicAnswer
	app, _ := g.app(req.App) // ParseHeader found it
	if !req.SentAt.IsZero() && !msg.Duplicate() {
		// First deliveries only: a redelivery (DUP set, by the broker or the
		// device after a reconnect) keeps its sent_at and would count the
		// outage.
		g.m.transit.WithLabelValues(req.App).Observe(max(req.Received.Sub(req.SentAt), 0).Seconds())
	}
	key := store.Key{App: req.App, Device: req.Device, ID: req.ID}
	// A redelivered copy handled by another worker at the same time waits for
	// it, and then finds it in the journal.
	defer g.claim(key)()
	if g.repeatOwed(msg, req.ReplyTo, key, func() { onPanic = panicAck }) {
		return
	}
	if req.ExpiredOnArrival() {
		onPanic = panicAck
		g.expiredOnArrival(msg, req, key)
		return
	}
	reserved, deviceFull := g.loop.ReserveFor(req.Device, g.cfg.Admission.MaxQueue, g.cfg.Admission.MaxQueuePerDevice)
	if reserved {
		// (app is not nil: the swapping lock keeps the applications ParseHeader saw.)
		if g.cfg.Admission.MaxWait > 0 && g.cannotServe(req.Budget(), app != nil && app.est != nil) {
			g.loop.ReleaseFor(req.Device)
			reserved = false
		}
	}
	if !reserved {
		// Refused, unless it is a duplicate: that is answered as a duplicate
		// below (Put does not add it to the queue).
		res, ok := g.lookup(key)
		if !ok {
			return // left unacknowledged (lookup)
		}
		if res.Dup == store.New && deviceFull {
			onPanic = panicAck
			g.refuseDevice(msg, req)
			return
		}
		if res.Dup == store.New {
			g.loop.refused.Add(1)
			if g.degradeRefused(msg, req, app, func() { onPanic = panicAck }) {
				return
			}
			onPanic = panicAck
			q, wait := g.loop.Queued(), g.estimatedWait()
			g.refuse(msg, req, protocol.ReasonOverload, fmt.Sprintf("%d requests queued, about %s to drain; the deadline budget is %s",
				q, wait.Round(time.Millisecond), req.Budget()), max(wait, minRetryAfter))
			return
		}
	}
	release := func() {
		if reserved {
			g.loop.ReleaseFor(req.Device)
			reserved = false // not again, by the recover
		}
	}
	if rej := req.DecodeInput(); rej != nil {
		release()
		onPanic = panicAck
		g.reject(msg, rej)
		return
	}
	est, correct, answer, mix := g.estimate(app, req.Input)
	var pre *scheduler.Request // prepared for admission's tests; the loop takes it over
	if reserved {
		var reason protocol.Reason
		if pre, reason = g.answersAtAdmission(req, app, est, correct, answer, mix); reason != "" {
			// Not journaled: answered like a request admission refuses, unless the
			// journal knows it (a redelivered copy), which takes the normal path.
			// So does a request whose lookup failed: Put, below, is the authority
			// (it stores it, finds it known, or fails and says what to do).
			res, err := g.journal.Lookup(key)
			if err != nil {
				g.m.storeErrors.WithLabelValues("lookup").Inc()
				g.log.Warn().Err(err).Stringer("key", key).Msg("journal lookup failed; the request is not answered at admission: Put decides")
			}
			if err == nil && res.Dup == store.New {
				release()
				if reason == protocol.ReasonEstimateWorthMore {
					// The scheduler's verdict, given at admission.
					g.m.verdicts.WithLabelValues(req.App, scheduler.Degraded.String(), string(reason)).Inc()
					g.m.admissionEst.WithLabelValues(req.App).Inc()
				} else {
					g.m.admissionShed.WithLabelValues(req.App).Inc()
				}
				g.observe(app, answer)
				onPanic = panicAck
				g.answerFromEstimate(msg, req, app, orRaw(answer, est), reason)
				return
			}
		}
	}
	onPanic = panicAck // Put may store it even if it panics
	res, err := g.journal.Put(&store.Entry{Key: key, Received: req.Received, Deadline: req.Deadline,
		ReplyTo: req.ReplyTo, Input: req.Input})
	if err != nil {
		release()
		// Nothing was stored unless the journal broke (below); a panic from here
		// on answers the request as its switch case would leave it.
		stopping := g.draining.Load()
		if stopping || errors.Is(err, store.ErrDamaged) || errors.Is(err, store.ErrCorrupt) {
			onPanic = panicLeave
		} else {
			onPanic = panicAnswer
		}
		g.m.storeErrors.WithLabelValues("put").Inc()
		g.journalDamage(err)
		switch {
		case stopping:
			// Stopping: leave it unacknowledged; the broker redelivers it to the
			// next session, which journals it.
			g.log.Warn().Err(err).Stringer("key", key).Msg("journal write failed while stopping; request left for redelivery")
		case errors.Is(err, store.ErrDamaged):
			// The journal broke (journalError stops the gateway). The request may
			// be in it even so: a commit whose last sync failed after bbolt wrote
			// its meta page is in the file. A refusal now and an answer from the
			// next session, which finds it pending, would be two answers to one
			// journaled request; left unacknowledged, the broker redelivers it to
			// the next session, which answers it once (its own or a duplicate).
			g.log.Warn().Err(err).Stringer("key", key).Msg("journal broken; request left for redelivery to the next session")
		case errors.Is(err, store.ErrFull):
			onPanic = panicAck
			g.refuse(msg, req, protocol.ReasonOverload, "the journal is full (store.max_bytes)", max(g.estimatedWait(), time.Second))
		case errors.Is(err, store.ErrCorrupt):
			// A record of this key the journal cannot read (journalDamage stops
			// the gateway): the request may be pending or answered, and every
			// later copy would fail alike until the next start salvages the
			// journal; left unacknowledged, the broker redelivers it to the next
			// session, which answers it once.
			g.log.Warn().Err(err).Stringer("key", key).Msg("journal record unreadable; request left for redelivery to the next session")
		case errors.Is(err, store.ErrNoSpace):
			// The journal's disk is full (or the file may not grow): refused like
			// overload, without a log line of its own (the store logs when it
			// starts and stops, sneakgate_journal_no_space says so, and /readyz).
			onPanic = panicAck
			g.refuse(msg, req, protocol.ReasonOverload, "the gateway's journal has no disk space; retry later", max(g.estimatedWait(), noSpaceRetryAfter))
		default:
			// Running: an unacknowledged message would wait for a reconnect that may
			// never come and hold one of the broker's in-flight slots, so tell the
			// device instead; nothing was journaled, so a retry is a new request.
			g.log.Error().Err(err).Stringer("key", key).Msg("journal write failed; request rejected as internal")
			onPanic = panicAck
			g.refuse(msg, req, protocol.ReasonInternal, "the gateway could not store the request; retry", time.Second)
		}
		return
	}
	if g.duplicate(msg, req, key, res) {
		release()
		return
	}
	msg.Ack()
	j := &job{App: req.App, Device: req.Device, ID: req.ID, ReplyTo: req.ReplyTo,
		Received: req.Received, Deadline: req.Deadline, Input: req.Input, Estimate: est, Correct: correct, Answer: answer, Mix: mix, rt: app, pre: pre}
	// Journaled as new and acknowledged: from here a panic hands j to the loop
	// all the same (the recover has released the place).
	onPanic, journaled = panicSubmit, j
	g.observe(app, answer)
	g.m.received.WithLabelValues(req.App).Inc()
	onPanic = panicAck // Submit hands it over or answers it
	if reserved {
		reserved = false // the loop holds the place now, or Submit gives it back
		g.submit(j, g.loop.Submit)
	} else {
		// A duplicate raced with its first copy's completion and was stored new
		// while the queue was full: it is journaled, so run it anyway.
		g.submit(j, g.loop.SubmitRecovered)
	}
}

// submit hands a journaled request to the loop with hand (Submit, or
// SubmitRecovered outside the admission limit), or, when the loop's channel is
// full, answers it rejected (overload), which completes it in the journal.
func (g *Gateway) submit(j *job, hand func(*job) bool) {
	if !hand(j) {
		g.answer(j, result{Status: protocol.StatusRejected, Reason: string(protocol.ReasonOverload)})
	}
}

// panicAction is what handle's recover does with the request whose handler
// panicked, by how far its handling got.
type panicAction int

const (
	// panicAck acknowledges the message without a reply: no request was read,
	// its answer is under way (its reply may have gone), or it is journaled
	// (the loop, or the next session, answers it).
	panicAck panicAction = iota
	// panicAnswer answers it (panicked): read, and neither being answered yet
	// nor handed to the journal.
	panicAnswer
	// panicLeave leaves the message unacknowledged for redelivery: a journal
	// write failed because the journal broke or the gateway is stopping, as
	// the handler itself leaves it.
	panicLeave
	// panicSubmit hands the request to the loop (submitAfterPanic): journaled
	// as new and acknowledged, and not yet handed over.
	panicSubmit
)

// submitAfterPanic hands to the loop a request journaled as new whose handler
// panicked before it did (outside the admission limit: the handler's queue
// place, if it held one, was released), or answers it rejected (overload) when
// the loop's channel is full: otherwise the journaled request would wait,
// unanswered, for the next session's recovery. A panic here too leaves it
// pending for that recovery, as before.
func (g *Gateway) submitAfterPanic(j *job) {
	defer func() {
		if p := recover(); p != nil {
			g.log.Error().Interface("panic", p).Str("app", j.App).Str("device", j.Device).Str("id", j.ID).
				Msg("handing a journaled request to the loop after its handler panicked panicked too; it is answered by the next session's recovery")
		}
	}()
	g.submit(j, g.loop.SubmitRecovered)
}

// panicked answers a request whose handler panicked before answering it or
// handing it to the journal: rejected internal with a retry_after_ms, like a
// request whose journal write failed (nothing was stored, so a retry is a new
// request), and acknowledged once the broker has the reply. A copy of a request
// the journal knows is handled as a duplicate instead (the panic may not
// repeat, and a repeat never contradicts the first answer to a journaled
// request), and one the journal cannot look up is left unacknowledged (lookup).
// The handler's claim on the key was released before its recover ran: panicked
// claims it again, so that a copy being journaled meanwhile is found.
func (g *Gateway) panicked(msg mqtt.Message, req *protocol.Request) {
	key := store.Key{App: req.App, Device: req.Device, ID: req.ID}
	defer func() {
		// The fault may strike again here (the same metric, the same store):
		// then the message is left for redelivery, not the process ended.
		if p := recover(); p != nil {
			g.log.Error().Interface("panic", p).Str("topic", msg.Topic()).Msg("answering a request whose handler panicked panicked too; message left for redelivery")
		}
	}()
	defer g.claim(key)()
	if !g.firstCopy(msg, req, key) {
		return
	}
	g.m.rejected.WithLabelValues(string(protocol.ReasonInternal)).Inc()
	g.owe(msg, req.ReplyTo, req.Reject(protocol.ReasonInternal, "the gateway failed while admitting the request; retry", time.Second))
}

// degradeRefused answers a request refused for overload from its application's
// estimate (admission.degrade_refused), as the scheduler answers a request it
// sheds, and reports whether it did: false when the option is off, the
// application has no estimator or the estimator gave no distribution (the
// caller refuses it). A request whose input does not decode is rejected for
// that. Nothing is journaled: msg is acknowledged once the broker has the reply,
// like a refusal's. answering is called just before the reply is handed over
// (from then on a panic does not answer the request again: handle).
func (g *Gateway) degradeRefused(msg mqtt.Message, req *protocol.Request, app *appRuntime, answering func()) bool {
	if !g.cfg.Admission.DegradeRefused || app == nil || app.est == nil {
		return false
	}
	if rej := req.DecodeInput(); rej != nil {
		answering()
		g.reject(msg, rej)
		return true
	}
	est, _, answer, _ := g.estimate(app, req.Input)
	if est == nil {
		return false
	}
	g.observe(app, answer)
	g.m.refusedDeg.WithLabelValues(req.App).Inc()
	answering()
	g.answerFromEstimate(msg, req, app, orRaw(answer, est), protocol.ReasonOverloadShed)
	return true
}

// answerFromEstimate answers a request that is not journaled with its estimate
// (status degraded, for reason: overload_shed, or estimate_worth_more) and
// acknowledges msg once the broker has the reply, like a refusal's. Only
// overload_shed marks the gateway as shedding (lastDegraded, which readiness
// reports): estimate_worth_more is the policy's choice with engine time to
// spare, not a sign of overload.
func (g *Gateway) answerFromEstimate(msg mqtt.Message, req *protocol.Request, app *appRuntime, est []float64, reason protocol.Reason) {
	now := g.now()
	j := &job{App: req.App, Device: req.Device, ID: req.ID, Received: req.Received, Deadline: req.Deadline}
	rep := buildReply(j, degraded(est, string(reason), now), app.m.Labels, app.estName, now)
	if reason == protocol.ReasonOverloadShed {
		g.lastDegraded.Store(now)
	}
	g.oweRecorded(msg, req, rep)
}

// The reasons of sneakgate_estimate_answers_unrecorded_total.
const (
	unrecordedFull    = "journal_full"
	unrecordedNoSpace = "no_space"
	unrecordedError   = "error"
)

// oweRecorded is owe for an answer from the estimate at admission: with
// admission.journal_estimate_answers (the default) the reply is first recorded
// in the journal as the answer of its id (store.Answered, one group commit), so
// that a copy of the request the broker delivers again, even after a crash
// between the reply and the request's acknowledgement, gets these bytes (a
// duplicate whose reply goes out like this one, acknowledged once the broker
// has it: duplicate) instead of being answered anew: the model's answer, or
// expired once its deadline has passed, where the device already has the
// estimate's. A key the journal knows meanwhile is answered as a duplicate.
// When the journal cannot record it (past its share of store.max_bytes, out
// of disk space, or another failure, counted as a store error "answered";
// all three in sneakgate_estimate_answers_unrecorded_total) the reply goes out
// unrecorded, as with the option off; when the journal broke or the gateway is stopping,
// the request is left unacknowledged for redelivery, as handle leaves one Put
// could not store.
func (g *Gateway) oweRecorded(msg mqtt.Message, req *protocol.Request, rep *protocol.Reply) {
	if !g.cfg.Admission.JournalEstimateAnswers || msg.Qos() == 0 || req.ID == "" {
		g.owe(msg, req.ReplyTo, rep)
		return
	}
	payload, err := rep.Marshal()
	if err != nil { // a Reply always marshals
		g.owe(msg, req.ReplyTo, rep)
		return
	}
	key := store.Key{App: req.App, Device: req.Device, ID: req.ID}
	owe := func(kind oweKind) { // the encoded reply, acknowledged after its PUBACK
		g.oweFailed(g.egress.OweEncoded(req.ReplyTo, key, payload, rep.Status, msg.Ack, g.arrivedOn(msg), kind), key, rep.Status)
	}
	res, err := g.journal.Answered(key, payload)
	switch {
	case errors.Is(err, store.ErrFull), errors.Is(err, store.ErrNoSpace):
		// The journal's room is kept for requests (store.Answered): a
		// condition of overload, not a failure. The store says when its
		// disk is full; sneakgate_journal_bytes shows how full it is.
		reason := unrecordedFull
		if errors.Is(err, store.ErrNoSpace) {
			reason = unrecordedNoSpace
		}
		g.m.unrecorded.WithLabelValues(req.App, reason).Inc()
		owe(oweNew)
		return
	case err != nil:
		g.m.storeErrors.WithLabelValues("answered").Inc()
		g.journalDamage(err)
		if g.draining.Load() || errors.Is(err, store.ErrDamaged) || errors.Is(err, store.ErrCorrupt) || errors.Is(err, store.ErrClosed) {
			g.log.Warn().Err(err).Stringer("key", key).Msg("journal could not record an answer from the estimate; request left for redelivery")
			return
		}
		g.m.unrecorded.WithLabelValues(req.App, unrecordedError).Inc()
		g.rejectLog.Warn().Err(err).Stringer("key", key).Msg("journal could not record an answer from the estimate; answered without it")
		owe(oweNew)
		return
	}
	if res.Dup != store.New {
		g.duplicate(msg, req, key, res)
		return
	}
	owe(oweStored)
}

// answersAtAdmission reports whether admission answers this request from its
// estimate, and why (reason; "" when it does not): the policy's test of
// answers from the estimate (scheduler.EstimateRule, the latest decision's
// Decision.Answers; scheduler.estimate_answers) finds its corrected estimate
// worth more than any model (estimate_worth_more), as the policy's next
// decision would; otherwise admission.price_shed's gate, the scheduler's
// latest (scheduler.PriceGate), sheds it (overload_shed). Both read the
// request prepared for the scheduler (est and, with a difficulty model,
// correct, and the answer estimate, as the loop prepares it). It returns that
// prepared request (nil when neither test applies now), which the loop takes
// over if the request is queued.
func (g *Gateway) answersAtAdmission(req *protocol.Request, app *appRuntime, est, correct, answer []float64, mix *sneakpeek.Mix) (*scheduler.Request, protocol.Reason) {
	if app == nil || est == nil {
		return nil, ""
	}
	rule := g.loop.answers.Load()
	var gate *scheduler.PriceGate
	if g.cfg.Admission.PriceShed {
		if gate = g.loop.gate.Load(); gate != nil && !gate.Active {
			gate = nil
		}
	}
	if rule == nil && gate == nil {
		return nil, ""
	}
	r := scheduler.Prepare(app.sched, 0, req.Received, scheduler.PlanDeadline(req.Received, req.Deadline, g.egress.Delay()), est, nil)
	if correct != nil {
		scheduler.Sharpen(r, correct)
	}
	scheduler.Reweigh(r, answer, mix)
	switch {
	case rule.Answers(r):
		return r, protocol.ReasonEstimateWorthMore
	case gate.Sheds(r, g.now()):
		return r, protocol.ReasonOverloadShed
	}
	return r, ""
}

// expiredOnArrival answers a request whose end-to-end deadline passed before it
// arrived, without writing to the journal: under a backlog in the broker such
// requests come by the thousand, and their answer is fixed. A copy of a request
// the journal knows (answered in time, or pending) is a duplicate; anything else
// gets an expired reply whose bytes depend only on the request (no publication
// stamps), so any copy of it, before or after a crash, gets the same bytes; one
// the journal cannot look up is left unacknowledged (lookup). The request is
// acknowledged only once the broker has the reply (owe): if the gateway dies
// first, the broker delivers the request again and it is answered again.
func (g *Gateway) expiredOnArrival(msg mqtt.Message, req *protocol.Request, key store.Key) {
	if !g.firstCopy(msg, req, key) {
		return
	}
	rep := req.NewReply(protocol.StatusExpired)
	rep.Reason, rep.Error, rep.DeadlineMet = protocol.ReasonExpiredBeforeReceipt, msgExpiredInTransit, protocol.Ptr(false)
	g.owe(msg, req.ReplyTo, rep)
}

// duplicate handles msg, a copy of req whose key the journal knows (res, from
// Put or Lookup), and reports whether it did; for a new key it does nothing
// and reports false. A copy of a pending request is acknowledged and ignored.
// A copy of an answered one gets the stored reply: acknowledged at once and
// the reply sent best effort when the first reply was handed to the broker
// before the journal completed the request, but acknowledged only once the
// broker has the reply when it is an answer from the estimate, which the
// journal records before its first hand-over (store.Answered): the gateway
// may have stopped before that hand-over, and then this copy is the
// request's only answer.
func (g *Gateway) duplicate(msg mqtt.Message, req *protocol.Request, key store.Key, res store.PutResult) bool {
	switch res.Dup {
	case store.DupPending:
		msg.Ack()
		g.m.duplicates.WithLabelValues("pending").Inc()
		g.log.Debug().Stringer("key", key).Msg("duplicate of a pending request ignored")
		return true
	case store.DupDone:
		g.m.duplicates.WithLabelValues("done").Inc()
		g.log.Debug().Stringer("key", key).Msg("duplicate of an answered request: reply published again")
		st := protocol.StatusOK
		if rep, err := protocol.ParseReply(res.Reply); err == nil {
			st = rep.Status
		}
		if st == protocol.StatusDegraded && msg.Qos() > 0 {
			g.oweFailed(g.egress.OweEncoded(req.ReplyTo, key, res.Reply, st, msg.Ack, g.arrivedOn(msg), oweStored), key, st)
			return true
		}
		msg.Ack()
		g.egress.SendRaw(req.ReplyTo, req.App, st, res.Reply)
		return true
	}
	return false
}

// answeredBefore handles a request rejected for a reason that depends on the time
// of receipt (an absolute deadline now past, an application removed by a
// reload since the first copy): if it is a copy of a request the journal
// knows, the copy is acknowledged and handled as a duplicate (never
// contradicting the first answer) and answeredBefore reports true. It reports
// true too when the journal could not say (lookup): msg is then left
// unacknowledged.
func (g *Gateway) answeredBefore(msg mqtt.Message, rej *protocol.Rejection) bool {
	if rej.ID == "" || rej.ReplyTo == "" {
		return false
	}
	replyTo := rej.ReplyTo
	if rej.Reason == protocol.ReasonUnknownApp {
		// Rejected before its reply_to was read: a copy's stored reply goes
		// where the first copy's went (a reply_to the allow-list admits).
		rt, ok := g.env.ReplyTo(msg.Payload(), rej.App, rej.Device)
		if !ok {
			return false
		}
		replyTo = rt
	}
	key := store.Key{App: rej.App, Device: rej.Device, ID: rej.ID}
	res, ok := g.lookup(key)
	if !ok {
		return true
	}
	if res.Dup == store.New {
		return false
	}
	return g.duplicate(msg, &protocol.Request{ID: rej.ID, App: rej.App, Device: rej.Device, ReplyTo: replyTo}, key, res)
}

// firstCopy reports whether the journal does not know key, so that the caller
// answers req, which it does not journal, itself. A copy of a request the
// journal knows is answered as a duplicate (msg acknowledged), and one it
// cannot look up is left unacknowledged (lookup): both report false.
func (g *Gateway) firstCopy(msg mqtt.Message, req *protocol.Request, key store.Key) bool {
	res, ok := g.lookup(key)
	if !ok {
		return false // left unacknowledged (lookup)
	}
	if res.Dup != store.New {
		g.duplicate(msg, req, key, res)
		return false
	}
	return true
}

// lookup asks the journal whether key is a request it knows (store.Lookup), for
// a handler about to answer the request without journaling it (refused,
// rejected, expired on arrival). When the journal cannot say (closed, damaged,
// or the key's record unreadable: store.ErrClosed, store.ErrDamaged,
// store.ErrCorrupt) the request may have been answered before, or be pending,
// and an answer now could contradict that reply (docs/reliability.md, "A repeat
// never contradicts the first answer to a journaled request"): lookup counts
// and logs the failure, stops the gateway if the journal is damaged or the
// record unreadable (journalDamage), and reports false; the caller then leaves
// the message unacknowledged, like a request whose journal write failed while
// stopping or on a broken journal (handle), and the broker delivers it again
// to the next session. A key the journal cannot hold (store.ErrInvalid) is new.
func (g *Gateway) lookup(key store.Key) (store.PutResult, bool) {
	res, err := g.journal.Lookup(key)
	if errors.Is(err, store.ErrInvalid) {
		// A key the journal cannot hold (a part longer than store.MaxKeyPart:
		// an unknown application's name, taken from the topic, may be up to
		// 65,535 bytes) was never journaled: the request is new. Left
		// unacknowledged, each such message from a device held one of the
		// broker's in-flight slots for the gateway for good.
		return store.PutResult{Dup: store.New}, true
	}
	if err != nil {
		g.m.storeErrors.WithLabelValues("lookup").Inc()
		g.journalDamage(err)
		g.log.Warn().Err(err).Stringer("key", key).Msg("journal lookup failed; request left unacknowledged for redelivery")
		return store.PutResult{}, false
	}
	return res, true
}

// claim makes the caller the only worker handling key until it calls the returned
// function; a second caller waits for the first.
func (g *Gateway) claim(key store.Key) func() {
	for {
		g.claimMu.Lock()
		busy, ok := g.claimed[key]
		if !ok {
			done := make(chan struct{})
			g.claimed[key] = done
			g.claimMu.Unlock()
			return func() {
				g.claimMu.Lock()
				delete(g.claimed, key)
				g.claimMu.Unlock()
				close(done)
			}
		}
		g.claimMu.Unlock()
		if g.claimWaits != nil {
			g.claimWaits(key)
		}
		<-busy
	}
}

// minRetryAfter is the shortest retry_after_ms the gateway suggests.
const minRetryAfter = 100 * time.Millisecond

// noSpaceRetryAfter is the retry_after_ms of a request refused because the
// journal's disk is full: freeing disk space takes an operator minutes, and a
// retry costs the gateway a parse and a lookup.
const noSpaceRetryAfter = 5 * time.Second

// estimatedWait is how long a request admitted now would wait for its answer
// to reach the broker: the requests queued ahead of it drained at the rate the
// loop has been draining them (profiles stand in until it has measured one),
// plus the recent delay between the loop and the broker (egress.Delay). Answers
// in flight to the broker are not counted as queued: their publishes overlap.
func (g *Gateway) estimatedWait() time.Duration { return g.backlog().EstimatedWait() }

// cannotServe is admission's test (admission.max_wait; scheduler.Backlog.Refuses)
// for a request with this budget of an application with an estimator or not.
func (g *Gateway) cannotServe(budget time.Duration, estimated bool) bool {
	return g.backlog().Refuses(budget, g.cfg.Admission.MaxWait, estimated)
}

// registerAdmission exports what admission weighs a request's budget against
// (scheduler.Backlog): the measured drain rate, the egress delay and the wait
// they add up to, so that an operator who sees requests refused
// (rejected_total{reason="overload"}, admission_degraded_total) can see why.
func (g *Gateway) registerAdmission() {
	g.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_admission_drain_rate",
			Help: "Requests the scheduling loop has answered per second of the time it had work, over the last 2 s (0 until measured): admission's measure of how fast the queue drains."},
			g.loop.DrainRate),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_admission_egress_delay_seconds",
			Help: "Recent time from an answer to its hand-over to the broker (a time-weighted average; 0 after a second without answers), which admission adds to the queue's drain and the scheduler plans to leave free before each request's deadline (scheduler.PlanDeadline)."},
			func() float64 { return g.egress.Delay().Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_admission_estimated_wait_seconds",
			Help: "How long a request admitted now would wait before its reply reaches the broker: the queue's drain at the measured rate plus the egress delay. Admission refuses a request whose budget is shorter (admission.max_wait > 0)."},
			func() float64 { return g.estimatedWait().Seconds() }),
	)
}

func (g *Gateway) backlog() scheduler.Backlog {
	return scheduler.Backlog{Queued: g.loop.Queued(), DrainRate: g.loop.DrainRate(), FastestRate: g.loop.FastestDrainRate(),
		PerRequest: g.perRequest, Egress: g.egress.Delay()}
}

// reject answers a request that failed validation, when a reply topic exists,
// and acknowledges msg once the broker has the reply (at once when there is no
// reply topic: nothing can be answered).
func (g *Gateway) reject(msg mqtt.Message, rej *protocol.Rejection) {
	ev := g.rejected(string(rej.Reason), rej.App, rej.Device, rej.ID).Str("error", rej.Message)
	if rej.ReplyTo == "" {
		g.m.unroutable.Inc()
		ev.Msg("request rejected; no reply topic can be derived")
		msg.Ack()
		return
	}
	ev.Msg("request rejected")
	g.owe(msg, rej.ReplyTo, rej.Reply())
}

// rejected counts a rejection (sneakgate_rejected_total{reason}) and returns its
// log line, sampled (rejectLog), for the caller to finish.
func (g *Gateway) rejected(reason, app, device, id string) *zerolog.Event {
	g.m.rejected.WithLabelValues(reason).Inc()
	return g.rejectLog.Warn().Str("reason", reason).Str("app", app).Str("device", device).Str("id", id)
}

// rejectSampler keeps the first 10 rejection lines of every second and one in
// 100 after that.
func rejectSampler() zerolog.Sampler {
	return &zerolog.BurstSampler{Burst: 10, Period: time.Second, NextSampler: &zerolog.BasicSampler{N: 100}}
}

// refuse answers a valid request the gateway will not admit now (not journaled)
// and acknowledges m once the broker has the reply. It logs at debug, not
// through the sampled warning of rejected: an overloaded gateway refuses by the
// thousand a second, as designed, and the counter and readiness say so.
func (g *Gateway) refuse(m mqtt.Message, req *protocol.Request, reason protocol.Reason, msg string, retry time.Duration) {
	if reason == protocol.ReasonOverload {
		g.lastRefused.Store(g.now())
	}
	g.answerRefusal(m, req, reason, msg, retry)
}

// answerRefusal counts, logs (at debug) and answers a refusal: refuse without
// marking the gateway as refusing.
func (g *Gateway) answerRefusal(m mqtt.Message, req *protocol.Request, reason protocol.Reason, msg string, retry time.Duration) {
	g.m.rejected.WithLabelValues(string(reason)).Inc()
	g.log.Debug().Str("reason", string(reason)).Str("app", req.App).Str("device", req.Device).Str("id", req.ID).Msg(msg)
	g.owe(m, req.ReplyTo, req.Reject(reason, msg, retry))
}

// refuseDevice answers a request whose device has admission.max_queue_per_device
// requests queued: rejected overload, with the time the queue ahead takes to
// drain as the retry hint. Unlike a refusal of the whole queue it is not
// answered from the estimate, not counted in the offered rate the policy prices
// engine time by, and does not mark the gateway as refusing (readiness): one
// device beyond its share is not an overload of the gateway.
func (g *Gateway) refuseDevice(m mqtt.Message, req *protocol.Request) {
	g.m.deviceRefused.WithLabelValues(req.App).Inc()
	wait := g.estimatedWait()
	g.answerRefusal(m, req, protocol.ReasonOverload, fmt.Sprintf("device %s has %d requests queued, admission.max_queue_per_device is %d; about %s to drain",
		req.Device, g.loop.DeviceQueued(req.Device), g.cfg.Admission.MaxQueuePerDevice, wait.Round(time.Millisecond)), max(wait, minRetryAfter))
}

// estimate runs the application's SneakPeek estimator: its class estimate p
// (nil when there is none or it returned no valid distribution: the scheduler
// then uses profiled accuracy), the difficulty model's per-variant correctness
// (nil without one), and answer, p corrected for the live label mix
// (apps[].label_shift; nil without the correction): the estimate a request's
// answer without a model comes from (degraded, shed; scheduler.Reweigh), with
// mix, the live class mix it was corrected for (nil without the correction).
// The correction does not update the live mix's estimate: observe does, once
// per request, when the gateway takes it (journaled as new, or answered from
// its estimate without being journaled), so that a copy of a request the
// journal knows (a QoS 1 redelivery, the id sent again), estimated before Put
// finds it known, is not counted again. a is nil when a reload removed the
// application since the request's header was parsed: no estimate then.
func (g *Gateway) estimate(a *appRuntime, input []float32) (p, correct, answer []float64, mix *sneakpeek.Mix) {
	if a == nil || a.est == nil {
		return nil, nil, nil, nil
	}
	p = make([]float64, a.m.K())
	a.est.Estimate(input, p)
	if !validDistribution(p) {
		g.estimateLog.Warn().Str("app", a.m.Name).Msg("estimator returned no valid distribution; profiled accuracy used")
		return nil, nil, nil, nil
	}
	if a.diff != nil {
		// The difficulty model was trained on the estimator's own output.
		correct = make([]float64, len(a.m.Variants))
		a.diff.Correctness(input, p, correct)
		for _, c := range correct {
			if !(c >= 0 && c <= 1) {
				correct = nil
				break
			}
		}
	}
	if a.shift != nil {
		answer = make([]float64, len(p))
		a.shift.CorrectOnly(p, answer) // p is a valid distribution: corrected
		mix = a.shift.Mix()
	}
	return p, correct, answer, mix
}

// observe counts a request's corrected estimate (estimate's answer; nil
// without the correction) in its application's live label mix, in the order
// the gateway takes requests: call it once per request.
func (g *Gateway) observe(a *appRuntime, answer []float64) {
	if a != nil && a.shift != nil && answer != nil {
		a.shift.Observe(answer)
	}
}

// orRaw is the answer estimate q, or the raw estimate p without one.
func orRaw(q, p []float64) []float64 {
	if q != nil {
		return q
	}
	return p
}
