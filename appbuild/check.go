package appbuild

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// ErrCheck wraps every problem Check finds.
var ErrCheck = errors.New("app check")

// Tolerances of Check when it runs the whole validation split: the variants'
// accuracy through ONNX Runtime against the manifest's (as models/tools/measure)
// and the estimators' (as the sneakpeek package's bundled-app test).
const (
	checkVariantTol   = 0.002
	checkEstimatorTol = 0.005
)

// checkRandomRows is how many random rows Check runs the variants on when
// there are neither validation nor samples rows.
const checkRandomRows = 64

// CheckOptions configures Check.
type CheckOptions struct {
	// Library is the ONNX Runtime library (empty: $SNEAKGATE_ORT_LIB).
	Library string
	// Rows bounds the validation rows run (0: all of them; only then are the
	// accuracies compared with the manifest's).
	Rows int
	// NoLatency skips timing; LatencyBudget is the time spent timing each
	// variant at each batch size (0: 300 ms).
	NoLatency     bool
	LatencyBudget time.Duration
	// Stdout receives the table (nil: discarded).
	Stdout io.Writer
}

// CheckReport is what Check measured.
type CheckReport struct {
	App *manifest.App
	// Rows is the number of rows run, from RowsFrom.
	Rows     int
	RowsFrom string
	// Variants and Estimators are measured on those rows, in manifest order.
	Variants   []variantResult
	Estimators []estimatorResult
	// Warnings say what the gateway serves without: an estimator, or a
	// validation split or a samples file the manifest does not name or that is
	// missing.
	Warnings []string
}

