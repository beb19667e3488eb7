package scheduler

import (
	"math"
	"testing"
	"time"
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
