package eval

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

// Summary is one policy at one sweep point over every seed it ran with: means
// with 95% confidence intervals (Student's t over seeds), and its difference from
// and ratio to a reference policy (sneakpeek by default). The difference is paired
// by seed: both policies saw the same requests, so its interval is narrower than
// the two separate ones.
type Summary struct {
	App        string  `json:"app"`
	Workload   string  `json:"workload"`
	DeadlineMS float64 `json:"deadline_ms"`
	Load       float64 `json:"load"`
	Policy     string  `json:"policy"`
	Seeds      int     `json:"seeds"`
	Utility    float64 `json:"utility"`
	// UtilityCI is the half-width of the 95% interval of the mean utility (0 with
	// one seed).
	UtilityCI float64 `json:"utility_ci95"`
	Accuracy  float64 `json:"accuracy"`
	Met       float64 `json:"deadline_met"`
	// Degraded, NoAnswer: mean shares of requests answered degraded, and with no
	// answer (expired or rejected).
	Degraded float64 `json:"degraded"`
	NoAnswer float64 `json:"no_answer"`
	// Reference is the policy compared with; Diff = Utility - reference's (mean
	// over seeds of the paired difference) with DiffCI its interval's
	// half-width; Ratio = Utility / reference's utility (means; 0 when the
	// reference's is not positive).
	Reference string  `json:"reference,omitempty"`
	Diff      float64 `json:"diff,omitempty"`
	DiffCI    float64 `json:"diff_ci95,omitempty"`
	// Pairs is how many seeds the difference is paired over: fewer than Seeds
	// where the reference lacks a seed or failed on it. Files written before
	// it have none (Paired then reads Seeds).
	Pairs int     `json:"pairs,omitempty"`
	Ratio float64 `json:"ratio,omitempty"`
	// PerClass are the per-class means over seeds.
	PerClass []ClassMetrics `json:"per_class,omitempty"`
	Err      string         `json:"error,omitempty"`
}

// t975 is Student's t 0.975 quantile for df degrees of freedom: a table to
// 30, then the Cornish-Fisher expansion in 1/df about the normal quantile
// (within 0.0002 of the exact value from 31 on).
func t975(df int) float64 {
	table := []float64{0, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
		2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
		2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042}
	switch {
	case df <= 0:
		return 0
	case df < len(table):
		return table[df]
	}
	const z = 1.959964
	n := float64(df)
	z3, z5 := z*z*z, z*z*z*z*z
	return z + (z3+z)/(4*n) + (5*z5+16*z3+3*z)/(96*n*n) + (3*z5*z*z+19*z5+17*z3-15*z)/(384*n*n*n)
}

// MeanCI returns the mean of xs and the half-width of its 95% interval.
func MeanCI(xs []float64) (float64, float64) {
	n := len(xs)
	if n == 0 {
		return 0, 0
	}
	m := 0.0
	for _, x := range xs {
		m += x
	}
	m /= float64(n)
	if n < 2 {
		return m, 0
	}
	v := 0.0
	for _, x := range xs {
		v += (x - m) * (x - m)
	}
	sd := math.Sqrt(v / float64(n-1))
	return m, t975(n-1) * sd / math.Sqrt(float64(n))
}

type sumKey struct {
	app, wl string
	dl, ld  float64
}

// Summarize aggregates results over seeds, per point and policy, in the order
// they first appear, comparing each policy with ref (skipped when ref did not run
// at a point).
func Summarize(rs []Result, ref string) []Summary {
	type cell struct {
		bySeed map[uint64]Result
		seeds  []uint64
	}
	var keys []sumKey
	cells := map[sumKey]map[string]*cell{}
	pols := map[sumKey][]string{}
	for _, r := range rs {
		k := sumKey{r.App, r.Workload, r.DeadlineMS, r.Load}
		if cells[k] == nil {
			cells[k] = map[string]*cell{}
			keys = append(keys, k)
		}
		c := cells[k][r.Policy]
		if c == nil {
			c = &cell{bySeed: map[uint64]Result{}}
			cells[k][r.Policy] = c
			pols[k] = append(pols[k], r.Policy)
		}
		if _, dup := c.bySeed[r.Seed]; !dup {
			c.seeds = append(c.seeds, r.Seed)
		}
		c.bySeed[r.Seed] = r
	}
	var out []Summary
	for _, k := range keys {
		refCell := cells[k][ref]
		for _, p := range pols[k] {
			c := cells[k][p]
			s := Summary{App: k.app, Workload: k.wl, DeadlineMS: k.dl, Load: k.ld, Policy: p, Seeds: len(c.seeds)}
			var us, acc, met, deg, none, diffs []float64
			var refU, pairU []float64
			var classes [][]ClassMetrics
			for _, seed := range c.seeds {
				r := c.bySeed[seed]
				if r.Err != "" {
					s.Err = r.Err
					continue
				}
				n := float64(max(1, r.Requests))
				us = append(us, r.Utility)
				acc = append(acc, r.Accuracy)
				met = append(met, r.Met)
				deg = append(deg, float64(r.Degraded)/n)
				none = append(none, float64(r.Expired+r.Rejected)/n)
				classes = append(classes, r.PerClass)
				if refCell != nil && p != ref {
					if rr, ok := refCell.bySeed[seed]; ok && rr.Err == "" {
						diffs = append(diffs, r.Utility-rr.Utility)
						refU = append(refU, rr.Utility)
						pairU = append(pairU, r.Utility)
					}
				}
			}
			s.Utility, s.UtilityCI = MeanCI(us)
			s.Accuracy, _ = MeanCI(acc)
			s.Met, _ = MeanCI(met)
			s.Degraded, _ = MeanCI(deg)
			s.NoAnswer, _ = MeanCI(none)
			if len(diffs) > 0 {
				s.Reference = ref
				s.Diff, s.DiffCI = MeanCI(diffs)
				s.Pairs = len(diffs)
				if mr, _ := MeanCI(refU); mr > 0 {
					mu, _ := MeanCI(pairU)
					s.Ratio = mu / mr
				}
			}
			s.PerClass = meanClasses(classes)
			out = append(out, s)
		}
	}
	return out
}

