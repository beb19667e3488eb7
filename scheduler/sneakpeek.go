package scheduler

import (
	"math"
	"slices"
	"time"
)

func init() {
	Register("sneakpeek", func(o Options) (Policy, error) {
		return &searching{name: "sneakpeek", o: o, w: view{dataAware: true, byClass: true, estimateAnswers: o.EstimateAnswers}}, nil
	})
	// sneakpeek grouping requests by the variant each prefers at the price of
	// engine time rather than by estimated class (for the evaluation).
	Register("sneakpeek-pref", func(o Options) (Policy, error) {
		return &searching{name: "sneakpeek-pref", o: o, w: view{dataAware: true, byPref: true, estimateAnswers: o.EstimateAnswers}}, nil
	})
	Register("oblivious", func(o Options) (Policy, error) {
		return &searching{name: "oblivious", o: o, w: view{mix: true}}, nil
	})
	Register("oblivious-switch", func(o Options) (Policy, error) {
		return &searching{name: "oblivious-switch", o: o, w: view{}}, nil
	})
	// Ablations of sneakpeek, for the evaluation: without overload shedding, and
	// without the degraded answer (what cannot be served in time expires).
	Register("sneakpeek-noshed", func(o Options) (Policy, error) {
		return &searching{name: "sneakpeek-noshed", o: o, w: view{dataAware: true, byClass: true, noShed: true, estimateAnswers: o.EstimateAnswers}}, nil
	})
	Register("sneakpeek-nodegrade", func(o Options) (Policy, error) {
		return &searching{name: "sneakpeek-nodegrade", o: o, w: view{dataAware: true, byClass: true, noDegrade: true}}, nil
	})
	Register("bruteforce", func(o Options) (Policy, error) {
		o.Window = min(o.Window, MaxBruteWindow)
		return &searching{name: "bruteforce", o: o, w: view{dataAware: true, estimateAnswers: o.EstimateAnswers}, brute: true}, nil
	})
}

// searching is the grouped-priority scheduler of docs/method.md, and its variants:
//
//   - sneakpeek: data-aware. A request's value on variant m is its expected utility
//     under its SneakPeek estimate (Request.ExpUtility); groups are (application,
//     argmax p); a request that cannot be served in time may be answered with the
//     estimate itself (degraded).
//   - oblivious: the same search and price of engine time with the profiled
//     utility (Variant.ProfiledUtility) for every request and no degraded answer,
//     since it does not look at the estimate. Because every request is valued
//     alike, the price alone cannot tell which requests to send to which variant;
//     the window is split between variants in the proportions of the price's
//     fluid optimum (assignMix in plan.go) and grouped by assigned variant, so it
//     spreads load over variants as sneakpeek can. This is the data-oblivious
//     baseline: what sneakpeek gains over it is what the estimate buys.
//   - oblivious-switch: the oblivious policy before mixing: one group per
//     application, so the whole window runs on one variant and a rising price
//     moves all traffic from one variant to the next at once (kept for
//     comparison with earlier measurements).
//   - bruteforce: the data-aware value model, but an exhaustive search over every
//     ordered partition of a tiny window into batches (reference only).
//
// One decision: a pre-pass over the whole queue answers what can be answered at
// once (past the hard stop; no variant in time and the estimate worth more;
// nothing worth running) and computes each request's priority; the Window
// highest-priority requests are grouped and searched; the first run of the best
// plan becomes the batch, filled up with lower-priority requests of the same groups
// while that raises the plan's value; with Options.PlanAhead the plan's next
// batches are kept for the next decisions to run while they hold (ahead.go).
// Cost: O(n * variants + n log Window) for the queue, plus a search bounded by
// Window and ExhaustiveGroups.
type searching struct {
	name  string
	o     Options
	w     view
	brute bool
	// buf is the members slice kept between decisions to spare the allocation;
	// ubuf likewise for shrunk utilities.
	buf  []member
	ubuf []float64
	// arrivals measures the arrival rate from the snapshots' new requests.
	arrivals rateMeter
	// rule is the test of Options.EstimateAnswers the decisions publish for
	// admission (Decision.Answers, estimaterule.go).
	rule *EstimateRule
	// estNext is the lowest Seq noteEstimateAnswers has not read, and estPending
	// the requests it found queued that the estimate answers (in Seq order):
	// those admission did not test (before the first rule, a request
	// recovered or prepared again after a reload), for a decision over a
	// prefix to answer beyond it.
	estNext    uint64
	estPending []*Request
	// admits counts the requests the prepasses read (admit): the work of the
	// decisions, for the tests.
	admits int
	// recent are the requests that arrived within Options.PriceHorizon (at most
	// maxStream), oldest first; seen is the newest Seq added.
	recent []*Request
	seen   uint64
	sbuf   []member
	shed   shedScratch
	fluid  fluidSet
	// ix (by deadline), hist and bound serve decisions over a prefix of a long
	// queue (bounded.go).
	ix    queueIndex
	hist  workHist
	bound boundInfo
	pull  classPull
	heads []classHead
	// wholeQueue forces every decision over the whole queue (tests);
	// boundedHits counts the decisions made over a prefix, beyondHits those
	// of them whose fill took a request from beyond the prefix (pullFill).
	wholeQueue              bool
	boundedHits, beyondHits int
	// fillAnswered counts fills over a prefix that met a request beyond it
	// the prepass answers (pullFill), each of which sent the decision to a
	// longer prefix.
	fillAnswered int
	// peek holds the applications' peeks (peek.go; ConfigurePeek), peekPrice
	// the price of engine time the peek is priced at: the decisions' prices,
	// smoothed (peekSmoothing).
	peek      map[string]*peekInfo
	peekPrice float64
	// ahead are the batches of the latest plan after the one it ran
	// (Options.PlanAhead, ahead.go); aheadNext is the Seq after the newest
	// request queued when it was made. aheadTaken and aheadDropped count the kept batches the
	// decisions ran and the plans they dropped (for the tests).
	ahead                    []aheadBatch
	aheadNext                uint64
	aheadTaken, aheadDropped int
	// aheadLast are the requests of the batch the last decision made, while
	// a plan is kept.
	aheadLast []*Request
	// freshBuf holds the queue without the requests back from a first pass
	// (decideSecond), kept between decisions.
	freshBuf []*Request
}

