package eval

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// ScenarioPolicies are the policies `eval -scenario` runs by default: the
// split of sneakpeek's gain needs sneakpeek, sneakpeek-nodegrade and a
// data-oblivious baseline.
var ScenarioPolicies = []string{"sneakpeek", "sneakpeek-nodegrade", "oblivious", "oblivious-switch", PolicyPlacebo, "edf", "fixed-batch"}

// AllApps is the application name of a scenario's rows over every request.
const AllApps = "all"

// GainSplit splits sneakpeek's gain over one baseline at one point (an
// application or AllApps, an estimator, a load) by source, paired by seed:
//
//	Total    = U(sneakpeek)           - U(baseline)
//	Choice   = U(sneakpeek-nodegrade) - U(baseline)   what the data-aware search buys with
//	                                                  model answers only: variant choice,
//	                                                  batching, order and what to let expire
//	Degraded = U(sneakpeek)           - U(sneakpeek-nodegrade)   what answering from the
//	                                                  estimate adds
//
// so Total = Choice + Degraded for every seed, and for the means. The *CI
// fields are 95% half-widths over seeds; the Rel fields divide by the
// baseline's mean utility when it is positive (0 otherwise), the form of the
// paper's "+62-90%".
type GainSplit struct {
	App       string  `json:"app"`
	Estimator string  `json:"estimator"`
	Load      float64 `json:"load"`
	// Cheap is the engine load on the cheapest variants (EngineLoad): above 1,
	// no choice of variants serves every request in time.
	Cheap    float64 `json:"load_cheapest"`
	Baseline string  `json:"baseline"`
	Seeds    int     `json:"seeds"`
	// Base, NoDegrade and SneakPeek are the three policies' mean utilities.
	Base      float64 `json:"baseline_utility"`
	NoDegrade float64 `json:"nodegrade_utility"`
	SneakPeek float64 `json:"sneakpeek_utility"`
	Total     float64 `json:"total"`
	TotalCI   float64 `json:"total_ci95"`
	Choice    float64 `json:"choice"`
	ChoiceCI  float64 `json:"choice_ci95"`
	Degraded  float64 `json:"degraded"`
	DegradeCI float64 `json:"degraded_ci95"`
	TotalRel  float64 `json:"total_relative"`
	ChoiceRel float64 `json:"choice_relative"`
	DegRel    float64 `json:"degraded_relative"`
}

// splitBaselines are the policies sneakpeek's gain is split against when they ran.
var splitBaselines = []string{"oblivious", "oblivious-switch", "edf", "fifo", "fixed-batch"}

// SplitGains computes the GainSplit of every point where sneakpeek,
// sneakpeek-nodegrade and a baseline ran with the same seeds (points in the
// order they first appear). cheap gives a point's load on the cheapest variants.
func SplitGains(rs []Result, cheap func(load float64) float64) []GainSplit {
	type key struct {
		app, wl string
		ld      float64
	}
	by := map[key]map[string]map[uint64]Result{}
	var order []key
	for _, r := range rs {
		if r.Err != "" {
			continue
		}
		k := key{r.App, r.Workload, r.Load}
		if by[k] == nil {
			by[k] = map[string]map[uint64]Result{}
			order = append(order, k)
		}
		if by[k][r.Policy] == nil {
			by[k][r.Policy] = map[uint64]Result{}
		}
		by[k][r.Policy][r.Seed] = r
	}
	var out []GainSplit
	for _, k := range order {
		sp, nd := by[k]["sneakpeek"], by[k]["sneakpeek-nodegrade"]
		if sp == nil || nd == nil {
			continue
		}
		for _, b := range splitBaselines {
			bs := by[k][b]
			if bs == nil {
				continue
			}
			var tot, cho, deg, us, ns, ss []float64
			for _, seed := range slices.Sorted(maps.Keys(sp)) { // seed order: the sums do not depend on map order
				s := sp[seed]
				n, ok1 := nd[seed]
				o, ok2 := bs[seed]
				if !ok1 || !ok2 {
					continue
				}
				tot, cho, deg = append(tot, s.Utility-o.Utility), append(cho, n.Utility-o.Utility), append(deg, s.Utility-n.Utility)
				us, ns, ss = append(us, o.Utility), append(ns, n.Utility), append(ss, s.Utility)
			}
			if len(tot) == 0 {
				continue
			}
			g := GainSplit{App: k.app, Estimator: k.wl, Load: k.ld, Baseline: b, Seeds: len(tot)}
			if cheap != nil {
				g.Cheap = cheap(k.ld)
			}
			g.Base, _ = MeanCI(us)
			g.NoDegrade, _ = MeanCI(ns)
			g.SneakPeek, _ = MeanCI(ss)
			g.Total, g.TotalCI = MeanCI(tot)
			g.Choice, g.ChoiceCI = MeanCI(cho)
			g.Degraded, g.DegradeCI = MeanCI(deg)
			if g.Base > 0 {
				g.TotalRel, g.ChoiceRel, g.DegRel = g.Total/g.Base, g.Choice/g.Base, g.Degraded/g.Base
			}
			out = append(out, g)
		}
	}
	return out
}

