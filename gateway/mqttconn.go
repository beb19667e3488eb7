package gateway

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mqttsub"
	"github.com/sneakgate/sneakgate/protocol"
)

// The broker connection as an operator sees it: every failed connection attempt
// logged (at a bounded rate) with its error; the request subscription checked
// against the broker's SUBACK and retried with backoff while the broker refuses
// it; the retained status "online" only once requests can arrive; /readyz and
// the sneakgate_mqtt_* metrics saying which of these holds.

const (
	// connLogEvery is the most often a failure to connect is logged while the
	// error stays the same (the first failure and a changed error are logged at once).
	connLogEvery = 10 * time.Second
	// A connection lost within shortConnection of being made is short; takeoverShort
	// short connections within takeoverWindow suggest another client with the same
	// client id (each connection takes the other's session over).
	shortConnection = 10 * time.Second
	takeoverShort   = 3
	takeoverWindow  = time.Minute
	// subscribeRetryMin and subscribeRetryMax bound the wait between two
	// subscription attempts while the broker refuses the subscription.
	subscribeRetryMin = time.Second
	subscribeRetryMax = time.Minute
	// subscribeWait bounds the wait for one SUBACK.
	subscribeWait = 10 * time.Second
	// firstConnectWait is how long New waits for the first subscription's outcome
	// before it leaves the connection to the background.
	firstConnectWait = 10 * time.Second
)

// StatusSubscribeRefused is the reason of the retained status "offline" while
// the broker refuses the gateway's subscription to requests (an ACL): connected,
// but no request can arrive.
const StatusSubscribeRefused = protocol.OfflineSubscribeRefused

// errSubscribeRefused is the broker's refusal of a subscription (SUBACK 0x80).
type errSubscribeRefused struct {
	filter string
	code   byte
}

func (e *errSubscribeRefused) Error() string {
	return fmt.Sprintf("the broker refused the subscription to %s (SUBACK 0x%02x): check its ACL for this client and user", e.filter, e.code)
}

// brokerLink is what the gateway knows about its broker connection.
type brokerLink struct {
	now func() time.Time

	mu         sync.Mutex
	failures   int    // failed connection attempts since the last success
	lastErr    string // the last attempt's error
	lastLogged time.Time
	subProblem string // why the subscription is not in place, "" when unknown or in place
	// cancel ends the current connection's subscription attempts.
	cancel context.CancelFunc
	// stopped is set by stop: no new subscription attempts, no status but offline.
	stopped bool

	// statusMu serialises status publishes with stop, so that "online" never
	// follows the shutdown's "offline".
	statusMu sync.Mutex

	// resumed is closed once the first connection is complete, including paho's
	// resending of what its store holds: publishing before that can have a
	// message resent under an id claimed twice (paho 1.5.1 races and panics).
	resumed chan struct{}
	// firstOutcome is closed once the first subscription attempt has an outcome.
	firstOutcome chan struct{}
	firstOnce    sync.Once
	// delivering is closed when the first request message arrives: the
	// session's subscription is in effect (resumed from an earlier run) before
	// the first SUBACK, which may be behind a backlog (awaitFirst).
	delivering     chan struct{}
	deliveringOnce sync.Once

	// lastRequest is when the last request message arrived (Unix ns; 0: none yet).
	lastRequest atomic.Int64

	// since is when the current connection was made (zero while not connected);
	// shorts are when recent short connections were lost (lost, inConflict).
	since     time.Time
	shorts    []time.Time
	takeovers prometheus.Counter
	// up is set from begin until the connection's loss is recorded (ended).
	// owed counts losses reconnecting recorded whose connection-lost handler
	// has not run yet (negative: handlers that ran before their connection's
	// begin); lastLoss is what the latest recorded loss said (lost).
	up       bool
	owed     int
	lastLoss struct {
		conflict bool
		shorts   int
	}
	// subscribed is the gateway's flag (register), cleared when a loss is
	// recorded.
	subscribed *atomic.Bool

	connectFailures prometheus.Counter
	subscribeFails  *prometheus.CounterVec // reason: refused, error
}

