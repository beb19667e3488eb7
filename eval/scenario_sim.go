package eval

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/sneakgate/sneakgate/scheduler"
)

// ScenarioPoint is one simulated run of a scenario: every application's
// periodic streams at one load, one estimator, one policy, one seed.
type ScenarioPoint struct {
	S *CompiledScenario
	// Estimator is the index of the scenario's estimator.
	Estimator int
	Policy    string
	Options   scheduler.Options
	// Load scales every stream's rate so that, with every request on its
	// application's most accurate variant, the engine would be busy this share
	// of the time (CompiledScenario.EngineLoad's best; swaps not counted).
	Load float64
	// Requests is about how many requests arrive (the run lasts Requests over
	// the total rate, at least MinDeadlines of the longest deadline).
	Requests     int
	MinDeadlines float64
	// Seed fixes the streams' phases and jitter, the classes, the flags, the
	// latency jitter and the variants' answers; every policy and every
	// estimator see the same requests and classes for a given seed.
	Seed uint64
	// Jitter, MaxQueue, DegradeRefused, GatewayCost, VerdictCost, GatewayKnown
	// and IngressDelay are as in Point. CountBudget and MemBudget bound
	// residency (the scenario's engine section unless overridden).
	Jitter                   float64
	MaxQueue                 int
	DegradeRefused           bool
	GatewayCost, VerdictCost time.Duration
	GatewayKnown             bool
	IngressDelay             time.Duration
	CountBudget              int
	MemBudget                int64
}

// ScenarioRun is one ScenarioPoint's outcome: Apps[a] application a's metrics,
// All those of every request together (per-class entries named app/class);
// Rates the arrival rates per application, Best and Cheap the engine loads
// (CompiledScenario.EngineLoad) they make, Seconds the span of arrivals.
type ScenarioRun struct {
	Apps        []Metrics
	All         Metrics
	Rates       []float64
	Best, Cheap float64
	Seconds     float64
}

// scenarioReq is one request of a scenario run.
type scenarioReq struct {
	app, y, flag int
	seq          uint64
	arr          time.Time
	r            *scheduler.Request
}

// tally accumulates one application's results.
type tally struct {
	m                        Metrics
	util, deg                float64
	correct                  int
	lat                      []time.Duration
	classN, classOK, classNo []int
	classU                   []float64
}

// ScenarioRates returns every application's arrival rate at load: the
// scenario's streams scaled alike so that EngineLoad's best equals load.
func (c *CompiledScenario) ScenarioRates(load float64, maxBatch int) []float64 {
	base := c.Rates()
	b, _ := c.EngineLoad(base, maxBatch)
	out := make([]float64, len(base))
	for i, r := range base {
		out[i] = r * load / b
	}
	return out
}

