package appbuild

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// strengthGrid is the Dirichlet prior masses tried for the kNN estimator (as
// models/train/common.py, choose_prior_strength).
var strengthGrid = []float64{0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 10, 15, 20}

// maxCalibration bounds the training rows used to choose the kNN prior strength.
const maxCalibration = 10000

// estimatorResult is what the build measured of one estimator.
type estimatorResult struct {
	Name, Kind, Features string
	K                    int
	Dim                  int
	Accuracy, ECE        float64
	CostUS               float64
	Allocs               int64
	// PriorStrength is the chosen Dirichlet prior mass (kNN only).
	PriorStrength float64
	// RefRows and CalRows are the kNN reference and calibration row counts;
	// refIdx the training rows in the reference set.
	RefRows, CalRows int
	refIdx           []int
}

// DefaultFeatures returns the feature transform the build gives its default
// estimators for inputs of d values laid out as shape: for a 2-D image (after
// dropping axes of size 1) of more than 256 values, "avgpool:H:W:S" with the
// smallest S dividing H and W that leaves at most 64 features (28x28 gives
// avgpool:28:28:4, 49 features, as the bundled fashion app); else "identity".
func DefaultFeatures(shape []int, d int) string {
	var dims []int
	for _, x := range shape {
		if x != 1 {
			dims = append(dims, x)
		}
	}
	if len(dims) == 2 && dims[0]*dims[1] == d && d > 256 {
		h, w := dims[0], dims[1]
		for s := 2; s <= min(h, w); s++ {
			if h%s == 0 && w%s == 0 && (h/s)*(w/s) <= 64 {
				return fmt.Sprintf("avgpool:%d:%d:%d", h, w, s)
			}
		}
	}
	return "identity"
}

// defaultEstimators are the estimators trained when the base spec lists none.
func defaultEstimators(features string, k int) []manifest.Estimator {
	return []manifest.Estimator{
		{Name: "logistic", Kind: "logistic", Features: features},
		{Name: "knn", Kind: "knn", Features: features, K: k},
	}
}

// featurize applies f to every row of s.
func featurize(f sneakpeek.Features, s *split, idx []int) []float32 {
	d := f.Dim()
	out := make([]float32, len(idx)*d)
	for j, i := range idx {
		f.Apply(s.row(i), out[j*d:(j+1)*d])
	}
	return out
}

