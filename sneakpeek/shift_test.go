package sneakpeek

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// gaussStream is a hand-made calibrated estimator: class y has feature
// x ~ N(mu[y], 1), and the estimator returns the exact Bayes posterior under the
// training prior. Samples are drawn from the live prior.
type gaussStream struct {
	mu    []float64
	train []float64
	rng   *rand.Rand
}

func (g *gaussStream) posterior(x float64, prior, dst []float64) {
	s := 0.0
	for y, m := range g.mu {
		d := x - m
		dst[y] = prior[y] * math.Exp(-0.5*d*d)
		s += dst[y]
	}
	for y := range dst {
		dst[y] /= s
	}
}

func (g *gaussStream) draw(live []float64) (int, float64) {
	u := g.rng.Float64()
	y := len(live) - 1
	for i, v := range live {
		if u < v {
			y = i
			break
		}
		u -= v
	}
	return y, g.mu[y] + g.rng.NormFloat64()
}

func TestPriorShiftConvergesToShiftedMix(t *testing.T) {
	train := []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}
	live := []float64{0.7, 0.2, 0.1}
	g := &gaussStream{mu: []float64{0, 2, 4}, train: train, rng: rand.New(rand.NewPCG(1, 2))}
	s := NewPriorShift(train, ShiftOptions{Window: 500})
	p := make([]float64, 3)
	q := make([]float64, 3)
	bayes := make([]float64, 3)
	var errSum, rawErrSum float64
	var nErr int
	const n = 30000
	avg := make([]float64, 3)
	for i := 0; i < n; i++ {
		_, x := g.draw(live)
		g.posterior(x, train, p)
		s.Correct(p, q)
		if i >= n/2 {
			g.posterior(x, live, bayes)
			for y := range q {
				errSum += math.Abs(q[y] - bayes[y])
				rawErrSum += math.Abs(p[y] - bayes[y])
			}
			nErr++
			pr := s.Prior()
			for y := range avg {
				avg[y] += pr[y] / (n / 2)
			}
		}
	}
	pr := s.Prior()
	for y := range live {
		if math.Abs(pr[y]-live[y]) > 0.06 {
			t.Errorf("final prior %v, want near %v", pr, live)
			break
		}
		if math.Abs(avg[y]-live[y]) > 0.03 {
			t.Errorf("mean prior over the second half %v, want near %v", avg, live)
			break
		}
	}
	mae, rawMAE := errSum/float64(nErr*3), rawErrSum/float64(nErr*3)
	t.Logf("prior %v (mean %v); corrected posterior MAE vs Bayes with the true prior %.4f (uncorrected %.4f)", pr, avg, mae, rawMAE)
	if mae > 0.02 {
		t.Errorf("corrected posteriors are %.4f from Bayes' rule with the true prior (want <= 0.02)", mae)
	}
	if mae > rawMAE/4 {
		t.Errorf("correction removed too little of the bias: %.4f vs %.4f uncorrected", mae, rawMAE)
	}
}

func TestPriorShiftFixedPriorIsBayes(t *testing.T) {
	// With the live prior known and frozen, Correct is exactly Bayes' rule.
	train := []float64{0.5, 0.3, 0.2}
	live := []float64{0.1, 0.3, 0.6}
	g := &gaussStream{mu: []float64{0, 1, 3}, train: train, rng: rand.New(rand.NewPCG(3, 4))}
	// Window 1: pi_hat becomes the first corrected estimate; at the start the
	// ratio is 1, so correcting the live prior itself sets pi_hat to it. Freeze.
	set := NewPriorShift(train, ShiftOptions{Window: 1})
	q := make([]float64, 3)
	set.Correct(live, q) // ratio 1 at start: q = live, pi_hat = live
	if pr := set.Prior(); math.Abs(pr[0]-0.1) > 1e-12 || math.Abs(pr[2]-0.6) > 1e-12 {
		t.Fatalf("prior %v, want %v", pr, live)
	}
	set.SetFrozen(true)
	p := make([]float64, 3)
	bayes := make([]float64, 3)
	for i := 0; i < 1000; i++ {
		_, x := g.draw(live)
		g.posterior(x, train, p)
		set.Correct(p, q)
		g.posterior(x, live, bayes)
		for y := range q {
			if math.Abs(q[y]-bayes[y]) > 1e-9 {
				t.Fatalf("corrected %v, Bayes %v", q, bayes)
			}
		}
	}
	if pr := set.Prior(); math.Abs(pr[1]-0.3) > 1e-12 {
		t.Errorf("frozen prior moved: %v", pr)
	}
}

