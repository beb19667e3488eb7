// Command mixfixed says, offline, where the label-shift correction's live class
// mix settles on each workload of an application, by what it is fed. For each
// variant it prints its class recalls on the validation split (the manifest's
// confusion) and on the replayed test samples; for each workload, the fixed
// point of the correction's EM (sneakpeek.PriorShift, started from
// App.ShiftStart as the gateway's) over the test samples weighted to the
// workload's mix (a drift's by its start), fed
//
//   - est: the estimates alone (PriorShift.Correct, the gateway's default);
//   - est+V: the estimates and variant V's answer on every sample, taken as
//     independent given the class (V's validation confusion);
//   - V: V's answer alone (PriorShift.ObserveAnswer, eval -shift-evidence, as
//     if V answered every request),
//
// next to the workload's true mix (docs/evaluation-log.md, "The label-shift
// correction learns from the models' answers").
//
//	go run ./eval/tools/mixfixed                 # vad
//	go run ./eval/tools/mixfixed -apps vad,satellite,fashion
package main

import (
	"fmt"
	"strings"

	"github.com/sneakgate/sneakgate/eval"
	"github.com/sneakgate/sneakgate/eval/tools/internal/toolapps"
)

func main() { toolapps.Main("mixfixed", "vad", run) }

func run(loaded []*eval.App) error {
	for _, a := range loaded {
		name := a.Sched.Name
		if a.Pred == nil {
			return fmt.Errorf("%s: no variant predictions on the samples", name)
		}
		sa := a.Sched
		byClass := a.ByClass()
		fmt.Printf("%s: class recalls, validation split -> test samples\n", name)
		for m, v := range sa.Variants {
			fmt.Printf("  %-16s", v.ID.Variant)
			for y, idx := range byClass {
				hit := 0
				for _, i := range idx {
					if int(a.Pred[i][m]) == y {
						hit++
					}
				}
				fmt.Printf("  %s %.3f -> %.3f", a.ClassNames[y], v.Recall[y], float64(hit)/float64(max(1, len(idx))))
			}
			fmt.Println()
		}
		start := a.ShiftStart
		if start == nil {
			start = sa.Prior
		}
		ref := sa.DefaultVariant
		rn := sa.Variants[ref].ID.Variant
		fmt.Printf("%s: the correction's live mix at its EM fixed point (from %s), by what it is fed\n", name, fmtMix(start))
		fmt.Printf("  %-20s %-22s %-22s %-22s %-22s\n", "workload", "true mix", "est", "est+"+rn, rn)
		for _, w := range a.Workloads {
			mix := w.Mix
			if len(mix) == 0 {
				mix = sa.Prior
			}
			fmt.Printf("  %-20s %-22s %-22s %-22s %-22s\n", w.Name, fmtMix(mix),
				fmtMix(fixedPoint(a, byClass, mix, start, -1, true)),
				fmtMix(fixedPoint(a, byClass, mix, start, ref, true)),
				fmtMix(fixedPoint(a, byClass, mix, start, ref, false)))
		}
	}
	return nil
}

// fixedPoint iterates the correction's EM in batch over the test samples,
// class y's weighted by mix[y]: each sample's posterior is start-corrected
// p * pi/start (useEst) times, with m >= 0, variant m's validation confusion
// column of its answer; pi is their weighted mean.
func fixedPoint(a *eval.App, byClass [][]int, mix, start []float64, m int, useEst bool) []float64 {
	k := a.Sched.K
	pi := append([]float64(nil), start...)
	q := make([]float64, k)
	for range 2000 {
		next := make([]float64, k)
		for y, idx := range byClass {
			if len(idx) == 0 || y >= len(mix) {
				continue
			}
			wt := mix[y] / float64(len(idx))
			for _, i := range idx {
				s := 0.0
				for c := range k {
					q[c] = pi[c]
					if useEst {
						q[c] *= a.Est[i][c] / start[c]
					}
					if m >= 0 {
						q[c] *= a.Sched.Variants[m].Cond[c][a.Pred[i][m]]
					}
					s += q[c]
				}
				if !(s > 0) {
					continue
				}
				for c := range k {
					next[c] += wt * q[c] / s
				}
			}
		}
		pi = next
	}
	return pi
}

func fmtMix(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(parts, ",")
}
