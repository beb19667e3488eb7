package main

import (
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/eval"
)

// A low-load point counts as "no baseline above" only where every baseline was
// compared with the candidate over at least two paired seeds: with one seed no
// difference is ever beyond its interval, and a baseline that is missing
// (not run, or failed on every seed) was not compared at all.
func TestLowLoadNeedsEveryBaselineCompared(t *testing.T) {
	sum := func(pol string, load float64, pairs int, diff, ci float64) eval.Summary {
		s := eval.Summary{App: "vad", Workload: "natural", DeadlineMS: 32, Load: load, Policy: pol, Seeds: pairs, Pairs: pairs}
		if pol != "sneakpeek" {
			s.Reference, s.Diff, s.DiffCI = "sneakpeek", diff, ci
		}
		return s
	}
	for _, c := range []struct {
		name string
		ss   []eval.Summary
		want string
	}{
		{"compared, none above", []eval.Summary{sum("sneakpeek", 1, 10, 0, 0), sum("edf", 1, 10, 0.001, 0.004), sum("fixed-batch", 1, 10, -0.01, 0.004)},
			"| vad | natural | 0 of 0 | 1 of 1 |"},
		{"compared, one above", []eval.Summary{sum("sneakpeek", 1, 10, 0, 0), sum("edf", 1, 10, 0.01, 0.004), sum("fixed-batch", 1, 10, -0.01, 0.004)},
			"| vad | natural | 0 of 0 | 0 of 1 |"},
		{"one seed", []eval.Summary{sum("sneakpeek", 1, 1, 0, 0), sum("edf", 1, 1, 0.01, 0), sum("fixed-batch", 1, 1, 0.02, 0)},
			"| vad | natural | 0 of 0 | 0 of 1 | edf not compared at 1 (1 paired seeds); fixed-batch not compared at 1 (1 paired seeds) |"},
		{"a baseline missing", []eval.Summary{sum("sneakpeek", 1, 10, 0, 0), sum("edf", 1, 10, -0.01, 0.004)},
			"| vad | natural | 0 of 0 | 0 of 1 | fixed-batch not compared at 1 (missing) |"},
		{"overloaded, one seed", []eval.Summary{sum("sneakpeek", 2, 1, 0, 0), sum("edf", 2, 1, -0.1, 0), sum("fixed-batch", 2, 1, -0.1, 0)},
			"| vad | natural | 0 of 1 | 0 of 0 |"},
	} {
		var b strings.Builder
		report(&b, c.ss, []string{"edf", "fixed-batch"}, "")
		if !strings.Contains(b.String(), c.want) {
			t.Errorf("%s: got\n%s\nwant a line starting %q", c.name, b.String(), c.want)
		}
	}
}