func TestPriorShiftUnshiftedLeavesEstimates(t *testing.T) {
	train := []float64{0.6, 0.25, 0.15}
	g := &gaussStream{mu: []float64{0, 1.5, 3}, train: train, rng: rand.New(rand.NewPCG(5, 6))}
	s := NewPriorShift(train, ShiftOptions{}) // default window
	p := make([]float64, 3)
	q := make([]float64, 3)
	var diff, maxPriorDev float64
	const n = 20000
	for i := 0; i < n; i++ {
		_, x := g.draw(train)
		g.posterior(x, train, p)
		s.Correct(p, q)
		for y := range q {
			diff += math.Abs(q[y] - p[y])
		}
		for y, v := range s.Prior() {
			maxPriorDev = math.Max(maxPriorDev, math.Abs(v-train[y]))
		}
	}
	mad := diff / (n * 3)
	t.Logf("unshifted: mean |q - p| %.4f, max prior deviation %.4f", mad, maxPriorDev)
	if mad > 0.02 {
		t.Errorf("unshifted stream: estimates moved by %.4f on average (want <= 0.02)", mad)
	}
	if maxPriorDev > 0.12 {
		t.Errorf("unshifted stream: prior wandered %.3f from the training prior", maxPriorDev)
	}
}

func TestPriorShiftFloorPreventsCollapse(t *testing.T) {
	s := NewPriorShift([]float64{0.25, 0.25, 0.25, 0.25}, ShiftOptions{Window: 10, Floor: 0.01})
	q := make([]float64, 4)
	for i := 0; i < 5000; i++ {
		s.Correct([]float64{1, 0, 0, 0}, q)
	}
	pr := s.Prior()
	sum := 0.0
	for _, v := range pr {
		sum += v
		if v < 0.01-1e-12 {
			t.Errorf("prior %v below the floor", pr)
		}
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("prior %v sums to %v", pr, sum)
	}
	// A class that comes back is still seen (its ratio is not 0) and recovers.
	for i := 0; i < 200; i++ {
		s.Correct([]float64{0.1, 0.9, 0, 0}, q)
	}
	if pr := s.Prior(); pr[1] < 0.5 {
		t.Errorf("class 1 did not recover from the floor: %v", pr)
	}
}

func TestPriorShiftDegenerateInputs(t *testing.T) {
	s := NewPriorShift([]float64{0, 1, math.NaN()}, ShiftOptions{})
	tp := s.TrainPrior()
	for _, v := range tp {
		if !(v > 0) {
			t.Fatalf("train prior %v not floored", tp)
		}
	}
	q := make([]float64, 3)
	s.Correct([]float64{0, 0, 0}, q)
	s.Correct([]float64{math.NaN(), 1, 0}, q) // NaN entry dropped, still valid
	if math.IsNaN(q[0]) || math.Abs(q[0]+q[1]+q[2]-1) > 1e-12 {
		t.Errorf("corrected %v", q)
	}
	s.Correct([]float64{0.5, 0.5}, q) // wrong length: copied
	if q[0] != 0.5 || q[1] != 0.5 {
		t.Errorf("wrong-length p not copied: %v", q)
	}
	if s.Observed() != 1 {
		t.Errorf("observed %d, want 1", s.Observed())
	}
	for _, v := range s.Prior() {
		if math.IsNaN(v) {
			t.Fatalf("prior %v", s.Prior())
		}
	}
	// In place.
	p := []float64{0.2, 0.3, 0.5}
	s.Correct(p, p)
	if math.Abs(p[0]+p[1]+p[2]-1) > 1e-12 {
		t.Errorf("in place: %v", p)
	}
}

