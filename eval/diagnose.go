package eval

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"text/tabwriter"
	"time"

	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/scheduler"
)

// Diagnosis explains, for one application and workload and without any time
// pressure, how much data awareness could buy by choosing variants alone, and how
// good the estimates it would rely on are. Everything is measured on the replayed
// samples (drawn with the workload's mix), not on the validation split the
// manifest's matrices come from.
type Diagnosis struct {
	App      string `json:"app"`
	Workload string `json:"workload"`
	// EstAccuracy is the estimate's argmax accuracy; EstECE its expected calibration
	// error of the top class (15 bins); EstConfidence the mean top probability.
	EstAccuracy   float64 `json:"est_accuracy"`
	EstECE        float64 `json:"est_ece"`
	EstConfidence float64 `json:"est_confidence"`
	// VariantUtility[m] is the mean realised utility of serving every request on
	// variant m (exact predictions when the app has them).
	VariantUtility []float64 `json:"variant_utility"`
	// Profiled is the variant an oblivious scheduler prefers (highest profiled
	// utility) and ProfiledUtility its realised utility.
	Profiled        string  `json:"profiled"`
	ProfiledUtility float64 `json:"profiled_utility"`
	// DataAware is the realised utility of serving each request on the variant with
	// the highest U(m|p) under its estimate; Oracle the same with p the true class
	// (one-hot): the most data awareness can buy by choice of variant alone when
	// every variant is free.
	DataAware float64 `json:"data_aware"`
	Oracle    float64 `json:"oracle"`
	// Degraded is the realised utility of answering every request with argmax p.
	Degraded float64 `json:"degraded"`
	// ShareNotProfiled is the share of requests whose data-aware pick is not the
	// profiled variant.
	ShareNotProfiled float64 `json:"share_not_profiled"`
	// DominantVariant, if not empty, names a variant whose expected utility under
	// the manifest is the highest for every class: then data awareness cannot
	// change the variant choice without time pressure.
	DominantVariant string `json:"dominant_variant,omitempty"`
	// GuardExcess is what the drift guard would judge if it observed every
	// request: the gap (predicted minus observed agreement of argmax p with the
	// most accurate variant's answer, sneakpeek.Guard) minus the app's baseline
	// (App.GuardClassBaseline, per argmax class). The default guard distrusts
	// beyond +-0.07.
	GuardExcess float64 `json:"guard_excess"`
}

// Diagnose computes the Diagnosis of a's workload w over n requests drawn with seed.
func Diagnose(a *App, w manifest.Workload, n int, seed uint64) Diagnosis {
	sa := a.Sched
	rng := rand.New(rand.NewPCG(seed, 9))
	nv := len(sa.Variants)
	d := Diagnosis{App: sa.Name, Workload: w.Name, VariantUtility: make([]float64, nv)}
	prof := 0
	for i, v := range sa.Variants {
		if v.ProfiledUtility > sa.Variants[prof].ProfiledUtility {
			prof = i
		}
	}
	d.Profiled = sa.Variants[prof].ID.Variant
	// Per-class expected utility of each variant under the manifest (one-hot p).
	perClass := make([][]float64, sa.K)
	for y := range sa.K {
		oh := make([]float64, sa.K)
		oh[y] = 1
		perClass[y] = make([]float64, nv)
		for m, v := range sa.Variants {
			perClass[y][m] = scheduler.ExpectedUtility(oh, v.Cond, sa.Utility)
		}
	}
	for m := range nv {
		dom := true
		for y := range sa.K {
			if scheduler.Argmax(perClass[y]) != m {
				dom = false
			}
		}
		if dom {
			d.DominantVariant = sa.Variants[m].ID.Variant
		}
	}
	refCond := sa.Variants[sa.DefaultVariant].Cond
	const bins = 15
	var binN, binConf, binHit [bins]float64
	var notProf int
	for i := range n {
		s := a.draw(rng, &w, float64(i)/float64(max(1, n-1)))
		y := a.Labels[s]
		p := a.Est[s]
		top := scheduler.Argmax(p)
		if top == y {
			d.EstAccuracy++
		}
		d.EstConfidence += p[top]
		b := min(bins-1, int(p[top]*bins))
		binN[b]++
		binConf[b] += p[top]
		if top == y {
			binHit[b]++
		}
		seq := uint64(i + 1)
		for m := range nv {
			d.VariantUtility[m] += sa.Utility[y][Predict(a, s, m, seed, seq)]
		}
		r := scheduler.Prepare(sa, seq, timeZero, timeZero, p, nil)
		pick := scheduler.Argmax(r.ExpUtility)
		if pick != prof {
			notProf++
		}
		d.DataAware += sa.Utility[y][Predict(a, s, pick, seed, seq)]
		d.Oracle += sa.Utility[y][Predict(a, s, scheduler.Argmax(perClass[y]), seed, seq)]
		d.Degraded += sa.Utility[y][top]
		for yy, py := range p {
			d.GuardExcess += py * refCond[yy][top]
		}
		d.GuardExcess -= a.GuardClassBaseline()[top]
		if Predict(a, s, sa.DefaultVariant, seed, seq) == top {
			d.GuardExcess--
		}
	}
	fn := float64(n)
	for m := range nv {
		d.VariantUtility[m] /= fn
	}
	d.ProfiledUtility = d.VariantUtility[prof]
	d.EstAccuracy /= fn
	d.EstConfidence /= fn
	d.DataAware /= fn
	d.Oracle /= fn
	d.Degraded /= fn
	d.ShareNotProfiled = float64(notProf) / fn
	d.GuardExcess /= fn
	for b := range bins {
		if binN[b] > 0 {
			d.EstECE += binN[b] / fn * math.Abs(binHit[b]/binN[b]-binConf[b]/binN[b])
		}
	}
	return d
}

// timeZero is the arrival and deadline of Diagnose's requests (no time pressure).
var timeZero = time.Unix(0, 0)

// WriteDiagnoses prints the diagnoses as a table.
func WriteDiagnoses(w io.Writer, ds []Diagnosis, apps []*App) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "app\tworkload\test_acc\test_ece\test_conf\tprofiled\tprof_util\tdata_aware\toracle\tdegraded\tpick!=prof\tbest_single\tguard_gap\t")
	for _, d := range ds {
		best := 0
		for m, u := range d.VariantUtility {
			if u > d.VariantUtility[best] {
				best = m
			}
		}
		var bestName string
		for _, a := range apps {
			if a.Sched.Name == d.App {
				bestName = a.Sched.Variants[best].ID.Variant
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.3f\t%.3f\t%s\t%.3f\t%.3f\t%.3f\t%.3f\t%.0f%%\t%s %.3f\t%+.3f\t\n", d.App, d.Workload,
			d.EstAccuracy, d.EstECE, d.EstConfidence, d.Profiled, d.ProfiledUtility, d.DataAware, d.Oracle,
			d.Degraded, 100*d.ShareNotProfiled, bestName, d.VariantUtility[best], d.GuardExcess)
	}
	return tw.Flush()
}
