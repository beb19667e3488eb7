package gateway

import (
	"runtime"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// metrics are the gateway's Prometheus metrics ("accuracy goodput" observability).
// They are registered on an injected registry so tests can read them.
type metrics struct {
	reg           prometheus.Registerer
	received      *prometheus.CounterVec   // app
	replies       *prometheus.CounterVec   // app, status
	rejected      *prometheus.CounterVec   // reason
	refusedDeg    *prometheus.CounterVec   // app
	deviceRefused *prometheus.CounterVec   // app
	verdicts      *prometheus.CounterVec   // app, outcome, reason
	admissionShed *prometheus.CounterVec   // app
	unrecorded    *prometheus.CounterVec   // app, reason: answers from the estimate the journal did not record
	admissionEst  *prometheus.CounterVec   // app
	requeued      *prometheus.CounterVec   // app: first passes sent back for a second
	unroutable    prometheus.Counter       // broken beyond any reply topic
	duplicates    *prometheus.CounterVec   // state: pending, done
	queueLen      prometheus.Gauge         // requests waiting for a model
	queueTime     *prometheus.HistogramVec // app
	// transit is, for requests that carry sent_at, the time from their
	// device's sent_at to their receipt (the broker's queue, the network, and
	// any clock skew): budget spent before the gateway could act.
	transit *prometheus.HistogramVec // app
	// egressTime is each answer's time from the loop to the broker (the delay
	// admission's estimated wait adds, averaged; egress.observeDelay).
	egressTime prometheus.Histogram
	inferTime  *prometheus.HistogramVec // app, variant
	// inferProfiled sums, per forward pass, the start-up profile's duration
	// of a pass of its batch size: inferTime's sum over it is how much longer
	// passes took than profiled over any period, weighted by time.
	inferProfiled *prometheus.CounterVec // app, variant
	// inferCPU sums the CPU time of the engine worker's thread in each forward
	// pass (Linux, with metrics.pprof: loop.timeCPU): over inferTime's sum, the share of the passes' wall time
	// they ran instead of waiting (for a core, or for a Go processor after the
	// call); over inferProfiled, how much more CPU a pass took than its
	// profile's wall time.
	inferCPU     *prometheus.CounterVec   // app, variant
	batchSize    *prometheus.HistogramVec // app, variant
	answers      *answerCounts            // app: answers given by models, deadline met or not, their est_accuracy summed
	swaps        *prometheus.CounterVec   // kind: load, unload
	swapTime     *prometheus.CounterVec   // kind
	decisionTime prometheus.Histogram
	// decidedAhead counts the batches decided while the engine ran the one
	// before (scheduler.pipeline); engineWait sums the time the engine sat
	// idle between batches while requests were waiting.
	decidedAhead prometheus.Counter
	// keptBatches counts the batches taken from an earlier decision's plan
	// (scheduler.plan_ahead).
	keptBatches prometheus.Counter
	engineWait  prometheus.Counter
	// invalidDecisions counts the policy's decisions the loop refused (loop.decide).
	invalidDecisions prometheus.Counter
	// batchFailures counts the forward passes that failed (loop.finish), every
	// one: their log line is sampled.
	batchFailures *prometheus.CounterVec // app, variant
	// handlerPanics counts the request handlers' recovered panics (handle).
	handlerPanics prometheus.Counter
	storeErrors   *prometheus.CounterVec // op
	publishFails  prometheus.Counter
	resident      prometheus.Gauge
	dropped       *prometheus.CounterVec // status: replies republished to duplicates dropped (queue full, not connected)
	ignored       *prometheus.CounterVec // why: retained
	reloads       *prometheus.CounterVec // result: ok, refused
	moved         prometheus.Counter     // queued requests moved to a reloaded version
	// latencyFactor is each variant's latency correction (observed/profiled).
	latencyFactor *prometheus.GaugeVec // app, variant
	// loopTime and loopBatchTime are the loop's own time per request and its
	// decisions' per batch, which the latency tables include.
	loopTime, loopBatchTime prometheus.Gauge
	// ingressWaits counts request messages that found every request handler
	// busy and the hand-off queue full (the MQTT client waited for room).
	ingressWaits prometheus.Counter
	// ingressBytes is the bytes of request payloads queued for the request
	// handlers or in their hands (admission.ingress_bytes bounds it).
	ingressBytes prometheus.Gauge
	// crashSuspects is the recovered requests found in a forward pass the last
	// run died in, by what became of them (crashguard.go).
	crashSuspects *prometheus.GaugeVec
	// owed is the replies to requests not journaled that were handed to the
	// broker and whose PUBACK has not come yet (their requests are not
	// acknowledged yet).
	owed prometheus.Gauge
	// owedWaiting is the owed replies not handed to the MQTT client yet: every
	// packet id it may hold (mqtt.max_inflight_publishes) was taken.
	owedWaiting prometheus.Gauge
	// owedRemembered is the owed replies remembered for copies of their
	// requests the broker may deliver again (owedLedger).
	owedRemembered prometheus.Gauge
	// publishWaits counts publishes that found every such place taken.
	publishWaits prometheus.Counter
	// strandedReconnects counts broker connections the gateway dropped because
	// publishes the MQTT client failed unsent held packet ids (stranded.go).
	strandedReconnects prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := func(c prometheus.Collector) {
		if reg != nil {
			reg.MustRegister(c)
		}
	}
	lat := prometheus.ExponentialBuckets(0.0001, 2, 16) // 100µs .. ~3.3s
	m := &metrics{
		reg: reg,
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_requests_received_total", Help: "Requests admitted to the journal, by application."}, []string{"app"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_replies_total", Help: "Replies handed to the broker, counted when it acknowledges them (PUBACK), so possibly just after their device has them, by application and status."}, []string{"app", "status"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_rejected_total", Help: "Requests rejected, by reason code."}, []string{"reason"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_scheduler_verdicts_total", Help: "Requests the scheduler answered without running a model, by application, outcome (degraded, expired, first_pass) and reason (e.g. estimate_worth_more, overload_shed, no_variant_meets_deadline); estimate_worth_more counts the answers admission gives by the scheduler's test too."}, []string{"app", "outcome", "reason"}),
		refusedDeg: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_admission_degraded_total", Help: "Requests refused for overload and answered from the SneakPeek estimate instead (admission.degrade_refused), by application."}, []string{"app"}),
		deviceRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_device_limit_refused_total", Help: "Requests rejected overload because their device had admission.max_queue_per_device requests queued, by application; also counted in sneakgate_rejected_total{reason=\"overload\"}."}, []string{"app"}),
		admissionShed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_admission_shed_total", Help: "Requests answered from the SneakPeek estimate at admission because the scheduler was shedding requests worth more per second of engine time (admission.price_shed), by application."}, []string{"app"}),
		unrecorded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_estimate_answers_unrecorded_total", Help: "Answers from the SneakPeek estimate at admission published without their journal record (admission.journal_estimate_answers), so that a copy of the request after a restart is answered anew, by application and reason: journal_full (more than half of store.max_bytes in use, the rest left to requests), no_space (the journal's disk is full), error (a failed write, also counted in sneakgate_store_errors_total{op=\"answered\"})."}, []string{"app", "reason"}),
		admissionEst: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_admission_estimate_answers_total", Help: "Requests answered from the SneakPeek estimate at admission, without being journaled, because the scheduler's test (scheduler.estimate_answers) found the estimate worth more than any model's answer, by application; also counted in sneakgate_scheduler_verdicts_total{outcome=\"degraded\",reason=\"estimate_worth_more\"}."}, []string{"app"}),
		requeued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_first_passes_requeued_total", Help: "Answers of a first pass (the cascade policy's, or sneakpeek's peek: scheduler.peek) below the confidence threshold, sent back to the queue for a second pass or to be answered with the first, by application."}, []string{"app"}),
		unroutable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_unroutable_total", Help: "Messages so broken that no reply topic could be derived (logged, not answered)."}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_duplicates_total", Help: "Redelivered duplicates not run again, by the original's state: pending (journaled, not answered yet: ignored), done (journaled and answered: its stored reply published again), unjournaled (answered without being journaled, its reply remembered: sneakgate_unjournaled_replies_remembered; the same reply published again)."}, []string{"state"}),
		queueLen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sneakgate_queue_length", Help: "Requests waiting for a model."}),
		queueTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sneakgate_queue_duration_seconds", Help: "Time from receipt to the start of the request's batch.", Buckets: lat}, []string{"app"}),
		transit: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sneakgate_request_transit_seconds", Help: "For requests with sent_at: time from the device's sent_at to the gateway's receipt (the broker's queue, the network, clock skew; 1 ms resolution).", Buckets: lat}, []string{"app"}),
		egressTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sneakgate_reply_egress_seconds", Help: "Time from an answer's readiness to its reply's hand-over to the broker (its average is admission's egress delay).", Buckets: lat}),
		inferTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sneakgate_infer_duration_seconds", Help: "Duration of one batched forward pass.", Buckets: lat}, []string{"app", "variant"}),
		inferProfiled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_infer_profiled_seconds_total", Help: "The start-up profile's duration of each forward pass at its batch size, summed: sneakgate_infer_duration_seconds_sum over its increase is how much longer passes took than profiled over a period."}, []string{"app", "variant"}),
		inferCPU: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_infer_cpu_seconds_total", Help: "CPU time of the engine worker's thread in the forward passes, summed (Linux, with metrics.pprof on; 0 otherwise): over sneakgate_infer_duration_seconds_sum, the share of the passes' wall time they spent running rather than waiting (for a core, or for the Go scheduler after the call)."}, []string{"app", "variant"}),
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sneakgate_batch_size", Help: "Requests per forward pass.", Buckets: []float64{1, 2, 4, 8, 16, 32, 64}}, []string{"app", "variant"}),
		answers: newAnswerCounts(),
		swaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_swaps_total", Help: "Variant loads and unloads."}, []string{"kind"}),
		swapTime: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_swap_seconds_total", Help: "Time spent loading and unloading variants."}, []string{"kind"}),
		decisionTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sneakgate_decision_duration_seconds", Help: "Duration of one scheduling decision.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 2, 16)}),
		decidedAhead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_batches_decided_ahead_total", Help: "Batches decided while the engine ran the batch before (scheduler.pipeline)."}),
		keptBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_batches_from_kept_plan_total", Help: "Batches the scheduling loop took from an earlier decision's plan without planning again (scheduler.plan_ahead); one later put back, its running batch having failed, counts too."}),
		engineWait: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_engine_wait_seconds_total", Help: "Time the engine sat idle between two batches while requests were waiting (the scheduling loop deciding and handing over)."}),
		invalidDecisions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_invalid_decisions_total", Help: "Scheduling decisions refused as invalid (a request answered twice or not queued, a batch the engine cannot run, a swap over the residency budget, a policy panic): not applied, every request kept queued, edf decided instead."}),
		batchFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_batch_failures_total", Help: "Forward passes the engine failed (an error from the model's run), by application and variant; every request in one is answered error (internal). Their log line, batch failed, is sampled."}, []string{"app", "variant"}),
		handlerPanics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_handler_panics_total", Help: "Request handlers that panicked and were recovered (logged at error level with the panic); each request is rejected internal, left for redelivery, handed to the scheduler (journaled already) or acknowledged without a reply (its answer under way), as docs/protocol.md says. Anything above 0 is a gateway bug."}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_store_errors_total", Help: "Journal operations that failed, by operation."}, []string{"op"}),
		publishFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_publish_failures_total", Help: "Reply publishes that failed or timed out (the reply waits in the outbox)."}),
		resident: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sneakgate_resident_variants", Help: "Model variants loaded in the engine."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_replies_dropped_total", Help: "Replies republished to duplicates of answered requests (whose first copy the broker acknowledged) dropped because their queue was full or the broker was away, and replies to requests sent at QoS 0 that are not journaled (refusals, rejections, answers from the estimate) dropped because 8,192 such replies already waited for a packet id, by status. Replies to QoS 1 requests that are not journaled are never dropped: their requests are acknowledged when the broker has the reply."}, []string{"status"}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_requests_ignored_total", Help: "Request messages acknowledged and not run: retained messages (replayed by the broker, never requests)."}, []string{"why"}),
		ingressWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_ingress_waits_total", Help: "Request messages that found the hand-off to the request handlers full (admission.ingress_queue messages, or admission.ingress_bytes of payloads): the MQTT client waited for room, and the broker held the rest meanwhile."}),
		crashSuspects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sneakgate_crash_suspects", Help: "Requests recovered at start-up that were in a forward pass when an earlier run of the process died (a crash, a kill, the watchdog), as of this start: state alone, run in a pass of their own; state answered, answered error (engine_crashed) because they were in such a pass at two deaths, the last alone. Above 0: look for the cause in the journal of the previous run."}, []string{"state"}),
		ingressBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sneakgate_ingress_bytes", Help: "Bytes of request payloads queued for the request handlers or in their hands; admission.ingress_bytes bounds it (a payload larger than that counts as that much)."}),
		owed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sneakgate_unjournaled_replies_in_flight", Help: "Replies to requests that are not journaled (refusals, rejections, answers from the estimate, expired requests) handed to the broker and not acknowledged by it yet; their requests are acknowledged when they are."}),
		owedWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sneakgate_unjournaled_replies_waiting", Help: "Replies to requests that are not journaled waiting to be handed to the broker because the MQTT client holds as many unacknowledged publishes as mqtt.max_inflight_publishes allows; they go out, in order, as the broker acknowledges."}),
		owedRemembered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sneakgate_unjournaled_replies_remembered", Help: "Replies to requests that are not journaled kept in memory so that a copy of the request gets the same bytes (sneakgate_duplicates_total{state=\"unjournaled\"}): refusals and expired replies until their requests are acknowledged, answers from the estimate (degraded) that the journal did not record (admission.journal_estimate_answers off, or refused) until they are the oldest of 16,384 or older than store.retention"}),
		publishWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_mqtt_publish_waits_total", Help: "Publishes that found the MQTT client holding as many unacknowledged publishes as mqtt.max_inflight_publishes allows and waited for a PUBACK (replies to requests that are not journaled queue instead; answers, republished replies and the outbox flush wait)."}),
		strandedReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_mqtt_stranded_reconnects_total", Help: "Broker connections the gateway dropped itself because publishes the MQTT client had failed without sending them (its write timeout, mqtt.publish_timeout) held packet ids, and the broker had acknowledged nothing for mqtt.publish_timeout (or, while it acknowledged others, 12 publish timeouts had passed): the next connection resends them (docs/reliability.md, \"Packet ids\")."}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sneakgate_reloads_total", Help: "Configuration reloads (SIGHUP), by result: ok, or refused (the previous configuration kept serving)."}, []string{"result"}),
		moved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sneakgate_reload_moved_requests_total", Help: "Queued requests moved to the new version of an application changed by a reload."}),
		latencyFactor: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sneakgate_latency_correction_ratio", Help: "How much longer forward passes take now than their start-up profile (a weighted mean over recent batches); with scheduler.latency_correction on (the default) the scheduler plans with profile x this."}, []string{"app", "variant"}),
		loopTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sneakgate_loop_seconds_per_request", Help: "The scheduling loop's own time per request, its decisions aside, while the engine waits for it with requests queued (answering the last batch, queueing arrivals; a weighted mean over recent waits); with scheduler.latency_correction on (the default) every batch of b is planned b times this longer than the engine takes, and sneakgate_loop_seconds_per_batch longer again."}),
		loopBatchTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sneakgate_loop_seconds_per_batch", Help: "The scheduling loop's decisions' time per batch while the engine waits for it with requests queued (a weighted mean over recent waits); with scheduler.latency_correction on (the default) every batch is planned this much longer than the engine takes, and b times sneakgate_loop_seconds_per_request."}),
	}
	for _, c := range []prometheus.Collector{m.latencyFactor, m.loopTime, m.loopBatchTime, m.reloads, m.moved, m.received, m.replies, m.rejected, m.verdicts, m.refusedDeg, m.deviceRefused, m.admissionShed, m.unrecorded, m.admissionEst, m.requeued, m.unroutable, m.duplicates,
		m.queueLen, m.queueTime, m.transit, m.egressTime, m.inferTime, m.inferProfiled, m.inferCPU, m.batchSize, m.answers, m.swaps,
		m.swapTime, m.decisionTime, m.decidedAhead, m.keptBatches, m.engineWait, m.invalidDecisions, m.batchFailures, m.handlerPanics, m.storeErrors, m.publishFails, m.resident, m.dropped, m.ignored,
		m.ingressWaits, m.ingressBytes, m.crashSuspects, m.owed, m.owedWaiting, m.owedRemembered, m.publishWaits, m.strandedReconnects,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_build_info",
			Help:        "Always 1; the labels name the gateway's version and the Go version it was built with.",
			ConstLabels: prometheus.Labels{"version": Version, "go_version": runtime.Version()}},
			func() float64 { return 1 })} {
		f(c)
	}
	return m
}

