package gateway

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
	"github.com/sneakgate/sneakgate/store"
)

// runner is what the scheduling loop needs of the engine. The engine adapter
// implements it; unit tests use a fake.
type runner interface {
	Load(id scheduler.VariantID) (time.Duration, error)
	Unload(id scheduler.VariantID) (time.Duration, error)
	// Run is one batched forward pass; it returns one class distribution per input.
	Run(id scheduler.VariantID, inputs [][]float32) ([][]float64, error)
	Resident() []scheduler.VariantID
}

// job is one admitted request on its way through the gateway.
type job struct {
	App, Device, ID string
	ReplyTo         string
	Received        time.Time
	Deadline        time.Time
	Input           []float32
	// Estimate is the SneakPeek class distribution (nil when the app has none).
	Estimate []float64
	// Correct is, per variant, the probability that it answers this request
	// correctly (the app's difficulty model; nil without one).
	Correct []float64
	// Answer is Estimate corrected for the live label mix (apps[].label_shift;
	// nil without the correction): a degraded answer comes from it
	// (scheduler.Reweigh).
	Answer []float64
	// Mix is the live class mix Answer was corrected for (nil without the
	// correction; scheduler.Request.Mix).
	Mix *sneakpeek.Mix

	// suspect is set on a request recovered from the journal that was in a
	// forward pass when the process died: it runs in a pass of its own
	// (crashguard.go).
	suspect bool

	// first is the answer of the cascade's first pass while the request waits
	// for a second one (the loop replies with it on a FirstAnswer verdict).
	first *result
	// rt is the version of the application the job is served by (nil in unit
	// tests of the loop: the loop then uses its own apps by name).
	rt  *appRuntime
	req *scheduler.Request
	// pre is the request admission prepared for its price gate
	// (admission.price_shed), taken over by the first prepare instead of
	// preparing it again.
	pre *scheduler.Request
}

// sched is the scheduler's view of the job's application version.
func (j *job) sched(apps map[string]*scheduler.App) *scheduler.App {
	if j.rt != nil {
		return j.rt.sched
	}
	return apps[j.App]
}

// prepare builds the job's scheduler request (seq is its arrival order), planned
// with reserve taken off its deadline (scheduler.PlanDeadline).
func (j *job) prepare(apps map[string]*scheduler.App, seq uint64, reserve time.Duration) {
	if r := j.pre; r != nil {
		j.pre = nil
		if r.App == j.sched(apps) {
			r.Seq, r.Ref = seq, j
			j.req = r
			return
		}
	}
	j.req = scheduler.Prepare(j.sched(apps), seq, j.Received, scheduler.PlanDeadline(j.Received, j.Deadline, reserve), j.Estimate, j)
	if j.Correct != nil {
		scheduler.Sharpen(j.req, j.Correct)
	}
	scheduler.Reweigh(j.req, j.Answer, j.Mix)
}

// appSwap replaces the loop's applications (a reload, Gateway.Reload). The loop
// applies it between batches: apply runs first (the engine adapter switches to
// the new versions' variants), then every queued job of a changed application is
// handed to reprepare (false: answered rejected, unknown_app) and prepared again
// for its new version, and the old version is retired; an application missing
// from apps keeps serving its queued jobs and is retired once they are all
// answered. done is closed when the swap has been applied.
type appSwap struct {
	apps      map[string]*scheduler.App
	apply     func()
	reprepare func(*job) bool
	retire    func(name string)
	done      chan struct{}
}

// result is how a job was answered, for the reply.
type result struct {
	Status protocol.Status
	Reason string
	// Probs is the answering class distribution (model or estimate).
	Probs []float64
	// Variant and Batch say what ran; empty for degraded/expired/error.
	Variant string
	Batch   int
	// EstAccuracy is the data-aware expected accuracy of the answer.
	EstAccuracy float64
	// Start is when the batch started, Infer the forward pass's duration, Done when
	// the answer was ready.
	Start, Done time.Time
	Infer       time.Duration
	Err         error
}

// degraded is the answer from a request's estimate (a policy's Degraded verdict,
// or admission.degrade_refused): its top class, status degraded, ready at now.
func degraded(est []float64, reason string, now time.Time) result {
	return result{Status: protocol.StatusDegraded, Reason: reason, Probs: est,
		EstAccuracy: est[scheduler.Argmax(est)], Start: now, Done: now}
}