// meanClasses averages per-class metrics over seeds (class by class).
func meanClasses(cs [][]ClassMetrics) []ClassMetrics {
	if len(cs) == 0 || len(cs[0]) == 0 {
		return nil
	}
	out := slices.Clone(cs[0])
	for y := range out {
		var n int
		var rec, u, none float64
		for _, c := range cs {
			if y < len(c) {
				n += c[y].N
				rec += c[y].Recall
				u += c[y].Utility
				none += c[y].NoAnswer
			}
		}
		f := float64(len(cs))
		out[y] = ClassMetrics{Class: out[y].Class, N: n, Recall: rec / f, Utility: u / f, NoAnswer: none / f}
	}
	return out
}

// WriteSummary prints the summaries: utility with its interval, the paired
// difference from the reference with its interval, the ratio, and the shares.
// A difference whose interval excludes 0 is marked with *.
func WriteSummary(w io.Writer, ss []Summary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "app\tworkload\tdl_ms\tload\tpolicy\tseeds\tutility\t±95%\tvs ref\t±95%\tratio\taccuracy\tmet\tdegraded\tno_answer\t")
	for _, s := range ss {
		if s.Err != "" {
			fmt.Fprintf(tw, "%s\t%s\t%g\t%.2f\t%s\terror: %s\t\n", s.App, s.Workload, s.DeadlineMS, s.Load, s.Policy, s.Err)
			continue
		}
		diff, dci, ratio := "", "", ""
		if s.Reference != "" {
			diff, dci = markedDiff(s.Diff, s.DiffCI, s.Paired()), fmt.Sprintf("%.4f", s.DiffCI)
			if s.Ratio > 0 {
				ratio = fmt.Sprintf("%.3f", s.Ratio)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%g\t%.2f\t%s\t%d\t%.4f\t%.4f\t%s\t%s\t%s\t%.3f\t%.3f\t%.3f\t%.3f\t\n", s.App, s.Workload,
			s.DeadlineMS, s.Load, s.Policy, s.Seeds, s.Utility, s.UtilityCI, diff, dci, ratio, s.Accuracy, s.Met,
			s.Degraded, s.NoAnswer)
	}
	return tw.Flush()
}

// Paired is how many seeds s's difference from its reference is paired over:
// Pairs, or Seeds in a file written before Pairs was.
func (s Summary) Paired() int {
	if s.Pairs > 0 {
		return s.Pairs
	}
	return s.Seeds
}

// markedDiff formats a paired difference d with the half-width ci of its 95%
// interval over n pairs, marked * when the interval excludes 0 (one pair has no
// interval: never marked).
func markedDiff(d, ci float64, n int) string {
	mark := ""
	if math.Abs(d) > ci && n > 1 {
		mark = "*"
	}
	return fmt.Sprintf("%+.4f%s", d, mark)
}

// WritePerClass prints, per point and policy, each class's recall and mean
// utility (means over seeds) as "recall/utility".
func WritePerClass(w io.Writer, ss []Summary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	var head []string
	for _, s := range ss {
		if len(s.PerClass) == 0 {
			continue
		}
		var names []string
		for _, c := range s.PerClass {
			names = append(names, c.Class)
		}
		if h := strings.Join(names, "\t"); h != strings.Join(head, "\t") {
			head = names
			fmt.Fprintf(tw, "app\tworkload\tdl_ms\tload\tpolicy\t%s\t\n", h)
		}
		var cells []string
		for _, c := range s.PerClass {
			if c.N == 0 {
				cells = append(cells, "-")
				continue
			}
			cells = append(cells, fmt.Sprintf("%.2f/%+.2f", c.Recall, c.Utility))
		}
		fmt.Fprintf(tw, "%s\t%s\t%g\t%.2f\t%s\t%s\t\n", s.App, s.Workload, s.DeadlineMS, s.Load, s.Policy, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}
