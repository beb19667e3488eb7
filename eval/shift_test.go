package eval

import (
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// TestShiftPolicies: the label-shift corrected policies are deterministic; with
// the estimator's marginal as trained prior (shift-cal) the correction costs
// (almost) nothing on the unshifted workload and its prior estimate stays at the
// marginal, and on the shifted one it moves toward the workload's mix; the
// true-prior reference on the unshifted workload is sneakpeek itself. Logged,
// not asserted: the synthetic estimator is not calibrated in the large (its mean
// estimate of class 0 on the 0.7 mix is about 0.4), so the plain
// sneakpeek-shift's EM drifts from the manifest prior even without shift.
func TestShiftPolicies(t *testing.T) {
	a := Synthetic(1)
	run := func(wl string, pol string, load float64) Metrics {
		t.Helper()
		w, err := a.Workload(wl)
		if err != nil {
			t.Fatal(err)
		}
		pt := Point{App: a, Workload: w, Policy: pol, Load: load, Deadline: a.Deadline, Requests: 6000, Seed: 3,
			GatewayModel: GatewayModel{Jitter: 0.05}, Shift: sneakpeek.ShiftOptions{Window: 300}}
		m, err := Simulate(pt, nil)
		if err != nil {
			t.Fatalf("%s %s: %v", wl, pol, err)
		}
		return m
	}
	marg := a.EstimateMarginal()
	for _, load := range []float64{0.6, 1.5} {
		sp := run("natural", "sneakpeek", load)
		raw := run("natural", PolicyShift, load)
		sh := run("natural", PolicyShiftCal, load)
		sh2 := run("natural", PolicyShiftCal, load)
		tp := run("natural", PolicyTruePrior, load)
		t.Logf("natural load %.1f: sneakpeek %.4f shift %.4f (prior %.2f) shift-cal %.4f trueprior %.4f; est acc %.3f -> %.3f; prior %.2f (marginal %.2f)",
			load, sp.Utility, raw.Utility, raw.ShiftPrior, sh.Utility, tp.Utility, sh.EstAccuracy, sh.EstAccuracyCorrected, sh.ShiftPrior, marg)
		if sh.Utility != sh2.Utility || sh.OK != sh2.OK || sh.ShiftPrior[0] != sh2.ShiftPrior[0] {
			t.Errorf("shift policy not deterministic")
		}
		if math.Abs(tp.Utility-sp.Utility) > 1e-9 {
			t.Errorf("true prior on the natural mix changed sneakpeek: %.4f vs %.4f", tp.Utility, sp.Utility)
		}
		if d := sh.Utility - sp.Utility; d < -0.02*math.Abs(sp.Utility)-0.005 {
			t.Errorf("shift correction costs %.4f on the unshifted workload", d)
		}
		if math.Abs(sh.ShiftPrior[0]-marg[0]) > 0.1 {
			t.Errorf("unshifted prior estimate %v far from the prior", sh.ShiftPrior)
		}
	}
	sp := run("events", "sneakpeek", 1.5)
	sh := run("events", PolicyShiftCal, 1.5)
	tp := run("events", PolicyTruePrior, 1.5)
	t.Logf("events load 1.5: sneakpeek %.4f shift %.4f trueprior %.4f; est acc %.3f -> %.3f (true prior %.3f); prior %.2f",
		sp.Utility, sh.Utility, tp.Utility, sh.EstAccuracy, sh.EstAccuracyCorrected, tp.EstAccuracyCorrected, sh.ShiftPrior)
	if sh.ShiftPrior[0] > marg[0]/2 {
		t.Errorf("events prior estimate %v did not move toward the events mix (0.1 for class 0)", sh.ShiftPrior)
	}
}

// The simulated label-shift correction starts where the gateway's does: the
// estimator's mean estimate over the validation split (gateway shiftStart),
// not over the replayed test samples, whose labels the gateway does not have.
// On vad the two differ (speech 0.39 on the validation speakers, 0.41 on the
// test speakers in the prior mix), and which one the correction starts from
// moved edf's and fixed-batch's utility by up to 0.06 at load 3.
func TestShiftStartsFromTheValidationSplit(t *testing.T) {
	a := loadReal(t, "vad")
	m, err := manifest.Load(filepath.Join("..", "models", "vad", "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	val, err := dataset.Read(m.Path(m.Validation.File))
	if err != nil {
		t.Fatal(err)
	}
	est, _, err := ManifestEstimate(m, val, "")
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float64, a.Sched.K)
	for _, p := range est {
		for c, v := range p {
			want[c] += v / float64(len(est))
		}
	}
	for c := range want {
		if math.Abs(a.ShiftStart[c]-want[c]) > 1e-12 {
			t.Fatalf("ShiftStart %v, the validation split's mean estimate %v", a.ShiftStart, want)
		}
	}
	test := a.EstimateMarginal()
	if math.Abs(test[1]-want[1]) < 0.005 {
		t.Fatalf("the test samples' marginal %v is the validation split's %v: this test no longer tells them apart", test, want)
	}
	w, err := a.Workload("natural")
	if err != nil {
		t.Fatal(err)
	}
	pt := Point{App: a, Workload: w, Policy: "sneakpeek", Load: 1, Deadline: a.Deadline,
		GatewayModel: GatewayModel{LabelShift: true}}
	s := newShifter(a, pt)
	if s == nil || s.ps == nil {
		t.Fatal("no label-shift correction with LabelShift on")
	}
	got := s.ps.TrainPrior()
	for c := range want {
		if math.Abs(got[c]-want[c]) > 1e-9 {
			t.Fatalf("the correction starts from %v, want the validation split's mean estimate %v", got, want)
		}
	}
}

// With ShiftEvidence the correction's live mix counts each request once, at
// its outcome: a model's answer by that variant's confusion column
// (PriorShift.ObserveAnswer), any other outcome by the estimate corrected on
// arrival; correcting on arrival counts nothing. A whole run is deterministic
// and counts every request it gave an outcome.
func TestShiftEvidenceCountsEachRequestAtItsOutcome(t *testing.T) {
	a := Synthetic(1)
	w, err := a.Workload("events")
	if err != nil {
		t.Fatal(err)
	}
	pt := Point{App: a, Workload: w, Policy: "sneakpeek", Load: 1.5, Deadline: a.Deadline, Requests: 3000, Seed: 2,
		GatewayModel: GatewayModel{LabelShift: true, ShiftEvidence: true, DegradeRefused: true}}
	s := newShifter(a, pt)
	if s == nil || !s.evidence || s.observer() == nil {
		t.Fatal("no evidence mode with LabelShift and ShiftEvidence on")
	}
	q := s.correct(a, &pt, 0, 0)
	if n := s.ps.Observed(); n != 0 {
		t.Fatalf("correcting on arrival counted %d requests", n)
	}
	before := s.ps.Prior()
	v := a.Sched.Variants[0]
	yhat := 1
	s.observe(q, v, yhat)
	// The model's answer alone, weighed by its confusion column, in the EM step.
	post := make([]float64, a.Sched.K)
	sum := 0.0
	for y := range post {
		post[y] = before[y] * v.Cond[y][yhat]
		sum += post[y]
	}
	after := s.ps.Prior()
	a1 := 1 / float64(sneakpeek.DefaultShiftWindow)
	for y := range post {
		want := (1-a1)*before[y] + a1*post[y]/sum
		if math.Abs(after[y]-want) > 1e-3*a1 {
			t.Fatalf("after a model's answer the live prior is %v, want about %v (floored)", after, want)
		}
	}
	s.observe(q, nil, -1)
	if n := s.ps.Observed(); n != 2 {
		t.Fatalf("two outcomes counted %d times", n)
	}
	pt.LabelShift = false
	if s := newShifter(a, pt); s != nil && s.observer() != nil {
		t.Fatal("an observer without the label-shift correction")
	}

	pt.LabelShift = true
	one, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	two, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if one.Utility != two.Utility || !slices.Equal(one.ShiftPrior, two.ShiftPrior) {
		t.Fatalf("not deterministic: %v %v against %v %v", one.Utility, one.ShiftPrior, two.Utility, two.ShiftPrior)
	}
	pt.ShiftEvidence = false
	off, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("events at 1.5: utility %.4f prior %v with the models' answers, %.4f %v without", one.Utility, one.ShiftPrior, off.Utility, off.ShiftPrior)
}
