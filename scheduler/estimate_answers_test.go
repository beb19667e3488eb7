package scheduler

import (
	"math"
	"testing"

	"github.com/sneakgate/sneakgate/sneakpeek"
)

// TestReweighShiftedUtility checks ShiftedUtility: a variant's value under the
// corrected estimate, with the per-class correctness Sharpen left. Under the
// raw estimate itself it is ExpUtility (sharpened or not); without Sharpen it
// is the confusion-matrix value under q.
func TestReweighShiftedUtility(t *testing.T) {
	a := testApp()
	p := []float64{0.4, 0.6}
	r := req(a, 1, t0, ms(50), p)
	Reweigh(r, []float64{0.4, 0.6}, nil)
	for m := range a.Variants {
		if !near(r.ShiftedUtility[m], r.ExpUtility[m]) {
			t.Errorf("q = p, variant %d: shifted %v, ExpUtility %v", m, r.ShiftedUtility[m], r.ExpUtility[m])
		}
	}
	s := req(a, 2, t0, ms(50), p)
	Sharpen(s, []float64{0.95, 0.6})
	Reweigh(s, []float64{0.4, 0.6}, nil)
	for m := range a.Variants {
		if !near(s.ShiftedUtility[m], s.ExpUtility[m]) {
			t.Errorf("sharpened, q = p, variant %d: shifted %v, ExpUtility %v", m, s.ShiftedUtility[m], s.ExpUtility[m])
		}
	}
	q := []float64{0.1, 0.9}
	u := req(a, 3, t0, ms(50), p)
	Reweigh(u, q, nil)
	for m, v := range a.Variants {
		if want := ExpectedUtility(q, v.Cond, a.Utility); !near(u.ShiftedUtility[m], want) {
			t.Errorf("unsharpened, variant %d: shifted %v, want %v", m, u.ShiftedUtility[m], want)
		}
	}
	// Sharpened and shifted: the cheap variant said right with probability
	// 0.95 under p (its class-based 0.4*0.99 + 0.6*0.5 = 0.696): its error
	// rates shrink by (1-0.95)/(1-0.696), and q weighs the classes.
	v := req(a, 5, t0, ms(50), p)
	Sharpen(v, []float64{0.95, 0.6})
	Reweigh(v, q, nil)
	k := (1 - 0.95) / (1 - 0.696)
	r0, r1 := 1-0.01*k, 1-0.5*k
	if want := 0.1*r0 + 0.9*r1; !near(v.ShiftedUtility[0], want) {
		t.Errorf("sharpened, shifted cheap variant: %v, want %v", v.ShiftedUtility[0], want)
	}
	if o := req(a, 4, t0, ms(50), nil); func() bool { Reweigh(o, q, nil); return o.ShiftedUtility != nil }() {
		t.Error("a request without an estimate got shifted values")
	}
}

// TestEstimateAnswers checks Options.EstimateAnswers on an idle engine: a
// request whose corrected estimate is worth more than any model answer, in
// the live mix and after shrinking both sides, is answered from it at once;
// it is run when the option is off, without the correction's Mix, when the
// estimate's answers are worth less than a variant's in the mix (whatever
// the request's own values), and by a policy that is not data-aware.
func TestEstimateAnswers(t *testing.T) {
	a := testApp()
	// Raw, the request is a toss-up; corrected for a mix of 90% class 1, the
	// estimate's own answer (class 1) is right with probability 0.995, more
	// than the big variant's 0.97.
	p, q := []float64{0.5, 0.5}, []float64{0.005, 0.995}
	good := &sneakpeek.Mix{Prior: []float64{0.1, 0.9}, Answer: 0.99}
	poor := &sneakpeek.Mix{Prior: []float64{0.1, 0.9}, Answer: 0.5}
	on := Options{Shrink: 0.5, EstimateAnswers: true}
	decide := func(policy string, o Options, mix *sneakpeek.Mix, reweigh bool) Decision {
		t.Helper()
		r := req(a, 1, t0, ms(100), p)
		if reweigh {
			Reweigh(r, q, mix)
		}
		return mustPolicy(t, policy, o).Decide(snap(t0, a, r))
	}
	d := decide("sneakpeek", on, good, true)
	if len(d.Verdicts) != 1 || d.Batch != nil || d.Verdicts[0].Outcome != Degraded || d.Verdicts[0].Reason != ReasonEstimateWorthMore {
		t.Fatalf("estimate worth more: verdicts %+v, batch %v; want it answered degraded, %s", d.Verdicts, d.Batch != nil, ReasonEstimateWorthMore)
	}
	for name, d := range map[string]Decision{
		"option off":               decide("sneakpeek", Options{Shrink: 0.5}, good, true),
		"no correction":            decide("sneakpeek", on, nil, false),
		"no mix":                   decide("sneakpeek", on, nil, true),
		"estimate poor in the mix": decide("sneakpeek", on, poor, true),
		"poor mix, no shrink":      decide("sneakpeek", Options{EstimateAnswers: true}, poor, true),
		"oblivious":                decide("oblivious", on, good, true),
	} {
		if len(d.Verdicts) != 0 || d.Batch == nil || len(d.Batch.Requests) != 1 {
			t.Errorf("%s: verdicts %+v, batch %v; want the request run", name, d.Verdicts, d.Batch != nil)
		}
	}
	// The shrink pulls a request toward its mix: estimated 0.96 right, a
	// little less than the big variant's 0.97, it is answered from the
	// estimate in a mix where the estimate's answers are worth 0.99 (shrunk:
	// 0.975 against 0.97), not without the shrink.
	q = []float64{0.04, 0.96}
	if d := decide("sneakpeek", on, good, true); len(d.Verdicts) != 1 || d.Verdicts[0].Reason != ReasonEstimateWorthMore {
		t.Errorf("shrink 0.5, 0.96 in a good mix: verdicts %+v, want it answered from the estimate", d.Verdicts)
	}
	if d := decide("sneakpeek", Options{EstimateAnswers: true}, good, true); len(d.Verdicts) != 0 {
		t.Errorf("shrink 0, 0.96 in a good mix: verdicts %+v, want it run", d.Verdicts)
	}
	// A Mix without an answer value (NaN) never answers from the estimate.
	if d := decide("sneakpeek", on, &sneakpeek.Mix{Prior: []float64{0.1, 0.9}, Answer: math.NaN()}, true); len(d.Verdicts) != 0 {
		t.Errorf("Mix without an answer value: verdicts %+v, want none", d.Verdicts)
	}
}