// SimulateScenario runs one scenario point. Like Simulate it is deterministic
// but for the measured decision times; it runs every application on one
// engine, with the requests of each device's periodic stream.
func SimulateScenario(pt ScenarioPoint) (ScenarioRun, error) {
	c := pt.S
	if pt.Estimator < 0 || pt.Estimator >= len(c.Estimators) {
		return ScenarioRun{}, fmt.Errorf("eval: scenario %s has no estimator %d", c.Name, pt.Estimator)
	}
	base, gmode := resolvePolicy(pt.Policy)
	if gmode != guardOff || shiftOf(pt.Policy) != shiftOff || base == PolicyCascade ||
		pt.Policy == PolicyClassBased || pt.Policy == PolicyOracle {
		return ScenarioRun{}, fmt.Errorf("eval: a scenario does not run %s (no samples, no engine)", pt.Policy)
	}
	pol, err := scheduler.New(base, pt.Options)
	if err != nil {
		return ScenarioRun{}, err
	}
	if pt.Load <= 0 || pt.Requests <= 0 {
		return ScenarioRun{}, fmt.Errorf("eval: load %v and requests %d must be positive", pt.Load, pt.Requests)
	}
	o := withMaxBatch(pt.Options)
	run := ScenarioRun{Rates: c.ScenarioRates(pt.Load, o.MaxBatch)}
	run.Best, run.Cheap = c.EngineLoad(run.Rates, o.MaxBatch)
	total, longest := 0.0, time.Duration(0)
	for i, r := range run.Rates {
		total += r
		longest = max(longest, c.Deadline[i])
	}
	span := max(float64(pt.Requests)/total, pt.MinDeadlines*longest.Seconds())
	run.Seconds = span

	// The policy's view of every application (with the loop's cost when known),
	// and every variant by ID.
	na := len(c.Sched)
	views := make([]*scheduler.App, na)
	apps := make(map[string]*scheduler.App, na)
	variants := map[scheduler.VariantID]*scheduler.Variant{}
	appOf := map[*scheduler.App]int{}
	for i, a := range c.Sched {
		views[i] = a
		if pt.GatewayKnown && pt.GatewayCost > 0 {
			views[i] = withLoopCost(a, pt.GatewayCost)
		}
		apps[a.Name] = views[i]
		appOf[views[i]] = i
		for _, v := range a.Variants {
			variants[v.ID] = v
		}
	}

	// Arrivals: each device of each application sends every period from a
	// random phase, moved by a uniform jitter; a class from the mix, a flag
	// from the estimator's rates.
	origin := time.Unix(1_700_000_000, 0).UTC()
	arr := rand.New(rand.NewPCG(pt.Seed, 1))
	flags := rand.New(rand.NewPCG(pt.Seed, 3))
	var reqs []scenarioReq
	for i, sa := range c.Apps {
		period := float64(sa.Stream.Devices) / run.Rates[i]
		j := min(sa.Stream.JitterMS/1e3, period/2)
		for range sa.Stream.Devices {
			for t := arr.Float64() * period; t < span; t += period {
				at := t + j*(2*arr.Float64()-1)
				if at < 0 || at >= span {
					continue
				}
				reqs = append(reqs, scenarioReq{app: i, y: drawClass(arr, sa.Mix),
					arr: origin.Add(time.Duration(at * float64(time.Second)))})
			}
		}
	}
	slices.SortStableFunc(reqs, func(a, b scenarioReq) int { return a.arr.Compare(b.arr) })
	for i := range reqs {
		q := &reqs[i]
		q.seq = uint64(i + 1)
		if flags.Float64() < c.Flag[pt.Estimator][q.app][q.y] {
			q.flag = 1
		}
	}
	var placebo *rand.Rand
	if pt.Policy == PolicyPlacebo {
		placebo = rand.New(rand.NewPCG(pt.Seed, 4))
	}
	jit := rand.New(rand.NewPCG(pt.Seed, 2))
	jitter := func(d time.Duration) time.Duration {
		if pt.Jitter <= 0 {
			return d
		}
		return time.Duration(float64(d) * math.Exp(pt.Jitter*jit.NormFloat64()-pt.Jitter*pt.Jitter/2))
	}

	ts := make([]tally, na)
	for i, a := range c.Sched {
		ts[i] = tally{m: Metrics{VariantShare: map[string]float64{}}, classN: make([]int, a.K),
			classOK: make([]int, a.K), classNo: make([]int, a.K), classU: make([]float64, a.K)}
	}
	all := &run.All
	all.VariantShare = map[string]float64{}
	// Warm residency as the gateway starts: every variant, application by
	// application in order, that still fits the budgets.
	resident := map[scheduler.VariantID]time.Time{}
	var used int64
	for _, a := range c.Sched {
		for _, v := range a.Variants {
			if (pt.MemBudget > 0 && used+v.MemBytes > pt.MemBudget) || (pt.CountBudget > 0 && len(resident) >= pt.CountBudget) {
				continue
			}
			resident[v.ID] = origin
			used += v.MemBytes
		}
	}
	byReq := make(map[*scheduler.Request]*scenarioReq, 256)
	var (
		queue     []*scheduler.Request
		busy      bool
		busyUntil time.Time
		inflight  *scheduler.Batch
		wake      time.Time
		next      int
		decideDur time.Duration
		scheduled int
		lastDone  time.Time
	)
	answer := func(q *scenarioReq, yhat int, at time.Time, status string) {
		t := &ts[q.app]
		a := c.Sched[q.app]
		no := 0.0
		if q.y < len(a.NoAnswer) {
			no = a.NoAnswer[q.y]
		}
		u := no
		t.classN[q.y]++
		switch status {
		case "ok", "late", "degraded":
			u = a.Utility[q.y][yhat]
			if status == "late" {
				u = scheduler.Discount(u, no, scheduler.Penalty(at, q.r.Deadline, q.r.Budget()))
			}
			if yhat == q.y {
				t.correct++
				t.classOK[q.y]++
			}
		default:
			t.classNo[q.y]++
		}
		t.classU[q.y] += u
		t.util += u
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
		if at.After(lastDone) {
			lastDone = at
		}
	}
	finish := func(b *scheduler.Batch, at time.Time) {
		v := b.Variant
		ai := appOf[b.Requests[0].App]
		for _, r := range b.Requests {
			q := byReq[r]
			delete(byReq, r)
			status := "ok"
			if at.After(r.Deadline) {
				status = "late"
			}
			answer(q, Predict(c.Eval[ai], q.y, v.Index, pt.Seed, q.seq), at, status)
			ts[ai].m.VariantShare[v.ID.Variant]++
			all.VariantShare[v.ID.String()]++
		}
		resident[v.ID] = at
	}
	decide := func(at time.Time) error {
		s := &scheduler.Snapshot{Now: at, Queue: queue, Apps: apps,
			Engine: scheduler.Engine{Resident: resident, MemBudget: pt.MemBudget, CountBudget: pt.CountBudget}}
		w0 := time.Now()
		d := pol.Decide(s)
		decideDur += time.Since(w0)
		all.Decisions++
		gone := make(map[*scheduler.Request]bool, len(d.Verdicts)+16)
		for _, v := range d.Verdicts {
			q := byReq[v.Request]
			if q == nil || gone[v.Request] {
				return fmt.Errorf("eval: %s answered a request that is not queued (or twice)", pt.Policy)
			}
			gone[v.Request] = true
			delete(byReq, v.Request)
			switch v.Outcome {
			case scheduler.Degraded:
				answer(q, scheduler.Argmax(v.Request.P), at, "degraded")
			case scheduler.Expired:
				answer(q, -1, at, "expired")
			default:
				return fmt.Errorf("eval: %s answered with %v, which a scenario does not run", pt.Policy, v.Outcome)
			}
		}
		scheduled += len(d.Verdicts)
		wake = d.WakeAt
		loopCost := time.Duration(len(d.Verdicts)) * pt.VerdictCost
		if d.Batch == nil && loopCost > 0 {
			busy, inflight, busyUntil = true, nil, at.Add(loopCost)
		}
		if b := d.Batch; b != nil {
			if len(b.Requests) == 0 {
				return fmt.Errorf("eval: %s ran an empty batch", pt.Policy)
			}
			ai, ok := appOf[b.Requests[0].App]
			if !ok || variants[b.Variant.ID] == nil {
				return fmt.Errorf("eval: %s runs unknown %v", pt.Policy, b.Variant.ID)
			}
			for _, r := range b.Requests {
				if gone[r] || byReq[r] == nil || appOf[r.App] != ai {
					return fmt.Errorf("eval: %s batched a request that is not queued or of another application", pt.Policy)
				}
				gone[r] = true
			}
			scheduled += len(b.Requests)
			loopCost += time.Duration(len(b.Requests)) * pt.GatewayCost
			cost := time.Duration(0)
			for _, id := range b.Evict {
				v := variants[id]
				if _, ok := resident[id]; !ok || v == nil {
					return fmt.Errorf("eval: %s evicts %v, which is not resident", pt.Policy, id)
				}
				delete(resident, id)
				cost += jitter(v.Unload)
			}
			for _, id := range b.Load {
				v := variants[id]
				if v == nil {
					return fmt.Errorf("eval: %s loads unknown %v", pt.Policy, id)
				}
				resident[id] = at
				cost += jitter(v.Load)
				all.Swaps++
				ts[appOf[apps[id.App]]].m.Swaps++
			}
			all.SwapTime += cost.Seconds()
			if _, ok := resident[b.Variant.ID]; !ok {
				return fmt.Errorf("eval: %s runs %v without loading it", pt.Policy, b.Variant.ID)
			}
			var mem int64
			for id := range resident {
				mem += variants[id].MemBytes
			}
			if (pt.MemBudget > 0 && mem > pt.MemBudget) || (pt.CountBudget > 0 && len(resident) > pt.CountBudget) {
				return fmt.Errorf("eval: %s: residency over budget (%d variants, %d bytes)", pt.Policy, len(resident), mem)
			}
			busy, inflight = true, b
			busyUntil = at.Add(loopCost + cost + jitter(variants[b.Variant.ID].LatencyAt(len(b.Requests))))
			all.Batches++
			all.MeanBatch += float64(len(b.Requests))
			ts[ai].m.Batches++
			ts[ai].m.MeanBatch += float64(len(b.Requests))
		}
		if len(gone) > 0 {
			queue = slices.DeleteFunc(queue, func(r *scheduler.Request) bool { return gone[r] })
		}
		return nil
	}

	now := origin
	spins := 0
	for next < len(reqs) || busy || len(queue) > 0 {
		ev := time.Time{}
		if busy {
			ev = busyUntil
		}
		if next < len(reqs) && (ev.IsZero() || reqs[next].arr.Add(pt.IngressDelay).Before(ev)) {
			ev = reqs[next].arr.Add(pt.IngressDelay)
		}
		if !busy && !wake.IsZero() && len(queue) > 0 {
			w := wake
			if w.Before(now) {
				w = now
			}
			if ev.IsZero() || w.Before(ev) {
				ev = w
			}
		}
		if ev.IsZero() {
			if len(queue) > 0 {
				return run, fmt.Errorf("%w (%s, %d queued)", ErrStuck, pt.Policy, len(queue))
			}
			break
		}
		if ev.After(now) {
			now, spins = ev, 0
		} else if spins++; spins > 100 {
			return run, fmt.Errorf("%w (%s decides again and again at %v)", ErrStuck, pt.Policy, now.Sub(origin))
		}
		if busy && !busyUntil.After(now) {
			busy = false
			if inflight != nil {
				finish(inflight, busyUntil)
			}
			inflight = nil
		}
		for next < len(reqs) && !reqs[next].arr.Add(pt.IngressDelay).After(now) {
			q := &reqs[next]
			next++
			est := c.Est[pt.Estimator][q.app][q.flag]
			if placebo != nil {
				// The estimate of another request of the same application.
				sa := c.Apps[q.app]
				y := drawClass(placebo, sa.Mix)
				f := 0
				if placebo.Float64() < c.Flag[pt.Estimator][q.app][y] {
					f = 1
				}
				est = c.Est[pt.Estimator][q.app][f]
			}
			if pt.MaxQueue > 0 && len(queue) >= pt.MaxQueue {
				q.r = &scheduler.Request{Deadline: q.arr.Add(c.Deadline[q.app])}
				if pt.DegradeRefused {
					answer(q, scheduler.Argmax(est), now, "degraded")
				} else {
					answer(q, -1, now, "rejected")
				}
				continue
			}
			q.r = scheduler.Prepare(views[q.app], q.seq, q.arr, q.arr.Add(c.Deadline[q.app]), est, q)
			byReq[q.r] = q
			queue = append(queue, q.r)
		}
		if !busy && len(queue) > 0 {
			if err := decide(now); err != nil {
				return run, err
			}
		}
	}

	// Per application, then every request together.
	all.Requests = len(reqs)
	var util, deg float64
	var correct int
	var lat []time.Duration
	for i, a := range c.Sched {
		t := &ts[i]
		m := &t.m
		m.Requests = t.classSum()
		util, deg, correct = util+t.util, deg+t.deg, correct+t.correct
		lat = append(lat, t.lat...)
		all.OK, all.Late, all.Degraded = all.OK+m.OK, all.Late+m.Late, all.Degraded+m.Degraded
		all.Expired, all.Rejected = all.Expired+m.Expired, all.Rejected+m.Rejected
		t.finish(a, c.Apps[i].Classes, span)
		for _, cm := range m.PerClass {
			cm.Class = a.Name + "/" + cm.Class
			all.PerClass = append(all.PerClass, cm)
		}
		run.Apps = append(run.Apps, *m)
	}
	n := float64(max(1, all.Requests))
	all.Utility, all.UtilityDegraded, all.Accuracy = util/n, deg/n, float64(correct)/n
	all.Met, all.InTime = float64(all.OK)/n, float64(all.OK+all.Degraded)/n
	if all.Batches > 0 {
		all.MeanBatch /= float64(all.Batches)
	}
	answered := float64(all.OK + all.Late)
	for k, x := range all.VariantShare {
		all.VariantShare[k] = x / max(answered, 1)
	}
	if all.Decisions > 0 {
		all.DecisionUS = float64(decideDur.Microseconds()) / float64(all.Decisions)
	}
	if scheduled > 0 {
		all.DecisionUSPerReq = float64(decideDur.Nanoseconds()) / 1e3 / float64(scheduled)
	}
	all.P99LatencyMS = p99(lat)
	all.SimSeconds = lastDone.Sub(origin).Seconds()
	if got := all.OK + all.Late + all.Degraded + all.Expired + all.Rejected; got != all.Requests {
		return run, fmt.Errorf("eval: %s answered %d of %d requests", pt.Policy, got, all.Requests)
	}
	return run, nil
}

func (t *tally) classSum() int {
	n := 0
	for _, x := range t.classN {
		n += x
	}
	return n
}

// finish turns t's sums into t.m's means.
func (t *tally) finish(a *scheduler.App, names []string, span float64) {
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
	for y := range a.K {
		cm := ClassMetrics{Class: names[y], N: t.classN[y]}
		if f := float64(t.classN[y]); f > 0 {
			cm.Recall, cm.Utility, cm.NoAnswer = float64(t.classOK[y])/f, t.classU[y]/f, float64(t.classNo[y])/f
		}
		m.PerClass = append(m.PerClass, cm)
	}
}

func p99(lat []time.Duration) float64 {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return float64(lat[len(lat)*99/100]) / 1e6
}

// drawClass draws a class from the distribution mix.
func drawClass(rng *rand.Rand, mix []float64) int {
	u := rng.Float64()
	for y, p := range mix {
		if u < p {
			return y
		}
		u -= p
	}
	return len(mix) - 1
}
