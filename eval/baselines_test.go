package eval

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/scheduler"
)

// TestWarmResidency: the simulator starts as the gateway does, with every
// variant that fits the budgets loaded in manifest order (one that does not fit
// is skipped and the next ones tried).
func TestWarmResidency(t *testing.T) {
	a := Synthetic(1).Sched // 1, 4, 16, 64 MiB
	if res := WarmResidency(a, 0, 0, time.Time{}); len(res) != 4 {
		t.Errorf("unlimited: %d resident, want 4", len(res))
	}
	res := WarmResidency(a, 22<<20, 0, time.Time{})
	for _, want := range []string{"tiny", "small", "medium"} {
		if _, ok := res[scheduler.VariantID{App: "synthetic", Variant: want}]; !ok {
			t.Errorf("22 MiB: %s not resident (%v)", want, res)
		}
	}
	if len(res) != 3 {
		t.Errorf("22 MiB: %v", res)
	}
	res = WarmResidency(a, 70<<20, 0, time.Time{}) // tiny+small+medium = 21, large 64 does not fit after them
	if _, ok := res[scheduler.VariantID{App: "synthetic", Variant: "large"}]; ok || len(res) != 3 {
		t.Errorf("70 MiB: %v", res)
	}
	if res := WarmResidency(a, 0, 2, time.Time{}); len(res) != 2 {
		t.Errorf("count 2: %v", res)
	}
}

// TestPlacebo: sneakpeek fed another request's estimate is deterministic for a
// seed, answers every request, and is not sneakpeek.
func TestPlacebo(t *testing.T) {
	a := Synthetic(1)
	pt := Point{App: a, Workload: a.Workloads[1], Policy: PolicyPlacebo, Load: 1.5, Deadline: a.Deadline,
		Requests: 2000, Seed: 4, GatewayModel: GatewayModel{Jitter: 0.05}}
	m1, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := Simulate(pt, nil)
	pt.Policy = "sneakpeek"
	sp, _ := Simulate(pt, nil)
	if m1.Utility != m2.Utility || m1.OK != m2.OK {
		t.Errorf("placebo not deterministic: %v vs %v", m1.Utility, m2.Utility)
	}
	if m1.Utility == sp.Utility {
		t.Errorf("placebo = sneakpeek (%v): the estimates were not swapped", sp.Utility)
	}
	t.Logf("events load 1.5: sneakpeek %.3f placebo %.3f", sp.Utility, m1.Utility)
}

