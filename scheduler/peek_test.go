package scheduler

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestPeekHull: the gain per second opinion is the slope of the curve's upper
// concave hull, falling with the confidence; the threshold at a price is the
// hull's last point whose gain pays the better variant's time.
func TestPeekHull(t *testing.T) {
	// (escalated, utility): (0, .80) (.1, .86) (.2, .87) (.3, .90) (.5, .91).
	// (.2, .87) is under the chord from (.1, .86) to (.3, .90): not on the hull.
	pk := newPeekInfo(CascadeConfig{Cheap: 0, Better: 1, Curve: []CascadePoint{
		{0.3, 0, 0.80}, {0.5, 0.1, 0.86}, {0.6, 0.2, 0.87}, {0.7, 0.3, 0.90}, {0.9, 0.5, 0.91},
	}})
	want := []float64{0.3, 0.5, 0.7, 0.9}
	if len(pk.hull) != len(want) {
		t.Fatalf("hull %+v, want thresholds %v", pk.hull, want)
	}
	for i, th := range want {
		if pk.hull[i].Threshold != th {
			t.Errorf("hull point %d: threshold %v, want %v", i, pk.hull[i].Threshold, th)
		}
	}
	for _, c := range []struct{ conf, gain float64 }{
		{0.1, 0.6}, {0.4, 0.6}, {0.5, 0.2}, {0.65, 0.2}, {0.8, 0.05}, {0.95, 0},
	} {
		if g := pk.gain(c.conf); math.Abs(g-c.gain) > 1e-9 {
			t.Errorf("gain(%v) = %v, want %v", c.conf, g, c.gain)
		}
	}
	// amort 1 ms: a price of 100/s charges 0.1 a second opinion.
	for _, c := range []struct{ price, th float64 }{
		{0, 0.9}, {40, 0.9}, {100, 0.7}, {300, 0.5}, {700, 0},
	} {
		if th := pk.threshold(c.price, 0.001); th != c.th {
			t.Errorf("price %v: threshold %v, want %v", c.price, th, c.th)
		}
	}
	if (&peekInfo{}).on() || newPeekInfo(CascadeConfig{Cheap: 1, Better: 1}).on() {
		t.Error("a peek without a curve, or onto itself, escalates")
	}
}

// peekPolicy is sneakpeek with app's peek on its cheap variant.
func peekPolicy(t *testing.T, a *App, curve []CascadePoint) Policy {
	t.Helper()
	p := mustPolicy(t, "sneakpeek", Options{Peek: map[string]string{a.Name: "cheap"}})
	p.(PeekConfigurer).ConfigurePeek(a.Name, CascadeConfig{Cheap: 0, Better: 1, Curve: curve})
	return p
}

// TestPeekFirstAndSecondPass: with time free, sneakpeek with a peek runs a
// request on the peek variant as a first pass with the curve's most useful
// threshold; a request back unsure runs on the better variant while it fits
// its deadline and is answered with its first pass when it does not, or when
// its confidence is past every point worth escalating. A policy without the
// peek, and oblivious given one, never set a threshold.
func TestPeekFirstAndSecondPass(t *testing.T) {
	a := testApp()
	curve := []CascadePoint{{0.5, 0, 0.90}, {0.8, 0.3, 0.96}}
	p := peekPolicy(t, a, curve)
	// Class 0, which the cheap variant answers as well as the big one: the
	// search runs it on cheap, and the peek makes that batch a first pass.
	r1 := req(a, 1, t0, ms(50), []float64{1, 0})
	d := p.Decide(snap(t0, a, r1))
	if d.Batch == nil || d.Batch.Variant != a.Variants[0] || d.Batch.EscalateBelow != 0.8 {
		t.Fatalf("first pass: %+v", d.Batch)
	}
	for _, name := range []string{"sneakpeek", "oblivious"} {
		q := mustPolicy(t, name, Options{})
		if name == "oblivious" {
			q.(PeekConfigurer).ConfigurePeek(a.Name, CascadeConfig{Cheap: 0, Better: 1, Curve: curve})
		}
		if d := q.Decide(snap(t0, a, req(a, 1, t0, ms(50), []float64{1, 0}))); d.Batch == nil || d.Batch.EscalateBelow != 0 {
			t.Errorf("%s without a peek: %+v", name, d.Batch)
		}
	}
	now := t0.Add(ms(2))
	r1.First = &FirstPass{Variant: a.Variants[0], Class: 0, Confidence: 0.6, Done: now}
	d = p.Decide(snap(now, a, r1))
	if d.Batch == nil || d.Batch.Variant != a.Variants[1] || d.Batch.EscalateBelow != 0 || len(d.Verdicts) != 0 {
		t.Fatalf("second pass: batch %+v, verdicts %+v", d.Batch, d.Verdicts)
	}
	// Too late for big (6 ms at batch 1) at t0+46ms.
	d = p.Decide(snap(t0.Add(ms(46)), a, r1))
	if d.Batch != nil || len(d.Verdicts) != 1 || d.Verdicts[0].Outcome != FirstAnswer || d.Verdicts[0].Reason != ReasonSecondNotWorth {
		t.Fatalf("late second pass: %+v", d)
	}
	// Sure enough that the curve never escalates it.
	r1.First.Confidence = 0.85
	d = p.Decide(snap(now, a, r1))
	if d.Batch != nil || len(d.Verdicts) != 1 || d.Verdicts[0].Outcome != FirstAnswer {
		t.Fatalf("confident first pass back: %+v", d)
	}
}

