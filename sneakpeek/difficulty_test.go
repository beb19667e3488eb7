package sneakpeek

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/manifest"
)

func TestAUC(t *testing.T) {
	for _, c := range []struct {
		s    []float64
		l    []bool
		want float64
	}{
		{[]float64{0.1, 0.2, 0.8, 0.9}, []bool{false, false, true, true}, 1},
		{[]float64{0.1, 0.2, 0.8, 0.9}, []bool{true, true, false, false}, 0},
		{[]float64{0.5, 0.5, 0.5, 0.5}, []bool{true, false, true, false}, 0.5},
		{[]float64{0.1, 0.4, 0.35, 0.8}, []bool{false, false, true, true}, 0.75},
	} {
		if got := AUC(c.s, c.l); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("AUC(%v, %v) = %v, want %v", c.s, c.l, got, c.want)
		}
	}
	if !math.IsNaN(AUC([]float64{1, 2}, []bool{true, true})) {
		t.Error("AUC with one class should be NaN")
	}
}

// On rows whose correctness follows a known logistic model of the features,
// the trained model ranks held-out rows about as well as the true one.
func TestTrainDifficultyRecoversAModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n, d, k = 4000, 4, 2
	row := func() DifficultyRow {
		x := make([]float32, d)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		p := []float64{0.5, 0.5}
		// variant 0: right when x0 is large; variant 1: always coin flips.
		c0 := sigmoid(3*float64(x[0]) - 1)
		return DifficultyRow{Input: x, Estimate: p, Correct: []bool{rng.Float64() < c0, rng.Float64() < 0.5}}
	}
	train := make([]DifficultyRow, n)
	for i := range train {
		train[i] = row()
	}
	p, err := TrainDifficulty(FormPerVariant, "identity", d, k, []string{"sharp", "coin"}, train, 1e-3)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewDifficulty(p, d)
	if err != nil {
		t.Fatal(err)
	}
	var s0, truth, s1 []float64
	var l0, l1 []bool
	c := make([]float64, 2)
	for range 2000 {
		r := row()
		m.Correctness(r.Input, r.Estimate, c)
		s0, s1 = append(s0, c[0]), append(s1, c[1])
		truth = append(truth, float64(r.Input[0]))
		l0, l1 = append(l0, r.Correct[0]), append(l1, r.Correct[1])
	}
	got, best := AUC(s0, l0), AUC(truth, l0)
	if got < best-0.01 {
		t.Errorf("sharp variant: AUC %.3f, the true model's %.3f", got, best)
	}
	if a := AUC(s1, l1); math.Abs(a-0.5) > 0.05 {
		t.Errorf("coin variant: AUC %.3f, want about 0.5 (nothing to learn)", a)
	}
	if w := p.Weights[0][0] * 1 / p.Scale[0]; w < 2 {
		t.Errorf("weight of x0 for the sharp variant %.2f, want about 3", w)
	}
}

