package scheduler

import (
	"container/heap"
	"math"
	"slices"
	"time"
)

// This file holds what the searching policies (sneakpeek, oblivious, bruteforce)
// share: the view of utility a policy believes, the per-decision pre-pass over the
// whole queue (hopeless, degraded and not-worth-running verdicts, priorities), the
// window of the highest-priority requests, and the evaluation of a plan (an ordered
// list of runs, each a set of requests on one variant) with its batch-size-dependent
// latency, its simulated swaps, and the deadline penalty.

// view is what a policy believes a request is worth on each variant.
type view struct {
	// dataAware selects the SneakPeek estimate's expected utility
	// (Request.ExpUtility) and allows the degraded answer; otherwise the profiled
	// utility (Variant.ProfiledUtility) and no degraded answer.
	dataAware bool
	// byClass groups by (application, argmax p) instead of application only.
	byClass bool
	// byPref (data-aware) groups by (application, the variant each request
	// prefers at the decision's price of engine time) instead: requests of one
	// class that differ in difficulty can then run on different variants.
	byPref bool
	// noShed turns overload shedding (shed.go) off; noDegrade forbids the degraded
	// answer to a data-aware policy (ablations for the evaluation).
	noShed, noDegrade bool
	// mix (for a policy that values every request alike) splits the window
	// between variants as the price of engine time's fluid optimum does
	// (assignMix), so that load can be spread over variants instead of moving
	// all traffic from one variant to another at once.
	mix bool
	// estimateAnswers (data-aware) answers a request from its estimate when
	// that is worth more than any model answer (Options.EstimateAnswers).
	estimateAnswers bool
}

// degrade reports whether r may be answered with its estimate.
func (w view) degrade(r *Request) bool { return w.dataAware && !w.noDegrade && r.P != nil }

// member is a request as the planner sees it; times are relative to the decision's
// Now so the hot loops do integer arithmetic.
type member struct {
	r *Request
	// dl is the time left to the deadline (negative when past it); budget is D.
	dl, budget time.Duration
	// u[m] is the believed utility on variant m when on time.
	u []float64
	// alt is the value of not running when the result would be late: the degraded
	// answer's utility if allowed (capped at the worst variant's on-time utility),
	// and never below na (expiring is worth na).
	alt float64
	// na is the believed value of no answer at all (Request.NoAnswerUtility for a
	// data-aware policy, its expectation under the prior otherwise): an expired
	// request is worth it, and a late result decays to it.
	na float64
	// pri is the priority P(r).
	pri float64
	// class is the grouping class (-1 when grouping by application only).
	class int
	// inWin marks members of the searched window; beyond, those a decision
	// over a prefix took from beyond it for the fill (pullFill).
	inWin, beyond bool
}

// value is the member's believed value when its result on variant m finishes at
// fin (relative to Now): u on time, then the penalised u or the alternative,
// whichever is larger.
func (m *member) value(v int, fin time.Duration) float64 {
	u := m.u[v]
	if fin <= m.dl {
		return u
	}
	return max(m.late(v, fin), m.alt)
}

// late is the penalised value of a late result: it decays from u to na (a u at
// or below na, a cost, is kept whole).
func (m *member) late(v int, fin time.Duration) float64 {
	u := m.u[v]
	if fin <= m.dl || u <= m.na {
		return u
	}
	return m.na + (u-m.na)*penaltyLate(fin-m.dl, m.budget)
}

// penaltyLate is Penalty for a result late by late with budget D.
func penaltyLate(late, budget time.Duration) float64 {
	if late <= 0 {
		return 1
	}
	if late >= budget {
		return 0
	}
	x := float64(late) / float64(budget)
	x3, y3 := x*x*x, (1-x)*(1-x)*(1-x)
	return 1 - x3/(x3+y3)
}