// TestPeekFirstUtility: the first answer's value, and no answer's, under its
// distribution when kept, else under its confidence with the rest spread by
// the prior; a verdict on a request with a first pass is FirstAnswer unless no
// answer is worth more under it.
func TestPeekFirstUtility(t *testing.T) {
	a := testApp()
	a.Utility = [][]float64{{1, -1}, {-2, 3}}
	a.NoAnswer = []float64{0, -0.5}
	f := &FirstPass{Class: 1, Confidence: 0.7, Probs: []float64{0.3, 0.7}}
	if u, n := firstUtility(a, f); math.Abs(u-(0.3*-1+0.7*3)) > 1e-12 || math.Abs(n-0.7*-0.5) > 1e-12 {
		t.Errorf("with probs: %v, %v", u, n)
	}
	f.Probs = nil
	if u, _ := firstUtility(a, f); math.Abs(u-(0.7*3+0.3*-1)) > 1e-12 {
		t.Errorf("from the confidence: %v", u)
	}
	r := req(a, 1, t0, ms(10), []float64{0.5, 0.5})
	r.First = f
	vs := []Verdict{{Request: r, Outcome: Degraded}}
	firstAnswers(vs)
	if vs[0].Outcome != FirstAnswer {
		t.Errorf("worth %v: answered %v, want with the first pass", f, vs[0].Outcome)
	}
	// Class 1 at 0.2: 0.2*3 + 0.8*-1 = -0.2 against no answer's 0.2*-0.5 = -0.1.
	r.First = &FirstPass{Class: 1, Confidence: 0.2, Probs: []float64{0.8, 0.2}}
	vs[0].Outcome = Degraded
	firstAnswers(vs)
	if vs[0].Outcome != Expired {
		t.Errorf("a first answer worth less than none: answered %v, want expired", vs[0].Outcome)
	}
}

