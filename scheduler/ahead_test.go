package scheduler

import (
	"slices"
	"testing"
	"time"
)

// aheadFixture is a searching policy with Options.PlanAhead after its first
// decision over a queue of requests of testApp (both variants resident,
// budgets of a second; newAheadFixture: 60, with estimates of both classes),
// applied through an Executor: the decision ran a batch and kept the plan's
// next ones.
type aheadFixture struct {
	p    *searching
	a    *App
	x    *Executor
	apps map[string]*App
	now  time.Time
	kept [][]*Request // the kept batches' requests after the first decision
}

func newAheadFixture(t *testing.T, name string) *aheadFixture {
	t.Helper()
	return newAheadFixtureOf(t, name, 60, func(i int) []float64 {
		if i%3 == 0 {
			return []float64{0.1, 0.9}
		}
		return []float64{0.95, 0.05}
	})
}

// newAheadFixtureOf is the fixture over n requests, request i with estimate
// est(i) (nil: none).
func newAheadFixtureOf(t *testing.T, name string, n int, est func(i int) []float64) *aheadFixture {
	t.Helper()
	a := testApp()
	apps := map[string]*App{a.Name: a}
	f := &aheadFixture{a: a, apps: apps, now: t0,
		p: mustPolicy(t, name, Options{MaxBatch: 8, Window: 32, PlanAhead: 3}).(*searching),
		x: NewExecutor(Engine{Resident: map[VariantID]time.Time{a.Variants[0].ID: t0, a.Variants[1].ID: t0}}, lookupIn(apps))}
	for i := range n {
		if err := f.x.Add(req(a, uint64(i+1), t0, time.Second, est(i))); err != nil {
			t.Fatal(err)
		}
	}
	b := f.decide(t)
	if b == nil {
		t.Fatal("the first decision ran no batch")
	}
	if len(f.p.ahead) == 0 {
		t.Fatal("the first decision kept no batch of its plan")
	}
	for _, ab := range f.p.ahead {
		var rs []*Request
		for _, m := range ab.ms {
			rs = append(rs, m.r)
		}
		f.kept = append(f.kept, rs)
	}
	return f
}

func (f *aheadFixture) snap() *Snapshot {
	return &Snapshot{Now: f.now, Queue: f.x.Queue(), Apps: f.apps, Engine: f.x.Engine()}
}

// decide makes a decision at f.now, applies it and moves f.now to its batch's
// planned end.
func (f *aheadFixture) decide(t *testing.T) *Batch {
	t.Helper()
	d := f.p.Decide(f.snap())
	if err := f.x.Apply(d, f.now); err != nil {
		t.Fatal(err)
	}
	if d.Batch != nil {
		f.now = d.Batch.Finish
	}
	return d.Batch
}

// The decisions after the first run the kept batches in the plan's order,
// without reading the queue, and then plan again.
func TestPlanAheadTakesKeptBatches(t *testing.T) {
	for _, name := range []string{"sneakpeek", "oblivious"} {
		t.Run(name, func(t *testing.T) {
			f := newAheadFixture(t, name)
			for i, want := range f.kept {
				admits := f.p.admits
				b := f.decide(t)
				if b == nil || !slices.Equal(b.Requests, want) || !b.Kept {
					t.Fatalf("decision %d ran %v, want the kept batch %v", i+2, b, want)
				}
				if f.p.admits != admits {
					t.Fatalf("decision %d read %d queued requests; a kept batch reads none", i+2, f.p.admits-admits)
				}
				if b.Utility <= 0 || !b.Finish.After(b.Start) {
					t.Fatalf("decision %d: batch utility %v, start %v, finish %v", i+2, b.Utility, b.Start, b.Finish)
				}
			}
			admits := f.p.admits
			if b := f.decide(t); b == nil || b.Kept {
				t.Fatalf("after the kept batches: %+v, want a batch of a new plan", b)
			}
			if f.p.admits == admits {
				t.Fatal("the decision after the kept batches did not plan again")
			}
			if f.p.aheadTaken != len(f.kept) || f.p.aheadDropped != 0 {
				t.Fatalf("taken %d, dropped %d; want %d, 0", f.p.aheadTaken, f.p.aheadDropped, len(f.kept))
			}
		})
	}
}