// ConfigurePeek sets app's peek from its cascade curve (PeekConfigurer); a
// configuration that cannot escalate (no curve, or the peek variant the most
// accurate) removes it. A policy that is not data-aware ignores it.
func (p *searching) ConfigurePeek(app string, c CascadeConfig) {
	if !p.w.dataAware || p.brute {
		return
	}
	p.dropAhead() // made without this peek (or with the one it replaces)
	pk := newPeekInfo(c)
	if !pk.on() {
		delete(p.peek, app) // (nil map: a no-op) not peeked, or no longer
		return
	}
	if p.peek == nil {
		p.peek = map[string]*peekInfo{}
	}
	p.peek[app] = pk
}

// maxStream bounds the recent arrivals the price is solved over, so that a
// decision's cost stays bounded at any rate.
const maxStream = 256

// noteStream adds the queue's new arrivals to the recent stream and drops those
// past the horizon (Options.PriceHorizon).
func (p *searching) noteStream(s *Snapshot) {
	h := p.o.PriceHorizon
	if h <= 0 {
		return
	}
	start := len(s.Queue)
	for start > 0 && s.Queue[start-1].Seq > p.seen {
		start--
	}
	for _, r := range s.Queue[start:] {
		if r.First == nil {
			p.recent = append(p.recent, r)
		}
		p.seen = max(p.seen, r.Seq)
	}
	drop := 0
	for drop < len(p.recent) && (len(p.recent)-drop > maxStream || s.Now.Sub(p.recent[drop].Arrival) > h) {
		drop++
	}
	if drop > 0 {
		clear(p.recent[:drop])
		p.recent = append(p.recent[:0], p.recent[drop:]...)
	}
}

// streamMembers values the recent arrivals not in the window as members, for
// the price (Options.PriceHorizon); it returns nil when the horizon is off.
func (p *searching) streamMembers(d *decisionState, s *Snapshot, win []int) []member {
	if p.o.PriceHorizon <= 0 {
		return nil
	}
	inWin := make(map[*Request]bool, len(win))
	for _, i := range win {
		inWin[d.members[i].r] = true
	}
	out := p.sbuf[:0]
	for _, r := range p.recent {
		if inWin[r] || s.Apps[r.App.Name] != r.App {
			continue // in the window already, or of a version no longer served
		}
		ai := d.info(r.App)
		m := member{r: r, class: -1, na: ai.na, u: ai.profiled}
		if d.w.dataAware {
			m.na, m.u = r.NoAnswerUtility, r.ExpUtility
			if d.shrink > 0 {
				m.u = d.shrunk(r.ExpUtility, ai.profiled)
			}
		}
		d.setAlt(&m)
		if d.w.dataAware {
			m.u = d.withPeek(m.u, ai, r) // as admit does
		}
		out = append(out, m)
	}
	p.sbuf = out
	return out
}

