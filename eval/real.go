package eval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// Profiles maps "app/variant" to a variant's measured profile, in the engine's
// JSON form (engine.Profile). A file of this form can be written by `eval
// -save-profiles` and read back with `eval -profiles`.
type Profiles map[string]engine.Profile

// ReadProfiles reads a Profiles JSON file.
func ReadProfiles(path string) (Profiles, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("eval: %w", err)
	}
	var p Profiles
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("eval: profiles %s: %w", path, err)
	}
	return p, nil
}

// Write writes p as indented JSON.
func (p Profiles) Write(path string) error {
	b, err := json.MarshalIndent(p, "", " ")
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ErrNoSamples is returned by LoadApp for a manifest without a samples file.
var ErrNoSamples = errors.New("eval: the manifest names no samples file")

// LoadOptions say how LoadApp gets what the manifest does not hold.
type LoadOptions struct {
	// Engine runs the variants: to profile them (when Profiles lacks one) and to
	// compute every variant's real prediction on every sample (exact
	// correctness). Nil means no engine: Profiles must cover every variant, and
	// correctness falls back to confusion-matrix draws.
	Engine *engine.Engine
	// Profiles are known profiles; measured ones are added to it.
	Profiles Profiles
	// MaxBatch is the largest batch size the latency table covers.
	MaxBatch int
	// CascadeFirst names, per application, the cascade's first variant
	// (scheduler.Options.CascadeFirst; default the cheapest).
	CascadeFirst map[string]string
	// Peek names, per application, sneakpeek-peek's peek variant
	// (scheduler.Options.Peek; default CascadeFirst's, else the cheapest).
	Peek map[string]string
	// Estimator names the manifest's SneakPeek estimator to use: "" is the
	// manifest's first (what the gateway uses by default), StandIn the stand-in
	// (the cheapest variant's softmax; needs the engine).
	Estimator string
	// Estimate, if not nil, overrides Estimator: it returns the SneakPeek estimate
	// of every sample and a description of the estimator.
	Estimate func(m *manifest.App, set *dataset.Set) ([][]float64, string, error)
}

// StandIn is the LoadOptions.Estimator name of the stand-in estimator: the
// application's cheapest variant, run through the engine, its softmax output as p.
// It is not a SneakPeek estimator (it costs a forward pass); it was used before
// package sneakpeek existed and is kept for comparison.
const StandIn = "stand-in"

// ManifestEstimate returns the estimates of every sample by the manifest's
// estimator named name ("" = the first), computed by package sneakpeek exactly as
// the gateway computes them.
func ManifestEstimate(m *manifest.App, set *dataset.Set, name string) ([][]float64, string, error) {
	var (
		est sneakpeek.Estimator
		err error
	)
	if name == "" {
		est, err = sneakpeek.LoadDefault(m)
	} else {
		found := false
		for _, e := range m.Estimators {
			if e.Name == name {
				found = true
				est, err = sneakpeek.Load(m, e)
				break
			}
		}
		if !found {
			return nil, "", fmt.Errorf("eval: app %s has no estimator %q", m.Name, name)
		}
	}
	if err != nil {
		return nil, "", fmt.Errorf("eval: %w", err)
	}
	out := make([][]float64, set.N)
	for i := range out {
		out[i] = make([]float64, m.K())
		est.Estimate(set.Row(i), out[i])
	}
	desc := est.Name()
	for _, e := range m.Estimators {
		if e.Name == est.Name() {
			desc = fmt.Sprintf("%s (%s, %s; validation accuracy %.3f, ECE %.3f, %.1f us)", e.Name, e.Kind, e.Features, e.Accuracy, e.ECE, e.CostUS)
		}
	}
	return out, desc, nil
}

// LoadApp builds an evaluation App from a manifest: the scheduler's view with
// latency tables from measured profiles, the samples' labels, their estimates,
// and, with an engine, every variant's real prediction on every sample.
//
// Estimates come from o.Estimate, else the manifest's estimator o.Estimator run by
// package sneakpeek on every sample (the gateway's estimates), else, when
// o.Estimator is StandIn, the application's cheapest variant run through the engine.
func LoadApp(ctx context.Context, path string, o LoadOptions) (*App, error) {
	m, err := manifest.Load(path)
	if err != nil {
		return nil, err
	}
	if m.Samples == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoSamples, path)
	}
	set, err := readSamples(m, m.Samples.File, "samples")
	if err != nil {
		return nil, err
	}
	sa, err := scheduler.NewApp(m)
	if err != nil {
		return nil, err
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = scheduler.DefaultOptions().MaxBatch
	}
	if o.Profiles == nil {
		o.Profiles = Profiles{}
	}
	a := &App{Sched: sa, Workloads: m.Workloads, Deadline: time.Duration(m.DefaultDeadlineMS) * time.Millisecond,
		Labels: make([]int, set.N), ClassNames: append([]string(nil), m.Labels...)}
	for i, y := range set.Labels {
		a.Labels[i] = int(y)
	}
	if len(a.Workloads) == 0 {
		a.Workloads = []manifest.Workload{{Name: "natural", Mix: m.Prior}}
	}
	if o.Engine != nil {
		if err := o.Engine.Register(m); err != nil {
			return nil, err
		}
	}
	measured := 0
	for _, v := range sa.Variants {
		key := v.ID.String()
		p, ok := o.Profiles[key]
		if !ok {
			if o.Engine == nil {
				return nil, fmt.Errorf("eval: no profile for %s and no engine to measure it", key)
			}
			id := engine.VariantID{App: v.ID.App, Variant: v.ID.Variant}
			if err := o.Engine.Profile(ctx, id); err != nil {
				return nil, err
			}
			p, _ = o.Engine.ProfileOf(id)
			o.Profiles[key] = p
			measured++
		}
		v.Latency = make([]time.Duration, o.MaxBatch+1)
		for b := 1; b <= o.MaxBatch; b++ {
			v.Latency[b] = p.LatencyAt(b)
		}
		v.Load, v.Unload, v.MemBytes = p.Load, p.Unload, p.MemBytes
	}
	a.ProfileSource = "profiles file"
	if measured > 0 {
		a.ProfileSource = "measured by the engine"
	}
	var probs [][][]float64
	if o.Engine != nil {
		a.Pred = make([][]int16, set.N)
		a.Conf = make([][]float32, set.N)
		for i := range a.Pred {
			a.Pred[i] = make([]int16, len(sa.Variants))
			a.Conf[i] = make([]float32, len(sa.Variants))
		}
		probs = make([][][]float64, len(sa.Variants))
		for mi, v := range sa.Variants {
			out, err := runAll(o.Engine, engine.VariantID{App: v.ID.App, Variant: v.ID.Variant}, set, o.MaxBatch)
			if err != nil {
				return nil, err
			}
			probs[mi] = out
			for i, p := range out {
				c := scheduler.Argmax(p)
				a.Pred[i][mi] = int16(c)
				a.Conf[i][mi] = float32(p[c])
			}
		}
		if m.Validation != nil {
			c, err := cascadeConfig(o.Engine, m, sa, scheduler.Options{MaxBatch: o.MaxBatch, CascadeFirst: o.CascadeFirst})
			if err != nil {
				return nil, err
			}
			a.Cascade = c
			a.Peek = c
			if name, ok := o.Peek[m.Name]; ok && name != o.CascadeFirst[m.Name] {
				if a.Peek, err = cascadeConfig(o.Engine, m, sa, scheduler.Options{MaxBatch: o.MaxBatch, CascadeFirst: map[string]string{m.Name: name}}); err != nil {
					return nil, err
				}
			}
		}
	}
	switch {
	case o.Estimate != nil || o.Estimator != StandIn:
		f := o.Estimate
		if f == nil {
			f = func(m *manifest.App, set *dataset.Set) ([][]float64, string, error) {
				return ManifestEstimate(m, set, o.Estimator)
			}
		}
		est, desc, err := f(m, set)
		if err != nil {
			return nil, err
		}
		a.Est, a.EstimatorSource = est, desc
		if m.Validation != nil {
			if a.Answers, a.ShiftStart, err = validationAnswers(m, a.Sched, f); err != nil {
				return nil, err
			}
		}
		if o.Estimate == nil && m.Difficulty != nil {
			name := o.Estimator
			if name == "" && len(m.Estimators) > 0 {
				name = m.Estimators[0].Name
			}
			if name == m.Difficulty.Estimator {
				if a.Correct, err = difficultyOf(m, set, est); err != nil {
					return nil, err
				}
			}
		}
	case probs != nil:
		cheap := 0
		for mi, v := range sa.Variants {
			if v.LatencyAt(1) < sa.Variants[cheap].LatencyAt(1) {
				cheap = mi
			}
		}
		a.Est = probs[cheap]
		a.EstimatorSource = "stand-in: variant " + sa.Variants[cheap].ID.Variant + " softmax"
	default:
		return nil, fmt.Errorf("eval: %s: the stand-in estimator needs the engine", path)
	}
	if err := a.index(); err != nil {
		return nil, err
	}
	return a, nil
}