// TestPeekUnderExecutor drives sneakpeek with a peek through the Executor, as
// the gateway and the simulator do: random arrivals (some overloads) on the
// two-variant app, first passes whose answers below the threshold come back
// with their first result. Every decision must be valid (the Executor checks
// it), every request answered exactly once, and second passes happen and run
// only on the better variant.
func TestPeekUnderExecutor(t *testing.T) {
	a := testApp()
	p := peekPolicy(t, a, []CascadePoint{{0.5, 0, 0.90}, {0.7, 0.2, 0.95}, {0.9, 0.5, 0.97}})
	lookup := func(id VariantID) *Variant {
		for _, v := range a.Variants {
			if v.ID == id {
				return v
			}
		}
		return nil
	}
	x := NewExecutor(Engine{Resident: map[VariantID]time.Time{a.Variants[0].ID: t0, a.Variants[1].ID: t0}}, lookup)
	rng := rand.New(rand.NewPCG(7, 1))
	now := t0
	answered := map[uint64]int{}
	var seq uint64
	seconds, firsts := 0, 0
	type pending struct {
		b   *Batch
		end time.Time
	}
	var running *pending
	for step := 0; step < 4000; step++ {
		now = now.Add(time.Duration(rng.IntN(3000)) * time.Microsecond)
		burst := 1
		if step%500 < 50 {
			burst = 8 // overload spells
		}
		for range burst {
			seq++
			pr := rng.Float64()
			if err := x.Add(req(a, seq, now, ms(10+rng.Float64()*30), []float64{pr, 1 - pr})); err != nil {
				t.Fatal(err)
			}
		}
		if running != nil && !now.Before(running.end) {
			for _, r := range running.b.Requests {
				if running.b.EscalateBelow > 0 && r.First == nil {
					if c := 0.4 + 0.6*rng.Float64(); c < running.b.EscalateBelow {
						r.First = &FirstPass{Variant: running.b.Variant, Class: 0, Confidence: c, Done: running.end}
						if err := x.Add(r); err != nil {
							t.Fatal(err)
						}
						continue
					}
				}
				if r.First != nil {
					if running.b.Variant != a.Variants[1] {
						t.Fatalf("second pass of %d on %v", r.Seq, running.b.Variant.ID)
					}
					seconds++
				}
				answered[r.Seq]++
			}
			running = nil
		}
		if running != nil || x.Len() == 0 {
			continue
		}
		d := p.Decide(&Snapshot{Now: now, Queue: x.Queue(), Apps: map[string]*App{a.Name: a}, Engine: x.Engine()})
		if err := x.Apply(d, now); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		for _, v := range d.Verdicts {
			if v.Outcome == FirstAnswer {
				firsts++
			}
			answered[v.Request.Seq]++
		}
		if d.Batch != nil {
			running = &pending{b: d.Batch, end: d.Batch.Finish}
		}
	}
	for s, n := range answered {
		if n != 1 {
			t.Errorf("request %d answered %d times", s, n)
		}
	}
	t.Logf("%d requests, %d second passes run, %d answered with their first pass", seq, seconds, firsts)
	if seconds == 0 || firsts == 0 {
		t.Errorf("second passes run %d, answered with the first pass %d: want both", seconds, firsts)
	}
}

// TestCascadeClassGains: per point and true class, the mean utility that
// escalating below the point's threshold adds to the class's samples.
func TestCascadeClassGains(t *testing.T) {
	// Class 0: samples at confidence 0.4 (cheap wrong, better right) and 0.9
	// (both right); class 1: 0.6 (cheap wrong, better right) and 0.95 (cheap
	// right, better wrong).
	labels := []int32{0, 0, 1, 1}
	conf := []float64{0.4, 0.9, 0.6, 0.95}
	uc := []float64{0, 1, 0, 1}
	ub := []float64{1, 1, 1, 0}
	curve, err := BuildCascadeCurve(conf, uc, ub)
	if err != nil {
		t.Fatal(err)
	}
	g, e := classGains(curve, 2, labels, conf, uc, ub)
	// Points: escalate nothing (th 0.4), below 0.6 (the 0.4 sample), below 0.9
	// (0.4 and 0.6).
	want := [][]float64{{0, 0}, {0.5, 0}, {0.5, 0.5}}
	if len(g) != len(want) {
		t.Fatalf("gains %v for curve %+v", g, curve)
	}
	for k := range want {
		for y := range want[k] {
			if math.Abs(g[k][y]-want[k][y]) > 1e-12 {
				t.Errorf("point %d class %d: %v, want %v", k, y, g[k][y], want[k][y])
			}
		}
	}
	// Escalated shares: nothing; class 0's 0.4 sample (one of its two);
	// that and class 1's 0.6 sample (one of its two).
	wantE := [][]float64{{0, 0}, {0.5, 0}, {0.5, 0.5}}
	for k := range wantE {
		for y := range wantE[k] {
			if math.Abs(e[k][y]-wantE[k][y]) > 1e-12 {
				t.Errorf("point %d class %d: escalated %v, want %v", k, y, e[k][y], wantE[k][y])
			}
		}
	}
}

