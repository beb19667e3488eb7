package eval

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/sneakgate/sneakgate/scheduler"
)

// ScenarioPoint is one simulated run of a scenario: every application's
// periodic streams at one load, one estimator, one policy, one seed.
type ScenarioPoint struct {
	S *CompiledScenario
	// Estimator is the index of the scenario's estimator.
	Estimator int
	Policy    string
	Options   scheduler.Options
	// Load scales every stream's rate so that, with every request on its
	// application's most accurate variant, the engine would be busy this share
	// of the time (CompiledScenario.EngineLoad's best; swaps not counted).
	Load float64
	// Requests is about how many requests arrive (the run lasts Requests over
	// the total rate, at least MinDeadlines of the longest deadline).
	Requests     int
	MinDeadlines float64
	// Seed fixes the streams' phases and jitter, the classes, the flags, the
	// latency jitter and the variants' answers; every policy and every
	// estimator see the same requests and classes for a given seed.
	Seed uint64
	// GatewayModel is as in Point; its CountBudget and MemBudget are the
	// scenario's engine section unless overridden.
	GatewayModel
}

// ScenarioRun is one ScenarioPoint's outcome: Apps[a] application a's metrics,
// All those of every request together (per-class entries named app/class);
// Rates the arrival rates per application, Best and Cheap the engine loads
// (CompiledScenario.EngineLoad) they make, Seconds the span of arrivals.
type ScenarioRun struct {
	Apps        []Metrics
	All         Metrics
	Rates       []float64
	Best, Cheap float64
	Seconds     float64
}

// ScenarioRates returns every application's arrival rate at load: the
// scenario's streams scaled alike so that EngineLoad's best equals load.
func (c *CompiledScenario) ScenarioRates(load float64, maxBatch int) []float64 {
	base := c.Rates()
	b, _ := c.EngineLoad(base, maxBatch)
	out := make([]float64, len(base))
	for i, r := range base {
		out[i] = r * load / b
	}
	return out
}

