package sneakpeek

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/sneakgate/sneakgate/dataset"
)

func testKNN(t *testing.T, k int) *KNN {
	t.Helper()
	f, _ := ParseFeatures("identity", 2)
	ref := &dataset.Set{N: 5, D: 2,
		Values: []float32{0, 0, 0, 1, 1, 0, 10, 10, 10, 11},
		Labels: []int32{0, 0, 1, 2, 2}}
	m, err := NewKNN("knn", f, ref, k, []float64{0.5, 0.25, 0.25})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestKNNDirichlet(t *testing.T) {
	m := testKNN(t, 3)
	p := make([]float64, 3)
	m.Estimate([]float32{0.1, 0.1}, p)
	// Neighbours: rows 0, 1, 2 (labels 0, 0, 1); e = [2, 1, 0], alpha sums to 1.
	want := []float64{2.5 / 4, 1.25 / 4, 0.25 / 4}
	for y := range want {
		if math.Abs(p[y]-want[y]) > 1e-12 {
			t.Fatalf("p = %v, want %v", p, want)
		}
	}
	m.Estimate([]float32{10, 10.4}, p)
	// Neighbours: rows 3, 4 (label 2) and then row 1 (0,1) is nearer than row 2 (1,0).
	want = []float64{1.5 / 4, 0.25 / 4, 2.25 / 4}
	for y := range want {
		if math.Abs(p[y]-want[y]) > 1e-12 {
			t.Fatalf("p = %v, want %v", p, want)
		}
	}
}

func TestKNNTiesGoToEarlierRow(t *testing.T) {
	m := testKNN(t, 1)
	p := make([]float64, 3)
	// (0.5, 0.5) is equally far (0.5) from rows 0, 1 (label 0) and 2 (label 1): with
	// k = 1 the earliest row, 0, wins.
	m.Estimate([]float32{0.5, 0.5}, p)
	if !(p[0] > p[1] && p[0] > p[2]) {
		t.Fatalf("p = %v, want class 0 to win the tie", p)
	}
	m.Estimate([]float32{0.5, 0.6}, p) // row 1 strictly nearest
	if !(p[0] > p[1]) {
		t.Fatalf("p = %v", p)
	}
	m.Estimate([]float32{0.6, 0.5}, p) // row 2 strictly nearest
	if !(p[1] > p[0]) {
		t.Fatalf("p = %v", p)
	}
}

func TestNewKNNErrors(t *testing.T) {
	f, _ := ParseFeatures("identity", 2)
	ref := &dataset.Set{N: 2, D: 2, Values: []float32{0, 0, 1, 1}, Labels: []int32{0, 1}}
	if _, err := NewKNN("x", f, ref, 3, []float64{1, 1}); !errors.Is(err, ErrParams) {
		t.Errorf("k > rows: %v", err)
	}
	if _, err := NewKNN("x", f, ref, 1, []float64{1}); !errors.Is(err, ErrParams) {
		t.Errorf("label out of range: %v", err)
	}
	f3, _ := ParseFeatures("identity", 3)
	if _, err := NewKNN("x", f3, ref, 1, []float64{1, 1}); !errors.Is(err, ErrParams) {
		t.Errorf("dimension mismatch: %v", err)
	}
}

// TestNewKNNRefusesBadReference: NewKNN is also called with rows held in
// memory (appbuild's reference sets), which no sample-file reader has checked.
// A NaN or infinite value made its row's distance NaN or +Inf to every input,
// so the row was never a neighbour and the estimator silently ran on fewer
// rows than it was given (with every row so, it answered the prior); an
// infinite alpha made every estimate NaN; a Set whose Values or Labels did not
// match N panicked, in NewKNN or, worse, in Estimate, at request time.
func TestNewKNNRefusesBadReference(t *testing.T) {
	f, _ := ParseFeatures("identity", 2)
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	good := []float32{0, 0, 1, 1, 2, 2}
	cases := []struct {
		name  string
		ref   *dataset.Set
		alpha []float64
		msg   string
	}{
		{"NaN", &dataset.Set{N: 3, D: 2, Values: []float32{0, 0, 1, nan, 2, 2}, Labels: []int32{0, 1, 1}}, nil, "reference row 1, value 1 is NaN"},
		{"+Inf", &dataset.Set{N: 3, D: 2, Values: []float32{inf, 0, 1, 1, 2, 2}, Labels: []int32{0, 1, 1}}, nil, "reference row 0, value 0 is +Inf"},
		{"-Inf", &dataset.Set{N: 3, D: 2, Values: []float32{0, 0, 1, 1, 2, -inf}, Labels: []int32{0, 1, 1}}, nil, "reference row 2, value 1 is -Inf"},
		{"alpha +Inf", &dataset.Set{N: 3, D: 2, Values: good, Labels: []int32{0, 1, 1}}, []float64{1, math.Inf(1)}, "alpha"},
		{"short labels", &dataset.Set{N: 3, D: 2, Values: good, Labels: []int32{0, 1}}, nil, "2 labels for 3 reference rows"},
		{"long labels", &dataset.Set{N: 3, D: 2, Values: good, Labels: []int32{0, 1, 1, 0}}, nil, "4 labels for 3 reference rows"},
		{"short values", &dataset.Set{N: 3, D: 2, Values: good[:5], Labels: []int32{0, 1, 1}}, nil, "5 values for 3 reference rows of 2"},
		{"long values", &dataset.Set{N: 2, D: 2, Values: good, Labels: []int32{0, 1}}, nil, "6 values for 2 reference rows of 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			alpha := c.alpha
			if alpha == nil {
				alpha = []float64{1, 1}
			}
			m, err := func() (m *KNN, err error) {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("panic: %v", r)
					}
				}()
				m, err = NewKNN("x", f, c.ref, 1, alpha)
				if err == nil {
					m.Estimate([]float32{0.5, 0.5}, make([]float64, len(alpha)))
				}
				return m, err
			}()
			if !errors.Is(err, ErrParams) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("NewKNN = %v, %v; want an error wrapping ErrParams saying %q", m != nil, err, c.msg)
			}
		})
	}
}

func TestKNNConcurrentAndNoAlloc(t *testing.T) {
	m := testKNN(t, 3)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]float64, 3)
			for i := 0; i < 200; i++ {
				m.Estimate([]float32{0.1, 0.1}, p)
				if math.Abs(p[0]-2.5/4) > 1e-12 {
					t.Errorf("p = %v", p)
					return
				}
			}
		}()
	}
	wg.Wait()
	p, x := make([]float64, 3), []float32{0.1, 0.1}
	if a := testing.AllocsPerRun(100, func() { m.Estimate(x, p) }); a > 0 {
		t.Errorf("%v allocations per Estimate", a)
	}
}