// loop is the scheduling actor: it owns the queue, asks the policy what to do
// whenever the engine is idle and something changed, and hands batches to the
// engine worker. Nothing else touches the queue.
type loop struct {
	policy scheduler.Policy
	// gate is the latest admission gate a decision set (scheduler.PriceGate,
	// admission.price_shed); ingress workers read it.
	gate atomic.Pointer[scheduler.PriceGate]
	// answers is the latest decision's test of answers from the estimate
	// (scheduler.EstimateRule, Decision.Answers; nil for a policy without
	// one); ingress workers answer the arrivals it passes at admission.
	answers atomic.Pointer[scheduler.EstimateRule]
	// fallbackOpts are the options of the edf policy that decides instead of
	// policy when policy's decision is invalid (fallback).
	fallbackOpts scheduler.Options
	apps         map[string]*scheduler.App
	run          runner
	// timeCPU reads the worker thread's CPU clock around each forward pass
	// (timedRun, sneakgate_infer_cpu_seconds_total): metrics.pprof.
	timeCPU bool
	// guard records the requests of each forward pass in the in-flight file
	// (crashguard.go); nil records nothing (suspects still run alone).
	guard     *crashGuard
	guardKeys []uint64 // the worker's buffer for guard.running
	now       func() time.Time
	answer    func(*job, result)
	log       zerolog.Logger
	// invalidLog logs invalid decisions, sampled as rejections are
	// (rejectSampler); sneakgate_invalid_decisions_total counts them all.
	invalidLog zerolog.Logger
	// invalidOut logs invalid model outputs, sampled alike: an input a model
	// answers NaN for, or a broken model, makes one for every request.
	invalidOut zerolog.Logger
	failLog    zerolog.Logger // failed batches, sampled alike (a broken model fails them all)
	m          *metrics
	admit      chan *job
	queued     atomic.Int64         // reserved or admitted, and not yet answered (admission reads it)
	drain      scheduler.DrainMeter // owned by the loop goroutine
	rate       atomic.Uint64        // DrainRates.Now (float64 bits)
	fastRate   atomic.Uint64        // DrainRates.Fastest (float64 bits)
	// egressDelay, when set, is the recent time from an answer to its
	// hand-over to the broker (egress.Delay), which requests are planned to
	// leave free before their deadlines (scheduler.PlanDeadline).
	egressDelay func() time.Duration
	// cheapest caches, per application, the per-request engine time of its
	// cheapest variant at its best batch size; cleared after every batch (the
	// latency correction changes the tables).
	cheapest map[*scheduler.App]time.Duration
	seq      uint64
	// exec owns the queue (in arrival order) and the residency (the engine's
	// resident variants with their last use), and applies the policy's
	// decisions after checking them (scheduler.Executor).
	exec *scheduler.Executor
	// swaps carries reloads (one at a time); stopped is closed when Run returns.
	swaps   chan *appSwap
	stopped chan struct{}
	// retiring holds removed applications still serving queued jobs, with the
	// function that retires each once the last is answered.
	retiring map[string]func(string)
	// latency corrects the variants' latency tables from observed batches.
	latency *latencyModel
	// refused counts requests refused for overload before they reached the
	// queue (ingress adds to it); offered measures the offered rate (admitted
	// plus refused) for the policy (Snapshot.Offered).
	refused atomic.Int64
	offered offeredMeter
	// devices counts each device's queued requests (ReserveFor).
	devices deviceCounts
	// heartbeat is when Run last went round while no batch was running, or saw
	// a batch end (a reading of now): the systemd watchdog pings only while it
	// is fresh, so a batch that never ends stops the pings.
	heartbeat stamp
	// pipeline decides the next batch while the engine runs the current one
	// (scheduler.pipeline; see Run). decideCost is the decisions' smoothed wall
	// time, from which Run sets how long before the running batch's planned end
	// it decides the next; planned is the latest time a decision was made for
	// (Snapshot.Now never goes back).
	pipeline   bool
	decideCost time.Duration
	planned    time.Time
	// lastDecision is how long the latest decision took (Run's loop time).
	lastDecision time.Duration
}

// heartbeatEvery is how often an idle loop goes round to refresh its heartbeat.
const heartbeatEvery = time.Second

// offeredMeter is the offered request rate over offeredWindow: the jobs the loop
// admitted plus those ingress refused for overload.
type offeredMeter struct {
	// admitted counts the jobs the loop took; counted is admitted plus refused
	// as of the last rate call.
	admitted, counted int64
	w                 scheduler.RateWindow
}

const offeredWindow = time.Second

// rate accounts refused (the running count of refusals) and returns the offered
// rate over the window (0 until it spans time).
func (m *offeredMeter) rate(now time.Time, refused int64) float64 {
	total := m.admitted + refused
	r := m.w.Add(now, float64(total-m.counted))
	m.counted = total
	return r
}

type batchDone struct {
	b     *scheduler.Batch
	probs [][]float64
	start time.Time
	infer time.Duration
	// cpu is the CPU time the worker's thread spent in the forward pass (0
	// where threadCPU cannot read it).
	cpu     time.Duration
	done    time.Time
	loads   []time.Duration
	unloads []time.Duration
	// passes are the forward passes of a batch split for its crash suspects
	// (runGuarded), in the order they ran, and passOf the pass of each
	// request; both nil for a batch run as one pass (start, infer).
	passes []passTime
	passOf []int
	err    error
}

// passTime is one forward pass of a split batch: its size, when it started
// and how long it took.
type passTime struct {
	n     int
	start time.Time
	took  time.Duration
}

func newLoop(p scheduler.Policy, apps map[string]*scheduler.App, r runner, budget scheduler.Engine,
	capacity int, now func() time.Time, answer func(*job, result), log zerolog.Logger, m *metrics) *loop {
	l := &loop{
		policy: p, apps: apps, run: r, now: now, answer: answer, log: log, m: m,
		invalidLog: log.Sample(rejectSampler()),
		invalidOut: log.Sample(rejectSampler()),
		failLog:    log.Sample(rejectSampler()),
		admit:      make(chan *job, capacity),
		swaps:      make(chan *appSwap, 1), stopped: make(chan struct{}),
		retiring: map[string]func(string){}, latency: newLatencyModel(),
		cheapest: map[*scheduler.App]time.Duration{},
	}
	l.offered.w.Window = offeredWindow
	budget.Resident = map[scheduler.VariantID]time.Time{}
	for _, id := range r.Resident() {
		budget.Resident[id] = now()
	}
	l.exec = scheduler.NewExecutor(budget, l.variant)
	return l
}

