package scheduler

import (
	"container/heap"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
)

// The cascade policy is the per-request alternative a user would try before a
// data-aware scheduler: run every request on the application's cheapest variant
// and escalate it to a better one when the cheap answer's top-class probability
// is below a threshold chosen on the validation split. It needs two things the
// other policies do not:
//
//   - a second pass. A first-pass batch carries Batch.EscalateBelow; the caller
//     answers the requests whose answer is confident enough and puts the others
//     back in the queue with Request.First set. The policy then runs them on the
//     better variant, or answers them with their first pass (Outcome FirstAnswer)
//     when a second pass cannot finish by the deadline.
//   - each application's operating curve on the validation split
//     (CascadeConfig, BuildCascadeCurve), which the caller measures once by
//     running the two variants there.
//
// For these reasons it is built with NewCascade and not registered by name: a
// caller that does not implement the second pass would silently answer every
// request with the cheap variant.

// CascadePoint is one operating point of a two-variant confidence cascade on the
// validation split.
type CascadePoint struct {
	// Threshold: a first-pass answer whose top-class probability is below it is
	// escalated.
	Threshold float64 `json:"threshold"`
	// Escalated is the share of validation samples escalated at this threshold and
	// Utility the mean utility of the cascade's answers there.
	Escalated float64 `json:"escalated"`
	Utility   float64 `json:"utility"`
}

// CascadeConfig is one application's cascade: the variants of the two passes
// (indexes into App.Variants) and the operating curve.
type CascadeConfig struct {
	Cheap, Better int
	// Curve is from BuildCascadeCurve: escalated share and utility both
	// increasing. Empty means never escalate.
	Curve []CascadePoint
	// ClassGain[k][y], when set (CascadeFromOutputs), is what escalating at
	// Curve[k]'s threshold adds to the mean utility of the validation samples
	// of true class y (0 at the first point): the peek's bonus under a
	// request's class estimate (peek.go).
	ClassGain [][]float64 `json:",omitempty"`
	// ClassEscalated[k][y], when set (CascadeFromOutputs), is the share of
	// the validation samples of true class y that escalating at Curve[k]'s
	// threshold escalates (0 at the first point): the peek prices its second
	// opinions at the share the recent arrivals' class mix escalates, not the
	// validation split's (peek.go, escalatedShare).
	ClassEscalated [][]float64 `json:",omitempty"`
}

// BuildCascadeCurve computes the cascade's Pareto curve from validation samples:
// conf[i] is the cheap variant's top-class probability on sample i, uCheap[i] and
// uBetter[i] the utility of the cheap and the better variant's answers on it. For
// every distinct threshold it measures the share escalated and the mean utility,
// and keeps the points that no threshold escalating fewer samples beats; the
// first escalates nothing.
func BuildCascadeCurve(conf, uCheap, uBetter []float64) ([]CascadePoint, error) {
	n := len(conf)
	if n == 0 || len(uCheap) != n || len(uBetter) != n {
		return nil, fmt.Errorf("scheduler: cascade curve: %d confidences, %d and %d utilities", n, len(uCheap), len(uBetter))
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case conf[a] < conf[b]:
			return -1
		case conf[a] > conf[b]:
			return 1
		}
		return 0
	})
	sum := 0.0
	for _, u := range uCheap {
		sum += u
	}
	fn := float64(n)
	out := []CascadePoint{{Threshold: conf[idx[0]], Escalated: 0, Utility: sum / fn}}
	for k := 0; k < n; {
		// Escalate every sample with the k-th smallest confidence (ties together).
		c := conf[idx[k]]
		for k < n && conf[idx[k]] == c {
			sum += uBetter[idx[k]] - uCheap[idx[k]]
			k++
		}
		// Escalating every sample: just above the largest confidence (finite,
		// so that the curve can be written as JSON).
		th := math.Nextafter(c, math.Inf(1))
		if k < n {
			th = conf[idx[k]]
		}
		p := CascadePoint{Threshold: th, Escalated: float64(k) / fn, Utility: sum / fn}
		if p.Utility > out[len(out)-1].Utility+1e-12 {
			out = append(out, p)
		}
	}
	return out, nil
}

