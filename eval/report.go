package eval

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/sneakgate/sneakgate/scheduler"
)

// Report is the JSON file `sneakgate eval` writes.
type Report struct {
	Command     string             `json:"command"`
	Correctness map[string]string  `json:"correctness"`
	Profiles    map[string]string  `json:"profiles"`
	Estimators  map[string]string  `json:"estimators"`
	Capacity    map[string]float64 `json:"capacity_per_s"`
	Diagnoses   []Diagnosis        `json:"diagnoses"`
	// Ceilings are the fluid bounds at each load (Ceilings).
	Ceilings []Ceiling `json:"ceilings,omitempty"`
	Results  []Result  `json:"results"`
	Gains    []Gain    `json:"gains"`
	// GuardedGains compares the guarded policies with oblivious (Gain.Policy
	// names which).
	GuardedGains []Gain `json:"guarded_gains,omitempty"`
	// ShiftGains compares the label-shift corrected policies with oblivious.
	ShiftGains []Gain `json:"shift_gains,omitempty"`
	// Seeds, GatewayCostUS, VerdictCostUS, GatewayKnown and IngressMS are the
	// run's -seeds, -gateway-us, -verdict-us, -gateway-known and -ingress-ms;
	// Summaries the means over seeds (Summarize).
	Seeds         int     `json:"seeds"`
	GatewayCostUS float64 `json:"gateway_cost_us"`
	VerdictCostUS float64 `json:"verdict_cost_us"`
	GatewayKnown  bool    `json:"gateway_known"`
	// DecisionCostUS is -decision-us (GatewayModel.DecisionCost) per policy, and per policy@load where given.
	DecisionCostUS map[string]float64 `json:"decision_cost_us,omitempty"`
	// DecisionWall is -decision-wall (GatewayModel.DecisionWall).
	DecisionWall bool `json:"decision_wall,omitempty"`
	// PlanAhead is -plan-ahead (scheduler.Options.PlanAhead): the files
	// written before it was recorded (2026-12-03) lack it, and those before
	// the option (b901455) planned at every decision.
	PlanAhead int       `json:"plan_ahead"`
	IngressMS float64   `json:"ingress_ms"`
	Summaries []Summary `json:"summaries"`
	// Cascades are the cascade policy's validation-split curves per app.
	Cascades map[string]*scheduler.CascadeConfig `json:"cascades,omitempty"`
}

// Gain compares two policies' mean utility at one point of the sweep.
type Gain struct {
	App        string  `json:"app"`
	Workload   string  `json:"workload"`
	DeadlineMS float64 `json:"deadline_ms"`
	Load       float64 `json:"load"`
	Policy     string  `json:"policy"`
	Baseline   string  `json:"baseline"`
	Utility    float64 `json:"utility"`
	Base       float64 `json:"baseline_utility"`
	// Relative is Utility/Base - 1 (meaningful when Base > 0).
	Relative float64 `json:"relative"`
	// RelativeModel is the same without the policy's degraded answers (counted as
	// 0): the part of the gain that model answers alone bring.
	RelativeModel float64 `json:"relative_model_answers"`
}

type pointKey struct {
	app, wl string
	dl, ld  float64
	seed    uint64
}

// utilityOf formats policy p's utility at one point, "-" when it did not run.
func utilityOf(at map[string]Result, p string) string {
	if r, ok := at[p]; ok {
		return fmt.Sprintf("%.3f", r.Utility)
	}
	return "-"
}

// byPoint groups results by sweep point, then policy; order lists the points as
// they first appear.
func byPoint(rs []Result) (map[pointKey]map[string]Result, []pointKey) {
	by := map[pointKey]map[string]Result{}
	var order []pointKey
	for _, r := range rs {
		k := pointKey{r.App, r.Workload, r.DeadlineMS, r.Load, r.Seed}
		if by[k] == nil {
			by[k] = map[string]Result{}
			order = append(order, k)
		}
		by[k][r.Policy] = r
	}
	return by, order
}

// Gains returns, for every point where both ran, policy's utility against base's.
func Gains(rs []Result, policy, base string) []Gain {
	by, order := byPoint(rs)
	var out []Gain
	for _, k := range order {
		p, ok1 := by[k][policy]
		b, ok2 := by[k][base]
		if !ok1 || !ok2 || p.Err != "" || b.Err != "" {
			continue
		}
		g := Gain{App: k.app, Workload: k.wl, DeadlineMS: k.dl, Load: k.ld, Policy: policy, Baseline: base,
			Utility: p.Utility, Base: b.Utility}
		if b.Utility > 0 {
			g.Relative = p.Utility/b.Utility - 1
			g.RelativeModel = (p.Utility-p.UtilityDegraded)/b.Utility - 1
		}
		out = append(out, g)
	}
	return out
}

// WriteTable prints the results as an aligned table.
func WriteTable(w io.Writer, rs []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "app\tworkload\tdl_ms\tload\tpolicy\tn\tutility\tu_degr\taccuracy\tmet\tok\tlate\tdegr\texp\trej\tswaps\tbatch\tdec_us/req\t")
	for _, r := range rs {
		if r.Err != "" {
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.2f\t%s\terror: %s\t\n", r.App, r.Workload, r.DeadlineMS, r.Load, r.Policy, r.Err)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%g\t%.2f\t%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.2f\t\n",
			r.App, r.Workload, r.DeadlineMS, r.Load, r.Policy, r.Requests, r.Utility, r.UtilityDegraded, r.Accuracy, r.Met,
			r.OK, r.Late, r.Degraded, r.Expired, r.Rejected, r.Swaps, r.MeanBatch, r.DecisionUSPerReq)
	}
	return tw.Flush()
}

// WriteGains prints a gain table.
func WriteGains(w io.Writer, gs []Gain) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "app\tworkload\tdl_ms\tload\tutility\tbaseline\tgain\tgain w/o degraded\t")
	for _, g := range gs {
		fmt.Fprintf(tw, "%s\t%s\t%g\t%.2f\t%.3f\t%.3f\t%+.1f%%\t%+.1f%%\t\n", g.App, g.Workload, g.DeadlineMS, g.Load,
			g.Utility, g.Base, 100*g.Relative, 100*g.RelativeModel)
	}
	return tw.Flush()
}

// WriteJSON writes the report.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
