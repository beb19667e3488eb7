package sneakpeek

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// vadUtility is the vad application's utility matrix: a missed speech window
// costs 1, a false alarm 0.1.
var vadUtility = [][]float64{{1, -0.1}, {-1, 1}}

// fourRows is an AnswerValue over two silence and two speech rows, one of each
// estimated wrong.
func fourRows(t *testing.T) *AnswerValue {
	t.Helper()
	a, err := NewAnswerValue([]int{0, 0, 1, 1}, [][]float64{{0.9, 0.1}, {0.4, 0.6}, {0.3, 0.7}, {0.6, 0.4}}, vadUtility)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAnswerValueByHand(t *testing.T) {
	// Two silence rows, two speech rows. Uncorrected, the estimate is right on
	// three of four: silence [0.9 0.1] right, silence [0.4 0.6] wrong (a false
	// alarm, -0.1), speech [0.3 0.7] right, speech [0.6 0.4] wrong (missed, -1).
	a := fourRows(t)
	one := []float64{1, 1}
	// Class means: silence (1 - 0.1)/2 = 0.45, speech (1 - 1)/2 = 0.
	if got, want := a.Value([]float64{0.5, 0.5}, one), 0.5*0.45+0.5*0; math.Abs(got-want) > 1e-12 {
		t.Errorf("balanced mix, no correction: %v, want %v", got, want)
	}
	if got, want := a.Value([]float64{0.2, 0.8}, one), 0.2*0.45; math.Abs(got-want) > 1e-12 {
		t.Errorf("speech-heavy mix, no correction: %v, want %v", got, want)
	}
	// A correction toward speech (ratio 1:2) turns [0.6 0.4] into speech (right)
	// and [0.9 0.1] stays silence: silence mean (1 - 0.1)/2, speech mean 1.
	if got, want := a.Value([]float64{0.2, 0.8}, []float64{1, 2}), 0.2*0.45+0.8*1; math.Abs(got-want) > 1e-12 {
		t.Errorf("speech-heavy mix, corrected: %v, want %v", got, want)
	}
}

func TestAnswerValueRefusesBadRows(t *testing.T) {
	for name, c := range map[string]struct {
		labels []int
		est    [][]float64
		w      [][]float64
	}{
		"no rows":          {nil, nil, vadUtility},
		"label out":        {[]int{2}, [][]float64{{0.5, 0.5}}, vadUtility},
		"short estimate":   {[]int{0}, [][]float64{{1}}, vadUtility},
		"counts differ":    {[]int{0, 1}, [][]float64{{0.5, 0.5}}, vadUtility},
		"ragged utility":   {[]int{0}, [][]float64{{0.5, 0.5}}, [][]float64{{1, 0}, {1}}},
		"one-class matrix": {[]int{0}, [][]float64{{1}}, [][]float64{{1}}},
	} {
		if _, err := NewAnswerValue(c.labels, c.est, c.w); !errors.Is(err, ErrParams) {
			t.Errorf("%s: %v, want ErrParams", name, err)
		}
	}
}

// TestPriorShiftPublishesMixes checks the Mix a PriorShift publishes: the
// training prior at first, the live prior after each MixRefresh corrections
// (not between), valued by its AnswerValue, and the training prior again after
// Reset, although the Mix before it was taken at a later correction count.
func TestPriorShiftPublishesMixes(t *testing.T) {
	av := fourRows(t)
	s := NewPriorShift([]float64{0.5, 0.5}, ShiftOptions{Window: 10, Answers: av})
	m0 := s.Mix()
	if m0 == nil || m0.Prior[0] != 0.5 || math.Abs(m0.Answer-av.Value([]float64{0.5, 0.5}, []float64{1, 1})) > 1e-12 {
		t.Fatalf("first Mix %+v", m0)
	}
	dst := make([]float64, 2)
	for range MixRefresh - 1 {
		s.Correct([]float64{0.2, 0.8}, dst)
	}
	if s.Mix() != m0 {
		t.Fatalf("a Mix published after %d corrections, want one every %d", MixRefresh-1, MixRefresh)
	}
	s.Correct([]float64{0.2, 0.8}, dst)
	m1 := s.Mix()
	live := s.Prior()
	if m1 == m0 || math.Abs(m1.Prior[1]-live[1]) > 1e-12 || !(m1.Prior[1] > 0.7) {
		t.Fatalf("after %d speech-heavy estimates: Mix prior %v, live prior %v", MixRefresh, m1.Prior, live)
	}
	ratio := []float64{live[0] / 0.5, live[1] / 0.5}
	if want := av.Value(live, ratio); math.Abs(m1.Answer-want) > 1e-12 {
		t.Errorf("Mix answer %v, want %v", m1.Answer, want)
	}
	s.Reset()
	if m := s.Mix(); m.Prior[0] != 0.5 || m.Prior[1] != 0.5 {
		t.Errorf("after Reset: Mix prior %v, want the training prior", m.Prior)
	}

	plain := NewPriorShift([]float64{0.5, 0.5}, ShiftOptions{})
	if m := plain.Mix(); m == nil || !math.IsNaN(m.Answer) {
		t.Errorf("without an AnswerValue: Mix %+v, want its Answer NaN", m)
	}
}

// Two snapshots published out of order (two Corrects racing): the later one
// stays the latest Mix.
func TestPriorShiftKeepsTheLaterMix(t *testing.T) {
	s := NewPriorShift([]float64{0.5, 0.5}, ShiftOptions{})
	s.mu.Lock()
	older, newer := s.newMix(), s.newMix()
	s.mu.Unlock()
	newer.prior[0] = 0.9
	s.publish(newer)
	s.publish(older)
	if got := s.Mix(); got.Prior[0] != 0.9 {
		t.Errorf("after publishing the older snapshot last: Mix prior %v, want the newer one's", got.Prior)
	}
}

// valueByScan is AnswerValue.Value as it was before its fast path: every row's
// argmax of p(c) r(c) by a full scan, each class's rows in the order Value sums
// them (by margin: sorted), so that the two sums round alike.
func valueByScan(a *AnswerValue, prior, ratio []float64) float64 {
	k := len(a.n)
	v := 0.0
	for y, rows := range a.sorted {
		if a.n[y] == 0 {
			continue
		}
		s := 0.0
		for p := range slices.Chunk(rows, k) {
			best, bc := math.Inf(-1), 0
			for c, x := range p {
				if x := x * ratio[c]; x > best {
					best, bc = x, c
				}
			}
			s += a.w[y][bc]
		}
		v += prior[y] * s / float64(a.n[y])
	}
	return v
}

// agreesWithScan makes an AnswerValue of the rows and fails t unless each class
// keeps exactly its rows and Value at prior and ratio is the full scan's, bit
// for bit (what names the case).
func agreesWithScan(t *testing.T, what string, labels []int, est, w [][]float64, prior, ratio []float64) {
	t.Helper()
	a, err := NewAnswerValue(labels, est, w)
	if err != nil {
		t.Fatal(err)
	}
	k := len(w)
	for y, rows := range a.sorted {
		var want, got [][]float64
		for i, l := range labels {
			if l == y {
				want = append(want, est[i])
			}
		}
		got = slices.Collect(slices.Chunk(rows, k))
		byValues := func(p, q []float64) int {
			return slices.CompareFunc(p, q, func(x, y float64) int { return cmp.Compare(x, y) })
		}
		slices.SortFunc(want, byValues)
		slices.SortFunc(got, byValues)
		if !slices.EqualFunc(got, want, func(p, q []float64) bool {
			return slices.EqualFunc(p, q, func(x, y float64) bool { return x == y || math.IsNaN(x) && math.IsNaN(y) })
		}) {
			t.Fatalf("%s: class %d keeps the rows %v, want %v", what, y, got, want)
		}
	}
	got, want := a.Value(prior, ratio), valueByScan(a, prior, ratio)
	if got != want && !(math.IsNaN(got) && math.IsNaN(want)) {
		t.Fatalf("%s (K %d, %d rows, ratio %v): Value %v, the full scan %v", what, k, len(labels), ratio, got, want)
	}
}

// randomUtility is a k x k matrix of values drawn by v.
func randomUtility(k int, v func() float64) [][]float64 {
	w := make([][]float64, k)
	for y := range w {
		w[y] = make([]float64, k)
		for c := range w[y] {
			w[y][c] = v()
		}
	}
	return w
}

// Value's shortcut (a row's top class when its margin exceeds the ratio's
// spread) gives exactly the full scan's value: rows with ties, zeros, values
// a rounding apart and values that are not finite; ratios near 1, far apart,
// equal, and not positive or not finite.
func TestAnswerValueFastPathIsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for trial := range 1000 {
		k := 2 + rng.IntN(9)
		rows := 1 + rng.IntN(200)
		labels, est := make([]int, rows), make([][]float64, rows)
		w := randomUtility(k, func() float64 { return rng.Float64()*2 - 1 })
		for i := range est {
			labels[i] = rng.IntN(k)
			p := make([]float64, k)
			for c := range p {
				p[c] = rng.Float64() * rng.Float64()
			}
			switch rng.IntN(8) {
			case 0: // a tie at the top
				p[rng.IntN(k)] = slices.Max(p)
			case 1: // one class nearly certain
				clear(p)
				p[rng.IntN(k)] = 1
			case 2: // two values a rounding apart
				top := slices.Index(p, slices.Max(p))
				p[(top+1)%k] = math.Nextafter(p[top], 0)
			case 3: // not finite, or negative
				p[rng.IntN(k)] = []float64{math.NaN(), math.Inf(1), -0.25}[rng.IntN(3)]
			case 4: // tiny values, down to subnormal products
				for c := range p {
					p[c] *= []float64{1e-140, 1e-160, 1e-300, 5e-324}[rng.IntN(4)]
				}
			case 5: // all zero, or one tiny value alone
				clear(p)
				if rng.IntN(2) == 0 {
					p[rng.IntN(k)] = 1e-200
				}
			}
			est[i] = p
		}
		prior, ratio := make([]float64, k), make([]float64, k)
		for c := range ratio {
			prior[c] = rng.Float64()
			switch trial % 5 {
			case 0: // the validation mix
				ratio[c] = 1
			case 1: // near it
				ratio[c] = 1 + (rng.Float64()-0.5)*0.05
			case 2: // far from it
				ratio[c] = math.Exp((rng.Float64() - 0.5) * 12)
			case 3: // steps a rounding apart
				ratio[c] = math.Nextafter(1, float64(c%2)*2)
			case 4: // not all usable, or extreme
				ratio[c] = []float64{0.7, 1.3, 0, math.NaN(), math.Inf(1), -1, 1e-120, 1e120, 1e-90}[rng.IntN(9)]
			}
		}
		agreesWithScan(t, fmt.Sprintf("trial %d", trial), labels, est, w, prior, ratio)
	}
}