// variant finds a variant of the loop's applications (nil if unknown).
func (l *loop) variant(id scheduler.VariantID) *scheduler.Variant {
	if a := l.apps[id.App]; a != nil {
		for _, v := range a.Variants {
			if v.ID.Variant == id.Variant {
				return v
			}
		}
	}
	return nil
}

// Reserve takes one of limit places in the queue for a request about to be
// journaled, and reports whether it got one. Every successful Reserve is followed
// by exactly one Submit or Release.
func (l *loop) Reserve(limit int) bool {
	for {
		q := l.queued.Load()
		if q >= int64(limit) {
			return false
		}
		if l.queued.CompareAndSwap(q, q+1) {
			return true
		}
	}
}

// Release gives back a place taken by Reserve that will not be used.
func (l *loop) Release() { l.queued.Add(-1) }

// ReserveFor is Reserve for a request of device, which also must have fewer than
// perDevice requests queued (0: no such limit). deviceFull reports that the
// device's limit refused it. Every successful ReserveFor is followed by exactly
// one Submit or ReleaseFor.
func (l *loop) ReserveFor(device string, limit, perDevice int) (ok, deviceFull bool) {
	if !l.Reserve(limit) {
		return false, false
	}
	if !l.devices.take(device, perDevice) {
		l.Release()
		return false, true
	}
	return true, false
}

// ReleaseFor gives back a place taken by ReserveFor that will not be used.
func (l *loop) ReleaseFor(device string) {
	l.devices.done(device)
	l.Release()
}

// DeviceQueued is how many requests device has queued (or reserved).
func (l *loop) DeviceQueued(device string) int { return l.devices.queued(device) }

// Submit hands a job to the loop in the place Reserve took for it. It never
// blocks: the admit channel has room for every place. It returns false if the
// channel is full anyway (the caller answers overload; the place is given back).
func (l *loop) Submit(j *job) bool {
	select {
	case l.admit <- j:
		return true
	default:
		l.devices.done(j.Device)
		l.queued.Add(-1)
		return false
	}
}

// SubmitRecovered hands a job read back from the journal to the loop, outside
// the admission limit (New sizes the channel for them).
func (l *loop) SubmitRecovered(j *job) bool {
	l.queued.Add(1)
	l.devices.add(j.Device)
	return l.Submit(j)
}

// reserve is the time requests prepared now are planned to leave free before
// their deadlines: the egress delay (0 without one).
func (l *loop) reserve() time.Duration {
	if l.egressDelay == nil {
		return 0
	}
	return l.egressDelay()
}

// Queued is the number of admitted (or reserved) jobs not yet answered.
func (l *loop) Queued() int { return int(l.queued.Load()) }

// DrainRate is how many queued requests the loop answers per second of busy time,
// measured over the last few seconds (0 until it has been busy).
func (l *loop) DrainRate() float64 { return math.Float64frombits(l.rate.Load()) }

// FastestDrainRate is how many queued requests per second of busy time the loop
// would answer if every one ran on its application's cheapest variant, with the
// loop's own measured time per request (0 until it has been busy): the most any
// policy could drain, which admission compares deadlines with.
func (l *loop) FastestDrainRate() float64 { return math.Float64frombits(l.fastRate.Load()) }

