package eval

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// engineSim is the discrete-event simulation of one engine serving one or more
// applications, shared by Simulate (one application, Poisson arrivals of real
// samples) and SimulateScenario (a scenario's applications, periodic device
// streams): arrivals pass admission and are prepared for the policy, the policy
// decides whenever the engine is idle with work queued, batches run for their
// jittered profiled time plus the swaps they need, and every answer is scored.
// The caller builds the arrivals and says how each one's estimate is made
// (estimate); everything else is here.
type engineSim struct {
	// Policy names the policy in errors; Pol is the policy.
	Policy string
	Pol    scheduler.Policy
	Apps   []simApp
	// Reqs are the arrivals in the order the scheduler sees them (seen), Seq
	// numbered from 1.
	Reqs []simReq
	// Origin is the simulated clock's start (residency is warm at it).
	Origin time.Time
	// Seed fixes the variants' answers (Predict) and the latency jitter.
	Seed uint64
	// GatewayModel is the admission, the budgets, the loop's costs and the
	// jitter (GatewayKnown is the caller's: it builds the tables).
	GatewayModel
	// Now is the wall clock that times decisions.
	Now func() time.Time
	// Charge is the loop's time per request a decision answers or batches for
	// the decision itself (GatewayModel.DecisionCost, the policy's at the
	// point's load: decisionCostAt).
	Charge time.Duration
	// Estimate returns an arrival's estimate and, when the policy sharpens it,
	// each variant's correctness on it (nil: none). It is called once per
	// arrival, in arrival order, before admission.
	Estimate func(q *simReq) (est, correct []float64)
}

// ownAlpha is the weight of one batch's sample of the loop's own time per
// request, as the gateway's latencyAlpha (gateway/latency.go).
const ownAlpha = 0.1

// blindToCharge makes the policies plan with GatewayCost alone whatever the
// loop is charged (tests: what planning with the charged time changes).
var blindToCharge = false

// simApp is one application on the simulated engine.
type simApp struct {
	// App gives the requests' true classes, the variants' answers (Predict) and,
	// for a cascade, their confidences (App.Conf); Exec is the engine's true
	// profile; View the application as the policy sees it.
	App  *App
	Exec *scheduler.App
	View *scheduler.App
	// Deadline is every request's budget.
	Deadline time.Duration
	// Fastest is the per-request time of the fastest drain MaxWait assumes.
	Fastest time.Duration
	// Guard, when set, is the drift guard of a guarded policy (mode GMode): it
	// is fed the reference variant's answers, and while it distrusts the
	// estimates requests are prepared without them (prepareGuarded).
	Guard *sneakpeek.Guard
	GMode guardMode
	// Observe, when set, is told each request's outcome: the variant that
	// answered it (nil for any other outcome) and its answer (the live mix of
	// the label-shift correction, GatewayModel.ShiftEvidence).
	Observe func(q *simReq, v *scheduler.Variant, yhat int)
}

// simReq is one arrival: Sample indexes its application's App (its true class
// App.Labels[Sample]); Flag is a scenario's simulated estimator flag; arr is
// its send, from which its deadline counts, and delay its own time before the
// gateway receives it (Point.Transit), on top of IngressDelay.
type simReq struct {
	app, sample, flag int
	seq               uint64
	arr               time.Time
	delay             time.Duration
	r                 *scheduler.Request
	// answerEst, when set, is the corrected estimate the request's answer
	// without a model is taken from (scheduler.Reweigh; GatewayModel.LabelShift).
	answerEst []float64
	// mix is the live class mix answerEst was corrected for.
	mix *sneakpeek.Mix
	// by is the variant whose answer the request got (nil until a model
	// answers it).
	by *scheduler.Variant
	// deadline is the request's deadline; its scheduler request is planned
	// with EgressDelay taken off it (scheduler.PlanDeadline), and its answer,
	// handed to the broker EgressDelay after the loop gives it, is judged
	// against it.
	deadline time.Time
}

// handover is when an answer the loop gives at at reaches the broker, which
// judges it (EgressDelay later).
func (s *engineSim) handover(at time.Time) time.Time { return at.Add(s.EgressDelay) }

