package scheduler

import (
	"math"
	"testing"
)

func TestBuildCascadeCurve(t *testing.T) {
	// Four samples: the cheap variant is wrong on the two least confident, the
	// better one right everywhere but on the most confident.
	conf := []float64{0.9, 0.4, 0.6, 0.95}
	uCheap := []float64{1, 0, 0, 1}
	uBetter := []float64{1, 1, 1, 0}
	c, err := BuildCascadeCurve(conf, uCheap, uBetter)
	if err != nil {
		t.Fatal(err)
	}
	want := []CascadePoint{{0.4, 0, 0.5}, {0.6, 0.25, 0.75}, {0.9, 0.5, 1}}
	if len(c) != len(want) {
		t.Fatalf("curve %+v, want %+v", c, want)
	}
	for i := range want {
		if c[i].Threshold != want[i].Threshold || math.Abs(c[i].Escalated-want[i].Escalated) > 1e-12 ||
			math.Abs(c[i].Utility-want[i].Utility) > 1e-12 {
			t.Errorf("point %d: %+v, want %+v", i, c[i], want[i])
		}
	}
	cc := CascadeConfig{Curve: c}
	if th := cc.pick(0, 1, 1); th != 0.9 {
		t.Errorf("unknown rate: threshold %v, want the most useful 0.9", th)
	}
	if th := cc.pick(1.3, 1, 1); th != 0.6 {
		t.Errorf("budget for a quarter escalated: threshold %v, want 0.6", th)
	}
	if th := cc.pick(0.5, 1, 1); th != 0.4 {
		t.Errorf("no budget: threshold %v, want 0.4 (escalate nothing)", th)
	}
	// Escalating everything is the best point: its threshold is finite.
	c, _ = BuildCascadeCurve([]float64{0.5, 1}, []float64{0, 0}, []float64{1, 1})
	if last := c[len(c)-1]; last.Escalated != 1 || !(last.Threshold > 1) || math.IsInf(last.Threshold, 0) {
		t.Errorf("escalate-all point %+v", last)
	}
	if _, err := BuildCascadeCurve(nil, nil, nil); err == nil {
		t.Error("empty validation accepted")
	}
}

// TestCascadeTwoPasses: a first pass on the cheap variant carries the threshold;
// a request back with its first result runs on the better variant when that
// finishes in time and is answered with its first result when it does not.
func TestCascadeTwoPasses(t *testing.T) {
	a := testApp()
	cfg := map[string]CascadeConfig{"app": {Cheap: 0, Better: 1,
		Curve: []CascadePoint{{0.5, 0, 0.9}, {0.8, 0.3, 0.95}}}}
	p, err := NewCascade(Options{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r1 := req(a, 1, t0, ms(50), nil)
	r2 := req(a, 2, t0, ms(50), nil)
	d := p.Decide(snap(t0, a, r1, r2))
	if d.Batch == nil || d.Batch.Variant != a.Variants[0] || len(d.Batch.Requests) != 2 {
		t.Fatalf("first pass: %+v", d.Batch)
	}
	if d.Batch.EscalateBelow != 0.8 {
		t.Errorf("threshold %v without a measured rate, want the most useful 0.8", d.Batch.EscalateBelow)
	}
	// r1 comes back unsure at t0+2ms: a second pass on big (6 ms) fits its deadline.
	now := t0.Add(ms(2))
	r1.First = &FirstPass{Variant: a.Variants[0], Class: 0, Confidence: 0.6, Done: now}
	d = p.Decide(snap(now, a, r1))
	if d.Batch == nil || d.Batch.Variant != a.Variants[1] || d.Batch.EscalateBelow != 0 || len(d.Verdicts) != 0 {
		t.Fatalf("second pass: %+v", d)
	}
	// At t0+46ms it would not: answered with its first result.
	d = p.Decide(snap(t0.Add(ms(46)), a, r1))
	if d.Batch != nil || len(d.Verdicts) != 1 || d.Verdicts[0].Outcome != FirstAnswer {
		t.Fatalf("late second pass: %+v", d)
	}
	// Overload: 400 first passes due in 20 ms (cheap: 0.16 ms each with headroom,
	// about 120 fit) shed the latest deadlines, expired.
	var q []*Request
	for i := range 400 {
		q = append(q, req(a, uint64(10+i), t0, ms(20+float64(i)/100), nil))
	}
	d = p.Decide(snap(t0, a, q...))
	shed := 0
	for _, v := range d.Verdicts {
		if v.Reason == ReasonOverload && v.Outcome == Expired {
			shed++
		}
	}
	if shed < 250 || shed > 300 {
		t.Errorf("shed %d of 400, want about 280", shed)
	}
	if d.Batch == nil || d.Batch.Requests[0] != q[0] {
		t.Errorf("batch does not start with the earliest deadline: %+v", d.Batch)
	}
}
