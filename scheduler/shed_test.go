package scheduler

import (
	"testing"
	"time"
)

// TestShedUnderOverload: 100 requests due in 5ms cannot all run even on the cheap
// variant (amortised 0.13ms each, 0.16ms with the headroom: about 30 fit).
// sneakpeek sheds first the requests whose estimate is surest (their degraded
// answer loses least) and answers them degraded; oblivious expires the latest;
// with a queue that fits, nothing is shed.
func TestShedUnderOverload(t *testing.T) {
	a := testApp()
	var q []*Request
	sure := map[*Request]bool{}
	for i := range 100 {
		p := []float64{0.5, 0.5}
		if i%2 == 0 {
			p = []float64{0.995, 0.005}
		}
		r := req(a, uint64(i), t0, ms(5), p)
		if i%2 == 0 {
			sure[r] = true
		}
		q = append(q, r)
	}
	d := mustPolicy(t, "sneakpeek", Options{}).Decide(snap(t0, a, q...))
	shed := 0
	for _, v := range d.Verdicts {
		if v.Reason != ReasonOverload {
			continue
		}
		shed++
		if v.Outcome != Degraded {
			t.Errorf("sneakpeek shed as %v, want degraded", v.Outcome)
		}
	}
	fit := int(ms(5) / time.Duration(float64(Amortised(a.Variants[0], 32))*shedHeadroom))
	if shed != 100-fit {
		t.Errorf("sneakpeek shed %d, want %d", shed, 100-fit)
	}
	kept := 0
	for _, v := range d.Verdicts {
		if v.Reason == ReasonOverload && !sure[v.Request] {
			kept++ // an uncertain one shed
		}
	}
	if want := max(0, shed-50); kept != want {
		t.Errorf("%d uncertain requests shed, want %d (the sure ones go first)", kept, want)
	}

	d = mustPolicy(t, "oblivious", Options{}).Decide(snap(t0, a, q...))
	shed = 0
	for _, v := range d.Verdicts {
		if v.Reason == ReasonOverload {
			shed++
			if v.Outcome != Expired {
				t.Errorf("oblivious shed as %v, want expired", v.Outcome)
			}
		}
	}
	if shed != 100-fit {
		t.Errorf("oblivious shed %d, want %d", shed, 100-fit)
	}

	if d := mustPolicy(t, "sneakpeek", Options{}).Decide(snap(t0, a, q[:20]...)); len(d.Verdicts) != 0 {
		t.Errorf("shed with a queue that fits: %+v", d.Verdicts)
	}
	if d := mustPolicy(t, "sneakpeek-noshed", Options{}).Decide(snap(t0, a, q...)); len(d.Verdicts) != 0 {
		t.Errorf("sneakpeek-noshed shed: %+v", d.Verdicts)
	}
}