func newBrokerLink(now func() time.Time) *brokerLink {
	return &brokerLink{now: now, resumed: make(chan struct{}), firstOutcome: make(chan struct{}), delivering: make(chan struct{}),
		connectFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_mqtt_connect_failures_total", Help: "Failed attempts to connect to the broker (at start and reconnecting)."}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_mqtt_short_connections_total",
			Help: "Broker connections lost within 10 s of being made; several a minute usually mean another client uses the same client id."}),
		subscribeFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_mqtt_subscribe_failures_total",
			Help: "Failed subscriptions to requests, by reason: refused (the broker answered SUBACK 0x80, an ACL) or error (no SUBACK in time, connection lost); the gateway retries with backoff and is not ready meanwhile."},
			[]string{"reason"}),
	}
}

// register exports the connection's metrics on reg:
// connected and subscribed gauges read c and subscribed when scraped.
func (l *brokerLink) register(reg prometheus.Registerer, c mqtt.Client, subscribed *atomic.Bool) {
	l.mu.Lock()
	l.subscribed = subscribed
	l.mu.Unlock()
	for _, r := range []string{"refused", "error"} {
		l.subscribeFails.WithLabelValues(r)
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	reg.MustRegister(l.connectFailures, l.subscribeFails, l.takeovers,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_mqtt_client_id_conflict",
			Help: "1 while the broker keeps closing the gateway's connection soon after it opens (at least 3 short connections in the last minute): another client is probably using the same client id."},
			func() float64 { return b(l.inConflict()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_mqtt_connected",
			Help: "1 while the gateway is connected to the broker."},
			func() float64 { return b(c.IsConnectionOpen()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_mqtt_subscribed",
			Help: "1 while the broker has granted the gateway's subscription to requests (connected and serving)."},
			func() float64 { return b(subscribed.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_last_request_received_timestamp_seconds",
			Help: "When the last request message arrived from the broker (Unix time; 0 until the first)."},
			func() float64 { return float64(l.lastRequest.Load()) / 1e9 }),
	)
}

// failed records a failed connection attempt and says whether to log it: the
// first of a series, one whose error differs from the last, and otherwise one
// every connLogEvery. attempts counts the series.
func (l *brokerLink) failed(err error) (log bool, attempts int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures++
	now, msg := l.now(), err.Error()
	log = l.failures == 1 || msg != l.lastErr || now.Sub(l.lastLogged) >= connLogEvery
	if log {
		l.lastLogged = now
	}
	l.lastErr = msg
	return log, l.failures
}

// connected ends a series of failed attempts and returns its length.
func (l *brokerLink) connected() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.failures
	l.failures, l.lastErr = 0, ""
	return n
}

// setSubProblem records why the subscription is not in place ("" once it is).
func (l *brokerLink) setSubProblem(why string) {
	l.mu.Lock()
	l.subProblem = why
	l.mu.Unlock()
}

// notServing says why the gateway is not subscribed, for /readyz.
func (l *brokerLink) notServing(connected bool) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case connected && l.subProblem != "":
		return "connected, not subscribed: " + l.subProblem
	case connected:
		return "connected, subscribing to requests"
	case l.failures > 0:
		return fmt.Sprintf("not connected to the broker: %d failed attempts, the last: %s", l.failures, l.lastErr)
	}
	return "not connected to the broker"
}

// begin starts a connection's subscription attempts: it ends the previous
// connection's and returns the context of this one's (nil once stopped).
func (l *brokerLink) begin() context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil {
		l.cancel()
	}
	if l.stopped {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel, l.subProblem = cancel, ""
	l.since = l.now()
	l.up = true
	return ctx
}

// lost is the connection-lost handler's: it records the loss of the current
// connection (ended) and reports whether the connection keeps being taken over.
// paho runs that handler on a goroutine of its own, which may run only after
// paho has made the next connection and begun it (paho reconnects at once
// after a first loss): ending the current connection then would end the new
// one (its subscription attempts, the subscribed flag) and miscount the next
// loss. reconnecting, which paho calls before each reconnection attempt, so
// always before the next begin, has then recorded the loss already, and lost
// only reports what it recorded. A handler that runs before its connection's
// begin (the OnConnect handler is a goroutine too) finds nothing to record:
// reconnecting records that connection's loss later, without a handler to
// wait for.
func (l *brokerLink) lost() (conflict bool, shorts int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.owed > 0:
		l.owed--
		return l.lastLoss.conflict, l.lastLoss.shorts
	case l.up:
		return l.ended()
	}
	l.owed--
	return false, l.recentShorts(l.now())
}

// reconnecting is the reconnecting handler's (called before each reconnection
// attempt): it records the loss of the current connection if lost has not
// (a connection-lost handler scheduled late).
func (l *brokerLink) reconnecting() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.up {
		l.ended()
		l.owed++
	}
}