// Check validates an application directory (or its manifest.yaml) as the
// gateway will use it: the manifest loads and validates, every estimator loads,
// the sample and validation files fit the manifest (rows, values per row,
// labels, input_range); then every variant is loaded through ONNX Runtime and
// run on the validation rows (batched, and at batch 1 on the first rows), its
// accuracy compared with the manifest's, and timed at batch 1 and 32. It
// prints the table to o.Stdout. Errors wrap ErrCheck and say what is wrong.
//
// The gateway serves an application without an estimator, a validation split
// or a samples file, and so does Check: an application with no estimator, or
// whose manifest does not name a split or names one that is missing, gets a
// warning (CheckReport.Warnings, printed) that says what serving loses; without
// the split the variants run on the samples instead, else on random rows in the
// input range, where no accuracy is measured.
func Check(ctx context.Context, dir string, o CheckOptions) (rep *CheckReport, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("app check: internal error: %v\n%s", r, debug.Stack())
		}
	}()
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.LatencyBudget <= 0 {
		o.LatencyBudget = 300 * time.Millisecond
	}
	path := dir
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		path = filepath.Join(dir, "manifest.yaml")
	} else if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCheck, err)
	}
	app, err := manifest.Load(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCheck, err)
	}
	k := app.K()
	rep = &CheckReport{App: app}
	ests := make([]sneakpeek.Estimator, len(app.Estimators))
	for i, e := range app.Estimators {
		if ests[i], err = sneakpeek.Load(app, e); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCheck, path, err) // names the estimator, the app and the file
		}
	}
	if len(app.Estimators) == 0 {
		rep.Warnings = append(rep.Warnings, noEstimator)
	}
	if _, err := sneakpeek.LoadDifficulty(app); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCheck, path, err) // names the difficulty model, the app and the file
	}
	// The gateway serves without a validation split or samples file (it never
	// reads the samples; buildApp and shift.go serve without the split), so
	// neither is an error here when it is absent: a warning says what serving
	// loses. A file that is there but does not fit is an error.
	var val, samples *dataset.Set
	if app.Validation == nil {
		rep.Warnings = append(rep.Warnings, "the manifest names no validation split; "+noValidationSplit)
	} else if val, err = readFitting(app, "validation", app.Validation); errors.Is(err, fs.ErrNotExist) {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("validation split %s: no such file; %s", app.Path(app.Validation.File), missingValidationSplit))
	} else if err != nil {
		return nil, err
	}
	if app.Samples != nil {
		if samples, err = readFitting(app, "samples", app.Samples); errors.Is(err, fs.ErrNotExist) {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("samples %s: no such file; the gateway does not read it, but sneakgate devsim, eval and bench replay it and fail without it", app.Path(app.Samples.File)))
		} else if err != nil {
			return nil, err
		}
	}
	rows, full := val, val != nil
	rep.RowsFrom = "validation"
	if rows == nil {
		rows, rep.RowsFrom = samples, "samples"
	}
	if rows == nil || rows.N == 0 {
		rows, rep.RowsFrom = randomRows(app, checkRandomRows), "random"
	}
	cut := o.Rows > 0 && o.Rows < rows.N
	if cut {
		rows = &dataset.Set{N: o.Rows, D: rows.D, Values: rows.Values[:o.Rows*rows.D], Labels: rows.Labels[:min(o.Rows, len(rows.Labels))]}
		full = false
	}
	rep.Rows = rows.N
	s := &split{name: rep.RowsFrom, n: rows.N, d: rows.D, x: rows.Values, labels: rows.Labels}

	eng, err := newEngine(o.Library)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCheck, err)
	}
	defer eng.Close()
	if err := eng.Register(app); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCheck, err)
	}
	var bad []string
	for _, v := range app.Variants {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		id := engine.VariantID{App: app.Name, Variant: v.Name}
		r, err := checkVariant(eng, id, s, k, o)
		if _, uerr := eng.Unload(id); err == nil {
			err = uerr
		}
		if err != nil {
			return nil, fmt.Errorf("%w: variant %s (%s): %w", ErrCheck, v.Name, app.Path(v.File), err)
		}
		r.Kind = v.Output.Kind
		if full && math.Abs(r.Accuracy-v.Accuracy) > checkVariantTol {
			bad = append(bad, fmt.Sprintf("variant %s: accuracy %.4f on the %d validation rows, the manifest says %.4f",
				v.Name, r.Accuracy, rows.N, v.Accuracy))
		}
		rep.Variants = append(rep.Variants, r)
	}
	for i, e := range app.Estimators {
		if s.labels == nil {
			break // random rows: nothing to measure the estimators against
		}
		probs := make([][]float64, s.n)
		for r := range probs {
			probs[r] = make([]float64, k)
			ests[i].Estimate(s.row(r), probs[r])
		}
		acc, ece := accuracyECE(probs, s.labels)
		rep.Estimators = append(rep.Estimators, estimatorResult{Name: e.Name, Kind: e.Kind, Features: e.Features, K: e.K,
			Accuracy: acc, ECE: ece, CostUS: e.CostUS})
		if full && math.Abs(acc-e.Accuracy) > checkEstimatorTol {
			bad = append(bad, fmt.Sprintf("estimator %s: accuracy %.4f on the %d validation rows, the manifest says %.4f",
				e.Name, acc, rows.N, e.Accuracy))
		}
	}
	printCheck(o.Stdout, rep, full, cut)
	if len(bad) > 0 {
		return rep, fmt.Errorf("%w: %s: %s", ErrCheck, path, strings.Join(bad, "; "))
	}
	return rep, nil
}

// What the gateway serves without when an application has no estimator
// (gateway: buildApp leaves the estimate nil; ingress estimate, the
// scheduler's Prepare and degrade, admission's Refuses, degradeRefused).
const noEstimator = "the manifest names no estimator; the gateway serves it, but without a per-request estimate: " +
	"the data-aware policies value every request of it alike, by the variants' profiled utility under the manifest's prior, " +
	"and none is answered from an estimate (degraded): one that no variant can answer in time, or that is shed under overload, " +
	"expires instead, admission.degrade_refused does not apply to it, and admission.max_wait refuses a request that no choice of variants " +
	"could answer in time; the label-shift correction (apps[].label_shift: true refuses to start), answers from the estimate " +
	"(scheduler.estimate_answers), the per-sample difficulty model and the estimate monitor (sneakgate_estimate_* metrics) are off"

// What the gateway serves without when an application has no validation split
// (gateway: buildApp and shiftStart, measureCascade, measurePeek): the manifest
// names none, or it names a file that is missing.
const (
	noValidationSplit = "the gateway serves it, but the label-shift correction (apps[].label_shift) starts from the manifest's prior " +
		"instead of the estimator's mean output on the split, answers from the estimate (scheduler.estimate_answers) are off, " +
		"scheduler.policy cascade runs every request on the most accurate variant (no curve to escalate by), " +
		"scheduler.peek does not peek the application, and the accuracies here are not compared with the manifest's"
	missingValidationSplit = "the gateway serves it, but the label-shift correction is off with a warning (apps[].label_shift: true refuses to start), " +
		"and with it answers from the estimate (scheduler.estimate_answers); scheduler.policy cascade and scheduler.peek " +
		"on this application refuse to start (their curves are measured on the split); the accuracies here are not compared with the manifest's"
)