// A Mix's cost: fashion-sized rows (10,000 of 10 classes, peaked estimates)
// at a ratio near 1 (an unshifted stream) and far from it.
func BenchmarkAnswerValue(b *testing.B) {
	const rows, k = 10000, 10
	rng := rand.New(rand.NewPCG(1, 2))
	labels, est := make([]int, rows), make([][]float64, rows)
	for i := range est {
		labels[i] = rng.IntN(k)
		p := make([]float64, k)
		for c := range p {
			p[c] = 0.02 * rng.Float64()
		}
		p[labels[i]] += 0.5 + 0.5*rng.Float64()
		est[i] = p
	}
	w := make([][]float64, k)
	for y := range w {
		w[y] = make([]float64, k)
		w[y][y] = 1
	}
	a, err := NewAnswerValue(labels, est, w)
	if err != nil {
		b.Fatal(err)
	}
	prior := make([]float64, k)
	for name, spread := range map[string]float64{"near": 0.1, "far": 8} {
		ratio := make([]float64, k)
		for c := range ratio {
			prior[c] = 1.0 / k
			ratio[c] = math.Exp((rng.Float64() - 0.5) * spread)
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				sink += a.Value(prior, ratio)
			}
		})
		b.Run(name+"/scan", func(b *testing.B) {
			for b.Loop() {
				sink += valueByScan(a, prior, ratio)
			}
		})
	}
}