// appInfo caches, per application and decision, what the pre-pass needs.
type appInfo struct {
	// cost0[m] is the swap cost of variant m from the current residency; ok0[m]
	// says whether it can be made resident at all.
	cost0 []time.Duration
	ok0   []bool
	// lat1[m] is the batch-1 latency; fastest is the smallest over all variants.
	lat1    []time.Duration
	fastest time.Duration
	// profiled[m] is Variant.ProfiledUtility.
	profiled []float64
	// amort[m] is the variant's amortised seconds per request (Amortised).
	amort []float64
	// shedCost is what the shedding walk charges a request (shed.go): the
	// cheapest variant that can be made resident, amortised, with
	// shedHeadroom; at least 1 ns.
	shedCost time.Duration
	// na is the expected value of no answer under the prior (App.ExpectedNoAnswer).
	na float64
	// peekBonus is what a peek (peek.go) adds to a fresh request's value on
	// the peek variant peekVar: the mean gain of the second opinions on
	// peekBetter it would pay for at the peek price (their engine time is in
	// amort[peekVar]).
	peekBonus           float64
	peekVar, peekBetter int
	// peekClass[y] is the per-class gain at that point (ClassGain), nil
	// when the curve has none.
	peekClass []float64
	// mix is the mix test's values (estimateWorthMore) for the last Mix seen.
	mix *mixValues
}

// decisionState is one decision's working set.
type decisionState struct {
	s        *Snapshot
	w        view
	maxBatch int
	res0     resSet
	apps     map[*App]*appInfo
	// members holds every request that survived the pre-pass, in queue order.
	members []member
	// verdicts collected so far.
	verdicts []Verdict
	// lastApp caches the previous lookup in apps.
	lastApp  *App
	lastInfo *appInfo
	// price is the value of a second of engine time (see setPrice); 0 when time
	// is not scarce. target is the window's time budget it was solved for.
	price, target float64
	// mixLo and mixX are the mixing view's lower price and share (assignMix).
	mixLo, mixX float64
	// stream are recent arrivals outside the window, valued as members, that the
	// price is solved over together with the window (Options.PriceHorizon).
	stream []member
	// shrink is Options.Shrink; ubuf holds the members' shrunk utilities.
	shrink float64
	ubuf   []float64
	// shedBuf is shed's scratch, kept by the policy between decisions.
	shedBuf *shedScratch
	// extraBacklog counts queued requests left out of the snapshot's queue (a
	// decision over a prefix, bounded.go); bound, when not nil, records what
	// such a decision's bounds need.
	extraBacklog int
	bound        *boundInfo
	// skip is the prepass's (the requests earlier rounds answered).
	skip map[*Request]bool
	// beyond are queued requests after a prefix's (extraBacklog) that the
	// estimate answers, for the prepass to answer (searching.decideOn);
	// admits counts the requests the prepasses read.
	beyond []*Request
	admits int
	// shedN counts the members the shedding walk answered (shed.go), and
	// shedMax is the largest worth per engine second among them.
	shedN   int
	shedMax float64
	// peek holds the peeked applications' curves by name (peek.go), and
	// peekPrice the price a second pass must pay (searching.peekPrice: the
	// decisions' prices, smoothed).
	peek      map[string]*peekInfo
	peekPrice float64
	// recent are the policy's recent arrivals (searching.recent), whose class
	// mix prices a peek's second opinions (escalatedShare).
	recent []*Request
	// fluid is solvePrice's scratch (flatten), kept by the policy between
	// decisions when it sets it.
	fluid *fluidSet
}

// setPrice derives the price of engine time for this decision, by Lagrangian
// relaxation of a throughput constraint: in a steady state each request may use
// 1/rate seconds of engine time, where rate is the arrival rate plus the backlog
// outside the window spread over the window's mean budget. A request on variant m
// costs m's amortised time per request c_m (Amortised: its best batch). If
// every window member on its best variant fits rho*n/rate, time is free (price
// 0). Otherwise the price p is found by bisection so that the members' choices
// argmax_m u_m - p*c_m just fit. The search then maximises value minus p times
// the amortised time it uses, which steers the plan toward the variant mix the
// load can sustain and spends the expensive variants where the estimate says they
// matter most. arrivals is the measured arrival rate (0 when unknown).
func (d *decisionState) setPrice(win []int, arrivals float64) {
	lo, hi := d.solvePrice(win, arrivals)
	d.price = hi
	if d.w.mix {
		d.assignMix(win, lo, hi)
	}
	if d.w.byPref {
		for _, i := range win {
			m := &d.members[i]
			if v, _ := d.choice(m, d.price); v >= 0 {
				m.class = v
			}
		}
	}
}

