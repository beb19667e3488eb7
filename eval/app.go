package eval

import (
	"fmt"
	"github.com/sneakgate/sneakgate/sneakpeek"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/scheduler"
)

// App is one application's evaluation inputs: the scheduler's view (variants with
// their latency profiles filled in), the replayable samples' true labels, the
// SneakPeek estimate of every sample, and optionally every variant's real
// prediction on every sample.
type App struct {
	Sched *scheduler.App
	// Labels[i] is sample i's true class.
	Labels []int
	// Est[i] is the SneakPeek estimate (a class distribution) of sample i.
	Est [][]float64
	// Correct, if not nil, holds Correct[i][m]: the per-sample difficulty
	// model's probability that variant m answers sample i correctly (from the
	// manifest's difficulty model, with the estimator it was trained on), as the
	// gateway computes it. Policies other than sneakpeek-class use it.
	Correct [][]float64
	// Pred, if not nil, holds Pred[i][m]: variant m's real prediction on sample i
	// (exact correctness). When nil, a variant's answer is drawn from its
	// confusion matrix row of the sample's true class (see Oracle).
	Pred [][]int16
	// Conf, if not nil, holds Conf[i][m]: variant m's top-class probability on
	// sample i (the cascade policy's confidence).
	Conf [][]float32
	// Cascade is the cascade policy's configuration, measured on the validation
	// split (nil without an engine or a validation split).
	Cascade *scheduler.CascadeConfig
	// Peek is sneakpeek-peek's curve (the peek variant first), measured as
	// Cascade is; it is Cascade when the two first variants are the same.
	Peek *scheduler.CascadeConfig
	// ClassNames are the class labels, for reports.
	ClassNames []string
	// Workloads are the named label mixes to replay.
	Workloads []manifest.Workload
	// Deadline is the application's default deadline budget.
	Deadline time.Duration
	// ProfileSource says where the latencies came from; EstimatorSource which
	// estimator produced Est.
	ProfileSource, EstimatorSource string

	// Answers values the corrected estimate's answers in a live class mix,
	// from the validation split's labelled estimates (as the gateway's
	// shiftStart; nil without a validation split or the manifest's estimator).
	Answers *sneakpeek.AnswerValue
	// ShiftStart is where the label-shift correction starts: the estimator's
	// mean estimate over the validation split's rows, as the gateway's
	// shiftStart computes it (nil without a validation split: the correction
	// then starts from the manifest's prior, as the gateway's does). Never
	// from the replayed test samples, whose labels the gateway does not have.
	ShiftStart []float64

	byClass [][]int
	// guardOnce computes guardBase, the drift guard's baseline (GuardBaseline).
	guardOnce  sync.Once
	guardBase  float64
	guardClass []float64
}

// index groups the samples by class; it is called by every constructor.
func (a *App) index() error {
	k := a.Sched.K
	a.byClass = make([][]int, k)
	if len(a.Labels) != len(a.Est) {
		return fmt.Errorf("eval: app %s: %d labels but %d estimates", a.Sched.Name, len(a.Labels), len(a.Est))
	}
	for i, y := range a.Labels {
		if y < 0 || y >= k {
			return fmt.Errorf("eval: app %s: sample %d has label %d, want 0..%d", a.Sched.Name, i, y, k-1)
		}
		if len(a.Est[i]) != k {
			return fmt.Errorf("eval: app %s: estimate %d has %d classes, want %d", a.Sched.Name, i, len(a.Est[i]), k)
		}
		a.byClass[y] = append(a.byClass[y], i)
	}
	return nil
}

// ByClass returns the indices of the samples of each class (by Labels), as the
// App holds them: read only.
func (a *App) ByClass() [][]int { return a.byClass }

// Workload returns the named workload, or an error naming the known ones.
func (a *App) Workload(name string) (manifest.Workload, error) {
	var names []string
	for _, w := range a.Workloads {
		if w.Name == name {
			return w, nil
		}
		names = append(names, w.Name)
	}
	return manifest.Workload{}, fmt.Errorf("eval: app %s has no workload %q (have %v)", a.Sched.Name, name, names)
}

// draw picks a sample for the workload at progress in [0,1] (a drifting mix moves
// linearly from Mix to MixEnd): a class from the mix, then a sample of that class.
func (a *App) draw(rng *rand.Rand, w *manifest.Workload, progress float64) int {
	return drawFrom(a.byClass, rng, w, progress)
}

// Resampled returns the samples grouped by class as one bootstrap replicate of
// the test set: each class's samples drawn with replacement, as many as it has,
// by a generator of seed alone. Runs with the same seed replay the same
// replicate whatever the policy, so comparisons stay paired; runs with
// different seeds replay different ones, so the spread over seeds includes how
// much the result owes to which test samples there happen to be (Point.Resample).
func (a *App) Resampled(seed uint64) [][]int {
	rng := rand.New(rand.NewPCG(seed, 6))
	out := make([][]int, len(a.byClass))
	for y, s := range a.byClass {
		out[y] = make([]int, len(s))
		for i := range out[y] {
			out[y][i] = s[rng.IntN(len(s))]
		}
	}
	return out
}

