package gateway

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/store"
)

// Options are what New needs besides the configuration; the zero value of every
// field but Config is usable.
type Options struct {
	Config *Config
	Logger zerolog.Logger
	// Registry receives the gateway's metrics; nil makes a new one.
	Registry *prometheus.Registry
	// Now is the clock (default time.Now).
	Now func() time.Time
	// BeforeCommit is the journal's fault-injection seam (tests only).
	BeforeCommit func([]store.Op) error
}

// Gateway is a running sneakgate: ingress, scheduling loop, engine worker, egress.
type Gateway struct {
	cfg *Config
	log zerolog.Logger
	now func() time.Time
	reg *prometheus.Registry
	m   *metrics
	// apps holds the served applications by name; Reload replaces the map.
	apps    atomic.Pointer[map[string]*appRuntime]
	env     protocol.Env
	journal *store.Store
	eng     *engine.Engine
	runner  *engineRunner
	loop    *loop
	// notify sends systemd READY=1, STOPPING=1 and watchdog pings.
	notify *notifier
	egress *egress
	client mqtt.Client
	link   *brokerLink // the broker connection's state (mqttconn.go)
	// conns holds the client's current connection, so that the egress can
	// have it renewed (stranded.go).
	conns  brokerConns
	broker *Broker
	http   *http.Server // metrics, health and readiness; nil when off
	// in queues request messages from paho's router goroutine to the ingress
	// workers (ingress.go); stopIngress ends the workers.
	in          chan arrival
	inBytes     *ingressBudget // admission.ingress_bytes; nil bounds nothing
	stopIngress chan struct{}
	ingressDone sync.WaitGroup
	// claimed holds the request keys a worker is handling (Gateway.claim).
	claimMu sync.Mutex
	claimed map[store.Key]chan struct{}
	// claimWaits, when set (tests only), is called by a worker about to wait
	// for another's claim on the same key.
	claimWaits func(store.Key)

	started time.Time
	// subscribed is true while the gateway is connected and subscribed to requests.
	subscribed atomic.Bool
	// When, under overload, a request was last refused (lastRefused), answered
	// from its estimate at admission instead of queued (lastDegraded), and found
	// every request handler busy, the MQTT client waiting for one (lastIngressWait);
	// for /readyz.
	lastRefused, lastDegraded, lastIngressWait stamp
	// ingressWaiting is 1 while the MQTT client is waiting for a request
	// handler now: a stall (handlers stuck on a slow disk's commit) stamps
	// lastIngressWait once, and /readyz must say overloaded for as long as it
	// lasts, not only for the second after it began.
	ingressWaiting atomic.Int32
	// rejectLog logs rejected requests, sampled (rejectSampler): a device
	// sending bad requests at a high rate must not flood the journal; every
	// rejection is counted in sneakgate_rejected_total.
	rejectLog zerolog.Logger
	// redirectLog logs replies whose journaled reply_to is redirected
	// (journaledReplyTo), sampled (rejectSampler): it runs at every outbox
	// flush of each such reply.
	redirectLog zerolog.Logger
	// estimateLog logs estimates that are no distribution (estimate), sampled
	// (rejectSampler): an input the estimator answers NaN for makes one for
	// every request that carries it.
	estimateLog zerolog.Logger
	// fatal is closed by fail: Run stops and returns fatalErr.
	fatal     chan struct{}
	fatalOnce sync.Once
	fatalMu   sync.Mutex
	fatalErr  error
	// admitting is read-locked by every request handler and write-locked by
	// shutdown (see onMessage); draining is set just before.
	admitting sync.RWMutex
	draining  atomic.Bool
	// swapping is read-locked by a request handler from its application lookup
	// to its Submit, and write-locked by Reload to replace the applications.
	swapping sync.RWMutex
	reloadMu sync.Mutex // serialises reloads
	appGen   int        // numbers the engine keys of reloaded versions (reloadMu)
	// onDrain, if set, runs once draining is set (a test seam).
	onDrain    func()
	perRequest time.Duration
	// Requests read back from the journal at start-up, answered once connected.
	recovered, expired, orphans []*job
	// crashed are the recovered requests answered engine_crashed once
	// connected; guard is the in-flight file (crashguard.go).
	crashed []*job
	guard   *crashGuard
	lguard  *loadGuard // the load guard (loadguard.go)
}

// stamp is when something last happened, stored on some goroutines and
// compared with the clock's later readings (Sub) on others. It holds the time
// since stampBase, not Unix nanoseconds: a time.Time from time.Now carries a
// reading of the monotonic clock, which Sub uses and UnixNano drops, so a
// Unix-ns stamp moved with every step of the wall clock (NTP setting the clock
// of a device without a real-time clock forward by years, or back) and this one
// does not. The zero stamp has never been stored (Load returns the zero Time).
type stamp struct{ since atomic.Int64 } // since stampBase; 0: never (or stampBase itself)