// solvePrice returns the bracket [lo, hi] of the price found by bisection: the
// window's choices use more than the target time at lo and fit it at hi (0, 0
// when time is free).
func (d *decisionState) solvePrice(win []int, arrivals float64) (float64, float64) {
	target, ok := d.priceTarget(win, arrivals)
	if !ok {
		return 0, 0
	}
	return d.flatten(win).bisect(target)
}

// priceTarget sets and returns d.target, the engine time the window and the
// stream may use at the rate the requests come in (the measured arrivals plus
// the backlog outside the window spread over the window's mean budget); false
// when there is no window or no rate, and time is free.
func (d *decisionState) priceTarget(win []int, arrivals float64) (float64, bool) {
	if len(win) == 0 {
		return 0, false
	}
	budget := 0.0 // seconds: a Duration sum wraps with budgets of a few years
	for _, i := range win {
		budget += d.members[i].budget.Seconds()
	}
	mean := budget / float64(len(win))
	n := len(win) + len(d.stream)
	rate := arrivals
	if back := len(d.members) - len(win) + d.extraBacklog; back > 0 && mean > 0 {
		rate += float64(back) / mean
	}
	if rate <= 0 {
		return 0, false
	}
	d.target = targetUtilisation * float64(n) / rate
	return d.target, true
}

// fluidSet is the price's fluid problem laid out flat: for each member in
// order (the window's, then the stream's) the utilities u and amortised times a
// of the variants that can be made resident, in variant order (off[k] to
// off[k+1]), and its alternative alt[k]. Laying it out once spares each of the
// bisection's 40-odd evaluations an application lookup and the resident checks
// per variant (solvePrice was 43-56% of sneakpeek's decision CPU in live
// profiles); the prices are the same to the bit as when each evaluation went
// through choice (TestFluidSetIsFluidUse).
type fluidSet struct {
	u, a, alt []float64
	off       []int32
	// ev, contrib and live are bisect's scratch: the members' envelope
	// vertices, and the zone's times and members (fluidsolve.go).
	ev                        []fluidEvent
	contrib, at               []float64
	live                      []int32
	zoneLo, zoneHi, zoneFixed float64
	// evals and zoneEvals count the evaluations of use and zoneOver that
	// bisect made, zoneSums the times zoneOver added up all the members'
	// times (for the tests and benchmarks).
	evals, zoneEvals, zoneSums int
}

// flatten lays out the window's members and the stream for use, in d's scratch.
func (d *decisionState) flatten(win []int) *fluidSet {
	fl := d.fluid
	if fl == nil {
		fl = &fluidSet{}
		d.fluid = fl
	}
	fl.u, fl.a, fl.alt, fl.off = fl.u[:0], fl.a[:0], fl.alt[:0], append(fl.off[:0], 0)
	add := func(m *member) {
		ai := d.info(m.r.App)
		for vi, u := range m.u {
			if ai.ok0[vi] {
				fl.u = append(fl.u, u)
				fl.a = append(fl.a, ai.amort[vi])
			}
		}
		fl.alt = append(fl.alt, m.alt)
		fl.off = append(fl.off, int32(len(fl.u)))
	}
	for _, i := range win {
		add(&d.members[i])
	}
	for k := range d.stream {
		add(&d.stream[k])
	}
	return fl
}

// use is the fluid problem's engine time at price p: the sum over the members
// of the amortised time of each one's preferred variant at p (argmax u - p*a,
// the first on ties, as choice), or none when its alternative (the degraded
// answer, or no answer) is worth more than every variant net of the time it
// costs. Leaving a request to its alternative is a choice the gateway has (the
// shedding walk and the prepass make it), so the price is the value of engine
// time given it: without it, a load that no variant mix can carry drives the
// price up until every request takes the cheapest variant, however little that
// variant is worth over the alternative.
func (fl *fluidSet) use(p float64) float64 {
	t := 0.0
	for k := range fl.alt {
		_, a := fl.pick(k, p)
		t += a
	}
	return t
}

