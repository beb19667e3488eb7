package scheduler

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// bisectRef is solvePrice's bisection as it was before fluidSet.bisect (it
// evaluated use at every step): the reference of TestBisectIsTheBisection.
func bisectRef(fl *fluidSet, target float64) (float64, float64) {
	use := fl.use
	if use(0) <= target {
		return 0, 0
	}
	lo, hi := 0.0, 1.0
	for k := 0; use(hi) > target && k < 60; k++ {
		lo, hi = hi, hi*2
	}
	for range 40 {
		mid := (lo + hi) / 2
		if use(mid) > target {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, hi
}

// solvePriceRef is solvePrice with the plain bisection (bisectRef).
func (d *decisionState) solvePriceRef(win []int, arrivals float64) (float64, float64) {
	target, ok := d.priceTarget(win, arrivals)
	if !ok {
		return 0, 0
	}
	return bisectRef(d.flatten(win), target)
}

// fluidChoices is each member's choice at price p as use makes it: the index
// of its variant among its resident ones, -1 when its alternative is worth
// more or it has none.
func fluidChoices(fl *fluidSet, p float64) []int {
	out := make([]int, len(fl.alt))
	for k := range fl.alt {
		j, _ := fl.pick(k, p)
		if j >= 0 {
			j -= fl.off[k]
		}
		out[k] = int(j)
	}
	return out
}

// randomFluid is a random fluid problem: members of a few "applications"
// (each a set of variant times, with duplicates, zero times and near-equal
// times), some with no resident variant, utilities with ties (quantised),
// shared between members (valued alike) or not, negative ones, and
// alternatives that lose, tie or beat every variant.
func randomFluid(rng *rand.Rand) *fluidSet {
	apps := make([][]float64, 1+rng.IntN(4))
	for i := range apps {
		v := rng.IntN(8) // 0: none resident
		as := make([]float64, v)
		for j := range as {
			switch rng.IntN(10) {
			case 0:
				as[j] = 0
			case 1:
				if j > 0 {
					as[j] = as[j-1] // the same time
					break
				}
				fallthrough
			case 2:
				if j > 0 {
					as[j] = as[j-1] * (1 + 1e-12*float64(1+rng.IntN(3))) // near-equal
					break
				}
				fallthrough
			default:
				as[j] = math.Ldexp(1+rng.Float64(), -4-rng.IntN(12))
			}
		}
		apps[i] = as
	}
	quant := rng.IntN(3) == 0
	alike := rng.IntN(4) == 0
	n := 1 + rng.IntN(400)
	if rng.IntN(8) == 0 {
		n = 1 + rng.IntN(5)
	}
	fl := &fluidSet{off: []int32{0}}
	var shared [][]float64
	for range apps {
		shared = append(shared, nil)
	}
	for range n {
		ai := rng.IntN(len(apps))
		as := apps[ai]
		us := shared[ai]
		if us == nil || !alike {
			us = make([]float64, len(as))
			for j := range us {
				x := rng.Float64()
				if quant {
					x = float64(rng.IntN(9)) / 8
				}
				if rng.IntN(20) == 0 {
					x = -x
				}
				us[j] = x
			}
			if alike {
				shared[ai] = us
			}
		}
		alt := 0.0
		switch rng.IntN(6) {
		case 0:
			alt = 2 // beats every variant
		case 1:
			if len(us) > 0 {
				alt = us[rng.IntN(len(us))] // ties one
			}
		case 2:
			alt = -rng.Float64()
		case 3:
			alt = rng.Float64() / 2
		}
		fl.u = append(fl.u, us...)
		fl.a = append(fl.a, as...)
		fl.alt = append(fl.alt, alt)
		fl.off = append(fl.off, int32(len(fl.u)))
	}
	return fl
}

// TestBisectIsTheBisection: on random fluid problems (randomFluid) and
// targets (a share of the use at 0; the use at a random price exactly, so
// that the target sits on a level of the step function; that level nudged by
// an ulp or two; more than the use at 0), fluidSet.bisect returns the
// bisection's bracket to the bit, so the choices at its ends are the same.
func TestBisectIsTheBisection(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	trials, evals, zoneEvals, zoneSums, solved := 4000, 0, 0, 0, 0
	if testing.Short() || raceDetector {
		trials = 600
	}
	for trial := range trials {
		fl := randomFluid(rng)
		use0 := fl.use(0)
		for kind := range 5 {
			var target float64
			switch kind {
			case 0:
				target = use0 * rng.Float64()
			case 1:
				target = fl.use(math.Ldexp(rng.Float64(), rng.IntN(24)))
			case 2:
				target = math.Nextafter(fl.use(math.Ldexp(rng.Float64(), rng.IntN(24))), math.Inf(1))
			case 3:
				target = math.Nextafter(fl.use(math.Ldexp(rng.Float64(), rng.IntN(24))), 0)
			case 4:
				target = use0 * (1 + rng.Float64())
			}
			if !(target > 0) {
				target = 1e-9
			}
			wlo, whi := bisectRef(fl, target)
			fl.evals, fl.zoneEvals, fl.zoneSums = 0, 0, 0
			lo, hi := fl.bisect(target)
			if hi > 0 {
				solved++
				evals += fl.evals
				zoneEvals += fl.zoneEvals
				zoneSums += fl.zoneSums
			}
			if math.Float64bits(lo) != math.Float64bits(wlo) || math.Float64bits(hi) != math.Float64bits(whi) {
				t.Errorf("trial %d, target %v (kind %d): bracket [%v, %v], the bisection's [%v, %v]", trial, target, kind, lo, hi, wlo, whi)
			}
			for _, p := range [][2]float64{{lo, wlo}, {hi, whi}} {
				got, want := fluidChoices(fl, p[0]), fluidChoices(fl, p[1])
				for k := range got {
					if got[k] != want[k] {
						t.Errorf("trial %d, kind %d: member %d chooses %d at %v, %d at the bisection's %v", trial, kind, k, got[k], p[0], want[k], p[1])
						break
					}
				}
			}
			if t.Failed() {
				return
			}
		}
	}
	// The plain bisection evaluates use 41 times or more on every one.
	if solved > 0 && float64(evals)/float64(solved) > 20 {
		t.Errorf("%.1f evaluations of use per problem on average", float64(evals)/float64(solved))
	}
	t.Logf("%d problems with a price: %.1f evaluations of use and %.1f of zoneOver each on average (%.2f of which added up every time; the bisection: 41 or more of use)",
		solved, float64(evals)/float64(solved), float64(zoneEvals)/float64(solved), float64(zoneSums)/float64(solved))
}

// TestSolvePriceIsTheBisection: a decision's solvePrice (data-aware members
// with random estimates, the big variant resident or not, some alternatives
// worth more than any variant, a stream) returns the old bisection's bracket
// to the bit at arrival rates from free time to the cheapest variant's limit.
func TestSolvePriceIsTheBisection(t *testing.T) {
	a := testApp()
	q := randomEstimates(a, rand.New(rand.NewPCG(7, 8)))
	for _, resident := range []bool{true, false} {
		s := fluidSnap(a, q, resident)
		for _, w := range []view{{dataAware: true, byClass: true}, {mix: true}} {
			d := newDecisionState(s, w, 32)
			d.prepass(nil)
			win := d.window(128)
			for k, i := range win {
				if k%7 == 0 {
					d.members[i].alt = 2
				}
			}
			d.stream = append([]member(nil), d.members[len(d.members)/2:]...)
			priced := 0
			for _, arrivals := range []float64{0, 10, 100, 300, 1000, 2000, 3000, 5000, 1e4, 3e4, 1e5, 1e6} {
				wlo, whi := d.solvePriceRef(win, arrivals)
				d.fluid.evals, d.fluid.zoneEvals = 0, 0
				lo, hi := d.solvePrice(win, arrivals)
				// The plain bisection evaluates use 41 times or more; here the
				// corner settles all but a few mids.
				if d.fluid.evals > 2 || d.fluid.zoneEvals > 8 {
					t.Errorf("resident=%v %+v at %v/s: %d evaluations of use and %d of zoneOver", resident, w, arrivals, d.fluid.evals, d.fluid.zoneEvals)
				}
				if lo != wlo || hi != whi {
					t.Errorf("resident=%v %+v at %v/s: [%v, %v], the bisection's [%v, %v]", resident, w, arrivals, lo, hi, wlo, whi)
				}
				if hi > 0 {
					priced++
				}
			}
			if priced < 3 {
				t.Errorf("resident=%v %+v: a price at %d rates only", resident, w, priced)
			}
		}
	}
}

// closeApp is benchApp with 7 variants whose amortised times at batch 32 are
// 1.5, 1.7, 8, 12, 26, 60 and 90 us, as close at the cheap end as
// eval/testdata/profiles.json's fashion variants (logreg and mlp-small, 0.24
// us apart).
func closeApp(rng *rand.Rand) *App {
	a := benchApp(rng)
	for len(a.Variants) < 7 {
		v := *a.Variants[len(a.Variants)-1]
		v.Index = len(a.Variants)
		v.ID.Variant = fmt.Sprintf("v%d", v.Index)
		a.Variants = append(a.Variants, &v)
	}
	for i, per := range []float64{1.45, 1.65, 7.9, 11.8, 25.5, 59, 88} {
		a.Variants[i].Latency = linear(time.Duration(2000+1000*i), time.Duration(per*1000), 32)
	}
	return a
}

// benchSolve is a decision over benchApp (close: closeApp), every variant
// resident, with a window of 128 and a stream of stream members beyond it
// (data-aware, shrunk 0.5), for its price.
func benchSolve(tb testing.TB, stream int, close bool) (*decisionState, []int) {
	rng := rand.New(rand.NewPCG(3, 4))
	a := benchApp(rng)
	if close {
		a = closeApp(rng)
	}
	s := snap(t0, a, benchQueueLoad(rng, a, 128+stream, t0, true)...)
	d := newDecisionState(s, view{dataAware: true, byClass: true}, 32)
	d.shrink = 0.5
	d.prepass(nil)
	win := d.window(128)
	inWin := map[int]bool{}
	for _, i := range win {
		inWin[i] = true
	}
	for i := range d.members {
		if !inWin[i] {
			d.stream = append(d.stream, d.members[i])
		}
	}
	if len(win) != 128 || len(d.stream) != stream {
		tb.Fatalf("window %d, stream %d", len(win), len(d.stream))
	}
	return d, win
}

// BenchmarkSolvePrice is one decision's price solve (flatten, use(0), the
// bisection) with a window of 128 and a stream of 256 (the most the policy
// keeps, maxStream) or 4,872 members, over benchApp's 5 variants or
// closeApp's 7, at arrival rates that price time; "bisect" the old
// bisection, "exact" fluidSet.bisect. It reports the price found (the same
// for both) and fluidSet.bisect's evaluations per solve.
func BenchmarkSolvePrice(b *testing.B) {
	for _, app := range []string{"bench", "close"} {
		for _, stream := range []int{256, 4872} {
			rates := []float64{3000, 30000}
			if app == "close" {
				rates = []float64{300000, 1e6}
			}
			for _, rate := range rates {
				for _, how := range []string{"bisect", "exact"} {
					b.Run(fmt.Sprintf("%s/members=%d/rate=%g/%s", app, 128+stream, rate, how), func(b *testing.B) {
						d, win := benchSolve(b, stream, app == "close")
						solve := d.solvePrice
						if how == "bisect" {
							solve = d.solvePriceRef
						}
						lo, hi := solve(win, rate)
						if hi <= 0 {
							b.Fatalf("no price: [%v, %v]", lo, hi)
						}
						d.fluid.evals, d.fluid.zoneEvals, d.fluid.zoneSums = 0, 0, 0
						b.ResetTimer()
						for range b.N {
							solve(win, rate)
						}
						b.ReportMetric(hi, "price")
						if how == "exact" {
							b.ReportMetric(float64(d.fluid.evals)/float64(b.N), "evals/op")
							b.ReportMetric(float64(d.fluid.zoneEvals)/float64(b.N), "zone-evals/op")
							b.ReportMetric(float64(d.fluid.zoneSums)/float64(b.N), "zone-sums/op")
						}
					})
				}
			}
		}
	}
}