// TestPeekTimeFreeRunsStraightOnBetter: with engine time free, a request whose
// peek bonus would cover the whole gap to the better variant runs on the better
// variant directly, not as a first pass (a tie, which went to the peek variant).
func TestPeekTimeFreeRunsStraightOnBetter(t *testing.T) {
	a := testApp()
	curve := []CascadePoint{{0.5, 0, 0.90}, {0.8, 0.3, 0.96}}
	p := mustPolicy(t, "sneakpeek", Options{Peek: map[string]string{a.Name: "cheap"}})
	// Escalating at the curve's last point adds 0.9 to class 1's samples, more
	// than big's value over cheap's on a class-1 request (0.97 - 0.5).
	p.(PeekConfigurer).ConfigurePeek(a.Name, CascadeConfig{Cheap: 0, Better: 1, Curve: curve,
		ClassGain: [][]float64{{0, 0}, {0, 0.9}}})
	d := p.Decide(snap(t0, a, req(a, 1, t0, ms(50), []float64{0, 1})))
	if d.Batch == nil || d.Batch.Variant != a.Variants[1] || d.Batch.EscalateBelow != 0 {
		t.Fatalf("time free, a class-1 request: %+v, want it straight on big", d.Batch)
	}
}

// TestPeekSecondPassesLeaveFreshRoom: a batch of second passes is no longer
// than the most urgent fresh request can wait (its deadline less its fastest
// variant's batch-1 time), and at least one second pass; without a fresh
// request that can still be served in time it is a full batch.
func TestPeekSecondPassesLeaveFreshRoom(t *testing.T) {
	a := testApp()
	curve := []CascadePoint{{0.5, 0, 0.90}, {0.8, 0.3, 0.96}}
	now := t0.Add(ms(2))
	second := func() []*Request {
		var q []*Request
		for i := range 4 {
			r := req(a, uint64(i+1), t0, ms(50), []float64{0.5, 0.5})
			r.First = &FirstPass{Variant: a.Variants[0], Class: 0, Confidence: 0.6, Done: now}
			q = append(q, r)
		}
		return q
	}
	// big takes 5 ms + 1 ms per request; cheap's batch of one 1.1 ms.
	for _, c := range []struct {
		name  string
		fresh time.Duration // the fresh request's time left at now; 0: none
		want  int
	}{
		{"no fresh request", 0, 4},
		{"a fresh request with 20 ms left", ms(20), 4},
		{"8 ms of slack: big's batch of 3 takes 8 ms", ms(9.1), 3},
		{"2 ms of slack: one second pass all the same", ms(3.1), 1},
		{"a fresh request past saving does not count", ms(1), 4},
	} {
		p := peekPolicy(t, a, curve)
		q := second()
		if c.fresh > 0 {
			q = append(q, req(a, 9, now, c.fresh, []float64{1, 0}))
		}
		d := p.Decide(snap(now, a, q...))
		if d.Batch == nil || d.Batch.Variant != a.Variants[1] || len(d.Batch.Requests) != c.want {
			t.Errorf("%s: batch %+v, want %d second passes on big", c.name, d.Batch, c.want)
		}
	}
}