// pick is member k's choice at price p as use makes it: the index of its
// variant in u and a, and that variant's time; -1 and 0 when its alternative
// is worth more or no variant can be made resident.
func (fl *fluidSet) pick(k int, p float64) (int32, float64) {
	lo, hi := fl.off[k], fl.off[k+1]
	best, bj := math.Inf(-1), int32(-1)
	for j := lo; j < hi; j++ {
		if x := fl.u[j] - p*fl.a[j]; x > best {
			best, bj = x, j
		}
	}
	if bj < 0 || fl.alt[k] > best {
		return -1, 0
	}
	return bj, fl.a[bj]
}

// choice is the variant m prefers at price p, argmax_v u_v - p*amort_v among
// those that can be made resident (the first on ties), and its amortised time.
func (d *decisionState) choice(m *member, p float64) (int, float64) {
	ai := d.info(m.r.App)
	best, bv, bc := math.Inf(-1), -1, 0.0
	for vi, u := range m.u {
		if !ai.ok0[vi] {
			continue
		}
		if x := u - p*ai.amort[vi]; x > best {
			best, bv, bc = x, vi, ai.amort[vi]
		}
	}
	return bv, bc
}

// assignMix is the mixing policy's rounding of the price's fluid optimum. When
// requests are valued alike, the time constraint is met exactly by a mix: at the
// price every member is indifferent between its choice just below it (lo: more
// accurate, over the target) and just above it (hi: within it). A share x of
// these marginal members, x = (target - use(hi)) / (use(lo) - use(hi)), gets the
// lo choice and the rest the hi choice; which ones is fixed by a low-discrepancy
// key of the arrival sequence, so a request keeps its side from decision to
// decision and consecutive arrivals alternate. Each member's choice becomes its
// grouping class, and its valuation gets the smallest bonus that makes the choice
// strictly preferred at the price (a tie-breaker, not a change of value: the
// bonus is of the order of the bisection's precision), so that the search runs
// each side's group on its own variant unless deadlines or swaps say otherwise.
// Without a price (time is free) every member takes its best variant.
func (d *decisionState) assignMix(win []int, lo, hi float64) {
	type pick struct{ a, b int }
	picks := make([]pick, len(win))
	var useLo, useHi float64
	for k, i := range win {
		m := &d.members[i]
		a, ca := d.choice(m, lo)
		b, cb := d.choice(m, hi)
		picks[k] = pick{a, b}
		useLo += ca
		useHi += cb
	}
	x := 0.0
	if d.price > 0 && useLo > useHi {
		x = min(1, max(0, (d.target-useHi)/(useLo-useHi)))
	}
	d.mixLo, d.mixX = lo, x
	for k, i := range win {
		m := &d.members[i]
		pref := picks[k].b
		if pick := picks[k]; pick.a != pick.b && mixKey(m.r.Seq) < x {
			pref = pick.a
		}
		if pref < 0 {
			continue
		}
		m.class = pref
		ai := d.info(m.r.App)
		net := m.u[pref] - d.price*ai.amort[pref]
		other := math.Inf(-1)
		for vi, u := range m.u {
			if vi != pref && ai.ok0[vi] {
				other = max(other, u-d.price*ai.amort[vi])
			}
		}
		bonus := 1e-9 * (1 + math.Abs(m.u[pref]))
		if other > net {
			bonus += other - net
		}
		start := len(d.ubuf)
		d.ubuf = append(d.ubuf, m.u...)
		u := d.ubuf[start:len(d.ubuf):len(d.ubuf)]
		u[pref] += bonus
		m.u = u
	}
}

// mixPref is the variant assignMix's rule gives a member outside the window
// (the same rule, with the window's price and share).
func (d *decisionState) mixPref(m *member) int {
	b, _ := d.choice(m, d.price)
	if d.mixX > 0 && mixKey(m.r.Seq) < d.mixX {
		if a, _ := d.choice(m, d.mixLo); a >= 0 {
			return a
		}
	}
	return b
}

// mixKey is a low-discrepancy key in [0, 1) of an arrival sequence number (the
// golden-ratio Weyl sequence).
func mixKey(seq uint64) float64 {
	const phi = 0.6180339887498949
	_, f := math.Modf(float64(seq%(1<<40)) * phi)
	return f
}