// A Mix's cost as the gateway pays it: each bundled application's validation
// rows under its first estimator, valued at the mixes a PriorShift publishes
// (every MixRefresh corrections) while it corrects the same rows in a shuffled
// order: the live prior wanders around the validation mix by the noise of a
// 300-request window, the ratio with it.
func BenchmarkAnswerValueBundled(b *testing.B) {
	for _, app := range bundledApps(b) {
		if app.Validation == nil || len(app.Estimators) == 0 {
			continue
		}
		val := validation(b, app)
		est, err := Load(app, app.Estimators[0])
		if err != nil {
			b.Fatal(err)
		}
		k := app.K()
		ests, labels := make([][]float64, val.N), make([]int, val.N)
		for i := range val.N {
			ests[i] = make([]float64, k)
			est.Estimate(val.Row(i), ests[i])
			labels[i] = int(val.Labels[i])
		}
		a, err := NewAnswerValue(labels, ests, app.Utility)
		if err != nil {
			b.Fatal(err)
		}
		s := NewPriorShift(MeanEstimate(ests, k), ShiftOptions{})
		rng := rand.New(rand.NewPCG(3, 4))
		type mix struct{ prior, ratio []float64 }
		var mixes []mix
		dst := make([]float64, k)
		for n := 0; len(mixes) < 256; n++ {
			s.Correct(ests[rng.IntN(val.N)], dst)
			if n%MixRefresh == MixRefresh-1 && n > 10*DefaultShiftWindow {
				s.mu.Lock()
				mixes = append(mixes, mix{slices.Clone(s.prior), slices.Clone(s.ratio)})
				s.mu.Unlock()
			}
		}
		b.Run(app.Name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				m := mixes[i%len(mixes)]
				sink += a.Value(m.prior, m.ratio)
				i++
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(val.N), "ns/row")
		})
	}
}