func allRows(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// trainEstimators trains each estimator of app (files under app.Dir) on the
// training split, sets app.PriorStrength from the first kNN estimator, and
// returns per-estimator training details. app.Prior must be set.
func trainEstimators(ctx context.Context, o *Options, app *manifest.App, train *split, knnRef int) ([]estimatorResult, error) {
	if err := os.MkdirAll(filepath.Join(app.Dir, "est"), 0o755); err != nil {
		return nil, err
	}
	k := app.K()
	var res []estimatorResult
	strengthSet := false
	for i := range app.Estimators {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		e := &app.Estimators[i]
		f, err := sneakpeek.ParseFeatures(e.Features, app.InputSize)
		if err != nil {
			return nil, fmt.Errorf("%w: estimator %s: %v", ErrUsage, e.Name, err)
		}
		r := estimatorResult{Name: e.Name, Kind: e.Kind, Features: e.Features, K: e.K, Dim: f.Dim()}
		if e.File == "" || (e.Kind == "knn" && e.K <= 0) {
			return nil, fmt.Errorf("estimator %s: no file or k (a bug)", e.Name)
		}
		fmt.Fprintf(o.Log, "training estimator %s (%s on %s, %d features) on %d training rows\n", e.Name, e.Kind, e.Features, f.Dim(), train.n)
		switch e.Kind {
		case "logistic":
			feats := featurize(f, train, allRows(train.n))
			params, err := FitLogistic(feats, train.n, f.Dim(), train.labels, k, logisticFit{C: 1})
			if err != nil {
				return nil, fmt.Errorf("estimator %s: %w", e.Name, err)
			}
			b, err := json.Marshal(params)
			if err != nil {
				return nil, err
			}
			if err := os.WriteFile(app.Path(e.File), b, 0o644); err != nil {
				return nil, err
			}
		case "knn":
			s, err := trainKNN(o, app, e, f, train, knnRef)
			if err != nil {
				return nil, fmt.Errorf("estimator %s: %w", e.Name, err)
			}
			r.PriorStrength, r.RefRows, r.CalRows, r.refIdx = s.strength, len(s.refIdx), s.cal, s.refIdx
			if !strengthSet {
				app.PriorStrength, strengthSet = s.strength, true
			}
		default:
			return nil, fmt.Errorf("%w: estimator %s: kind %q: the build trains logistic and knn", ErrUsage, e.Name, e.Kind)
		}
		res = append(res, r)
	}
	return res, nil
}

type knnTraining struct {
	strength float64
	refIdx   []int
	cal      int
}

// trainKNN writes the reference set (a stratified subset of the training rows,
// leaving at least a fifth of them) and chooses the prior strength by the
// negative log-likelihood of the other training rows.
func trainKNN(o *Options, app *manifest.App, e *manifest.Estimator, f sneakpeek.Features, train *split, knnRef int) (knnTraining, error) {
	n := train.n
	nref := min(knnRef, n-max(n/5, 1))
	if nref < e.K || n-nref < 1 {
		return knnTraining{}, fmt.Errorf("%w: %d training rows are too few for a %d-neighbour reference set and calibration rows",
			ErrData, n, e.K)
	}
	if e.K > 64 {
		return knnTraining{}, fmt.Errorf("%w: k = %d: at most 64 neighbours", ErrUsage, e.K)
	}
	k := app.K()
	refIdx, rest := stratified(train.labels, k, nref, o.Seed)
	ref := &dataset.Set{N: len(refIdx), D: f.Dim(), Values: featurize(f, train, refIdx), Labels: make([]int32, len(refIdx))}
	for j, i := range refIdx {
		ref.Labels[j] = train.labels[i]
	}
	if err := dataset.Write(app.Path(e.File), ref, false); err != nil {
		return knnTraining{}, err
	}
	cal := rest
	if len(cal) > maxCalibration {
		restLabels := make([]int32, len(rest))
		for j, i := range rest {
			restLabels[j] = train.labels[i]
		}
		pick, _ := stratified(restLabels, k, maxCalibration, o.Seed+1)
		cal = make([]int, len(pick))
		for j, p := range pick {
			cal[j] = rest[p]
		}
	}
	// Vote counts: a kNN with no prior returns votes / k.
	votes, err := sneakpeek.NewKNN(e.Name, f, ref, e.K, make([]float64, k))
	if err != nil {
		return knnTraining{}, err
	}
	counts := make([][]float64, len(cal))
	p := make([]float64, k)
	for j, i := range cal {
		votes.Estimate(train.row(i), p)
		counts[j] = make([]float64, k)
		for c := range p {
			counts[j][c] = math.Round(p[c] * float64(e.K))
		}
	}
	best, bestNLL := strengthGrid[0], math.Inf(1)
	for _, s := range strengthGrid {
		nll := 0.0
		for j, i := range cal {
			y := train.labels[i]
			nll -= math.Log((counts[j][y] + app.Prior[y]*s) / (float64(e.K) + s))
		}
		if nll < bestNLL {
			best, bestNLL = s, nll
		}
	}
	return knnTraining{strength: best, refIdx: refIdx, cal: len(cal)}, nil
}

// evaluateEstimators loads each estimator of app as the gateway does and
// measures its accuracy and ECE on the validation split and its cost per
// request (testing.Benchmark, best of runs).
func evaluateEstimators(ctx context.Context, app *manifest.App, val *split, res []estimatorResult, runs int) error {
	k := app.K()
	for i, e := range app.Estimators {
		if err := ctx.Err(); err != nil {
			return err
		}
		est, err := sneakpeek.Load(app, e)
		if err != nil {
			return fmt.Errorf("estimator %s does not load: %w", e.Name, err)
		}
		probs := make([][]float64, val.n)
		for r := 0; r < val.n; r++ {
			probs[r] = make([]float64, k)
			est.Estimate(val.row(r), probs[r])
		}
		res[i].Accuracy, res[i].ECE = accuracyECE(probs, val.labels)
		res[i].CostUS, res[i].Allocs = benchEstimator(est, val, k, runs)
	}
	return nil
}

func benchEstimator(est sneakpeek.Estimator, val *split, k, runs int) (float64, int64) {
	p := make([]float64, k)
	return benchLoop(func(i int) { est.Estimate(val.row(i%val.n), p) }, runs)
}

// benchLoop returns the cost of one call of f in µs and its allocations, the
// best of runs testing.Benchmark runs.
func benchLoop(f func(i int), runs int) (float64, int64) {
	us, allocs := math.Inf(1), int64(0)
	for range max(runs, 1) {
		r := testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				f(i)
			}
		})
		if t := float64(r.T.Nanoseconds()) / float64(max(r.N, 1)) / 1e3; t < us {
			us, allocs = t, r.AllocsPerOp()
		}
	}
	return us, allocs
}

