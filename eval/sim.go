package eval

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// GatewayModel is the gateway as the simulator models it around the engine:
// its admission, its residency budgets, its own time per request and how much
// forward passes vary. Point, ScenarioPoint and engineSim embed it, so that
// every simulated run is given all of it (a run that copied the fields one by
// one once left the admission test out).
type GatewayModel struct {
	// Jitter is the relative standard deviation of the actual forward-pass and
	// swap times around the profile (0 = exactly the profile).
	Jitter float64
	// MaxQueue bounds the queue; arrivals beyond it are rejected (0 = unbounded).
	MaxQueue int
	// MaxWait is the gateway's admission.max_wait for an application without
	// estimates: an arrival is refused when the queue ahead of it would take
	// longer than this fraction of its budget to drain at the fastest rate the
	// gateway could drain it (every request on the application's cheapest
	// variant at its best batch size, plus GatewayCost per request; the gateway
	// measures its own time per request instead). 0 = off. With estimates the
	// gateway leaves the choice to the policy, which can answer any request from
	// its estimate. Its other test (the wait at the measured drain rate beyond
	// the whole budget, a gateway short of CPU) is MeasuredWait.
	MaxWait float64
	// MeasuredWait simulates the gateway's other admission test (engineSim's).
	MeasuredWait bool
	// DegradeRefused answers an arrival refused by MaxQueue or MaxWait from its
	// estimate (status degraded), as the gateway's admission.degrade_refused;
	// otherwise it is rejected.
	DegradeRefused bool
	// MemBudget and CountBudget bound residency (0 = unlimited).
	MemBudget   int64
	CountBudget int
	// GatewayCost is the gateway's own time per request it runs on a model, on
	// the scheduling loop (its share of the decision, stacking its input, the
	// reply hand-off), which runs between batches while the engine waits; a
	// decision that batches n requests delays the engine by n x GatewayCost.
	// VerdictCost is the same for a request answered without a model (degraded,
	// expired, shed, a cascade's first answer). 0 models the engine alone.
	GatewayCost, VerdictCost time.Duration
	// DecisionCost is, per policy (by its -policies name), the scheduling
	// loop's time per scheduled request (answered or batched) for the decision
	// itself, on top of GatewayCost and VerdictCost, which charge every policy
	// alike: a searching policy's decision costs the gateway several times an
	// edf or fixed-batch one (docs/benchmarks.md), which decides applications
	// whose models take microseconds (satellite; docs/evaluation.md). It is not
	// in the capacity the loads are fractions of, so every policy still sees
	// the same arrivals; nil charges nothing. A "policy@load" entry
	// (-decision-us sneakpeek@1=1.8) is the policy's cost at that load
	// (Point.Load), in place of its "policy" entry (decisionCostAt).
	DecisionCost map[string]time.Duration
	// DecisionWall charges each decision, on the loop, the wall-clock time its
	// Decide took (engineSim.Now), in place of DecisionCost: what the policy
	// costs at the queue and the batch the run reaches, on this machine. It
	// makes the run depend on the machine and on what else runs on it.
	DecisionWall bool
	// GatewayKnown makes the policies plan with the loop's time: the latency
	// tables they see include GatewayCost per request or, with decisions charged
	// (DecisionWall, DecisionCost) and no Pipeline, the loop's time per request
	// as charged, a weighted mean over recent batches (engineSim.run), as the
	// gateway measures and plans with its own (gateway/latency.go). Without it
	// they plan with the engine's profile alone and the loop's time surprises
	// them.
	GatewayKnown bool
	// IngressDelay is the time from a request's receipt (its arrival, from which
	// its deadline counts) until the scheduler sees it: parsing, the journal's
	// write, the estimate.
	IngressDelay time.Duration
	// PriceAdmission applies the policy's gate at admission (Decision.Gate,
	// scheduler.PriceGate; the gateway's admission.price_shed): while the
	// policy sheds under overload, an arrival it would shed anyway is answered
	// from its estimate at once, neither queued nor charged to the loop.
	PriceAdmission bool
	// LabelShift is the gateway's apps[].label_shift: every estimate is
	// corrected for the live class mix in arrival order (sneakpeek.PriorShift
	// from the estimator's mean output, Point.Shift's window), and the corrected
	// estimate gives the request's answer without a model (scheduler.Reweigh).
	// The label-shift policies (PolicyShift...) keep their own correction.
	LabelShift bool
	// ShiftEvidence, with LabelShift, feeds the correction's live class mix
	// with the models' answers: each request is counted once its outcome is
	// known, one a model answered by that answer alone through the variant's
	// validation confusion (sneakpeek.PriorShift.ObserveAnswer), any other by
	// its estimate as corrected on arrival. false: every request counted on
	// arrival by its corrected estimate (sneakpeek.PriorShift.Correct), as the
	// gateway does.
	ShiftEvidence bool
	// EgressDelay is the delay from the loop to the broker (its average, a
	// live run's sneakgate_reply_egress_seconds), as the gateway uses it:
	// admission adds it to the wait it weighs a budget against
	// (scheduler.Backlog.Egress), and requests are planned to leave it free
	// before their deadlines (scheduler.PlanDeadline). Answers are judged at
	// their hand-over, this long after the loop gives them. 0: none.
	EgressDelay time.Duration
	// Pipeline is the gateway's scheduler.pipeline: while a batch runs, the
	// next one is decided from twice the loop's smoothed cost per decision
	// (plus 250 µs) before the running batch's planned end, for that end, and
	// the loop's cost overlaps the engine instead of delaying it.
	Pipeline bool
}

