// Command bayesanswers measures, offline, what an answer from the estimate is
// worth when it takes the corrected estimate's top class against the class of
// highest expected utility under the application's utility matrix (a Bayes
// decision). For every workload of each application it weighs each class's
// test samples by the workload's mix (a drift by its start) and corrects each
// estimate to that mix from where the gateway starts the label-shift correction
// (App.ShiftStart): q(c) ∝ p(c) mix(c) / start(c), the correction at its ideal
// value. It prints the mean utility of one such answer, uncorrected and
// corrected, both ways (docs/evaluation-log.md, "The label-shift correction
// starts from the validation split").
//
//	go run ./eval/tools/bayesanswers                 # vad, satellite, fashion
//	go run ./eval/tools/bayesanswers -apps vad
package main

import (
	"fmt"

	"github.com/sneakgate/sneakgate/eval"
	"github.com/sneakgate/sneakgate/eval/tools/internal/toolapps"
	"github.com/sneakgate/sneakgate/scheduler"
)

func main() { toolapps.Main("bayesanswers", "vad,satellite,fashion", run) }

func run(loaded []*eval.App) error {
	fmt.Println("app        workload              uncorrected: top  Bayes  (diff)  | corrected: top  Bayes  (diff)")
	for _, a := range loaded {
		name := a.Sched.Name
		w, k := a.Sched.Utility, a.Sched.K
		start := a.ShiftStart
		if start == nil {
			start = a.Sched.Prior
		}
		byClass := a.ByClass()
		for _, wl := range a.Workloads {
			mix := wl.Mix
			if len(mix) == 0 {
				mix = a.Sched.Prior
			}
			var top, bay, topC, bayC float64
			q := make([]float64, k)
			for y, idx := range byClass {
				if len(idx) == 0 {
					continue
				}
				var s [4]float64
				for _, i := range idx {
					p := a.Est[i]
					z := 0.0
					for c := range q {
						q[c] = p[c] * mix[c] / start[c]
						z += q[c]
					}
					for c := range q {
						q[c] /= z
					}
					s[0] += w[y][scheduler.Argmax(p)]
					s[1] += w[y][bayes(p, w)]
					s[2] += w[y][scheduler.Argmax(q)]
					s[3] += w[y][bayes(q, w)]
				}
				n := float64(len(idx))
				top, bay, topC, bayC = top+mix[y]*s[0]/n, bay+mix[y]*s[1]/n, topC+mix[y]*s[2]/n, bayC+mix[y]*s[3]/n
			}
			fmt.Printf("%-10s %-20s %19.4f %6.4f (%+.4f) | %15.4f %6.4f (%+.4f)\n", name, wl.Name, top, bay, bay-top, topC, bayC, bayC-topC)
		}
	}
	return nil
}

// bayes is the class c of highest expected utility sum_y q(y) w[y][c].
func bayes(q []float64, w [][]float64) int {
	best, bc := 0.0, -1
	for c := range w[0] {
		u := 0.0
		for y, qy := range q {
			u += qy * w[y][c]
		}
		if bc < 0 || u > best {
			best, bc = u, c
		}
	}
	return bc
}