// SimulateScenario runs one scenario point. Like Simulate it is deterministic
// but for the measured decision times; it runs every application on one
// engine, with the requests of each device's periodic stream.
func SimulateScenario(pt ScenarioPoint) (ScenarioRun, error) {
	c := pt.S
	if pt.Estimator < 0 || pt.Estimator >= len(c.Estimators) {
		return ScenarioRun{}, fmt.Errorf("eval: scenario %s has no estimator %d", c.Name, pt.Estimator)
	}
	base, gmode := resolvePolicy(pt.Policy)
	if gmode != guardOff || shiftOf(pt.Policy) != shiftOff || base == PolicyCascade ||
		pt.Policy == PolicyClassBased || pt.Policy == PolicyOracle || pt.Policy == PolicyPeek {
		return ScenarioRun{}, fmt.Errorf("eval: a scenario does not run %s (no samples, no engine)", pt.Policy)
	}
	pol, err := scheduler.New(base, pt.Options)
	if err != nil {
		return ScenarioRun{}, err
	}
	if pt.Load <= 0 || pt.Requests <= 0 {
		return ScenarioRun{}, fmt.Errorf("eval: load %v and requests %d must be positive", pt.Load, pt.Requests)
	}
	o := withMaxBatch(pt.Options)
	run := ScenarioRun{Rates: c.ScenarioRates(pt.Load, o.MaxBatch)}
	run.Best, run.Cheap = c.EngineLoad(run.Rates, o.MaxBatch)
	total, longest := 0.0, time.Duration(0)
	for i, r := range run.Rates {
		total += r
		longest = max(longest, c.Deadline[i])
	}
	span := max(float64(pt.Requests)/total, pt.MinDeadlines*longest.Seconds())
	run.Seconds = span

	// The policy's view of every application (with the loop's cost when known).
	apps := make([]simApp, len(c.Sched))
	for i, a := range c.Sched {
		view := a
		if pt.GatewayKnown && (pt.GatewayCost > 0 || pt.chargesDecisions()) {
			view = withLoopCost(a, pt.GatewayCost)
		}
		apps[i] = simApp{App: c.Eval[i], Exec: a, View: view, Deadline: c.Deadline[i],
			Fastest: scheduler.CheapestAmortised(a) + pt.GatewayCost}
	}

	// Arrivals: each device of each application sends every period from a
	// random phase, moved by a uniform jitter; a class from the mix, a flag
	// from the estimator's rates. A request's sample is its class (c.Eval).
	origin := time.Unix(1_700_000_000, 0).UTC()
	arr := rand.New(rand.NewPCG(pt.Seed, 1))
	flags := rand.New(rand.NewPCG(pt.Seed, 3))
	var reqs []simReq
	for i, sa := range c.Apps {
		period := float64(sa.Stream.Devices) / run.Rates[i]
		j := min(sa.Stream.JitterMS/1e3, period/2)
		for range sa.Stream.Devices {
			for t := arr.Float64() * period; t < span; t += period {
				at := t + j*(2*arr.Float64()-1)
				if at < 0 || at >= span {
					continue
				}
				reqs = append(reqs, simReq{app: i, sample: drawClass(arr, sa.Mix),
					arr: origin.Add(time.Duration(at * float64(time.Second)))})
			}
		}
	}
	slices.SortStableFunc(reqs, func(a, b simReq) int { return a.arr.Compare(b.arr) })
	for i := range reqs {
		q := &reqs[i]
		q.seq = uint64(i + 1)
		if flags.Float64() < c.Flag[pt.Estimator][q.app][q.sample] {
			q.flag = 1
		}
	}
	var placebo *rand.Rand
	if pt.Policy == PolicyPlacebo {
		placebo = rand.New(rand.NewPCG(pt.Seed, 4))
	}
	estimate := func(q *simReq) (est, correct []float64) {
		if placebo == nil {
			return c.Est[pt.Estimator][q.app][q.flag], nil
		}
		// The estimate of another request of the same application.
		y := drawClass(placebo, c.Apps[q.app].Mix)
		f := 0
		if placebo.Float64() < c.Flag[pt.Estimator][q.app][y] {
			f = 1
		}
		return c.Est[pt.Estimator][q.app][f], nil
	}
	sim := engineSim{Policy: pt.Policy, Pol: pol, Apps: apps, Reqs: reqs, Origin: origin, Seed: pt.Seed,
		GatewayModel: pt.GatewayModel, Charge: pt.DecisionCost[pt.Policy], Now: time.Now, Estimate: estimate}
	out, err := sim.run()

	// Per application, then every request together.
	// all sums the applications' tallies onto the engine's counts (out.All).
	all := tally{m: out.All}
	all.m.Requests = len(reqs)
	for i, a := range c.Sched {
		t := &out.Tallies[i]
		m := &t.m
		m.Requests = t.classSum()
		all.util, all.deg, all.correct = all.util+t.util, all.deg+t.deg, all.correct+t.correct
		all.lat = append(all.lat, t.lat...)
		all.m.OK, all.m.Late, all.m.Degraded = all.m.OK+m.OK, all.m.Late+m.Late, all.m.Degraded+m.Degraded
		all.m.Expired, all.m.Rejected = all.m.Expired+m.Expired, all.m.Rejected+m.Rejected
		t.finish(a, c.Apps[i].Classes, span)
		for _, cm := range m.PerClass {
			cm.Class = a.Name + "/" + cm.Class
			all.m.PerClass = append(all.m.PerClass, cm)
		}
		run.Apps = append(run.Apps, *m)
	}
	all.means(out.LastDone.Sub(origin).Seconds())
	setDecisionTimes(&all.m, out.DecideWall, out.Scheduled)
	run.All = all.m
	return run, err
}

// drawClass draws a class from the distribution mix.
func drawClass(rng *rand.Rand, mix []float64) int {
	u := rng.Float64()
	for y, p := range mix {
		if u < p {
			return y
		}
		u -= p
	}
	return len(mix) - 1
}
