package scheduler

import (
	"testing"
	"time"
)

func TestPlanSwapEvictsLRU(t *testing.T) {
	a := testApp()
	s := snap(t0, a)
	s.Engine.Resident = map[VariantID]time.Time{a.Variants[0].ID: t0}
	s.Engine.MemBudget = 450
	sw, ok := PlanSwap(s, a.Variants[1])
	if !ok || len(sw.Evict) != 1 || sw.Evict[0] != a.Variants[0].ID || sw.Cost != ms(1)+ms(20) {
		t.Fatalf("PlanSwap = %+v, %v", sw, ok)
	}
	s.Engine.MemBudget = 0
	s.Engine.CountBudget = 2
	if sw, _ := PlanSwap(s, a.Variants[1]); len(sw.Evict) != 0 || sw.Cost != ms(20) {
		t.Errorf("count budget 2, one resident: %+v", sw)
	}
	s.Engine.MemBudget = 300
	if _, ok := PlanSwap(s, a.Variants[1]); ok {
		t.Error("variant larger than the budget should not fit")
	}
	s.Engine.Resident[a.Variants[1].ID] = t0
	if sw, ok := PlanSwap(s, a.Variants[1]); !ok || sw.Cost != 0 || len(sw.Load) != 0 {
		t.Errorf("resident variant: %+v", sw)
	}
}

func TestFIFOBatchesSameAppInArrivalOrder(t *testing.T) {
	a, b := testApp(), testApp()
	b.Name = "other"
	var q []*Request
	for i := range 5 {
		app := a
		if i == 1 {
			app = b
		}
		q = append(q, req(app, uint64(i), t0, ms(100), nil))
	}
	s := snap(t0, a, q...)
	s.Apps[b.Name] = b
	d := mustPolicy(t, "fifo", Options{MaxBatch: 3}).Decide(s)
	if d.Batch == nil || len(d.Batch.Requests) != 3 {
		t.Fatalf("batch = %+v", d.Batch)
	}
	for i, want := range []uint64{0, 2, 3} {
		if got := d.Batch.Requests[i].Seq; got != want {
			t.Errorf("request %d: seq %d, want %d", i, got, want)
		}
	}
	if d.Batch.Variant != a.Variants[a.DefaultVariant] {
		t.Errorf("variant %v, want the most accurate", d.Batch.Variant.ID)
	}
	d = mustPolicy(t, "fifo", Options{FixedVariant: map[string]string{"app": "cheap"}}).Decide(s)
	if d.Batch.Variant.ID.Variant != "cheap" {
		t.Errorf("fixed variant ignored: %v", d.Batch.Variant.ID)
	}
}

func TestHopelessRequestsExpire(t *testing.T) {
	a := testApp()
	old := req(a, 1, t0, ms(10), nil)    // hard stop at t0+20ms
	fresh := req(a, 2, t0, ms(100), nil) // fine
	for _, name := range []string{"fifo", "edf"} {
		d := mustPolicy(t, name, Options{}).Decide(snap(t0.Add(ms(19.5)), a, old, fresh))
		if len(d.Verdicts) != 1 || d.Verdicts[0].Request != old || d.Verdicts[0].Outcome != Expired {
			t.Errorf("%s: verdicts %+v", name, d.Verdicts)
		}
		if d.Batch == nil || len(d.Batch.Requests) != 1 || d.Batch.Requests[0] != fresh {
			t.Errorf("%s: batch %+v", name, d.Batch)
		}
	}
}