// Run schedules until ctx ends, then waits for the batch in flight, answers it and
// returns; requests still queued (or decided but not yet run) stay in the
// journal for the next start.
//
// The loop asks the policy whenever the engine is idle and something changed.
// With pipeline on it also decides the next batch while the engine runs the
// current one: from aheadLead before the running batch's planned end, for that
// planned end (Snapshot.Now), so that the engine starts the next batch as soon
// as it is free instead of waiting for the decision. A request that arrives
// after that decision waits for the batch after. The decided batch waits in
// next: its requests have left the queue; a reload, a failed batch or a
// retirement puts them back (unplan).
func (l *loop) Run(ctx context.Context) {
	defer close(l.stopped)
	work := make(chan *scheduler.Batch, 1)
	done := make(chan batchDone, 1)
	go l.worker(work, done)
	defer close(work)

	busy := false
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	// ahead fires when the next batch may be decided (pipeline); aheadDue says
	// it has; freeAt is when the running batch is planned to end; waitFrom is
	// when the engine last went idle with requests waiting (zero otherwise).
	ahead := time.NewTimer(time.Hour)
	ahead.Stop()
	defer ahead.Stop()
	aheadDue := false
	var freeAt, waitFrom time.Time
	// While the engine waits with requests queued (waitFrom set), loopWork sums the
	// loop's own time (from woke, when a wait of the select ended, to the next
	// wait or dispatch), loopDecisions the decisions' part of it and handled the
	// requests it answered; the batch that ends the wait adds its own and gives
	// the latency model one sample of the loop's time per batch and per request
	// (latencyModel.loopTime).
	woke := l.now()
	var loopWork, loopDecisions time.Duration
	handled := 0
	var next *scheduler.Batch
	dispatch := func(b *scheduler.Batch) {
		now := l.now()
		if !waitFrom.IsZero() {
			l.m.engineWait.Add(now.Sub(waitFrom).Seconds())
			waitFrom = time.Time{}
			loopWork += now.Sub(woke)
			perRequest, perBatch := l.latency.loopTime(l.apps, loopWork, loopDecisions, handled+len(b.Requests))
			l.m.loopTime.Set(perRequest.Seconds())
			l.m.loopBatchTime.Set(perBatch.Seconds())
		}
		loopWork, loopDecisions, handled = 0, 0, 0
		busy = true
		work <- b
		freeAt = now.Add(l.plannedTime(b))
		if !l.pipeline {
			return
		}
		if wait := freeAt.Add(-l.aheadLead()).Sub(now); wait > 0 {
			aheadDue = false
			ahead.Reset(wait)
		} else {
			aheadDue = true
			ahead.Stop()
		}
	}
	dirty := true
	var swap *appSwap
	beat := time.NewTicker(heartbeatEvery)
	defer beat.Stop()
	for {
		if !busy {
			l.heartbeat.Store(l.now())
		}
		r := l.drain.Observe(l.now(), busy || l.exec.Len() > 0 || next != nil)
		l.rate.Store(math.Float64bits(r.Now))
		l.fastRate.Store(math.Float64bits(r.Fastest))
		// A swap is sent before any request of a new version is submitted, so it
		// is seen here before such a request can be decided on.
		if swap == nil {
			select {
			case swap = <-l.swaps:
			default:
			}
		}
		if !busy && swap != nil {
			if next != nil {
				l.unplan(next)
				next = nil
			}
			l.applySwap(swap)
			swap, dirty = nil, true
			woke = l.now() // a reload's one-off work is not the loop's time per request
		}
		if !busy && len(l.retiring) > 0 {
			if l.retireDrained(next) && next != nil {
				// Decided on a residency that held the retired versions' variants,
				// which have left the engine (it may evict one of them).
				l.unplan(next)
				next = nil
			}
			woke = l.now() // nor is a retirement's
		}
		if !busy && next != nil {
			// Decided while the batch before ran: its swap is not in the
			// engine's residency yet (finish refreshed it), so the executor
			// takes it again for the decisions made while it runs.
			l.exec.Swapped(next, l.now())
			dispatch(next)
			next = nil
		}
		if !busy && swap == nil && dirty && l.exec.Len() > 0 {
			dirty = false
			b, wake, answered := l.decide(l.now())
			if !waitFrom.IsZero() {
				handled += answered
				loopDecisions += l.lastDecision
			}
			if b != nil {
				dispatch(b)
			} else if answered > 0 && l.exec.Len() > 0 {
				timer.Reset(0) // verdicts changed the queue: decide again at once
			} else if !wake.IsZero() {
				// A policy that asks to be woken now without having done anything
				// would spin; give the queue a millisecond to change.
				timer.Reset(max(wake.Sub(l.now()), minIdleWake))
			}
		} else if busy && l.pipeline && aheadDue && next == nil && swap == nil && dirty && l.exec.Len() > 0 {
			// The policy's wake-up time is not kept: the batch's end makes the
			// loop decide again.
			dirty = false
			// For the running batch's planned end, or now if it has overrun it.
			at := freeAt
			if now := l.now(); now.After(at) {
				at = now
			}
			if b, _, _ := l.decide(at); b != nil {
				next = b
				l.m.decidedAhead.Inc()
			}
		}
		if !busy && next == nil && l.exec.Len() == 0 && !waitFrom.IsZero() {
			// The requests waiting at the last batch's end were answered
			// without a batch: the engine waits for nothing from here.
			l.m.engineWait.Add(l.now().Sub(waitFrom).Seconds())
			waitFrom = time.Time{}
			loopWork, loopDecisions, handled = 0, 0, 0
		}
		if !waitFrom.IsZero() {
			loopWork += l.now().Sub(woke)
		}
		select {
		case j := <-l.admit:
			woke = l.now()
			l.enqueue(j)
			l.enqueueWaiting()
			dirty = true
		case d := <-done:
			woke = l.now()
			busy = false
			l.heartbeat.Store(l.now())
			if next != nil || l.exec.Len() > 0 {
				waitFrom = d.done
			}
			if b := next; b != nil && d.err == nil && swap == nil && len(l.retiring) == 0 && len(b.Evict)+len(b.Load) == 0 {
				// Decided while d ran, and needs no swap: the engine starts it
				// before the loop answers d's requests. (A swap, or a reload to
				// apply or applications to retire, waits for an idle engine.)
				next = nil
				dispatch(b)
				l.finish(d)
			} else {
				l.finish(d)
				if d.err != nil && next != nil {
					// Decided on a residency the failed batch did not leave.
					l.unplan(next)
					next = nil
				}
			}
			dirty = true
		case <-timer.C:
			woke = l.now()
			dirty = true
		case <-ahead.C:
			woke = l.now()
			aheadDue = true
		case <-beat.C:
			woke = l.now()
		case s := <-l.swaps:
			woke = l.now()
			swap = s
		case <-ctx.Done():
			if busy {
				l.finish(<-done)
			}
			return
		}
	}
}

