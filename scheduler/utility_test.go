package scheduler

import (
	"github.com/sneakgate/sneakgate/sneakpeek"
	"math"
	"slices"
	"testing"
	"time"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestPenalty(t *testing.T) {
	dl := t0.Add(ms(100))
	D := ms(100)
	cases := []struct {
		finish time.Time
		want   float64
	}{
		{t0, 1},
		{dl, 1},               // on time
		{dl.Add(ms(50)), 0.5}, // x = 0.5: S = 0.5
		{dl.Add(ms(25)), 0.9}, // x = 0.25: S = 1/64 / (1/64 + 27/64) = 1/28 -> 27/28? see below
		{dl.Add(ms(100)), 0},  // hard stop
		{dl.Add(ms(150)), 0},  // past it
	}
	// x = 0.25: x^3 = 1/64, (1-x)^3 = 27/64, S = 1/28, so 1-S = 27/28.
	cases[3].want = 27.0 / 28.0
	for _, c := range cases {
		if got := Penalty(c.finish, dl, D); !near(got, c.want) {
			t.Errorf("Penalty(finish=%v) = %v, want %v", c.finish.Sub(t0), got, c.want)
		}
	}
	if got := Penalty(dl.Add(1), dl, 0); got != 0 {
		t.Errorf("zero budget, late: %v, want 0", got)
	}
}

func TestPenalizedUtilityKeepsCosts(t *testing.T) {
	a := testApp()
	r := req(a, 1, t0, ms(100), nil)
	if got := PenalizedUtility(-0.5, r, t0.Add(ms(150))); got != -0.5 {
		t.Errorf("negative utility discounted: %v", got)
	}
	if got := PenalizedUtility(0.8, r, t0.Add(ms(150))); !near(got, 0.4) {
		t.Errorf("PenalizedUtility = %v, want 0.4", got)
	}
}

// TestMethodExample reproduces docs/method.md's point: two variants with nearly equal
// profiled accuracy differ widely for a request the estimate flags as positive.
func TestMethodExample(t *testing.T) {
	prior := []float64{0.9, 0.1}
	r60 := []float64{0.99, 0.6}
	r100 := []float64{0.95, 1.0}
	a60, a100 := sneakpeek.ExpectedAccuracy(prior, r60), sneakpeek.ExpectedAccuracy(prior, r100)
	if math.Abs(a60-a100) > 0.01 {
		t.Fatalf("profiled accuracies should be close: %v vs %v", a60, a100)
	}
	p := []float64{0.1, 0.9} // SneakPeek says: likely positive
	if d60, d100 := sneakpeek.ExpectedAccuracy(p, r60), sneakpeek.ExpectedAccuracy(p, r100); !(d100-d60 > 0.3) {
		t.Errorf("data-aware accuracies should differ: %v vs %v", d60, d100)
	}
	// Expected utility with the identity matrix equals expected accuracy.
	cond := [][]float64{{0.99, 0.01}, {0.4, 0.6}}
	if u := ExpectedUtility(p, cond, [][]float64{{1, 0}, {0, 1}}); !near(u, 0.1*0.99+0.9*0.6) {
		t.Errorf("ExpectedUtility = %v", u)
	}
	// A missed positive costs -1, a false alarm -0.1.
	w := [][]float64{{1, -0.1}, {-1, 1}}
	want := 0.1*(0.99*1+0.01*-0.1) + 0.9*(0.4*-1+0.6*1)
	if u := ExpectedUtility(p, cond, w); !near(u, want) {
		t.Errorf("ExpectedUtility with costs = %v, want %v", u, want)
	}
}

func TestPrepare(t *testing.T) {
	a := testApp()
	r := req(a, 7, t0, ms(50), []float64{0.2, 0.8})
	if r.Class != 1 {
		t.Errorf("Class = %d, want 1", r.Class)
	}
	if !near(r.ExpAccuracy[0], 0.2*0.99+0.8*0.5) || !near(r.ExpAccuracy[1], 0.97) {
		t.Errorf("ExpAccuracy = %v", r.ExpAccuracy)
	}
	if !near(r.DegradedUtility, 0.8) {
		t.Errorf("DegradedUtility = %v, want 0.8", r.DegradedUtility)
	}
	if r.HardStop() != t0.Add(ms(100)) {
		t.Errorf("HardStop = %v", r.HardStop().Sub(t0))
	}
	o := req(a, 8, t0, ms(50), nil)
	if o.Class != -1 || o.ExpUtility[1] != a.Variants[1].ProfiledUtility {
		t.Errorf("oblivious request: class %d, utilities %v", o.Class, o.ExpUtility)
	}
}

// Reweigh takes the answer without a model, its value and the value of no
// answer from the corrected estimate, and keeps the variants' values and the
// grouping class of the raw one.
func TestReweighKeepsVariantValues(t *testing.T) {
	a := testApp()
	a.NoAnswer = []float64{0, -1}
	r := req(a, 7, t0, ms(50), []float64{0.4, 0.6})
	exp := slices.Clone(r.ExpUtility)
	acc := slices.Clone(r.ExpAccuracy)
	q := []float64{0.9, 0.1}
	Reweigh(r, q, nil)
	if &r.P[0] != &q[0] {
		t.Error("P is not the corrected estimate")
	}
	if r.Class != 1 {
		t.Errorf("Class = %d, want the raw estimate's 1", r.Class)
	}
	if !slices.Equal(r.ExpUtility, exp) || !slices.Equal(r.ExpAccuracy, acc) {
		t.Errorf("variant values changed: %v %v, were %v %v", r.ExpUtility, r.ExpAccuracy, exp, acc)
	}
	// The degraded answer is class 0 (argmax q), right with probability 0.9.
	if !near(r.DegradedUtility, 0.9) {
		t.Errorf("DegradedUtility = %v, want 0.9", r.DegradedUtility)
	}
	if !near(r.NoAnswerUtility, -0.1) {
		t.Errorf("NoAnswerUtility = %v, want -0.1", r.NoAnswerUtility)
	}
	// No correction (or one of the wrong size) leaves the request as it was.
	o := req(a, 8, t0, ms(50), []float64{0.4, 0.6})
	Reweigh(o, nil, nil)
	Reweigh(o, []float64{1}, nil)
	if o.P[1] != 0.6 || !near(o.DegradedUtility, 0.6) || !near(o.NoAnswerUtility, -0.6) {
		t.Errorf("uncorrected request changed: P %v, degraded %v, no answer %v", o.P, o.DegradedUtility, o.NoAnswerUtility)
	}
}

func TestLatencyAtBeyondTable(t *testing.T) {
	v := &Variant{Latency: linear(ms(1), ms(1), 4)} // b=4: 5ms, b=2: 3ms
	if got := v.LatencyAt(10); got != 2*ms(5)+ms(3) {
		t.Errorf("LatencyAt(10) = %v", got)
	}
	if got := v.LatencyAt(8); got != 2*ms(5) {
		t.Errorf("LatencyAt(8) = %v", got)
	}
	if got := v.LatencyAt(0); got != ms(2) {
		t.Errorf("LatencyAt(0) = %v", got)
	}
}

// The scheduler's utility (on row-normalised confusion) and package sneakpeek's (on
// counts) are one formula: they agree, also on a class absent from validation.
func TestExpectedUtilityAgreesWithSneakPeek(t *testing.T) {
	counts := [][]float64{{8, 2, 0}, {0, 0, 0}, {1, 1, 3}}
	w := [][]float64{{1, -0.5, 0}, {0, 1, 0}, {-1, 0, 1}}
	cond := sneakpeek.RowNormalise(counts, false)
	for _, p := range [][]float64{{1, 0, 0}, {0.2, 0.5, 0.3}, {0, 1, 0}} {
		if a, b := ExpectedUtility(p, cond, w), sneakpeek.ExpectedUtility(p, counts, w); !near(a, b) {
			t.Errorf("p=%v: scheduler %v, sneakpeek %v", p, a, b)
		}
	}
}