// A kept batch that no longer holds is not run: the decision plans again over
// the queue as it is, and the decision is valid.
func TestPlanAheadDropsStalePlans(t *testing.T) {
	cases := []struct {
		name   string
		change func(t *testing.T, f *aheadFixture)
		resync bool // dropped by Resync rather than found stale
	}{
		{"request answered elsewhere", func(t *testing.T, f *aheadFixture) {
			gone := f.kept[0][len(f.kept[0])-1]
			f.x.Replace(func(r *Request) *Request {
				if r == gone {
					return nil
				}
				return r
			})
		}, false},
		{"request prepared again", func(t *testing.T, f *aheadFixture) {
			again := f.kept[0][0]
			f.x.Replace(func(r *Request) *Request {
				if r == again {
					return req(f.a, r.Seq, r.Arrival, r.Deadline.Sub(r.Arrival), r.P)
				}
				return r
			})
		}, false},
		{"requests long past their deadlines", func(t *testing.T, f *aheadFixture) {
			// Late by nine tenths of their budget: each is worth more
			// answered from its estimate, which leaves the batch empty.
			f.now = t0.Add(1900 * time.Millisecond)
		}, false},
		{"new application version", func(t *testing.T, f *aheadFixture) {
			n := *f.a
			f.apps[f.a.Name] = &n
			f.x.Replace(func(r *Request) *Request { return req(&n, r.Seq, r.Arrival, r.Deadline.Sub(r.Arrival), r.P) })
		}, false},
		{"urgent arrival", func(t *testing.T, f *aheadFixture) {
			if err := f.x.Add(req(f.a, 1000, f.now, 10*time.Millisecond, []float64{0.1, 0.9})); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"resync", func(t *testing.T, f *aheadFixture) { f.p.Resync() }, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newAheadFixture(t, "sneakpeek")
			c.change(t, f)
			admits := f.p.admits
			d := f.p.Decide(f.snap())
			if err := f.x.Apply(d, f.now); err != nil {
				t.Fatal(err)
			}
			if f.p.admits == admits {
				t.Fatal("the decision ran a kept batch that no longer holds")
			}
			if f.p.aheadTaken != 0 {
				t.Fatalf("%d kept batches taken", f.p.aheadTaken)
			}
			if want := 1; !c.resync && f.p.aheadDropped != want {
				t.Fatalf("dropped %d plans, want %d", f.p.aheadDropped, want)
			}
		})
	}
}

// A later arrival that is not due before the kept batches end does not stop
// them.
func TestPlanAheadKeepsPlanForLaterArrivals(t *testing.T) {
	f := newAheadFixture(t, "sneakpeek")
	if err := f.x.Add(req(f.a, 1000, f.now, time.Second, []float64{0.1, 0.9})); err != nil {
		t.Fatal(err)
	}
	if b := f.decide(t); b == nil || !slices.Equal(b.Requests, f.kept[0]) || f.p.aheadTaken != 1 {
		t.Fatalf("ran %v (taken %d), want the first kept batch", b, f.p.aheadTaken)
	}
}

// A kept batch whose variant was evicted since the plan loads it again first,
// as its decision would have planned the swap, and counts the load's time.
func TestPlanAheadSwapsBackAnEvictedVariant(t *testing.T) {
	f := newAheadFixture(t, "sneakpeek")
	v := f.p.ahead[0].v
	var keep []VariantID
	for id := range f.x.Resident() {
		if id != v.ID {
			keep = append(keep, id)
		}
	}
	f.x.SetResident(keep, f.now)
	at := f.now
	b := f.decide(t)
	if b == nil || !b.Kept || !slices.Equal(b.Requests, f.kept[0]) {
		t.Fatalf("ran %+v, want the first kept batch", b)
	}
	if !slices.Equal(b.Load, []VariantID{v.ID}) || len(b.Evict) != 0 {
		t.Fatalf("load %v, evict %v; want %v loaded, nothing evicted", b.Load, b.Evict, v.ID)
	}
	if want := at.Add(v.Load + v.LatencyAt(len(b.Requests))); !b.Finish.Equal(want) {
		t.Fatalf("finish %v, want %v (the load, then the batch)", b.Finish.Sub(at), want.Sub(at))
	}
}

// A batch the caller did not run after all and put back (the gateway's
// pipeline does when the running batch fails) was planned before the kept
// batches: they must not run ahead of it. Without the check every one of its
// eight urgent requests expired behind three kept batches.
func TestPlanAheadYieldsToABatchPutBack(t *testing.T) {
	for _, ahead := range []int{0, 3} {
		a := testApp()
		apps := map[string]*App{a.Name: a}
		p := mustPolicy(t, "sneakpeek", Options{MaxBatch: 8, Window: 32, PlanAhead: ahead}).(*searching)
		x := NewExecutor(Engine{Resident: map[VariantID]time.Time{a.Variants[0].ID: t0, a.Variants[1].ID: t0}}, lookupIn(apps))
		for i := range 40 {
			budget := time.Second
			if i < 8 {
				budget = ms(30) // the urgent ones the plan runs first
			}
			if err := x.Add(req(a, uint64(i+1), t0, budget, []float64{0.1, 0.9})); err != nil {
				t.Fatal(err)
			}
		}
		now := t0
		decide := func() Decision {
			d := p.Decide(&Snapshot{Now: now, Queue: x.Queue(), Apps: apps, Engine: x.Engine()})
			if err := x.Apply(d, now); err != nil {
				t.Fatal(err)
			}
			return d
		}
		first := decide().Batch
		if first == nil {
			t.Fatal("no batch")
		}
		// The batch is not run: its requests come back to the queue (unplan).
		for _, r := range first.Requests {
			if err := x.Add(r); err != nil {
				t.Fatal(err)
			}
		}
		back := map[*Request]bool{}
		for _, r := range first.Requests {
			back[r] = true
		}
		late, expired := 0, 0
		for step := 0; x.Len() > 0 && step < 100; step++ {
			d := decide()
			for _, v := range d.Verdicts {
				if back[v.Request] {
					expired++
				}
			}
			if b := d.Batch; b != nil {
				for _, r := range b.Requests {
					if back[r] && b.Finish.After(r.Deadline) {
						late++
					}
				}
				now = b.Finish
			} else if !d.WakeAt.IsZero() && d.WakeAt.After(now) {
				now = d.WakeAt
			}
		}
		t.Logf("PlanAhead %d: of the %d requests put back, %d expired, %d late (kept batches taken %d)", ahead, len(first.Requests), expired, late, p.aheadTaken)
		if expired+late > 0 {
			t.Errorf("PlanAhead %d: %d of the requests put back expired and %d ran late", ahead, expired, late)
		}
	}
}

