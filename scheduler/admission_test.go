package scheduler

import (
	"testing"
	"time"
)

func TestBacklogRefuses(t *testing.T) {
	const budget = 50 * time.Millisecond
	ms := time.Millisecond
	for _, c := range []struct {
		name      string
		b         Backlog
		refuse    bool
		estimated bool // the application has an estimator
	}{
		{"empty", Backlog{}, false, false},
		// A heavy variant drains 40 queued in 40 ms, past max_wait's 25 ms, but
		// the cheapest would take 2 ms: admitted (the policy can switch).
		{"heavy mix, cheap could keep up", Backlog{Queued: 40, DrainRate: 1000, FastestRate: 20000, Egress: 2 * ms}, false, false},
		{"hopeless even on the cheapest", Backlog{Queued: 600, DrainRate: 1000, FastestRate: 20000, Egress: 2 * ms}, true, false},
		// Replies take 30 ms to reach the broker: more than max_wait's share on
		// their own, but a request admitted to an empty queue is still in time.
		{"slow egress, empty queue", Backlog{Egress: 30 * ms, DrainRate: 1000, FastestRate: 20000}, false, false},
		{"egress longer than the budget", Backlog{Egress: 60 * ms}, true, false},
		{"fastest drain plus egress past the budget", Backlog{Queued: 400, DrainRate: 20000, FastestRate: 20000, Egress: 40 * ms}, true, false},
		// Short of CPU: the measured drain says 1.5 s, whatever the cheapest
		// variant's profile promises.
		{"CPU-bound", Backlog{Queued: 300, DrainRate: 200, FastestRate: 40000}, true, false},
		{"unmeasured: the cheapest profile stands in", Backlog{Queued: 100, PerRequest: 100 * time.Microsecond}, false, false},
		{"unmeasured, hopeless", Backlog{Queued: 1000, PerRequest: 100 * time.Microsecond}, true, false},
		// With an estimator the policy can answer any queued request at once
		// from it: only the measured rate decides.
		{"hopeless on the cheapest, but estimated", Backlog{Queued: 600, DrainRate: 20000, FastestRate: 20000, Egress: 2 * ms}, false, true},
		{"CPU-bound, estimated", Backlog{Queued: 300, DrainRate: 200, FastestRate: 40000}, true, true},
		{"egress longer than the budget, estimated", Backlog{Egress: 60 * ms}, true, true},
	} {
		if got := c.b.Refuses(budget, 0.5, c.estimated); got != c.refuse {
			t.Errorf("%s: refuses = %v, want %v (%+v; wait at the measured rate %v)", c.name, got, c.refuse, c.b, c.b.EstimatedWait())
		}
	}
}

func TestPlanDeadline(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	dl := t0.Add(50 * time.Millisecond)
	for _, c := range []struct {
		reserve time.Duration
		want    time.Time
	}{
		{0, dl},
		{-time.Millisecond, dl},
		{8 * time.Millisecond, dl.Add(-8 * time.Millisecond)},
		{time.Second, t0.Add(25 * time.Millisecond)}, // at most half the budget
	} {
		if got := PlanDeadline(t0, dl, c.reserve); !got.Equal(c.want) {
			t.Errorf("reserve %v: %v, want %v", c.reserve, got.Sub(t0), c.want.Sub(t0))
		}
	}
}