// On the held-out test split of satellite (never used to train it), the
// difficulty model tells which requests each variant gets right better than
// the class-based expected accuracy does: real models, real data.
func TestDifficultyBeatsClassBasedOnHeldOutRows(t *testing.T) {
	app, err := manifest.Load("../models/satellite/manifest.yaml")
	if err != nil {
		t.Fatal(err)
	}
	diff, err := LoadDifficulty(app)
	if err != nil || diff == nil {
		t.Fatalf("LoadDifficulty: %v, %v", diff, err)
	}
	var est Estimator
	for _, e := range app.Estimators {
		if e.Name == app.Difficulty.Estimator {
			if est, err = Load(app, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	test, err := dataset.Read(app.Path(app.Samples.File))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Options{LibraryPath: testenv.ORTLib(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if err := eng.Register(app); err != nil {
		t.Fatal(err)
	}
	k, nv := app.K(), len(app.Variants)
	p, c := make([]float64, k), make([]float64, nv)
	sample := make([][]float64, nv)
	class := make([][]float64, nv)
	for i := range test.N {
		est.Estimate(test.Row(i), p)
		diff.Correctness(test.Row(i), p, c)
		for v := range nv {
			if !(c[v] > 0 && c[v] < 1) {
				t.Fatalf("row %d variant %d: correctness %v", i, v, c[v])
			}
			sample[v] = append(sample[v], c[v])
			a := 0.0
			for y := range k {
				a += p[y] * app.Variants[v].Recall[y]
			}
			class[v] = append(class[v], a)
		}
	}
	var sumS, sumC float64
	for v, mv := range app.Variants {
		id := engine.VariantID{App: app.Name, Variant: mv.Name}
		if _, err := eng.Load(id); err != nil {
			t.Fatal(err)
		}
		rows := make([][]float32, test.N)
		for i := range rows {
			rows[i] = test.Row(i)
		}
		out, err := eng.Run(id, rows)
		if err != nil {
			t.Fatal(err)
		}
		right := make([]bool, test.N)
		for i, q := range out {
			top := 0
			for y := range q {
				if q[y] > q[top] {
					top = y
				}
			}
			right[i] = top == int(test.Labels[i])
		}
		s, cl := AUC(sample[v], right), AUC(class[v], right)
		t.Logf("%-10s test AUC: per-sample %.3f, class-based %.3f", mv.Name, s, cl)
		sumS += s
		sumC += cl
	}
	if sumS/float64(nv) < sumC/float64(nv)+0.03 {
		t.Errorf("mean AUC per-sample %.3f, class-based %.3f: want at least 0.03 better", sumS/float64(nv), sumC/float64(nv))
	}
}

// Every bundled application that declares a difficulty model loads it.
func TestBundledDifficultyLoads(t *testing.T) {
	for _, a := range bundledApps(t) {
		if a.Difficulty == nil {
			continue
		}
		d, err := LoadDifficulty(a)
		if err != nil || d == nil {
			t.Errorf("%s: %v", a.Name, err)
			continue
		}
		// The manifest's form must be the parameter file's.
		if a.Difficulty.Form != d.Form() {
			t.Errorf("%s: manifest form %q, model %q", a.Name, a.Difficulty.Form, d.Form())
		}
		b := *a
		dd := *a.Difficulty
		dd.Form = map[string]string{FormShared: FormPerVariant, FormPerVariant: FormShared}[d.Form()]
		b.Difficulty = &dd
		if _, err := LoadDifficulty(&b); !errors.Is(err, ErrParams) {
			t.Errorf("%s: a manifest naming the other form loads: %v", a.Name, err)
		}
	}
}

// Two variants whose correctness follows one latent difficulty, the second
// always a little worse, with features that carry nothing besides: fitted per
// variant on a few hundred rows, the noise in the two regressions ranks the
// worse variant first on many held-out rows, and a scheduler with engine time
// to spare would serve them with it. The shared form's curves cross only where
// both variants are nearly always right, so what choosing by its estimates
// loses against always choosing the better variant stays small, while each
// variant's rows are ranked as well.
func TestSharedFormKeepsVariantsInOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const d, k = 24, 2
	truth := func(x []float32) (float64, float64) {
		h := float64(x[0])
		return sigmoid(2 + 2*h), sigmoid(1.4 + 2*h)
	}
	row := func() DifficultyRow {
		x := make([]float32, d)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		c0, c1 := truth(x)
		return DifficultyRow{Input: x, Estimate: []float64{0.5, 0.5},
			Correct: []bool{rng.Float64() < c0, rng.Float64() < c1}}
	}
	train := make([]DifficultyRow, 600)
	for i := range train {
		train[i] = row()
	}
	test := make([]DifficultyRow, 4000)
	for i := range test {
		test[i] = row()
	}
	for _, c := range []struct {
		form             string
		minLoss, maxLoss float64 // expected accuracy lost by choosing on the estimates
	}{
		{FormPerVariant, 0.015, 1},
		{FormShared, 0, 0.006},
	} {
		p, err := TrainDifficulty(c.form, "identity", d, k, []string{"better", "worse"}, train, 1e-3)
		if err != nil {
			t.Fatal(err)
		}
		m, err := NewDifficulty(p, d)
		if err != nil {
			t.Fatal(err)
		}
		if m.Form() != c.form {
			t.Errorf("%s: Form() = %s", c.form, m.Form())
		}
		moved, loss := 0, 0.0
		est := make([]float64, 2)
		var s0 []float64
		var l0 []bool
		for _, r := range test {
			m.Correctness(r.Input, r.Estimate, est)
			if est[1] > est[0] {
				moved++
				c0, c1 := truth(r.Input)
				loss += c0 - c1
			}
			s0, l0 = append(s0, est[0]), append(l0, r.Correct[0])
		}
		loss /= float64(len(test))
		t.Logf("%s: worse ranked first on %.1f%% of held-out rows, expected accuracy lost %.4f; AUC of the better variant %.3f",
			c.form, 100*float64(moved)/float64(len(test)), loss, AUC(s0, l0))
		if loss < c.minLoss || loss > c.maxLoss {
			t.Errorf("%s: choosing on the estimates loses %.4f of accuracy, want %.3f-%.3f", c.form, loss, c.minLoss, c.maxLoss)
		}
		if a := AUC(s0, l0); a < 0.8 {
			t.Errorf("%s: AUC %.3f, want at least 0.8", c.form, a)
		}
	}
}

// The shared form's parameters are checked like the per-variant form's.
func TestSharedFormShapes(t *testing.T) {
	p := &DifficultyParams{Features: "identity", Classes: 2, Variants: []string{"a", "b"},
		Mean: make([]float64, 6), Scale: []float64{1, 1, 1, 1, 1, 1},
		Weights: [][]float64{{1, 0, 0, 0, 0, 0}}, Bias: []float64{0, -1}, Slope: []float64{1, 2}}
	m, err := NewDifficulty(p, 2)
	if err != nil {
		t.Fatal(err)
	}
	c := make([]float64, 2)
	m.Correctness([]float32{0.5, 0}, []float64{0.5, 0.5}, c)
	if want := []float64{sigmoid(0.5), sigmoid(-1 + 2*0.5)}; math.Abs(c[0]-want[0]) > 1e-6 || math.Abs(c[1]-want[1]) > 1e-6 {
		t.Errorf("Correctness = %v, want %v", c, want)
	}
	for name, mut := range map[string]func(*DifficultyParams){
		"slope per variant": func(p *DifficultyParams) { p.Slope = []float64{1} },
		"one score row":     func(p *DifficultyParams) { p.Weights = append(p.Weights, p.Weights[0]) },
		"finite slope":      func(p *DifficultyParams) { p.Slope = []float64{1, math.NaN()} },
	} {
		q := *p
		q.Weights, q.Slope = slices.Clone(p.Weights), slices.Clone(p.Slope)
		mut(&q)
		if _, err := NewDifficulty(&q, 2); !errors.Is(err, ErrParams) {
			t.Errorf("%s: err %v, want ErrParams", name, err)
		}
	}
	if _, err := TrainDifficulty("both", "identity", 2, 2, []string{"a"}, nil, 1e-3); !errors.Is(err, ErrParams) {
		t.Errorf("unknown form: err %v, want ErrParams", err)
	}
}

// CheckRanking counts what choosing on estimates gains and loses against the
// most accurate variant alone.
func TestCheckRanking(t *testing.T) {
	correct := [][]bool{
		{true, false, true, false, true},  // 3 of 5
		{true, true, false, false, false}, // 2 of 5
	}
	scores := [][]float64{
		{0.9, 0.1, 0.2, 0.5, 0.9},
		{0.1, 0.8, 0.7, 0.5, 0.1}, // moves rows 1 (gains) and 2 (loses); row 3 ties to the top
	}
	c := CheckRanking(scores, correct)
	if c.Top != 0 || c.Moved != 2 || c.Better != 1 || c.Worse != 1 || c.Z != 0 || c.Accuracy != 0.6 || c.TopAccuracy != 0.6 {
		t.Errorf("CheckRanking = %+v", c)
	}
	scores[1][4] = 0.95 // row 4 moves too, and loses
	if c := CheckRanking(scores, correct); c.Worse != 2 || !(c.Z < 0) || c.Noisy() {
		t.Errorf("CheckRanking = %+v; want 2 worse, z < 0, not beyond chance", c)
	}
	// 30 rows that the estimates all move to a variant wrong on them.
	var big [2][]bool
	var bs [2][]float64
	for range 30 {
		big[0], big[1] = append(big[0], true), append(big[1], false)
		bs[0], bs[1] = append(bs[0], 0.5), append(bs[1], 0.6)
	}
	if c := CheckRanking(bs[:], big[:]); !c.Noisy() || c.Worse != 30 {
		t.Errorf("CheckRanking = %+v; want noisy", c)
	}
}

// TestLogLossByHand: two variants, two rows each; the mean log loss per row,
// summed over the variants, with estimates clamped away from 0 and 1.
func TestLogLossByHand(t *testing.T) {
	scores := [][]float64{{0.8, 0.4}, {1, 0.5}}
	correct := [][]bool{{true, false}, {false, true}}
	hi := 1 - 1e-12 // the estimate 1, clamped
	want := -(math.Log(0.8)+math.Log(0.6))/2 - (math.Log(1-hi)+math.Log(0.5))/2
	if got := LogLoss(scores, correct); math.Abs(got-want) > 1e-9 {
		t.Errorf("LogLoss = %v, want %v", got, want)
	}
	if got := LogLoss(nil, nil); got != 0 {
		t.Errorf("LogLoss of nothing = %v, want 0", got)
	}
}

// A difficulty file whose classes count is so large that the vector's length
// (the features' Dim plus 2 per class) overflows is refused with ErrParams,
// naming the file: classes 2^63-1 over 4 identity features made that length
// 2, so a file with 2 means and scales passed the shape checks, and its gap
// scale's make([]float64, 0, variants*classes) panicked.
func TestLoadDifficultyHugeClasses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "difficulty.json")
	p := DifficultyParams{Features: "identity", Classes: math.MaxInt, Variants: []string{"a"},
		Mean: []float64{0, 0}, Scale: []float64{1, 1}, Weights: [][]float64{{0, 0}}, Bias: []float64{0},
		GapRef: "a", GapScale: [][]float64{{1}}, GapCenter: [][]float64{{0}}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	app := &manifest.App{Name: "tiny", InputSize: 4, Labels: []string{"x", "y"}, Dir: dir,
		Variants:   []manifest.Variant{{Name: "a"}},
		Estimators: []manifest.Estimator{{Name: "e"}},
		Difficulty: &manifest.Difficulty{File: "difficulty.json", Estimator: "e"}}
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("LoadDifficulty panics: %v", r)
		}
	}()
	_, err = LoadDifficulty(app)
	if !errors.Is(err, ErrParams) || !strings.Contains(err.Error(), file) {
		t.Fatalf("err %v, want ErrParams naming %s", err, file)
	}
	t.Log(err)
}