// Amortised is v's best time per request over batch sizes 1..maxBatch: the
// smallest LatencyAt(b)/b. (Not always the largest batch: a measured profile may
// get slower per sample past some size.)
func Amortised(v *Variant, maxBatch int) time.Duration {
	best := v.LatencyAt(1)
	for b := 2; b <= maxBatch; b++ {
		if c := v.LatencyAt(b) / time.Duration(b); c < best {
			best = c
		}
	}
	return best
}

// CheapestAmortised is the per-request time of a's cheapest variant at its best
// batch size: the fastest a queue of a's requests can be drained by a model.
func CheapestAmortised(a *App) time.Duration {
	c := time.Duration(math.MaxInt64)
	for _, v := range a.Variants {
		c = min(c, Amortised(v, v.MaxBatch()))
	}
	return c
}

// targetUtilisation is the share of the engine's batched throughput a plan may
// count on; the rest absorbs partial batches and swaps.
const targetUtilisation = 1.0

func newDecisionState(s *Snapshot, w view, maxBatch int) *decisionState {
	return &decisionState{s: s, w: w, maxBatch: maxBatch, res0: newResSet(s), apps: make(map[*App]*appInfo, len(s.Apps))}
}

func (d *decisionState) info(a *App) *appInfo {
	if a == d.lastApp {
		return d.lastInfo
	}
	ai, ok := d.apps[a]
	if !ok {
		n := len(a.Variants)
		ai = &appInfo{cost0: make([]time.Duration, n), ok0: make([]bool, n),
			lat1: make([]time.Duration, n), profiled: make([]float64, n), amort: make([]float64, n), fastest: -1,
			na: a.ExpectedNoAnswer(nil)}
		for i, v := range a.Variants {
			c, _, ok := d.res0.cost(v)
			ai.cost0[i], ai.ok0[i] = c, ok
			ai.lat1[i] = v.LatencyAt(1)
			if ai.fastest < 0 || ai.lat1[i] < ai.fastest {
				ai.fastest = ai.lat1[i]
			}
			ai.profiled[i] = v.ProfiledUtility
			ai.amort[i] = Amortised(v, d.capOf(v)).Seconds()
		}
		cheapest := time.Duration(-1)
		for i, ok := range ai.ok0 {
			if c := time.Duration(ai.amort[i] * float64(time.Second)); ok && (cheapest < 0 || c < cheapest) {
				cheapest = c
			}
		}
		ai.shedCost = max(time.Duration(float64(cheapest)*shedHeadroom), 1)
		d.peekOption(a, ai)
		d.apps[a] = ai
	}
	d.lastApp, d.lastInfo = a, ai
	return ai
}

// shrunk is (1-shrink)*u + shrink*profiled, in d.ubuf (appending never changes
// what earlier slices hold).
func (d *decisionState) shrunk(u, profiled []float64) []float64 {
	start := len(d.ubuf)
	for i, x := range u {
		d.ubuf = append(d.ubuf, shrinkTo(x, profiled[i], d.shrink))
	}
	return d.ubuf[start:len(d.ubuf):len(d.ubuf)]
}

// shrinkTo is a data-aware value u shrunk toward the profiled one by weight
// shrink (Options.Shrink): (1-shrink)*u + shrink*profiled.
func shrinkTo(u, profiled, shrink float64) float64 { return (1-shrink)*u + shrink*profiled }

// prepass turns the queue into members. It answers at once, for every queued
// request: expired when past its hard stop (ReasonPastHardStop) or when no variant
// can even fit (ReasonNoVariantFits); when no variant started now could meet the
// deadline, degraded if the estimate is worth more than any late run
// (ReasonNoVariantInTime), expired if nothing is worth anything (ReasonNotWorth).
// skip, if not nil, excludes requests already answered. It is O(n * variants).
func (d *decisionState) prepass(skip map[*Request]bool) {
	q := d.s.Queue
	if d.members == nil {
		d.members = make([]member, 0, len(q))
	}
	d.members = d.members[:0]
	d.ubuf = d.ubuf[:0]
	d.skip = skip
	// With requests beyond a prefix that the estimate answers
	// (searching.pendingBeyond), merged in Seq order, as the whole queue's.
	b := d.beyond
	for i := 0; i < len(q) || len(b) > 0; {
		if len(b) > 0 && (i == len(q) || b[0].Seq < q[i].Seq) {
			d.prepassOne(b[0], skip, true)
			b = b[1:]
			continue
		}
		d.prepassOne(q[i], skip, false)
		i++
	}
}