func TestEDFPicksMostAccurateThatFits(t *testing.T) {
	a := testApp()
	var q []*Request
	// Deadlines 30ms..: big fits 10 requests in 15ms (5 + 10*1).
	for i := range 20 {
		q = append(q, req(a, uint64(i), t0, ms(15+float64(i)), nil))
	}
	d := mustPolicy(t, "edf", Options{}).Decide(snap(t0, a, q...))
	if d.Batch == nil || d.Batch.Variant.ID.Variant != "big" || len(d.Batch.Requests) != 10 {
		t.Fatalf("batch: %v x%d", d.Batch.Variant.ID, len(d.Batch.Requests))
	}
	if d.Batch.Finish != t0.Add(ms(15)) {
		t.Errorf("finish %v", d.Batch.Finish.Sub(t0))
	}
	// With 4ms left only the cheap variant fits (1 + 0.1*b <= 4: up to 30 requests).
	d = mustPolicy(t, "edf", Options{}).Decide(snap(t0.Add(ms(11)), a, q...))
	if d.Batch == nil || d.Batch.Variant.ID.Variant != "cheap" || len(d.Batch.Requests) != 20 {
		t.Fatalf("late batch: %+v", d.Batch)
	}
	// Earliest deadline first: the batch starts with the earliest.
	if d.Batch.Requests[0].Seq != 0 {
		t.Errorf("first request seq %d", d.Batch.Requests[0].Seq)
	}
}

func TestEDFCountsSwapCost(t *testing.T) {
	a := testApp()
	s := snap(t0, a, req(a, 1, t0, ms(20), nil))
	delete(s.Engine.Resident, a.Variants[1].ID) // big needs a 20ms load: too slow
	d := mustPolicy(t, "edf", Options{}).Decide(s)
	if d.Batch == nil || d.Batch.Variant.ID.Variant != "cheap" || len(d.Batch.Load) != 0 {
		t.Fatalf("batch %+v", d.Batch)
	}
	s.Queue[0] = req(a, 1, t0, ms(40), nil)
	d = mustPolicy(t, "edf", Options{}).Decide(s)
	if d.Batch.Variant.ID.Variant != "big" || len(d.Batch.Load) != 1 || d.Batch.Finish != t0.Add(ms(26)) {
		t.Fatalf("batch with load %+v", d.Batch)
	}
}

func TestEDFDegradesOrRunsLate(t *testing.T) {
	a := testApp()
	now := t0.Add(ms(10.5)) // deadline t0+10ms passed, hard stop t0+20ms
	withEst := req(a, 1, t0, ms(10), []float64{0.3, 0.7})
	d := mustPolicy(t, "edf", Options{}).Decide(snap(now, a, withEst))
	if len(d.Verdicts) != 1 || d.Verdicts[0].Outcome != Degraded || d.Batch != nil {
		t.Fatalf("with estimate: %+v", d)
	}
	noEst := req(a, 2, t0, ms(10), nil)
	d = mustPolicy(t, "edf", Options{}).Decide(snap(now, a, noEst))
	if len(d.Verdicts) != 0 || d.Batch == nil || d.Batch.Variant.ID.Variant != "cheap" {
		t.Fatalf("without estimate: %+v", d)
	}
	if d.Batch.Utility <= 0 || d.Batch.Utility >= noEst.ExpUtility[0] {
		t.Errorf("late utility %v should be discounted but positive", d.Batch.Utility)
	}
}

func TestUnknownPolicy(t *testing.T) {
	if _, err := New("nope", Options{}); err == nil {
		t.Fatal("want error")
	}
}

// Shrink pulls a data-aware policy's valuation toward the profiled one: with
// Shrink 1 sneakpeek values every request like oblivious does.
func TestShrink(t *testing.T) {
	if _, err := New("sneakpeek", Options{Shrink: 1.5}); err == nil {
		t.Error("shrink 1.5 accepted")
	}
	a := testApp()
	// An estimate that makes the cheap variant look as good as the big one.
	r := req(a, 1, t0, ms(100), []float64{1, 0})
	d := &decisionState{shrink: 0.5}
	u := d.shrunk(r.ExpUtility, []float64{a.Variants[0].ProfiledUtility, a.Variants[1].ProfiledUtility})
	for i, v := range a.Variants {
		want := 0.5*r.ExpUtility[i] + 0.5*v.ProfiledUtility
		if !near(u[i], want) {
			t.Errorf("variant %d: %v, want %v", i, u[i], want)
		}
	}
}
