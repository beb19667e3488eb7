package sneakpeek

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// classGapRows draws rows of two classes whose correctness on two variants
// follows one latent difficulty x0, where the better variant ("big") gains on
// the hard inputs of class 0 and loses a little on those of class 1 (as
// resnet-m against resnet-s on fashion's shirts). The class estimate leans to
// the true class (0.6-1).
func classGapRows(rng *rand.Rand, n, d int) ([]DifficultyRow, []int) {
	rows := make([]DifficultyRow, n)
	labels := make([]int, n)
	for i := range rows {
		x := make([]float32, d)
		for j := range x {
			x[j] = float32(rng.NormFloat64())
		}
		y := rng.IntN(2)
		q := 0.6 + 0.4*rng.Float64()
		p := []float64{q, 1 - q}
		if y == 1 {
			p[0], p[1] = p[1], p[0]
		}
		small, big := classGapTruth(x, y)
		rows[i] = DifficultyRow{Input: x, Estimate: p, Correct: []bool{rng.Float64() < small, rng.Float64() < big}}
		labels[i] = y
	}
	return rows, labels
}

func classGapTruth(x []float32, y int) (small, big float64) {
	h := 2 * float64(x[0])
	if y == 0 {
		return sigmoid(1.2 + h), sigmoid(2.4 + h)
	}
	return sigmoid(1.8 + h), sigmoid(1.5 + h)
}

// The shared form's gap between two variants depends on the difficulty score
// alone: for the hardest rows of class 1, where "big" is no better, it
// predicts the gain it sees on class 0's, and a scheduler sends them to the
// expensive variant for nothing. With class terms the predicted gap follows
// the class: on held-out rows it matches the realised one by true class
// (CheckGaps), and sending "big" the rows of the largest predicted gap gains
// more.
func TestSharedClassFormLetsTheGapDependOnTheClass(t *testing.T) {
	const d, k = 6, 2
	rng := rand.New(rand.NewPCG(5, 6))
	train, _ := classGapRows(rng, 4000, d)
	test, labels := classGapRows(rng, 20000, d)
	correct := [][]bool{make([]bool, len(test)), make([]bool, len(test))}
	for i, r := range test {
		correct[0][i], correct[1][i] = r.Correct[0], r.Correct[1]
	}
	miss := map[string]float64{}
	gain := map[string]float64{}
	for _, form := range []string{FormShared, FormSharedClass} {
		p, err := TrainDifficulty(form, "identity", d, k, []string{"small", "big"}, train, 1e-3)
		if err != nil {
			t.Fatal(err)
		}
		m, err := NewDifficulty(p, d)
		if err != nil {
			t.Fatal(err)
		}
		if m.Form() != FormShared || m.ClassTerms() != (form == FormSharedClass) {
			t.Errorf("%s: Form() %s, ClassTerms() %v", form, m.Form(), m.ClassTerms())
		}
		scores := [][]float64{make([]float64, len(test)), make([]float64, len(test))}
		c := make([]float64, 2)
		for i, r := range test {
			m.Correctness(r.Input, r.Estimate, c)
			scores[0][i], scores[1][i] = c[0], c[1]
		}
		gaps := CheckGaps(scores, correct, labels, k, 1, 0, 0.25)
		for _, g := range gaps {
			t.Logf("%s: class %d, the quarter of largest predicted gap: predicted %+.4f, realised %+.4f (se %.4f)", form, g.Class, g.Pred, g.Real, g.SE)
		}
		miss[form], _ = GapMiss(gaps)
		// "big" on the fifth of the rows of the largest predicted gap, "small"
		// on the rest: the expected accuracy gained over "small" alone.
		idx := make([]int, len(test))
		for i := range idx {
			idx[i] = i
		}
		slices.SortStableFunc(idx, func(a, b int) int {
			ga, gb := scores[1][a]-scores[0][a], scores[1][b]-scores[0][b]
			switch {
			case ga > gb:
				return -1
			case ga < gb:
				return 1
			}
			return 0
		})
		for _, i := range idx[:len(idx)/5] {
			s, b := classGapTruth(test[i].Input, labels[i])
			gain[form] += (b - s) / float64(len(test))
		}
		t.Logf("%s: |predicted - realised| %.4f; big on the fifth of the largest predicted gap gains %.4f", form, miss[form], gain[form])
	}
	if miss[FormShared] < 0.05 {
		t.Errorf("shared form: gaps off by %.4f by class, want at least 0.05 (the test's premise)", miss[FormShared])
	}
	if miss[FormSharedClass] > 0.04 {
		t.Errorf("shared form with class terms: gaps off by %.4f by class, want at most 0.04", miss[FormSharedClass])
	}
	if gain[FormSharedClass] < gain[FormShared]+0.01 {
		t.Errorf("escalating on the class form's gaps gains %.4f, the shared form's %.4f; want 0.01 more", gain[FormSharedClass], gain[FormShared])
	}
}

