package sneakpeek

import (
	"math"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// The method's motivating case: on a 10%-positive task two variants have the same
// profiled accuracy, but for a request that looks positive they differ a lot.
func TestExpectedAccuracyMethodExample(t *testing.T) {
	recallA := []float64{1.0, 0.6}                // never a false alarm, finds 60% of positives
	recallB := []float64{0.96/0.9 - 0.1/0.9, 1.0} // finds every positive
	pi := []float64{0.9, 0.1}
	if a, b := ExpectedAccuracy(pi, recallA), ExpectedAccuracy(pi, recallB); !near(a, 0.96) || !near(b, 0.96) {
		t.Fatalf("profiled accuracies %v %v, want 0.96 both", a, b)
	}
	p := []float64{0.2, 0.8} // SneakPeek says: likely positive
	a, b := ExpectedAccuracy(p, recallA), ExpectedAccuracy(p, recallB)
	if !near(a, 0.2+0.48) || !near(b, 0.2*recallB[0]+0.8) {
		t.Fatalf("A(m|p) = %v, %v", a, b)
	}
	if b-a < 0.3 {
		t.Fatalf("data awareness should separate the variants: %v vs %v", a, b)
	}
}

func TestExpectedUtility(t *testing.T) {
	w := [][]float64{{1, -0.1}, {-1, 1}}
	conf := [][]float64{{90, 10}, {4, 6}}
	// row 0: (90 - 1)/100 = 0.89; row 1: (-4 + 6)/10 = 0.2
	if u := ExpectedUtility([]float64{0.5, 0.5}, conf, w); !near(u, 0.545) {
		t.Errorf("U = %v, want 0.545", u)
	}
	if u := ExpectedUtility([]float64{0, 1}, conf, w); !near(u, 0.2) {
		t.Errorf("U = %v, want 0.2", u)
	}
	// Identity utility gives the data-aware accuracy.
	id := [][]float64{{1, 0}, {0, 1}}
	p := []float64{0.3, 0.7}
	if u, a := ExpectedUtility(p, conf, id), ExpectedAccuracy(p, []float64{0.9, 0.6}); !near(u, a) {
		t.Errorf("identity utility %v != accuracy %v", u, a)
	}
	// A class never seen in validation earns nothing.
	if u := ExpectedUtility([]float64{0.5, 0.5}, [][]float64{{0, 0}, {1, 1}}, id); !near(u, 0.25) {
		t.Errorf("zero row: U = %v, want 0.25", u)
	}
}

func TestClassUtilityMatchesExpectedUtility(t *testing.T) {
	w := [][]float64{{1, -0.1, 0}, {-1, 1, 0.5}, {0, 0.2, 1}}
	conf := [][]float64{{90, 10, 0}, {4, 6, 2}, {0, 0, 0}}
	u := ClassUtility(conf, w)
	if !near(u[0], 0.89) || !near(u[1], (-4+6+1)/12.0) || u[2] != 0 {
		t.Fatalf("u = %v", u)
	}
	for _, p := range [][]float64{{1, 0, 0}, {0.2, 0.5, 0.3}, {0, 0, 1}} {
		if a, b := ExpectedUtility(p, conf, w), ExpectedAccuracy(p, u); !near(a, b) {
			t.Errorf("p=%v: %v != %v", p, a, b)
		}
	}
}

func TestRowNormalise(t *testing.T) {
	c := [][]float64{{3, 1}, {0, 0}}
	if got := RowNormalise(c, false); got[0][0] != 0.75 || got[0][1] != 0.25 || got[1][0] != 0 || got[1][1] != 0 {
		t.Errorf("zero empty rows: %v", got)
	}
	if got := RowNormalise(c, true); got[1][0] != 0.5 || got[1][1] != 0.5 {
		t.Errorf("uniform empty rows: %v", got)
	}
	if c[0][0] != 3 {
		t.Error("input modified")
	}
}