// pick returns the threshold of the most useful point whose cost fits budget
// seconds per request (cheap + escalated x better); with budget <= 0 (unknown
// rate) the most useful point, and when nothing fits the first.
func (c *CascadeConfig) pick(budget, cheap, better float64) float64 {
	if len(c.Curve) == 0 {
		return 0
	}
	best := c.Curve[0]
	for _, p := range c.Curve {
		if budget > 0 && cheap+p.Escalated*better > budget {
			break
		}
		best = p
	}
	return best.Threshold
}

// NewCascade makes the cascade policy with each application's configuration;
// an application without one runs everything on its most accurate variant.
func NewCascade(o Options, cfg map[string]CascadeConfig) (Policy, error) {
	o = o.withDefaults()
	for app, c := range cfg {
		if c.Cheap < 0 || c.Better < 0 {
			return nil, fmt.Errorf("scheduler: cascade for %s: variant indexes %d, %d", app, c.Cheap, c.Better)
		}
	}
	return &cascade{o: o, cfg: cfg, rates: map[*App]*RateWindow{}, idx: cascadeIndex{ix: queueIndex{deadline: true}}}, nil
}

type cascade struct {
	o      Options
	cfg    map[string]CascadeConfig
	maxSeq uint64
	rates  map[*App]*RateWindow
	// apps are the applications of the last decision's snapshot (a request
	// of another one needs a rate window).
	apps map[string]*App
	// thresholds chosen at the last decision, for tests and reports.
	last map[string]float64
	// idx keeps a long queue between decisions for bounded decisions
	// (cascade_bounded.go); wholeQueue turns them off and makes thresholds
	// read the whole queue (tests: the policy as it was).
	idx         cascadeIndex
	wholeQueue  bool
	boundedHits int
}

func (p *cascade) Name() string { return "cascade" }

// variants returns a's cheap and better variants and its configuration.
func (p *cascade) variants(a *App) (cheap, better *Variant, c CascadeConfig) {
	c, ok := p.cfg[a.Name]
	if !ok || c.Cheap >= len(a.Variants) || c.Better >= len(a.Variants) {
		c = CascadeConfig{Cheap: a.DefaultVariant, Better: a.DefaultVariant}
	}
	return a.Variants[c.Cheap], a.Variants[c.Better], c
}

// thresholds chooses each queued application's threshold from the measured
// arrival rates: the engine's time is shared among applications in proportion to
// what their requests cost on the cheap variant, and each takes the most useful
// point of its curve that fits its share.
//
// The queue is in Seq order, so the requests that arrived since the last
// decision (Seq above maxSeq) are its tail, and only the tail is read: every
// other request's application has a rate window since the decision it first
// came to, unless the applications changed (a reload re-prepares the queue
// with the new ones), when the whole queue is read.
//
// With wholeQueue (tests) it reads the whole queue every time, as it used to.
func (p *cascade) thresholds(now time.Time, s *Snapshot) map[*App]float64 {
	q := s.Queue
	added := map[*App]float64{}
	newest := p.maxSeq
	start := len(q)
	for start > 0 && (p.wholeQueue || q[start-1].Seq > p.maxSeq) {
		start--
	}
	for _, r := range q[start:] {
		if r.Seq > p.maxSeq && r.First == nil {
			added[r.App]++
			newest = max(newest, r.Seq)
		}
	}
	p.maxSeq = newest
	if p.wholeQueue || p.apps == nil || !sameApps(p.apps, s.Apps) {
		start = 0
		p.apps = maps.Clone(s.Apps)
		for a := range p.rates {
			if s.Apps[a.Name] != a {
				// A version a reload retired: its window would keep adding
				// to the load until it emptied, and its threshold would
				// stand in p.last for the serving version's, by name.
				delete(p.rates, a)
			}
		}
	}
	for _, r := range q[start:] {
		if _, ok := p.rates[r.App]; !ok {
			p.rates[r.App] = &RateWindow{}
		}
	}
	rate := map[*App]float64{}
	load := 0.0 // engine seconds per second on the cheap variants
	for a, m := range p.rates {
		rate[a] = m.Add(now, added[a])
		cheap, _, _ := p.variants(a)
		load += rate[a] * Amortised(cheap, p.capOf(cheap)).Seconds()
	}
	out := make(map[*App]float64, len(p.rates))
	p.last = make(map[string]float64, len(p.rates))
	for a := range p.rates {
		cheap, better, c := p.variants(a)
		if cheap == better {
			continue
		}
		cc := Amortised(cheap, p.capOf(cheap)).Seconds()
		budget := 0.0
		if load > 0 && rate[a] > 0 {
			budget = targetUtilisation * cc / load
		}
		out[a] = c.pick(budget, cc, Amortised(better, p.capOf(better)).Seconds())
		p.last[a.Name] = out[a]
	}
	return out
}

