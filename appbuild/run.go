package appbuild

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// runBatch is the batch size of validation runs.
const runBatch = 64

// newEngine returns an engine for measuring: one intra-op and one inter-op
// thread (as models/tools/measure), buffers up to runBatch.
func newEngine(lib string) (*engine.Engine, error) {
	e, err := engine.New(engine.Options{LibraryPath: lib, IntraOpThreads: 1, InterOpThreads: 1,
		BatchSizes: []int{1, 32, runBatch}, Logger: zerolog.Nop()})
	if err != nil {
		return nil, fmt.Errorf("ONNX Runtime (-ort-lib or $%s; `make ort` installs it in .cache/onnxruntime/): %w", engine.LibraryEnv, err)
	}
	return e, nil
}

// variantResult is what the build measured of one variant on the validation split.
type variantResult struct {
	Name string
	// Kind is the output kind (detected unless the base spec declared it) and
	// KindWhy the reason, for the report.
	Kind, KindWhy string
	Accuracy      float64
	Confusion     [][]float64
	Recall        []float64
	// Pred is the predicted class of every row run.
	Pred []int
	// MaxBatchDiff is the largest difference between batch-1 and batched
	// outputs on the first rows.
	MaxBatchDiff float64
	// USBatch1 and USPerSample32 are the latency of one run at batch 1 and per
	// sample at batch 32, in µs (first quartile of repeated runs).
	USBatch1, USPerSample32 float64
}

// provisional returns an application whose variants read the raw outputs:
// "probabilities" (copied as they are) or "score".
func provisional(name string, d int, labels []string, plans []*plan) *manifest.App {
	k := len(labels)
	app := &manifest.App{Name: name, InputSize: d, Labels: labels, DefaultDeadlineMS: 1,
		Prior: make([]float64, k), Utility: identity(k)}
	for c := range app.Prior {
		app.Prior[c] = 1 / float64(k)
	}
	for _, p := range plans {
		v := p.spec
		v.Output.Kind = "probabilities"
		if p.width == 1 || (p.width == 0 && p.kind == "score") {
			v.Output.Kind = "score"
		}
		v.Confusion = zeros(k)
		v.Recall = make([]float64, k)
		app.Variants = append(app.Variants, v)
	}
	return app
}

func identity(k int) [][]float64 {
	m := zeros(k)
	for i := range m {
		m[i][i] = 1
	}
	return m
}

func zeros(k int) [][]float64 {
	m := make([][]float64, k)
	for i := range m {
		m[i] = make([]float64, k)
	}
	return m
}

// measureVariants runs every planned variant over the validation split through
// the engine, detects its output kind, and measures accuracy, confusion,
// recall, batch agreement and latency.
func measureVariants(ctx context.Context, o *Options, name string, labels []string, plans []*plan, val *split) ([]variantResult, error) {
	eng, err := newEngine(o.Library)
	if err != nil {
		return nil, err
	}
	defer eng.Close()
	app := provisional(name, val.d, labels, plans)
	if err := app.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrModel, err)
	}
	if err := eng.Register(app); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrModel, err)
	}
	var res []variantResult
	for i, p := range plans {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fmt.Fprintf(o.Log, "running %s on %d validation rows\n", p.spec.Name, val.n)
		id := engine.VariantID{App: name, Variant: p.spec.Name}
		r, err := measureOne(eng, id, app.Variants[i].Output.Kind, p, labels, val, o.LatencyBudget)
		if _, uerr := eng.Unload(id); err == nil && uerr != nil {
			err = p.errorf("%v", uerr)
		}
		if err != nil {
			return nil, err
		}
		res = append(res, r)
	}
	return res, nil
}

func measureOne(eng *engine.Engine, id engine.VariantID, readAs string, p *plan, labels []string, val *split, budget time.Duration) (variantResult, error) {
	k := len(labels)
	r := variantResult{Name: p.spec.Name}
	if _, err := eng.Load(id); err != nil {
		return r, p.errorf("%v", err)
	}
	raw, err := runAll(eng, id, val)
	if err != nil {
		return r, p.errorf("%v", err)
	}
	// Batch agreement on the first rows.
	for i := 0; i < min(8, val.n); i++ {
		one, err := eng.Run(id, [][]float32{val.row(i)})
		if err != nil {
			return r, p.errorf("%v", err)
		}
		for c, v := range one[0] {
			r.MaxBatchDiff = max(r.MaxBatchDiff, math.Abs(v-raw[i][c])/math.Max(1, math.Abs(v)))
		}
	}
	if r.MaxBatchDiff > 1e-3 {
		return r, p.errorf("outputs at batch 1 and at batch %d differ by %.3g on the same rows: the graph mixes the samples of a batch "+
			"(export in eval mode, model.eval(), with a dynamic batch axis)", runBatch, r.MaxBatchDiff)
	}
	kind, why, err := outputKind(p, readAs, raw, k)
	if err != nil {
		return r, err
	}
	r.Kind, r.KindWhy = kind, why
	r.Confusion = zeros(k)
	r.Pred = make([]int, val.n)
	correct := 0
	dist := make([]float64, k)
	for i, row := range raw {
		toDist(kind, row, dist)
		yhat, y := sneakpeek.Argmax(dist), int(val.labels[i])
		r.Pred[i] = yhat
		r.Confusion[y][yhat]++
		if yhat == y {
			correct++
		}
	}
	r.Accuracy = float64(correct) / float64(val.n)
	r.Recall = recall(r.Confusion)
	r.USBatch1 = timeRuns(eng, id, val, 1, budget)
	r.USPerSample32 = timeRuns(eng, id, val, 32, budget) / 32
	return r, nil
}