// plannedTime is how long b is planned to take on the engine, swaps included:
// its policy's plan, or (a plan without one) the variants' profiles.
func (l *loop) plannedTime(b *scheduler.Batch) time.Duration {
	if d := b.Finish.Sub(b.Start); d > 0 && !b.Start.IsZero() {
		return d
	}
	t := b.Variant.LatencyAt(len(b.Requests))
	for _, id := range b.Evict {
		if v := l.variant(id); v != nil {
			t += v.Unload
		}
	}
	for _, id := range b.Load {
		if v := l.variant(id); v != nil {
			t += v.Load
		}
	}
	return t
}

// aheadLead is how long before the running batch's planned end the next one
// is decided (scheduler.AheadLead of the decisions' smoothed wall time).
func (l *loop) aheadLead() time.Duration { return scheduler.AheadLead(l.decideCost) }

// unplan puts the requests of b, decided but not run, back in the queue, and
// the residency back to the engine's own.
func (l *loop) unplan(b *scheduler.Batch) {
	for _, r := range b.Requests {
		if err := l.exec.Add(r); err != nil {
			// Not possible (they left the queue when batched); answered rather than lost.
			j := r.Ref.(*job)
			l.log.Error().Err(err).Str("app", j.App).Str("id", j.ID).Msg("request not requeued")
			l.reply(j, result{Status: protocol.StatusError, Reason: string(protocol.ReasonInternal), Err: err})
		}
	}
	l.refreshResident(l.now())
	l.m.queueLen.Set(float64(l.exec.Len()))
}

func (l *loop) enqueue(j *job) {
	l.seq++
	l.offered.admitted++
	j.prepare(l.apps, l.seq, l.reserve())
	j.req.Queued = l.now()
	if err := l.exec.Add(j.req); err != nil {
		// Not possible (every job gets a new seq); answered rather than lost.
		l.log.Error().Err(err).Str("app", j.App).Str("id", j.ID).Msg("request not queued")
		l.reply(j, result{Status: protocol.StatusError, Reason: string(protocol.ReasonInternal), Err: err})
		return
	}
	l.m.queueLen.Set(float64(l.exec.Len()))
}

// enqueueWaiting enqueues every job waiting in the admission channel.
func (l *loop) enqueueWaiting() {
	for {
		select {
		case j := <-l.admit:
			l.enqueue(j)
		default:
			return
		}
	}
}

// applySwap applies a reload (see appSwap); no batch is in flight.
func (l *loop) applySwap(s *appSwap) {
	defer close(s.done)
	// Requests admitted under the old set are all in the channel by now.
	l.enqueueWaiting()
	s.apply()
	changed := map[string]func(string){}
	for name, a := range s.apps {
		if cur, ok := l.apps[name]; ok && cur != a {
			l.latency.forget(cur)
			changed[name] = s.retire
			if r, ok := l.retiring[name]; ok {
				// Re-added while draining: the new version takes its jobs, and the
				// old one retires as the reload that removed it said.
				changed[name] = r
				delete(l.retiring, name)
			}
		}
		l.apps[name] = a
	}
	for name := range l.apps {
		if _, ok := s.apps[name]; !ok {
			if _, already := l.retiring[name]; !already {
				l.retiring[name] = s.retire
			}
		}
	}
	moved, refused := 0, 0
	l.exec.Replace(func(r *scheduler.Request) *scheduler.Request {
		j := r.Ref.(*job)
		a := l.apps[j.App]
		if r.App == a {
			return r
		}
		if !s.reprepare(j) {
			refused++
			l.reply(j, result{Status: protocol.StatusRejected, Reason: string(protocol.ReasonUnknownApp)})
			return nil
		}
		moved++
		j.prepare(l.apps, r.Seq, l.reserve()) // the same place in the queue
		j.req.Queued = r.Queued
		j.req.First = r.First // a first pass's answer stays (j.first)
		return j.req
	})
	for name, retire := range changed {
		retire(name)
	}
	l.refreshResident(l.now())
	l.m.queueLen.Set(float64(l.exec.Len()))
	l.m.moved.Add(float64(moved))
	l.log.Info().Int("moved", moved).Int("refused", refused).Int("retiring", len(l.retiring)).Msg("applications swapped")
}

// retireDrained retires the removed applications with no job left queued or
// in next (a batch decided, not yet run; nil if none), and reports whether it
// retired any.
func (l *loop) retireDrained(next *scheduler.Batch) (retired bool) {
	left := map[string]bool{}
	for _, r := range l.exec.Queue() {
		left[r.Ref.(*job).App] = true
	}
	if next != nil {
		for _, r := range next.Requests {
			left[r.Ref.(*job).App] = true
		}
	}
	for name, retire := range l.retiring {
		if !left[name] {
			delete(l.retiring, name)
			l.latency.forget(l.apps[name])
			delete(l.apps, name)
			retire(name)
			l.refreshResident(l.now())
			retired = true
		}
	}
	return retired
}

// refreshResident takes the resident set from the engine (the truth, also
// after a failed load), keeping the last-use times it knows.
func (l *loop) refreshResident(now time.Time) {
	l.exec.SetResident(l.run.Resident(), now)
	l.m.resident.Set(float64(len(l.exec.Resident())))
}

// replyFirst answers j, back from a first pass (the cascade's, or the peek's),
// with that pass's answer: ok, or late when it is past its deadline at now.
// The policy's FirstAnswer verdict does, and so does a second pass that fails.
func (l *loop) replyFirst(j *job, now time.Time) {
	r := *j.first
	r.Status = protocol.StatusOK
	if now.After(j.Deadline) {
		r.Status = protocol.StatusLate
	}
	l.reply(j, r)
}

