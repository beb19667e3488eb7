// Command measure checks every variant of the bundled applications against ONNX
// Runtime and measures the cost of their SneakPeek estimators.
//
// For each application directory given (e.g. models/fashion) it loads the
// manifest, feeds every variant exactly as the manifest's inputs describe (data
// slice, zeros, const) over the validation split (data/validation.sgs) in batches
// of 64, records the ORT accuracy, confusion and recall and checks the accuracy
// against the manifest's (within -tol; skipped while the manifest's confusion is
// still all zero, as for vad before its first render), checks that batch-1 and
// batch-64 outputs agree, times batch-1 and batch-32 runs (one intra-op thread,
// first quartile), benchmarks each estimator's Estimate (best of five), and writes
// measured.json beside the manifest. models/train/common.py (render) copies the
// estimator costs into the manifest as cost_us, and for variants marked so in
// spec.json (vad) the ORT metrics.
//
// Usage: go run ./models/tools/measure [-tol 0.002] models/fashion models/satellite ...
// The ONNX Runtime library is $SNEAKGATE_ORT_LIB (default: the copy under /tmp/ort).
// It exits with status 1 when a check fails.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

const defaultLib = "/tmp/ort/package/bin/napi-v6/linux/x64/libonnxruntime.so.1"

type variantResult struct {
	ORTAccuracy      float64     `json:"ort_accuracy"`
	Confusion        [][]float64 `json:"confusion"`
	Recall           []float64   `json:"recall"`
	ManifestAccuracy float64     `json:"manifest_accuracy"`
	MaxBatchDiff     float64     `json:"max_batch_diff"`
	USBatch1         float64     `json:"us_batch1"`
	USPerSample32    float64     `json:"us_per_sample_batch32"`
}

type estimatorResult struct {
	CostUS        float64 `json:"cost_us"`
	RelCheapest   float64 `json:"relative_to_cheapest_variant"`
	CheapestName  string  `json:"cheapest_variant"`
	AllocsPerCall int64   `json:"allocs_per_call"`
}

type result struct {
	Note       string                     `json:"note"`
	Variants   map[string]variantResult   `json:"variants"`
	Estimators map[string]estimatorResult `json:"estimators"`
}

