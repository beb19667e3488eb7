package eval

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/scheduler"
)

// Ceiling bounds, at one load, what choosing a variant per request can realise
// when each request is valued in one of three ways: by the variants' profiled
// utilities alone (what a mixing oblivious scheduler knows), by the values
// sneakpeek plans with (scheduler.Prepare's expected utilities under the
// SneakPeek estimate, sharpened by the per-sample difficulty model where the
// application has one, shrunk toward the profiled ones by
// scheduler.Options.Shrink), or by the true utility of each variant's real
// answer (the per-sample oracle).
//
// Each is the fluid optimum: the time per request is the load's share of the
// most accurate variant's best amortised time plus the gateway's own time per
// request run on a model (the load as in the simulator, CapacityWith: 1 is the
// rate that variant sustains at its best batch), every variant costs its own
// best amortised time plus the gateway's, and the requests' choices
// maximise the total value within that time (one price of engine time for all,
// the requests at the margin split between their two choices). There are no
// deadlines, batches, swaps or arrival order, and every request is served by a
// variant: where even the cheapest variant for every request does not fit
// (Fits false), shedding, which this bound leaves out, is what counts, and there
// is no ceiling. The realised utility is each request's true utility under its
// choice, averaged.
//
// Estimate less Profiled is what the estimate's values buy by choosing
// variants in the fluid problem; Oracle less Profiled what knowing every
// answer would buy. Where Estimate is close to Profiled, the estimate, not the
// scheduler's search, is what limits a policy that plans with these values.
// It is the optimum of the values, not of the estimate: where the values are
// off for the workload's mix, following them at one price loses, and a
// policy that hedges (sneakpeek's hull of profiled points, its horizon) can
// end above Estimate, as it does on fashion's tops-heavy and
// shirt-rare-frequent mixes at loads 3 and 5 (docs/evaluation.md, "What the
// estimate's values can buy").
type Ceiling struct {
	App      string  `json:"app"`
	Workload string  `json:"workload"`
	Load     float64 `json:"load"`
	// Fits is false where serving every request on its cheapest variant does
	// not fit the load's engine time; the other fields are then zero.
	Fits bool `json:"fits"`
	// Profiled, Estimate and Oracle are the realised mean utilities of the
	// three fluid optima, means over the seeds, with the half-widths of their
	// 95% intervals; EstimateShare is (Estimate - Profiled) / (Oracle -
	// Profiled) of the means, 0 where Oracle - Profiled is below minHeadroom.
	Profiled      float64 `json:"profiled"`
	ProfiledCI    float64 `json:"profiled_ci95"`
	Estimate      float64 `json:"estimate"`
	EstimateCI    float64 `json:"estimate_ci95"`
	Oracle        float64 `json:"oracle"`
	OracleCI      float64 `json:"oracle_ci95"`
	EstimateShare float64 `json:"estimate_share"`
	// EstimateGainCI is the half-width of the 95% interval of Estimate -
	// Profiled, paired by seed.
	EstimateGainCI float64 `json:"estimate_gain_ci95"`
}

// Ceilings computes the Ceiling of workload w of a at each load, over seeds
// seed, seed+1, ... (seeds of them), n requests each drawn with the workload's
// mix (from the seed's bootstrap replicate of the test samples when resample,
// as the simulator's Point.Resample). o's MaxBatch bounds the batch sizes the
// amortised times are taken over; its Shrink is applied to the estimate's
// values as sneakpeek applies it. gatewayCost is Point.GatewayCost.
func Ceilings(a *App, w manifest.Workload, loads []float64, n int, seed uint64, seeds int, resample bool, o scheduler.Options, gatewayCost time.Duration) []Ceiling {
	sa := a.Sched
	nv := len(sa.Variants)
	o = withMaxBatch(o) // as the simulator's load: CapacityWith
	cost := make([]float64, nv)
	for m, v := range sa.Variants {
		cost[m] = (scheduler.Amortised(v, min(o.MaxBatch, v.MaxBatch())) + gatewayCost).Seconds()
	}
	best, cheapest := cost[sa.DefaultVariant], slices.Min(cost)
	per := make([][3][]float64, len(loads)) // per load, valuation: one result per seed
	for k := range seeds {
		s := seed + uint64(k)
		prof, est, real := ceilingValues(a, w, n, s, resample, o.Shrink)
		for l, load := range loads {
			budget := best / load
			if budget < cheapest {
				continue
			}
			for j, vals := range [][][]float64{prof, est, real} {
				per[l][j] = append(per[l][j], fluidRealised(vals, real, cost, budget))
			}
		}
	}
	out := make([]Ceiling, len(loads))
	for l, load := range loads {
		c := Ceiling{App: sa.Name, Workload: w.Name, Load: load, Fits: len(per[l][0]) > 0}
		if !c.Fits {
			out[l] = c
			continue
		}
		c.Profiled, c.ProfiledCI = MeanCI(per[l][0])
		c.Estimate, c.EstimateCI = MeanCI(per[l][1])
		c.Oracle, c.OracleCI = MeanCI(per[l][2])
		gain := make([]float64, seeds)
		for k := range gain {
			gain[k] = per[l][1][k] - per[l][0][k]
		}
		_, c.EstimateGainCI = MeanCI(gain)
		if h := c.Oracle - c.Profiled; h > minHeadroom {
			c.EstimateShare = (c.Estimate - c.Profiled) / h
		}
		out[l] = c
	}
	return out
}

