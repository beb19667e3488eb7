package appbuild

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// maxRecallColumns is the most classes printed one recall column each; beyond
// it the table gives the range and the weakest class.
const maxRecallColumns = 12

func short(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// printVariants writes the variant table: name, output kind, accuracy,
// per-class recall, latency at batch 1 and per sample at batch 32.
func printVariants(w io.Writer, labels []string, vs []variantResult, latency bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hdr := []string{"variant", "output", "accuracy"}
	if len(labels) <= maxRecallColumns {
		for _, l := range labels {
			hdr = append(hdr, "R:"+short(l, 10))
		}
	} else {
		hdr = append(hdr, "recall min-max", "weakest")
	}
	if latency {
		hdr = append(hdr, "us@b1", "us/sample@b32")
	}
	fmt.Fprintln(tw, strings.Join(hdr, "\t"))
	for _, v := range vs {
		row := []string{v.Name, v.Kind, fmt.Sprintf("%.4f", v.Accuracy)}
		if len(labels) <= maxRecallColumns {
			for _, r := range v.Recall {
				row = append(row, fmt.Sprintf("%.3f", r))
			}
		} else {
			lo, hi, weak := math.Inf(1), math.Inf(-1), 0
			for c, r := range v.Recall {
				if r < lo {
					lo, weak = r, c
				}
				hi = max(hi, r)
			}
			row = append(row, fmt.Sprintf("%.3f-%.3f", lo, hi), labels[weak])
		}
		if latency {
			row = append(row, fmt.Sprintf("%.1f", v.USBatch1), fmt.Sprintf("%.2f", v.USPerSample32))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

func printEstimators(w io.Writer, es []estimatorResult, cost bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hdr := "estimator\tkind\tfeatures\taccuracy\tECE(15 bins)"
	if cost {
		hdr += "\tus/request"
	}
	fmt.Fprintln(tw, hdr)
	for _, e := range es {
		kind := e.Kind
		if e.K > 0 {
			kind += fmt.Sprintf(" k=%d", e.K)
		}
		row := fmt.Sprintf("%s\t%s\t%s\t%.4f\t%.4f", e.Name, kind, e.Features, e.Accuracy, e.ECE)
		if cost {
			row += fmt.Sprintf("\t%.2f", e.CostUS)
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()
}

func majority(prior []float64) float64 {
	m := 0.0
	for _, p := range prior {
		m = max(m, p)
	}
	return m
}

func mixString(labels []string, mix []float64) string {
	parts := make([]string, len(mix))
	for i, p := range mix {
		parts[i] = fmt.Sprintf("%s %.3f", labels[i], p)
	}
	return strings.Join(parts, ", ")
}

func printBuild(w io.Writer, r *Result) {
	a := r.App
	vs := "variants"
	if len(a.Variants) == 1 {
		vs = "variant"
	}
	fmt.Fprintf(w, "app %s: %d classes, %d values per request, %d %s; measured on %d validation rows\n\n",
		a.Name, a.K(), a.InputSize, len(a.Variants), vs, a.Validation.Count)
	printVariants(w, a.Labels, r.Variants, true)
	fmt.Fprintln(w)
	for _, v := range r.Variants {
		fmt.Fprintf(w, "  %s: output %s: %s\n", v.Name, v.Kind, v.KindWhy)
	}
	fmt.Fprintf(w, "\nSneakPeek estimators (trained on the training split; validation accuracy, ECE; majority-class accuracy %.4f):\n\n",
		majority(a.Prior))
	printEstimators(w, r.Estimators, true)
	fmt.Fprintln(w, "\ndecided:")
	if len(r.Estimators) > 0 {
		fmt.Fprintf(w, "  default estimator: %s (%s)\n", r.Estimators[0].Name, r.DefaultWhy)
	}
	for _, e := range r.Estimators {
		if e.Kind == "knn" {
			fmt.Fprintf(w, "  kNN %s: %d reference rows; prior_strength %g (lowest NLL on %d other training rows)\n",
				e.Name, e.RefRows, e.PriorStrength, e.CalRows)
		}
	}
	if d := r.Difficulty; d != nil {
		fmt.Fprintf(w, "  per-sample difficulty model (reads %s; trained on %d training rows): %s\n", r.Estimators[0].Name, d.Rows, d.Why)
		if d.Form != "" {
			fmt.Fprintf(w, "    %s form: %s\n", d.Form, d.FormWhy)
			if d.GapWhy != "" {
				fmt.Fprintf(w, "    %s\n", d.GapWhy)
			}
		}
		for v, name := range r.Variants {
			if v < len(d.AUC) {
				fmt.Fprintf(w, "    %s: AUC of its correctness %.3f, class-based %.3f\n", name.Name, d.AUC[v], d.ClassAUC[v])
			}
		}
	}
	fmt.Fprintf(w, "  prior (validation class mix): %s\n", mixString(a.Labels, a.Prior))
	fmt.Fprintf(w, "  samples.sgs: %s\n", r.SamplesFrom)
	fmt.Fprintf(w, "wrote %s in %.1fs (sneakgate app check %s re-checks it)\n", r.Dir, r.Took.Seconds(), r.Dir)
}

// printCheck writes Check's report; full: the accuracies were compared with
// the manifest's; cut: -rows ran only the first rows.
func printCheck(w io.Writer, rep *CheckReport, full, cut bool) {
	a := rep.App
	fmt.Fprintf(w, "app %s (%s): manifest valid, %d estimators load, sample files fit\n", a.Name, a.Dir, len(a.Estimators))
	for _, s := range rep.Warnings {
		fmt.Fprintf(w, "warning: %s\n", s)
	}
	what := fmt.Sprintf("all %d %s rows", rep.Rows, rep.RowsFrom)
	if cut {
		what = fmt.Sprintf("the first %d %s rows", rep.Rows, rep.RowsFrom)
	}
	latency := len(rep.Variants) > 0 && rep.Variants[0].USBatch1 > 0
	if rep.RowsFrom == "random" {
		// No labelled rows: the outputs are checked, nothing is measured
		// against labels.
		fmt.Fprintf(w, "ran every variant through ONNX Runtime on %s in the input range (no validation or samples rows: no accuracies):\n\n", what)
		for _, v := range rep.Variants {
			fmt.Fprintf(w, "  %s: output %s: valid class distributions", v.Name, v.Kind)
			if latency {
				fmt.Fprintf(w, "; %.1f us at batch 1, %.2f us/sample at batch 32", v.USBatch1, v.USPerSample32)
			}
			fmt.Fprintln(w)
		}
		return
	}
	fmt.Fprintf(w, "ran every variant through ONNX Runtime on %s:\n\n", what)
	printVariants(w, a.Labels, rep.Variants, latency)
	fmt.Fprintln(w)
	printEstimators(w, rep.Estimators, true)
	if full {
		fmt.Fprintf(w, "\naccuracies agree with the manifest (variants within %.3f, estimators within %.3f)\n", checkVariantTol, checkEstimatorTol)
	}
}
