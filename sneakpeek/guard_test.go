package sneakpeek

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/sneakgate/sneakgate/manifest"
)

// stream draws hand-made observations over k classes: the estimate puts its
// confidence c ~ U(lo, hi) on a class a and spreads the rest evenly; the true class
// is a with probability c - over (over > 0: overconfident), else another class
// uniformly; the reference answers the true class with probability refAcc, else
// another class uniformly.
type stream struct {
	rng            *rand.Rand
	k              int
	lo, hi         float64
	over, refAcc   float64
	p              []float64
	lastTrue, last int
}

func newStream(seed uint64, k int) *stream {
	return &stream{rng: rand.New(rand.NewPCG(seed, 7)), k: k, lo: 0.5, hi: 0.99, refAcc: 1, p: make([]float64, k)}
}

func (s *stream) other(c int) int {
	o := s.rng.IntN(s.k - 1)
	if o >= c {
		o++
	}
	return o
}

func (s *stream) next() ([]float64, int) {
	c := s.lo + (s.hi-s.lo)*s.rng.Float64()
	a := s.rng.IntN(s.k)
	for i := range s.p {
		s.p[i] = (1 - c) / float64(s.k-1)
	}
	s.p[a] = c
	y := a
	if s.rng.Float64() >= c-s.over {
		y = s.other(a)
	}
	ref := y
	if s.rng.Float64() >= s.refAcc {
		ref = s.other(y)
	}
	return s.p, ref
}

func feed(g *Guard, s *stream, n int) (flippedAt int) {
	flippedAt = -1
	t0 := g.Trusted()
	for i := range n {
		p, r := s.next()
		g.Observe(p, r)
		if flippedAt < 0 && g.Trusted() != t0 {
			flippedAt = i + 1
		}
	}
	return flippedAt
}

func TestGuardCalibratedStaysTrusted(t *testing.T) {
	for seed := range uint64(5) {
		g := NewGuard(GuardOptions{})
		s := newStream(seed, 6)
		if at := feed(g, s, 20*DefaultGuardWindow); at >= 0 {
			t.Fatalf("seed %d: calibrated stream distrusted after %d observations: %+v", seed, at, g.Stats())
		}
		st := g.Stats()
		if st.Observations != DefaultGuardWindow || st.Total != 20*DefaultGuardWindow || math.Abs(st.Gap) > 0.05 {
			t.Fatalf("seed %d: stats %+v", seed, st)
		}
	}
}