// prepassOne is the prepass for r: a verdict, or a member. A request beyond
// the prefix that gets no verdict is left out (it cannot happen: bounded
// passes only requests the estimate answers, whose deadlines are past every
// variant's batch-1 latency and swap).
func (d *decisionState) prepassOne(r *Request, skip map[*Request]bool, beyond bool) {
	if skip != nil && skip[r] {
		return
	}
	d.admits++
	d.members = append(d.members, member{})
	if v, answered := d.admit(r, &d.members[len(d.members)-1]); answered {
		d.members = d.members[:len(d.members)-1]
		d.verdicts = append(d.verdicts, v)
	} else if beyond {
		d.members = d.members[:len(d.members)-1]
	}
}

// admit is the prepass for one request: its verdict when it is answered at
// once (answered true), otherwise its member, written to m (zero on entry).
func (d *decisionState) admit(r *Request, m *member) (v Verdict, answered bool) {
	if r.First != nil {
		// Requests back from a first pass are decided apart (decideSecond);
		// one that reaches here, its application no longer peeked, gets its
		// first answer.
		return answerFirst(r), true
	}
	ai := d.info(r.App)
	dl := r.Deadline.Sub(d.s.Now)
	budget := r.Budget()
	// As Hopeless, in time.Time: dl+budget in a Duration wraps negative for a
	// deadline more than about 146 years away, which read as past its hard stop.
	if !d.s.Now.Add(ai.fastest).Before(r.HardStop()) {
		return Verdict{Request: r, Outcome: Expired, Reason: ReasonPastHardStop}, true
	}
	*m = member{r: r, dl: dl, budget: budget, class: -1, na: ai.na}
	if d.w.dataAware {
		m.na = r.NoAnswerUtility
		m.u = r.ExpUtility
		if d.shrink > 0 {
			m.u = d.shrunk(r.ExpUtility, ai.profiled)
		}
	} else {
		m.u = ai.profiled
	}
	if d.w.byClass {
		m.class = r.Class
	}
	onTime, feasible := false, 0
	bestLate, sum := math.Inf(-1), 0.0
	for i := range m.u {
		if !ai.ok0[i] {
			continue
		}
		feasible++
		fin := ai.cost0[i] + ai.lat1[i]
		u := m.late(i, fin)
		sum += u - m.na
		if fin <= dl {
			onTime = true
		} else if u > bestLate {
			bestLate = u
		}
	}
	switch {
	case feasible == 0:
		return Verdict{Request: r, Outcome: Expired, Reason: ReasonNoVariantFits}, true
	case d.answersFromEstimate(r, ai):
		return Verdict{Request: r, Outcome: Degraded, Reason: ReasonEstimateWorthMore}, true
	case !onTime && d.w.degrade(r) && r.DegradedUtility >= bestLate && r.DegradedUtility >= m.na:
		return Verdict{Request: r, Outcome: Degraded, Reason: ReasonNoVariantInTime}, true
	case !onTime && bestLate <= m.na:
		return Verdict{Request: r, Outcome: Expired, Reason: ReasonNotWorth}, true
	}
	d.setAlt(m)
	rem := max(dl, ai.fastest)
	m.pri = sum / float64(feasible) / rem.Seconds()
	if d.w.dataAware {
		// The peek's bonus values the search's choice of variant only: the
		// verdicts, the alternative and the priority above are as without a
		// peek, which the long-queue bounds (bounded.go) count on.
		m.u = d.withPeek(m.u, ai, r)
	}
	return Verdict{}, false
}

// answersFromEstimate reports whether the prepass answers r from its estimate
// because that is worth more than any model (ReasonEstimateWorthMore): the
// view does so (Options.EstimateAnswers) and may degrade r, and
// estimateAnswers, the test admission makes with the policy's EstimateRule
// (estimaterule.go), says so with this decision's resident-able variants. It
// reads no time: a request it passes over at admission it passes over here
// (for the same variants).
func (d *decisionState) answersFromEstimate(r *Request, ai *appInfo) bool {
	if !d.w.estimateAnswers || !d.w.degrade(r) || !estimateCandidate(r) {
		return false
	}
	if ai.mix == nil || ai.mix.mix != r.Mix {
		ai.mix = newMixValues(r.App, r.Mix, ai.ok0)
	}
	return estimateWorthMore(r, ai.ok0, ai.mix, d.shrink)
}