// Point is one simulated run: one application and workload, one policy, one load
// and deadline.
type Point struct {
	App      *App
	Workload manifest.Workload
	Policy   string
	Options  scheduler.Options
	// Load is the arrival rate as a fraction of Capacity.
	Load float64
	// Deadline is every request's budget.
	Deadline time.Duration
	// Requests is how many requests arrive.
	Requests int
	// Seed fixes arrivals, samples, latency jitter and confusion draws; runs with
	// the same seed see the same requests whatever the policy.
	Seed uint64
	// Resample draws the requests from a bootstrap replicate of the test
	// samples that Seed picks (App.Resampled) instead of from the samples
	// themselves, so that the spread over seeds covers the test set's sampling
	// too, not only the arrivals' (docs/evaluation.md, "Method").
	Resample bool
	// GatewayModel is the gateway around the engine: admission, residency
	// budgets, its own time per request, the latency jitter.
	GatewayModel
	// Guard configures the drift guard of the guarded policies (PolicyGuarded,
	// PolicyGuardedDeg); zero fields take sneakpeek's defaults. Reference and
	// Baseline are always set from the App (newGuard). Other policies ignore it.
	Guard sneakpeek.GuardOptions
	// Shift configures the label-shift correction of PolicyShift (zero fields take
	// sneakpeek's defaults). Other policies ignore it.
	Shift sneakpeek.ShiftOptions
	// EngineSlowdown (> 1) stretches every forward pass by this factor, and the
	// policies plan with the stretched tables, as the gateway's latency
	// correction makes them do: the engine sharing the CPU with ingress, the
	// journal, the broker and the devices. The load stays relative to the
	// unstretched capacity. 0 or 1: the profiles as measured.
	EngineSlowdown float64
	// Transit, when not empty, is a sample of the time from a request's send
	// (its deadline counts from there) to its receipt by the gateway: each
	// request's is drawn from it (a live run's sneakgate_request_transit_seconds),
	// on top of IngressDelay, and the requests reach the scheduler in the order
	// they are received.
	Transit []time.Duration
}