// minIdleWake is the shortest wait before deciding again after a decision that
// neither ran nor answered anything.
const minIdleWake = time.Millisecond

// decide asks the policy for a batch that starts at (now, or the running
// batch's planned end), applies its decision (l.exec: the requests it answers
// or batches leave the queue, the batch's swap is noted), answers its verdicts
// now and returns the batch to run, the policy's wake-up time and how many
// requests the verdicts answered. An invalid decision is not applied: it is
// logged and counted, and the fallback decides instead.
func (l *loop) decide(at time.Time) (*scheduler.Batch, time.Time, int) {
	if at.Before(l.planned) {
		at = l.planned // an engine that ended early: no going back
	}
	l.planned = at
	s := &scheduler.Snapshot{Now: at, Queue: l.exec.Queue(), Apps: l.apps, Engine: l.exec.Engine(),
		Offered: l.offered.rate(l.now(), l.refused.Load())}
	t0 := time.Now()
	d, err := ask(l.policy, s)
	took := time.Since(t0)
	l.lastDecision = took
	l.m.decisionTime.Observe(took.Seconds())
	l.decideCost += (took - l.decideCost) / 16
	if err == nil {
		err = l.exec.Apply(d, at)
	}
	if err == nil && d.Gate != nil {
		l.gate.Store(d.Gate)
	}
	if err == nil {
		l.answers.Store(d.Answers)
	}
	if err != nil {
		l.m.invalidDecisions.Inc()
		l.invalidLog.Error().Err(err).Str("policy", l.policy.Name()).Int("queued", l.exec.Len()).
			Msg("invalid decision: not applied, every request stays queued; edf decides instead")
		if r, ok := l.policy.(scheduler.Resyncer); ok {
			r.Resync() // what it thought answered is still queued
		}
		d = l.fallback(s)
	}
	now := l.now()
	for _, v := range d.Verdicts {
		j := v.Request.Ref.(*job)
		l.m.verdicts.WithLabelValues(j.App, v.Outcome.String(), v.Reason).Inc()
		switch v.Outcome {
		case scheduler.FirstAnswer:
			l.replyFirst(j, now)
		case scheduler.Degraded:
			l.reply(j, degraded(orRaw(j.Answer, j.Estimate), v.Reason, now))
		default:
			l.reply(j, result{Status: protocol.StatusExpired, Reason: v.Reason, Start: now, Done: now})
		}
	}
	if d.Batch != nil && d.Batch.Kept {
		l.m.keptBatches.Inc()
	}
	l.m.queueLen.Set(float64(l.exec.Len()))
	return d.Batch, d.WakeAt, len(d.Verdicts)
}

// ask returns p's decision on s, or an error if p panics.
func ask(p scheduler.Policy, s *scheduler.Snapshot) (d scheduler.Decision, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%w: the policy panicked: %v", scheduler.ErrInvalidDecision, v)
		}
	}()
	return p.Decide(s), nil
}

// fallbackRetry is how long the loop waits before deciding again when not even
// the fallback could decide anything.
const fallbackRetry = 100 * time.Millisecond

// fallback decides, and applies, instead of a policy whose decision on s was
// invalid, so that a buggy policy cannot stall the queue: a new edf policy's
// decision (edf keeps no state worth keeping), or if that is invalid too, the
// oldest request alone on its application's default variant, or if that cannot
// run, nothing until fallbackRetry from now.
func (l *loop) fallback(s *scheduler.Snapshot) scheduler.Decision {
	p, err := scheduler.New("edf", l.fallbackOpts)
	if err == nil {
		var d scheduler.Decision
		if d, err = ask(p, s); err == nil {
			if err = l.exec.Apply(d, s.Now); err == nil {
				return d
			}
		}
	}
	l.invalidLog.Error().Err(err).Msg("edf's decision is invalid too: the oldest request runs alone on its default variant")
	r := s.Queue[0]
	d := scheduler.Decision{WakeAt: s.Now.Add(fallbackRetry)}
	if a := r.App; a != nil && a.DefaultVariant >= 0 && a.DefaultVariant < len(a.Variants) {
		v := a.Variants[a.DefaultVariant]
		if sw, ok := scheduler.PlanSwap(s, v); ok {
			d.Batch = &scheduler.Batch{Variant: v, Requests: []*scheduler.Request{r}, Evict: sw.Evict, Load: sw.Load,
				Start: s.Now, Finish: s.Now.Add(sw.Cost + v.LatencyAt(1))}
		}
	}
	if err := l.exec.Apply(d, s.Now); err != nil {
		l.invalidLog.Error().Err(err).Dur("retry", fallbackRetry).Msg("the oldest request cannot run either: nothing runs until the retry")
		return scheduler.Decision{WakeAt: s.Now.Add(fallbackRetry)}
	}
	return d
}

// worker runs batches on the engine: evictions, loads, then the forward pass.
func (l *loop) worker(work <-chan *scheduler.Batch, done chan<- batchDone) {
	for b := range work {
		done <- l.execute(b)
	}
}