// CheckGaps takes, per true class, the rows of the largest predicted gap.
func TestCheckGaps(t *testing.T) {
	scores := [][]float64{
		{0.5, 0.5, 0.5, 0.5, 0.5},
		{0.9, 0.6, 0.7, 0.5, 0.8},
	}
	correct := [][]bool{
		{true, false, true, true, false},
		{true, true, false, true, true},
	}
	labels := []int{0, 0, 0, 1, 1}
	got := CheckGaps(scores, correct, labels, 3, 1, 0, 0.5)
	// Class 0: the 2 of 3 rows of largest gap are 0 (0.4) and 2 (0.2):
	// realised 0 and -1. Class 1: row 4 (0.3), realised +1. Class 2: no rows.
	if len(got) != 2 || got[0].Class != 0 || got[0].N != 2 || math.Abs(got[0].Pred-0.3) > 1e-9 || got[0].Real != -0.5 ||
		math.Abs(got[0].SE-0.5) > 1e-9 || got[1].Class != 1 || got[1].N != 1 || math.Abs(got[1].Pred-0.3) > 1e-9 || got[1].Real != 1 {
		t.Errorf("CheckGaps = %+v", got)
	}
	mae, chi2 := GapMiss(got)
	if want := (2*0.8 + 0.7) / 3; math.Abs(mae-want) > 1e-9 || !(chi2 > 0) {
		t.Errorf("GapMiss = %v, %v; want mae %v", mae, chi2, want)
	}
}

// The class terms are checked like the rest, a file without them loads as the
// plain shared form, and the model with them answers without allocating.
func TestSharedClassFormShapes(t *testing.T) {
	p := &DifficultyParams{Features: "identity", Classes: 2, Variants: []string{"a", "b"},
		Mean: make([]float64, 6), Scale: []float64{1, 1, 1, 1, 1, 1},
		Weights: [][]float64{{1, 0, 0, 0, 0, 0}}, Bias: []float64{0, -1}, Slope: []float64{1, 2},
		ClassBias: [][]float64{{0.5, 0}, {0, -0.5}}, ClassSlope: [][]float64{{0, 1}, {0, 0}}}
	m, err := NewDifficulty(p, 2)
	if err != nil {
		t.Fatal(err)
	}
	if m.Form() != FormShared || !m.ClassTerms() {
		t.Errorf("Form %s, ClassTerms %v", m.Form(), m.ClassTerms())
	}
	c := make([]float64, 2)
	x, pe := []float32{0.5, 0}, []float64{0.25, 0.75}
	m.Correctness(x, pe, c)
	s := 0.5
	want := []float64{sigmoid(s + 0.25*0.5 + 0.75*s), sigmoid(-1 + 2*s + 0.75*-0.5)}
	if math.Abs(c[0]-want[0]) > 1e-6 || math.Abs(c[1]-want[1]) > 1e-6 {
		t.Errorf("Correctness = %v, want %v", c, want)
	}
	if a := testing.AllocsPerRun(100, func() { m.Correctness(x, pe, c) }); a > 0 {
		t.Errorf("Correctness allocates %.0f times", a)
	}
	// The JSON of a file written before the class terms: no class_bias.
	old := *p
	old.ClassBias, old.ClassSlope = nil, nil
	raw, _ := json.Marshal(&old)
	var back DifficultyParams
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if mo, err := NewDifficulty(&back, 2); err != nil || mo.ClassTerms() || mo.Form() != FormShared {
		t.Errorf("a file without class terms: %v", err)
	} else {
		mo.Correctness(x, pe, c)
		if math.Abs(c[0]-sigmoid(s)) > 1e-6 || math.Abs(c[1]-sigmoid(-1+2*s)) > 1e-6 {
			t.Errorf("without class terms: Correctness = %v", c)
		}
	}
	for name, mut := range map[string]func(*DifficultyParams){
		"both or neither":      func(p *DifficultyParams) { p.ClassSlope = nil },
		"one row per variant":  func(p *DifficultyParams) { p.ClassBias = p.ClassBias[:1] },
		"one value per class":  func(p *DifficultyParams) { p.ClassSlope[1] = []float64{0} },
		"finite":               func(p *DifficultyParams) { p.ClassBias[0][1] = math.Inf(1) },
		"only the shared form": func(p *DifficultyParams) { p.Slope = nil; p.Weights = [][]float64{p.Weights[0], p.Weights[0]} },
	} {
		q := *p
		q.ClassBias, q.ClassSlope = [][]float64{slices.Clone(p.ClassBias[0]), slices.Clone(p.ClassBias[1])}, [][]float64{slices.Clone(p.ClassSlope[0]), slices.Clone(p.ClassSlope[1])}
		q.Slope = slices.Clone(p.Slope)
		mut(&q)
		if _, err := NewDifficulty(&q, 2); !errors.Is(err, ErrParams) {
			t.Errorf("%s: err %v, want ErrParams", name, err)
		}
	}
}