// randomRows returns n unlabelled rows of values drawn uniformly from app's
// input_range ([0, 1] without one), as the engine's profile draws them: what
// Check runs the variants on when the application has no rows of its own.
func randomRows(app *manifest.App, n int) *dataset.Set {
	lo, hi := 0.0, 1.0
	if r := app.InputRange; r != nil {
		lo, hi = r[0], r[1]
	}
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, n*app.InputSize)
	for i := range x {
		x[i] = float32(lo + (hi-lo)*rng.Float64())
	}
	return &dataset.Set{N: n, D: app.InputSize, Values: x}
}

// readFitting reads a sample file of app and checks it fits the manifest.
func readFitting(app *manifest.App, field string, s *manifest.Samples) (*dataset.Set, error) {
	set, err := dataset.Read(app.Path(s.File))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCheck, field, err)
	}
	where := fmt.Sprintf("%s (%s)", field, app.Path(s.File))
	switch {
	case set.D != app.InputSize:
		return nil, fmt.Errorf("%w: %s: %d values per row, input_size is %d", ErrCheck, where, set.D, app.InputSize)
	case set.N != s.Count:
		return nil, fmt.Errorf("%w: %s: %d rows, the manifest's count is %d", ErrCheck, where, set.N, s.Count)
	}
	for i, y := range set.Labels {
		if y < 0 || int(y) >= app.K() {
			return nil, fmt.Errorf("%w: %s: row %d has label %d, outside [0, %d)", ErrCheck, where, i, y, app.K())
		}
	}
	for i, v := range set.Values {
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%w: %s: row %d has a non-finite value", ErrCheck, where, i/set.D)
		}
		if r := app.InputRange; r != nil && (f < r[0] || f > r[1]) {
			return nil, fmt.Errorf("%w: %s: row %d, value %d is %v, outside input_range %v", ErrCheck, where, i/set.D, i%set.D, v, *r)
		}
	}
	return set, nil
}

// checkVariant loads a registered variant and runs it over s.
func checkVariant(eng *engine.Engine, id engine.VariantID, s *split, k int, o CheckOptions) (variantResult, error) {
	r := variantResult{Name: id.Variant}
	if _, err := eng.Load(id); err != nil {
		return r, err
	}
	dists, err := runAll(eng, id, s)
	if err != nil {
		return r, err
	}
	for i := 0; i < min(8, s.n); i++ {
		one, err := eng.Run(id, [][]float32{s.row(i)})
		if err != nil {
			return r, err
		}
		for c, v := range one[0] {
			r.MaxBatchDiff = max(r.MaxBatchDiff, math.Abs(v-dists[i][c]))
		}
	}
	if r.MaxBatchDiff > 1e-3 {
		return r, fmt.Errorf("outputs at batch 1 and batch %d differ by %.3g on the same rows", runBatch, r.MaxBatchDiff)
	}
	r.Confusion = zeros(k)
	correct := 0
	for i, p := range dists {
		sum := 0.0
		for _, v := range p {
			if !(v >= -1e-6) || math.IsInf(v, 0) {
				return r, fmt.Errorf("row %d: the class distribution %v is not one", i, p)
			}
			sum += v
		}
		if math.Abs(sum-1) > 1e-3 {
			return r, fmt.Errorf("row %d: the class distribution sums to %v (is output kind %q right?)", i, sum, "probabilities")
		}
		if s.labels == nil {
			continue // random rows
		}
		yhat, y := sneakpeek.Argmax(p), int(s.labels[i])
		r.Confusion[y][yhat]++
		if yhat == y {
			correct++
		}
	}
	if s.labels != nil {
		r.Accuracy = float64(correct) / float64(s.n)
		r.Recall = recall(r.Confusion)
	}
	if !o.NoLatency {
		r.USBatch1 = timeRuns(eng, id, s, 1, o.LatencyBudget)
		r.USPerSample32 = timeRuns(eng, id, s, 32, o.LatencyBudget) / 32
	}
	return r, nil
}