// Metrics are one run's results. Utility and Accuracy are means over every
// request (rejected and expired ones count 0 and wrong).
type Metrics struct {
	Requests int `json:"requests"`
	// Utility is the mean realised penalised utility: W[y][yhat] of the answer,
	// discounted for lateness like scheduler.PenalizedUtility; 0 for expired and
	// rejected requests.
	Utility float64 `json:"utility"`
	// UtilityDegraded is the part of Utility that degraded answers contributed.
	UtilityDegraded float64 `json:"utility_degraded"`
	// Accuracy is the fraction of requests answered with the true class (model
	// answers, late or not, and degraded answers).
	Accuracy float64 `json:"accuracy"`
	// Met is the fraction answered by a model by the deadline.
	Met float64 `json:"deadline_met"`
	// InTime is the fraction answered by the deadline, degraded answers included.
	InTime   float64 `json:"answered_in_time"`
	OK       int     `json:"ok"`
	Late     int     `json:"late"`
	Degraded int     `json:"degraded"`
	Expired  int     `json:"expired"`
	Rejected int     `json:"rejected"`
	// PriceShed counts the degraded answers given at admission by the price
	// gate (GatewayModel.PriceAdmission); they are in Degraded too.
	PriceShed int `json:"price_shed,omitempty"`
	// EstimateAdmitted counts the degraded answers given at admission because
	// the estimate is worth more than any model (Decision.Answers,
	// scheduler.EstimateRule; the gateway does the same); they are in
	// Degraded too.
	EstimateAdmitted int `json:"estimate_admitted,omitempty"`
	// Swaps counts variant loads; SwapTime is their summed simulated cost.
	Swaps    int     `json:"swaps"`
	SwapTime float64 `json:"swap_time_s"`
	Batches  int     `json:"batches"`
	// DecidedAhead counts the batches decided while the batch before ran
	// (GatewayModel.Pipeline).
	DecidedAhead int `json:"decided_ahead,omitempty"`
	// MeanBatch is the mean number of requests per forward pass.
	MeanBatch float64 `json:"mean_batch"`
	// VariantShare[m] is the fraction of model-answered requests that ran on m.
	VariantShare map[string]float64 `json:"variant_share"`
	// Decisions counts Decide calls; DecisionUS is their mean wall-clock time and
	// DecisionUSPerReq the total divided by the requests they scheduled.
	Decisions        int     `json:"decisions"`
	DecisionUS       float64 `json:"decision_us"`
	DecisionUSPerReq float64 `json:"decision_us_per_request"`
	// P99LatencyMS is the 99th percentile of answer time minus arrival.
	P99LatencyMS float64 `json:"p99_latency_ms"`
	// SimSeconds is the simulated time from the first arrival to the last answer.
	SimSeconds float64 `json:"sim_seconds"`
	// Guarded policies only: Distrusted is the fraction of requests prepared while
	// the guard distrusted the estimates, GuardFlips its verdict changes,
	// GuardObserved the observations it was fed, GuardGap its final window's
	// gap minus baseline (sneakpeek.GuardStats.Excess).
	Distrusted    float64 `json:"distrusted,omitempty"`
	GuardFlips    int64   `json:"guard_flips,omitempty"`
	GuardObserved int64   `json:"guard_observed,omitempty"`
	GuardGap      float64 `json:"guard_gap,omitempty"`
	// PerClass are the same results per true class, in class order.
	PerClass []ClassMetrics `json:"per_class,omitempty"`
	// Escalated is, for the cascade policy, the fraction of requests that went
	// back for a second pass; Thresholds the thresholds its first passes carried
	// (mean over batches).
	Escalated float64 `json:"escalated,omitempty"`
	Threshold float64 `json:"threshold,omitempty"`
	// Label-shift policies only (PolicyShift, PolicyTruePrior): the accuracy of
	// the estimate's argmax on the arrivals before and after correction, and
	// (PolicyShift) the final live prior estimate.
	EstAccuracy          float64   `json:"est_accuracy,omitempty"`
	EstAccuracyCorrected float64   `json:"est_accuracy_corrected,omitempty"`
	ShiftPrior           []float64 `json:"shift_prior,omitempty"`
}