// CorrectOnly then, when it says Correct would have counted the estimate,
// Observe of what it wrote is Correct, degenerate estimates included;
// CorrectOnly alone leaves the prior as it was, so a caller can correct every
// copy of a request and count it once.
func TestPriorShiftCorrectOnlyThenObserveIsCorrect(t *testing.T) {
	g := &gaussStream{mu: []float64{0, 2, 4}, train: []float64{0.5, 0.3, 0.2}, rng: rand.New(rand.NewPCG(3, 4))}
	one := NewPriorShift(g.train, ShiftOptions{Window: 50})
	two := NewPriorShift(g.train, ShiftOptions{Window: 50})
	p, q1, q2 := make([]float64, 3), make([]float64, 3), make([]float64, 3)
	degenerate := [][]float64{{0, 0, 0}, {math.NaN(), 1, 0}, {math.Inf(1), 1, 0}, {0.5, 0.5}}
	for i := range 1000 {
		_, x := g.draw([]float64{0.1, 0.2, 0.7})
		g.posterior(x, g.train, p)
		if i%100 == 0 {
			p = degenerate[i/100%len(degenerate)]
		}
		one.Correct(p, q1)
		before := two.Prior()
		counts := two.CorrectOnly(p, q2)
		if after := two.Prior(); !slices.Equal(before, after) {
			t.Fatalf("step %d: CorrectOnly moved the prior from %v to %v", i, before, after)
		}
		if counts {
			two.Observe(q2)
		}
		if !slices.Equal(q1, q2) || !slices.Equal(one.Prior(), two.Prior()) {
			t.Fatalf("step %d (p %v): Correct gave %v, prior %v; CorrectOnly and Observe %v, prior %v", i, p, q1, one.Prior(), q2, two.Prior())
		}
		p = make([]float64, 3)
	}
	if one.Observed() != two.Observed() || one.Mix().Prior[0] != two.Mix().Prior[0] {
		t.Errorf("counted %d vs %d, mix %v vs %v", one.Observed(), two.Observed(), one.Mix().Prior, two.Mix().Prior)
	}
	n, prior := two.Observed(), two.Prior()
	for _, q := range [][]float64{{0.5, 0.5}, {0, 0, 0}, {math.NaN(), 0.5, 0.5}, {math.Inf(1), 0, 0}, {-0.5, 1, 0.5}} {
		two.Observe(q)
	}
	if two.Observed() != n || !slices.Equal(two.Prior(), prior) {
		t.Errorf("Observe of estimates that are no distribution counted them: %d, prior %v; was %d, %v", two.Observed(), two.Prior(), n, prior)
	}
}

func TestPriorShiftDeterministicAndNoAlloc(t *testing.T) {
	run := func() []float64 {
		g := &gaussStream{mu: []float64{0, 2}, train: []float64{0.5, 0.5}, rng: rand.New(rand.NewPCG(7, 8))}
		s := NewPriorShift(g.train, ShiftOptions{Window: 100})
		p, q := make([]float64, 2), make([]float64, 2)
		for i := 0; i < 2000; i++ {
			_, x := g.draw([]float64{0.9, 0.1})
			g.posterior(x, g.train, p)
			s.Correct(p, q)
		}
		return s.Prior()
	}
	a, b := run(), run()
	if a[0] != b[0] || a[1] != b[1] {
		t.Errorf("not deterministic: %v vs %v", a, b)
	}
	s := NewPriorShift([]float64{0.2, 0.3, 0.5}, ShiftOptions{})
	p, q := []float64{0.1, 0.6, 0.3}, make([]float64, 3)
	if n := testing.AllocsPerRun(1000, func() { s.Correct(p, q) }); n != 0 {
		t.Errorf("Correct allocates %v times per call", n)
	}
}

