package eval

import (
	"math"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// histogramQuantiles interpolates within buckets: 10 observations in (0, 1 ms]
// and 10 in (1 ms, 3 ms] put the median at 1 ms and the 75th percentile at 2 ms.
func TestHistogramQuantiles(t *testing.T) {
	h := &dto.Histogram{SampleCount: proto.Uint64(20), Bucket: []*dto.Bucket{
		{UpperBound: proto.Float64(0.001), CumulativeCount: proto.Uint64(10)},
		{UpperBound: proto.Float64(0.003), CumulativeCount: proto.Uint64(20)},
		{UpperBound: proto.Float64(0.01), CumulativeCount: proto.Uint64(20)},
	}}
	q := histogramQuantiles(h, 4) // the 12.5th, 37.5th, 62.5th and 87.5th percentiles
	want := []time.Duration{250 * time.Microsecond, 750 * time.Microsecond, 1500 * time.Microsecond, 2500 * time.Microsecond}
	for i := range want {
		if d := q[i] - want[i]; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("quantile %d: %v, want %v", i, q[i], want[i])
		}
	}
}

// SummarizeLive pairs live with simulated utility per run, and each policy with
// the reference policy's run of the same seed.
func TestSummarizeLive(t *testing.T) {
	run := func(pol string, seed uint64, live, sim float64) LiveResult {
		r := LiveResult{App: "a", Workload: "w", Policy: pol, Rate: 100, Load: 1, DeadlineMS: 50, Seed: seed}
		r.Live.Utility, r.Sim.Utility = live, sim
		return r
	}
	rs := []LiveResult{
		run("sneakpeek", 1, 0.90, 0.92), run("oblivious", 1, 0.88, 0.91),
		run("sneakpeek", 2, 0.80, 0.83), run("oblivious", 2, 0.775, 0.82),
		run("sneakpeek", 3, 0.85, 0.86), run("oblivious", 3, 0.835, 0.86),
		run("cascade", 9, 0.5, 0.5), // no reference run of seed 9: not paired
	}
	ss := SummarizeLive(rs, "sneakpeek")
	if len(ss) != 3 {
		t.Fatalf("%d summaries, want 3: %+v", len(ss), ss)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	sp, ob, ca := ss[0], ss[1], ss[2]
	if sp.Policy != "sneakpeek" || sp.Runs != 3 || !near(sp.Live, 0.85) || !near(sp.LiveSim, -0.02) || sp.Pairs != 0 {
		t.Errorf("sneakpeek: %+v", sp)
	}
	// oblivious - sneakpeek by seed: -0.02, -0.025, -0.015.
	if ob.Pairs != 3 || !near(ob.VsRef, -0.02) || !(ob.VsRefCI > 0) || !near(ob.LiveSim, (-0.03-0.045-0.025)/3) {
		t.Errorf("oblivious: %+v", ob)
	}
	if ca.Pairs != 0 || ca.Runs != 1 {
		t.Errorf("cascade: %+v", ca)
	}
	var b strings.Builder
	if err := WriteLiveSummary(&b, ss); err != nil || !strings.Contains(b.String(), "-0.0200*") {
		t.Errorf("WriteLiveSummary: %v\n%s", err, b.String())
	}
}