// stampBase is the reading stamps count from: one for the process, so that a
// Gateway or loop needs no set-up for its stamps. An injected clock
// (Options.Now) works as well: Store and Load are exact differences from the
// same base, by the monotonic readings when the clock's times carry one, else
// by the wall times (within 292 years of stampBase).
var stampBase = time.Now()

// Store records t, a reading of the clock the stamp is compared with.
func (s *stamp) Store(t time.Time) { s.since.Store(int64(t.Sub(stampBase))) }

// Load returns the time stored last, with its monotonic reading if it had one,
// or the zero Time if none was.
func (s *stamp) Load() time.Time {
	d := s.since.Load()
	if d == 0 {
		return time.Time{}
	}
	return stampBase.Add(time.Duration(d))
}

// journalBusyGroup is the smallest group commit after which the journal waits
// store.max_batch_delay for more writes (store.Options.BusyGroupSize). A
// request makes three journal writes, and a commit takes one to two
// milliseconds (two fdatasyncs), so the delay starts at a few thousand requests
// a second: where the commits' fixed cost is most of the journal's CPU, and not
// below, where the latency is not worth the CPU (docs/benchmarks.md).
const journalBusyGroup = 16

// New starts everything but the scheduling loop: it loads the applications, opens
// the journal, initialises the engine and measures every variant's profile, reads
// back the requests pending from the last run, starts the embedded broker if
// configured, and connects to the broker. Run does the rest. On error, whatever was
// started is stopped again.
func New(ctx context.Context, o Options) (_ *Gateway, err error) {
	cfg := o.Config
	if cfg == nil {
		return nil, errors.New("gateway: no config")
	}
	g := &Gateway{cfg: cfg, log: o.Logger, now: o.Now, reg: o.Registry,
		in: make(chan arrival, cfg.Admission.IngressQueue), stopIngress: make(chan struct{}),
		claimed: map[store.Key]chan struct{}{}, fatal: make(chan struct{})}
	if g.now == nil {
		g.now = time.Now
	}
	g.sampleLogs()
	g.link = newBrokerLink(g.now)
	if g.reg == nil {
		g.reg = prometheus.NewRegistry()
		g.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	g.m = newMetrics(g.reg)
	g.inBytes = newIngressBudget(int64(cfg.Admission.IngressBytes), g.m.ingressBytes)
	g.started = g.now()
	defer func() {
		if err != nil {
			g.logPanic(err, "start-up failed: preparing an application panicked")
			g.closeAll()
		}
	}()
	if cfg.MQTT.Embedded.Enabled {
		// The embedded broker listens only after the engine has profiled and
		// warmed every model (seconds); a port already taken fails the start
		// now instead of then.
		if err := probeListen(cfg.MQTT.Embedded.Listen); err != nil {
			return nil, fmt.Errorf("gateway: mqtt.embedded.listen: %w", err)
		}
	}
	if err := g.loadApps(); err != nil {
		return nil, err
	}
	g.m.initLabels(slices.Collect(maps.Keys(g.appSet())))
	if err := os.MkdirAll(filepath.Dir(cfg.Store.Path), 0o700); err != nil {
		return nil, fmt.Errorf("gateway: store.path: %w", err)
	}
	var rec *store.Recovery
	g.journal, rec, err = store.OpenOrRecover(cfg.Store.Path, store.Options{
		MaxBatchDelay: cfg.Store.MaxBatchDelay, DelayUnderLoad: true, BusyGroupSize: journalBusyGroup,
		MaxBatchSize: cfg.Store.MaxBatchSize, Retention: cfg.Store.Retention, MaxBytes: cfg.Store.MaxBytes, Now: g.now,
		Logger: g.log.With().Str("component", "store").Logger(), BeforeCommit: o.BeforeCommit,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if rec != nil {
		g.log.Error().Str("path", cfg.Store.Path).Str("moved_to", rec.MovedTo).Int("salvaged_pending", rec.Pending).
			Int("salvaged_outbox", rec.Outbox).Int("salvaged_done", rec.Done).Int("lost", rec.Lost).
			Int("unreadable_pages", rec.UnreadablePages).Strs("problems", rec.Problems).
			Msg("journal damaged: moved aside and salvaged into a new journal; lost requests' keys are released, so a resend runs as new")
	}
	registerJournalMetrics(g.reg, g.journal, rec != nil)
	fps := map[string]string{}
	for n, a := range g.appSet() {
		fps[n] = a.fingerprint
	}
	g.lguard = openLoadGuard(cfg.Store.Path, cfg.Engine.Provider, cfg.engineLibrary(), fps, g.now(), g.log.With().Str("component", "engine").Logger())
	registerPinMetric(g.reg, g.lguard)
	if err := g.startEngine(ctx); err != nil {
		return nil, err
	}
	policy, err := g.newPolicy(ctx)
	if err != nil {
		return nil, err
	}
	sapps := map[string]*scheduler.App{}
	for n, a := range g.appSet() {
		sapps[n] = a.sched
	}
	if err := scheduler.ValidateVariants(sapps, cfg.SchedulerOptions()); err != nil {
		return nil, fmt.Errorf("gateway: %w: scheduler.fixed_variant, cascade_first or peek: %v", ErrConfig, err)
	}
	if err := g.recover(); err != nil {
		return nil, err
	}
	g.crashCheck(cfg.Scheduler.MaxBatch)
	capacity := cfg.Admission.MaxQueue + len(g.recovered) + 1024
	budget := scheduler.Engine{MemBudget: int64(cfg.Engine.MemoryBudgetMB) << 20, CountBudget: cfg.Engine.MaxResident}
	g.loop = newLoop(policy, sapps, g.runner, budget, capacity, g.now, g.answer,
		g.log.With().Str("component", "scheduler").Logger(), g.m)
	g.loop.latency.frozen = !cfg.Scheduler.LatencyCorrection
	g.loop.pipeline = cfg.Scheduler.Pipeline
	g.loop.timeCPU = cfg.Metrics.Pprof
	g.loop.guard = g.guard
	g.loop.fallbackOpts = cfg.SchedulerOptions()
	if cfg.MQTT.Embedded.Enabled {
		users, err := cfg.embeddedUsers() // as Validate read it
		if err != nil {
			return nil, err
		}
		tc, err := cfg.embeddedTLS()
		if err != nil {
			return nil, err
		}
		if g.broker, err = StartBroker(cfg.MQTT.Embedded.Listen, cfg.Admission.MaxPayloadBytes, users, tc, g.log.With().Str("component", "broker").Logger(), Guard{Client: cfg.MQTT.ClientID, Filter: cfg.MQTT.RequestFilter()}); err != nil {
			return nil, err
		}
		b := g.broker
		g.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sneakgate_embedded_broker_dropped_total",
			Help: "Messages the embedded broker acknowledged to their publisher and then dropped instead of delivering them: a device held 8,192 unacknowledged replies, or QoS 0 messages overflowed a client's pending writes; requests to the gateway are held instead (sneakgate_embedded_broker_held_total); docs/deployment.md, \"The embedded broker\"."},
			func() float64 { return float64(b.Dropped()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sneakgate_embedded_broker_held_total",
				Help: "QoS 1 and 2 requests the embedded broker held, unacknowledged, because the gateway already held 7,680 unacknowledged or had not subscribed yet: the device's connection waits instead of the request being dropped; docs/deployment.md, \"The embedded broker\"."},
				func() float64 { return float64(b.Held()) }))
	}
	if err := g.newClient(); err != nil {
		return nil, err
	}
	g.registerAdmission()
	g.serveHTTP() // up before the broker connection, which may take a while
	g.connect(ctx)
	for _, j := range g.expired {
		g.answer(j, result{Status: protocol.StatusExpired, Reason: string(protocol.ReasonExpiredWhileDown)})
	}
	for _, j := range g.orphans {
		g.answer(j, result{Status: protocol.StatusRejected, Reason: string(protocol.ReasonUnknownApp)})
	}
	for _, j := range g.crashed {
		g.answer(j, result{Status: protocol.StatusError, Reason: string(protocol.ReasonEngineCrashed)})
	}
	for _, j := range g.recovered {
		g.loop.SubmitRecovered(j)
	}
	releaseMemory()
	g.log.Info().Int("recovered", len(g.recovered)).Int("expired", len(g.expired)).
		Str("policy", cfg.Scheduler.Policy).Msg("gateway ready")
	g.notify = newNotifier(g.now, g.log.With().Str("component", "systemd").Logger())
	g.notify.Ready()
	g.recovered, g.expired, g.orphans, g.crashed = nil, nil, nil, nil
	return g, nil
}

// startEngine initialises ONNX Runtime, registers every variant, measures (or
// reads cached) profiles, fills the scheduler's latency tables and loads as many
// variants as the residency budget allows.
func (g *Gateway) startEngine(ctx context.Context) error {
	ec := g.cfg.Engine
	lib := g.cfg.engineLibrary()
	var err error
	g.eng, err = engine.New(engine.Options{
		LibraryPath: lib, IntraOpThreads: ec.IntraOpThreads, InterOpThreads: ec.InterOpThreads,
		Provider: ec.Provider, ProviderOptions: ec.ProviderOptions, FallbackToCPU: !ec.RequireProvider,
		MemoryBudgetBytes: int64(ec.MemoryBudgetMB) << 20, MaxResident: ec.MaxResident,
		BatchSizes: ec.BatchSizes, PadBatches: ec.PadBatches, WarmupRuns: ec.WarmupRuns, ProfileRuns: ec.ProfileRuns,
		ProfileCache: ec.ProfileCache, Logger: g.log.With().Str("component", "engine").Logger(),
		Guard: g.lguard.hook,
	})
	if err != nil {
		if errors.Is(err, engine.ErrProvider) && ec.RequireProvider {
			return fmt.Errorf("gateway: engine.require_provider is set and %w", err)
		}
		return fmt.Errorf("gateway: %w", err)
	}
	registerProviderMetrics(g.reg, g.eng.Provider()) // engineprovider.go
	if hint := shapeHint(g.eng.Provider().Active, ec); hint != "" {
		g.log.Warn().Str("component", "engine").Ints("batch_sizes", ec.BatchSizes).Bool("pad_batches", ec.PadBatches).Msg(hint)
	}
	t0 := time.Now()
	var ids []engine.VariantID
	for _, a := range g.appSet() {
		if err := g.prepareEngine(ctx, a, false); err != nil {
			return err
		}
		ids = append(ids, g.eng.Variants(a.key)...)
	}
	g.runner = newEngineRunner(g.eng, g.appSet())
	g.log.Info().Int("variants", len(ids)).Str("took", time.Since(t0).Round(time.Millisecond).String()).Msg("engine profiles ready")
	g.perRequest = time.Hour
	for _, a := range g.appSet() {
		g.perRequest = min(g.perRequest, scheduler.CheapestAmortised(a.sched))
	}
	// Warm start: load variants in manifest order while they fit the budget.
	return g.loadAndWarm(ctx, ids)
}

// loadAndWarm makes ids resident in order while they fit the residency budget
// (a variant that does not is loaded when the loop first runs it) and, with
// engine.warm_up, runs each once at scheduler.max_batch and at 1 (engine.Warm),
// so that the first requests' passes are not a session's slow first ones: the
// drain rate admission measures on the first answers would read them as the
// gateway's pace and refuse the requests behind them. The gateway does this at
// start and for the new versions of a reload before they serve. A model
// mismatch found while warming is an error, and so is a warm-up pass that
// panicked (engine.ErrPanic: every pass of the variant is likely to); another
// failed warm-up pass is logged, since requests on that variant may fail the
// same way.
func (g *Gateway) loadAndWarm(ctx context.Context, ids []engine.VariantID) error {
	t0 := time.Now()
	loaded, warmed := 0, 0
	var keys []string // the applications' engine keys, for the log
	for _, id := range ids {
		if !slices.Contains(keys, id.App) {
			keys = append(keys, id.App)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("gateway: engine: %w", err)
		}
		if _, err := g.eng.Load(id); err != nil {
			if errors.Is(err, engine.ErrOverBudget) {
				continue
			}
			return fmt.Errorf("gateway: engine: load %s: %w", id, err)
		}
		loaded++
		if !g.cfg.Engine.WarmUp {
			continue
		}
		if err := g.eng.Warm(id, g.cfg.Scheduler.MaxBatch); err != nil {
			if errors.Is(err, engine.ErrModelMismatch) || errors.Is(err, engine.ErrPanic) {
				return fmt.Errorf("gateway: engine: warm %s: %w", id, err)
			}
			g.log.Warn().Err(err).Str("variant", id.String()).Msg("engine: a warm-up pass failed; requests on this variant may fail the same way")
			continue
		}
		warmed++
	}
	g.log.Info().Strs("apps", keys).Int("variants", len(ids)).Int("loaded", loaded).Int("warmed", warmed).Int("batch", g.cfg.Scheduler.MaxBatch).
		Str("took", time.Since(t0).Round(time.Millisecond).String()).Msg("engine variants loaded and warmed")
	return nil
}

// recover reads back the requests pending from the last run: those past their
// deadline are answered expired once connected, the rest are scheduled.
func (g *Gateway) recover() error {
	pending, err := g.journal.Pending()
	if err != nil {
		return fmt.Errorf("gateway: journal recovery: %w", err)
	}
	now := g.now()
	for _, e := range pending {
		a, ok := g.app(e.App)
		j := &job{App: e.App, Device: e.Device, ID: e.ID, ReplyTo: g.journaledReplyTo(e.ReplyTo, e.Key), Received: e.Received,
			Deadline: e.Deadline, Input: e.Input, rt: a}
		switch {
		case !ok || len(e.Input) != a.m.InputSize:
			// The application is no longer served (or changed its input size).
			g.orphans = append(g.orphans, j)
			g.log.Warn().Str("app", e.App).Str("device", e.Device).Str("id", e.ID).
				Msg("recovered request for an application not served any more: answered rejected")
		case now.After(e.Deadline):
			g.expired = append(g.expired, j)
		default:
			j.Estimate, j.Correct, j.Answer, j.Mix = g.estimate(a, j.Input)
			g.observe(a, j.Answer)
			g.recovered = append(g.recovered, j)
		}
	}
	return nil
}

// journaledReplyTo is where the reply to the journaled request k goes, whose
// journaled reply topic is topic (protocol.Env.JournaledReplyTo): a reply_to
// an earlier version admitted that the broker would refuse, closing the
// gateway's connection at every publish, goes to the device's own reply topic.
func (g *Gateway) journaledReplyTo(topic string, k store.Key) string {
	rt := g.env.JournaledReplyTo(topic, k.App, k.Device)
	if rt != topic {
		g.redirectLog.Warn().Stringer("key", k).Str("reply_to", topic).Str("topic", rt).
			Msg("journaled reply_to is not a topic the gateway publishes to; the reply goes to the device's own reply topic")
	}
	return rt
}

// sampleLogs makes the sampled loggers (rejectSampler) from g.log.
func (g *Gateway) sampleLogs() {
	g.rejectLog = g.log.Sample(rejectSampler())
	g.redirectLog = g.log.Sample(rejectSampler())
	g.estimateLog = g.log.Sample(rejectSampler())
}

// newClient makes the MQTT client (persistent session) and the egress that
// publishes through it; connect connects it.
func (g *Gateway) newClient() error {
	c := g.cfg.MQTT
	// The client's store counts the packet ids it holds; every reply publish
	// takes a place first (pubgate.go).
	gate := newPubGate(c.MaxInflightPublishes)
	gate.waited = g.m.publishWaits.Inc
	opts := mqtt.NewClientOptions().AddBroker(c.Broker).SetClientID(c.ClientID).SetStore(gate).
		// The handler runs on paho's router goroutine and never blocks (ingress.go).
		SetCleanSession(false).SetAutoAckDisabled(true).SetOrderMatters(true).
		SetWriteTimeout(c.PublishTimeout).
		SetKeepAlive(c.Keepalive).SetAutoReconnect(true).SetMaxReconnectInterval(2*time.Second).
		SetConnectRetry(true).SetConnectRetryInterval(time.Second).SetConnectTimeout(5*time.Second).
		SetDefaultPublishHandler(g.onRequest).
		SetBinaryWill(c.StatusTopic(), g.statusPayload(protocol.StateOffline, protocol.OfflineLost), 1, true)
	// Every connection through brokerConns, so that the egress can drop one
	// whose stranded publishes call for it (stranded.go).
	open := bufferedOpener(c.Broker) // mqttbuf.go
	if open == nil {
		open = dialBroker // paho's own, as paho would open it
	}
	opts.SetCustomOpenConnectionFn(g.conns.opener(open))
	if c.Username != "" {
		opts.SetUsername(c.Username)
	}
	log := g.log.With().Str("component", "mqtt").Logger()
	pw, err := c.password()
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	opts.SetPassword(pw)
	if c.Username != "" && pw == "" {
		log.Info().Str("username", c.Username).Str("password_file", c.PasswordFile).
			Msg("connecting with a user name and no password (no mqtt.password_file, or a blank one)")
	}
	tc, err := g.cfg.brokerTLS() // as Validate read it
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if tc != nil {
		opts.SetTLSConfig(tc)
		if tc.InsecureSkipVerify {
			log.Warn().Str("broker", c.Broker).Msg("mqtt.tls.insecure_skip_verify: the broker's certificate is not checked; anyone on the path can pose as the broker")
		}
	}
	opts.SetConnectionNotificationHandler(g.onConnectionNotification(log))
	opts.SetOnConnectHandler(g.onConnect(log))
	// Called before each reconnection attempt, so before the new connection
	// delivers anything or begins (the connection-lost handler runs in a
	// goroutine of its own, possibly after the reconnection; brokerLink.lost).
	opts.SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) {
		g.link.reconnecting()
		g.egress.connectionLost()
	})
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		if conflict, n := g.link.lost(); conflict {
			log.Error().Err(err).Str("client_id", c.ClientID).Int("short_connections", n).
				Msg("the broker keeps closing the connection soon after it opens: another client is probably using this client id (each connection takes the other's session over; give every gateway its own mqtt.client_id), or the broker refuses something the gateway sends (its log says which: a publish to a topic it calls malformed, a packet over its max_packet_size)")
			return
		}
		log.Warn().Err(err).Msg("connection to the broker lost; replies go to the outbox until it is back")
	})
	g.client = mqtt.NewClient(opts)
	g.link.register(g.reg, g.client, &g.subscribed)
	g.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_mqtt_publishes_in_flight",
		Help: "Packets the MQTT client has sent (or is sending) at QoS 1 and the broker has not acknowledged yet, each holding one of its 65,535 packet ids; mqtt.max_inflight_publishes bounds the gateway's publishes among them."},
		func() float64 { return float64(gate.inFlight()) }))
	eo := defaultEgressOptions()
	eo.Durable = c.DurableReplies
	eo.Gate = gate
	eo.OwedMemory = g.cfg.Store.Retention
	g.egress = newEgress(g.client, g.journal, c.PublishTimeout, c.FlushRate, g.now, eo, log, g.m)
	g.egress.served = func(app string) bool { _, ok := g.app(app); return ok }
	g.egress.replyTo = g.journaledReplyTo
	g.egress.journalError = g.journalError
	g.egress.reconnect = g.conns.fail
	g.loop.egressDelay = g.egress.Delay
	return nil
}