func (p *cascade) capOf(v *Variant) int { return max(1, min(p.o.MaxBatch, v.MaxBatch())) }

// passCost is what the shedding walk charges a request of a for its pass.
func (p *cascade) passCost(a *App, first bool) time.Duration {
	cheap, better, _ := p.variants(a)
	v := better
	if first {
		v = cheap
	}
	return time.Duration(float64(Amortised(v, p.capOf(v))) * shedHeadroom)
}

// cascadeItem is a queued request waiting for its first or second pass.
type cascadeItem struct {
	r      *Request
	v      *Variant
	cost   time.Duration // amortised, with the shedding headroom
	second bool
	// onTimeable: started now alone it would finish by the deadline.
	onTimeable bool
}

// Decide answers what cannot be helped (past the hard stop; a second pass that
// cannot finish in time is answered with the first), sheds by a Moore-Hodgson walk
// in deadline order when the queue holds more engine time than the deadlines
// allow (second passes first, answered with their first pass; then the latest
// first passes, expired), and runs the earliest-deadline request's pass, batched
// with the next requests of the same application and pass in deadline order, as
// many as finish by the head's deadline (all of them, up to the batch cap, when the
// head is late anyway).
//
// From boundedMin queued it decides from the earliest-deadline requests when it
// can prove the decision the same (cascade_bounded.go).
func (p *cascade) Decide(s *Snapshot) Decision {
	th := p.thresholds(s.Now, s)
	indexed := !p.wholeQueue && len(s.Queue) >= boundedMin && !p.idx.heavy
	var d Decision
	ok := false
	if indexed {
		p.idx.sync(p, s)
		d, ok = p.bounded(s, th)
	}
	if !ok {
		d, _ = p.decideOn(s, th)
	}
	p.idx.decided(s, d, indexed)
	return d
}