func (l *loop) execute(b *scheduler.Batch) (d batchDone) {
	d.b = b
	defer func() {
		if p := recover(); p != nil {
			d.err = fmt.Errorf("engine panic: %v", p)
		}
		d.done = l.now()
	}()
	for _, id := range b.Evict {
		t, err := l.run.Unload(id)
		if err != nil {
			d.err = fmt.Errorf("unload %s: %w", id, err)
			return d
		}
		d.unloads = append(d.unloads, t)
	}
	for _, id := range b.Load {
		t, err := l.run.Load(id)
		if err != nil {
			d.err = fmt.Errorf("load %s: %w", id, err)
			return d
		}
		d.loads = append(d.loads, t)
	}
	inputs := make([][]float32, len(b.Requests))
	for i, r := range b.Requests {
		inputs[i] = r.Ref.(*job).Input
	}
	d.start = l.now()
	d.probs, d.cpu, d.passes, d.passOf, d.err = l.runGuarded(b.Variant.ID, b.Requests, inputs)
	d.infer = l.now().Sub(d.start)
	if d.err == nil && len(d.probs) != len(inputs) {
		d.err = fmt.Errorf("engine returned %d results for %d inputs", len(d.probs), len(inputs))
	}
	return d
}

// runGuarded runs the forward pass of a batch with its requests recorded in
// the crash guard's in-flight file for as long as it runs (when there is
// one). A suspect (a request
// that was in a pass when the process died before, crashguard.go) runs in a
// pass of its own first, so that a second crash is blamed on it alone; then the
// rest run together. The batch's time (batchDone.infer) is then that of every
// pass; passes and passOf say what each pass was (finish accounts them one by
// one: the latency correction, the metrics, each reply's batch and times).
func (l *loop) runGuarded(id scheduler.VariantID, reqs []*scheduler.Request, inputs [][]float32) (_ [][]float64, _ time.Duration, passes []passTime, passOf []int, _ error) {
	if len(reqs) == 1 || !slices.ContainsFunc(reqs, func(r *scheduler.Request) bool { return r.Ref.(*job).suspect }) {
		probs, cpu, err := l.guardedPass(id, reqs, inputs)
		return probs, cpu, nil, nil, err
	}
	// The passes: each suspect alone, in order, then the rest together.
	var groups [][]int
	var rest []int
	for i, r := range reqs {
		if r.Ref.(*job).suspect {
			groups = append(groups, []int{i})
		} else {
			rest = append(rest, i)
		}
	}
	if len(rest) > 0 {
		groups = append(groups, rest)
	}
	probs := make([][]float64, len(inputs))
	passOf = make([]int, len(inputs))
	var cpu time.Duration
	for _, g := range groups {
		sub, in := make([]*scheduler.Request, len(g)), make([][]float32, len(g))
		for k, i := range g {
			sub[k], in[k] = reqs[i], inputs[i]
		}
		start := l.now()
		p, c, err := l.guardedPass(id, sub, in)
		cpu += c
		if err == nil && len(p) != len(g) {
			err = fmt.Errorf("engine returned %d results for %d inputs", len(p), len(g))
		}
		if err != nil {
			return nil, cpu, nil, nil, err
		}
		for k, i := range g {
			probs[i], passOf[i] = p[k], len(passes)
		}
		passes = append(passes, passTime{n: len(g), start: start, took: l.now().Sub(start)})
	}
	return probs, cpu, passes, passOf, nil
}

// guardedPass is one forward pass with its requests in the in-flight file
// (when there is one).
func (l *loop) guardedPass(id scheduler.VariantID, reqs []*scheduler.Request, inputs [][]float32) ([][]float64, time.Duration, error) {
	if l.guard == nil {
		return l.pass(id, inputs)
	}
	keys := l.guardKeys[:0]
	for _, r := range reqs {
		j := r.Ref.(*job)
		keys = append(keys, keyHash(store.Key{App: j.App, Device: j.Device, ID: j.ID}))
	}
	l.guardKeys = keys
	l.guard.running(keys)
	defer l.guard.done()
	return l.pass(id, inputs)
}

// pass is one forward pass (timed on the thread's CPU clock with l.timeCPU).
func (l *loop) pass(id scheduler.VariantID, inputs [][]float32) ([][]float64, time.Duration, error) {
	if l.timeCPU {
		return l.timedRun(id, inputs)
	}
	probs, err := l.run.Run(id, inputs)
	return probs, 0, err
}

// timedRun is l.run.Run, and the CPU time the calling thread spent in it: the
// goroutine stays on its thread from one reading of the thread's CPU clock to
// the other (0 where the clock cannot be read). Against the pass's wall time
// (batchDone.infer) it tells the pass's own cost from its waits for a core.
// The two readings are system calls, and with the thread locked they made a
// logreg pass about 25 us slower on the 2-core development box
// (docs/benchmarks.md, "Where a pass's time goes inside the gateway"), so the
// loop times passes only when asked (loop.timeCPU: metrics.pprof).
func (l *loop) timedRun(id scheduler.VariantID, inputs [][]float32) ([][]float64, time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0, ok := threadCPU()
	probs, err := l.run.Run(id, inputs)
	var cpu time.Duration
	if c1, ok1 := threadCPU(); ok && ok1 && c1 > c0 {
		cpu = c1 - c0
	}
	return probs, cpu, err
}

// errBatch is wrapped by the error of every request in a failed batch.
var errBatch = errors.New("batch failed")

