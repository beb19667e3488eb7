package sneakpeek

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// gapRows draws n rows of two variants and two classes: the reference is
// right with probability 0.8; variant 1's estimate is the reference's plus a
// per-row gap e_i, uniform in [-0.15, 0.15] around a class mean (-0.05 on
// class 0, +0.05 on class 1). Where real, variant 1 is right with
// probability 0.8 + its gap; where not, with that of its class mean alone,
// whatever e_i says. Half the rows are of each class.
func gapRows(rng *rand.Rand, n int, real bool) ([][]float64, [][]bool, []int) {
	scores := [][]float64{make([]float64, n), make([]float64, n)}
	correct := [][]bool{make([]bool, n), make([]bool, n)}
	pred := make([]int, n)
	for i := range n {
		y := i % 2
		mean := []float64{-0.05, 0.05}[y]
		e := rng.Float64()*0.3 - 0.15
		scores[0][i], scores[1][i] = 0.8, 0.8+mean+e
		q := 0.8 + mean
		if real {
			q += e
		}
		correct[0][i] = rng.Float64() < 0.8
		correct[1][i] = rng.Float64() < q
		pred[i] = y
	}
	return scores, correct, pred
}

// A per-row gap that is pure noise gets a scale near 0 and one that holds a
// scale near 1; either way the centres are the classes' mean gaps (here far
// apart for the number of rows, so not shrunk together).
func TestFitGapScaleNoiseAndSignal(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct {
		real bool
		lo   float64
		hi   float64
	}{{false, 0, 0.15}, {true, 0.85, 1}} {
		scores, correct, pred := gapRows(rng, 20000, c.real)
		g := FitGapScale(GapPerVariant, scores, correct, pred, 2, 0)
		if g.Ref != 0 || len(g.Scale[1]) != 1 {
			t.Fatalf("real %v: ref %d, scales %v", c.real, g.Ref, g.Scale)
		}
		if s := g.Scale[1][0]; s < c.lo || s > c.hi {
			t.Errorf("real %v: scale %.3f, want in [%.2f, %.2f]", c.real, s, c.lo, c.hi)
		}
		if math.Abs(g.Center[1][0]+0.05) > 0.02 || math.Abs(g.Center[1][1]-0.05) > 0.02 {
			t.Errorf("real %v: centres %v, want about -0.05, +0.05", c.real, g.Center[1])
		}
		if gc := FitGapScale(GapPerClass, scores, correct, pred, 2, 0); len(gc.Scale[1]) != 2 ||
			math.Abs(gc.Scale[1][0]-g.Scale[1][0]) > 0.1 || math.Abs(gc.Scale[1][1]-g.Scale[1][0]) > 0.1 {
			t.Errorf("real %v: per class %v, want two scales near the variant's %.3f", c.real, gc.Scale[1], g.Scale[1][0])
		}
		// Held out, a scale predicts noisy gaps better than none does; where
		// the gaps hold, it makes next to no difference.
		ch := ChooseGapScale(scores, correct, pred, 2)
		gain := ch.Error[GapNone] - ch.Error[GapPerVariant]
		if !c.real && (ch.Kind == GapNone || gain < 1e-3) {
			t.Errorf("noise: ChooseGapScale %s (%v), want a scale", ch.Kind, ch.Error)
		}
		if c.real && math.Abs(gain) > 2e-4 {
			t.Errorf("real: ChooseGapScale errors %v, want none and per variant alike", ch.Error)
		}
	}
	// With the reference left to FitGapScale, the most accurate variant; a
	// variant less accurate than it beyond chance keeps its estimates.
	scores, correct, pred := gapRows(rng, 2000, false)
	for i := range correct[0] {
		correct[0][i] = false
	}
	g := FitGapScale(GapPerClass, scores, correct, pred, 2, -1)
	if g.Ref != 1 || !slices.Equal(g.Scale[0], []float64{1}) || !slices.Equal(g.Center[0], []float64{0, 0}) {
		t.Errorf("ref %d, scales %v, centres %v: want ref 1, variant 0 left as it is", g.Ref, g.Scale, g.Center)
	}
	if NearEqual(correct[0], correct[1]) || !NearEqual(correct[1], correct[1]) {
		t.Error("NearEqual: a variant never right is near-equal to one right 80% of the time, or one is not to itself")
	}
}