// accuracyECE returns the top-class accuracy and the expected calibration
// error: 15 equal-width bins of the top-class confidence (the first bin closed
// at 0, the others (lo, hi]), as models/train/common.py (ece).
func accuracyECE(probs [][]float64, y []int32) (acc, ece float64) {
	const bins = 15
	var cnt [bins]int
	var sumConf, sumCorrect [bins]float64
	correct := 0
	for i, p := range probs {
		top := sneakpeek.Argmax(p)
		conf := 0.0 // no distribution (all NaN): wrong, with no confidence
		if top >= 0 {
			conf = p[top]
		}
		ok := 0.0
		if int32(top) == y[i] {
			correct++
			ok = 1
		}
		b := int(math.Ceil(conf*bins)) - 1
		b = min(max(b, 0), bins-1)
		// Align with the edges np.linspace(0, 1, 16) draws.
		for b > 0 && conf <= float64(b)/bins {
			b--
		}
		for b < bins-1 && conf > float64(b+1)/bins {
			b++
		}
		cnt[b]++
		sumConf[b] += conf
		sumCorrect[b] += ok
	}
	n := float64(len(probs))
	for b := range bins {
		if cnt[b] > 0 {
			c := float64(cnt[b])
			ece += c / n * math.Abs(sumCorrect[b]/c-sumConf[b]/c)
		}
	}
	return float64(correct) / n, ece
}

// chooseDefault returns the index of the default estimator: the best calibrated
// (lowest ECE), or among those within 0.01 ECE of it the cheapest; and the
// reason, for the report.
func chooseDefault(res []estimatorResult) (int, string) {
	if len(res) == 0 {
		return -1, ""
	}
	best := 0
	for i, r := range res {
		if r.ECE < res[best].ECE {
			best = i
		}
	}
	pick := best
	for i, r := range res {
		if r.ECE <= res[best].ECE+0.01 && r.CostUS < res[pick].CostUS {
			pick = i
		}
	}
	var why string
	switch {
	case len(res) == 1:
		why = "the only estimator"
	case pick == best:
		others := slices.Delete(slices.Clone(res), pick, pick+1)
		why = fmt.Sprintf("best calibrated (ECE %.4f, next %.4f) and %s", res[pick].ECE, minECE(others), cheaperWord(res, pick))
	default:
		why = fmt.Sprintf("calibrated within 0.01 of the best (ECE %.4f vs %.4f) and cheaper (%.2f vs %.2f us per request)",
			res[pick].ECE, res[best].ECE, res[pick].CostUS, res[best].CostUS)
	}
	return pick, why
}

func minECE(rs []estimatorResult) float64 {
	m := math.Inf(1)
	for _, r := range rs {
		m = min(m, r.ECE)
	}
	return m
}

func cheaperWord(res []estimatorResult, pick int) string {
	for i, r := range res {
		if i != pick && r.CostUS < res[pick].CostUS {
			return fmt.Sprintf("not the cheapest (%.2f us per request; %s costs %.2f)", res[pick].CostUS, r.Name, r.CostUS)
		}
	}
	return fmt.Sprintf("the cheapest (%.2f us per request)", res[pick].CostUS)
}