// TestPeekPricesTheMixsEscalations: the peek variant's amortised time carries
// the better variant's time at the share of first passes the recent arrivals'
// class mix escalates (ClassEscalated under the mean class estimate), not the
// validation split's share; without recent arrivals of the application, or
// without per-class shares, the split's.
func TestPeekPricesTheMixsEscalations(t *testing.T) {
	a := testApp()
	// One point beyond "escalate nothing": 30% of the split, 10% of class 0
	// and 90% of class 1.
	cfg := CascadeConfig{Cheap: 0, Better: 1,
		Curve:          []CascadePoint{{0.5, 0, 0.90}, {0.8, 0.3, 0.96}},
		ClassEscalated: [][]float64{{0, 0}, {0.1, 0.9}}}
	other := testApp()
	other.Name = "other"
	amort := func(recent []*Request, c CascadeConfig) float64 {
		d := newDecisionState(snap(t0, a), view{dataAware: true}, 32)
		d.peek = map[string]*peekInfo{a.Name: newPeekInfo(c)}
		d.recent = recent
		ai := d.info(a)
		if ai.peekVar != 0 || ai.peekBetter != 1 {
			t.Fatalf("time is free and the peek does not escalate: %+v", ai)
		}
		return ai.amort[0]
	}
	cheap := Amortised(a.Variants[0], 32).Seconds()
	big := Amortised(a.Variants[1], 32).Seconds()
	ones := func(p []float64, n int, app *App) []*Request {
		var out []*Request
		for i := range n {
			out = append(out, req(app, uint64(i+1), t0, ms(50), p))
		}
		return out
	}
	for _, c := range []struct {
		name   string
		recent []*Request
		cfg    CascadeConfig
		share  float64
	}{
		{"no recent arrivals: the split's share", nil, cfg, 0.3},
		{"only another application's", ones([]float64{0, 1}, 4, other), cfg, 0.3},
		{"all class 1", ones([]float64{0, 1}, 4, a), cfg, 0.9},
		{"all class 0", ones([]float64{1, 0}, 4, a), cfg, 0.1},
		{"half each, unsure", ones([]float64{0.5, 0.5}, 4, a), cfg, 0.5},
		{"no per-class shares", ones([]float64{0, 1}, 4, a), CascadeConfig{Cheap: 0, Better: 1, Curve: cfg.Curve}, 0.3},
	} {
		if got, want := amort(c.recent, c.cfg), cheap+c.share*big; math.Abs(got-want) > 1e-12 {
			t.Errorf("%s: the peek variant's amortised time %v, want %v (share %v)", c.name, got, want, c.share)
		}
	}
}

// TestPeekPricesWhatFirstPassesSendBack: once first passes have run, the
// second opinions are priced at the share the requests that took the peek
// would send back by their own class estimates, not at the recent arrivals'
// share: the search gives first passes to the requests the peek's bonus
// favours, which need not be the arrivals' mix.
func TestPeekPricesWhatFirstPassesSendBack(t *testing.T) {
	a := testApp()
	// 10% of class 0 escalates, 90% of class 1.
	cfg := CascadeConfig{Cheap: 0, Better: 1,
		Curve:          []CascadePoint{{0.5, 0, 0.90}, {0.8, 0.3, 0.96}},
		ClassEscalated: [][]float64{{0, 0}, {0.1, 0.9}}}
	pk := newPeekInfo(cfg)
	ones := func(p []float64, n int) []*Request {
		var out []*Request
		for i := range n {
			out = append(out, req(a, uint64(i+1), t0, ms(50), p))
		}
		return out
	}
	cheap := Amortised(a.Variants[0], 32).Seconds()
	big := Amortised(a.Variants[1], 32).Seconds()
	// The arrivals are mostly class 0.
	arrivals := append(ones([]float64{1, 0}, 9), ones([]float64{0, 1}, 1)...)
	share := func() float64 {
		d := newDecisionState(snap(t0, a), view{dataAware: true}, 32)
		d.peek = map[string]*peekInfo{a.Name: pk}
		d.recent = arrivals
		return (d.info(a).amort[0] - cheap) / big
	}
	if got := share(); math.Abs(got-0.18) > 1e-9 {
		t.Fatalf("before any first pass: share %v, want the arrivals' 0.18", got)
	}
	// First passes of class 1 only, escalated at the hull's point (time free).
	d := newDecisionState(snap(t0, a), view{dataAware: true}, 32)
	d.peek = map[string]*peekInfo{a.Name: pk}
	b := &Batch{Variant: a.Variants[0], Requests: ones([]float64{0, 1}, 8)}
	d.escalate(b)
	if b.EscalateBelow <= 0 {
		t.Fatalf("the first passes do not escalate: %v", b.EscalateBelow)
	}
	if got := share(); math.Abs(got-0.9) > 1e-9 {
		t.Errorf("after class-1 first passes: share %v, want their 0.9", got)
	}
	// First passes of class 0 move it toward 0.1, a request at a time.
	d.escalate(&Batch{Variant: a.Variants[0], Requests: ones([]float64{1, 0}, 1)})
	if got, want := share(), 0.9+peekSentWeight*(0.1-0.9); math.Abs(got-want) > 1e-9 {
		t.Errorf("after one class-0 first pass: share %v, want %v", got, want)
	}
	// A batch on another variant is no first pass.
	d.escalate(&Batch{Variant: a.Variants[1], Requests: ones([]float64{1, 0}, 50)})
	if got, want := share(), 0.9+peekSentWeight*(0.1-0.9); math.Abs(got-want) > 1e-9 {
		t.Errorf("after a batch on the better variant: share %v, want %v", got, want)
	}
}