// setAlt sets m.alt from m.u and m.na: no answer, or for a view that degrades,
// the degraded answer. In the search the degraded answer is worth no more than
// the worst variant that can be made resident, on time: the planner may shed a
// request onto its estimate to save others, but never prefers the estimate to
// a model result.
func (d *decisionState) setAlt(m *member) {
	m.alt = m.na
	if !d.w.degrade(m.r) {
		return
	}
	ai := d.info(m.r.App)
	minU := math.Inf(1)
	for i, u := range m.u {
		if ai.ok0[i] {
			minU = min(minU, u)
		}
	}
	m.alt = max(m.na, min(m.r.DegradedUtility, minU))
}

// higher orders members by priority, then arrival.
func higher(a, b *member) bool {
	if a.pri != b.pri {
		return a.pri > b.pri
	}
	return a.r.Seq < b.r.Seq
}

// minHeap of member indexes by priority (lowest on top), for top-W selection.
type minHeap struct {
	idx []int
	ms  []member
}

func (h *minHeap) Len() int           { return len(h.idx) }
func (h *minHeap) Less(i, j int) bool { return higher(&h.ms[h.idx[j]], &h.ms[h.idx[i]]) }
func (h *minHeap) Swap(i, j int)      { h.idx[i], h.idx[j] = h.idx[j], h.idx[i] }
func (h *minHeap) Push(x any)         { h.idx = append(h.idx, x.(int)) }
func (h *minHeap) Pop() any {
	x := h.idx[len(h.idx)-1]
	h.idx = h.idx[:len(h.idx)-1]
	return x
}

// window returns the indexes (into members) of the w highest-priority members,
// highest first. It is O(n log w).
func (d *decisionState) window(w int) []int {
	n := len(d.members)
	if n <= w {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		slices.SortFunc(idx, func(a, b int) int { return d.cmp(a, b) })
		if d.bound != nil && n > 0 {
			if n < w {
				d.bound.lacked() // the window would take requests after the prefix
			} else {
				d.bound.took(d.members[idx[n-1]].pri)
			}
		}
		return idx
	}
	h := &minHeap{idx: make([]int, 0, w+1), ms: d.members}
	for i := range d.members {
		if len(h.idx) < w {
			heap.Push(h, i)
			continue
		}
		if higher(&d.members[i], &d.members[h.idx[0]]) {
			h.idx[0] = i
			heap.Fix(h, 0)
		}
	}
	idx := h.idx
	slices.SortFunc(idx, func(a, b int) int { return d.cmp(a, b) })
	if d.bound != nil {
		d.bound.took(d.members[idx[len(idx)-1]].pri)
	}
	return idx
}

func (d *decisionState) cmp(a, b int) int {
	switch {
	case higher(&d.members[a], &d.members[b]):
		return -1
	case higher(&d.members[b], &d.members[a]):
		return 1
	}
	return 0
}

// capOf is the largest batch v may run under the options.
func (d *decisionState) capOf(v *Variant) int { return max(1, min(d.maxBatch, v.MaxBatch())) }

// runValue is the value of members run back to back on v, in chunks of at most
// capOf(v), compute starting at t (after the swap); it returns the value and the
// time the last chunk ends.
func (d *decisionState) runValue(ms []*member, vi int, v *Variant, t time.Duration) (float64, time.Duration) {
	c := d.capOf(v)
	val := 0.0
	for i := 0; i < len(ms); i += c {
		j := min(i+c, len(ms))
		t += v.LatencyAt(j - i)
		for _, m := range ms[i:j] {
			val += m.value(vi, t)
		}
	}
	if d.price > 0 && len(ms) > 0 {
		val -= d.price * float64(len(ms)) * d.info(ms[0].r.App).amort[vi]
	}
	return val, t
}

// answeredBeyond reports whether r is one of the requests beyond a prefix that
// the prepass answers from the estimate (d.beyond, in Seq order).
func (d *decisionState) answeredBeyond(r *Request) bool {
	return queued(d.beyond, r)
}