// countAnswer counts an answer given by a model: whether it met its deadline,
// and its est_accuracy.
func (m *metrics) countAnswer(app string, met bool, est float64) { m.answers.add(app, met, est) }

// answerCounts counts the answers given by models per application: how many met
// their deadline, how many did not, and the sum of their est_accuracy, under one
// lock, so that whoever reads them (the stats message, a Prometheus scrape) gets
// all three as they were at one moment: mean_est_accuracy (sum / answers) never
// divides a sum that includes an answer by a count that does not, which with few
// answers could exceed 1. It is the collector of sneakgate_deadline_total{app,met}
// and sneakgate_estimated_accuracy_total{app}.
type answerCounts struct {
	deadline, est *prometheus.Desc
	mu            sync.Mutex
	apps          map[string]*answerCount
}

// answerCount is one application's answers given by models.
type answerCount struct {
	met, missed float64 // answers that met their deadline, and the others
	estSum      float64 // the sum of their est_accuracy
}

func newAnswerCounts() *answerCounts {
	return &answerCounts{apps: map[string]*answerCount{},
		deadline: prometheus.NewDesc("sneakgate_deadline_total",
			"Answers given by a model, by whether they met the deadline.", []string{"app", "met"}, nil),
		est: prometheus.NewDesc("sneakgate_estimated_accuracy_total",
			"Sum of the data-aware estimated accuracy of answers given by a model; divide by sneakgate_deadline_total for the mean.", []string{"app"}, nil)}
}