func (l *loop) finish(d batchDone) {
	for _, t := range d.unloads {
		l.m.swaps.WithLabelValues("unload").Inc()
		l.m.swapTime.WithLabelValues("unload").Add(t.Seconds())
	}
	for _, t := range d.loads {
		l.m.swaps.WithLabelValues("load").Inc()
		l.m.swapTime.WithLabelValues("load").Add(t.Seconds())
	}
	l.refreshResident(d.done)
	b := d.b
	if d.err != nil {
		l.m.batchFailures.WithLabelValues(b.Variant.ID.App, b.Variant.ID.Variant).Inc()
		l.failLog.Error().Err(d.err).Str("variant", b.Variant.ID.String()).Int("batch", len(b.Requests)).Msg("batch failed")
		for _, r := range b.Requests {
			if j := r.Ref.(*job); j.first != nil {
				// A second pass: its first pass's answer stands.
				l.replyFirst(j, d.done)
				continue
			}
			l.reply(r.Ref.(*job), result{Status: protocol.StatusError, Reason: "internal",
				Err: fmt.Errorf("%w: %v", errBatch, d.err), Start: d.start, Done: d.done})
		}
		return
	}
	l.exec.Used(b.Variant.ID, d.done)
	app, variant := b.Variant.ID.App, b.Variant.ID.Variant
	passes := d.passes
	if passes == nil {
		passes = []passTime{{n: len(b.Requests), start: d.start, took: d.infer}}
	}
	var f float64
	for _, p := range passes {
		// Each pass at its own size: a split batch's passes of one are not
		// one slow pass of the whole batch.
		l.m.inferTime.WithLabelValues(app, variant).Observe(p.took.Seconds())
		var profiled time.Duration
		f, profiled = l.latency.observe(b.Variant, p.n, p.took)
		l.m.inferProfiled.WithLabelValues(app, variant).Add(profiled.Seconds())
		l.m.batchSize.WithLabelValues(app, variant).Observe(float64(p.n))
	}
	l.m.inferCPU.WithLabelValues(app, variant).Add(d.cpu.Seconds())
	l.drain.Engine += d.infer
	clear(l.cheapest)
	l.m.latencyFactor.WithLabelValues(app, variant).Set(f)
	for i, r := range b.Requests {
		j := r.Ref.(*job)
		if !validDistribution(d.probs[i]) {
			l.invalidOut.Error().Str("variant", b.Variant.ID.String()).Msg("model returned no valid class distribution (NaN or Inf)")
			if j.first != nil {
				l.replyFirst(j, d.done) // a second pass: its first pass's answer stands
				continue
			}
			l.reply(j, result{Status: protocol.StatusError, Reason: string(protocol.ReasonInternal),
				Err: fmt.Errorf("%w: %s returned an invalid distribution", errBatch, b.Variant.ID), Start: d.start, Done: d.done})
			continue
		}
		st := protocol.StatusOK
		if d.done.After(j.Deadline) {
			st = protocol.StatusLate
		}
		p := passes[0] // the pass it ran in
		if d.passOf != nil {
			p = passes[d.passOf[i]]
		}
		res := result{Status: st, Probs: d.probs[i], Variant: variant, Batch: p.n,
			EstAccuracy: r.ExpAccuracy[b.Variant.Index], Start: p.start, Infer: p.took, Done: d.done}
		if b.EscalateBelow > 0 && r.First == nil {
			cls := scheduler.Argmax(d.probs[i])
			if conf := d.probs[i][cls]; conf < b.EscalateBelow {
				// The cascade's first pass is not confident: back in the queue
				// for the policy to run a second pass or answer with this one.
				r.First = &scheduler.FirstPass{Variant: b.Variant, Class: cls, Confidence: conf, Done: d.done, Probs: d.probs[i]}
				j.first = &res
				l.m.requeued.WithLabelValues(j.App).Inc()
				l.requeue(r)
				continue
			}
		}
		l.reply(j, res)
	}
}

// requeue puts a request back in the queue at its arrival position (policies
// read the queue in arrival order).
func (l *loop) requeue(r *scheduler.Request) {
	if err := l.exec.Add(r); err != nil {
		// Not possible (it left the queue when batched); answered rather than lost.
		j := r.Ref.(*job)
		l.log.Error().Err(err).Str("app", j.App).Str("id", j.ID).Msg("request not requeued")
		l.reply(j, result{Status: protocol.StatusError, Reason: string(protocol.ReasonInternal), Err: err})
		return
	}
	l.m.queueLen.Set(float64(l.exec.Len()))
}

func (l *loop) reply(j *job, r result) {
	l.devices.done(j.Device)
	l.queued.Add(-1)
	l.drain.Answered++
	if j.req != nil {
		l.drain.Cheapest += l.cheapestOf(j.req.App)
	}
	l.answer(j, r)
}

// cheapestOf is the per-request engine time of a's cheapest variant at its best
// batch size, the loop's own time left out (cached until the next batch).
func (l *loop) cheapestOf(a *scheduler.App) time.Duration {
	if c, ok := l.cheapest[a]; ok {
		return c
	}
	c := l.latency.engineCheapest(a)
	l.cheapest[a] = c
	return c
}

// validDistribution reports whether p has at least one value and only finite,
// non-negative ones (a misbehaving model can return NaN).
func validDistribution(p []float64) bool {
	for _, x := range p {
		if !(x >= 0) || math.IsInf(x, 0) {
			return false
		}
	}
	return len(p) > 0
}