// late reports whether q's model answer, given by the loop at at, reaches the
// broker after q's deadline.
func (s *engineSim) late(q *simReq, at time.Time) bool { return s.handover(at).After(q.deadline) }

// seen is when the scheduler sees q.
func (s *engineSim) seen(q *simReq) time.Time { return q.arr.Add(s.IngressDelay + q.delay) }

// simRun is an engineSim's outcome: one tally per application; All holds
// what belongs to the engine as a whole (Decisions, Swaps, SwapTime, Batches,
// MeanBatch's sum, VariantShare's counts keyed by VariantID.String()).
type simRun struct {
	Tallies    []tally
	All        Metrics
	DecideWall time.Duration
	// Scheduled counts the requests the decisions answered or batched.
	Scheduled int
	LastDone  time.Time
}

// tally accumulates one application's results.
type tally struct {
	m                        Metrics
	util, deg                float64
	correct                  int
	lat                      []time.Duration
	classN, classOK, classNo []int
	classU                   []float64
	// escalated counts a cascade's second passes; thSum and thN sum the
	// thresholds its first passes carried; distrusted counts the requests
	// prepared while the guard distrusted the estimates.
	escalated, thN, distrusted int
	thSum                      float64
}

func newTally(k int) tally {
	return tally{m: Metrics{VariantShare: map[string]float64{}}, classN: make([]int, k),
		classOK: make([]int, k), classNo: make([]int, k), classU: make([]float64, k)}
}