// rateMeter estimates the arrival rate from the requests that appear in
// successive snapshots (recognised by their increasing Seq), over rateHorizon.
type rateMeter struct {
	maxSeq uint64
	w      RateWindow
}

// observe counts the queue's requests not seen before and returns the arrival
// rate (requests per second) over the horizon, 0 until there is a time span. The
// queue is in arrival order, so only its new tail is scanned.
func (m *rateMeter) observe(now time.Time, q []*Request) float64 {
	newest, added := m.maxSeq, 0
	for i := len(q) - 1; i >= 0 && q[i].Seq > m.maxSeq; i-- {
		added++
		newest = max(newest, q[i].Seq)
	}
	m.maxSeq = newest
	return m.w.Add(now, float64(added))
}

// noteEstimateAnswers adds to estPending the requests queued since the last
// call (Seq from estNext; the queue is in arrival order, so only its new
// tail is read) that the prepass answers from their estimate (admit,
// answersFromEstimate): an arrival admission answered with the policy's
// EstimateRule never gets here, so these are the few it did not test. The
// test reads only the request, its Mix and which variants can be made
// resident, not the time, so a request it passes over on arrival it passes
// over for good while the rule stays the same (Decide reads the whole queue
// again when it changes).
func (p *searching) noteEstimateAnswers(d *decisionState, q []*Request) {
	if !p.w.estimateAnswers {
		return
	}
	start := len(q)
	for start > 0 && q[start-1].Seq >= p.estNext {
		start--
	}
	for _, r := range q[start:] {
		if d.answersFromEstimate(r, d.info(r.App)) {
			p.estPending = append(p.estPending, r)
		}
	}
	if len(q) > 0 {
		p.estNext = max(p.estNext, q[len(q)-1].Seq+1)
	}
}

// clearPending forgets estPending: a decision over the whole queue (or over a
// prefix with the requests beyond it, bounded) answered every one still
// queued; next is the Seq after the newest that decision saw.
func (p *searching) clearPending(next uint64) {
	clear(p.estPending)
	p.estPending = p.estPending[:0]
	p.estNext = max(p.estNext, next)
}

// pendingBeyond returns the requests of estPending still queued in q (a
// search by Seq) and not in the prefix v, in Seq order, and drops from
// estPending those no longer queued. Its cost is what estPending holds times
// log len(q), plus len(v) when estPending is not empty.
func (p *searching) pendingBeyond(q, v []*Request) []*Request {
	if len(p.estPending) == 0 {
		return nil
	}
	live := p.estPending[:0]
	for _, r := range p.estPending {
		if queued(q, r) {
			live = append(live, r)
		}
	}
	clear(p.estPending[len(live):])
	p.estPending = live
	if len(live) == 0 {
		return nil
	}
	in := make(map[*Request]bool, len(live))
	for _, r := range live {
		in[r] = true
	}
	for _, r := range v {
		delete(in, r)
	}
	var out []*Request
	for _, r := range live {
		if in[r] {
			out = append(out, r)
		}
	}
	return out
}

// MaxBruteWindow is the largest window the bruteforce policy searches.
const MaxBruteWindow = 5

func (p *searching) Name() string { return p.name }

// Resync forgets the estimate rule, so that the next decision reads the whole
// queue again for the requests the estimate answers (Resyncer), and the
// bounds of a decision over a prefix, which a decision that panicked midway
// (the gateway's loop recovers it as an invalid decision) may have left on.
func (p *searching) Resync() {
	p.rule = nil
	p.dropAhead()
	p.bound = boundInfo{}
	p.pull.reset(nil, nil)
}