// Values so large that their products with the ratio overflow: the full scan
// sees two +Inf products and keeps the first class, so the row's top class by
// margin is not its answer.
func TestAnswerValueOverflowingProducts(t *testing.T) {
	for _, ratio := range [][]float64{{1e50, 1e50}, {1e9, 1e9}, {1, 1e10}} {
		agreesWithScan(t, "overflowing", []int{0}, [][]float64{{1e300, 1e308}}, [][]float64{{1, 0}, {0, 1}}, []float64{1, 1}, ratio)
	}
}

// Rows and ratios drawn over the whole float64 range, log-uniformly.
func TestAnswerValueFastPathIsExactWideRange(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	logU := func(lo, hi float64) float64 { return math.Pow(10, lo+(hi-lo)*rng.Float64()) }
	for trial := range 3000 {
		k := 2 + rng.IntN(4)
		rows := 1 + rng.IntN(30)
		labels, est := make([]int, rows), make([][]float64, rows)
		w := randomUtility(k, func() float64 { return float64(rng.IntN(1000)) })
		for i := range est {
			labels[i] = rng.IntN(k)
			p := make([]float64, k)
			scale := logU(-320, 308)
			for c := range p {
				p[c] = min(scale*logU(-3, 0), math.MaxFloat64)
			}
			if rng.IntN(3) == 0 {
				p[rng.IntN(k)] = scale * logU(0, 30)
			}
			est[i] = p
		}
		prior, ratio := make([]float64, k), make([]float64, k)
		rs := logU(-110, 110)
		for c := range ratio {
			prior[c] = 1
			ratio[c] = rs * logU(-3, 3)
		}
		agreesWithScan(t, fmt.Sprintf("trial %d, est %v", trial, est), labels, est, w, prior, ratio)
	}
}
