package scheduler

import (
	"math"
	"testing"
	"time"
)

// A request whose deadline is far away (200 years: its time to the deadline
// plus its budget is beyond time.Duration's range) is nowhere near its hard
// stop, and every policy runs it. The searching policies' prepass once added
// the two in a Duration, which wrapped negative, and answered such a request
// expired (past_hard_stop) without running it.
func TestFarDeadlineRuns(t *testing.T) {
	a := testApp()
	far := 200 * 365 * 24 * time.Hour
	for _, name := range []string{"edf", "fifo", "sneakpeek", "oblivious", "oblivious-switch", "bruteforce"} {
		r := req(a, 1, t0, far, []float64{0.8, 0.2})
		d := mustPolicy(t, name, Options{}).Decide(snap(t0, a, r))
		if len(d.Verdicts) != 0 || d.Batch == nil {
			t.Errorf("%s: deadline %v away: verdicts %+v, batch %v; want it run", name, far, d.Verdicts, d.Batch)
		}
	}
}

// The price's target spreads the backlog outside the window over the window's
// mean budget. With 128 window members of three-year budgets, a sum of their
// budgets in a Duration wrapped negative, the backlog was dropped from the rate,
// and with no measured arrivals engine time read as free.
func TestPriceTargetLongBudgets(t *testing.T) {
	a := testApp()
	budget := 3 * 365 * 24 * time.Hour
	var q []*Request
	for i := range 1128 {
		q = append(q, req(a, uint64(i+1), t0, budget, []float64{0.5, 0.5}))
	}
	d := newDecisionState(snap(t0, a, q...), view{dataAware: true, byClass: true}, 32)
	d.prepass(nil)
	if len(d.members) != len(q) {
		t.Fatalf("%d members of %d", len(d.members), len(q))
	}
	win := d.window(128)
	target, ok := d.priceTarget(win, 0)
	// The backlog of 1,000 over the 3-year mean budget is the rate.
	want := targetUtilisation * float64(len(win)) / (float64(len(q)-len(win)) / budget.Seconds())
	if !ok || math.Abs(target-want) > 1e-6*want {
		t.Fatalf("priceTarget = %v, %v; want %.6g s, true", target, ok, want)
	}
}