// readSamples reads m's sample file file (what names its role in errors:
// "samples", "validation split") and checks that it fits m: rows of
// m.InputSize values, labels in [0, K). Errors name the application, the role
// and the file.
func readSamples(m *manifest.App, file, what string) (*dataset.Set, error) {
	path := m.Path(file)
	set, err := dataset.Read(path)
	if err != nil {
		return nil, fmt.Errorf("eval: %s: %s: %w", m.Name, what, err)
	}
	if set.D != m.InputSize {
		return nil, fmt.Errorf("eval: %s: %s: %s: %d values per sample, input_size is %d", m.Name, what, path, set.D, m.InputSize)
	}
	for i, y := range set.Labels {
		if y < 0 || int(y) >= m.K() {
			return nil, fmt.Errorf("eval: %s: %s: %s: sample %d has label %d, want 0..%d", m.Name, what, path, i, y, m.K()-1)
		}
	}
	return set, nil
}

// validationAnswers estimates every row of m's validation split with est, the
// function that estimated the samples, and keeps them with their labels to
// value the corrected estimate's answers in a live class mix; it also returns
// their mean, where the label-shift correction starts (the gateway's
// shiftStart does both the same way).
func validationAnswers(m *manifest.App, sa *scheduler.App, est func(*manifest.App, *dataset.Set) ([][]float64, string, error)) (*sneakpeek.AnswerValue, []float64, error) {
	set, err := readSamples(m, m.Validation.File, "validation split")
	if err != nil {
		return nil, nil, err
	}
	p, _, err := est(m, set)
	if err != nil {
		return nil, nil, fmt.Errorf("eval: %s: validation split: %w", m.Name, err)
	}
	labels := make([]int, set.N)
	for i, y := range set.Labels {
		labels[i] = int(y)
	}
	av, err := sneakpeek.NewAnswerValue(labels, p, sa.Utility)
	return av, sneakpeek.MeanEstimate(p, sa.K), err
}

