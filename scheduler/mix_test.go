package scheduler

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestObliviousMixes: 100 requests valued alike (oblivious) whose window's time
// budget (100 ms at 1,000 arrivals per second) fits all of them on the cheap
// variant (13 ms) but not on the big one (116 ms). The price's fluid optimum runs
// a share x = (100 - 13.1) / (115.6 - 13.1) = 0.85 on big and the rest on cheap;
// the mixing policy assigns that share, the switching one sends everything to one
// variant.
func TestObliviousMixes(t *testing.T) {
	a := testApp()
	var q []*Request
	for i := range 100 {
		q = append(q, req(a, uint64(i+1), t0, time.Second, nil))
	}
	s := snap(t0, a, q...)
	share := func(w view) float64 {
		d := newDecisionState(s, w, 32)
		d.prepass(nil)
		win := d.window(128)
		d.setPrice(win, 1000)
		if d.price <= 0 {
			t.Fatalf("%+v: no price under pressure", w)
		}
		big := 0
		for _, i := range win {
			m := &d.members[i]
			v, _ := d.choice(m, d.price)
			if w.mix {
				v = m.class
			}
			if v == 1 {
				big++
			}
		}
		return float64(big) / float64(len(win))
	}
	cheap := Amortised(a.Variants[0], 32).Seconds()
	bigC := Amortised(a.Variants[1], 32).Seconds()
	want := (0.1 - 100*cheap) / (100 * (bigC - cheap))
	if got := share(view{mix: true}); math.Abs(got-want) > 0.03 {
		t.Errorf("mixing oblivious: %.2f on big, want %.2f", got, want)
	}
	if got := share(view{}); got != 0 && got != 1 {
		t.Errorf("switching oblivious: %.2f on big, want all or nothing", got)
	}
	// The decision's first batch runs on the variant its group was assigned.
	d := mustPolicy(t, "oblivious", Options{}).Decide(s)
	if d.Batch == nil || len(d.Verdicts) != 0 {
		t.Fatalf("decision %+v", d)
	}
}

// TestNoAnswerUtility: a class whose missed answer costs (no-answer value -1)
// makes expiring its likely members expensive: shedding keeps them and sheds the
// likely members of the class that costs nothing, and a request of that class
// is run late rather than expired while a late result beats no answer.
func TestNoAnswerUtility(t *testing.T) {
	a := testApp()
	a.NoAnswer = []float64{0, -1}
	r := req(a, 1, t0, ms(10), []float64{0.2, 0.8})
	if want := -0.8; math.Abs(r.NoAnswerUtility-want) > 1e-12 {
		t.Fatalf("NoAnswerUtility = %v, want %v", r.NoAnswerUtility, want)
	}
	if got := a.ExpectedNoAnswer(nil); math.Abs(got+0.1) > 1e-12 {
		t.Errorf("under the prior: %v, want -0.1", got)
	}
	// A late result decays to the no-answer value, not to 0.
	if got := PenalizedUtility(1, r, r.HardStop()); math.Abs(got+0.8) > 1e-12 {
		t.Errorf("at the hard stop: %v, want -0.8", got)
	}
	if got := PenalizedUtility(-0.9, r, r.Deadline.Add(ms(5))); got != -0.9 {
		t.Errorf("a cost below the no-answer value: %v, want it whole", got)
	}

	// 100 requests due in 5 ms; half likely class 0, half likely class 1, all
	// equally sure. Without no-answer values the policy sheds onto the estimate
	// whichever is surest; with them, class-1-likely requests are worth keeping.
	var q []*Request
	likely1 := map[*Request]bool{}
	for i := range 100 {
		p := []float64{0.9, 0.1}
		if i%2 == 1 {
			p = []float64{0.1, 0.9}
		}
		x := req(a, uint64(i), t0, ms(5), p)
		if i%2 == 1 {
			likely1[x] = true
		}
		q = append(q, x)
	}
	d := mustPolicy(t, "sneakpeek-nodegrade", Options{}).Decide(snap(t0, a, q...))
	shed1, shed := 0, 0
	for _, v := range d.Verdicts {
		if v.Reason != ReasonOverload {
			continue
		}
		shed++
		if v.Outcome != Expired {
			t.Errorf("nodegrade shed as %v", v.Outcome)
		}
		if likely1[v.Request] {
			shed1++
		}
	}
	if shed == 0 || shed1 > 0 && shed < 50 {
		t.Errorf("shed %d, of them %d likely class 1: want the likely class 0 shed first", shed, shed1)
	}
}

// randomEstimates is 300 requests of testApp a with random class estimates
// and budgets of 5-204 ms.
func randomEstimates(a *App, rng *rand.Rand) []*Request {
	var q []*Request
	for i := range 300 {
		p0 := rng.Float64()
		q = append(q, req(a, uint64(i+1), t0, time.Duration(5+rng.IntN(200))*time.Millisecond, []float64{p0, 1 - p0}))
	}
	return q
}

// fluidSnap is the snapshot of q, with testApp's big variant resident or
// unable to be made resident.
func fluidSnap(a *App, q []*Request, resident bool) *Snapshot {
	s := snap(t0, a, q...)
	if !resident {
		delete(s.Engine.Resident, a.Variants[1].ID)
		s.Engine.MemBudget = 300 // big (400 bytes) cannot be made resident
	}
	return s
}

// fluidUse is what fluidSet.use computes per member, through choice as
// solvePrice did before it was flattened (91ddbe4): the reference of
// TestFluidSetIsFluidUse.
func (d *decisionState) fluidUse(m *member, p float64) float64 {
	v, c := d.choice(m, p)
	if v < 0 || m.alt > m.u[v]-p*c {
		return 0
	}
	return c
}

// TestFluidSetIsFluidUse: the price's flat evaluation (fluidSet.use) is the sum
// of fluidUse over the window and the stream, to the bit, at every price tried,
// for data-aware members with random estimates (some with the big variant not
// resident, some whose alternative beats every variant), so that solvePrice's
// bisection finds the same price as before it was flattened.
func TestFluidSetIsFluidUse(t *testing.T) {
	a := testApp()
	q := randomEstimates(a, rand.New(rand.NewPCG(5, 6)))
	for _, resident := range []bool{true, false} {
		s := fluidSnap(a, q, resident)
		d := newDecisionState(s, view{dataAware: true, byClass: true}, 32)
		d.prepass(nil)
		if ok := d.info(a).ok0[1]; ok != resident {
			t.Fatalf("resident=%v: big can be made resident: %v", resident, ok)
		}
		win := d.window(128)
		for k, i := range win {
			if k%7 == 0 {
				d.members[i].alt = 2 // worth more than any variant: no engine time
			}
		}
		d.stream = append([]member(nil), d.members[len(d.members)/2:]...)
		fl := d.flatten(win)
		for _, p := range []float64{0, 1e-3, 0.5, 1, 7.25, 30, 123.456, 1e4, 1e9} {
			want := 0.0
			for _, i := range win {
				want += d.fluidUse(&d.members[i], p)
			}
			for k := range d.stream {
				want += d.fluidUse(&d.stream[k], p)
			}
			if got := fl.use(p); got != want {
				t.Errorf("resident=%v, price %v: flat use %v, fluidUse summed %v", resident, p, got, want)
			}
		}
	}
}