// runAll runs every validation row through a loaded variant, runBatch at a time.
func runAll(eng *engine.Engine, id engine.VariantID, val *split) ([][]float64, error) {
	out := make([][]float64, 0, val.n)
	rows := make([][]float32, 0, runBatch)
	for s := 0; s < val.n; s += runBatch {
		rows = rows[:0]
		for i := s; i < min(s+runBatch, val.n); i++ {
			rows = append(rows, val.row(i))
		}
		ps, err := eng.Run(id, rows)
		if err != nil {
			return nil, err
		}
		out = append(out, ps...)
	}
	return out, nil
}

// outputKind decides how the raw outputs (read as probabilities or as a score)
// are to be read: non-finite values are neither logits nor probabilities;
// rows in [0, 1] summing to 1 are probabilities; other finite rows are logits;
// a single value per sample must be a probability in [0, 1] (a score). A kind
// the base spec declares is checked instead.
func outputKind(p *plan, readAs string, raw [][]float64, k int) (kind, why string, err error) {
	name := p.spec.Output.Name
	for i, row := range raw {
		for c, v := range row {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return "", "", p.errorf("output %q is %v for validation row %d, class %d: neither logits nor probabilities", name, v, i, c)
			}
		}
	}
	if readAs == "score" {
		for i, row := range raw {
			if v := row[1]; v < -1e-6 || v > 1+1e-6 {
				return "", "", p.errorf("output %q has one value per sample and it is %v for validation row %d, outside [0, 1]: "+
					"neither a probability of class 1 nor logits over %d classes (export the sigmoid, or %d logits)", name, v, i, k, k)
			}
		}
		if p.kind != "" && p.kind != "score" {
			return "", "", p.errorf("the base spec says output %q is %s, but it has one value per sample (a score)", name, p.kind)
		}
		return "score", "one probability per sample (class 1 of 2)", nil
	}
	probs, worst, worstRow, worstSum, inUnit := true, 0.0, 0, 0.0, true
	for i, row := range raw {
		s := 0.0
		for _, v := range row {
			if v < -1e-6 || v > 1+1e-6 {
				probs, inUnit = false, false
			}
			s += v
		}
		if d := math.Abs(s - 1); d > worst {
			worst, worstRow, worstSum = d, i, s
		}
	}
	if worst > 1e-3 {
		probs = false
	}
	switch p.kind {
	case "probabilities":
		if !probs {
			return "", "", p.errorf("the base spec says output %q holds probabilities, but validation row %d sums to %.4g "+
				"(or a value is outside [0, 1])", name, worstRow, worstSum)
		}
		return "probabilities", "as the base spec says; every row in [0, 1] sums to 1", nil
	case "logits":
		return "logits", "as the base spec says", nil
	case "score":
		return "", "", p.errorf("the base spec says output %q is a score, but it has %d values per sample", name, k)
	}
	if probs {
		return "probabilities", fmt.Sprintf("every row in [0, 1] sums to 1 (within %.1g)", worst), nil
	}
	if inUnit {
		return "logits", fmt.Sprintf("values in [0, 1] but rows do not sum to 1 (row %d sums to %.4g): read as logits (softmax); "+
			"if they are independent per-class probabilities the confidence will be off", worstRow, worstSum), nil
	}
	return "logits", fmt.Sprintf("rows are not distributions (row %d sums to %.4g): softmax applied", worstRow, worstSum), nil
}

// toDist converts a raw output row to a class distribution, as the engine does
// for kind.
func toDist(kind string, raw, dst []float64) {
	switch kind {
	case "logits":
		m := math.Inf(-1)
		for _, v := range raw {
			m = max(m, v)
		}
		s := 0.0
		for i, v := range raw {
			dst[i] = math.Exp(v - m)
			s += dst[i]
		}
		for i := range dst {
			dst[i] /= s
		}
	default: // probabilities; a score was already read as [1-p, p]
		copy(dst, raw)
	}
}

func recall(conf [][]float64) []float64 {
	r := make([]float64, len(conf))
	for y, row := range conf {
		tot := 0.0
		for _, c := range row {
			tot += c
		}
		if tot > 0 {
			r[y] = row[y] / tot
		}
	}
	return r
}

// timeRuns returns the first quartile of the wall time of one Run at batch size
// b, in µs, over runs for about budget (at least 5, at most 2000); 0 if a run
// fails.
func timeRuns(eng *engine.Engine, id engine.VariantID, val *split, b int, budget time.Duration) float64 {
	rows := make([][]float32, b)
	for i := range rows {
		rows[i] = val.row(i % val.n)
	}
	var ts []float64
	end := time.Now().Add(budget)
	for n := 0; n < 2000 && (n < 5 || time.Now().Before(end)); n++ {
		t0 := time.Now()
		if _, err := eng.Run(id, rows); err != nil {
			return 0 // the validation runs before worked; report no figure
		}
		ts = append(ts, float64(time.Since(t0).Nanoseconds())/1e3)
	}
	sort.Float64s(ts)
	return ts[len(ts)/4]
}