func TestPriorShiftConcurrent(t *testing.T) {
	s := NewPriorShift([]float64{0.5, 0.3, 0.2}, ShiftOptions{Window: 50})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			q := make([]float64, 3)
			p := []float64{0.7, 0.2, 0.1}
			if w%2 == 1 {
				p = []float64{0.1, 0.2, 0.7}
			}
			for i := 0; i < 2000; i++ {
				s.Correct(p, q)
				if i%100 == 0 {
					_ = s.Prior()
				}
			}
		}(w)
	}
	wg.Wait()
	if s.Observed() != 16000 {
		t.Errorf("observed %d", s.Observed())
	}
	sum := 0.0
	for _, v := range s.Prior() {
		sum += v
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("prior sums to %v", sum)
	}
}

func BenchmarkPriorShiftCorrect(b *testing.B) {
	s := NewPriorShift([]float64{0.1, 0.2, 0.3, 0.1, 0.2, 0.1}, ShiftOptions{})
	p, q := []float64{0.05, 0.1, 0.5, 0.05, 0.2, 0.1}, make([]float64, 6)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s.Correct(p, q)
	}
}

// An estimator that leans to class 1 on the live inputs (its posteriors are
// computed as if class 1's feature were nearer class 0's than it is) drives
// the EM fed its estimates to a mix that leans the same way; fed a model's
// answers through the model's confusion (ObserveAnswer), the live prior
// settles at the true mix, and each such request counts once.
func TestPriorShiftObserveAnswerFollowsTheModel(t *testing.T) {
	train := []float64{0.6, 0.4}
	live := []float64{0.9, 0.1}
	cond := [][]float64{{0.9, 0.1}, {0.2, 0.8}} // the model's confusion, rows normalised
	g := &gaussStream{mu: []float64{0, 2}, train: train, rng: rand.New(rand.NewPCG(5, 6))}
	lean := &gaussStream{mu: []float64{0, 1.2}} // the estimator's mistaken view of the inputs
	answers := rand.New(rand.NewPCG(7, 8))
	est := NewPriorShift(train, ShiftOptions{Window: 300})
	ans := NewPriorShift(train, ShiftOptions{Window: 300})
	p, q := make([]float64, 2), make([]float64, 2)
	like := make([]float64, 2)
	const n = 20000
	var estAvg, ansAvg float64
	for i := range n {
		y, x := g.draw(live)
		lean.posterior(x, train, p)
		est.Correct(p, q)
		if !ans.CorrectOnly(p, q) {
			t.Fatalf("step %d: CorrectOnly refused %v", i, p)
		}
		yhat := 0
		if answers.Float64() >= cond[y][0] {
			yhat = 1
		}
		for c := range like {
			like[c] = cond[c][yhat]
		}
		ans.ObserveAnswer(like)
		if i >= n/2 {
			estAvg += est.Prior()[1] / (n / 2)
			ansAvg += ans.Prior()[1] / (n / 2)
		}
	}
	t.Logf("live class-1 share %.2f: EM on the estimates %.3f, on the model's answers %.3f", live[1], estAvg, ansAvg)
	if math.Abs(ansAvg-live[1]) > 0.02 {
		t.Errorf("live prior from the model's answers %.3f, want %.2f ± 0.02", ansAvg, live[1])
	}
	if estAvg-live[1] < 0.05 {
		t.Errorf("EM on the leaning estimates %.3f: the test's estimator should lean to class 1", estAvg)
	}
	if ans.Observed() != n {
		t.Errorf("counted %d, want %d", ans.Observed(), n)
	}
	prior := ans.Prior()
	for _, l := range [][]float64{{0.5}, {0, 0}, {math.NaN(), 0.5}, {math.Inf(1), 0.1}, {-0.1, 0.5}} {
		ans.ObserveAnswer(l)
	}
	if ans.Observed() != n || !slices.Equal(ans.Prior(), prior) {
		t.Errorf("ObserveAnswer of likelihoods that are not one counted them: %d, prior %v; was %v", ans.Observed(), ans.Prior(), prior)
	}
}
