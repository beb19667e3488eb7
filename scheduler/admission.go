package scheduler

import "time"

// Backlog is what admission decides by: the gateway's (gateway/ingress.go) and
// the simulator's (eval), so that both refuse the same requests.
type Backlog struct {
	// Queued is the number of requests queued for the loop.
	Queued int
	// DrainRate is the rate the loop has been answering queued requests,
	// FastestRate the rate it could reach with every request on its
	// application's cheapest variant (DrainMeter's DrainRates; requests per
	// second of busy time, 0 until measured).
	DrainRate, FastestRate float64
	// PerRequest stands in for an unmeasured rate: the cheapest variant's
	// profiled time per request at its best batch size.
	PerRequest time.Duration
	// Egress is the recent delay between the loop and the broker (0 in the
	// simulator).
	Egress time.Duration
}

// Drain is how long the queue takes to drain at rate (PerRequest each when
// rate is 0).
func (b Backlog) Drain(rate float64) time.Duration {
	switch {
	case b.Queued == 0:
		return 0
	case rate > 0:
		return time.Duration(float64(b.Queued) / rate * float64(time.Second))
	}
	return time.Duration(b.Queued) * b.PerRequest
}

// EstimatedWait is how long a request admitted now would wait: the queue's
// drain at the measured rate and the egress delay.
func (b Backlog) EstimatedWait() time.Duration { return b.Egress + b.Drain(b.DrainRate) }

// TooSlow reports whether a request with this budget would wait longer than
// the whole budget at the rate the loop has actually been draining (answers by
// a model or from the estimate, per second of busy time): then the gateway is
// short of CPU (ingress, the journal and the broker starve the engine) or the
// policy keeps more than it can answer, and admitting more only fills the
// queue (at five times capacity in gateway's TestOverload5x).
func (b Backlog) TooSlow(budget time.Duration) bool { return b.EstimatedWait() > budget }

// Hopeless reports whether no choice of variants could answer a request with
// this budget in time: the queue ahead of it would not drain within maxWait of
// the budget even at the fastest rate, or that drain plus the egress delay
// exceeds the whole budget.
func (b Backlog) Hopeless(budget time.Duration, maxWait float64) bool {
	fast := b.Drain(b.FastestRate)
	return fast > time.Duration(maxWait*float64(budget)) || fast+b.Egress > budget
}

// Refuses reports whether admission refuses a request with this budget
// (maxWait > 0) of an application with an estimator (estimated) or without one:
// any request when TooSlow, one without an estimator also when Hopeless.
//
// With an estimator the policy can answer any queued request at once from its
// estimate, so Hopeless is not applied: it would take the choice of which
// requests to degrade from the policy (first come, first refused), and that
// choice is what data-aware shedding is worth under overload
// (docs/evaluation-log.md, "Admission").
//
// Refusing by the rate the current choice of variants drains at, against
// maxWait of the budget, refused up to 18% of the requests at half the heavy
// variants' capacity; and the egress delay is not held against maxWait's
// share, which is what it leaves for the batch, the journal and the broker:
// counting their delay in it too refused every request, with an empty queue,
// whenever replies took half the budget to reach the broker.
func (b Backlog) Refuses(budget time.Duration, maxWait float64, estimated bool) bool {
	return b.TooSlow(budget) || !estimated && b.Hopeless(budget, maxWait)
}