func (p *searching) Decide(s *Snapshot) Decision {
	if rule := p.estimateRule(s); rule != p.rule {
		// A new rule (the first, or after the applications or their
		// resident-able variants changed): read the whole queue again.
		p.rule = rule
		p.clearPending(0)
		p.estNext = 0
		p.dropAhead()
	}
	if b, vs := p.takeAhead(s); b != nil {
		p.arrivals.observe(s.Now, s.Queue)
		d := Decision{Verdicts: vs, Batch: b, Answers: p.rule}
		p.hist.note(d) // (a no-op unless the long queue's summary is kept)
		return d
	}
	// (takeAhead forgot any kept plan.) What the decision keeps is its last
	// decideOn's.
	d := p.decide(s)
	if len(p.ahead) > 0 && len(s.Queue) > 0 {
		p.aheadNext = s.Queue[len(s.Queue)-1].Seq + 1
		if d.Batch != nil {
			p.aheadLast = d.Batch.Requests
		}
	}
	d.Answers = p.rule
	return d
}

func (p *searching) decide(s *Snapshot) Decision {
	arrivals := max(p.arrivals.observe(s.Now, s.Queue), s.Offered)
	p.noteStream(s)
	if len(p.peek) > 0 {
		// Requests back from a first pass first; the rest of the decision
		// sees the others only (peek.go).
		d, fresh, done := p.decideSecond(s)
		if done {
			return d
		}
		s = fresh
	}
	next := uint64(0) // the Seq after the newest queued
	if len(s.Queue) > 0 {
		next = s.Queue[len(s.Queue)-1].Seq + 1
	}
	// Every decision answers what estPending holds still queued: over the
	// whole queue the prepass does, over a prefix pendingBeyond passes it on.
	defer p.clearPending(next)
	if p.wholeQueue || len(s.Queue) < boundedMin {
		p.hist.valid = false
		return p.decideOn(s, arrivals, 0)
	}
	probe := newDecisionState(s, p.w, p.o.MaxBatch)
	probe.shrink = p.o.Shrink
	// Requests the estimate answers get a verdict whatever their deadline,
	// which bounded's verdict bound does not foresee: admission answers them
	// (Decision.Answers), and the few it did not test are kept apart for
	// bounded to answer beyond its prefix (pendingBeyond).
	p.noteEstimateAnswers(probe, s.Queue)
	ctx := newHistCtx(probe, s.Apps)
	if byClass := p.w.dataAware || p.w.byClass; p.hist.byClass != byClass {
		// A data-aware policy, whose stakes differ by class, keeps the
		// largest stake per class (and its index per class: bounded.go).
		p.hist.byClass, p.hist.valid = byClass, false
	}
	if !p.hist.update(s, ctx) {
		p.hist.rebuild(s, ctx)
	}
	if d, ok := p.bounded(s, probe, arrivals); ok {
		p.hist.note(d)
		return d
	}
	d := p.decideOn(s, arrivals, 0)
	p.hist.note(d)
	return d
}

// decideOn makes the decision over s.Queue; arrivals is the measured arrival
// rate, and extra counts queued requests left out of s.Queue (a decision over a
// prefix, bounded.go), for the price's backlog.
//
// beyond (bounded) are queued requests after the prefix that the estimate
// answers: the prepass answers them in Seq order among the prefix's, as a
// decision over the whole queue would; they are not in extra.
func (p *searching) decideOn(s *Snapshot, arrivals float64, extra int, beyond ...*Request) Decision {
	// The decision is the last decideOn's (bounded tries longer prefixes, then
	// the whole queue): a plan kept by an attempt it rejected is not this one's.
	p.dropAhead()
	d := newDecisionState(s, p.w, p.o.MaxBatch)
	d.extraBacklog = extra
	d.beyond = beyond
	if p.bound.on {
		d.bound = &p.bound
	}
	d.members = p.buf[:0]
	d.shrink, d.ubuf = p.o.Shrink, p.ubuf[:0]
	d.shedBuf, d.fluid = &p.shed, &p.fluid
	d.peek, d.peekPrice, d.recent = p.peek, p.peekPrice, p.recent
	defer func() {
		// Drop references to requests: the members never outnumber this
		// snapshot's queue, and earlier decisions cleared what they used.
		clear(d.members[:min(cap(d.members), len(s.Queue))])
		p.buf = d.members[:0]
		p.ubuf = d.ubuf[:0]
		p.admits += d.admits
	}()
	var skip map[*Request]bool
	// Each round either returns a batch or answers at least one request without
	// running it; a few rounds cover the case where the plan's first run is
	// answered entirely by verdicts. Verdicts accumulate across rounds.
	for round := 0; round < 4; round++ {
		if round > 0 {
			skip = make(map[*Request]bool, len(d.verdicts))
			for _, v := range d.verdicts {
				skip[v.Request] = true
			}
		}
		d.prepass(skip)
		if round == 0 && !p.w.noShed {
			d.shed()
		}
		if len(d.members) == 0 {
			if d.bound != nil {
				d.bound.lacked() // members may come after the prefix
			}
			return Decision{Verdicts: d.verdicts}
		}
		before := len(d.verdicts)
		win := d.window(p.o.Window)
		d.stream = p.streamMembers(d, s, win)
		d.setPrice(win, arrivals)
		p.peekPrice += peekSmoothing * (d.price - p.peekPrice)
		runs := p.plan(d, win)
		if len(runs) == 0 {
			break
		}
		runs = d.fill(runs, win)
		if b := d.assemble(runs[0]); b != nil {
			p.keepAhead(d, runs)
			d.escalate(b)
			return Decision{Verdicts: d.verdicts, Batch: b, Gate: d.gate()}
		}
		if len(d.verdicts) == before {
			break
		}
	}
	return Decision{Verdicts: d.verdicts, WakeAt: s.Now, Gate: d.gate()}
}