// run simulates until every request is answered. It returns the run so far with
// an error when the policy misbehaves (ErrStuck, an invariant broken) or when
// not every request got exactly one answer.
func (s *engineSim) run() (*simRun, error) {
	out := &simRun{Tallies: make([]tally, len(s.Apps))}
	all := &out.All
	all.VariantShare = map[string]float64{}
	views := make(map[string]*scheduler.App, len(s.Apps))
	appOf := make(map[*scheduler.App]int, len(s.Apps))
	byName := make(map[string]int, len(s.Apps))
	execs := make([]*scheduler.App, len(s.Apps))
	variants := map[scheduler.VariantID]*scheduler.Variant{}
	for i, a := range s.Apps {
		out.Tallies[i] = newTally(a.Exec.K)
		views[a.View.Name] = a.View
		appOf[a.View] = i
		byName[a.Exec.Name] = i
		execs[i] = a.Exec
		for _, v := range a.Exec.Variants {
			variants[v.ID] = v
		}
	}
	jit := rand.New(rand.NewPCG(s.Seed, 2))
	jitter := func(d time.Duration) time.Duration {
		if s.Jitter <= 0 {
			return d
		}
		f := math.Exp(s.Jitter*jit.NormFloat64() - s.Jitter*s.Jitter/2)
		return time.Duration(float64(d) * f)
	}
	reqs := s.Reqs
	byReq := make(map[*scheduler.Request]*simReq, 1024)
	// ex applies the decisions and checks them, as the gateway's loop does; the
	// memory budget counts the engine's true profiles (the views share them).
	ex := scheduler.NewExecutor(scheduler.Engine{Resident: warmResidency(execs, s.MemBudget, s.CountBudget, s.Origin),
		MemBudget: s.MemBudget, CountBudget: s.CountBudget}, func(id scheduler.VariantID) *scheduler.Variant { return variants[id] })
	var (
		busy      bool
		busyUntil time.Time
		inflight  *scheduler.Batch
		wake      time.Time
		next      int
		drain     scheduler.DrainMeter
		drainRate float64
		// gate is the latest decision's price gate (PriceAdmission), answers
		// its test of answers from the estimate (Decision.Answers).
		gate    *scheduler.PriceGate
		answers *scheduler.EstimateRule
		// The pipeline (Pipeline): ahead is the batch decided while inflight
		// runs, ready when the loop has decided it (aheadReady); freeAt is
		// inflight's planned end, aheadAt when the next batch may be decided;
		// lead is the loop's smoothed cost per decision; planned the latest
		// time a decision was made for (it never goes back).
		ahead                       *scheduler.Batch
		aheadReady, freeAt, aheadAt time.Time
		lead                        time.Duration
		planned                     time.Time
	)
	answer := func(q *simReq, yhat int, at time.Time, status string) {
		t := &out.Tallies[q.app]
		a := s.Apps[q.app].Exec
		y := s.Apps[q.app].App.Labels[q.sample]
		no := 0.0
		if y < len(a.NoAnswer) {
			no = a.NoAnswer[y]
		}
		u := no
		t.classN[y]++
		switch status {
		case "ok", "late", "degraded":
			u = a.Utility[y][yhat]
			if status == "late" {
				// Realised: decays to the true class's no-answer value.
				u = scheduler.Discount(u, no, scheduler.Penalty(s.handover(at), q.deadline, q.deadline.Sub(q.r.Arrival)))
			}
			if yhat == y {
				t.correct++
				t.classOK[y]++
			}
		default:
			t.classNo[y]++
		}
		t.classU[y] += u
		t.util += u
		if o := s.Apps[q.app].Observe; o != nil {
			by := q.by
			if status != "ok" && status != "late" {
				by = nil
			}
			o(q, by, yhat)
		}
		switch status {
		case "ok":
			t.m.OK++
		case "late":
			t.m.Late++
		case "degraded":
			t.m.Degraded++
			t.deg += u
		case "expired":
			t.m.Expired++
		case "rejected":
			t.m.Rejected++
		}
		if status != "rejected" {
			t.lat = append(t.lat, at.Sub(q.arr))
		}
		if at.After(out.LastDone) {
			out.LastDone = at
		}
	}
	finish := func(b *scheduler.Batch, at time.Time) error {
		v := b.Variant
		ai := appOf[b.Requests[0].App]
		a, t := &s.Apps[ai], &out.Tallies[ai]
		if b.EscalateBelow > 0 {
			t.thSum += b.EscalateBelow
			t.thN++
		}
		for _, r := range b.Requests {
			q := byReq[r]
			yhat := Predict(a.App, q.sample, v.Index, s.Seed, q.seq)
			if b.EscalateBelow > 0 && r.First == nil {
				if c := float64(a.App.Conf[q.sample][v.Index]); c < b.EscalateBelow {
					// The cascade's second pass: back to the queue with the first result.
					r.First = &scheduler.FirstPass{Variant: v, Class: yhat, Confidence: c, Done: at}
					t.escalated++
					if err := ex.Add(r); err != nil {
						return fmt.Errorf("eval: %s: %w", s.Policy, err)
					}
					continue
				}
			}
			delete(byReq, r)
			status := "ok"
			if s.late(q, at) {
				status = "late"
			}
			q.by = v
			answer(q, yhat, at, status)
			drain.Answered++
			t.m.VariantShare[v.ID.Variant]++
			all.VariantShare[v.ID.String()]++
			if a.Guard != nil && v.Index == a.Exec.DefaultVariant {
				// The gateway's free observation: the reference variant served it.
				a.Guard.Observe(a.App.Est[q.sample], yhat)
			}
		}
		ex.Used(v.ID, at)
		return nil
	}
	// With decisions charged to the loop (DecisionWall, or a Charge), the
	// policies plan, as the gateway's do (gateway/latency.go), with the loop's
	// own time as charged: weighted means (ownAlpha per batch) of the measured
	// decisions' time since the last batch (DecisionWall), a cost per batch,
	// and of the rest of the loop's time for them over the requests they
	// handled (GatewayCost, VerdictCost, the Charge), a cost per request, from 0
	// and GatewayCost (what they plan with otherwise); a view's table for a
	// batch of b adds the first once and the second b times. Only where the
	// views have tables of their own (GatewayKnown) and the loop's time delays
	// the engine (no Pipeline); otherwise the views stay as built.
	learnOwn := (s.DecisionWall || s.Charge > 0) && !s.Pipeline && !blindToCharge
	for _, a := range s.Apps {
		if a.View == a.Exec {
			learnOwn = false // the view is the engine's application, tables and all (withLoopCost makes a copy)
		}
	}
	own := s.GatewayCost
	var ownBatch, ownWork, ownWall time.Duration
	ownN := 0
	// decide asks the policy for a batch that starts at plan (at, or the
	// running batch's planned end when the pipeline decides ahead), applies the
	// decision and answers its verdicts at at. It returns the batch and the
	// loop's own time for the decision: the decision and the hand-off of every
	// request it answers or batches.
	decide := func(at, plan time.Time) (*scheduler.Batch, time.Duration, error) {
		if plan.Before(planned) {
			plan = planned
		}
		planned = plan
		snap := &scheduler.Snapshot{Now: plan, Queue: ex.Queue(), Apps: views, Engine: ex.Engine()}
		w0 := s.Now()
		d := s.Pol.Decide(snap)
		wall := s.Now().Sub(w0)
		out.DecideWall += wall
		all.Decisions++
		// Apply checks every invariant before it changes anything, and takes the
		// answered and batched requests out of the queue.
		if err := ex.Apply(d, plan); err != nil {
			return nil, 0, fmt.Errorf("eval: %s: %w", s.Policy, err)
		}
		for _, v := range d.Verdicts {
			q := byReq[v.Request]
			delete(byReq, v.Request)
			switch v.Outcome {
			case scheduler.Degraded:
				answer(q, scheduler.Argmax(v.Request.P), at, "degraded")
			case scheduler.FirstAnswer:
				f := v.Request.First
				status := "ok"
				if s.late(q, at) {
					status = "late"
				}
				q.by = f.Variant
				answer(q, f.Class, at, status)
				out.Tallies[q.app].m.VariantShare[f.Variant.ID.Variant]++
				all.VariantShare[f.Variant.ID.String()]++
			case scheduler.Expired:
				answer(q, -1, at, "expired")
			}
		}
		out.Scheduled += len(d.Verdicts)
		drain.Answered += len(d.Verdicts)
		wake = d.WakeAt
		if d.Gate != nil {
			gate = d.Gate
		}
		answers = d.Answers
		loopCost := time.Duration(len(d.Verdicts)) * (s.VerdictCost + s.Charge)
		if d.Batch != nil {
			loopCost += time.Duration(len(d.Batch.Requests)) * (s.GatewayCost + s.Charge)
			out.Scheduled += len(d.Batch.Requests)
		}
		if s.DecisionWall {
			loopCost += wall
		}
		lead += (loopCost - lead) / 16
		if learnOwn {
			ownWork += loopCost
			if s.DecisionWall {
				ownWall += wall
			}
			ownN += len(d.Verdicts)
			if d.Batch != nil {
				ownN += len(d.Batch.Requests)
				own += time.Duration(ownAlpha * float64((ownWork-ownWall)/time.Duration(ownN)-own))
				ownBatch += time.Duration(ownAlpha * float64(ownWall-ownBatch))
				ownWork, ownWall, ownN = 0, 0, 0
				for _, a := range s.Apps {
					for i, v := range a.View.Variants {
						e := a.Exec.Variants[i].Latency
						for b := 1; b < len(v.Latency); b++ {
							v.Latency[b] = e[b] + ownBatch + time.Duration(b)*own
						}
					}
				}
			}
		}
		return d.Batch, loopCost, nil
	}
	// start runs b on the engine from at: its swap, then its forward pass, for
	// their jittered profiled times.
	start := func(b *scheduler.Batch, at time.Time) {
		ai := appOf[b.Requests[0].App]
		cost := time.Duration(0)
		for _, id := range b.Evict {
			cost += jitter(variants[id].Unload)
		}
		for _, id := range b.Load {
			cost += jitter(variants[id].Load)
			all.Swaps++
			out.Tallies[byName[id.App]].m.Swaps++
		}
		all.SwapTime += cost.Seconds()
		busy, inflight = true, b
		// The engine's true time: the application's own profile (the policy's
		// view may include the loop's cost, charged separately).
		busyUntil = at.Add(cost + jitter(variants[b.Variant.ID].LatencyAt(len(b.Requests))))
		all.Batches++
		all.MeanBatch += float64(len(b.Requests))
		t := &out.Tallies[ai]
		t.m.Batches++
		t.m.MeanBatch += float64(len(b.Requests))
		if s.Pipeline {
			// As the gateway's loop: the plan's length from the batch's start.
			plan := b.Finish.Sub(b.Start)
			if plan <= 0 || b.Start.IsZero() {
				plan = busyUntil.Sub(at)
			}
			freeAt = at.Add(plan)
			aheadAt = freeAt.Add(-scheduler.AheadLead(lead))
		}
	}

	// The event loop: the next event is a batch finishing, an arrival, or the
	// policy's wake-up, whichever comes first; after each, an idle engine with
	// work asks the policy again.
	now := s.Origin
	spins := 0
	for next < len(reqs) || busy || ex.Len() > 0 || ahead != nil {
		ev := time.Time{}
		if busy {
			ev = busyUntil
		}
		if next < len(reqs) && (ev.IsZero() || s.seen(&reqs[next]).Before(ev)) {
			ev = s.seen(&reqs[next])
		}
		if s.Pipeline && busy && inflight != nil && ahead == nil && ex.Len() > 0 && aheadAt.After(now) &&
			(ev.IsZero() || aheadAt.Before(ev)) {
			ev = aheadAt
		}
		if !busy && !wake.IsZero() && ex.Len() > 0 {
			w := wake
			if w.Before(now) {
				w = now
			}
			if ev.IsZero() || w.Before(ev) {
				ev = w
			}
		}
		if ev.IsZero() {
			if ex.Len() > 0 {
				return out, fmt.Errorf("%w (%s, %d queued)", ErrStuck, s.Policy, ex.Len())
			}
			break
		}
		if ev.After(now) {
			now, spins = ev, 0
		} else if spins++; spins > 100 {
			return out, fmt.Errorf("%w (%s decides again and again at %v)", ErrStuck, s.Policy, now.Sub(s.Origin))
		}
		if busy && !busyUntil.After(now) {
			busy = false
			if inflight != nil {
				if err := finish(inflight, busyUntil); err != nil {
					return out, err
				}
			}
			inflight = nil
		}
		for next < len(reqs) && !s.seen(&reqs[next]).After(now) {
			q := &reqs[next]
			next++
			a := &s.Apps[q.app]
			est, correct := s.Estimate(q)
			// The gateway's admission test (scheduler.Backlog), with the
			// measured drain rate; the cheapest variant's profile stands in
			// for the fastest rate, and EgressDelay for the egress delay.
			//
			// As the gateway, a request's budget and arrival are what is left
			// at its receipt (its transit, Point.Transit, spent), and one
			// received after its deadline is answered expired at once.
			budget, received := a.Deadline-q.delay, q.arr.Add(q.delay)
			if budget <= 0 {
				answer(q, -1, now, "expired")
				continue
			}
			b := scheduler.Backlog{Queued: ex.Len(), DrainRate: drainRate, PerRequest: a.Fastest, Egress: s.EgressDelay}
			if s.MaxQueue > 0 && b.Queued >= s.MaxQueue ||
				s.MaxWait > 0 && s.MeasuredWait && b.TooSlow(budget) ||
				s.MaxWait > 0 && len(est) == 0 && b.Hopeless(budget, s.MaxWait) {
				if s.DegradeRefused && len(est) > 0 {
					if q.answerEst != nil {
						est = q.answerEst
					}
					answer(q, scheduler.Argmax(est), now, "degraded")
				} else {
					answer(q, -1, now, "rejected")
				}
				continue
			}
			q.deadline = q.arr.Add(a.Deadline)
			plan := scheduler.PlanDeadline(received, q.deadline, s.EgressDelay)
			guarded := a.Guard != nil && !a.Guard.Trusted()
			if guarded {
				out.Tallies[q.app].distrusted++
				q.r = prepareGuarded(a.View, a.GMode, q.seq, received, plan, est, q)
			} else {
				q.r = scheduler.Prepare(a.View, q.seq, received, plan, est, q)
				if correct != nil {
					// As the gateway: computed from the estimator's own output
					// (before any label-shift correction), applied to the request.
					scheduler.Sharpen(q.r, correct)
				}
				scheduler.Reweigh(q.r, q.answerEst, q.mix)
			}
			if answers.Answers(q.r) {
				// The gateway's admission answer from the estimate
				// (Decision.Answers): what the policy's prepass would answer
				// estimate_worth_more, on the ingress worker, neither queued
				// nor journaled.
				answer(q, scheduler.Argmax(q.r.P), now, "degraded")
				out.Tallies[q.app].m.EstimateAdmitted++
				continue
			}
			if !guarded && s.PriceAdmission && gate.Sheds(q.r, now) {
				// The gateway's admission.price_shed: answered from the
				// estimate on the ingress worker, neither queued nor journaled.
				answer(q, scheduler.Argmax(q.r.P), now, "degraded")
				out.Tallies[q.app].m.PriceShed++
				continue
			}
			byReq[q.r] = q
			q.r.Queued = now
			if err := ex.Add(q.r); err != nil {
				return out, fmt.Errorf("eval: %w", err)
			}
		}
		if !busy && ahead != nil {
			// Decided while the batch before ran: it starts when the engine is
			// free and the loop has decided it.
			b := ahead
			ahead = nil
			at := now
			if aheadReady.After(at) {
				at = aheadReady
			}
			start(b, at)
		}
		if !busy && ex.Len() > 0 {
			b, loopCost, err := decide(now, now)
			if err != nil {
				return out, err
			}
			if b != nil {
				start(b, now.Add(loopCost))
			} else if loopCost > 0 {
				// The loop's time answering verdicts, while the engine waits.
				busy, inflight, busyUntil = true, nil, now.Add(loopCost)
			}
		} else if s.Pipeline && busy && inflight != nil && ahead == nil && ex.Len() > 0 && !aheadAt.After(now) {
			b, loopCost, err := decide(now, maxTime(freeAt, now))
			if err != nil {
				return out, err
			}
			if b != nil {
				ahead, aheadReady = b, now.Add(loopCost)
				all.DecidedAhead++
			}
		}
		// The time up to now as it was (busy or not), the state from now on.
		drainRate = drain.Observe(now, busy || ex.Len() > 0).Now
	}
	got := 0
	for i := range out.Tallies {
		m := &out.Tallies[i].m
		got += m.OK + m.Late + m.Degraded + m.Expired + m.Rejected
	}
	if got != len(reqs) {
		return out, fmt.Errorf("eval: %s answered %d of %d requests", s.Policy, got, len(reqs))
	}
	return out, nil
}

