package eval

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

const paperScenario = "scenarios/paper-illustrative.yaml"

// TestPaperScenarioMatchesPublishedSpans checks that the bundled scenario's
// illustrative fall-detection profiles reproduce the two figures the paper
// publishes (profiled accuracy 0.982-0.989; A(m|p) 0.780-0.995 for a request
// flagged as a likely fall, p(fall) = 0.9 under the paper-flag estimator), and
// that it says it is illustrative.
func TestPaperScenarioMatchesPublishedSpans(t *testing.T) {
	c, err := LoadScenario(paperScenario)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.Provenance, "illustrative, not the authors' measured profiles") {
		t.Errorf("provenance %q does not say the profiles are illustrative", c.Provenance)
	}
	fall := c.Sched[0]
	if fall.Name != "fall" || len(fall.Variants) != 3 {
		t.Fatalf("first app %s with %d variants, want fall with 3", fall.Name, len(fall.Variants))
	}
	e := -1
	for i, est := range c.Estimators {
		if est.Name == "paper-flag" {
			e = i
		}
	}
	if e < 0 {
		t.Fatal("no paper-flag estimator")
	}
	p := c.Est[e][0][1]
	if math.Abs(p[1]-0.9) > 0.002 {
		t.Errorf("a paper-flag flag gives p(fall) %.4f, want 0.9", p[1])
	}
	lo, hi, plo, phi := 1.0, 0.0, 1.0, 0.0
	for _, v := range fall.Variants {
		lo, hi = min(lo, v.Accuracy), max(hi, v.Accuracy)
		a := sneakpeek.ExpectedAccuracy(p, v.Recall)
		plo, phi = min(plo, a), max(phi, a)
	}
	for _, x := range []struct {
		name      string
		got, want float64
	}{{"profiled min", lo, 0.982}, {"profiled max", hi, 0.989}, {"flagged min", plo, 0.780}, {"flagged max", phi, 0.995}} {
		if math.Abs(x.got-x.want) > 0.001 {
			t.Errorf("%s accuracy %.4f, want %.3f", x.name, x.got, x.want)
		}
	}
	if c.Engine.MaxResident != 1 || c.Window != 16 || c.Deadline[0].Seconds() != 1 || c.Deadline[1].Seconds() != 1 {
		t.Errorf("max_resident %d, window %d, deadlines %v: want the paper's 1, 16, 1 s", c.Engine.MaxResident, c.Window, c.Deadline)
	}
}

// smallScenario runs the bundled scenario briefly: loads 1 and 8 (beyond the
// cheapest variants' capacity), the paper-flag estimator, two seeds.
func smallScenario(t *testing.T) *ScenarioReport {
	t.Helper()
	cfg := ScenarioConfig{Path: paperScenario, Policies: []string{"sneakpeek", "sneakpeek-nodegrade", "oblivious", "edf"},
		Loads: []float64{1, 8}, Seeds: 2, Estimators: []string{"paper-flag"}, Workers: 2, Ref: "sneakpeek",
		Base: ScenarioPoint{Requests: 1500, Seed: 1, Options: scheduler.Options{Window: 16},
			GatewayModel: GatewayModel{Jitter: 0.05, MaxQueue: 10000, DegradeRefused: true, CountBudget: 1}}}
	rep, _, err := RunScenario(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Results {
		if r.Err != "" {
			t.Fatalf("%s %s load %v %s seed %d: %s", r.App, r.Workload, r.Load, r.Policy, r.Seed, r.Err)
		}
	}
	return rep
}

// TestScenarioGainSplit runs a small version of the paper scenario and checks
// the split's structure: total = choice + degraded, one split per application
// and AllApps, per load, per baseline; beyond the cheapest variants' capacity
// sneakpeek gains over oblivious and degraded answers carry most of it; every
// request of every application is counted. Not timings.
func TestScenarioGainSplit(t *testing.T) {
	rep := smallScenario(t)
	if len(rep.Loads) != 2 || rep.Loads[0].Cheapest >= 1 || rep.Loads[1].Cheapest <= 1 {
		t.Fatalf("loads %+v: want the first below the cheapest variants' capacity and the second beyond", rep.Loads)
	}
	for _, r := range rep.Results {
		if r.App != AllApps {
			continue
		}
		n := 0
		for _, c := range r.PerClass {
			n += c.N
		}
		if n != r.Requests || r.OK+r.Late+r.Degraded+r.Expired+r.Rejected != r.Requests {
			t.Errorf("%s load %v seed %d: %d requests, %d by class, outcomes %d/%d/%d/%d/%d", r.Policy, r.Load, r.Seed,
				r.Requests, n, r.OK, r.Late, r.Degraded, r.Expired, r.Rejected)
		}
	}
	// 3 rows (all, fall, wakeword) x 2 loads x 2 baselines (oblivious, edf).
	if len(rep.Splits) != 12 {
		t.Fatalf("%d splits, want 12", len(rep.Splits))
	}
	for _, g := range rep.Splits {
		if math.Abs(g.Total-(g.Choice+g.Degraded)) > 1e-12 || math.Abs(g.Total-(g.SneakPeek-g.Base)) > 1e-12 ||
			math.Abs(g.Degraded-(g.SneakPeek-g.NoDegrade)) > 1e-12 {
			t.Errorf("%+v: the split does not add up", g)
		}
		if g.Seeds != 2 {
			t.Errorf("%+v: %d seeds, want 2", g, g.Seeds)
		}
		if g.App == AllApps && g.Baseline == "oblivious" && g.Load == 8 {
			t.Logf("beyond the cheapest capacity: total %+.3f = choice %+.3f + degraded %+.3f", g.Total, g.Choice, g.Degraded)
			if g.Total <= 0.1 || g.Degraded < 0.8*g.Total {
				t.Errorf("beyond the cheapest variants' capacity: total %+.4f, degraded %+.4f: want a large gain carried by degraded answers",
					g.Total, g.Degraded)
			}
		}
	}
	// Deterministic: the same run again gives the same utilities.
	again := smallScenario(t)
	for i, r := range rep.Results {
		if again.Results[i].Utility != r.Utility {
			t.Fatalf("%s %s load %v seed %d: utility %v then %v", r.App, r.Policy, r.Load, r.Seed, r.Utility, again.Results[i].Utility)
		}
	}
}

// TestScenarioCommand runs `eval -scenario` through Main on a tiny point and
// checks that it writes its report, and that a bad scenario file is refused.
func TestScenarioCommand(t *testing.T) {
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	err := Main(context.Background(), []string{"-scenario", paperScenario, "-quiet", "-out", out, "-n", "300",
		"-loads", "8", "-workloads", "paper-flag", "-policies", "sneakpeek,sneakpeek-nodegrade,oblivious"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	for _, want := range []string{"illustrative, not the authors' measured profiles", "split by source", "paper-flag"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "scenario.json")); err != nil {
		t.Error(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	b, err := os.ReadFile(paperScenario)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte("[[0.98897, 0.01103], [0.24322, 0.75678]]"), []byte("[[0.98897, 0.01103]]"), 1)
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadScenario(bad); err == nil || !strings.Contains(err.Error(), "confusion has 1 rows") {
		t.Errorf("a confusion matrix with one row: %v", err)
	}
	if err := Main(context.Background(), []string{"-scenario", paperScenario, "-live"}, &stdout, &stderr); err == nil {
		t.Error("-scenario with -live was accepted")
	}
}