func main() {
	tol := flag.Float64("tol", 0.002, "allowed |ORT accuracy - manifest accuracy|")
	flag.Parse()
	lib := os.Getenv("SNEAKGATE_ORT_LIB")
	if lib == "" {
		lib = defaultLib
	}
	ort.SetSharedLibraryPath(lib)
	if err := ort.InitializeEnvironment(); err != nil {
		fatal("onnxruntime: %v", err)
	}
	defer ort.DestroyEnvironment()
	failed := false
	for _, dir := range flag.Args() {
		if err := measure(dir, *tol); err != nil {
			fmt.Fprintf(os.Stderr, "measure %s: %v\n", dir, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "measure: "+format+"\n", args...)
	os.Exit(1)
}

func measure(dir string, tol float64) error {
	app, err := manifest.Load(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		return err
	}
	val, err := dataset.Read(filepath.Join(dir, "data", "validation.sgs"))
	if err != nil {
		return err
	}
	res := result{Note: "offline measurement on this machine, one intra-op thread; informational",
		Variants: map[string]variantResult{}, Estimators: map[string]estimatorResult{}}
	cheapest, cheapestUS := "", math.Inf(1)
	var bad []string
	for i := range app.Variants {
		v := &app.Variants[i]
		r, err := checkVariant(app, v, val)
		if err != nil {
			return fmt.Errorf("variant %s: %w", v.Name, err)
		}
		res.Variants[v.Name] = r
		fmt.Printf("%s/%s: ORT accuracy %.4f (manifest %.4f), batch diff %.2g, %.1f us at batch 1, %.1f us/sample at batch 32\n",
			app.Name, v.Name, r.ORTAccuracy, v.Accuracy, r.MaxBatchDiff, r.USBatch1, r.USPerSample32)
		if measured(v) && math.Abs(r.ORTAccuracy-v.Accuracy) > tol {
			bad = append(bad, fmt.Sprintf("%s: ORT accuracy %.4f, manifest %.4f", v.Name, r.ORTAccuracy, v.Accuracy))
		}
		if r.MaxBatchDiff > 1e-3 {
			bad = append(bad, fmt.Sprintf("%s: batch-1 and batched outputs differ by %g", v.Name, r.MaxBatchDiff))
		}
		if r.USBatch1 < cheapestUS {
			cheapest, cheapestUS = v.Name, r.USBatch1
		}
	}
	for _, e := range app.Estimators {
		est, err := sneakpeek.Load(app, e)
		if err != nil {
			return err
		}
		p := make([]float64, app.K())
		// The best of five benchmark runs: the machine may be shared.
		var br testing.BenchmarkResult
		us := math.Inf(1)
		for range 5 {
			r := testing.Benchmark(func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					est.Estimate(val.Row(i%val.N), p)
				}
			})
			if t := float64(r.NsPerOp()) / 1e3; t < us {
				us, br = t, r
			}
		}
		res.Estimators[e.Name] = estimatorResult{CostUS: us, RelCheapest: us / cheapestUS,
			CheapestName: cheapest, AllocsPerCall: br.AllocsPerOp()}
		fmt.Printf("%s/estimator %s: %.2f us per request (%.2fx %s at batch 1), %d allocs\n",
			app.Name, e.Name, us, us/cheapestUS, cheapest, br.AllocsPerOp())
	}
	b, _ := json.MarshalIndent(res, "", " ")
	if err := os.WriteFile(filepath.Join(dir, "measured.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("checks failed:\n  %s", joinLines(bad))
	}
	return nil
}

// measured reports whether the manifest already holds the variant's validation
// metrics (a first build of the vad app leaves them zero until this tool runs).
func measured(v *manifest.Variant) bool {
	for _, row := range v.Confusion {
		for _, c := range row {
			if c != 0 {
				return true
			}
		}
	}
	return false
}

func joinLines(s []string) string {
	out := ""
	for i, l := range s {
		if i > 0 {
			out += "\n  "
		}
		out += l
	}
	return out
}

// runner runs one variant on batches of request inputs, following the manifest's
// description of the model's inputs.
type runner struct {
	app  *manifest.App
	v    *manifest.Variant
	sess *ort.DynamicAdvancedSession
}

func newRunner(app *manifest.App, v *manifest.Variant) (*runner, error) {
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	if err := opts.SetIntraOpNumThreads(1); err != nil {
		return nil, err
	}
	if err := opts.SetInterOpNumThreads(1); err != nil {
		return nil, err
	}
	var names []string
	for _, in := range v.Inputs {
		names = append(names, in.Name)
	}
	s, err := ort.NewDynamicAdvancedSession(app.Path(v.File), names, []string{v.Output.Name}, opts)
	if err != nil {
		return nil, err
	}
	return &runner{app: app, v: v, sess: s}, nil
}

func batchShape(shape []int64, b int) ort.Shape {
	s := make(ort.Shape, len(shape))
	for i, d := range shape {
		if d == -1 {
			d = int64(b)
		}
		s[i] = d
	}
	return s
}

// run returns, for each of the rows, the class distribution (K values).
func (r *runner) run(rows [][]float32) ([][]float64, error) {
	b := len(rows)
	var vals []ort.Value
	defer func() {
		for _, v := range vals {
			v.Destroy()
		}
	}()
	for _, in := range r.v.Inputs {
		shape := batchShape(in.Shape, b)
		var val ort.Value
		var err error
		switch in.Kind {
		case "data":
			n := in.Length
			if n == 0 {
				n = r.app.InputSize - in.Offset
			}
			data := make([]float32, 0, b*n)
			for _, row := range rows {
				data = append(data, row[in.Offset:in.Offset+n]...)
			}
			val, err = ort.NewTensor(shape, data)
		case "zeros", "const":
			fill := 0.0
			if in.Kind == "const" {
				fill = in.Value
			}
			if in.DType == "int64" {
				if len(shape) == 0 {
					val, err = ort.NewScalar(int64(fill))
				} else {
					d := make([]int64, shape.FlattenedSize())
					for i := range d {
						d[i] = int64(fill)
					}
					val, err = ort.NewTensor(shape, d)
				}
			} else {
				if len(shape) == 0 {
					val, err = ort.NewScalar(float32(fill))
				} else {
					d := make([]float32, shape.FlattenedSize())
					for i := range d {
						d[i] = float32(fill)
					}
					val, err = ort.NewTensor(shape, d)
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("input %s: %w", in.Name, err)
		}
		vals = append(vals, val)
	}
	outs := []ort.Value{nil}
	if err := r.sess.Run(vals, outs); err != nil {
		return nil, err
	}
	defer outs[0].Destroy()
	t, ok := outs[0].(*ort.Tensor[float32])
	if !ok {
		return nil, fmt.Errorf("output %s is %T, want float32 tensor", r.v.Output.Name, outs[0])
	}
	data := t.GetData()
	k := r.app.K()
	per := len(data) / b
	if len(data)%b != 0 {
		return nil, fmt.Errorf("output has %d values for batch %d", len(data), b)
	}
	out := make([][]float64, b)
	for i := range out {
		o := data[i*per : (i+1)*per]
		p := make([]float64, k)
		switch r.v.Output.Kind {
		case "score":
			if per != 1 {
				return nil, fmt.Errorf("score output has %d values per sample", per)
			}
			p[0], p[1] = 1-float64(o[0]), float64(o[0])
		case "probabilities":
			if per != k {
				return nil, fmt.Errorf("output has %d values per sample, want %d", per, k)
			}
			for y := range p {
				p[y] = float64(o[y])
			}
		case "logits":
			if per != k {
				return nil, fmt.Errorf("output has %d values per sample, want %d", per, k)
			}
			m := math.Inf(-1)
			for _, z := range o {
				m = max(m, float64(z))
			}
			s := 0.0
			for y := range p {
				p[y] = math.Exp(float64(o[y]) - m)
				s += p[y]
			}
			for y := range p {
				p[y] /= s
			}
		}
		out[i] = p
	}
	return out, nil
}

func checkVariant(app *manifest.App, v *manifest.Variant, val *dataset.Set) (variantResult, error) {
	r, err := newRunner(app, v)
	if err != nil {
		return variantResult{}, err
	}
	defer r.sess.Destroy()
	var res variantResult
	res.ManifestAccuracy = v.Accuracy
	k := app.K()
	res.Confusion = make([][]float64, k)
	for y := range res.Confusion {
		res.Confusion[y] = make([]float64, k)
	}
	correct := 0
	const bs = 64
	for s := 0; s < val.N; s += bs {
		var rows [][]float32
		for i := s; i < min(s+bs, val.N); i++ {
			rows = append(rows, val.Row(i))
		}
		ps, err := r.run(rows)
		if err != nil {
			return res, err
		}
		for j, p := range ps {
			yhat, y := sneakpeek.Argmax(p), int(val.Labels[s+j])
			if yhat < 0 {
				return res, fmt.Errorf("%s: no class distribution (NaN) for validation row %d", v.Name, s+j)
			}
			res.Confusion[y][yhat]++
			if yhat == y {
				correct++
			}
			if s == 0 && j < 8 { // batch-1 agreement on the first rows
				p1, err := r.run(rows[j : j+1])
				if err != nil {
					return res, err
				}
				for y := range p {
					res.MaxBatchDiff = max(res.MaxBatchDiff, math.Abs(p[y]-p1[0][y]))
				}
			}
		}
	}
	res.ORTAccuracy = float64(correct) / float64(val.N)
	res.Recall = make([]float64, k)
	for y, row := range res.Confusion {
		tot := 0.0
		for _, c := range row {
			tot += c
		}
		if tot > 0 {
			res.Recall[y] = row[y] / tot
		}
	}
	res.USBatch1 = timeRuns(r, val, 1)
	res.USPerSample32 = timeRuns(r, val, 32) / 32
	return res, nil
}

// timeRuns returns the first quartile of the wall time of one run at batch size b,
// in µs (a low quantile, as the machine may be shared).
func timeRuns(r *runner, val *dataset.Set, b int) float64 {
	rows := make([][]float32, b)
	for i := range rows {
		rows[i] = val.Row(i % val.N)
	}
	var ts []float64
	deadline := time.Now().Add(time.Second)
	for n := 0; n < 2000 && (n < 20 || time.Now().Before(deadline)); n++ {
		t0 := time.Now()
		if _, err := r.run(rows); err != nil {
			return math.NaN()
		}
		ts = append(ts, float64(time.Since(t0).Nanoseconds())/1e3)
	}
	sort.Float64s(ts)
	return ts[len(ts)/4]
}