// classSum is how many requests t scored.
func (t *tally) classSum() int {
	n := 0
	for _, x := range t.classN {
		n += x
	}
	return n
}

// finish turns t's sums into t.m's means (means) and adds the results of a's
// classes, named by names (by their indices beyond it).
func (t *tally) finish(a *scheduler.App, names []string, span float64) {
	t.means(span)
	m := &t.m
	for y := range a.K {
		cm := ClassMetrics{Class: fmt.Sprint(y), N: t.classN[y]}
		if y < len(names) {
			cm.Class = names[y]
		}
		if f := float64(t.classN[y]); f > 0 {
			cm.Recall, cm.Utility, cm.NoAnswer = float64(t.classOK[y])/f, t.classU[y]/f, float64(t.classNo[y])/f
		}
		m.PerClass = append(m.PerClass, cm)
	}
}

// means turns t's sums into t.m's means over t.m.Requests (at least 1), the
// model answers' variant shares and the p99 latency; span is SimSeconds.
func (t *tally) means(span float64) {
	m := &t.m
	n := float64(max(1, m.Requests))
	m.Utility, m.UtilityDegraded, m.Accuracy = t.util/n, t.deg/n, float64(t.correct)/n
	m.Met, m.InTime = float64(m.OK)/n, float64(m.OK+m.Degraded)/n
	if m.Batches > 0 {
		m.MeanBatch /= float64(m.Batches)
	}
	answered := float64(m.OK + m.Late)
	for k, x := range m.VariantShare {
		m.VariantShare[k] = x / max(answered, 1)
	}
	m.P99LatencyMS = p99(t.lat)
	m.SimSeconds = span
}

// setDecisionTimes fills m's DecisionUS and DecisionUSPerReq from the wall
// time of m.Decisions decisions that scheduled that many requests.
func setDecisionTimes(m *Metrics, wall time.Duration, scheduled int) {
	if m.Decisions > 0 {
		m.DecisionUS = float64(wall.Microseconds()) / float64(m.Decisions)
	}
	if scheduled > 0 {
		m.DecisionUSPerReq = float64(wall.Nanoseconds()) / 1e3 / float64(scheduled)
	}
}

func p99(lat []time.Duration) float64 {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return float64(lat[len(lat)*99/100]) / 1e6
}

// maxTime is the later of a and b.
func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