// ended records the loss of the current connection: its subscription attempts
// end, the gateway is not subscribed, and it reports whether the connection
// keeps being taken over: takeoverShort connections lost within
// shortConnection of being made, within takeoverWindow. Any other loss, or a
// connection that lasted, clears the suspicion. l.mu must be held.
func (l *brokerLink) ended() (conflict bool, shorts int) {
	l.endAttempts()
	if l.subscribed != nil {
		l.subscribed.Store(false)
	}
	l.up = false
	now := l.now()
	if !l.since.IsZero() && now.Sub(l.since) < shortConnection {
		l.takeovers.Inc()
		l.shorts = append(l.shorts, now)
	} else {
		l.shorts = l.shorts[:0]
	}
	l.since = time.Time{}
	n := l.recentShorts(now)
	l.lastLoss.conflict, l.lastLoss.shorts = n >= takeoverShort, n
	return n >= takeoverShort, n
}

// recentShorts drops the short connections lost longer than takeoverWindow ago
// and returns how many are left. l.mu must be held.
func (l *brokerLink) recentShorts(now time.Time) int {
	l.shorts = slices.DeleteFunc(l.shorts, func(t time.Time) bool { return now.Sub(t) >= takeoverWindow })
	return len(l.shorts)
}

// inConflict reports whether the connection is being taken over: at least
// takeoverShort short connections within takeoverWindow, and the current one (if
// any) not yet past shortConnection.
func (l *brokerLink) inConflict() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.since.IsZero() && now.Sub(l.since) >= shortConnection {
		return false
	}
	return l.recentShorts(now) >= takeoverShort
}

// endAttempts ends the current connection's subscription attempts. l.mu must
// be held.
func (l *brokerLink) endAttempts() {
	if l.cancel != nil {
		l.cancel()
		l.cancel = nil
	}
}

// stop ends subscription attempts for good; a status publish in progress
// finishes first, and none but stop's caller's follows.
func (l *brokerLink) stop() {
	l.statusMu.Lock()
	defer l.statusMu.Unlock()
	l.mu.Lock()
	l.stopped = true
	l.endAttempts()
	l.mu.Unlock()
}

// outcome marks the first subscription attempt's outcome.
func (l *brokerLink) outcome() { l.firstOnce.Do(func() { close(l.firstOutcome) }) }

// delivered marks the arrival of a request message.
func (l *brokerLink) delivered() { l.deliveringOnce.Do(func() { close(l.delivering) }) }

// awaitFirst waits for the first subscription attempt's outcome, the first
// request message, ctx, or wait. It reports whether the outcome or a message
// came. A persistent session that resumes with requests waiting for the
// gateway gets them before the SUBACK of the subscription the gateway sends
// after connecting; with more of them than the request handlers' queue
// holds, the MQTT client stops reading (flow control, ingress.go) until Run
// starts the handlers, and the SUBACK could not arrive before wait: the
// gateway lost wait at every such start, while the backlog grew.
func (l *brokerLink) awaitFirst(ctx context.Context, wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-l.firstOutcome:
		return true
	case <-l.delivering:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}

