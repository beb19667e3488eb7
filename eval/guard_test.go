package eval

import (
	"testing"

	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// withEstimates returns a copy of a whose estimates are f of the originals.
func withEstimates(a *App, f func(p []float64) []float64) *App {
	b := &App{Sched: a.Sched, Labels: a.Labels, Pred: a.Pred, Workloads: a.Workloads, Deadline: a.Deadline}
	for _, p := range a.Est {
		b.Est = append(b.Est, f(p))
	}
	if err := b.index(); err != nil {
		panic(err)
	}
	return b
}

// TestGuardedPolicies: a guard that never distrusts leaves sneakpeek exactly as
// it is (the wiring is transparent); with estimates made one-hot (claiming
// certainty) the default guard distrusts, and the guarded policy without
// degraded answers is then close to oblivious. Known limitation, logged: on the
// synthetic app's estimator (calibrated on the whole mix) the default guard
// fed only with what the largest variant serves may distrust too (selection).
func TestGuardedPolicies(t *testing.T) {
	a := Synthetic(1)
	wl := a.Workloads[0]
	pt := Point{App: a, Workload: wl, Load: 1.2, Deadline: a.Deadline, Requests: 6000, Seed: 5, GatewayModel: GatewayModel{Jitter: 0.05},
		Guard: sneakpeek.GuardOptions{Window: 300, Distrust: 0.9}}
	run := func(pt Point, pol string) Metrics {
		t.Helper()
		pt.Policy = pol
		m, err := Simulate(pt, nil)
		if err != nil {
			t.Fatalf("%s: %v", pol, err)
		}
		return m
	}
	sp, gd := run(pt, "sneakpeek"), run(pt, PolicyGuarded)
	if gd.Distrusted != 0 || gd.Utility != sp.Utility || gd.GuardObserved == 0 {
		t.Fatalf("never distrusting: guarded %+v vs sneakpeek %.4f", gd, sp.Utility)
	}
	pt.Guard.Distrust = 0
	gd = run(pt, PolicyGuarded)
	t.Logf("calibrated, default thresholds: guarded %.3f vs sneakpeek %.3f (distrusted %.0f%%, observed %d, gap %+.3f)",
		gd.Utility, sp.Utility, 100*gd.Distrusted, gd.GuardObserved, gd.GuardGap)
	sure := withEstimates(a, func(p []float64) []float64 {
		q := make([]float64, len(p))
		q[scheduler.Argmax(p)] = 1
		return q
	})
	pt.App = sure
	ob, gd, gdd := run(pt, "oblivious"), run(pt, PolicyGuarded), run(pt, PolicyGuardedDeg)
	t.Logf("one-hot estimates: guarded %.3f (distrusted %.0f%%, flips %d, gap %+.3f), guarded-deg %.3f, sneakpeek %.3f, oblivious %.3f",
		gd.Utility, 100*gd.Distrusted, gd.GuardFlips, gd.GuardGap, gdd.Utility, run(pt, "sneakpeek").Utility, ob.Utility)
	if gd.Distrusted < 0.5 {
		t.Fatalf("one-hot estimates distrusted for only %.0f%% of requests", 100*gd.Distrusted)
	}
	if gd.Utility < ob.Utility-0.03 {
		t.Errorf("guarded %.3f well below oblivious %.3f", gd.Utility, ob.Utility)
	}
	if gd.Degraded > 0 && gd.Distrusted > 0.99 {
		t.Errorf("degraded answers while always distrusted")
	}
}

func TestCheckPolicy(t *testing.T) {
	for _, p := range []string{"sneakpeek", "oblivious", PolicyGuarded, PolicyGuardedDeg} {
		if err := CheckPolicy(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if CheckPolicy("nope") == nil {
		t.Error("unknown policy accepted")
	}
}
