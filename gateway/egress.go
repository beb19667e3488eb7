package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// journal is what egress needs of the store.
type journal interface {
	Complete(k store.Key, reply []byte) error
	Outbox(k store.Key, reply []byte, flushBy time.Time) error
	OutboxEntries() ([]store.OutboxEntry, error)
}

// egress publishes replies. A reply to a journaled request is removed from the
// journal only once the broker has acknowledged it (PUBACK); when the publish fails
// or times out, the reply is kept durably in the journal's outbox and flushed, in
// deadline order and at a bounded rate, when the connection is back.
type egress struct {
	// served reports whether an application is served; metrics label the others
	// "_unknown" so that arbitrary topic names cannot grow the label set.
	served  func(app string) bool
	client  mqtt.Client
	journal journal
	timeout time.Duration
	rate    float64
	log     zerolog.Logger
	m       *metrics
	// inflight bounds concurrent publishes waiting for their PUBACK.
	inflight chan struct{}
	wg       sync.WaitGroup
	kick     chan struct{} // size 1: flush the outbox
	// late holds the outbox keys whose timed-out publish the MQTT client still
	// holds and will resend itself: the flusher skips them, so that a slow
	// acknowledgement does not become a second copy of the reply.
	lateMu sync.Mutex
	late   map[store.Key]bool
	stop   chan struct{} // closed by Close: late waiters give up
}

func newEgress(c mqtt.Client, j journal, timeout time.Duration, rate float64, log zerolog.Logger, m *metrics) *egress {
	return &egress{client: c, journal: j, timeout: timeout, rate: rate, log: log, m: m,
		inflight: make(chan struct{}, 1024), kick: make(chan struct{}, 1),
		late: map[store.Key]bool{}, stop: make(chan struct{})}
}

func (e *egress) isLate(k store.Key) bool {
	e.lateMu.Lock()
	defer e.lateMu.Unlock()
	return e.late[k]
}

// awaitLate keeps waiting for a publish that timed out and whose reply is now in
// the outbox: if the broker acknowledges it after all, the request is completed
// (and leaves the outbox); if it fails, the flusher takes over.
func (e *egress) awaitLate(k store.Key, t mqtt.Token, payload []byte) {
	e.lateMu.Lock()
	e.late[k] = true
	e.lateMu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer func() {
			e.lateMu.Lock()
			delete(e.late, k)
			e.lateMu.Unlock()
		}()
		select {
		case <-t.Done():
			if t.Error() == nil {
				e.complete(k, payload)
				e.m.outboxLen.Dec()
			}
		case <-e.stop:
		}
	}()
}

func (e *egress) complete(k store.Key, payload []byte) {
	if err := e.journal.Complete(k, payload); err != nil {
		e.m.storeErrors.WithLabelValues("complete").Inc()
		e.log.Error().Err(err).Stringer("key", k).Msg("journal complete failed; the request may be answered again after a restart")
	}
}

// Close makes late waiters give up; call it after Wait, before the journal closes.
func (e *egress) Close() {
	close(e.stop)
	e.wg.Wait()
}

// appLabel is app as a metric label: "_unknown" for an application not served.
func (e *egress) appLabel(app string) string {
	if e.served != nil && e.served(app) {
		return app
	}
	return "_unknown"
}

// errPublishTimeout is returned when the broker does not acknowledge in time.
var errPublishTimeout = errors.New("publish not acknowledged in time")

// publish publishes at QoS 1 and waits for the PUBACK up to the timeout. On
// errPublishTimeout the returned token is still pending: the client keeps the
// message and resends it after a reconnect.
func (e *egress) publish(topic string, payload []byte) (mqtt.Token, error) {
	if !e.client.IsConnectionOpen() {
		return nil, errors.New("not connected to the broker")
	}
	t := e.client.Publish(topic, 1, false, payload)
	if !t.WaitTimeout(e.timeout) {
		return t, errPublishTimeout
	}
	return t, t.Error()
}