// decideOn is the decision over s.Queue; short reports whether the head's
// batch took every request of its application and pass that was left (a
// longer queue could have added to it).
func (p *cascade) decideOn(s *Snapshot, th map[*App]float64) (d Decision, short bool) {
	now := s.Now
	swap := map[*Variant]time.Duration{}
	fits := map[*Variant]bool{}
	swapOf := func(v *Variant) (time.Duration, bool) {
		if _, ok := fits[v]; !ok {
			c, ok := SwapCost(s, v)
			swap[v], fits[v] = c, ok
		}
		return swap[v], fits[v]
	}
	// Each application's passes: variants and the cost the shedding walk
	// charges (passCost), once per decision.
	type passes struct {
		cheap, better         *Variant
		cheapCost, betterCost time.Duration
	}
	var last *App
	var ps passes
	of := map[*App]passes{}
	items := make([]cascadeItem, 0, len(s.Queue))
	for _, r := range s.Queue {
		if r.App != last {
			var ok bool
			if ps, ok = of[r.App]; !ok {
				ps.cheap, ps.better, _ = p.variants(r.App)
				ps.cheapCost, ps.betterCost = p.passCost(r.App, true), p.passCost(r.App, false)
				of[r.App] = ps
			}
			last = r.App
		}
		cheap, better := ps.cheap, ps.better
		if r.First != nil {
			sw, ok := swapOf(better)
			if !ok || now.Add(sw+better.LatencyAt(1)).After(r.Deadline) {
				d.Verdicts = append(d.Verdicts, Verdict{Request: r, Outcome: FirstAnswer, Reason: ReasonNoVariantInTime})
				continue
			}
			items = append(items, cascadeItem{r: r, v: better, second: true, onTimeable: true, cost: ps.betterCost})
			continue
		}
		sw, ok := swapOf(cheap)
		switch {
		case !ok:
			d.Verdicts = append(d.Verdicts, Verdict{Request: r, Outcome: Expired, Reason: ReasonNoVariantFits})
			continue
		case !now.Add(sw + cheap.LatencyAt(1)).Before(r.HardStop()):
			d.Verdicts = append(d.Verdicts, Verdict{Request: r, Outcome: Expired, Reason: ReasonPastHardStop})
			continue
		}
		items = append(items, cascadeItem{r: r, v: cheap, onTimeable: !now.Add(sw + cheap.LatencyAt(1)).After(r.Deadline),
			cost: ps.cheapCost})
	}
	slices.SortStableFunc(items, func(a, b cascadeItem) int { return byDeadline(a.r, b.r) })
	items = p.shed(now, items, &d)
	if len(items) == 0 {
		return d, true
	}
	head := items[0]
	sw, _ := swapOf(head.v)
	var rs []*Request
	short = true
	for _, it := range items {
		if it.r.App == head.r.App && it.second == head.second {
			rs = append(rs, it.r)
			if len(rs) == p.capOf(head.v) {
				short = false
				break
			}
		}
	}
	if n := largestFitting(head.v, len(rs), head.r.Deadline.Sub(now)-sw); n > 0 {
		rs = rs[:n]
	} // else the head is late whatever the size: run the whole batch (as edf does)
	full, _ := PlanSwap(s, head.v)
	d.Batch = newBatch(s, head.v, full, rs)
	if !head.second {
		d.Batch.EscalateBelow = th[head.r.App]
	}
	return d, short
}

// shed removes from items (in deadline order) what cannot be on time even at the
// amortised cost: whenever the cumulative cost passes an on-time-able item's
// deadline, the walked prefix gives up a second pass if it has one (answered with
// its first pass), else its latest first pass (expired). It returns the kept items
// in deadline order.
func (p *cascade) shed(now time.Time, items []cascadeItem, d *Decision) []cascadeItem {
	h := &cascadeHeap{items: items}
	var cum time.Duration
	drop := make([]bool, len(items))
	for i := range items {
		cum += items[i].cost
		heap.Push(h, i)
		if !items[i].onTimeable {
			continue
		}
		for now.Add(cum).After(items[i].r.Deadline) && h.Len() > 0 {
			j := heap.Pop(h).(int)
			cum -= items[j].cost
			drop[j] = true
			if items[j].second {
				d.Verdicts = append(d.Verdicts, Verdict{Request: items[j].r, Outcome: FirstAnswer, Reason: ReasonOverload})
			} else {
				d.Verdicts = append(d.Verdicts, Verdict{Request: items[j].r, Outcome: Expired, Reason: ReasonOverload})
			}
			if j == i {
				break
			}
		}
	}
	k := 0
	for i := range items {
		if !drop[i] {
			items[k] = items[i]
			k++
		}
	}
	return items[:k]
}

// cascadeHeap pops second passes first, then the latest deadline.
type cascadeHeap struct {
	idx   []int
	items []cascadeItem
}

func (h *cascadeHeap) Len() int { return len(h.idx) }
func (h *cascadeHeap) Less(i, j int) bool {
	a, b := &h.items[h.idx[i]], &h.items[h.idx[j]]
	if a.second != b.second {
		return a.second
	}
	return byDeadline(a.r, b.r) > 0
}
func (h *cascadeHeap) Swap(i, j int) { h.idx[i], h.idx[j] = h.idx[j], h.idx[i] }
func (h *cascadeHeap) Push(x any)    { h.idx = append(h.idx, x.(int)) }
func (h *cascadeHeap) Pop() any {
	x := h.idx[len(h.idx)-1]
	h.idx = h.idx[:len(h.idx)-1]
	return x
}

