package scheduler

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/manifest"
)

func TestSharpen(t *testing.T) {
	a := testApp()
	a.Utility = [][]float64{{1, 0.2}, {-0.5, 1}} // mistakes differ in value
	now := time.Now()
	p := []float64{0.7, 0.3}
	base := Prepare(a, 1, now, now.Add(time.Second), p, nil)
	// Correctness equal to the class-based expected accuracy changes nothing.
	r := Prepare(a, 1, now, now.Add(time.Second), p, nil)
	Sharpen(r, base.ExpAccuracy)
	for m := range a.Variants {
		if math.Abs(r.ExpUtility[m]-base.ExpUtility[m]) > 1e-12 || math.Abs(r.ExpAccuracy[m]-base.ExpAccuracy[m]) > 1e-12 {
			t.Fatalf("variant %d: %v/%v, want Prepare's %v/%v", m, r.ExpUtility[m], r.ExpAccuracy[m], base.ExpUtility[m], base.ExpAccuracy[m])
		}
	}
	// An easy request for the cheap variant: its value rises to about the good one's.
	Sharpen(r, []float64{0.99, 0.99})
	if r.ExpAccuracy[0] < 0.98 || r.ExpUtility[0] <= base.ExpUtility[0] {
		t.Fatalf("easy request: cheap variant %v/%v (class-based %v)", r.ExpAccuracy[0], r.ExpUtility[0], base.ExpUtility[0])
	}
	// A hard one: lower than class-based.
	r = Prepare(a, 1, now, now.Add(time.Second), p, nil)
	Sharpen(r, []float64{0.2, 0.6})
	if !(r.ExpUtility[0] < base.ExpUtility[0] && r.ExpUtility[1] < base.ExpUtility[1]) {
		t.Fatalf("hard request: %v, class-based %v", r.ExpUtility, base.ExpUtility)
	}
	if math.Abs(r.ExpAccuracy[0]-0.2) > 1e-9 {
		t.Fatalf("accuracy %v, want the correctness 0.2", r.ExpAccuracy[0])
	}
	// Without an estimate it does nothing.
	r = Prepare(a, 1, now, now.Add(time.Second), nil, nil)
	u := r.ExpUtility[0]
	Sharpen(r, []float64{0.1, 0.1})
	if r.ExpUtility[0] != u {
		t.Fatal("changed a request without an estimate")
	}
}

// fashionWithAndWithoutTable returns the bundled fashion application as NewApp
// makes it, and a copy whose variants have no table of wrong answers' values
// (they are computed as needed).
func fashionWithAndWithoutTable(tb testing.TB) (a, plain *App) {
	tb.Helper()
	m, err := manifest.Load("../models/fashion/manifest.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	if a, err = NewApp(m); err != nil {
		tb.Fatal(err)
	}
	cp := *a
	cp.Variants = nil
	for _, v := range a.Variants {
		if v.wrong == nil {
			tb.Fatalf("variant %s: no table", v.ID)
		}
		c := *v
		c.wrong, c.wrongFor = nil, nil
		cp.Variants = append(cp.Variants, &c)
	}
	return a, &cp
}

// NewApp's table of wrong answers' values gives what computing them gives, bit
// for bit, in Sharpen and Reweigh; a Utility replaced after NewApp is not
// served from the table made for the old one.
func TestWrongValueTable(t *testing.T) {
	a, plain := fashionWithAndWithoutTable(t)
	rng := rand.New(rand.NewPCG(5, 6))
	now := time.Now()
	dist := func(k int) []float64 {
		p, sum := make([]float64, k), 0.0
		for i := range p {
			p[i] = rng.Float64()
			sum += p[i]
		}
		for i := range p {
			p[i] /= sum
		}
		return p
	}
	for trial := range 200 {
		p, q, c := dist(a.K), dist(a.K), make([]float64, len(a.Variants))
		for i := range c {
			c[i] = rng.Float64()
		}
		run := func(app *App) *Request {
			r := Prepare(app, 1, now, now.Add(time.Second), slices.Clone(p), nil)
			Sharpen(r, c)
			Reweigh(r, slices.Clone(q), nil)
			return r
		}
		got, want := run(a), run(plain)
		if !slices.Equal(got.ExpUtility, want.ExpUtility) || !slices.Equal(got.ShiftedUtility, want.ShiftedUtility) {
			t.Fatalf("trial %d: with the table %v / %v, computed %v / %v", trial,
				got.ExpUtility, got.ShiftedUtility, want.ExpUtility, want.ShiftedUtility)
		}
	}
	// Another utility matrix: every mistake worth 0.5 makes a sharpened value
	// differ from one under the manifest's matrix, unless it is computed.
	w := make([][]float64, a.K)
	for y := range w {
		w[y] = make([]float64, a.K)
		for c := range w[y] {
			w[y][c] = 0.5
		}
		w[y][y] = 1
	}
	a.Utility = w
	for _, v := range a.Variants {
		for y := range a.K {
			if got, want := wrongValue(v, w, y), computeWrongValue(v, w, y); got != want {
				t.Fatalf("variant %s class %d under a new matrix: %v, want %v", v.ID, y, got, want)
			}
		}
	}
}

// What a request's preparation pays for the values of wrong answers: Sharpen
// and Reweigh on fashion's seven variants, with NewApp's table ("table") and
// computing them ("computed").
func BenchmarkSharpenReweigh(b *testing.B) {
	a, plain := fashionWithAndWithoutTable(b)
	p, q, c := make([]float64, a.K), make([]float64, a.K), make([]float64, len(a.Variants))
	for i := range p {
		p[i], q[i] = 0.1, 0.1
	}
	for i := range c {
		c[i] = 0.7
	}
	now := time.Now()
	for name, app := range map[string]*App{"table": a, "computed": plain} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r := Prepare(app, 1, now, now.Add(time.Second), p, nil)
				Sharpen(r, c)
				Reweigh(r, q, nil)
			}
		})
	}
}
