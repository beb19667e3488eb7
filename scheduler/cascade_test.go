package scheduler

import (
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"
)

func TestBuildCascadeCurve(t *testing.T) {
	// Four samples: the cheap variant is wrong on the two least confident, the
	// better one right everywhere but on the most confident.
	conf := []float64{0.9, 0.4, 0.6, 0.95}
	uCheap := []float64{1, 0, 0, 1}
	uBetter := []float64{1, 1, 1, 0}
	c, err := BuildCascadeCurve(conf, uCheap, uBetter)
	if err != nil {
		t.Fatal(err)
	}
	want := []CascadePoint{{0.4, 0, 0.5}, {0.6, 0.25, 0.75}, {0.9, 0.5, 1}}
	if len(c) != len(want) {
		t.Fatalf("curve %+v, want %+v", c, want)
	}
	for i := range want {
		if c[i].Threshold != want[i].Threshold || math.Abs(c[i].Escalated-want[i].Escalated) > 1e-12 ||
			math.Abs(c[i].Utility-want[i].Utility) > 1e-12 {
			t.Errorf("point %d: %+v, want %+v", i, c[i], want[i])
		}
	}
	cc := CascadeConfig{Curve: c}
	if th := cc.pick(0, 1, 1); th != 0.9 {
		t.Errorf("unknown rate: threshold %v, want the most useful 0.9", th)
	}
	if th := cc.pick(1.3, 1, 1); th != 0.6 {
		t.Errorf("budget for a quarter escalated: threshold %v, want 0.6", th)
	}
	if th := cc.pick(0.5, 1, 1); th != 0.4 {
		t.Errorf("no budget: threshold %v, want 0.4 (escalate nothing)", th)
	}
	// Escalating everything is the best point: its threshold is finite.
	c, _ = BuildCascadeCurve([]float64{0.5, 1}, []float64{0, 0}, []float64{1, 1})
	if last := c[len(c)-1]; last.Escalated != 1 || !(last.Threshold > 1) || math.IsInf(last.Threshold, 0) {
		t.Errorf("escalate-all point %+v", last)
	}
	if _, err := BuildCascadeCurve(nil, nil, nil); err == nil {
		t.Error("empty validation accepted")
	}
}

