package gateway

import (
	"testing"
	"time"
)

func TestBacklogRefuses(t *testing.T) {
	const budget = 50 * time.Millisecond
	ms := time.Millisecond
	for _, c := range []struct {
		name      string
		b         backlog
		refuse    bool
		estimated bool // the application has an estimator
	}{
		{"empty", backlog{}, false, false},
		// A heavy variant drains 40 queued in 40 ms, past max_wait's 25 ms, but
		// the cheapest would take 2 ms: admitted (the policy can switch).
		{"heavy mix, cheap could keep up", backlog{queued: 40, drainRate: 1000, fastestRate: 20000, egress: 2 * ms}, false, false},
		{"hopeless even on the cheapest", backlog{queued: 600, drainRate: 1000, fastestRate: 20000, egress: 2 * ms}, true, false},
		// Replies take 30 ms to reach the broker: more than max_wait's share on
		// their own, but a request admitted to an empty queue is still in time.
		{"slow egress, empty queue", backlog{egress: 30 * ms, drainRate: 1000, fastestRate: 20000}, false, false},
		{"egress longer than the budget", backlog{egress: 60 * ms}, true, false},
		{"fastest drain plus egress past the budget", backlog{queued: 400, drainRate: 20000, fastestRate: 20000, egress: 40 * ms}, true, false},
		// Short of CPU: the measured drain says 1.5 s, whatever the cheapest
		// variant's profile promises.
		{"CPU-bound", backlog{queued: 300, drainRate: 200, fastestRate: 40000}, true, false},
		{"unmeasured: the cheapest profile stands in", backlog{queued: 100, perRequest: 100 * time.Microsecond}, false, false},
		{"unmeasured, hopeless", backlog{queued: 1000, perRequest: 100 * time.Microsecond}, true, false},
		// With an estimator the policy can answer any queued request at once
		// from it: only the measured rate decides.
		{"hopeless on the cheapest, but estimated", backlog{queued: 600, drainRate: 20000, fastestRate: 20000, egress: 2 * ms}, false, true},
		{"CPU-bound, estimated", backlog{queued: 300, drainRate: 200, fastestRate: 40000}, true, true},
		{"egress longer than the budget, estimated", backlog{egress: 60 * ms}, true, true},
	} {
		if got := c.b.refuses(budget, 0.5, c.estimated); got != c.refuse {
			t.Errorf("%s: refuses = %v, want %v (%+v; wait at the measured rate %v)", c.name, got, c.refuse, c.b, c.b.estimatedWait())
		}
	}
}