// connect starts connecting to the broker (retried in the background, every
// failed attempt logged) and waits, at most firstConnectWait and no longer than
// ctx, for the first subscription's outcome or the first request message
// (brokerLink.awaitFirst).
func (g *Gateway) connect(ctx context.Context) {
	t := g.client.Connect() // with ConnectRetry, it ends only connected or disconnected
	go func() { <-t.Done(); close(g.link.resumed) }()
	if !g.link.awaitFirst(ctx, firstConnectWait) && ctx.Err() == nil {
		g.log.Warn().Str("component", "mqtt").Str("broker", g.cfg.MQTT.Broker).
			Msg("not connected and subscribed yet; retrying in the background")
	}
}

// answer is the loop's (and recovery's) way to reply to a journaled request.
func (g *Gateway) answer(j *job, r result) {
	a := j.rt
	if a == nil {
		a, _ = g.app(j.App)
	}
	var labels []string
	var est string
	if a != nil {
		labels, est = a.m.Labels, a.estName
	}
	if r.Status == protocol.StatusRejected {
		// A journaled request answered rejected (its application gone after a
		// reload or restart, or the loop's queue full): counted and logged as
		// the rejections at ingress are (docs/protocol.md).
		g.rejected(r.Reason, j.App, j.Device, j.ID).Msg("request rejected")
	}
	if r.Status == protocol.StatusOK || r.Status == protocol.StatusLate {
		g.m.countAnswer(j.App, !g.now().After(j.Deadline), r.EstAccuracy)
		if !r.Start.IsZero() {
			g.m.queueTime.WithLabelValues(j.App).Observe(r.Start.Sub(j.Received).Seconds())
		}
	}
	if a != nil && a.monitor != nil && r.Variant == a.monitorRef && j.Estimate != nil && r.Probs != nil {
		a.monitor.Observe(j.Estimate, scheduler.Argmax(r.Probs))
	}
	g.egress.Answer(&answerMsg{topic: j.ReplyTo, key: store.Key{App: j.App, Device: j.Device, ID: j.ID},
		deadline: j.Deadline, build: func(now time.Time) *protocol.Reply {
			return buildReply(j, r, labels, est, now)
		}})
}