// CascadePair returns the variants of a's cascade: the first pass's, o.CascadeFirst's
// variant for a or else the cheapest (smallest amortised time per request at
// batches up to o.MaxBatch), and the most accurate (the application's default
// variant). It fails when o.CascadeFirst names a variant a does not have.
func CascadePair(a *App, o Options) (cheap, better int, err error) {
	o = o.withDefaults()
	if name, ok := o.CascadeFirst[a.Name]; ok {
		i := slices.IndexFunc(a.Variants, func(v *Variant) bool { return v.ID.Variant == name })
		if i < 0 {
			return 0, 0, fmt.Errorf("scheduler: cascade first variant: app %s has no variant %q", a.Name, name)
		}
		return i, a.DefaultVariant, nil
	}
	for i, v := range a.Variants {
		if Amortised(v, o.MaxBatch) < Amortised(a.Variants[cheap], o.MaxBatch) {
			cheap = i
		}
	}
	return cheap, a.DefaultVariant, nil
}

// CascadeFromOutputs builds a's cascade configuration from the two variants'
// class distributions on labelled validation rows (pc from cheap, pb from
// better, labels the true classes).
func CascadeFromOutputs(a *App, cheap, better int, labels []int32, pc, pb [][]float64) (CascadeConfig, error) {
	c := CascadeConfig{Cheap: cheap, Better: better}
	if cheap == better {
		return c, nil
	}
	n := len(labels)
	if len(pc) != n || len(pb) != n {
		return c, fmt.Errorf("scheduler: cascade for %s: %d labels, %d and %d outputs", a.Name, n, len(pc), len(pb))
	}
	conf, uc, ub := make([]float64, n), make([]float64, n), make([]float64, n)
	for i, y := range labels {
		yc := Argmax(pc[i])
		conf[i] = pc[i][yc]
		uc[i] = a.Utility[y][yc]
		ub[i] = a.Utility[y][Argmax(pb[i])]
	}
	var err error
	if c.Curve, err = BuildCascadeCurve(conf, uc, ub); err != nil {
		return c, err
	}
	c.ClassGain, c.ClassEscalated = classGains(c.Curve, a.K, labels, conf, uc, ub)
	return c, nil
}

// classGains is CascadeConfig.ClassGain and ClassEscalated: per point of
// curve and true class, the mean utility escalating the samples below the
// point's threshold adds to the class's samples, and the share of them it
// escalates.
func classGains(curve []CascadePoint, k int, labels []int32, conf, uc, ub []float64) (gain, escalated [][]float64) {
	n := make([]float64, k)
	for _, y := range labels {
		if int(y) < k {
			n[y]++
		}
	}
	gain, escalated = make([][]float64, len(curve)), make([][]float64, len(curve))
	for j, p := range curve {
		g, e := make([]float64, k), make([]float64, k)
		for i, y := range labels {
			if int(y) < k && conf[i] < p.Threshold && j > 0 {
				g[y] += ub[i] - uc[i]
				e[y]++
			}
		}
		for y := range g {
			if n[y] > 0 {
				g[y] /= n[y]
				e[y] /= n[y]
			}
		}
		gain[j], escalated[j] = g, e
	}
	return gain, escalated
}

// Configure sets (or replaces) one application's cascade configuration: a
// reloaded application gets the curve of its new version. Like Decide, it must
// not run concurrently with other calls.
func (p *cascade) Configure(app string, c CascadeConfig) {
	if p.cfg == nil {
		p.cfg = map[string]CascadeConfig{}
	}
	p.cfg[app] = c
	p.idx.valid = false // the passes' costs may have changed
}

// CascadeConfigurer is implemented by the cascade policy (NewCascade).
type CascadeConfigurer interface {
	Configure(app string, c CascadeConfig)
}
