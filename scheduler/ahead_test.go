package scheduler

import (
	"slices"
	"testing"
	"time"
)

// aheadFixture is a searching policy with Options.PlanAhead after its first
// decision over a queue of 60 requests of testApp (both variants resident,
// budgets of a second, estimates of both classes), applied through an
// Executor: the decision ran a batch and kept the plan's next ones.
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
	a := testApp()
	apps := map[string]*App{a.Name: a}
	f := &aheadFixture{a: a, apps: apps, now: t0,
		p: mustPolicy(t, name, Options{MaxBatch: 8, Window: 32, PlanAhead: 3}).(*searching),
		x: NewExecutor(Engine{Resident: map[VariantID]time.Time{a.Variants[0].ID: t0, a.Variants[1].ID: t0}}, lookupIn(apps))}
	for i := range 60 {
		p := []float64{0.95, 0.05}
		if i%3 == 0 {
			p = []float64{0.1, 0.9}
		}
		if err := f.x.Add(req(a, uint64(i+1), t0, time.Second, p)); err != nil {
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
		f.kept = append(f.kept, slices.Clone(ab.reqs))
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
		{"request would be late", func(t *testing.T, f *aheadFixture) {
			f.now = t0.Add(time.Second - time.Millisecond)
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