// A peek configured after a plan was kept drops it: a kept batch on the peek's
// variant would run as a plain batch where a fresh decision makes it a first
// pass.
func TestPlanAheadDroppedByConfigurePeek(t *testing.T) {
	f := newAheadFixtureOf(t, "sneakpeek", 40, func(int) []float64 { return []float64{0.99, 0.01} })
	p := f.p
	curve := []CascadePoint{{0.5, 0, 0.90}, {0.8, 0.3, 0.96}}
	cfg := CascadeConfig{Cheap: 0, Better: 1, Curve: curve}
	p.ConfigurePeek(f.a.Name, cfg)
	// The same decision by a policy that had the peek all along.
	fresh := mustPolicy(t, "sneakpeek", Options{MaxBatch: 8, Window: 32, PlanAhead: 3}).(*searching)
	fresh.ConfigurePeek(f.a.Name, cfg)
	s := f.snap()
	want := fresh.Decide(s)
	got := p.Decide(s)
	t.Logf("kept-plan policy: %v x%d EscalateBelow %v (kept taken %d); policy with the peek: %v x%d EscalateBelow %v",
		got.Batch.Variant.ID, len(got.Batch.Requests), got.Batch.EscalateBelow, p.aheadTaken,
		want.Batch.Variant.ID, len(want.Batch.Requests), want.Batch.EscalateBelow)
	if p.aheadTaken > 0 || got.Batch.EscalateBelow != want.Batch.EscalateBelow {
		t.Fatalf("after ConfigurePeek the decision ran a kept batch planned without the peek (EscalateBelow %v, want %v)", got.Batch.EscalateBelow, want.Batch.EscalateBelow)
	}
}

// A kept batch that would now end a little after its members' deadlines runs
// them at their penalised value, as the decision's own batch would (assemble):
// the plan's lateness is the plan's choice.
func TestPlanAheadRunsSlightlyLateMembers(t *testing.T) {
	f := newAheadFixture(t, "sneakpeek")
	f.now = t0.Add(time.Second - time.Millisecond)
	planned := 0.0
	for _, m := range f.p.ahead[0].ms {
		planned += m.u
	}
	d := f.p.Decide(f.snap())
	if err := f.x.Apply(d, f.now); err != nil {
		t.Fatal(err)
	}
	b := d.Batch
	if b == nil || !b.Kept || !slices.Equal(b.Requests, f.kept[0]) || len(d.Verdicts) != 0 {
		t.Fatalf("ran %+v with %d verdicts, want the whole first kept batch", b, len(d.Verdicts))
	}
	if !b.Finish.After(f.kept[0][0].Deadline) || !(b.Utility < planned && b.Utility > 0.9*planned) {
		t.Fatalf("finish %v after the deadline, utility %v against %v on time; want late and a little less",
			b.Finish.Sub(f.kept[0][0].Deadline), b.Utility, planned)
	}
}

// A kept batch's member past its hard stop by the batch's end is expired
// (past_hard_stop), as the prepass would, even when no alternative is worth
// more than its late result (here: no estimate, so none is).
func TestPlanAheadExpiresPastHardStop(t *testing.T) {
	f := newAheadFixtureOf(t, "sneakpeek", 40, func(int) []float64 { return nil })
	p := f.p
	kept := p.ahead[0]
	// Just before the hard stop (deadline + budget): the batch ends past it.
	f.now = t0.Add(2*time.Second - time.Microsecond)
	d := p.Decide(f.snap())
	if err := f.x.Apply(d, f.now); err != nil {
		t.Fatal(err)
	}
	if p.aheadTaken != 0 && d.Batch != nil && d.Batch.Kept {
		t.Fatalf("ran a kept batch of %d past their hard stop", len(d.Batch.Requests))
	}
	expired := map[*Request]bool{}
	for _, v := range d.Verdicts {
		if v.Outcome == Expired && v.Reason == ReasonPastHardStop {
			expired[v.Request] = true
		}
	}
	for _, m := range kept.ms {
		if !expired[m.r] {
			t.Fatalf("request %d of the kept batch not expired past its hard stop (verdicts %v)", m.r.Seq, d.Verdicts)
		}
	}
}
