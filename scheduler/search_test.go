package scheduler

import (
	"github.com/sneakgate/sneakgate/sneakpeek"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestPriorityHandComputed(t *testing.T) {
	a := testApp() // cheap: 1ms + 0.1ms/b, big: 5ms + 1ms/b, both resident
	p := []float64{0.2, 0.8}
	relaxed := req(a, 1, t0, ms(100), p)
	tight := req(a, 2, t0, ms(5), p)
	d := newDecisionState(snap(t0, a, relaxed, tight), view{dataAware: true, byClass: true}, 32)
	d.prepass(nil)
	if len(d.members) != 2 {
		t.Fatalf("members %d, verdicts %+v", len(d.members), d.verdicts)
	}
	uCheap := 0.2*0.99 + 0.8*0.5 // 0.598
	uBig := 0.97
	// Both variants on time: P = mean(U) / 0.1 s.
	if want := (uCheap + uBig) / 2 / 0.1; !near(d.members[0].pri, want) {
		t.Errorf("relaxed priority %v, want %v", d.members[0].pri, want)
	}
	// Budget 5ms: big finishes at 6ms, 1ms late: x = 0.2, S = 0.008/(0.008+0.512).
	keep := 1 - 0.008/(0.008+0.512)
	if want := (uCheap + uBig*keep) / 2 / 0.005; !near(d.members[1].pri, want) {
		t.Errorf("tight priority %v, want %v", d.members[1].pri, want)
	}
	// Oblivious: the profiled utilities (prior 0.9/0.1) for both requests.
	d = newDecisionState(snap(t0, a, relaxed), view{}, 32)
	d.prepass(nil)
	pc, pb := 0.9*0.99+0.1*0.5, 0.97
	if want := (pc + pb) / 2 / 0.1; !near(d.members[0].pri, want) {
		t.Errorf("oblivious priority %v, want %v", d.members[0].pri, want)
	}
}

// TestFallDetectionExample follows docs/method.md's fall-detection example: three
// variants whose profiled accuracies lie within 0.01 of each other differ by more
// than 0.2 for a request the estimate flags as a likely fall.
func TestFallDetectionExample(t *testing.T) {
	prior := []float64{0.97, 0.03} // no fall, fall
	recalls := [][]float64{{0.9955, 0.70}, {0.990, 0.90}, {0.9875, 0.99}}
	// Profiled: 0.97*r0 + 0.03*r1 = 0.986635, 0.98730, 0.987575.
	wantA := []float64{0.986635, 0.9873, 0.987575}
	// Flagged as a likely fall, p = (0.1, 0.9): 0.1*r0 + 0.9*r1 = 0.72955, 0.909, 0.98975.
	wantP := []float64{0.72955, 0.909, 0.98975}
	p := []float64{0.1, 0.9}
	for i, r := range recalls {
		if got := sneakpeek.ExpectedAccuracy(prior, r); !near(got, wantA[i]) {
			t.Errorf("variant %d: profiled %v, want %v", i, got, wantA[i])
		}
		if got := sneakpeek.ExpectedAccuracy(p, r); !near(got, wantP[i]) {
			t.Errorf("variant %d: data-aware %v, want %v", i, got, wantP[i])
		}
	}
}

func TestGroupingByClassAndApp(t *testing.T) {
	a := testApp()
	var q []*Request
	for i := range 6 {
		p := []float64{0.9, 0.1}
		if i%3 == 0 {
			p = []float64{0.2, 0.8}
		}
		q = append(q, req(a, uint64(i), t0, ms(200), p))
	}
	for _, c := range []struct {
		w      view
		groups int
	}{{view{dataAware: true, byClass: true}, 2}, {view{}, 1}} {
		d := newDecisionState(snap(t0, a, q...), c.w, 32)
		d.prepass(nil)
		gs := d.groupWindow(d.window(16))
		if len(gs) != c.groups {
			t.Fatalf("%+v: %d groups, want %d", c.w, len(gs), c.groups)
		}
		n := 0
		for _, g := range gs {
			n += len(g.ms)
			for _, m := range g.ms {
				if m.class != g.class {
					t.Errorf("member of class %d in group %d", m.class, g.class)
				}
			}
		}
		if n != 6 {
			t.Errorf("%d members grouped, want 6", n)
		}
	}
}

// TestDataAwareVariantChoice: with a tight budget only one request fits on the
// big variant on time; sneakpeek spends it on the likely positive, for which the
// cheap variant is poor, while oblivious cannot tell the two apart.
func TestDataAwareVariantChoice(t *testing.T) {
	a := testApp()
	neg := req(a, 1, t0, ms(60), []float64{0.999, 0.001})
	pos := req(a, 2, t0, ms(60), []float64{0.1, 0.9})
	d := mustPolicy(t, "sneakpeek", Options{}).Decide(snap(t0, a, neg, pos))
	if d.Batch == nil {
		t.Fatal("no batch")
	}
	// Either order is fine as long as the positive runs on big: look at the plan.
	st := newDecisionState(snap(t0, a, neg, pos), view{dataAware: true, byClass: true}, 32)
	st.prepass(nil)
	g := newGrouped(st, st.groupWindow(st.window(16)))
	best := g.search(3)
	for k, gi := range best.order {
		grp := g.gs[gi]
		want := "cheap"
		if grp.class == 1 {
			want = "big"
		}
		if got := grp.app.Variants[best.vars[k]].ID.Variant; got != want {
			t.Errorf("class %d group on %s, want %s", grp.class, got, want)
		}
	}
	ob := mustPolicy(t, "oblivious", Options{}).Decide(snap(t0, a, neg, pos))
	if ob.Batch == nil || ob.Batch.Variant.ID.Variant != "big" || len(ob.Batch.Requests) != 2 {
		t.Errorf("oblivious should batch both on big: %+v", ob.Batch)
	}
}

func TestDegradedAndExpiredPaths(t *testing.T) {
	a := testApp()
	now := t0.Add(ms(9.5)) // deadline t0+10ms: even cheap (1.1ms) is late; hard stop t0+20ms
	withEst := req(a, 1, t0, ms(10), []float64{0.05, 0.95})
	d := mustPolicy(t, "sneakpeek", Options{}).Decide(snap(now, a, withEst))
	// Degraded utility 0.95 beats cheap late: 0.5*0.95+0.99*0.05 discounted.
	if len(d.Verdicts) != 1 || d.Verdicts[0].Outcome != Degraded || d.Batch != nil {
		t.Fatalf("sneakpeek: %+v", d)
	}
	// Oblivious ignores the estimate: it runs late rather than degrading.
	d = mustPolicy(t, "oblivious", Options{}).Decide(snap(now, a, withEst))
	if len(d.Verdicts) != 0 || d.Batch == nil {
		t.Fatalf("oblivious: %+v", d)
	}
	// A late run whose utility matrix makes it worth less than nothing expires.
	b := testApp()
	b.Utility = [][]float64{{-0.1, -1}, {-1, -0.1}}
	for _, v := range b.Variants {
		v.ProfiledUtility = ExpectedUtility(b.Prior, v.Cond, b.Utility)
	}
	r := req(b, 3, t0, ms(10), nil)
	d = mustPolicy(t, "oblivious", Options{}).Decide(snap(now, b, r))
	if len(d.Verdicts) != 1 || d.Verdicts[0].Outcome != Expired || d.Verdicts[0].Reason != ReasonNotWorth {
		t.Fatalf("not worth: %+v", d)
	}
	// Past the hard stop: expired by every policy.
	for _, name := range []string{"sneakpeek", "oblivious", "bruteforce", "fixed-batch"} {
		d = mustPolicy(t, name, Options{}).Decide(snap(t0.Add(ms(19.5)), a, withEst))
		if len(d.Verdicts) != 1 || d.Verdicts[0].Reason != ReasonPastHardStop {
			t.Errorf("%s: %+v", name, d.Verdicts)
		}
	}
}

// TestFirstBatchDegradesLateMembers: the plan's first run holds a request that
// would be late; it is answered degraded and the rest still runs.
func TestFirstBatchDegradesLateMembers(t *testing.T) {
	a := testApp()
	now := t0
	var q []*Request
	// 20 positives due in 25ms: big runs 20 in 25ms (5+20), so all fit; one more
	// with a 7ms budget cannot wait behind them and cannot run big in time.
	for i := range 20 {
		q = append(q, req(a, uint64(i), now, ms(25), []float64{0.1, 0.9}))
	}
	d := mustPolicy(t, "sneakpeek", Options{}).Decide(snap(now, a, q...))
	if d.Batch == nil || len(d.Batch.Requests) != 20 || d.Batch.Variant.ID.Variant != "big" {
		t.Fatalf("batch %+v", d.Batch)
	}
	if !d.Batch.Finish.Equal(now.Add(ms(25))) || !near(d.Batch.Utility, 20*0.97) {
		t.Errorf("finish %v utility %v", d.Batch.Finish.Sub(now), d.Batch.Utility)
	}
}

func TestSwapPlanning(t *testing.T) {
	a := testApp()
	s := snap(t0, a)
	s.Engine.Resident = map[VariantID]time.Time{a.Variants[0].ID: t0}
	s.Engine.MemBudget = 450 // cheap (100) + big (400) do not fit together
	rs := newResSet(s)
	c, ev, ok := rs.cost(a.Variants[1])
	if !ok || ev != 1 || c != ms(1)+ms(20) {
		t.Fatalf("cost %v evict %d ok %v", c, ev, ok)
	}
	var next resSet
	if c, _ := rs.use(&next, a.Variants[1]); c != ms(21) || len(next.ents) != 1 || next.mem != 400 {
		t.Fatalf("after use: %v %+v", c, next)
	}
	// Back to cheap: evict big (2ms) + load cheap (5ms).
	var back resSet
	if c, _ := next.use(&back, a.Variants[0]); c != ms(7) {
		t.Errorf("swap back %v", c)
	}
	// A positive with room for the swap: sneakpeek plans the eviction and load.
	s.Queue = []*Request{req(a, 1, t0, ms(100), []float64{0.05, 0.95})}
	d := mustPolicy(t, "sneakpeek", Options{}).Decide(s)
	b := d.Batch
	if b == nil || b.Variant != a.Variants[1] || len(b.Evict) != 1 || b.Evict[0] != a.Variants[0].ID ||
		len(b.Load) != 1 || !b.Finish.Equal(t0.Add(ms(21+6))) {
		t.Fatalf("batch %+v", b)
	}
	// With no time for the swap it stays on the resident cheap variant.
	s.Queue = []*Request{req(a, 1, t0, ms(10), []float64{0.05, 0.95})}
	if b := mustPolicy(t, "sneakpeek", Options{}).Decide(s).Batch; b == nil || b.Variant != a.Variants[0] || len(b.Load) != 0 {
		t.Fatalf("tight batch %+v", b)
	}
}

func TestFixedBatchDelaysThenRuns(t *testing.T) {
	a := testApp()
	p := mustPolicy(t, "fixed-batch", Options{MaxBatch: 4, MaxQueueDelay: ms(2)})
	q := []*Request{req(a, 1, t0, ms(100), nil), req(a, 2, t0.Add(ms(0.5)), ms(100), nil)}
	d := p.Decide(snap(t0.Add(ms(1)), a, q...))
	if d.Batch != nil || !d.WakeAt.Equal(t0.Add(ms(2))) {
		t.Fatalf("before the delay: %+v", d)
	}
	d = p.Decide(snap(t0.Add(ms(2)), a, q...))
	if d.Batch == nil || len(d.Batch.Requests) != 2 || d.Batch.Variant.ID.Variant != "big" {
		t.Fatalf("at the delay: %+v", d.Batch)
	}
	for i := 3; i <= 6; i++ {
		q = append(q, req(a, uint64(i), t0.Add(ms(0.9)), ms(100), nil))
	}
	d = p.Decide(snap(t0.Add(ms(1)), a, q...))
	if d.Batch == nil || len(d.Batch.Requests) != 4 || d.Batch.Requests[0].Seq != 1 {
		t.Fatalf("full batch: %+v", d.Batch)
	}
}

// TestFixedBatchDelayCountsFromQueue: fixed-batch's MaxQueueDelay counts from
// when a request entered the queue (Request.Queued), not from its arrival, so the
// time admission and the journal took does not use up the batcher's wait; with
// Queued zero it counts from the arrival. The indexed and the full decision agree.
func TestFixedBatchDelayCountsFromQueue(t *testing.T) {
	a := testApp()
	for _, full := range []bool{false, true} {
		p := mustPolicy(t, "fixed-batch", Options{MaxBatch: 4, MaxQueueDelay: ms(2)}).(fullDecider)
		decide := p.Decide
		if full {
			decide = p.decideFull
		}
		r := req(a, 1, t0, ms(100), nil)
		r.Queued = t0.Add(ms(1.5))
		if d := decide(snap(t0.Add(ms(2)), a, r)); d.Batch != nil || !d.WakeAt.Equal(t0.Add(ms(3.5))) {
			t.Fatalf("full=%v, 2 ms after arrival, 0.5 ms after queueing: batch %+v wake %v, want none until %v", full, d.Batch, d.WakeAt, t0.Add(ms(3.5)))
		}
		if d := decide(snap(t0.Add(ms(3.5)), a, r)); d.Batch == nil || len(d.Batch.Requests) != 1 {
			t.Fatalf("full=%v, 2 ms after queueing: %+v, want the batch", full, d.Batch)
		}
		r.Queued = time.Time{}
		if d := decide(snap(t0.Add(ms(2)), a, r)); d.Batch == nil {
			t.Fatalf("full=%v, Queued zero, 2 ms after arrival: no batch", full)
		}
	}
}

// randomWindow builds a tiny queue with mixed classes and budgets, and a random
// residency of one variant.
func randomWindow(rng *rand.Rand, a *App, n int) *Snapshot {
	var q []*Request
	for i := range n {
		pos := rng.Float64()
		p := []float64{1 - pos, pos}
		budget := ms(4 + rng.Float64()*30)
		arr := t0.Add(-ms(rng.Float64() * 3))
		q = append(q, req(a, uint64(i), arr, budget, p))
	}
	s := snap(t0, a, q...)
	s.Engine.Resident = map[VariantID]time.Time{a.Variants[rng.IntN(2)].ID: t0}
	s.Engine.CountBudget = 1
	return s
}

func planValue(t *testing.T, s *Snapshot, brute bool) float64 {
	t.Helper()
	d := newDecisionState(s, view{dataAware: true, byClass: true}, 32)
	d.prepass(nil)
	win := d.window(MaxBruteWindow)
	var runs []run
	if brute {
		runs = d.bruteforce(win)
	} else {
		g := newGrouped(d, d.groupWindow(win))
		b := g.search(3)
		runs = d.refine(cloneRuns(g.toRuns(b.order, b.vars)))
	}
	var ra, rb resSet
	return d.evalRuns(runs, &ra, &rb)
}

// TestSearchNearBruteForce: on tiny windows the grouped search's plan (with the
// member-level refinement of refine.go) is within 1% of the exhaustive optimum on
// average (the issue asks for 2%; measured 0.08%), and never better (the optimum
// is an upper bound under the same value model).
func TestSearchNearBruteForce(t *testing.T) {
	a := testApp()
	rng := rand.New(rand.NewPCG(1, 2))
	var sumG, sumB float64
	for range 300 {
		s := randomWindow(rng, a, 2+rng.IntN(4))
		g, b := planValue(t, s, false), planValue(t, s, true)
		if g > b+1e-9 {
			t.Fatalf("grouped %v beats the optimum %v", g, b)
		}
		sumG += g
		sumB += b
	}
	if ratio := sumG / sumB; ratio < 0.99 {
		t.Errorf("grouped/optimum = %.4f, want >= 0.99", ratio)
	} else {
		t.Logf("grouped/optimum = %.4f", ratio)
	}
}

// TestDecisionsAreConsistent: for every policy and random queues, no request is
// both batched and answered, batches are single-variant and within caps, and
// every answered request came from the queue.
func TestDecisionsAreConsistent(t *testing.T) {
	a, b := testApp(), testApp()
	b.Name = "other"
	for _, v := range b.Variants {
		v.ID.App = "other"
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for _, name := range Names() {
		p := mustPolicy(t, name, Options{MaxBatch: 8})
		for range 200 {
			var q []*Request
			for i := range rng.IntN(60) {
				app := a
				if rng.IntN(3) == 0 {
					app = b
				}
				pos := rng.Float64()
				q = append(q, req(app, uint64(i), t0.Add(-ms(rng.Float64()*40)), ms(2+rng.Float64()*40), []float64{1 - pos, pos}))
			}
			s := snap(t0, a, q...)
			s.Apps[b.Name] = b
			for _, v := range b.Variants {
				s.Engine.Resident[v.ID] = t0
			}
			s.Engine.CountBudget = 3
			d := p.Decide(s)
			validFor(t, name, d, q) // every request queued, answered or batched once
			if d.Batch != nil {
				if len(d.Batch.Requests) == 0 || len(d.Batch.Requests) > 8 {
					t.Fatalf("%s: batch size %d", name, len(d.Batch.Requests))
				}
				for _, r := range d.Batch.Requests {
					if r.App.Name != d.Batch.Variant.ID.App {
						t.Fatalf("%s: batch member of another application", name)
					}
				}
			} else if len(q) > len(d.Verdicts) && d.WakeAt.IsZero() && name != "fixed-batch" {
				t.Fatalf("%s: %d queued, no batch, no wake-up", name, len(q)-len(d.Verdicts))
			}
			if math.IsNaN(func() float64 {
				if d.Batch == nil {
					return 0
				}
				return d.Batch.Utility
			}()) {
				t.Fatalf("%s: NaN utility", name)
			}
		}
	}
}

// TestBruteForceCutsChangeNothing: bruteforce's branch and bound cuts (with a
// bound that counts the price of engine time) return the plan the search
// without cuts returns, the first best in its order, on random windows of
// two applications with random prices, deadlines and residency.
func TestBruteForceCutsChangeNothing(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 8))
	a := benchApp(rng)
	b := otherApp(rng)
	apps := map[string]*App{a.Name: a, b.Name: b}
	defer func() { bruteNoCut = false }()
	cut := 0
	for trial := range trials(300) { // 60 under -race: see trials
		now := t0.Add(time.Second)
		var q []*Request
		for i := range 8 {
			app := a
			if rng.IntN(3) == 0 {
				app = b
			}
			q = append(q, benchRequest(rng, app, uint64(i), now.Add(-ms(rng.Float64()*5)), 8+rng.IntN(400), rng.IntN(2) == 0))
		}
		s := &Snapshot{Now: now, Queue: q, Apps: apps, Engine: Engine{CountBudget: 2,
			Resident: map[VariantID]time.Time{a.Variants[rng.IntN(5)].ID: now}}}
		price := 0.0
		if trial%4 != 0 {
			price = rng.Float64() * 2000 * float64(trial%3)
		}
		plan := func(noCut bool) ([]run, float64) {
			bruteNoCut = noCut
			d := newDecisionState(s, view{dataAware: true}, 32)
			d.prepass(nil)
			d.price = price
			runs := d.bruteforce(d.window(MaxBruteWindow))
			var ra, rb resSet
			return runs, d.evalRuns(runs, &ra, &rb)
		}
		got, gv := plan(false)
		want, wv := plan(true)
		if len(got) != len(want) || gv != wv {
			t.Fatalf("trial %d (price %g): %d runs worth %v with cuts, %d worth %v without", trial, price, len(got), gv, len(want), wv)
		}
		for i := range got {
			if got[i].v != want[i].v || len(got[i].ms) != len(want[i].ms) {
				t.Fatalf("trial %d: run %d differs", trial, i)
			}
			for k := range got[i].ms {
				if got[i].ms[k].r != want[i].ms[k].r {
					t.Fatalf("trial %d: run %d's members differ", trial, i)
				}
			}
		}
		if price > 0 {
			cut++
		}
	}
	t.Logf("%d windows with a price", cut)
}

