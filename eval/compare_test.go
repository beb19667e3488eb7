package eval

import (
	"math"
	"testing"
	"time"
)

// TestComparisonSneakPeekVsBaselines is the small deterministic version of the
// comparison in docs/evaluation-log.md ("Honest baselines", "Every application and
// workload"): the same options (the gateway's shrink 0.5 and 1 s price horizon,
// its admission and label-shift correction, its warm residency, 5 us of loop time per request run on
// a model and 1 us per request answered without one, known to the policies, 1 ms
// from receipt to the queue), one seed, a few deadlines of arrivals. It fails if
// sneakpeek falls below the cascade, the mixing oblivious policy, edf or
// fixed-batch at the points where the full comparison finds it above them
// beyond its 95% intervals: vad and satellite beyond the engine's capacity,
// where sneakpeek answers the requests it sheds with their estimate (the
// cascade and oblivious cannot) and chooses which by it (edf and fixed-batch
// answer admission's refusals from the estimate, but keep what they run on the
// most accurate variant, often late).
//
// On fashion (resnet-m on top, the shared difficulty form) sneakpeek is asserted
// above every baseline at the natural mix's load 2 and the tops-heavy mix's load
// 5, where the full comparison finds it above all of them beyond the intervals
// (docs/evaluation-log.md, "The shared difficulty form"), and above the cascade at
// tops-heavy load 3, where it ties the mixing oblivious.
//
// On vad's speech-heavy meeting mix it is asserted above every baseline at
// loads 0.5 and 2: there the gateway's answers from the estimate
// (scheduler.Options.EstimateAnswers, on here as by default) answer from the
// corrected estimate the windows whose model answers are worth less in that
// mix; without them edf and fixed-batch were above sneakpeek at load 2 and
// the cascade at load 0.5 (docs/evaluation-log.md, "Answers from the estimate").
//
// It asserts nothing where sneakpeek does not win, and says so in the log: below
// capacity on vad's natural mix the cascade (silero-half for everything) is
// better by 0.005 to 0.02, and on satellite the mixing oblivious by 0.003 to
// 0.005.
func TestComparisonSneakPeekVsBaselines(t *testing.T) {
	pols := []string{"sneakpeek", PolicyCascade, "oblivious", "edf", "fixed-batch"}
	var admitted, degraded int // sneakpeek's, in the last run
	run := func(a *App, wl string, dlScale, load, deadlines float64) []float64 {
		t.Helper()
		w, err := a.Workload(wl)
		if err != nil {
			t.Fatal(err)
		}
		pt := Point{App: a, Workload: w, Load: load, Deadline: time.Duration(float64(a.Deadline) * dlScale), Seed: 1,
			GatewayModel: GatewayModel{Jitter: 0.05, MaxQueue: 10000, GatewayCost: 5 * time.Microsecond,
				VerdictCost: time.Microsecond, GatewayKnown: true, IngressDelay: time.Millisecond,
				// The gateway's admission (sneakgate eval's defaults).
				MaxWait: 0.5, MeasuredWait: true, DegradeRefused: true, PriceAdmission: true,
				// Its label-shift correction, on by default (for every policy).
				LabelShift: true}}
		pt.Options.Shrink, pt.Options.PriceHorizon, pt.Options.EstimateAnswers = 0.5, time.Second, true
		rate := load * CapacityWith(a.Sched, withMaxBatch(pt.Options), pt.GatewayCost)
		pt.Requests = max(2000, int(deadlines*rate*pt.Deadline.Seconds()))
		u := make([]float64, len(pols))
		for i, p := range pols {
			pt.Policy = p
			m, err := Simulate(pt, nil)
			if err != nil {
				t.Fatalf("%s %s load %v %s: %v", a.Sched.Name, wl, load, p, err)
			}
			u[i] = m.Utility
			if p == "sneakpeek" {
				admitted, degraded = m.EstimateAdmitted, m.Degraded
			}
		}
		t.Logf("%s %s load %.1f (%d requests): sneakpeek %.3f cascade %.3f oblivious %.3f edf %.3f fixed-batch %.3f",
			a.Sched.Name, wl, load, pt.Requests, u[0], u[1], u[2], u[3], u[4])
		return u
	}
	check := func(name string, u []float64) {
		t.Helper()
		for i, p := range pols[1:] {
			if u[0] < u[i+1] {
				t.Errorf("%s: sneakpeek %.3f below %s %.3f", name, u[0], p, u[i+1])
			}
		}
	}
	vad := loadReal(t, "vad")
	check("vad quiet-room load 2", run(vad, "quiet-room", 1, 2, 6))
	// Load 2, not 1.5: since the label-shift correction starts from the
	// validation split, as the gateway's does, fixed-batch is level with
	// sneakpeek at 1.5 in the ten-seed comparison (+0.0044 ± 0.0065).
	check("vad natural load 2", run(vad, "natural", 1, 2, 6))
	check("vad meeting load 2", run(vad, "meeting", 1, 2, 6))
	check("vad meeting load 0.5", run(vad, "meeting", 1, 0.5, 6))
	// Below capacity the answers from the estimate come at admission
	// (Decision.Answers), as in the gateway, not from the scheduling loop.
	if degraded == 0 || admitted < degraded/2 {
		t.Errorf("vad meeting load 0.5: %d of sneakpeek's %d degraded answers given at admission, want most", admitted, degraded)
	}
	sat := loadReal(t, "satellite")
	check("satellite damp-soils 10 ms load 2", run(sat, "damp-soils", 0.1, 2, 5))
	// At load 5 only since shedding moved to admission (admission.price_shed):
	// before, the loop's verdicts left sneakpeek 0.002-0.003 below edf and
	// fixed-batch.
	check("satellite damp-soils 10 ms load 5", run(sat, "damp-soils", 0.1, 5, 5))
	fashion := loadReal(t, "fashion")
	check("fashion natural load 2", run(fashion, "natural", 1, 2, 4))
	check("fashion tops-heavy load 5", run(fashion, "tops-heavy", 1, 5, 4))
	if u := run(fashion, "tops-heavy", 1, 3, 4); u[0] < u[1] {
		t.Errorf("fashion tops-heavy load 3: sneakpeek %.3f below cascade %.3f", u[0], u[1])
	}
}