// ClassMetrics are one true class's results: N requests of the class, Recall the
// fraction answered with it (by a model or degraded), Utility their mean realised
// utility, NoAnswer the fraction that got no answer (expired or rejected).
type ClassMetrics struct {
	Class    string  `json:"class"`
	N        int     `json:"n"`
	Recall   float64 `json:"recall"`
	Utility  float64 `json:"utility"`
	NoAnswer float64 `json:"no_answer"`
}

// Capacity is the arrival rate (requests per second) the engine sustains serving
// every request on the application's most accurate variant at its most efficient
// batch size up to o.MaxBatch (scheduler.Amortised): the reference for
// Point.Load.
func Capacity(a *scheduler.App, o scheduler.Options) float64 {
	return CapacityWith(a, o, 0)
}

// CapacityWith is Capacity when every request also costs the scheduling loop
// gatewayCost (Point.GatewayCost): the rate the engine and the loop together
// sustain on the most accurate variant.
func CapacityWith(a *scheduler.App, o scheduler.Options, gatewayCost time.Duration) float64 {
	v := a.Variants[a.DefaultVariant]
	b := o.MaxBatch
	if b <= 0 {
		b = scheduler.DefaultOptions().MaxBatch
	}
	return 1 / (scheduler.Amortised(v, min(b, v.MaxBatch())) + gatewayCost).Seconds()
}

// WarmResidency is the residency the gateway starts with: every variant, in
// manifest order, that still fits the budgets (gateway startEngine's warm start:
// a variant that does not fit is skipped, the next ones are tried).
func WarmResidency(a *scheduler.App, mem int64, count int, at time.Time) map[scheduler.VariantID]time.Time {
	return warmResidency([]*scheduler.App{a}, mem, count, at)
}

// warmResidency is WarmResidency for applications sharing one engine, taken
// application by application in order.
func warmResidency(apps []*scheduler.App, mem int64, count int, at time.Time) map[scheduler.VariantID]time.Time {
	res := map[scheduler.VariantID]time.Time{}
	var used int64
	for _, a := range apps {
		for _, v := range a.Variants {
			if (mem > 0 && used+v.MemBytes > mem) || (count > 0 && len(res)+1 > count) {
				continue
			}
			res[v.ID] = at
			used += v.MemBytes
		}
	}
	return res
}

// ErrStuck is returned when a policy leaves work queued on an idle engine with
// nothing left to happen (no arrival, no wake-up): a policy bug.
var ErrStuck = errors.New("eval: policy left requests queued with nothing to wake it")