// TestFixedBatchDecisionReusesScratch: fixed-batch's indexed decision collects
// each application's first requests in scratch kept between decisions, so a
// decision that waits for the batch to fill allocates nothing (the gateway's
// loop makes several per batch), and the batch a decision makes owns its
// requests: the next decisions, which reuse the scratch, leave it as it was.
func TestFixedBatchDecisionReusesScratch(t *testing.T) {
	a := testApp()
	p := mustPolicy(t, "fixed-batch", Options{MaxBatch: 4, MaxQueueDelay: ms(2)})
	q := []*Request{req(a, 1, t0, ms(100), nil), req(a, 2, t0.Add(ms(0.5)), ms(100), nil), req(a, 3, t0.Add(ms(0.6)), ms(100), nil)}
	waiting := snap(t0.Add(ms(1)), a, q...)
	p.Decide(waiting) // the index is built once, on the first decision
	if allocs := testing.AllocsPerRun(100, func() {
		if d := p.Decide(waiting); d.Batch != nil || !d.WakeAt.Equal(t0.Add(ms(2))) {
			t.Fatalf("before the delay: %+v", d)
		}
	}); allocs != 0 {
		t.Errorf("a decision that waits allocated %v times, want 0", allocs)
	}
	d := p.Decide(snap(t0.Add(ms(2)), a, q...))
	if d.Batch == nil || len(d.Batch.Requests) != 3 {
		t.Fatalf("at the delay: %+v", d.Batch)
	}
	got := d.Batch.Requests
	// Other requests through the same scratch: the first batch keeps its own.
	q2 := []*Request{req(a, 7, t0.Add(ms(3)), ms(100), nil), req(a, 8, t0.Add(ms(3)), ms(100), nil)}
	if d2 := p.Decide(snap(t0.Add(ms(3.5)), a, q2...)); d2.Batch != nil {
		t.Fatalf("second queue before its delay: %+v", d2.Batch)
	}
	if d2 := p.Decide(snap(t0.Add(ms(6)), a, q2...)); d2.Batch == nil || len(d2.Batch.Requests) != 2 || d2.Batch.Requests[0].Seq != 7 {
		t.Fatalf("second queue at its delay: %+v", d2.Batch)
	}
	for i, r := range got {
		if r.Seq != uint64(i+1) {
			t.Fatalf("the first batch's requests changed under it: request %d is seq %d, want %d", i, r.Seq, i+1)
		}
	}
}