// init creates app's series at zero.
func (c *answerCounts) init(app string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apps[app] == nil {
		c.apps[app] = &answerCount{}
	}
}

// add counts one answer.
func (c *answerCounts) add(app string, met bool, est float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.apps[app]
	if a == nil {
		a = &answerCount{}
		c.apps[app] = a
	}
	if met {
		a.met++
	} else {
		a.missed++
	}
	a.estSum += est
}

// snapshot returns every application's counts as they are now.
func (c *answerCounts) snapshot() map[string]answerCount {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]answerCount, len(c.apps))
	for app, a := range c.apps {
		out[app] = *a
	}
	return out
}

func (c *answerCounts) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.deadline
	ch <- c.est
}

// Collect sends one snapshot's counts.
func (c *answerCounts) Collect(ch chan<- prometheus.Metric) {
	for app, a := range c.snapshot() {
		ch <- prometheus.MustNewConstMetric(c.deadline, prometheus.CounterValue, a.met, app, "true")
		ch <- prometheus.MustNewConstMetric(c.deadline, prometheus.CounterValue, a.missed, app, "false")
		ch <- prometheus.MustNewConstMetric(c.est, prometheus.CounterValue, a.estSum, app)
	}
}

// initLabels creates every series whose labels are known at start, at zero, so
// that rate() and absent() see them before their first event: the rejection
// reasons, the reply statuses, the served applications, and the fixed label
// sets. (An application added by a reload gets its series at its first event.)
func (m *metrics) initLabels(apps []string) {
	statuses := protocol.Statuses()
	for _, r := range protocol.Reasons() {
		m.rejected.WithLabelValues(string(r))
	}
	for _, st := range statuses {
		m.dropped.WithLabelValues(string(st))
	}
	for _, app := range apps {
		m.received.WithLabelValues(app)
		m.refusedDeg.WithLabelValues(app)
		m.deviceRefused.WithLabelValues(app)
		m.admissionShed.WithLabelValues(app)
		for _, r := range []string{unrecordedFull, unrecordedNoSpace, unrecordedError} {
			m.unrecorded.WithLabelValues(app, r)
		}
		m.admissionEst.WithLabelValues(app)
		m.requeued.WithLabelValues(app)
		m.answers.init(app)
		for _, st := range statuses {
			m.replies.WithLabelValues(app, string(st))
		}
	}
	for _, s := range []string{"pending", "done", "unjournaled"} {
		m.duplicates.WithLabelValues(s)
	}
	for _, k := range []string{"load", "unload"} {
		m.swaps.WithLabelValues(k)
		m.swapTime.WithLabelValues(k)
	}
	for _, op := range []string{"put", "lookup", "gc", "outbox", "outbox_read", "complete"} {
		m.storeErrors.WithLabelValues(op)
	}
	for _, why := range []string{"retained"} {
		m.ignored.WithLabelValues(why)
	}
	for _, r := range []string{"ok", "refused"} {
		m.reloads.WithLabelValues(r)
	}
}

// registerMonitor exports an application's estimate monitor: how often the
// estimate's top class agrees with the most accurate variant's answer, against
// how often the estimator predicts it would (a calibrated estimator keeps the two
// close; a growing gap means the live mix has drifted from what it was trained on).
func (m *metrics) registerMonitor(app string, g *sneakpeek.Guard) []prometheus.Collector {
	if m.reg == nil {
		return nil
	}
	labels := prometheus.Labels{"app": app}
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_estimate_agreement_ratio",
			Help: "Share of recent requests served by the most accurate variant whose SneakPeek estimate had the same top class.", ConstLabels: labels},
			func() float64 { return g.Stats().Agreement }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_estimate_predicted_agreement_ratio",
			Help: "The agreement the SneakPeek estimates predicted for the same requests.", ConstLabels: labels},
			func() float64 { return g.Stats().Predicted }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_estimate_observations",
			Help: "Requests in the estimate monitor's window.", ConstLabels: labels},
			func() float64 { return float64(g.Stats().Observations) }),
	}
	m.reg.MustRegister(cs...)
	return cs
}