func TestGuardShiftDistrustsAfterFullWindow(t *testing.T) {
	g := NewGuard(GuardOptions{Window: 200})
	s := newStream(1, 4)
	s.over = 0.2 // badly overconfident from the start
	if at := feed(g, s, 199); at >= 0 {
		t.Fatalf("verdict after %d observations, before the window is full", at)
	}
	if !g.Trusted() {
		t.Fatal("distrusted before MinObservations")
	}
	feed(g, s, 1)
	if g.Trusted() {
		t.Fatalf("a 0.2 overconfident stream is trusted with a full window: %+v", g.Stats())
	}
	if st := g.Stats(); st.Gap < 0.12 || st.Flips != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGuardShiftAfterCalibrated(t *testing.T) {
	g := NewGuard(GuardOptions{})
	s := newStream(2, 6)
	feed(g, s, 2*DefaultGuardWindow)
	if !g.Trusted() {
		t.Fatalf("calibrated prefix distrusted: %+v", g.Stats())
	}
	s.over = 0.15
	at := feed(g, s, 2*DefaultGuardWindow)
	if at < 0 || at > DefaultGuardWindow {
		t.Fatalf("shift to 0.15 overconfidence flipped at %d (want within one window): %+v", at, g.Stats())
	}
	// Underconfidence is miscalibration too.
	g2 := NewGuard(GuardOptions{})
	s2 := newStream(3, 6)
	s2.lo, s2.hi, s2.over = 0.4, 0.7, -0.25
	if at := feed(g2, s2, DefaultGuardWindow); at != DefaultGuardWindow {
		t.Fatalf("underconfident stream flipped at %d: %+v", at, g2.Stats())
	}
}

func TestGuardRecoveryWithHysteresis(t *testing.T) {
	// A long window, so that the in-between gap is well inside the band.
	g := NewGuard(GuardOptions{Window: 3000, MinObservations: 1000})
	s := newStream(4, 5)
	s.over = 0.2
	feed(g, s, 1000)
	if g.Trusted() {
		t.Fatal("not distrusted")
	}
	// A gap between Retrust and Distrust keeps the current verdict either way.
	s.over = 0.052
	if at := feed(g, s, 10000); at >= 0 {
		t.Fatalf("distrusted guard re-trusted at a 0.052 gap after %d: %+v", at, g.Stats())
	}
	s.over = 0
	at := feed(g, s, 10000)
	if at < 0 {
		t.Fatalf("calibrated stream never re-trusted: %+v", g.Stats())
	}
	if !g.Trusted() {
		t.Fatal("flipped back")
	}
	t.Logf("re-trusted after %d calibrated observations", at)
	// And from trusted, the same in-between gap does not distrust.
	s.over = 0.052
	if at := feed(g, s, 10000); at >= 0 {
		t.Fatalf("trusted guard distrusted at a 0.052 gap after %d: %+v", at, g.Stats())
	}
}

func TestGuardImperfectReference(t *testing.T) {
	const k = 4
	// The reference is right 80% of the time, errors uniform.
	conf := make([][]float64, k)
	for y := range conf {
		conf[y] = make([]float64, k)
		for j := range conf[y] {
			conf[y][j] = 20.0 / 3
		}
		conf[y][y] = 80
	}
	withRef := NewGuard(GuardOptions{Reference: conf})
	asTruth := NewGuard(GuardOptions{})
	s := newStream(5, k)
	s.refAcc = 0.8
	for range 3 * DefaultGuardWindow {
		p, r := s.next()
		withRef.Observe(p, r)
		asTruth.Observe(p, r)
	}
	if !withRef.Trusted() {
		t.Fatalf("calibrated estimator distrusted against a known 80%% reference: %+v", withRef.Stats())
	}
	if asTruth.Trusted() {
		t.Fatalf("treating an 80%% reference as truth should look miscalibrated: %+v", asTruth.Stats())
	}
}

func TestGuardBaselineOffsets(t *testing.T) {
	s := newStream(6, 4)
	s.over = 0.12 // a constant, known miscalibration of the training distribution
	var ps [][]float64
	var refs []int
	for range 5000 {
		p, r := s.next()
		ps = append(ps, append([]float64(nil), p...))
		refs = append(refs, r)
	}
	b := GuardBaseline(ps, refs, nil)
	if math.Abs(b-0.12) > 0.02 {
		t.Fatalf("baseline %.3f, want about 0.12", b)
	}
	plain := NewGuard(GuardOptions{})
	based := NewGuard(GuardOptions{Baseline: b})
	for i := range ps[:4*DefaultGuardWindow] {
		plain.Observe(ps[i], refs[i])
		based.Observe(ps[i], refs[i])
	}
	if plain.Trusted() || !based.Trusted() {
		t.Fatalf("plain %+v, with baseline %+v", plain.Stats(), based.Stats())
	}
	if GuardBaseline(nil, nil, nil) != 0 {
		t.Fatal("empty baseline")
	}
}

func TestGuardIgnoresMalformed(t *testing.T) {
	g := NewGuard(GuardOptions{Reference: [][]float64{{1, 0}, {0, 1}}})
	g.Observe(nil, 0)
	g.Observe([]float64{0.5, 0.5}, 2)
	g.Observe([]float64{0.5, 0.5}, -1)
	g.Observe([]float64{0.2, 0.3, 0.5}, 1)
	g.Observe([]float64{0.9, 0.1}, 0)
	st := g.Stats()
	if st.Ignored != 4 || st.Total != 1 || st.Observations != 1 || st.Agreement != 1 || math.Abs(st.Predicted-0.9) > 1e-6 {
		t.Fatalf("stats %+v", st)
	}
	if o := g.Options(); o.Window != DefaultGuardWindow || o.MinObservations != DefaultGuardWindow ||
		o.Distrust != DefaultGuardDistrust || o.Retrust != DefaultGuardRetrust {
		t.Fatalf("defaults %+v", o)
	}
}

func TestGuardFor(t *testing.T) {
	app := &manifest.App{Variants: []manifest.Variant{
		{Name: "a", Accuracy: 0.8, Confusion: [][]float64{{8, 2}, {2, 8}}},
		{Name: "b", Accuracy: 0.9, Confusion: [][]float64{{9, 1}, {1, 9}}},
		{Name: "c", Accuracy: 0.9, Confusion: [][]float64{{10, 0}, {0, 10}}},
	}}
	g, m := NewGuardFor(app, GuardOptions{Window: 10})
	if m != 1 {
		t.Fatalf("reference variant %d, want 1", m)
	}
	if r := g.Options().Reference; r[0][0] != 0.9 || r[1][0] != 0.1 {
		t.Fatalf("reference %v", r)
	}
	if ReferenceVariant(&manifest.App{}) != -1 {
		t.Fatal("no variants")
	}
}

func TestGuardConcurrent(t *testing.T) {
	g := NewGuard(GuardOptions{Window: 64})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := newStream(uint64(w), 3)
			if w%2 == 1 {
				s.over = 0.3
			}
			for range 2000 {
				p, r := s.next()
				g.Observe(p, r)
				_ = g.Trusted()
			}
			_ = g.Stats()
		}()
	}
	wg.Wait()
	if st := g.Stats(); st.Total != 16000 || st.Observations != 64 {
		t.Fatalf("stats %+v", st)
	}
}

// An estimate of NaNs alone has no predicted class: it is ignored, as any NaN
// estimate is, not a panic.
func TestGuardIgnoresAllNaNEstimate(t *testing.T) {
	g := NewGuard(GuardOptions{Window: 10, Baseline: 0.5})
	g.Observe([]float64{math.NaN(), math.NaN()}, 0)
	if st := g.Stats(); st.Ignored != 1 || st.Observations != 0 {
		t.Fatalf("stats %+v, want the estimate ignored", st)
	}
}

func BenchmarkGuardObserve(b *testing.B) {
	g := NewGuard(GuardOptions{Reference: [][]float64{{9, 1, 0}, {1, 8, 1}, {0, 1, 9}}})
	p := []float64{0.7, 0.2, 0.1}
	b.ReportAllocs()
	for i := range b.N {
		g.Observe(p, i%3)
	}
}
