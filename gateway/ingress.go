package gateway

import (
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// onMessage is the MQTT handler for requests. paho runs it on its own goroutine per
// message (order does not matter), so it may block on the journal's group commit
// without stalling the client's network loop. It acknowledges a request only after
// the journal has committed it; a request it cannot journal is left unacknowledged,
// so the broker delivers it again when the session resumes.
func (g *Gateway) onMessage(_ mqtt.Client, msg mqtt.Message) {
	// Shutdown sets draining, then takes the write lock: from then on handlers
	// leave at once, and shutdown waits for those already inside.
	if !g.admitting.TryRLock() {
		return // not acknowledged: the broker redelivers it to the next session
	}
	defer g.admitting.RUnlock()
	defer func() {
		if p := recover(); p != nil {
			g.m.rejected.WithLabelValues(string(protocol.ReasonInternal)).Inc()
			g.log.Error().Interface("panic", p).Str("topic", msg.Topic()).Msg("request handler panicked; message acknowledged and dropped")
			msg.Ack()
		}
	}()
	now := g.now()
	req, rej := protocol.ParseRequest(msg.Topic(), msg.Payload(), now, g.env)
	if rej != nil {
		g.reject(rej)
		msg.Ack()
		return
	}
	app := g.apps[req.App]
	key := store.Key{App: req.App, Device: req.Device, ID: req.ID}
	if q := g.loop.Queued(); q >= g.cfg.Admission.MaxQueue {
		// A duplicate is not refused: it is answered as a duplicate below
		// (Put does not add it to the queue).
		if res, err := g.journal.Lookup(key); err != nil || res.Dup == store.New {
			g.refuse(req, protocol.ReasonOverload, fmt.Sprintf("queue full (%d requests waiting)", q), g.retryAfter(q))
			msg.Ack()
			return
		}
	}
	est := g.estimate(app, req.Input)
	res, err := g.journal.Put(&store.Entry{Key: key, Received: req.Received, Deadline: req.Deadline,
		ReplyTo: req.ReplyTo, Input: req.Input})
	if err != nil {
		g.m.storeErrors.WithLabelValues("put").Inc()
		if g.draining.Load() {
			// Stopping: leave it unacknowledged; the broker redelivers it to the
			// next session, which journals it.
			g.log.Warn().Err(err).Stringer("key", key).Msg("journal write failed while stopping; request left for redelivery")
			return
		}
		// Running: an unacknowledged message would wait for a reconnect that may
		// never come and hold one of the broker's in-flight slots, so tell the
		// device instead; nothing was journaled, so a retry is a new request.
		g.log.Error().Err(err).Stringer("key", key).Msg("journal write failed; request rejected as internal")
		g.refuse(req, protocol.ReasonInternal, "the gateway could not store the request; retry", time.Second)
		msg.Ack()
		return
	}
	switch res.Dup {
	case store.DupPending:
		g.m.duplicates.WithLabelValues("pending").Inc()
		g.log.Debug().Stringer("key", key).Msg("duplicate of a pending request ignored")
		msg.Ack()
		return
	case store.DupDone:
		g.m.duplicates.WithLabelValues("done").Inc()
		g.log.Debug().Stringer("key", key).Msg("duplicate of an answered request: reply published again")
		g.egress.SendRaw(req.ReplyTo, res.Reply)
		msg.Ack()
		return
	}
	msg.Ack()
	g.m.received.WithLabelValues(req.App).Inc()
	j := &job{App: req.App, Device: req.Device, ID: req.ID, ReplyTo: req.ReplyTo,
		Received: req.Received, Deadline: req.Deadline, Input: req.Input, Estimate: est}
	if !g.loop.Submit(j) {
		// Admission raced past the limit and the queue's channel is full: the
		// request is journaled, so answer it properly (and complete it).
		g.answer(j, result{Status: protocol.StatusRejected, Reason: string(protocol.ReasonOverload)})
	}
}

// reject answers a request that failed validation, when a reply topic exists.
func (g *Gateway) reject(rej *protocol.Rejection) {
	g.m.rejected.WithLabelValues(string(rej.Reason)).Inc()
	ev := g.log.Warn().Str("reason", string(rej.Reason)).Str("app", rej.App).Str("device", rej.Device).
		Str("id", rej.ID).Str("error", rej.Message)
	if rej.ReplyTo == "" {
		g.m.unroutable.Inc()
		ev.Msg("request rejected; no reply topic can be derived")
		return
	}
	ev.Msg("request rejected")
	g.egress.Send(rej.ReplyTo, rej.Reply(), nil, time.Time{})
}

// refuse answers a valid request the gateway will not admit now (not journaled).
func (g *Gateway) refuse(req *protocol.Request, reason protocol.Reason, msg string, retry time.Duration) {
	g.m.rejected.WithLabelValues(string(reason)).Inc()
	g.log.Warn().Str("reason", string(reason)).Str("app", req.App).Str("device", req.Device).Str("id", req.ID).Msg(msg)
	g.egress.Send(req.ReplyTo, req.Reject(reason, msg, retry), nil, time.Time{})
}

// retryAfter estimates how long a queue of q requests takes to drain.
func (g *Gateway) retryAfter(q int) time.Duration {
	return max(100*time.Millisecond, time.Duration(q)*g.perRequest)
}

// estimate runs the application's SneakPeek estimator; nil when there is none or
// it returned no valid distribution (the scheduler then uses profiled accuracy).
func (g *Gateway) estimate(a *appRuntime, input []float32) []float64 {
	if a.est == nil {
		return nil
	}
	p := make([]float64, a.m.K())
	a.est.Estimate(input, p)
	if !validDistribution(p) {
		g.log.Warn().Str("app", a.m.Name).Msg("estimator returned no valid distribution; profiled accuracy used")
		return nil
	}
	if a.shift != nil {
		a.shift.Correct(p, p)
	}
	return p
}
