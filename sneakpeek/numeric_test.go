package sneakpeek

import (
	"math"
	"testing"
)

// Correct's doc: "dst may be p itself" and "If p ... carries no mass (all zero
// or not finite), p is copied to dst unchanged". In place, the no-mass path
// once copied p onto itself after the E-step had already overwritten it.
func TestCorrectInPlaceWithoutMassKeepsP(t *testing.T) {
	s := NewPriorShift([]float64{0.5, 0.5}, ShiftOptions{})
	p := []float64{math.NaN(), math.NaN()}
	s.Correct(p, p)
	if !math.IsNaN(p[0]) || !math.IsNaN(p[1]) {
		t.Errorf("in place, a p without mass came back as %v, want it unchanged [NaN NaN]", p)
	}
	// With a live ratio != 1 an overflowing p is rescaled in place too.
	s2 := NewPriorShift([]float64{0.5, 0.5}, ShiftOptions{Window: 10})
	q := make([]float64, 2)
	for range 50 {
		s2.Correct([]float64{0.9, 0.1}, q)
	}
	big := []float64{1e308, 1e308}
	s2.Correct(big, big)
	if big[0] != 1e308 || big[1] != 1e308 {
		t.Errorf("in place, an overflowing p came back as %v, want it unchanged [1e308 1e308]", big)
	}
}

// The logistic estimator evaluates W z in float32: a finite input (an app
// without input_range accepts any finite float32) can overflow the logits to
// +Inf in two classes; the softmax then still gives a distribution (it gave
// NaN, Inf-Inf).
func TestLogisticOverflowingLogitsGiveADistribution(t *testing.T) {
	f, _ := ParseFeatures("identity", 1)
	m, err := NewLogistic("lr", f, &LogisticParams{Classes: 2, Dim: 1, Mean: []float64{0}, Scale: []float64{1},
		Weights: [][]float64{{2}, {3}}, Bias: []float64{0, 0}})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]float64, 2)
	m.Estimate([]float32{3e38}, p)
	if !(p[0] >= 0 && p[1] >= 0) || math.Abs(p[0]+p[1]-1) > 1e-9 {
		t.Errorf("input 3e38: p = %v, want a distribution ([0 1])", p)
	}
}

// NewLogistic evaluates 1/scale in float32: a scale of 1e-39, positive and
// finite in float64, once loaded and made every estimate NaN; it is refused
// (or, if ever accepted, must give finite estimates).
func TestLogisticScaleCheckedInFloat32(t *testing.T) {
	f, _ := ParseFeatures("identity", 2)
	m, err := NewLogistic("lr", f, &LogisticParams{Classes: 2, Dim: 2, Mean: []float64{0, 0}, Scale: []float64{1, 1e-39},
		Weights: [][]float64{{1, 0}, {-1, 0}}, Bias: []float64{0, 0}})
	if err != nil {
		return // refused: fine
	}
	p := make([]float64, 2)
	m.Estimate([]float32{1, 0}, p) // feature 1 equals its mean: (0-0)*Inf = NaN
	if !(p[0] >= 0 && p[1] >= 0) {
		t.Errorf("scale 1e-39 loaded, and the estimate of an ordinary input is %v", p)
	}
}

// Mix's doc: "the live prior as of the last multiple of MixRefresh
// corrections". Frozen after a change that no Mix had published yet, the
// PriorShift corrected with the live prior but never published it; freezing
// now publishes it.
func TestFrozenMixIsThePriorInUse(t *testing.T) {
	s := NewPriorShift([]float64{0.5, 0.5}, ShiftOptions{Window: 10})
	q := make([]float64, 2)
	for range MixRefresh { // an unshifted stream: the Mix at 64 is the training prior
		s.Correct([]float64{0.5, 0.5}, q)
	}
	for range MixRefresh - 1 { // the mix shifts; no Mix yet (127 corrections)
		s.Correct([]float64{0.9, 0.1}, q)
	}
	s.SetFrozen(true)
	for range 3 * MixRefresh {
		s.Correct([]float64{0.9, 0.1}, q)
	}
	live, mix := s.Prior(), s.Mix().Prior
	if math.Abs(live[0]-mix[0]) > 1e-9 {
		t.Errorf("after %d corrections (frozen since %d): Correct uses the live prior %v, Mix still says %v (as of %d)",
			5*MixRefresh-1, 2*MixRefresh-1, live, mix, MixRefresh)
	}
}