// Simulate runs one point. It is deterministic for a given Point except for the
// measured decision times. now is the wall clock used to time decisions.
func Simulate(pt Point, now func() time.Time) (Metrics, error) {
	a := pt.App
	sa := a.Sched
	if now == nil {
		now = time.Now
	}
	base, gmode := resolvePolicy(pt.Policy)
	var (
		pol scheduler.Policy
		err error
	)
	if pt.Policy == PolicyOracle && a.Pred == nil {
		return Metrics{}, fmt.Errorf("eval: %s: %s needs the variants' real predictions (the engine)", sa.Name, PolicyOracle)
	}
	if base == PolicyCascade {
		if a.Cascade == nil || a.Conf == nil {
			return Metrics{}, fmt.Errorf("eval: %s: the cascade needs the engine (variant confidences and the validation split)", sa.Name)
		}
		pol, err = scheduler.NewCascade(pt.Options, map[string]scheduler.CascadeConfig{sa.Name: *a.Cascade})
	} else {
		pol, err = scheduler.New(base, pt.Options)
	}
	if err != nil {
		return Metrics{}, err
	}
	if pt.Policy == PolicyPeek {
		if a.Peek == nil || a.Conf == nil {
			return Metrics{}, fmt.Errorf("eval: %s: %s needs the engine (variant confidences and the validation split)", sa.Name, PolicyPeek)
		}
		pc, ok := pol.(scheduler.PeekConfigurer)
		if !ok {
			return Metrics{}, fmt.Errorf("eval: %s: policy %s cannot peek", sa.Name, base)
		}
		pc.ConfigurePeek(sa.Name, *a.Peek)
	}
	var guard *sneakpeek.Guard
	if gmode != guardOff {
		guard = newGuard(a, pt.Guard)
	}
	shift := newShifter(a, pt)
	o := withMaxBatch(pt.Options)
	rate := pt.Load * CapacityWith(sa, o, pt.GatewayCost)
	if f := pt.EngineSlowdown; f > 1 {
		sa = mapLatency(sa, func(_ int, l time.Duration) time.Duration { return time.Duration(f * float64(l)) })
	}
	// pa is the application as the policy sees it.
	pa := sa
	if pt.GatewayKnown && (pt.GatewayCost > 0 || pt.chargesDecisions()) {
		// Tables of its own: engineSim.run may add the loop's time as charged.
		pa = withLoopCost(sa, pt.GatewayCost)
	}
	if rate <= 0 || pt.Requests <= 0 {
		return Metrics{}, fmt.Errorf("eval: load %v and requests %d must be positive", pt.Load, pt.Requests)
	}
	rng := rand.New(rand.NewPCG(pt.Seed, 1))
	origin := time.Unix(1_700_000_000, 0).UTC()
	// Arrivals: Poisson at rate, samples from the workload's mix.
	pool := a.byClass
	if pt.Resample {
		pool = a.Resampled(pt.Seed)
	}
	reqs := make([]simReq, pt.Requests)
	t := origin
	for i := range reqs {
		t = t.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
		prog := float64(i) / float64(max(1, pt.Requests-1))
		reqs[i] = simReq{sample: drawFrom(pool, rng, &pt.Workload, prog), seq: uint64(i + 1), arr: t}
	}
	if len(pt.Transit) > 0 {
		tr := rand.New(rand.NewPCG(pt.Seed, 5))
		for i := range reqs {
			reqs[i].delay = pt.Transit[tr.IntN(len(pt.Transit))]
		}
		slices.SortStableFunc(reqs, func(x, y simReq) int { return x.arr.Add(x.delay).Compare(y.arr.Add(y.delay)) })
		for i := range reqs {
			reqs[i].seq = uint64(i + 1) // the scheduler's arrival order
		}
	}
	var placebo *rand.Rand
	if pt.Policy == PolicyPlacebo {
		placebo = rand.New(rand.NewPCG(pt.Seed, 4))
	}
	estimate := func(q *simReq) (est, correct []float64) {
		est = a.Est[q.sample]
		if a.Correct != nil && pt.Policy != PolicyClassBased {
			correct = a.Correct[q.sample]
		}
		if pt.Policy == PolicyOracle {
			correct = oracleCorrect(a, q.sample)
		}
		from := q.sample // the sample whose estimate the request gets
		if placebo != nil {
			// The estimate (and difficulty) of another request of the same workload.
			prog := float64(q.seq-1) / float64(max(1, pt.Requests-1))
			from = drawFrom(pool, placebo, &pt.Workload, prog)
			est = a.Est[from]
			if correct != nil {
				correct = a.Correct[from]
			}
		}
		if shift != nil {
			// The gateway corrects every estimate on arrival, in arrival order.
			c := shift.correct(a, &pt, from, float64(q.seq-1)/float64(max(1, pt.Requests-1)))
			if shift.mode == shiftAnswer {
				q.answerEst = c // Reweigh, after Prepare and Sharpen on the raw estimate
				q.mix = shift.ps.Mix()
			} else {
				est = c
			}
		}
		return est, correct
	}
	sim := engineSim{Policy: pt.Policy, Pol: pol, Reqs: reqs, Origin: origin, Seed: pt.Seed, GatewayModel: pt.GatewayModel,
		Charge: decisionCostAt(pt.DecisionCost, pt.Policy, pt.Load),
		Apps: []simApp{{App: a, Exec: sa, View: pa, Deadline: pt.Deadline,
			Fastest: scheduler.CheapestAmortised(sa) + pt.GatewayCost, Guard: guard, GMode: gmode,
			Observe: shift.observer()}},
		Now: now, Estimate: estimate}
	run, err := sim.run()
	tl := &run.Tallies[0]
	tl.m.Requests = pt.Requests
	tl.finish(sa, a.ClassNames, run.LastDone.Sub(origin).Seconds())
	m := tl.m
	m.Decisions, m.SwapTime, m.DecidedAhead = run.All.Decisions, run.All.SwapTime, run.All.DecidedAhead
	setDecisionTimes(&m, run.DecideWall, run.Scheduled)
	n := float64(pt.Requests)
	m.Escalated = float64(tl.escalated) / n
	if tl.thN > 0 {
		m.Threshold = tl.thSum / float64(tl.thN)
	}
	if guard != nil {
		st := guard.Stats()
		m.Distrusted = float64(tl.distrusted) / n
		m.GuardFlips, m.GuardObserved, m.GuardGap = st.Flips, st.Total, st.Excess
	}
	if shift != nil {
		shift.fill(&m)
	}
	return m, err
}