// TestCascadeTwoPasses: a first pass on the cheap variant carries the threshold;
// a request back with its first result runs on the better variant when that
// finishes in time and is answered with its first result when it does not.
func TestCascadeTwoPasses(t *testing.T) {
	a := testApp()
	cfg := map[string]CascadeConfig{"app": {Cheap: 0, Better: 1,
		Curve: []CascadePoint{{0.5, 0, 0.9}, {0.8, 0.3, 0.95}}}}
	p, err := NewCascade(Options{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r1 := req(a, 1, t0, ms(50), nil)
	r2 := req(a, 2, t0, ms(50), nil)
	d := p.Decide(snap(t0, a, r1, r2))
	if d.Batch == nil || d.Batch.Variant != a.Variants[0] || len(d.Batch.Requests) != 2 {
		t.Fatalf("first pass: %+v", d.Batch)
	}
	if d.Batch.EscalateBelow != 0.8 {
		t.Errorf("threshold %v without a measured rate, want the most useful 0.8", d.Batch.EscalateBelow)
	}
	// r1 comes back unsure at t0+2ms: a second pass on big (6 ms) fits its deadline.
	now := t0.Add(ms(2))
	r1.First = &FirstPass{Variant: a.Variants[0], Class: 0, Confidence: 0.6, Done: now}
	d = p.Decide(snap(now, a, r1))
	if d.Batch == nil || d.Batch.Variant != a.Variants[1] || d.Batch.EscalateBelow != 0 || len(d.Verdicts) != 0 {
		t.Fatalf("second pass: %+v", d)
	}
	// At t0+46ms it would not: answered with its first result.
	d = p.Decide(snap(t0.Add(ms(46)), a, r1))
	if d.Batch != nil || len(d.Verdicts) != 1 || d.Verdicts[0].Outcome != FirstAnswer {
		t.Fatalf("late second pass: %+v", d)
	}
	// Overload: 400 first passes due in 20 ms (cheap: 0.16 ms each with headroom,
	// about 120 fit) shed the latest deadlines, expired.
	var q []*Request
	for i := range 400 {
		q = append(q, req(a, uint64(10+i), t0, ms(20+float64(i)/100), nil))
	}
	d = p.Decide(snap(t0, a, q...))
	shed := 0
	for _, v := range d.Verdicts {
		if v.Reason == ReasonOverload && v.Outcome == Expired {
			shed++
		}
	}
	if shed < 250 || shed > 300 {
		t.Errorf("shed %d of 400, want about 280", shed)
	}
	if d.Batch == nil || d.Batch.Requests[0] != q[0] {
		t.Errorf("batch does not start with the earliest deadline: %+v", d.Batch)
	}
}

// TestCascadeBoundedEqualsFull runs the cascade over long queues (above
// boundedMin), deciding from the earliest deadlines where the bounds allow it,
// and the cascade deciding over the whole queue every time, on the same
// snapshots: every decision must be identical, and many must have been made
// from the earliest deadlines. The caller is the Executor, as in the gateway
// and the simulator: decisions applied (now and then one is not), first-pass
// batches that finish a few decisions later and put a share of their requests
// back with First set, two applications with different passes, spells of
// overload (shedding, second passes answered with their first), requests due
// within milliseconds, and a burst that sheds a third of the queue (the next
// decision is made over the whole queue, and the index rebuilt after it).
func TestCascadeBoundedEqualsFull(t *testing.T) {
	t.Parallel() // see "Parallel tests" in harness_test.go
	rng := rand.New(rand.NewPCG(5, 13))
	a := benchApp(rng)
	b := benchApp(rng)
	b.Name = "other"
	for _, v := range b.Variants {
		v.ID.App = "other"
	}
	apps := map[string]*App{a.Name: a, b.Name: b}
	curve := []CascadePoint{{0.5, 0, 0.8}, {0.7, 0.2, 0.85}, {0.9, 0.5, 0.9}}
	cfg := map[string]CascadeConfig{a.Name: {Cheap: 0, Better: 4, Curve: curve}, b.Name: {Cheap: 1, Better: 3, Curve: curve}}
	mk := func(whole bool) *cascade {
		p, err := NewCascade(Options{MaxQueueDelay: time.Nanosecond}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		c := p.(*cascade)
		c.wholeQueue = whole
		return c
	}
	bounded, whole := mk(false), mk(true)
	now := t0.Add(time.Second)
	ex := NewExecutor(Engine{CountBudget: 3, Resident: map[VariantID]time.Time{a.Variants[0].ID: now, a.Variants[4].ID: now}}, lookupIn(apps))
	const n = boundedMin + 2000
	seq := uint64(0)
	arrive := func(k int, overloaded bool) {
		for range k {
			app := a
			if rng.IntN(3) == 0 {
				app = b
			}
			if err := ex.Add(benchRequest(rng, app, seq, now, n, overloaded)); err != nil {
				t.Fatal(err)
			}
			seq++
		}
	}
	// Requests due within a few milliseconds: some are too late for a pass
	// (a verdict) whatever the load.
	tight := func(k int) {
		for range k {
			arr := now.Add(-ms(rng.Float64() * 4))
			r := Prepare(a, seq, arr, now.Add(ms(0.2+rng.Float64()*6)), nil, nil)
			if err := ex.Add(r); err != nil {
				t.Fatal(err)
			}
			seq++
		}
	}
	arrive(n, false)
	type flight struct {
		b    *Batch
		done int
	}
	var flights []flight
	decisions, back := 0, 0
	for step := range 400 {
		s := &Snapshot{Now: now, Queue: ex.Queue(), Apps: apps, Engine: ex.Engine()}
		dw := whole.Decide(s)
		db := bounded.Decide(s)
		if diff := decisionDiff(db, dw); diff != "" || !reflect.DeepEqual(db, dw) {
			t.Fatalf("step %d (%d queued): bounded and whole-queue decisions differ: %s\n%s\n%s", step, len(s.Queue), diff, describe(db), describe(dw))
		}
		decisions++
		if rng.IntN(25) > 0 { // else not applied: the same queue again
			if err := ex.Apply(db, now); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if db.Batch != nil && db.Batch.EscalateBelow > 0 {
				flights = append(flights, flight{db.Batch, step + rng.IntN(4)})
			}
		}
		// First passes that finish: the unsure requests come back.
		flights = slices.DeleteFunc(flights, func(f flight) bool {
			if f.done > step {
				return false
			}
			for _, r := range f.b.Requests {
				if rng.Float64() < 0.4 {
					r.First = &FirstPass{Variant: f.b.Variant, Class: 0, Confidence: 0.3, Done: now}
					if err := ex.Add(r); err != nil {
						t.Fatal(err)
					}
					back++
				}
			}
			return true
		})
		now = now.Add(200 * time.Microsecond)
		overloaded := (step/60)%3 == 2
		k := n - ex.Len()
		if overloaded {
			k = 300
		}
		if step%20 == 10 {
			tight(150)
		}
		if step == 300 { // a burst that sheds a third of the queue at once
			for range 6000 {
				if err := ex.Add(Prepare(a, seq, now, now.Add(ms(20+rng.Float64()*5)), nil, nil)); err != nil {
					t.Fatal(err)
				}
				seq++
			}
		}
		arrive(max(k, 0), overloaded)
	}
	t.Logf("%d decisions, %d from the earliest deadlines, %d rebuilds of the index; %d requests back for a second pass",
		decisions, bounded.boundedHits, bounded.idx.rebuilds, back)
	if bounded.boundedHits < decisions/4 || back < 1000 || bounded.idx.rebuilds < 2 || bounded.idx.rebuilds > 10 {
		t.Fatalf("%d of %d decisions made from the earliest deadlines, %d rebuilds, %d requests back",
			bounded.boundedHits, decisions, bounded.idx.rebuilds, back)
	}
}

// TestCascadeBoundedVerdictBound: the requests after the earliest-deadline
// prefix would fit, but two second passes due a few milliseconds after it
// are too late for their variant, which must be loaded first: the whole-queue
// decision answers them with their first pass, so the prefix must reach them.
func TestCascadeBoundedVerdictBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 1))
	a, b := benchApp(rng), benchApp(rng)
	b.Name = "other"
	for _, v := range b.Variants {
		v.ID.App = "other"
	}
	apps := map[string]*App{a.Name: a, b.Name: b}
	cfg := map[string]CascadeConfig{a.Name: {Cheap: 0, Better: 4}, b.Name: {Cheap: 1, Better: 3}}
	now := t0.Add(time.Second)
	var q []*Request
	seq := uint64(0)
	add := func(app *App, due time.Duration, first *FirstPass) {
		r := Prepare(app, seq, now.Add(-ms(1)), now.Add(due), nil, nil)
		r.First = first
		q = append(q, r)
		seq++
	}
	for i := range 128 {
		add(a, ms(1.9)+time.Duration(i)*time.Microsecond/2, nil)
	}
	for _, due := range []float64{2.5, 4} {
		add(b, ms(due), &FirstPass{Variant: b.Variants[1], Confidence: 0.3, Done: now})
	}
	for i := range boundedMin + 1000 {
		add(a, ms(60)+time.Duration(i)*ms(1), nil)
	}
	s := &Snapshot{Now: now, Queue: q, Apps: apps,
		Engine: Engine{CountBudget: 3, Resident: map[VariantID]time.Time{a.Variants[0].ID: now, a.Variants[4].ID: now}}}
	var ds []Decision
	var c *cascade
	for _, whole := range []bool{true, false} {
		p, err := NewCascade(Options{MaxQueueDelay: time.Nanosecond}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		c = p.(*cascade)
		c.wholeQueue = whole
		ds = append(ds, p.Decide(s))
	}
	if c.boundedHits != 1 {
		t.Errorf("not decided from the earliest deadlines (the test tests nothing)")
	}
	if n := len(ds[0].Verdicts); n != 2 || ds[0].Verdicts[0].Outcome != FirstAnswer {
		t.Fatalf("whole queue: %d verdicts, want the 2 late second passes:\n%s", n, describe(ds[0]))
	}
	if !reflect.DeepEqual(ds[0], ds[1]) {
		t.Fatalf("bounded and whole-queue decisions differ:\n%s\n%s", describe(ds[1]), describe(ds[0]))
	}
}

// TestCascadePairFirst checks the choice of the cascade's variants: the cheapest
// first by default, Options.CascadeFirst's when named, an error for a variant the
// application does not have, and ValidateVariants's checks of the option.
func TestCascadePairFirst(t *testing.T) {
	a := testApp()
	mid := &Variant{
		ID: VariantID{"app", "mid"}, Index: 2, Recall: []float64{0.98, 0.9},
		Cond: [][]float64{{0.98, 0.02}, {0.1, 0.9}}, Latency: linear(ms(2), ms(0.5), 32),
	}
	a.Variants = append(a.Variants, mid)
	cheap, better, err := CascadePair(a, Options{})
	if err != nil || cheap != 0 || better != 1 {
		t.Fatalf("default: cheap %d better %d err %v, want 0 1 nil", cheap, better, err)
	}
	o := Options{CascadeFirst: map[string]string{"app": "mid"}}
	cheap, better, err = CascadePair(a, o)
	if err != nil || cheap != 2 || better != 1 {
		t.Fatalf("CascadeFirst mid: cheap %d better %d err %v, want 2 1 nil", cheap, better, err)
	}
	apps := map[string]*App{"app": a}
	if err := ValidateVariants(apps, o); err != nil {
		t.Fatalf("ValidateVariants(mid): %v", err)
	}
	for _, bad := range []map[string]string{{"app": "nope"}, {"other": "mid"}} {
		o := Options{CascadeFirst: bad}
		if err := ValidateVariants(apps, o); err == nil {
			t.Errorf("ValidateVariants(%v): no error", bad)
		}
	}
	if _, _, err := CascadePair(a, Options{CascadeFirst: map[string]string{"app": "nope"}}); err == nil {
		t.Error("CascadePair with an unknown first variant: no error")
	}
}

// A reload's new version of an application replaces the old one in the
// cascade's arrival rates: the old version's window is dropped, not kept
// adding to the load (and standing in for the new one's threshold by name).
func TestCascadeDropsRetiredVersions(t *testing.T) {
	cfg := map[string]CascadeConfig{"app": {Cheap: 0, Better: 1,
		Curve: []CascadePoint{{0.5, 0, 0.9}, {0.8, 0.3, 0.95}}}}
	p, err := NewCascade(Options{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	old, next := testApp(), testApp()
	p.Decide(snap(t0, old, req(old, 1, t0, ms(50), nil)))
	p.Decide(snap(t0.Add(ms(1)), next, req(next, 2, t0.Add(ms(1)), ms(50), nil)))
	c := p.(*cascade)
	if _, ok := c.rates[old]; ok || len(c.rates) != 1 {
		t.Errorf("rates after the reload: %d windows, the old version's kept %v; want only the new version's", len(c.rates), ok)
	}
}