// TestComparisonPeekOnFashion is the small deterministic version of the peek's
// comparison in docs/evaluation-log.md ("The peek's time"): fashion with the cnn as
// sneakpeek's peek and as the cascade's first variant, the options of
// TestComparisonSneakPeekVsBaselines. Since the peek prices its second opinions
// at the share the arrivals' class mix escalates and leaves a tie with time free
// to the better variant, the full comparison (seeds 1-5) finds the peek level
// with sneakpeek and oblivious at load 0.5 (it was 0.0007-0.0010 below) and
// above both beyond the intervals at load 3 on both mixes, and within 0.0013 of
// the cnn-first cascade wherever it is below it: the test fails if the peek
// falls below sneakpeek or oblivious at tops-heavy 0.5 and 3 or natural 3, or
// more than 0.004 below that cascade at any point checked up to load 3; and,
// since the peek is priced at the decisions' prices smoothed (peekSmoothing),
// if it falls more than 0.004 below sneakpeek at tops-heavy load 12 (it was
// 0.020 below over seeds 1-3 when priced at the last decision's price).
func TestComparisonPeekOnFashion(t *testing.T) {
	fashion := loadRealWith(t, "fashion", LoadOptions{CascadeFirst: map[string]string{"fashion": "cnn"}})
	if fashion.Peek == nil || fashion.Sched.Variants[fashion.Peek.Cheap].ID.Variant != "cnn" {
		t.Fatalf("the peek is %+v, want the cnn first", fashion.Peek)
	}
	pols := []string{PolicyPeek, "sneakpeek", "oblivious", PolicyCascade}
	for _, c := range []struct {
		wl     string
		load   float64
		vsPlan bool // against sneakpeek and oblivious
		heavy  bool // far beyond capacity: within 0.004 of sneakpeek, the cascade not checked
	}{{"tops-heavy", 0.5, true, false}, {"tops-heavy", 2, false, false}, {"tops-heavy", 3, true, false},
		{"natural", 2, false, false}, {"natural", 3, true, false}, {"tops-heavy", 12, false, true}} {
		w, err := fashion.Workload(c.wl)
		if err != nil {
			t.Fatal(err)
		}
		pt := Point{App: fashion, Workload: w, Load: c.load, Deadline: fashion.Deadline, Seed: 1,
			GatewayModel: GatewayModel{Jitter: 0.05, MaxQueue: 10000, GatewayCost: 5 * time.Microsecond,
				VerdictCost: time.Microsecond, GatewayKnown: true, IngressDelay: time.Millisecond,
				MaxWait: 0.5, MeasuredWait: true, DegradeRefused: true, PriceAdmission: true,
				LabelShift: true}} // the gateway's defaults, as TestComparisonSneakPeekVsBaselines
		pt.Options.Shrink, pt.Options.PriceHorizon, pt.Options.EstimateAnswers = 0.5, time.Second, true
		rate := c.load * CapacityWith(fashion.Sched, withMaxBatch(pt.Options), pt.GatewayCost)
		pt.Requests = max(2000, int(4*rate*pt.Deadline.Seconds()))
		u := make([]float64, len(pols))
		for i, p := range pols {
			pt.Policy = p
			m, err := Simulate(pt, nil)
			if err != nil {
				t.Fatalf("%s load %v %s: %v", c.wl, c.load, p, err)
			}
			u[i] = m.Utility
		}
		t.Logf("fashion %s load %.1f (%d requests): sneakpeek-peek %.4f sneakpeek %.4f oblivious %.4f cascade (cnn first) %.4f",
			c.wl, c.load, pt.Requests, u[0], u[1], u[2], u[3])
		if c.vsPlan && u[0] < u[1] {
			t.Errorf("fashion %s load %v: sneakpeek-peek %.4f below sneakpeek %.4f", c.wl, c.load, u[0], u[1])
		}
		if c.vsPlan && u[0] < u[2] {
			t.Errorf("fashion %s load %v: sneakpeek-peek %.4f below oblivious %.4f", c.wl, c.load, u[0], u[2])
		}
		if c.heavy && u[0] < u[1]-0.004 {
			t.Errorf("fashion %s load %v: sneakpeek-peek %.4f more than 0.004 below sneakpeek %.4f", c.wl, c.load, u[0], u[1])
		}
		if !c.heavy && u[0] < u[3]-0.004 {
			t.Errorf("fashion %s load %v: sneakpeek-peek %.4f more than 0.004 below the cnn-first cascade %.4f", c.wl, c.load, u[0], u[3])
		}
	}
}

// t975 is Student's t 0.975 quantile: exact to the table's three decimals up
// to 30 degrees of freedom and within 0.001 beyond (values from R's qt).
func TestT975(t *testing.T) {
	for df, want := range map[int]float64{1: 12.706, 9: 2.262, 20: 2.086, 25: 2.060, 29: 2.045, 30: 2.042,
		31: 2.0395, 40: 2.0211, 60: 2.0003, 120: 1.9799, 1000: 1.9623} {
		if got := t975(df); math.Abs(got-want) > 0.001 {
			t.Errorf("t975(%d) = %.4f, want %.4f", df, got, want)
		}
	}
	for df := 2; df < 200; df++ {
		if t975(df) >= t975(df-1) {
			t.Fatalf("t975 not decreasing at %d: %.4f after %.4f", df, t975(df), t975(df-1))
		}
	}
}