// drawFrom is draw over byClass, the samples grouped by class (App.byClass or
// a replicate of it, App.Resampled).
func drawFrom(byClass [][]int, rng *rand.Rand, w *manifest.Workload, progress float64) int {
	u := rng.Float64()
	y := len(w.Mix) - 1
	acc := 0.0
	for c, p := range w.Mix {
		if w.MixEnd != nil {
			p = (1-progress)*p + progress*w.MixEnd[c]
		}
		acc += p
		if u < acc && len(byClass[c]) > 0 {
			y = c
			break
		}
	}
	for len(byClass[y]) == 0 {
		y = (y + 1) % len(byClass)
	}
	s := byClass[y]
	return s[rng.IntN(len(s))]
}

// Synthetic returns a small four-class application with clearly different
// per-class recalls between its variants, a utility matrix that charges for missed
// rare events, a calibrated synthetic estimator (each sample's estimate puts its
// confidence c ~ U(0.65, 0.99) on a class that is the true one with probability
// c), and natural and shifted workloads. Its latencies are invented (a 30x range,
// roughly the Fashion-MNIST family's). It serves the tests and `eval -synthetic`.
func Synthetic(seed uint64) *App {
	const k = 4
	a := &scheduler.App{Name: "synthetic", K: k, Prior: []float64{0.7, 0.1, 0.1, 0.1}}
	// Class 0 is "nothing happening"; 1..3 are events. Missing an event costs.
	a.Utility = [][]float64{
		{1, -0.1, -0.1, -0.1},
		{-1, 1, 0, 0},
		{-1, 0, 1, 0},
		{-1, 0, 0, 1},
	}
	type spec struct {
		name       string
		recall     []float64
		fixed, per float64 // ms
		load       float64 // ms
		mem        int64
	}
	specs := []spec{
		{"tiny", []float64{0.99, 0.40, 0.45, 0.50}, 0.10, 0.010, 2, 1 << 20},
		{"small", []float64{0.97, 0.70, 0.60, 0.75}, 0.25, 0.030, 4, 4 << 20},
		{"medium", []float64{0.95, 0.85, 0.88, 0.80}, 0.80, 0.100, 8, 16 << 20},
		{"large", []float64{0.97, 0.96, 0.94, 0.95}, 2.50, 0.300, 20, 64 << 20},
	}
	for i, s := range specs {
		v := &scheduler.Variant{ID: scheduler.VariantID{App: a.Name, Variant: s.name}, Index: i,
			Recall: s.recall, Load: ms(s.load), Unload: ms(s.load / 10), MemBytes: s.mem}
		v.Latency = make([]time.Duration, 33)
		for b := 1; b <= 32; b++ {
			v.Latency[b] = ms(s.fixed + s.per*float64(b))
		}
		// Errors go mostly to class 0 (a missed event), the rest spread evenly.
		v.Cond = make([][]float64, k)
		for y := range k {
			row := make([]float64, k)
			row[y] = s.recall[y]
			miss := 1 - s.recall[y]
			if y == 0 {
				for c := 1; c < k; c++ {
					row[c] = miss / (k - 1)
				}
			} else {
				row[0] = 0.8 * miss
				for c := 1; c < k; c++ {
					if c != y {
						row[c] = 0.2 * miss / (k - 2)
					}
				}
			}
			v.Cond[y] = row
		}
		v.Accuracy = sneakpeek.ExpectedAccuracy(a.Prior, v.Recall)
		v.ProfiledUtility = scheduler.ExpectedUtility(a.Prior, v.Cond, a.Utility)
		a.Variants = append(a.Variants, v)
	}
	a.DefaultVariant = len(specs) - 1

	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	const n = 4000
	app := &App{Sched: a, Labels: make([]int, n), Est: make([][]float64, n),
		ClassNames: []string{"nothing", "event1", "event2", "event3"},
		Deadline:   20 * time.Millisecond, ProfileSource: "synthetic (invented latencies)",
		EstimatorSource: "synthetic calibrated estimator",
		Workloads: []manifest.Workload{
			{Name: "natural", Description: "the prior", Mix: []float64{0.7, 0.1, 0.1, 0.1}},
			{Name: "events", Description: "events dominate", Mix: []float64{0.1, 0.3, 0.3, 0.3}},
			{Name: "drift", Description: "natural drifting to events", Mix: []float64{0.7, 0.1, 0.1, 0.1},
				MixEnd: []float64{0.1, 0.3, 0.3, 0.3}},
		}}
	for i := range n {
		y := i % k
		c := 0.65 + 0.34*rng.Float64()
		guess := y
		if rng.Float64() >= c {
			guess = (y + 1 + rng.IntN(k-1)) % k
		}
		p := make([]float64, k)
		for j := range p {
			p[j] = (1 - c) / (k - 1)
		}
		p[guess] = c
		app.Labels[i], app.Est[i] = y, p
	}
	if err := app.index(); err != nil {
		panic(err) // built above: cannot be inconsistent
	}
	// A synthetic application has no validation split: its samples' own mean
	// estimate in the prior mix stands in for one.
	app.ShiftStart = app.EstimateMarginal()
	return app
}

func ms(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