// retrySubscribe calls attempt until it succeeds (true) or ctx ends (false),
// waiting between attempts from subscribeRetryMin, doubling up to
// subscribeRetryMax; failed sees each failure and the wait before the next.
func retrySubscribe(ctx context.Context, attempt func() error, failed func(err error, next time.Duration)) bool {
	wait := subscribeRetryMin
	for ctx.Err() == nil {
		err := attempt()
		if err == nil {
			return true
		}
		failed(err, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		wait = min(2*wait, subscribeRetryMax)
	}
	return false
}

// subscribeOnce subscribes to filter at QoS 1 and reads the broker's answer: an
// error when it does not answer in time or refuses (errSubscribeRefused), else
// the QoS it granted.
func subscribeOnce(c mqtt.Client, filter string, h mqtt.MessageHandler, wait time.Duration) (byte, error) {
	t := c.Subscribe(filter, 1, h)
	if !t.WaitTimeout(wait) {
		return 0, fmt.Errorf("no SUBACK for %s within %s", filter, wait)
	}
	if err := t.Error(); err != nil {
		return 0, err
	}
	code, err := mqttsub.Code(t, filter) // a $share/ filter's result too
	switch {
	case err != nil:
		return 0, err
	case mqttsub.Refused(code): // 0x80: failure
		return code, &errSubscribeRefused{filter: filter, code: code}
	}
	return code, nil
}

// onRequest is the request subscription's handler: it notes the arrival for
// sneakgate_last_request_received_timestamp_seconds and hands the message on.
func (g *Gateway) onRequest(c mqtt.Client, msg mqtt.Message) {
	g.link.lastRequest.Store(g.now().UnixNano())
	g.link.delivered()
	g.onMessage(c, msg)
}

// onConnectionNotification logs failed connection attempts (rate-limited by
// brokerLink.failed) and the connection that ends a series of them.
func (g *Gateway) onConnectionNotification(log zerolog.Logger) func(mqtt.Client, mqtt.ConnectionNotification) {
	broker := g.cfg.MQTT.Broker
	return func(_ mqtt.Client, n mqtt.ConnectionNotification) {
		switch n := n.(type) {
		case mqtt.ConnectionNotificationFailed:
			g.link.connectFailures.Inc()
			if show, attempts := g.link.failed(n.Reason); show {
				log.Warn().Err(n.Reason).Str("broker", broker).Int("attempts", attempts).
					Msg("connecting to the broker failed; retrying (requests wait with the broker, replies in the outbox)")
			}
		case mqtt.ConnectionNotificationConnected:
			if n := g.link.connected(); n > 0 {
				log.Info().Str("broker", broker).Int("failed_attempts", n).Msg("connected to the broker")
			}
		}
	}
}

// onConnect subscribes to requests on every (re)connection, in the background
// (a paho callback must not wait on a token), until the broker grants it.
func (g *Gateway) onConnect(log zerolog.Logger) func(mqtt.Client) {
	filter := g.cfg.MQTT.RequestFilter()
	return func(cl mqtt.Client) {
		ctx := g.link.begin()
		if ctx == nil {
			return // shutting down
		}
		go g.subscribeRequests(ctx, cl, filter, log)
	}
}

// subscribeRequests subscribes to filter until the broker grants it or ctx
// ends. While it refuses, the retained status says offline/subscribe_refused;
// once granted, the gateway is ready and announces itself online.
func (g *Gateway) subscribeRequests(ctx context.Context, cl mqtt.Client, filter string, log zerolog.Logger) {
	select {
	case <-g.link.resumed:
	case <-ctx.Done():
		return
	}
	// On a later connection, not before paho has listed what it resends
	// (pubGate.resuming): the status published once subscribed would be in it.
	if !g.egress.gate.awaitResume(ctx) {
		return
	}
	broker := g.cfg.MQTT.Broker
	var granted byte
	ok := retrySubscribe(ctx, func() error {
		var err error
		granted, err = subscribeOnce(cl, filter, g.onRequest, subscribeWait)
		return err
	}, func(err error, next time.Duration) {
		var refused *errSubscribeRefused
		if errors.As(err, &refused) {
			g.link.subscribeFails.WithLabelValues("refused").Inc()
			log.Error().Str("broker", broker).Str("filter", filter).Str("suback", fmt.Sprintf("0x%02x", refused.code)).
				Str("retry_in", next.String()).Msg("the broker refused the subscription to requests: no request can arrive; check its ACL for this client and user")
			g.link.setSubProblem(err.Error())
			g.announce(ctx, protocol.StateOffline, StatusSubscribeRefused)
		} else {
			g.link.subscribeFails.WithLabelValues("error").Inc()
			log.Error().Err(err).Str("broker", broker).Str("filter", filter).Str("retry_in", next.String()).Msg("subscribing to requests failed")
			g.link.setSubProblem("subscribing failed: " + err.Error())
		}
		g.link.outcome()
	})
	if !ok || ctx.Err() != nil {
		return
	}
	if granted < 1 {
		log.Warn().Str("filter", filter).Msg("the broker granted the request subscription at QoS 0 only: requests are acknowledged on arrival, not once journaled, and may be lost in a crash")
	}
	g.link.setSubProblem("")
	g.subscribed.Store(true)
	log.Info().Str("broker", broker).Str("filter", filter).Msg("connected and subscribed")
	g.announce(ctx, protocol.StateOnline, "")
	g.link.outcome()
	g.egress.Kick()
}

// announce publishes the retained status unless ctx (the connection's
// subscription attempts) has ended or the gateway is stopping.
func (g *Gateway) announce(ctx context.Context, state, reason string) {
	g.link.statusMu.Lock()
	defer g.link.statusMu.Unlock()
	if ctx.Err() != nil {
		return
	}
	g.publishStatus(state, reason)
}