// minHeadroom is the oracle's smallest gain over profiled that a share is
// taken of (below it, as where only one variant fits, the share is noise).
const minHeadroom = 1e-4

// ceilingValues draws n requests of workload w and returns, per request and
// variant, the values of the three valuations: prof (the profiled utilities),
// est (sneakpeek's planning values, shrunk by shrink as scheduler's shrinkTo)
// and real (the true utility of the variant's answer).
func ceilingValues(a *App, w manifest.Workload, n int, seed uint64, resample bool, shrink float64) (prof, est, real [][]float64) {
	sa := a.Sched
	nv := len(sa.Variants)
	byClass := a.byClass
	if resample {
		byClass = a.Resampled(seed)
	}
	rng := rand.New(rand.NewPCG(seed, 13))
	profiled := make([]float64, nv)
	for m, v := range sa.Variants {
		profiled[m] = v.ProfiledUtility
	}
	prof, est, real = make([][]float64, n), make([][]float64, n), make([][]float64, n)
	for i := range n {
		s := drawFrom(byClass, rng, &w, float64(i)/float64(max(1, n-1)))
		y := a.Labels[s]
		seq := uint64(i + 1)
		r := scheduler.Prepare(sa, seq, timeZero, timeZero, a.Est[s], nil)
		if a.Correct != nil {
			scheduler.Sharpen(r, a.Correct[s])
		}
		prof[i], est[i], real[i] = profiled, make([]float64, nv), make([]float64, nv)
		for m := range nv {
			est[i][m] = (1-shrink)*r.ExpUtility[m] + shrink*profiled[m]
			real[i][m] = sa.Utility[y][Predict(a, s, m, seed, seq)]
		}
	}
	return prof, est, real
}

// fluidRealised solves the fluid problem of choosing, per request, the variant
// of the highest value less price x cost, at the price where the mean cost just
// fits budget, and returns the mean realised utility (real) of those choices,
// interpolated between the two prices that bracket the budget (the fluid
// optimum splits the requests at the margin between their two choices).
func fluidRealised(vals, real [][]float64, cost []float64, budget float64) float64 {
	at := func(price float64) (c, u float64) {
		for i, v := range vals {
			bj, bv := -1, math.Inf(-1)
			for j, x := range v {
				// Ties go to the cheaper variant, so cost falls as the price rises.
				if y := x - price*cost[j]; y > bv || y == bv && cost[j] < cost[bj] {
					bj, bv = j, y
				}
			}
			c += cost[bj]
			u += real[i][bj]
		}
		n := float64(len(vals))
		return c / n, u / n
	}
	c0, u0 := at(0)
	if c0 <= budget {
		return u0
	}
	// At a price above every value difference over the smallest difference
	// of costs, every request takes its cheapest variant.
	gap := math.Inf(1)
	for _, a := range cost {
		for _, b := range cost {
			if a > b {
				gap = min(gap, a-b)
			}
		}
	}
	if math.IsInf(gap, 1) {
		return u0
	}
	// Utilities within [-1, 1] differ by at most 2; the manifest allows any
	// finite ones, so the bracket grows until the cost fits.
	lo, hi := 0.0, 4/gap
	cl, ul := c0, u0
	ch, uh := at(hi)
	for k := 0; ch > budget && k < 200; k++ {
		lo, cl, ul = hi, ch, uh
		hi *= 2
		ch, uh = at(hi)
	}
	for range 100 {
		mid := (lo + hi) / 2
		c, u := at(mid)
		if c > budget {
			lo, cl, ul = mid, c, u
		} else {
			hi, ch, uh = mid, c, u
		}
	}
	if cl == ch {
		return uh
	}
	f := (budget - ch) / (cl - ch)
	return uh + f*(ul-uh)
}

// WriteCeilings prints the ceilings as a table.
func WriteCeilings(w io.Writer, cs []Ceiling) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "app\tworkload\tload\tprofiled\testimate\toracle\testimate-profiled\t±95%\testimate's share\t")
	for _, c := range cs {
		if !c.Fits {
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t-\t-\t-\t-\t-\t-\t\n", c.App, c.Workload, c.Load)
			continue
		}
		share := "-" // no headroom to share
		if c.Oracle-c.Profiled > minHeadroom {
			share = fmt.Sprintf("%.0f%%", 100*c.EstimateShare)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.4f\t%.4f\t%.4f\t%+.4f\t%.4f\t%s\t\n", c.App, c.Workload, c.Load,
			c.Profiled, c.Estimate, c.Oracle, c.Estimate-c.Profiled, c.EstimateGainCI, share)
	}
	return tw.Flush()
}