// Run runs the gateway until ctx ends, then shuts down in this order: stop taking
// requests (they stay with the broker, unacknowledged), let the batch in flight
// finish and answer it, wait for publishes in flight (bounded), disconnect, stop
// the embedded broker, close the engine, close the journal last. Requests still
// queued stay in the journal and are answered after the next start. The waits
// for the broker end mqtt.shutdown_timeout after the stop began (egress.giveUp):
// what it has not acknowledged by then stays in the journal too, or, for a
// request that is not journaled, unacknowledged with the broker.
func (g *Gateway) Run(ctx context.Context) error {
	for range g.cfg.Admission.Workers {
		g.ingressDone.Add(1)
		go func() {
			defer g.ingressDone.Done()
			for {
				select {
				case a := <-g.in:
					g.handleAndGive(a)
				case <-g.stopIngress:
					return
				}
			}
		}()
	}
	loopCtx, stopLoop := context.WithCancel(context.Background())
	loopDone := make(chan struct{})
	go func() { g.loop.Run(loopCtx); close(loopDone) }()
	flushCtx, stopFlush := context.WithCancel(context.Background())
	flushDone := make(chan struct{})
	go func() { g.egress.Flusher(flushCtx, 5*time.Second); close(flushDone) }()
	g.egress.Kick()
	statsCtx, stopStats := context.WithCancel(context.Background())
	statsDone := make(chan struct{})
	go func() {
		if every := g.cfg.MQTT.StatsInterval; every > 0 {
			g.statsLoop(statsCtx, every)
		}
		close(statsDone)
	}()
	gcCtx, stopGC := context.WithCancel(context.Background())
	gcDone := make(chan struct{})
	go func() { g.gcLoop(gcCtx); close(gcDone) }()
	wdCtx, stopWatchdog := context.WithCancel(context.Background())
	wdDone := make(chan struct{})
	go func() {
		g.notify.Watchdog(wdCtx, g.loop.heartbeat.Load)
		close(wdDone)
	}()
	select {
	case <-ctx.Done():
		g.log.Info().Msg("shutting down")
	case <-g.fatal:
		g.log.Error().Err(g.fatalError()).Msg("shutting down after a fatal error")
	}
	g.notify.Stopping()
	stopWatchdog() // from here TimeoutStopSec bounds the shutdown, and shutdown_timeout the waits for the broker
	<-wdDone
	stopping, limit := time.Now(), g.cfg.MQTT.ShutdownTimeout
	giveUp := time.AfterFunc(limit, func() {
		g.log.Warn().Dur("shutdown_timeout", limit).
			Msg("the broker has not taken the last replies within mqtt.shutdown_timeout: giving up on it; what it has not acknowledged is answered after the next start")
		g.egress.giveUp()
	})
	defer giveUp.Stop()
	g.draining.Store(true)
	g.link.stop() // no more subscription attempts, and no "online" from here on
	if g.onDrain != nil {
		g.onDrain()
	}
	g.admitting.Lock() // no new requests; waits for handlers in flight
	close(g.stopIngress)
	g.ingressDone.Wait() // what is left in g.in stays unacknowledged: redelivered
	stopLoop()
	<-loopDone
	stopFlush()
	<-flushDone
	stopGC()
	<-gcDone
	stopStats()
	<-statsDone
	waitCtx, cancel := context.WithDeadline(context.Background(),
		minTime(time.Now().Add(g.cfg.MQTT.PublishTimeout+time.Second), stopping.Add(limit)))
	g.egress.Stop(waitCtx) // answers not published by then stay pending in the journal
	cancel()
	unacked := g.egress.Close() // late waiters give up: their replies stay in the outbox
	if g.client.IsConnectionOpen() {
		g.publishStatus(protocol.StateOffline, protocol.OfflineShutdown)
	}
	err := errors.Join(g.fatalError(), g.closeAll())
	g.logStopped(time.Since(stopping), unacked)
	return err
}