// WriteSplits prints the gain splits.
func WriteSplits(w io.Writer, gs []GainSplit) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "app\testimator\tload\tload_cheapest\tbaseline\tseeds\tU(base)\tU(nodegrade)\tU(sneakpeek)\ttotal\t±95%\tchoice\t±95%\tdegraded\t±95%\ttotal%\tchoice%\tdegraded%\t")
	pct := func(x, base float64) string {
		if base <= 0 {
			return "-"
		}
		return fmt.Sprintf("%+.1f%%", 100*x)
	}
	for _, g := range gs {
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f\t%s\t%d\t%.4f\t%.4f\t%.4f\t%+.4f\t%.4f\t%+.4f\t%.4f\t%+.4f\t%.4f\t%s\t%s\t%s\t\n",
			g.App, g.Estimator, g.Load, g.Cheap, g.Baseline, g.Seeds, g.Base, g.NoDegrade, g.SneakPeek,
			g.Total, g.TotalCI, g.Choice, g.ChoiceCI, g.Degraded, g.DegradeCI,
			pct(g.TotalRel, g.Base), pct(g.ChoiceRel, g.Base), pct(g.DegRel, g.Base))
	}
	return tw.Flush()
}

// WriteScenarioProfiles prints, without time pressure, what the scenario's
// profiles say: per application and variant the profiled accuracy A(m) and
// utility, the amortised time per request, the load cost; per estimator the
// share of requests it flags, its estimates, and each variant's data-aware
// accuracy A(m|p) for a flagged and an unflagged request.
func WriteScenarioProfiles(w io.Writer, c *CompiledScenario, maxBatch int) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "app\tvariant\tA(m)\tU(m)\tms/req\tbatch\tload_ms\tmem_MiB\t")
	for _, a := range c.Sched {
		for _, v := range a.Variants {
			fmt.Fprintf(tw, "%s\t%s\t%.4f\t%.4f\t%.2f\t%d\t%.0f\t%d\t\n", a.Name, v.ID.Variant, v.Accuracy, v.ProfiledUtility,
				float64(scheduler.Amortised(v, min(maxBatch, v.MaxBatch())))/1e6, v.MaxBatch(), float64(v.Load)/1e6, v.MemBytes>>20)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for ai, a := range c.Sched {
		ch, prof, best := c.ChoiceCeiling(ai, maxBatch)
		fmt.Fprintf(w, "%s, utility at ms/request without time pressure: every request on the cheapest variant %.4f at %.2f, on the profiled-best %.4f at %.2f, each on its true class's best %.4f at %.2f\n",
			a.Name, ch[0], ch[1], prof[0], prof[1], best[0], best[1])
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "estimator\tapp\tflagged\tp(flagged)\tp(unflagged)\test_acc\test_util\tvariant\tA(m|flagged)\tA(m|unflagged)\t")
	for e, est := range c.Estimators {
		for ai, a := range c.Sched {
			share, acc, util := c.EstimateQuality(e, ai)
			p0, p1 := c.Est[e][ai][0], c.Est[e][ai][1]
			for _, v := range a.Variants {
				fmt.Fprintf(tw, "%s\t%s\t%.4f\t%s\t%s\t%.4f\t%.4f\t%s\t%.4f\t%.4f\t\n", est.Name, a.Name, share, fmtDist(p1), fmtDist(p0),
					acc, util, v.ID.Variant, sneakpeek.ExpectedAccuracy(p1, v.Recall), sneakpeek.ExpectedAccuracy(p0, v.Recall))
			}
		}
	}
	return tw.Flush()
}

// ChoiceCeiling returns, for application a's mix without time pressure, the
// expected utility of serving every request on its cheapest variant, on the
// variant of highest profiled utility, and each request on the variant best
// for its true class, with the engine time per request (amortised at the best
// batch size up to maxBatch) each takes: what choosing variants by a perfect
// estimate can buy.
func (c *CompiledScenario) ChoiceCeiling(a, maxBatch int) (cheap, profiled, oracle [2]float64) {
	sa := c.Sched[a]
	cost := func(v *scheduler.Variant) float64 {
		return float64(scheduler.Amortised(v, min(maxBatch, v.MaxBatch()))) / 1e6
	}
	pv, cv := sa.Variants[0], sa.Variants[0]
	for _, v := range sa.Variants {
		if v.ProfiledUtility > pv.ProfiledUtility {
			pv = v
		}
		if cost(v) < cost(cv) {
			cv = v
		}
	}
	for y, p := range c.Apps[a].Mix {
		oh := make([]float64, sa.K)
		oh[y] = 1
		u := func(v *scheduler.Variant) float64 { return scheduler.ExpectedUtility(oh, v.Cond, sa.Utility) }
		top := cv
		for _, v := range sa.Variants {
			if u(v) > u(top) {
				top = v
			}
		}
		cheap[0] += p * u(cv)
		profiled[0] += p * u(pv)
		oracle[0] += p * u(top)
		oracle[1] += p * cost(top)
	}
	cheap[1], profiled[1] = cost(cv), cost(pv)
	return cheap, profiled, oracle
}

// EstimateQuality returns, for estimator e on application a's mix, the share
// of requests it flags, the accuracy of its argmax and the mean utility of
// answering every request with it (what degraded answers are worth on average).
func (c *CompiledScenario) EstimateQuality(e, a int) (flagged, acc, util float64) {
	w := c.Sched[a].Utility
	for y, p := range c.Apps[a].Mix {
		for f := range 2 {
			pf := c.Flag[e][a][y]
			if f == 0 {
				pf = 1 - pf
			}
			if f == 1 {
				flagged += p * pf
			}
			yhat := scheduler.Argmax(c.Est[e][a][f])
			if yhat == y {
				acc += p * pf
			}
			util += p * pf * w[y][yhat]
		}
	}
	return flagged, acc, util
}

func fmtDist(p []float64) string {
	s := make([]string, len(p))
	for i, x := range p {
		s[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(s, "/")
}

// ScenarioConfig is one `eval -scenario` run.
type ScenarioConfig struct {
	Path string
	// Scenario, if not nil, is Path already loaded (LoadScenario).
	Scenario *CompiledScenario
	Policies []string
	// Estimators names the scenario's estimators to run (empty: all).
	Estimators []string
	Loads      []float64
	Seeds      int
	// Base holds every point's common settings (Options, Requests,
	// MinDeadlines, Seed, Jitter, the gateway's admission and costs,
	// CountBudget and MemBudget).
	Base    ScenarioPoint
	Workers int
	Ref     string
	Out     string
	Command string
	// Progress, if not nil, is called after every point.
	Progress func()
}

// ScenarioReport is the JSON file `eval -scenario` writes (scenario.json).
type ScenarioReport struct {
	Command    string  `json:"command"`
	Scenario   string  `json:"scenario"`
	Provenance string  `json:"provenance"`
	Seeds      int     `json:"seeds"`
	Loads      []Loads `json:"loads"`
	// Results has, per point, one row per application and one for AllApps;
	// Workload is the estimator's name.
	Results   []Result    `json:"results"`
	Summaries []Summary   `json:"summaries"`
	Splits    []GainSplit `json:"splits"`
}

// Loads are the arrival rates and engine loads of one load of the sweep.
type Loads struct {
	Load     float64            `json:"load"`
	Cheapest float64            `json:"load_cheapest"`
	Rates    map[string]float64 `json:"rate_per_s"`
}

// RunScenario runs every (estimator, load, seed, policy) point of a scenario
// and returns the report (results per application and for every request).
func RunScenario(ctx context.Context, cfg ScenarioConfig) (*ScenarioReport, *CompiledScenario, error) {
	c := cfg.Scenario
	if c == nil {
		var err error
		if c, err = LoadScenario(cfg.Path); err != nil {
			return nil, nil, err
		}
	}
	for _, p := range cfg.Policies {
		if err := CheckPolicy(p); err != nil {
			return nil, nil, err
		}
	}
	o := withMaxBatch(cfg.Base.Options)
	rep := &ScenarioReport{Command: cfg.Command, Scenario: c.Name, Provenance: c.Provenance, Seeds: max(1, cfg.Seeds)}
	for _, l := range cfg.Loads {
		rates := c.ScenarioRates(l, o.MaxBatch)
		_, cheap := c.EngineLoad(rates, o.MaxBatch)
		ld := Loads{Load: l, Cheapest: cheap, Rates: map[string]float64{}}
		for i, a := range c.Sched {
			ld.Rates[a.Name] = rates[i]
		}
		rep.Loads = append(rep.Loads, ld)
	}
	var pts []ScenarioPoint
	for _, name := range cfg.Estimators {
		if !slices.ContainsFunc(c.Estimators, func(e ScenarioEstimator) bool { return e.Name == name }) {
			return nil, nil, fmt.Errorf("eval: scenario %s has no estimator %q", c.Name, name)
		}
	}
	for e, est := range c.Estimators {
		if len(cfg.Estimators) > 0 && !slices.Contains(cfg.Estimators, est.Name) {
			continue
		}
		for _, l := range cfg.Loads {
			for k := range rep.Seeds {
				for _, p := range cfg.Policies {
					pt := cfg.Base
					pt.S, pt.Estimator, pt.Load, pt.Policy = c, e, l, p
					pt.Seed = cfg.Base.Seed + uint64(k)
					pts = append(pts, pt)
				}
			}
		}
	}
	rows := make([][]Result, len(pts))
	parallel(ctx, len(pts), cfg.Workers, func(i int) {
		rows[i] = scenarioResults(pts[i])
		if cfg.Progress != nil {
			cfg.Progress()
		}
	})
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	for _, r := range rows {
		rep.Results = append(rep.Results, r...)
	}
	rep.Summaries = Summarize(rep.Results, cfg.Ref)
	cheap := func(l float64) float64 {
		for _, ld := range rep.Loads {
			if ld.Load == l {
				return ld.Cheapest
			}
		}
		return 0
	}
	rep.Splits = SplitGains(rep.Results, cheap)
	return rep, c, nil
}

// scenarioResults runs one point and returns its rows: AllApps first, then one
// per application.
func scenarioResults(pt ScenarioPoint) []Result {
	c := pt.S
	run, err := SimulateScenario(pt)
	mk := func(app string, dl time.Duration, rate float64, m Metrics) Result {
		r := Result{App: app, Workload: c.Estimators[pt.Estimator].Name, DeadlineMS: float64(dl) / 1e6, Load: pt.Load,
			RatePerS: rate, Policy: pt.Policy, Seed: pt.Seed, Metrics: m}
		if rate > 0 && dl > 0 {
			r.Deadlines = run.Seconds / dl.Seconds()
		}
		if err != nil {
			r.Err = err.Error()
		}
		return r
	}
	longest, total := time.Duration(0), 0.0
	for i, d := range c.Deadline {
		longest = max(longest, d)
		if i < len(run.Rates) {
			total += run.Rates[i]
		}
	}
	out := []Result{mk(AllApps, longest, total, run.All)}
	for i, a := range c.Sched {
		var m Metrics
		rate := 0.0
		if i < len(run.Apps) {
			m, rate = run.Apps[i], run.Rates[i]
		}
		out = append(out, mk(a.Name, c.Deadline[i], rate, m))
	}
	return out
}

// WriteScenario prints a scenario run's report and writes scenario.json and the
// plots into out.
func WriteScenario(stdout io.Writer, rep *ScenarioReport, c *CompiledScenario, maxBatch int, ref, out string) error {
	fmt.Fprintf(stdout, "Scenario %s: %s\n\n", c.Name, c.Provenance)
	fmt.Fprintln(stdout, "Profiles (profiled accuracy A(m) and utility U(m) under the prior; time per request at the best batch size), and each")
	fmt.Fprintln(stdout, "estimator's estimate for a flagged and an unflagged request, the accuracy and mean utility of answering every request")
	fmt.Fprintln(stdout, "with it (est_acc, est_util), and the data-aware accuracy A(m|p) of each variant for each estimate:")
	if err := WriteScenarioProfiles(stdout, c, maxBatch); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\nLoads: the engine's busy share with every request on its most accurate variant (load) and on its cheapest (load_cheapest), swaps not counted; rates per second:")
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "load\tload_cheapest\t"
	for _, a := range c.Sched {
		head += a.Name + "\t"
	}
	fmt.Fprintln(tw, head)
	for _, l := range rep.Loads {
		line := fmt.Sprintf("%.2f\t%.2f\t", l.Load, l.Cheapest)
		for _, a := range c.Sched {
			line += fmt.Sprintf("%.1f\t", l.Rates[a.Name])
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nMeans over %d seed(s) with 95%% intervals (workload = estimator; app %q = every request); \"vs ref\" is the paired difference from %s:\n", rep.Seeds, AllApps, ref)
	if err := WriteSummary(stdout, rep.Summaries); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\nPer true class: recall/mean utility (means over seeds):")
	if err := WritePerClass(stdout, rep.Summaries); err != nil {
		return err
	}
	if len(rep.Splits) > 0 {
		fmt.Fprintln(stdout, "\nsneakpeek's gain over each baseline, split by source (paired by seed): total = U(sneakpeek) - U(base);")
		fmt.Fprintln(stdout, "choice = U(sneakpeek-nodegrade) - U(base), the data-aware search with model answers only; degraded =")
		fmt.Fprintln(stdout, "U(sneakpeek) - U(sneakpeek-nodegrade), what answering from the estimate adds; total = choice + degraded.")
		fmt.Fprintln(stdout, "The % columns divide by U(base) when it is positive:")
		if err := WriteSplits(stdout, rep.Splits); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stdout, "\n(no gain split: it needs sneakpeek, sneakpeek-nodegrade and a baseline among -policies)")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	b, err := json.MarshalIndent(rep, "", " ")
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	jp := filepath.Join(out, "scenario.json")
	if err := os.WriteFile(jp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	files, err := WritePlots(out, rep.Summaries)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s and %d plots in %s\n", jp, len(files), out)
	for _, r := range rep.Results {
		if r.Err != "" {
			return fmt.Errorf("eval: scenario %s, %s, %s, load %.2f, %s: %s", c.Name, r.App, r.Workload, r.Load, r.Policy, r.Err)
		}
	}
	return nil
}

// scenarioDefaultLoads are the loads `eval -scenario` sweeps unless -loads is
// given: up to beyond the cheapest variants' capacity in the bundled scenario.
const scenarioDefaultLoads = "0.5,1,2,4,8,12"