// plan returns the runs of the best plan for the window (fresh slices the caller
// may modify).
func (p *searching) plan(d *decisionState, win []int) []run {
	var runs []run
	if p.brute {
		runs = d.bruteforce(win)
	} else {
		g := newGrouped(d, d.groupWindow(win))
		best := g.search(p.o.ExhaustiveGroups)
		if math.IsInf(best.value, -1) {
			return nil
		}
		runs = g.toRuns(best.order, best.vars)
	}
	out := make([]run, len(runs))
	for i, r := range runs {
		out[i] = run{ms: slices.Clone(r.ms), vi: r.vi, v: r.v}
	}
	if !p.brute {
		out = d.refine(out)
	}
	return out
}

// fill adds to the first run, up to its batch cap, the highest-priority requests
// outside the window that share a grouping key with it, each only if it would be
// on time and the whole plan's value does not fall.
func (d *decisionState) fill(runs []run, win []int) []run {
	first := &runs[0]
	c := d.capOf(first.v)
	if len(first.ms) >= c {
		return runs
	}
	// A decision over a prefix whose index is kept per class takes the
	// candidates beyond the prefix from it (pullFill); any other must find
	// them all in the prefix.
	pull := d.bound != nil && d.bound.pull != nil && d.w.byClass && !d.w.mix && !d.w.byPref
	if len(d.members) <= len(win) && !pull {
		if d.bound != nil {
			d.bound.lacked() // candidates may come after the prefix
		}
		return runs
	}
	for _, i := range win {
		d.members[i].inWin = true
	}
	app := first.v.ID.App
	var classes []int
	for _, m := range first.ms {
		if !slices.Contains(classes, m.class) {
			classes = append(classes, m.class)
		}
	}
	var cands []*member
	for i := range d.members {
		m := &d.members[i]
		if m.inWin || m.r.App.Name != app {
			continue
		}
		switch {
		case d.w.mix:
			if d.mixPref(m) == first.vi {
				cands = append(cands, m)
			}
		case d.w.byPref:
			if v, _ := d.choice(m, d.price); v == first.vi {
				cands = append(cands, m)
			}
		case slices.Contains(classes, m.class):
			cands = append(cands, m)
		}
	}
	need := c - len(first.ms)
	if pull {
		cands = d.pullFill(cands, d.s.Apps[app], classes, need)
	} else if d.bound != nil && len(cands) < need {
		d.bound.lacked()
	}
	if len(cands) == 0 {
		return runs
	}
	cands = topK(cands, need)
	if d.bound != nil && !pull && len(cands) == need {
		d.bound.took(cands[need-1].pri)
	}
	var ra, rb resSet
	base := d.evalRuns(runs, &ra, &rb)
	cost, _, _ := d.res0.cost(first.v)
	for _, m := range cands {
		fin := cost + first.v.LatencyAt(len(first.ms)+1)
		if fin > m.dl {
			continue
		}
		first.ms = append(first.ms, m)
		if v := d.evalRuns(runs, &ra, &rb); v >= base {
			base = v
			if m.beyond && d.bound != nil {
				d.bound.filledBeyond = true
			}
		} else {
			first.ms = first.ms[:len(first.ms)-1]
		}
		if len(first.ms) >= c {
			break
		}
	}
	return runs
}

