package sneakpeek

import (
	"errors"
	"math"
	"strings"
	"testing"
)

// TestNonFiniteParamsAndRowsRefused: the constructors checked the means,
// scales and weights of a linear model for NaN and infinities but not its
// bias, and TrainDifficulty took its rows as given; JSON cannot spell NaN, so
// only parameters and rows held in memory carried one. A NaN bias made every
// estimate (NewLogistic) or correctness (NewDifficulty) NaN; a NaN or
// infinite training input or estimate gave NaN parameters, which NewDifficulty
// then refused as "mean/scale[i] = NaN/NaN" without saying which row.
func TestNonFiniteParamsAndRowsRefused(t *testing.T) {
	f, _ := ParseFeatures("identity", 2)
	lp := func(b1 float64) *LogisticParams {
		return &LogisticParams{Classes: 2, Dim: 2, Mean: []float64{0, 0}, Scale: []float64{1, 1},
			Weights: [][]float64{{0, 0}, {1, 1}}, Bias: []float64{0, b1}}
	}
	if _, err := NewLogistic("l", f, lp(0.5)); err != nil {
		t.Fatal(err)
	}
	for _, b := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if _, err := NewLogistic("l", f, lp(b)); !errors.Is(err, ErrParams) || !strings.Contains(err.Error(), "bias[1]") {
			t.Errorf("logistic bias %v: err %v, want ErrParams naming bias[1]", b, err)
		}
	}

	dp := func(b0 float64) *DifficultyParams {
		return &DifficultyParams{Features: "identity", Classes: 2, Variants: []string{"a", "b"},
			Mean: make([]float64, 6), Scale: []float64{1, 1, 1, 1, 1, 1},
			Weights: [][]float64{{1, 0, 0, 0, 0, 0}, {0, 1, 0, 0, 0, 0}}, Bias: []float64{b0, -1}}
	}
	if _, err := NewDifficulty(dp(0.5), 2); err != nil {
		t.Fatal(err)
	}
	for _, b := range []float64{math.NaN(), math.Inf(-1)} {
		if _, err := NewDifficulty(dp(b), 2); !errors.Is(err, ErrParams) || !strings.Contains(err.Error(), "bias[0]") {
			t.Errorf("difficulty bias %v: err %v, want ErrParams naming bias[0]", b, err)
		}
	}

	rows := func() []DifficultyRow {
		var r []DifficultyRow
		for i := range 8 {
			r = append(r, DifficultyRow{Input: []float32{float32(i), 1}, Estimate: []float64{0.5, 0.5}, Correct: []bool{i%2 == 0}})
		}
		return r
	}
	if _, err := TrainDifficulty(FormPerVariant, "identity", 2, 2, []string{"a"}, rows(), 1e-3); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		mut  func([]DifficultyRow)
		msg  string
	}{
		{"input NaN", func(r []DifficultyRow) { r[3].Input[1] = float32(math.NaN()) }, "row 3, input 1 is NaN"},
		{"input Inf", func(r []DifficultyRow) { r[0].Input[0] = float32(math.Inf(-1)) }, "row 0, input 0 is -Inf"},
		{"estimate Inf", func(r []DifficultyRow) { r[2].Estimate[0] = math.Inf(1) }, "row 2, estimate 0 is +Inf"},
		{"estimate NaN", func(r []DifficultyRow) { r[7].Estimate[1] = math.NaN() }, "row 7, estimate 1 is NaN"},
	} {
		r := rows()
		c.mut(r)
		if _, err := TrainDifficulty(FormPerVariant, "identity", 2, 2, []string{"a"}, r, 1e-3); !errors.Is(err, ErrParams) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: err %v, want ErrParams saying %q", c.name, err, c.msg)
		}
	}
}