// oracleCorrect is, per variant, 1 when its real prediction on sample s is the
// true class and 0 otherwise (PolicyOracle).
func oracleCorrect(a *App, s int) []float64 {
	c := make([]float64, len(a.Pred[s]))
	for m, yhat := range a.Pred[s] {
		if int(yhat) == a.Labels[s] {
			c[m] = 1
		}
	}
	return c
}

// chargesDecisions reports whether the loop is charged for decisions, so that
// the policies plan with the loop's time as charged (GatewayKnown).
func (m *GatewayModel) chargesDecisions() bool { return m.DecisionWall || len(m.DecisionCost) > 0 }

// withLoopCost returns a copy of a whose variants' latency tables include c per
// request (Latency[b] + b*c); everything else is shared.
func withLoopCost(a *scheduler.App, c time.Duration) *scheduler.App {
	return mapLatency(a, func(b int, l time.Duration) time.Duration { return l + time.Duration(b)*c })
}

// mapLatency returns a copy of a whose variants' latency tables are
// f(b, Latency[b]); everything else is shared.
func mapLatency(a *scheduler.App, f func(b int, l time.Duration) time.Duration) *scheduler.App {
	cp := *a
	cp.Variants = make([]*scheduler.Variant, len(a.Variants))
	for i, v := range a.Variants {
		w := *v
		w.Latency = make([]time.Duration, len(v.Latency))
		for b := 1; b < len(v.Latency); b++ {
			w.Latency[b] = f(b, v.Latency[b])
		}
		cp.Variants[i] = &w
	}
	return &cp
}

// Predict is variant m's answer on sample i: the real prediction when the app
// carries them (App.Pred), otherwise a draw from the variant's confusion-matrix
// row of the sample's true class. The draw is a pure function of (seed, request
// sequence number, variant), so every policy sees the same answer for the same
// request on the same variant (common random numbers).
func Predict(a *App, i, m int, seed, seq uint64) int {
	if a.Pred != nil {
		return int(a.Pred[i][m])
	}
	h := fnv.New64a()
	var b [24]byte
	for j, x := range []uint64{seed, seq, uint64(m)} {
		for k := range 8 {
			b[j*8+k] = byte(x >> (8 * k))
		}
	}
	h.Write(b[:])
	u := float64(h.Sum64()>>11) / (1 << 53)
	row := a.Sched.Variants[m].Cond[a.Labels[i]]
	for c, p := range row {
		if u < p {
			return c
		}
		u -= p
	}
	return len(row) - 1
}