// Class means within the noise of their rows are shrunk to the overall mean;
// a class of many rows far from the others keeps its own.
func TestShrinkMeans(t *testing.T) {
	// Two classes of 100 rows, means 0.01 apart, each row's deviation of
	// variance 0.2: the spread is all noise.
	got := shrinkMeans([]float64{0.0, 0.01}, []float64{20, 20}, []float64{100, 100})
	if math.Abs(got[0]-0.005) > 1e-12 || math.Abs(got[1]-0.005) > 1e-12 {
		t.Errorf("within the noise: %v, want both 0.005", got)
	}
	got = shrinkMeans([]float64{-0.2, 0.2}, []float64{20, 20}, []float64{1000, 1000})
	if got[0] > -0.19 || got[1] < 0.19 {
		t.Errorf("far apart: %v, want about -0.2, +0.2", got)
	}
}

// Correctness applies the gap scale, c_ref + g + kappa (c_m - c_ref - g) by
// the class the estimate finds most likely, without allocating; files
// without one load and estimate as before; malformed ones are refused.
func TestDifficultyGapScale(t *testing.T) {
	p := &DifficultyParams{Features: "identity", Classes: 2, Variants: []string{"a", "b", "c"},
		Mean: make([]float64, 6), Scale: []float64{1, 1, 1, 1, 1, 1},
		Weights: [][]float64{{1, 0, 0, 0, 0, 0}, {0, 1, 0, 0, 0, 0}, {-1, 0, 0, 0, 0, 0}}, Bias: []float64{0, 0.5, 0}}
	raw, _ := json.Marshal(p)
	var old DifficultyParams
	if err := json.Unmarshal(raw, &old); err != nil {
		t.Fatal(err)
	}
	x, pe := []float32{0.5, -1}, []float64{0.25, 0.75}
	plain := make([]float64, 3)
	mo, err := NewDifficulty(&old, 2)
	if err != nil || mo.GapScaled() {
		t.Fatalf("a file without a gap scale: %v", err)
	}
	mo.Correctness(x, pe, plain)
	if want := []float64{sigmoid(0.5), sigmoid(-0.5), sigmoid(-0.5)}; !close3(plain, want) {
		t.Fatalf("without a gap scale: %v, want %v", plain, want)
	}
	q := *p
	q.GapRef = "a"
	q.GapScale = [][]float64{{1}, {0.5, 0}, {1}}
	q.GapCenter = [][]float64{{0, 0}, {-0.1, 0.02}, {0.3}}
	m, err := NewDifficulty(&q, 2)
	if err != nil || !m.GapScaled() {
		t.Fatal(err)
	}
	c := make([]float64, 3)
	m.Correctness(x, pe, c)
	// Class 1 is the more likely: b's scale 0 takes its centre, c's scale 1
	// leaves it as it was.
	if want := []float64{plain[0], plain[0] + 0.02, plain[2]}; !close3(c, want) {
		t.Errorf("class 1: %v, want %v", c, want)
	}
	pe0 := []float64{0.75, 0.25}
	m.Correctness(x, pe0, c)
	mo.Correctness(x, pe0, plain)
	if want := []float64{plain[0], plain[0] - 0.1 + 0.5*(plain[1]-plain[0]+0.1), plain[2]}; !close3(c, want) {
		t.Errorf("class 0: %v, want %v", c, want)
	}
	if a := testing.AllocsPerRun(100, func() { m.Correctness(x, pe, c) }); a > 0 {
		t.Errorf("Correctness allocates %.0f times", a)
	}
	for name, mut := range map[string]func(*DifficultyParams){
		"a known reference":   func(p *DifficultyParams) { p.GapRef = "z" },
		"all or none":         func(p *DifficultyParams) { p.GapCenter = nil },
		"one row per variant": func(p *DifficultyParams) { p.GapScale = p.GapScale[:2] },
		"1 or k values":       func(p *DifficultyParams) { p.GapScale[1] = []float64{0, 0, 0} },
		"scale in [0, 1]":     func(p *DifficultyParams) { p.GapScale[0] = []float64{1.5} },
		"a finite centre":     func(p *DifficultyParams) { p.GapCenter[2] = []float64{math.NaN()} },
	} {
		r := q
		r.GapScale = [][]float64{slices.Clone(q.GapScale[0]), slices.Clone(q.GapScale[1]), slices.Clone(q.GapScale[2])}
		r.GapCenter = [][]float64{slices.Clone(q.GapCenter[0]), slices.Clone(q.GapCenter[1]), slices.Clone(q.GapCenter[2])}
		mut(&r)
		if _, err := NewDifficulty(&r, 2); !errors.Is(err, ErrParams) {
			t.Errorf("%s: err %v, want ErrParams", name, err)
		}
	}
}

func close3(a, b []float64) bool {
	for i := range a {
		if math.Abs(a[i]-b[i]) > 1e-6 {
			return false
		}
	}
	return true
}
