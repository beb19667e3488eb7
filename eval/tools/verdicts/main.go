// Command verdicts counts issue 9's verdicts from the per-seed utilities of
// `sneakgate eval` runs: per application and workload, at loads 1.5-5 the
// points where the candidate policy (-ref) is above every baseline beyond the
// paired 95% interval, and at loads <= 1 the points where no baseline is above
// it beyond the interval (eval.Summarize, paired by seed). A point where a
// baseline is missing or has fewer than two seeds paired with the candidate's
// counts at neither (a note says which): it was not compared. With -show it also
// prints, per point, each named policy minus the candidate with its interval
// (a * when beyond it).
//
// Where the runs have the per-sample oracle (-oracle), it also prints, per
// point at loads 1.5-5, the share of the oracle's headroom over -headroom-base
// (the mixing oblivious) that the candidate captures, issue 9's bar (60% of
// it), and the no-pressure best: the highest mean utility of any policy but the
// oracle at the workload's lowest load (at most 1), what the policies reach
// with engine time to spare. Where the bar lies above it, no policy of the run
// reaches the bar even without pressure (the oracle knows, per sample, which
// variant is right; nothing without the label does), and the share of the
// attainable headroom (up to the no-pressure best) is printed besides.
//
// With -plots DIR it draws eval's figures (eval.WritePlots) again from the
// first file's summaries.
//
// A file is an eval results.json ("results") or a summary committed under
// eval/plots with every seed's utility ("per_seed_utility"); a summary
// without them (eval/plots/rs-*.json) is counted from its summaries, whose
// reference must be -ref, and alone. FILE:SUFFIX
// renames the file's policies to POLICY+SUFFIX, so that two runs of the same
// policies (two binaries, two models) compare paired by seed:
//
//	go run ./eval/tools/verdicts -ref sneakpeek-peek eval/plots/s10-fashion.json
//	go run ./eval/tools/verdicts -show sneakpeek-nogap eval/plots/s10-satellite.json eval/plots/s10-satellite-nogap.json:-nogap
package main

import (
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/sneakgate/sneakgate/eval"
)

var (
	ref       = flag.String("ref", "sneakpeek", "the candidate policy")
	baselines = flag.String("baselines", "oblivious,placebo,cascade,edf,fixed-batch", "the baselines of issue 9's bar")
	show      = flag.String("show", "", "comma-separated policies whose difference from -ref to print per point")
	oracle    = flag.String("oracle", "sneakpeek-oracle", "the per-sample oracle whose headroom over -headroom-base is measured (when the runs have it)")
	hbase     = flag.String("headroom-base", "oblivious", "the policy the headroom is measured from")
	plots     = flag.String("plots", "", "also draw eval's figures (utility, accuracy and deadline met against load with the 95% intervals; every class's recall) from the first file's summaries into this directory")
)

// headroomBar is issue 9's bar: the share of the oracle's headroom the
// candidate captures at loads 1.5-5.
const headroomBar = 0.6

// attainableMin is the least headroom up to the no-pressure best whose share
// is printed: below it the baseline is at the no-pressure best already.
const attainableMin = 0.001

func main() {
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: verdicts [-ref P] [-baselines P,...] [-show P,...] FILE[:SUFFIX] ...")
		os.Exit(2)
	}
	var rs []eval.Result
	var sums []eval.Summary
	for i, arg := range flag.Args() {
		path, suffix, _ := strings.Cut(arg, ":")
		got, ss, err := read(path)
		if err != nil {
			fail(err)
		}
		if i == 0 && *plots != "" {
			if err := drawPlots(*plots, path, ss); err != nil {
				fail(err)
			}
		}
		for i := range got {
			got[i].Policy += suffix
		}
		rs = append(rs, got...)
		if len(got) == 0 {
			sums = append(sums, ss...)
		}
	}
	if len(rs) == 0 {
		// Summaries alone: their differences are from their own reference.
		if flag.NArg() > 1 || len(sums) == 0 || (sums[0].Reference != "" && sums[0].Reference != *ref) {
			fail(fmt.Errorf("a file without per-seed results is counted alone, with -ref its summaries' reference"))
		}
	} else {
		sums = eval.Summarize(rs, *ref)
	}
	report(os.Stdout, sums, strings.Split(*baselines, ","), *show)
	headroom(sums)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "verdicts:", err)
	os.Exit(1)
}

