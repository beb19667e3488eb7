package scheduler

import (
	"math"
	"time"
)

// PriceGate is admission by the shedding walk's own rule (shed.go): it lets a
// caller answer from its estimate, at admission, an arriving request that a
// searching, data-aware policy that answers from the estimate (sneakpeek) would
// shed anyway, before the request is journaled and queued.
//
// Under overload the walk answers from the estimate the queued requests whose
// model answer is worth least per second of engine time over their degraded
// answer (their worth density), as many as it takes to keep the others on
// time. Shedding them there costs the scheduling loop a verdict each (the loop
// is one goroutine; admission runs on many workers), and until the walk reaches
// them they swell the queue the next decisions work through. A decision that
// shed records the largest density it shed; its gate sheds an arrival whose
// density is below that, an arrival the walk would have shed before any it did
// shed.
//
// A decision that shed nothing leaves the previous gate in place (until
// GateTTL) while engine time has a price (setPrice), and replaces it with a
// gate that sheds nothing once time is free. A gate is immutable once made and safe to share between
// goroutines: it holds the shedding costs of the decision that made it, not the
// variants' latency tables (which the gateway's loop corrects in place).
type PriceGate struct {
	// At is the decision's time; a gate older than GateTTL sheds nothing.
	At time.Time
	// Density is the largest worth per engine second the decision shed
	// (utility per second; negative when the degraded answers it gave were
	// worth more than any model's); meaningful only when Active.
	Density float64
	// Active is false for a gate that sheds nothing (time is free).
	Active bool
	// shrink is the policy's Options.Shrink.
	shrink float64
	// apps holds, per application version, which variants can be made
	// resident and the engine time the walk charges a request.
	apps map[*App]gateApp
}

type gateApp struct {
	ok   []bool
	cost time.Duration
}

// freeGate sheds nothing: what a decision that found engine time free sets
// (one value for all, as most decisions find time free).
var freeGate = &PriceGate{}

// GateTTL is how long a PriceGate holds after its decision: the gate of a
// loop that has stopped shedding must not outlive the overload that set it.
const GateTTL = 250 * time.Millisecond

// gate returns the admission rule this decision sets: one from what it shed;
// nil when the view does not answer from the estimate or when it keeps the
// previous one (nothing shed, but engine time has a price); one that sheds
// nothing when nothing was shed and time is free.
func (d *decisionState) gate() *PriceGate {
	switch {
	case !d.w.dataAware || d.w.noDegrade:
		return nil
	case d.shedN == 0 && d.price <= 0:
		return freeGate // time is free: replaces a gate that sheds
	case d.shedN == 0:
		return nil
	}
	g := &PriceGate{At: d.s.Now, Density: d.shedMax, Active: true, shrink: d.shrink, apps: make(map[*App]gateApp, len(d.s.Apps))}
	for _, a := range d.s.Apps {
		ai := d.info(a)
		g.apps[a] = gateApp{ok: append([]bool(nil), ai.ok0...), cost: ai.shedCost}
	}
	return g
}

// Sheds reports whether the gate answers r (prepared: Prepare, and Sharpen
// where the application has a difficulty model) from its estimate at now: r
// has an estimate whose degraded answer is worth more than no answer, and its
// worth density in the shedding walk (its best believed value on a variant
// that can be made resident, over the degraded answer, per the engine time the
// walk charges it) is below the gate's. It sheds nothing for an application
// version the gate does not know, or once the gate is older than GateTTL.
func (g *PriceGate) Sheds(r *Request, now time.Time) bool {
	if g == nil || !g.Active || r.P == nil || now.Sub(g.At) > GateTTL || r.DegradedUtility <= r.NoAnswerUtility {
		return false
	}
	ga, ok := g.apps[r.App]
	if !ok || len(ga.ok) != len(r.ExpUtility) {
		return false
	}
	best := math.Inf(-1)
	for i, u := range r.ExpUtility {
		if !ga.ok[i] {
			continue
		}
		u = shrinkTo(u, r.App.Variants[i].ProfiledUtility, g.shrink)
		best = max(best, u)
	}
	if math.IsInf(best, -1) {
		return false
	}
	return shedDensity(best, r.DegradedUtility, ga.cost) < g.Density
}