// difficultyOf runs the manifest's difficulty model on every sample, from the
// samples' estimates est (of the estimator it was trained on).
func difficultyOf(m *manifest.App, set *dataset.Set, est [][]float64) ([][]float64, error) {
	d, err := sneakpeek.LoadDifficulty(m)
	if err != nil {
		return nil, fmt.Errorf("eval: %s: %w", m.Name, err)
	}
	out := make([][]float64, set.N)
	for i := range out {
		out[i] = make([]float64, len(m.Variants))
		d.Correctness(set.Row(i), est[i], out[i])
	}
	return out, nil
}

// cascadeConfig measures the cascade policy's operating curve on the validation
// split: the first variant (o.CascadeFirst's, else the cheapest by amortised time
// per request) and the most accurate one are run on every validation sample; the
// curve is the utility of escalating the first answers below each confidence
// threshold.
func cascadeConfig(e *engine.Engine, m *manifest.App, sa *scheduler.App, o scheduler.Options) (*scheduler.CascadeConfig, error) {
	set, err := readSamples(m, m.Validation.File, "validation split")
	if err != nil {
		return nil, err
	}
	cheap, better, err := scheduler.CascadePair(sa, o)
	if err != nil {
		return nil, err
	}
	if cheap == better {
		return &scheduler.CascadeConfig{Cheap: cheap, Better: better}, nil
	}
	run := func(mi int) ([][]float64, error) {
		v := sa.Variants[mi]
		return runAll(e, engine.VariantID{App: v.ID.App, Variant: v.ID.Variant}, set, o.MaxBatch)
	}
	pc, err := run(cheap)
	if err != nil {
		return nil, err
	}
	pb, err := run(better)
	if err != nil {
		return nil, err
	}
	c, err := scheduler.CascadeFromOutputs(sa, cheap, better, set.Labels, pc, pb)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// runAll runs every sample through the variant in batches and returns the class
// distributions (engine.RunAll: a variant not resident is loaded for the run).
func runAll(e *engine.Engine, id engine.VariantID, set *dataset.Set, batch int) ([][]float64, error) {
	rows := make([][]float32, set.N)
	for i := range rows {
		rows[i] = set.Row(i)
	}
	out, err := e.RunAll(context.Background(), id, rows, batch)
	if err != nil {
		return nil, fmt.Errorf("eval: run %s: %w", id, err)
	}
	return out, nil
}
