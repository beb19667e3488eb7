package sneakpeek

import (
	"math"
	"math/rand/v2"
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
	p, err := TrainDifficulty("identity", d, k, []string{"sharp", "coin"}, train, 1e-3)
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
		}
	}
}
