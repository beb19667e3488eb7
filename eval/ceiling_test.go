package eval

import (
	"math"
	"testing"

	"github.com/sneakgate/sneakgate/scheduler"
)

// TestFluidRealised checks the fluid optimum on two requests whose answer is
// worked out by hand: variant 0 costs 1 and is worth 0.5 to both, variant 1
// costs 3 and is worth 1.0 to the first and 0.6 to the second.
func TestFluidRealised(t *testing.T) {
	vals := [][]float64{{0.5, 1.0}, {0.5, 0.6}}
	cost := []float64{1, 3}
	for _, c := range []struct{ budget, want float64 }{
		{3, 0.8},     // everything on variant 1
		{4, 0.8},     // more time changes nothing
		{2, 0.75},    // the first request on variant 1, the second on 0
		{1.5, 0.625}, // half of the first request on variant 1
		{1, 0.5},     // everything on variant 0
		{2.5, 0.775}, // the first on 1, half of the second
	} {
		if got := fluidRealised(vals, vals, cost, c.budget); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("budget %v: realised %v, want %v", c.budget, got, c.want)
		}
	}
	// Values beyond [-1, 1] (a manifest may have them): the bracket of prices
	// grows until the cheap variant fits.
	wide := [][]float64{{0, 10}}
	for _, c := range []struct{ budget, want float64 }{{1, 0}, {1.5, 5}, {2, 10}} {
		if got := fluidRealised(wide, wide, []float64{1, 2}, c.budget); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("wide values, budget %v: realised %v, want %v", c.budget, got, c.want)
		}
	}
	// Realised by other values than those chosen on: the choices follow vals.
	real := [][]float64{{0, 0}, {1, 1}}
	if got := fluidRealised(vals, real, cost, 2); got != 0.5 {
		t.Errorf("realised under other values: %v, want 0.5", got)
	}
}

// TestCeilingsOrder checks, on the synthetic application, that knowing every
// answer is worth at least what either valuation realises, that it is worth
// less as the load rises, and that a load beyond the cheapest variant's
// capacity has no ceiling.
func TestCeilingsOrder(t *testing.T) {
	a := Synthetic(1)
	w := a.Workloads[0]
	loads := []float64{0.5, 1, 1.5, 3, 5, 1000}
	cs := Ceilings(a, w, loads, 3000, 1, 3, true, scheduler.Options{MaxBatch: 32}, 0)
	if len(cs) != len(loads) {
		t.Fatalf("%d ceilings for %d loads", len(cs), len(loads))
	}
	if last := cs[len(cs)-1]; last.Fits {
		t.Errorf("load 1000 fits: %+v", last)
	}
	prev := math.Inf(1)
	for _, c := range cs[:len(cs)-1] {
		if !c.Fits {
			t.Fatalf("load %v does not fit", c.Load)
		}
		if c.Oracle < c.Profiled-1e-9 || c.Oracle < c.Estimate-1e-9 {
			t.Errorf("load %v: oracle %.4f below profiled %.4f or estimate %.4f", c.Load, c.Oracle, c.Profiled, c.Estimate)
		}
		if c.Oracle > prev+1e-9 {
			t.Errorf("load %v: oracle %.4f above the lighter load's %.4f", c.Load, c.Oracle, prev)
		}
		prev = c.Oracle
	}
	// At half the best variant's capacity the profiled choice is the
	// profiled-best variant for every request.
	prof, _, real := ceilingValues(a, w, 3000, 1, true, 0)
	best := scheduler.Argmax(prof[0])
	var u float64
	for _, r := range real {
		u += r[best]
	}
	one := Ceilings(a, w, []float64{0.5}, 3000, 1, 1, true, scheduler.Options{MaxBatch: 32}, 0)[0]
	if got := u / float64(len(real)); math.Abs(one.Profiled-got) > 1e-9 {
		t.Errorf("profiled at load 0.5: %.6f, want the profiled-best variant's %.6f", one.Profiled, got)
	}
}

// TestCeilingsOptions checks that the ceilings follow the options the
// simulator's load and values follow: shrink, the gateway's cost per request,
// and the bootstrap replicate.
func TestCeilingsOptions(t *testing.T) {
	a := Synthetic(1)
	w := a.Workloads[0]
	loads := []float64{0.5, 1.5, 5}
	o := scheduler.Options{MaxBatch: 32}
	// Shrunk all the way to the profiled utilities, the estimate's values are
	// the profiled ones.
	o.Shrink = 1
	for _, c := range Ceilings(a, w, loads, 2000, 1, 2, true, o, 0) {
		if math.Abs(c.Estimate-c.Profiled) > 1e-9 {
			t.Errorf("load %v, shrink 1: estimate %.6f, profiled %.6f", c.Load, c.Estimate, c.Profiled)
		}
	}
	o.Shrink = 0
	// A gateway cost of the best variant's own time per request leaves the
	// cheapest variant too slow at load 5 (it fits without).
	best := scheduler.Amortised(a.Sched.Variants[a.Sched.DefaultVariant], 32)
	if !Ceilings(a, w, []float64{5}, 2000, 1, 1, true, o, 0)[0].Fits {
		t.Fatal("load 5 does not fit without a gateway cost")
	}
	if c := Ceilings(a, w, []float64{5}, 2000, 1, 1, true, o, best)[0]; c.Fits {
		t.Errorf("load 5 fits with a gateway cost of %v per request: %+v", best, c)
	}
	// The bootstrap replicate is drawn from when asked for.
	on := Ceilings(a, w, []float64{1.5}, 2000, 1, 1, true, o, 0)[0]
	off := Ceilings(a, w, []float64{1.5}, 2000, 1, 1, false, o, 0)[0]
	if on.Oracle == off.Oracle && on.Estimate == off.Estimate {
		t.Errorf("the same ceilings with and without the bootstrap replicate: %+v", on)
	}
	// MaxBatch 0 is the simulator's default, not batch 1.
	o.MaxBatch = 0
	if d, z := Ceilings(a, w, loads, 2000, 1, 1, true, scheduler.Options{MaxBatch: 32}, 0), Ceilings(a, w, loads, 2000, 1, 1, true, o, 0); d[2] != z[2] {
		t.Errorf("MaxBatch 0: %+v, want the default's %+v", z[2], d[2])
	}
}