// TestPeekBoundedEqualsFull: a peeking sneakpeek decides over a long queue
// (above boundedMin) from a prefix where the bounds allow it, as it does
// without a peek: the requests back from a first pass are decided first
// (decideSecond) and the rest of the decision sees the queue without them, in
// the arrival order the long-queue index expects. Every decision must equal
// the whole queue's, many must be made over a prefix, and first passes must
// come back (a share of each first-pass batch's requests, put back in the
// queue at their arrival place, as the Executor does) and get second passes.
func TestPeekBoundedEqualsFull(t *testing.T) {
	t.Parallel() // see "Parallel tests" in harness_test.go
	rng := rand.New(rand.NewPCG(5, 13))
	a := benchApp(rng)
	apps := map[string]*App{a.Name: a}
	o := Options{Peek: map[string]string{a.Name: "v2"}, Shrink: 0.5, PriceHorizon: 20 * time.Millisecond, MaxQueueDelay: time.Nanosecond}
	bounded, whole := boundedPair(t, "sneakpeek", o)
	curve := []CascadePoint{{0.3, 0, 0.70}, {0.6, 0.2, 0.80}, {0.8, 0.4, 0.85}}
	for _, p := range []*searching{bounded, whole} {
		p.ConfigurePeek(a.Name, CascadeConfig{Cheap: 2, Better: 4, Curve: curve})
	}
	now := t0.Add(time.Second)
	const n = boundedMin + 2000
	var q []*Request
	seq := uint64(0)
	arrive := func(k int, overloaded bool) {
		for range k {
			q = append(q, benchRequest(rng, a, seq, now, n, overloaded))
			seq++
		}
	}
	arrive(n, false)
	resident := map[VariantID]time.Time{a.Variants[2].ID: now, a.Variants[4].ID: now}
	firsts, back, seconds, steps := 0, 0, 0, 300
	used := map[int]int{}
	for step := range steps {
		s := &Snapshot{Now: now, Queue: q, Apps: apps, Engine: Engine{Resident: resident, CountBudget: 3}}
		db := bounded.Decide(s)
		s2 := *s
		dw := whole.Decide(&s2)
		if diff := decisionDiff(db, dw); diff != "" {
			t.Fatalf("step %d (%d queued): bounded and whole-queue decisions differ: %s", step, len(q), diff)
		}
		gone := map[*Request]bool{}
		for _, v := range db.Verdicts {
			gone[v.Request] = true
		}
		var up []*Request
		if b := db.Batch; b != nil {
			used[b.Variant.Index]++
			for _, r := range b.Requests {
				gone[r] = true
				if r.First != nil {
					seconds++
				}
			}
			for _, id := range b.Evict {
				delete(resident, id)
			}
			for _, id := range b.Load {
				resident[id] = now
			}
			if b.EscalateBelow > 0 {
				firsts++
				for _, r := range b.Requests {
					if r.First == nil && rng.IntN(3) == 0 {
						r.First = &FirstPass{Variant: b.Variant, Class: r.Class, Confidence: b.EscalateBelow * rng.Float64(), Done: b.Finish}
						up = append(up, r)
					}
				}
			}
		}
		q = slices.DeleteFunc(q, func(r *Request) bool { return gone[r] })
		for _, r := range up {
			i, _ := slices.BinarySearchFunc(q, r.Seq, func(x *Request, s uint64) int { return cmp.Compare(x.Seq, s) })
			q = slices.Insert(q, i, r)
			back++
		}
		now = now.Add(200 * time.Microsecond)
		arrive(n-len(q)+len(up), (step/50)%3 == 2)
	}
	t.Logf("%d decisions, %d over a prefix; batches by variant %v; %d first-pass batches, %d requests back, %d second passes run", steps, bounded.boundedHits, used, firsts, back, seconds)
	if bounded.boundedHits < steps/5 || back == 0 || seconds == 0 {
		t.Fatalf("%d of %d decisions over a prefix, %d back, %d second passes: the test does not test it", bounded.boundedHits, steps, back, seconds)
	}
}