// read returns a file's per-seed results (none when it has only summaries) and
// its summaries.
func read(path string) ([]eval.Result, []eval.Summary, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var f struct {
		Results   []eval.Result  `json:"results"`
		PerSeed   []eval.Result  `json:"per_seed_utility"`
		Summaries []eval.Summary `json:"summaries"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	rs := append(f.Results, f.PerSeed...)
	if len(rs) == 0 && len(f.Summaries) == 0 {
		return nil, nil, fmt.Errorf("%s: neither per-seed results nor summaries", path)
	}
	return rs, f.Summaries, nil
}

// drawPlots draws eval's figures from ss, the summaries of the file at path.
func drawPlots(dir, path string, ss []eval.Summary) error {
	if len(ss) == 0 {
		return fmt.Errorf("%s: no summaries to draw", path)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files, err := eval.WritePlots(dir, ss)
	for _, file := range files {
		fmt.Fprintln(os.Stderr, "wrote", file)
	}
	return err
}

// beyond reports whether s's difference from the reference is beyond its
// interval, and its sign.
func beyond(s eval.Summary) (bool, float64) {
	return s.Paired() > 1 && s.Reference != "" && math.Abs(s.Diff) > s.DiffCI, math.Copysign(1, s.Diff)
}

// report prints the verdicts of ss (the package comment) and, with show, the
// differences per point.
func report(w io.Writer, ss []eval.Summary, base []string, show string) {
	type key struct{ app, wl string }
	type count struct{ hi, hiN, lo, loN int }
	var order []key
	counts := map[key]*count{}
	notes := map[key][]string{}
	byPoint := map[string]map[string]eval.Summary{}
	var points []string
	for _, s := range ss {
		pk := fmt.Sprintf("%s %s %gms load %g", s.App, s.Workload, s.DeadlineMS, s.Load)
		if byPoint[pk] == nil {
			byPoint[pk] = map[string]eval.Summary{}
			points = append(points, pk)
		}
		byPoint[pk][s.Policy] = s
		k := key{s.App, s.Workload}
		if counts[k] == nil {
			counts[k] = &count{}
			order = append(order, k)
		}
	}
	for _, pk := range points {
		cell := byPoint[pk]
		c0, ok := cell[*ref]
		if !ok {
			continue
		}
		k := key{c0.App, c0.Workload}
		c := counts[k]
		aboveAll, noneAbove := true, true
		for _, b := range base {
			s, ok := cell[b]
			if !ok || s.Paired() < 2 || s.Reference == "" {
				// Not run (or not written) at this point, or without two seeds
				// paired with the candidate's: not compared, so neither beaten
				// nor shown not to be above.
				aboveAll, noneAbove = false, false
				why := "missing"
				if ok {
					why = fmt.Sprintf("%d paired seeds", s.Paired())
				}
				notes[k] = append(notes[k], fmt.Sprintf("%s not compared at %g (%s)", b, c0.Load, why))
				continue
			}
			out, sign := beyond(s)
			if !(out && sign < 0) {
				aboveAll = false
				if c0.Load >= 1.5 {
					notes[k] = append(notes[k], fmt.Sprintf("%s %s at %g (%+.4f)", b, map[bool]string{true: "above", false: "level"}[out], c0.Load, s.Diff))
				}
			}
			if out && sign > 0 {
				noneAbove = false
				if c0.Load <= 1 {
					notes[k] = append(notes[k], fmt.Sprintf("%s above at %g (%+.4f)", b, c0.Load, s.Diff))
				}
			}
		}
		switch {
		case c0.Load >= 1.5:
			c.hiN++
			if aboveAll {
				c.hi++
			}
		case c0.Load <= 1:
			c.loN++
			if noneAbove {
				c.lo++
			}
		}
	}
	fmt.Fprintf(w, "candidate %s against %s (beyond the paired 95%% interval)\n\n", *ref, strings.Join(base, ", "))
	fmt.Fprintln(w, "| app | workload | loads 1.5-5 | loads <= 1 | baselines above or level |")
	fmt.Fprintln(w, "|---|---|---:|---:|---|")
	for _, k := range order {
		c := counts[k]
		fmt.Fprintf(w, "| %s | %s | %d of %d | %d of %d | %s |\n", k.app, k.wl, c.hi, c.hiN, c.lo, c.loN, strings.Join(notes[k], "; "))
	}
	if show == "" {
		return
	}
	pols := strings.Split(show, ",")
	fmt.Fprintf(w, "\n%-44s %s\n", "point", strings.Join(slices.Clone(pols), "  "))
	for _, pk := range points {
		cell := byPoint[pk]
		line := fmt.Sprintf("%-44s", pk)
		for _, p := range pols {
			s, ok := cell[p]
			if !ok {
				line += "  -"
				continue
			}
			mark := ""
			if out, _ := beyond(s); out {
				mark = "*"
			}
			line += fmt.Sprintf("  %+.4f ± %.4f%s", s.Diff, s.DiffCI, mark)
		}
		fmt.Fprintln(w, line)
	}
}

// headroom prints, per point at loads 1.5-5 of the runs that have the oracle,
// the candidate's share of the oracle's headroom over -headroom-base, the
// bar, and the no-pressure best (the comment on the package).
func headroom(ss []eval.Summary) {
	type wkey struct {
		app, wl string
		dl      float64
	}
	type cell struct {
		load float64
		util map[string]float64
	}
	var order []wkey
	cells := map[wkey][]*cell{}
	for _, s := range ss {
		k := wkey{s.App, s.Workload, s.DeadlineMS}
		if cells[k] == nil {
			order = append(order, k)
		}
		i := slices.IndexFunc(cells[k], func(c *cell) bool { return c.load == s.Load })
		if i < 0 {
			cells[k] = append(cells[k], &cell{load: s.Load, util: map[string]float64{}})
			i = len(cells[k]) - 1
		}
		cells[k][i].util[s.Policy] = s.Utility
	}
	header := false
	for _, k := range order {
		cs := cells[k]
		slices.SortFunc(cs, func(a, b *cell) int { return cmp.Compare(a.load, b.load) })
		if cs[0].load > 1 {
			continue
		}
		best, bestPol := math.Inf(-1), ""
		for p, u := range cs[0].util {
			if p != *oracle && (u > best || (u == best && p < bestPol)) {
				best, bestPol = u, p
			}
		}
		for _, c := range cs {
			o, okO := c.util[*oracle]
			b, okB := c.util[*hbase]
			r, okR := c.util[*ref]
			if c.load < 1.5 || !okO || !okB || !okR {
				continue
			}
			if !header {
				fmt.Printf("\nheadroom: the oracle (%s) over %s at loads 1.5-5; no-pressure best: the best policy but the oracle at the lowest load\n\n", *oracle, *hbase)
				fmt.Printf("| point | headroom | %s captures | bar (%.0f%%) | no-pressure best | bar above it | of the attainable |\n", *ref, 100*headroomBar)
				fmt.Println("|---|---:|---:|---:|---|---|---:|")
				header = true
			}
			h := o - b
			bar := b + headroomBar*h
			share := "-"
			if h > 0 {
				share = fmt.Sprintf("%.0f%%", 100*(r-b)/h)
			}
			att := fmt.Sprintf("(%s at it; %+.4f)", *hbase, r-b)
			if best-b >= attainableMin {
				att = fmt.Sprintf("%.0f%%", 100*(r-b)/(best-b))
			}
			fmt.Printf("| %s %s %gms load %g | %+.4f | %s | %.4f | %.4f (%s at %g) | %s | %s |\n",
				k.app, k.wl, k.dl, c.load, h, share, bar, best, bestPol, cs[0].load, map[bool]string{true: "yes", false: "no"}[bar > best], att)
		}
	}
}