// TestNoAnswerScored: a request that gets no answer scores its class's
// no-answer value. fifo's decisions do not depend on it, so with a small queue
// bound (rejections) and no late answers, setting it changes mean utility by
// exactly the no-answer values of the rejected requests.
func TestNoAnswerScored(t *testing.T) {
	run := func(na []float64) Metrics {
		a := Synthetic(1)
		a.Sched.NoAnswer = na
		m, err := Simulate(Point{App: a, Workload: a.Workloads[1], Policy: "fifo", Load: 3, Deadline: 50 * time.Millisecond,
			Requests: 3000, Seed: 2, GatewayModel: GatewayModel{MaxQueue: 8}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	base, na := run(nil), run([]float64{0, -1, -1, -1})
	if base.Rejected == 0 || base.Late != 0 || base.Rejected != na.Rejected {
		t.Fatalf("want rejections and no late answers, the same in both: %+v / %+v", base, na)
	}
	want := 0.0
	for y, c := range na.PerClass {
		if y > 0 {
			want -= float64(c.N) * c.NoAnswer
		}
	}
	want /= float64(na.Requests)
	if got := na.Utility - base.Utility; math.Abs(got-want) > 1e-9 {
		t.Errorf("utility moved by %v, want %v", got, want)
	}
	sum := 0.0
	for _, c := range na.PerClass {
		sum += float64(c.N) * c.Utility
	}
	if math.Abs(sum/float64(na.Requests)-na.Utility) > 1e-9 {
		t.Errorf("per-class utilities do not add up to the mean: %v vs %v", sum/float64(na.Requests), na.Utility)
	}
}

// TestLoopCost: the scheduling loop's time per request slows the engine down
// (the same requests take longer to serve), the capacity that defines the load
// counts it, and planning with it does not change the shared application.
func TestLoopCost(t *testing.T) {
	a := Synthetic(1)
	o := scheduler.Options{}
	c := 100 * time.Microsecond
	if CapacityWith(a.Sched, o, c) >= Capacity(a.Sched, o) {
		t.Error("capacity with a loop cost is not lower")
	}
	lat := a.Sched.Variants[3].Latency[8]
	pt := Point{App: a, Workload: a.Workloads[0], Policy: "sneakpeek", Load: 0.8, Deadline: a.Deadline,
		Requests: 2000, Seed: 1}
	free, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	pt.GatewayCost, pt.VerdictCost, pt.GatewayKnown = c, c/5, true
	// Same arrival rate: the load is relative to a smaller capacity.
	pt.Load *= CapacityWith(a.Sched, o, 0) / CapacityWith(a.Sched, o, c)
	slow, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.Sched.Variants[3].Latency[8] != lat {
		t.Error("planning with the loop cost changed the application's latency table")
	}
	if slow.Utility >= free.Utility {
		t.Errorf("a loop cost of %v per request did not cost utility: %.3f vs %.3f", c, slow.Utility, free.Utility)
	}
	t.Logf("no loop cost %.3f, %v per request %.3f", free.Utility, c, slow.Utility)
}

// TestIngressDelay: a request the scheduler sees only after the ingress delay
// still has its deadline from receipt; with a delay longer than the budget's
// hard stop nothing is answered by a model.
func TestIngressDelay(t *testing.T) {
	a := Synthetic(1)
	pt := Point{App: a, Workload: a.Workloads[0], Policy: "edf", Load: 0.5, Deadline: a.Deadline, Requests: 500, Seed: 1,
		GatewayModel: GatewayModel{IngressDelay: 2 * a.Deadline}}
	m, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.OK+m.Late != 0 {
		t.Errorf("%d model answers after the hard stop", m.OK+m.Late)
	}
}

func TestSummarize(t *testing.T) {
	var rs []Result
	for seed, u := range map[uint64][2]float64{1: {0.5, 0.4}, 2: {0.6, 0.55}, 3: {0.7, 0.6}} {
		rs = append(rs, Result{App: "a", Workload: "w", Load: 1, Policy: "sneakpeek", Seed: seed, Metrics: Metrics{Utility: u[0], Requests: 10}},
			Result{App: "a", Workload: "w", Load: 1, Policy: "other", Seed: seed, Metrics: Metrics{Utility: u[1], Requests: 10}})
	}
	ss := Summarize(rs, "sneakpeek")
	if len(ss) != 2 {
		t.Fatalf("%d summaries", len(ss))
	}
	var o Summary
	for _, s := range ss {
		if s.Policy == "other" {
			o = s
		}
	}
	// Paired differences -0.1, -0.05, -0.1: mean -0.0833, sd 0.0289, t(2) 4.303.
	if o.Seeds != 3 || math.Abs(o.Utility-0.5167) > 1e-3 || math.Abs(o.Diff+0.0833) > 1e-3 ||
		math.Abs(o.DiffCI-4.303*0.02887/math.Sqrt(3)) > 1e-3 || math.Abs(o.Ratio-0.5167/0.6) > 1e-3 {
		t.Errorf("summary %+v", o)
	}
	if m, ci := MeanCI([]float64{1}); m != 1 || ci != 0 {
		t.Errorf("one seed: %v ± %v", m, ci)
	}
	if o.Pairs != 3 || o.Paired() != 3 {
		t.Errorf("pairs %d, paired %d, want 3", o.Pairs, o.Paired())
	}
	// The reference failed on two seeds: one pair, no interval, never beyond.
	for i := range rs {
		if rs[i].Policy == "sneakpeek" && rs[i].Seed != 1 {
			rs[i].Err = "failed"
		}
	}
	for _, s := range Summarize(rs, "sneakpeek") {
		if s.Policy != "other" {
			continue
		}
		if s.Seeds != 3 || s.Paired() != 1 || s.DiffCI != 0 {
			t.Errorf("one pair: seeds %d, paired %d, ±%v", s.Seeds, s.Paired(), s.DiffCI)
		}
		if d := markedDiff(s.Diff, s.DiffCI, s.Paired()); strings.HasSuffix(d, "*") {
			t.Errorf("a difference over one pair is marked beyond its interval: %s", d)
		}
	}
	if (Summary{Seeds: 10}).Paired() != 10 {
		t.Error("a summary without pairs (an older file) is not read as paired over its seeds")
	}
}

// TestCascadeInSimulator: on fashion (logreg first, the most accurate variant for
// unsure answers), the
// cascade's operating curve comes from the validation split, some requests go
// back for a second pass, every request is answered once, and runs repeat.
func TestCascadeInSimulator(t *testing.T) {
	a := loadReal(t, "fashion")
	c := a.Cascade
	if c == nil || len(c.Curve) < 2 || a.Sched.Variants[c.Cheap].ID.Variant != "logreg" || c.Better != a.Sched.DefaultVariant {
		t.Fatalf("cascade config %+v", c)
	}
	w, err := a.Workload("tops-heavy")
	if err != nil {
		t.Fatal(err)
	}
	pt := Point{App: a, Workload: w, Policy: PolicyCascade, Load: 2, Deadline: a.Deadline, Requests: 3000, Seed: 1,
		GatewayModel: GatewayModel{Jitter: 0.05, GatewayCost: 5 * time.Microsecond, VerdictCost: time.Microsecond, GatewayKnown: true}}
	m1, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := Simulate(pt, nil)
	if m1.Utility != m2.Utility || m1.Escalated != m2.Escalated {
		t.Errorf("not deterministic: %+v vs %+v", m1, m2)
	}
	if m1.Escalated <= 0 || m1.Escalated >= 1 || m1.Threshold <= 0 || m1.VariantShare["logreg"] == 0 ||
		m1.VariantShare[a.Sched.Variants[c.Better].ID.Variant] == 0 {
		t.Errorf("escalated %.3f at mean threshold %.3f, shares %v", m1.Escalated, m1.Threshold, m1.VariantShare)
	}
	t.Logf("fashion tops-heavy load 2: cascade utility %.3f, escalated %.2f at threshold %.2f, shares %v",
		m1.Utility, m1.Escalated, m1.Threshold, m1.VariantShare)
}

// TestParsePairs checks -cascade-first's parsing: app=variant pairs, nil for
// none, an error for anything else.
func TestParsePairs(t *testing.T) {
	got, err := parsePairs(" fashion=cnn, satellite = mlp-small ")
	if err != nil || len(got) != 2 || got["fashion"] != "cnn" || got["satellite"] != "mlp-small" {
		t.Fatalf("parsePairs: %v, %v", got, err)
	}
	if got, err := parsePairs(""); err != nil || got != nil {
		t.Fatalf("parsePairs(\"\"): %v, %v, want nil, nil", got, err)
	}
	for _, bad := range []string{"fashion", "=cnn", "fashion=", "fashion=cnn,x"} {
		if _, err := parsePairs(bad); err == nil {
			t.Errorf("parsePairs(%q): no error", bad)
		}
	}
}

// decisionCostPoint is the point TestDecisionCost and TestDecisionWall charge
// decisions at (sneakpeek on the synthetic app at load 0.8), and its metrics
// with no decision charged.
func decisionCostPoint(t *testing.T) (Point, Metrics) {
	t.Helper()
	a := Synthetic(1)
	pt := Point{App: a, Workload: a.Workloads[0], Policy: "sneakpeek", Load: 0.8, Deadline: a.Deadline,
		Requests: 2000, Seed: 1, GatewayModel: GatewayModel{GatewayCost: 5 * time.Microsecond, VerdictCost: time.Microsecond}}
	free, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	return pt, free
}

// TestDecisionCost: a policy's decision cost (-decision-us) slows its own
// loop, at the same arrivals (the load's capacity does not count it), and
// another policy's cost leaves it alone.
func TestDecisionCost(t *testing.T) {
	pt, free := decisionCostPoint(t)
	pt.DecisionCost = map[string]time.Duration{"edf": time.Millisecond}
	other, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if other.Utility != free.Utility {
		t.Errorf("edf's decision cost changed sneakpeek's utility: %.4f vs %.4f", other.Utility, free.Utility)
	}
	pt.DecisionCost = map[string]time.Duration{"sneakpeek": 100 * time.Microsecond}
	slow, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if slow.Utility >= free.Utility {
		t.Errorf("a decision cost of 100µs per request did not cost utility: %.4f vs %.4f", slow.Utility, free.Utility)
	}
	// A cost at this point's load replaces the policy's; one at another load
	// leaves it.
	pt.DecisionCost = map[string]time.Duration{"sneakpeek": 100 * time.Microsecond, "sneakpeek@0.8": 0}
	if atLoad, err := Simulate(pt, nil); err != nil || atLoad.Utility != free.Utility {
		t.Errorf("sneakpeek@0.8=0 at load 0.8: utility %.4f, want the free %.4f (%v)", atLoad.Utility, free.Utility, err)
	}
	pt.DecisionCost = map[string]time.Duration{"sneakpeek": 100 * time.Microsecond, "sneakpeek@1.5": 0}
	if atOther, err := Simulate(pt, nil); err != nil || atOther.Utility != slow.Utility {
		t.Errorf("sneakpeek@1.5=0 at load 0.8: utility %.4f, want the charged %.4f (%v)", atOther.Utility, slow.Utility, err)
	}
	for _, bad := range []string{"sneakpeek", "edf=x", "=3", "edf=-1", "edf@=1", "@1=1", "edf@0=1", "edf@x=1"} {
		if _, err := parseDecisionCosts(bad); err == nil {
			t.Errorf("-decision-us %q accepted", bad)
		}
	}
	if m, err := parseDecisionCosts("sneakpeek=9, edf=0.5, sneakpeek@1.0=2"); err != nil || m["sneakpeek"] != 9*time.Microsecond ||
		m["edf"] != 500*time.Nanosecond || m["sneakpeek@1"] != 2*time.Microsecond {
		t.Errorf("-decision-us parsed as %v, %v", m, err)
	}
}

// TestDecisionCostPlanned: charged 100 µs a request for its decisions, a
// policy that plans with the loop's time as charged (a weighted mean over
// recent batches, as the gateway measures its own: gateway/latency.go) keeps
// more requests in time and more utility than one that plans with the
// constant -gateway-us alone, which its plans overrun.
func TestDecisionCostPlanned(t *testing.T) {
	pt, _ := decisionCostPoint(t)
	pt.Load, pt.Requests, pt.GatewayKnown = 1, 4000, true
	pt.DecisionCost = map[string]time.Duration{"sneakpeek": 100 * time.Microsecond}
	planned, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	blindToCharge = true
	defer func() { blindToCharge = false }()
	blind, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("planning with the charged loop time: utility %.4f, in time %.4f; with -gateway-us alone: %.4f, %.4f",
		planned.Utility, planned.InTime, blind.Utility, blind.InTime)
	if planned.Utility <= blind.Utility || planned.InTime <= blind.InTime {
		t.Errorf("planning with the charged loop time: utility %.4f, in time %.4f; not above planning blind to it: %.4f, %.4f",
			planned.Utility, planned.InTime, blind.Utility, blind.InTime)
	}
	// Likewise with no -gateway-us at all (the views used to share the
	// engine's tables then, and nothing was learnt).
	blindToCharge = false
	pt.GatewayCost = 0
	planned0, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	blindToCharge = true
	blind0, err := Simulate(pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if planned0.Utility <= blind0.Utility {
		t.Errorf("-gateway-us 0: planning with the charged loop time: utility %.4f, not above planning blind to it: %.4f", planned0.Utility, blind0.Utility)
	}
}

// TestDecisionWall: with -decision-wall each decision costs the loop the time
// its Decide took by the run's clock: a clock that moves 200 µs across each
// decision costs utility, one that does not move costs nothing, and the flag
// is refused beside -decision-us (one charge or the other).
func TestDecisionWall(t *testing.T) {
	pt, free := decisionCostPoint(t)
	// A clock that moves only inside Decide: each call returns the time
	// after the one before, tick apart.
	clock := func(tick time.Duration) func() time.Time {
		at := time.Unix(0, 0)
		return func() time.Time { at = at.Add(tick); return at }
	}
	pt.DecisionWall = true
	still, err := Simulate(pt, clock(0))
	if err != nil || still.Utility != free.Utility {
		t.Errorf("decisions that took no time cost utility: %.4f vs %.4f (%v)", still.Utility, free.Utility, err)
	}
	slow, err := Simulate(pt, clock(200*time.Microsecond))
	if err != nil || slow.Utility >= free.Utility {
		t.Errorf("decisions of 200 µs each did not cost utility: %.4f vs %.4f (%v)", slow.Utility, free.Utility, err)
	}
	var out, errOut strings.Builder
	err = Main(context.Background(), []string{"-synthetic", "-policies", "sneakpeek", "-loads", "0.5", "-n", "100",
		"-decision-wall", "-decision-us", "sneakpeek=9", "-quiet"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "-decision-wall") {
		t.Errorf("-decision-wall with -decision-us: %v", err)
	}
}

// A policy -decision-us names but -policies does not run (a misspelling) is
// refused, not silently charged nothing.
func TestDecisionCostNamesRunPolicies(t *testing.T) {
	var out, errOut strings.Builder
	err := Main(context.Background(), []string{"-synthetic", "-policies", "sneakpeek,edf", "-loads", "0.5", "-n", "100",
		"-decision-us", "sneakpeak=9", "-quiet"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "sneakpeak") {
		t.Fatalf("-decision-us sneakpeak=9 with -policies sneakpeek,edf: %v", err)
	}
	// Likewise a load -loads does not run.
	err = Main(context.Background(), []string{"-synthetic", "-policies", "sneakpeek,edf", "-loads", "0.5", "-n", "100",
		"-decision-us", "sneakpeek@5=9", "-quiet"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "load 5") {
		t.Fatalf("-decision-us sneakpeek@5=9 with -loads 0.5: %v", err)
	}
}
