package sneakpeek

import (
	"errors"
	"math"
	"testing"
)

func TestLogistic(t *testing.T) {
	f, _ := ParseFeatures("identity", 2)
	m, err := NewLogistic("lr", f, &LogisticParams{Classes: 3, Dim: 2,
		Mean: []float64{1, 0}, Scale: []float64{2, 1},
		Weights: [][]float64{{1, 0}, {0, 1}, {0, 0}}, Bias: []float64{0, 0, math.Log(2)}})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]float64, 3)
	x := []float32{3, 0}
	m.Estimate(x, p) // z = (1, 0): logits (1, 0, ln 2)
	e := math.E
	want := []float64{e / (e + 3), 1 / (e + 3), 2 / (e + 3)}
	for y := range want {
		if math.Abs(p[y]-want[y]) > 1e-6 {
			t.Fatalf("p = %v, want %v", p, want)
		}
	}
	if a := testing.AllocsPerRun(100, func() { m.Estimate(x, p) }); a > 0 {
		t.Errorf("%v allocations per Estimate", a)
	}
}

func TestNewLogisticErrors(t *testing.T) {
	f, _ := ParseFeatures("identity", 2)
	good := func() *LogisticParams {
		return &LogisticParams{Classes: 2, Dim: 2, Mean: []float64{0, 0}, Scale: []float64{1, 1},
			Weights: [][]float64{{1, 0}, {0, 1}}, Bias: []float64{0, 0}}
	}
	for name, mut := range map[string]func(*LogisticParams){
		"dim":        func(p *LogisticParams) { p.Dim = 3 },
		"bias":       func(p *LogisticParams) { p.Bias = p.Bias[:1] },
		"row":        func(p *LogisticParams) { p.Weights[1] = []float64{1} },
		"scale-zero": func(p *LogisticParams) { p.Scale[0] = 0 },
		"one-class":  func(p *LogisticParams) { p.Classes = 1 },
	} {
		p := good()
		mut(p)
		if _, err := NewLogistic("x", f, p); !errors.Is(err, ErrParams) {
			t.Errorf("%s: got %v", name, err)
		}
	}
	if _, err := NewLogistic("x", f, good()); err != nil {
		t.Error(err)
	}
}