// Send publishes rep to topic. For a journaled request (key not nil) it then
// completes the request in the journal, or puts the reply in the outbox if the
// publish failed. It blocks only while 1024 publishes are already in flight.
func (e *egress) Send(topic string, rep *protocol.Reply, key *store.Key, flushBy time.Time) {
	payload, err := json.Marshal(rep)
	if err != nil { // a Reply always marshals; keep the request rather than lose it
		e.log.Error().Err(err).Msg("marshal reply")
		return
	}
	e.spawn(func() {
		tok, err := e.publish(topic, payload)
		if err == nil {
			e.m.replies.WithLabelValues(e.appLabel(rep.App), string(rep.Status)).Inc()
			if key != nil {
				e.complete(*key, payload)
			}
			return
		}
		e.m.publishFails.Inc()
		if key == nil {
			e.log.Warn().Err(err).Str("topic", topic).Str("status", string(rep.Status)).Msg("reply to an unjournaled request dropped")
			return
		}
		if oerr := e.journal.Outbox(*key, payload, flushBy); oerr != nil {
			e.m.storeErrors.WithLabelValues("outbox").Inc()
			e.log.Error().Err(oerr).Stringer("key", key).Msg("outbox write failed; the request stays pending and is answered after a restart")
			return
		}
		e.m.outboxLen.Inc()
		if errors.Is(err, errPublishTimeout) {
			e.awaitLate(*key, tok, payload)
		}
		e.log.Warn().Err(err).Stringer("key", key).Msg("reply kept in the outbox until the broker has it")
	})
}

// SendRaw publishes an already encoded reply again (to a duplicate of an answered
// request); nothing is journaled.
func (e *egress) SendRaw(topic string, payload []byte) {
	e.spawn(func() {
		if _, err := e.publish(topic, payload); err != nil {
			e.m.publishFails.Inc()
			e.log.Warn().Err(err).Str("topic", topic).Msg("republishing a reply failed")
		}
	})
}

// spawn runs fn on its own goroutine, tracked by Wait; it blocks while 1024
// publishes are already in flight.
func (e *egress) spawn(fn func()) {
	e.inflight <- struct{}{}
	e.wg.Add(1)
	go func() {
		defer func() { <-e.inflight; e.wg.Done() }()
		fn()
	}()
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

// flush publishes waiting replies in deadline order at most rate per second and
// stops at the first failure (the broker is still away).
func (e *egress) flush(ctx context.Context) {
	if !e.client.IsConnectionOpen() {
		return
	}
	entries, err := e.journal.OutboxEntries()
	if err != nil {
		e.m.storeErrors.WithLabelValues("outbox_read").Inc()
		e.log.Error().Err(err).Msg("outbox read failed")
		return
	}
	e.m.outboxLen.Set(float64(len(entries)))
	if len(entries) == 0 {
		return
	}
	var gap time.Duration
	if e.rate > 0 {
		gap = time.Duration(float64(time.Second) / e.rate)
	}
	e.log.Info().Int("replies", len(entries)).Msg("flushing the outbox")
	for i, oe := range entries {
		if ctx.Err() != nil {
			return
		}
		if e.isLate(oe.Key) {
			continue // its first publish may still be acknowledged
		}
		tok, err := e.publish(oe.ReplyTo, oe.Reply)
		if err != nil {
			if errors.Is(err, errPublishTimeout) {
				e.awaitLate(oe.Key, tok, oe.Reply)
			}
			e.log.Warn().Err(err).Int("left", len(entries)-i).Msg("outbox flush interrupted")
			return
		}
		e.complete(oe.Key, oe.Reply)
		e.m.outboxLen.Dec()
		if gap > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(gap):
			}
		}
	}
}

// Wait waits for publishes in flight, at most until ctx ends.
func (e *egress) Wait(ctx context.Context) {
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