// pullFill adds to the fill's candidates from the prefix (cands) those beyond
// it that the fill over the whole queue could take: app's requests of the
// given classes, taken from the index kept per class in deadline order
// (classPull) until the largest priority the rest of the class could have
// (workHist.classPriority) is below the need-th highest among the candidates.
// A request beyond the prefix is a member as in the whole queue's decision:
// its deadline is past every variant's swap and batch-1 latency (no verdict),
// nothing is shed, and it is outside the window (bounded). A request the
// estimate answers (d.beyond) already has its verdict from the prepass and is
// passed over. Should the index break, or another request get a verdict, the
// decision is marked short.
func (d *decisionState) pullFill(cands []*member, app *App, classes []int, need int) []*member {
	pl := d.bound.pull
	if app == nil || need <= 0 {
		d.bound.lacked()
		return cands
	}
	// The need highest priorities so far, the lowest on top.
	top := lessHeap[*member]{less: func(a, b *member) bool { return higher(b, a) }}
	for _, m := range cands {
		top.push(m)
		if top.len() > need {
			top.pop()
		}
	}
	fastest := d.info(app).fastest
	var slab []member
	for _, class := range classes {
		k := pl.key(app, class)
		for i := 0; ; i++ {
			r := pl.at(k, i, need)
			if r == nil {
				if pl.ix.broken {
					d.bound.lacked()
					return cands
				}
				break // none left
			}
			if top.len() == need && pl.hist.classPriority(app, class, d.s.Now, r.Deadline, fastest) < top.top().pri {
				break // neither r nor any after it could be among the need highest
			}
			if d.skip[r] || d.answeredBeyond(r) {
				continue
			}
			if len(slab) == cap(slab) {
				slab = make([]member, 0, max(2*need, 16)) // never grown: the candidates point into it
			}
			slab = append(slab, member{})
			m := &slab[len(slab)-1]
			if _, answered := d.admit(r, m); answered {
				d.bound.lacked() // not as the bounds have it: decide over the whole queue
				d.bound.fillAnswered = true
				return cands
			}
			m.beyond = true
			cands = append(cands, m)
			top.push(m)
			if top.len() > need {
				top.pop()
			}
		}
	}
	return cands
}

// topK returns the k highest-priority of the given members, highest first.
func topK(ms []*member, k int) []*member {
	if len(ms) > 4*k {
		h := lessHeap[*member]{h: make([]*member, 0, k+1), less: func(a, b *member) bool { return higher(b, a) }}
		for _, m := range ms {
			if h.len() < k {
				h.push(m)
				continue
			}
			if higher(m, h.top()) {
				h.pop()
				h.push(m)
			}
		}
		ms = h.h
	}
	slices.SortFunc(ms, func(a, b *member) int {
		switch {
		case higher(a, b):
			return -1
		case higher(b, a):
			return 1
		}
		return 0
	})
	return ms[:min(k, len(ms))]
}

// assemble turns a plan's first run into the batch to run now: its first chunk,
// minus the members whose result would come late and be worth less than their
// alternative (answered degraded or expired instead).
func (d *decisionState) assemble(r run) *Batch {
	c := d.capOf(r.v)
	ms := r.ms[:min(c, len(r.ms))]
	cost, evict, ok := d.res0.cost(r.v)
	if !ok {
		return nil
	}
	fin := cost + r.v.LatencyAt(len(ms))
	keep := make([]*Request, 0, len(ms))
	util := 0.0
	for _, m := range ms {
		lv := m.late(r.vi, fin)
		if fin > m.dl && m.alt > lv {
			if d.w.degrade(m.r) && m.r.DegradedUtility > lv && m.r.DegradedUtility >= m.na {
				d.verdicts = append(d.verdicts, Verdict{Request: m.r, Outcome: Degraded, Reason: ReasonNoVariantInTime})
			} else {
				d.verdicts = append(d.verdicts, Verdict{Request: m.r, Outcome: Expired, Reason: ReasonNotWorth})
			}
			continue
		}
		keep = append(keep, m.r)
		util += lv
	}
	if len(keep) == 0 {
		return nil
	}
	b := &Batch{Variant: r.v, Requests: keep, Start: d.s.Now}
	if !d.res0.has(r.v) {
		for _, v := range d.res0.ents[:evict] {
			b.Evict = append(b.Evict, v.ID)
		}
		b.Load = []VariantID{r.v.ID}
	}
	b.Finish = d.s.Now.Add(cost + r.v.LatencyAt(len(keep)))
	b.Utility = util
	return b
}