// logStopped says what the stop leaves for the next start: the journal's
// pending requests (answered then) and outbox (replies the broker has not
// acknowledged, published then), and the requests answered without being
// journaled whose replies the broker had not acknowledged (left unacknowledged:
// it delivers them again).
func (g *Gateway) logStopped(took time.Duration, unacked int) {
	st := g.journal.Stats()
	ev := g.log.Info()
	gaveUp := g.egress.gaveUpOnBroker()
	if gaveUp {
		ev = g.log.Warn()
	}
	ev.Int("pending", st.Pending).Int("outbox", st.Outbox).Int("unacknowledged", unacked).
		Bool("gave_up_on_broker", gaveUp).Str("took", took.Round(time.Millisecond).String()).
		Msg("stopped: pending requests are answered and outbox replies published after the next start; unacknowledged requests the broker delivers again")
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// fatalError is the error given to fail, or nil.
func (g *Gateway) fatalError() error {
	g.fatalMu.Lock()
	defer g.fatalMu.Unlock()
	return g.fatalErr
}

// journalError looks at an error of a journal operation: a journal file damaged
// while running (store.ErrDamaged) cannot be written any more, so the gateway
// stops with an error (under systemd, Restart=on-failure restarts it, and the
// start-up check moves the damaged file aside and salvages what it can).
func (g *Gateway) journalError(err error) {
	if errors.Is(err, store.ErrDamaged) {
		g.fail(fmt.Errorf("gateway: journal: %w", err))
	}
}

// journalDamage is journalError for the request handlers' lookups and writes
// of a request's key, where a record the journal cannot read
// (store.ErrCorrupt) is damage too: no later delivery in this session could
// read it, and any answer could contradict the request's first (it may be
// pending or answered). The gateway stops, the request unacknowledged, and
// the next start verifies the journal (store.OpenOrRecover), which salvages
// what is readable and indexes the key again.
func (g *Gateway) journalDamage(err error) {
	if errors.Is(err, store.ErrCorrupt) {
		g.fail(fmt.Errorf("gateway: journal: %w", err))
		return
	}
	g.journalError(err)
}

// fail makes Run stop and return err (the first one given).
func (g *Gateway) fail(err error) {
	g.fatalOnce.Do(func() {
		g.fatalMu.Lock()
		g.fatalErr = err
		g.fatalMu.Unlock()
		close(g.fatal)
	})
}

// readiness says whether the gateway is serving: connected and subscribed to
// requests, not stopping, its journal able to store new requests (not out of
// disk space), and not overloaded (in the last second, refusing
// requests, answering them from their estimate instead of queueing them, or
// leaving the MQTT client waiting for a request handler). It returns "" when
// ready, else the reason: what the gateway did of these.
func (g *Gateway) readiness() string {
	switch {
	case g.draining.Load():
		return "shutting down"
	case !g.subscribed.Load():
		return g.link.notServing(g.client.IsConnectionOpen())
	}
	if since := g.journal.Stats().NoSpaceSince; !since.IsZero() {
		return fmt.Sprintf("journal disk full since %s: refusing new requests (store.path %s; free space there)",
			since.UTC().Format(time.RFC3339), g.journal.Path())
	}
	now := g.now()
	var doing []string
	for _, c := range []struct {
		at    *stamp
		going bool // still going on now, however long ago it began
		what  string
	}{
		{&g.lastRefused, false, "refusing requests"},
		{&g.lastDegraded, false, "answering requests from their estimate instead of queueing them"},
		{&g.lastIngressWait, g.ingressWaiting.Load() > 0, "the request handlers are behind: the MQTT client waits for one, and the broker holds the requests it has not sent"},
	} {
		if at := c.at.Load(); c.going || (!at.IsZero() && now.Sub(at) < time.Second) {
			doing = append(doing, c.what)
		}
	}
	if len(doing) == 0 {
		return ""
	}
	return fmt.Sprintf("overloaded: %s (%d queued, about %s to drain)", strings.Join(doing, "; "),
		g.loop.Queued(), g.estimatedWait().Round(time.Millisecond))
}

// serveHTTP serves /metrics, /healthz, /readyz (and the profiler) on
// metrics.listen, if set. A listener that cannot be opened is logged, not fatal.
func (g *Gateway) serveHTTP() {
	l := g.cfg.Metrics.Listen
	if l == "" {
		return
	}
	ln, err := net.Listen("tcp", l)
	if err != nil {
		g.log.Error().Err(err).Msg("metrics endpoint disabled")
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g.reg, promhttp.HandlerOpts{Registry: g.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", g.readyz)
	if g.cfg.Metrics.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	g.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go g.http.Serve(ln)
	g.log.Info().Str("listen", l).Msg("metrics at /metrics")
}

// readyz answers 200 "ready" or 503 with the reason (readiness).
func (g *Gateway) readyz(w http.ResponseWriter, _ *http.Request) {
	if why := g.readiness(); why != "" {
		http.Error(w, why, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// gcLoop drops remembered answered keys past their retention.
func (g *Gateway) gcLoop(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := g.journal.GC(g.now()); err != nil {
				g.journalError(err)
				g.m.storeErrors.WithLabelValues("gc").Inc()
				g.log.Error().Err(err).Msg("journal GC failed")
			}
		}
	}
}

// closeAll stops whatever New started, in shutdown order.
func (g *Gateway) closeAll() error {
	var errs []error
	if g.http != nil {
		g.http.Close()
	}
	if g.client != nil {
		g.link.stop()
		g.client.Disconnect(250)
	}
	if g.broker != nil {
		errs = append(errs, g.broker.Close())
	}
	if g.eng != nil {
		errs = append(errs, g.eng.Close())
	}
	if g.guard != nil {
		errs = append(errs, g.guard.close())
	}
	if g.journal != nil {
		errs = append(errs, g.journal.Close())
	}
	return errors.Join(errs...)
}

// Registry is the gateway's metrics registry.
func (g *Gateway) Registry() *prometheus.Registry { return g.reg }

// engineRunner adapts the engine to the loop's runner interface. The loop knows
// variants by application name; the engine by the key each served version was
// registered under (appRuntime.key). A reload switches keys (setKeys) on the loop
// goroutine, between batches.
type engineRunner struct {
	e    *engine.Engine
	mu   sync.RWMutex
	keys map[string]string // application name -> engine key
	apps map[string]string // engine key -> application name
}

func newEngineRunner(e *engine.Engine, apps map[string]*appRuntime) *engineRunner {
	r := &engineRunner{e: e, keys: map[string]string{}, apps: map[string]string{}}
	r.setKeys(apps)
	return r
}

// setKeys maps each application of apps to its version's key; other names keep
// theirs (removed applications draining their queues).
func (r *engineRunner) setKeys(apps map[string]*appRuntime) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, a := range apps {
		delete(r.apps, r.keys[name])
		r.keys[name], r.apps[a.key] = a.key, name
	}
}

// dropKey forgets a retired application's key.
func (r *engineRunner) dropKey(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.apps, r.keys[name])
	delete(r.keys, name)
}

func (r *engineRunner) eid(id scheduler.VariantID) engine.VariantID {
	r.mu.RLock()
	defer r.mu.RUnlock()
	key, ok := r.keys[id.App]
	if !ok {
		key = id.App
	}
	return engine.VariantID{App: key, Variant: id.Variant}
}

func (r *engineRunner) Load(id scheduler.VariantID) (time.Duration, error) {
	return r.e.Load(r.eid(id))
}
func (r *engineRunner) Unload(id scheduler.VariantID) (time.Duration, error) {
	return r.e.Unload(r.eid(id))
}
func (r *engineRunner) Run(id scheduler.VariantID, in [][]float32) ([][]float64, error) {
	return r.e.Run(r.eid(id), in)
}

// Resident lists the resident variants of the served versions (a new version's
// variant loaded to be profiled before it is swapped in is not one of them).
func (r *engineRunner) Resident() []scheduler.VariantID {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []scheduler.VariantID
	for _, id := range r.e.Resident() {
		if name, ok := r.apps[id.App]; ok {
			out = append(out, scheduler.VariantID{App: name, Variant: id.Variant})
		}
	}
	return out
}

// releaseMemory returns to the operating system, at once, what start-up or a
// reload allocated only for a while: above all the validation splits read to
// start the label-shift correction and to measure the cascade and peek curves
// (fashion's is 31 MB of float32). Left to Go's background scavenger, giving it
// back cost the gateway about 20 µs of CPU per request over its first 20,000
// requests on the two-core development machine (docs/benchmarks.md, "Memory
// released at start-up"). One forced collection, a few milliseconds.
func releaseMemory() { debug.FreeOSMemory() }

// probeListen reports whether a TCP listener can be opened on addr now, and
// closes it: a start-up check, not a reservation (another process may take the
// port before it is listened on for good).
func probeListen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}
