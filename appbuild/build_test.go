package appbuild

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// satData is the satellite application's real data as a user would bring it:
// the training rows (the 1,000 raw Landsat rows of the committed kNN reference
// set, identity features), the validation split and the test split
// (samples.sgs), exported to .npy and .npz files.
type satData struct {
	dir                string
	app                *manifest.App
	train, val, test   *dataset.Set
	xTrain, yTrain     string // uint8 X, int64 y
	xVal, yVal         string // float32 X, int32 y
	testNPZ            string // X and y in one archive
	linear, mlpSmall   string // the committed variants
	utility            string // the satellite utility matrix as a -utility file
	trainSpec, valSpec string
	testSpec           string
	labels             []string
	inputRange         *[2]float64
}

func readSet(t testing.TB, p string) *dataset.Set {
	t.Helper()
	s, err := dataset.Read(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeArray(t testing.TB, p string, shape []int, data any) string {
	t.Helper()
	a, err := dataset.NewArray(shape, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := dataset.WriteNPY(p, a); err != nil {
		t.Fatal(err)
	}
	return p
}

func labels64(s *dataset.Set) []int64 {
	out := make([]int64, s.N)
	for i, y := range s.Labels {
		out[i] = int64(y)
	}
	return out
}

func newSatData(t testing.TB) *satData {
	t.Helper()
	app, err := manifest.Load("../models/satellite/manifest.yaml")
	if err != nil {
		t.Skipf("the satellite app is not there: %v", err)
	}
	d := &satData{dir: t.TempDir(), app: app, labels: app.Labels, inputRange: app.InputRange}
	d.train = readSet(t, app.Path(app.Estimators[1].File))
	if app.Estimators[1].Features != "identity" || d.train.D != app.InputSize {
		t.Fatalf("the satellite kNN reference set is no longer raw rows (%s)", app.Estimators[1].Features)
	}
	d.val = readSet(t, app.Path(app.Validation.File))
	d.test = readSet(t, app.Path(app.Samples.File))
	u8 := make([]uint8, len(d.train.Values))
	for i, v := range d.train.Values {
		if v != float32(math.Round(float64(v))) || v < 0 || v > 255 {
			t.Fatalf("training value %v is not a byte", v)
		}
		u8[i] = uint8(v)
	}
	p := func(n string) string { return filepath.Join(d.dir, n) }
	d.xTrain = writeArray(t, p("X_train.npy"), []int{d.train.N, d.train.D}, u8)
	d.yTrain = writeArray(t, p("y_train.npy"), []int{d.train.N}, labels64(d.train))
	d.xVal = writeArray(t, p("X_val.npy"), []int{d.val.N, d.val.D}, d.val.Values)
	d.yVal = writeArray(t, p("y_val.npy"), []int{d.val.N}, d.val.Labels)
	x, _ := dataset.NewArray([]int{d.test.N, 3, 3, 4}, d.test.Values)
	y, _ := dataset.NewArray([]int{d.test.N}, labels64(d.test))
	d.testNPZ = writeZip(t, p("test.npz"), map[string][]byte{"X.npy": x.EncodeNPY(), "y.npy": y.EncodeNPY()})
	d.linear, _ = filepath.Abs(app.Path(app.Variant("linear").File))
	d.mlpSmall, _ = filepath.Abs(app.Path(app.Variant("mlp-small").File))
	b, _ := yaml.Marshal(map[string]any{"utility": app.Utility})
	d.utility = p("utility.yaml")
	os.WriteFile(d.utility, b, 0o644)
	d.trainSpec, d.valSpec, d.testSpec = d.xTrain+","+d.yTrain, d.xVal+","+d.yVal, d.testNPZ
	return d
}

// options returns build options for the satellite data with the two variants.
func (d *satData) options(t testing.TB, out string) Options {
	return Options{Name: "sat", Out: out,
		Variants: []VariantArg{{"linear", d.linear}, {"mlp-small", d.mlpSmall}},
		Train:    d.trainSpec, Validation: d.valSpec, Test: d.testSpec,
		Labels: d.labels, UtilityFile: d.utility, Deadline: 100 * time.Millisecond, InputRange: d.inputRange,
		Library: testenv.ORTLib(t), LatencyBudget: 20 * time.Millisecond, BenchRuns: 1}
}

func TestBuildSatellite(t *testing.T) {
	d := newSatData(t)
	out := filepath.Join(t.TempDir(), "apps", "sat")
	var stdout bytes.Buffer
	o := d.options(t, out)
	o.Stdout = &stdout
	t0 := time.Now()
	res, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("build took %v:\n%s", time.Since(t0).Round(time.Millisecond), stdout.String())

	app, err := manifest.Load(filepath.Join(out, "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if app.K() != 6 || app.InputSize != 36 || app.DefaultDeadlineMS != 100 || !slices.Equal(app.Labels, d.labels) ||
		!slices.Equal(app.InputShape, []int{36}) || *app.InputRange != [2]float64{0, 255} {
		t.Errorf("manifest: K %d input %d %v deadline %d labels %v range %v", app.K(), app.InputSize, app.InputShape,
			app.DefaultDeadlineMS, app.Labels, app.InputRange)
	}
	for y := range app.Utility {
		if !slices.Equal(app.Utility[y], d.app.Utility[y]) {
			t.Errorf("utility row %d: %v, want %v", y, app.Utility[y], d.app.Utility[y])
		}
	}
	// Same models, same validation split, same ONNX Runtime: the committed
	// manifest's figures, measured by models/tools/measure.
	for _, v := range app.Variants {
		ref := d.app.Variant(v.Name)
		if v.Accuracy != ref.Accuracy || v.Output != ref.Output || v.Params != ref.Params {
			t.Errorf("%s: accuracy %v output %+v params %d; committed manifest %v %+v %d",
				v.Name, v.Accuracy, v.Output, v.Params, ref.Accuracy, ref.Output, ref.Params)
		}
		for y := range v.Confusion {
			if !slices.Equal(v.Confusion[y], ref.Confusion[y]) {
				t.Errorf("%s: confusion row %d %v, committed %v", v.Name, y, v.Confusion[y], ref.Confusion[y])
			}
		}
	}
	// And an engine of our own agrees with the manifest.
	checkWithEngine(t, app, d.val)

	// Prior: the validation mix; samples: the whole test split.
	for c, p := range classMix(d.val.Labels, 6) {
		if math.Abs(app.Prior[c]-p) > 1e-6 {
			t.Errorf("prior[%d] = %v, validation mix %v", c, app.Prior[c], p)
		}
	}
	samples := readSet(t, app.Path(app.Samples.File))
	if samples.N != d.test.N || !slices.Equal(samples.Values, d.test.Values) || !slices.Equal(samples.Labels, d.test.Labels) {
		t.Errorf("samples.sgs is not the test split (%d rows)", samples.N)
	}
	val := readSet(t, app.Path(app.Validation.File))
	if !slices.Equal(val.Values, d.val.Values) || !slices.Equal(val.Labels, d.val.Labels) {
		t.Error("data/validation.sgs is not the validation split")
	}
	if res.SamplesFrom == "" || !strings.Contains(stdout.String(), "the whole -test split") {
		t.Errorf("samples source not reported: %q", res.SamplesFrom)
	}

	// Estimators: load with the gateway's loader, beat the prior, match the manifest.
	if len(app.Estimators) != 2 {
		t.Fatalf("estimators %+v", app.Estimators)
	}
	majority := slices.Max(app.Prior)
	for _, e := range app.Estimators {
		est, err := sneakpeek.Load(app, e)
		if err != nil {
			t.Fatalf("estimator %s: %v", e.Name, err)
		}
		probs := make([][]float64, val.N)
		for i := range probs {
			probs[i] = make([]float64, 6)
			est.Estimate(val.Row(i), probs[i])
		}
		acc, ece := accuracyECE(probs, val.Labels)
		if math.Abs(acc-e.Accuracy) > 1e-4 || math.Abs(ece-e.ECE) > 1e-4 {
			t.Errorf("%s: accuracy %.4f ECE %.4f, manifest %.4f %.4f", e.Name, acc, ece, e.Accuracy, e.ECE)
		}
		if acc < majority+0.4 {
			t.Errorf("%s: accuracy %.4f hardly beats the prior's %.4f", e.Name, acc, majority)
		}
		if !(e.CostUS > 0) {
			t.Errorf("%s: cost %v", e.Name, e.CostUS)
		}
	}
	if dm, err := sneakpeek.LoadDifficulty(app); err != nil || (dm == nil) == res.Difficulty.Kept {
		t.Errorf("difficulty model: %v, %+v", err, res.Difficulty)
	}
	if app.PriorStrength <= 0 {
		t.Errorf("prior_strength %v", app.PriorStrength)
	}
	// The default is the best calibrated or, within 0.01 of it, the cheaper.
	e0, e1 := app.Estimators[0], app.Estimators[1]
	if e0.ECE > e1.ECE+0.01 || (e1.ECE <= e0.ECE+0.01 && e1.CostUS < e0.CostUS && e1.ECE >= e0.ECE) {
		t.Errorf("default %s (ECE %.4f, %.2f us) over %s (ECE %.4f, %.2f us)", e0.Name, e0.ECE, e0.CostUS, e1.Name, e1.ECE, e1.CostUS)
	}
	if _, err := os.Stat(filepath.Join(out, "measured.json")); err != nil {
		t.Error(err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".sat.build-*"))
	if len(left) > 0 {
		t.Errorf("temporary directories left: %v", left)
	}

	// Check agrees; a rebuild writes the same estimator files (fixed seeds).
	var chk bytes.Buffer
	if _, err := Check(context.Background(), out, CheckOptions{Library: testenv.ORTLib(t), LatencyBudget: 10 * time.Millisecond, Stdout: &chk}); err != nil {
		t.Fatalf("check: %v\n%s", err, chk.String())
	}
	t.Logf("check:\n%s", chk.String())
	out2 := filepath.Join(t.TempDir(), "sat")
	o2 := d.options(t, out2)
	if _, err := Build(context.Background(), o2); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"est/logistic.json", "est/knn-ref.sgs", "samples.sgs", "data/validation.sgs"} {
		a, _ := os.ReadFile(filepath.Join(out, f))
		b, _ := os.ReadFile(filepath.Join(out2, f))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds", f)
		}
	}
}

// checkWithEngine runs every variant of app over set with a fresh engine and
// compares the accuracy with the manifest's.
func checkWithEngine(t *testing.T, app *manifest.App, set *dataset.Set) {
	t.Helper()
	eng, err := engine.New(engine.Options{LibraryPath: testenv.ORTLib(t), IntraOpThreads: 1, InterOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if err := eng.Register(app); err != nil {
		t.Fatal(err)
	}
	for _, v := range app.Variants {
		id := engine.VariantID{App: app.Name, Variant: v.Name}
		if _, err := eng.Load(id); err != nil {
			t.Fatal(err)
		}
		correct := 0
		for i := 0; i < set.N; i++ {
			p, err := eng.Run(id, [][]float32{set.Row(i)})
			if err != nil {
				t.Fatal(err)
			}
			if sneakpeek.Argmax(p[0]) == int(set.Labels[i]) {
				correct++
			}
		}
		if acc := float64(correct) / float64(set.N); math.Abs(acc-v.Accuracy) > 1e-6 {
			t.Errorf("%s: the engine gives accuracy %.6f, the manifest %.6f", v.Name, acc, v.Accuracy)
		}
	}
}

// TestBuildDigits builds the bring-your-own-model example of models/README.md
// from the .npy files numpy wrote (uint8 pixels, int64 labels) and the two
// exported ONNX variants, without labels, test split or anything optional.
func TestBuildDigits(t *testing.T) {
	ex := "../models/examples/digits"
	if _, err := os.Stat(filepath.Join(ex, "X_train.npy")); err != nil {
		t.Skipf("no digits example: %v", err)
	}
	f := func(n string) string { return filepath.Join(ex, n) }
	out := filepath.Join(t.TempDir(), "digits")
	var stdout bytes.Buffer
	res, err := Build(context.Background(), Options{Name: "digits", Out: out,
		Variants: []VariantArg{{"linear", f("linear.onnx")}, {"mlp", f("mlp.onnx")}},
		Train:    f("X_train.npy") + "," + f("y_train.npy"), Validation: f("X_validation.npy") + "," + f("y_validation.npy"),
		Library: testenv.ORTLib(t), LatencyBudget: 10 * time.Millisecond, BenchRuns: 1, Stdout: &stdout})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(stdout.String())
	a := res.App
	if a.K() != 10 || a.Labels[3] != "class3" || a.InputSize != 64 || a.DefaultDeadlineMS != 50 {
		t.Errorf("K %d labels %v input %d deadline %d", a.K(), a.Labels, a.InputSize, a.DefaultDeadlineMS)
	}
	for _, v := range a.Variants {
		if v.Output.Kind != "logits" || v.Accuracy < 0.9 {
			t.Errorf("%s: %s accuracy %v", v.Name, v.Output.Kind, v.Accuracy)
		}
	}
	if c := a.Samples.Count; c < a.Validation.Count/2-10 || c > a.Validation.Count/2+10 || !strings.Contains(res.SamplesFrom, "validation split") {
		t.Errorf("samples: %d rows from %q", a.Samples.Count, res.SamplesFrom)
	}
	b, _ := os.ReadFile(filepath.Join(out, "manifest.yaml"))
	if !strings.Contains(string(b), "samples.sgs: ") || !strings.Contains(string(b), "validation split") {
		t.Error("the manifest's header does not say where samples.sgs came from")
	}
}

// TestBuildOutputKinds: a softmax output is read as probabilities, a sigmoid
// per class (rows in [0, 1] not summing to 1) as logits; -force replaces a
// non-empty directory.
func TestBuildOutputKinds(t *testing.T) {
	d := newSatData(t)
	soft := linearModel(t, d.dir, "soft", 36, 6, "Softmax", -1)
	sig := linearModel(t, d.dir, "sig", 36, 6, "Sigmoid", -1)
	out := filepath.Join(t.TempDir(), "sat")
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(out, "old.txt"), []byte("x"), 0o644)
	o := d.options(t, out)
	o.Variants = []VariantArg{{"linear", d.linear}, {"soft", soft}, {"sig", sig}}
	o.Force = true
	o.Test = ""
	var stdout bytes.Buffer
	o.Stdout = &stdout
	res, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, v := range res.App.Variants {
		kinds[v.Name] = v.Output.Kind
	}
	if kinds["linear"] != "logits" || kinds["soft"] != "probabilities" || kinds["sig"] != "logits" {
		t.Errorf("kinds %v", kinds)
	}
	if !strings.Contains(stdout.String(), "do not sum to 1") {
		t.Errorf("the sigmoid's reading is not explained:\n%s", stdout.String())
	}
	if _, err := os.Stat(filepath.Join(out, "old.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("-force kept the old content: %v", err)
	}
	if c := res.App.Samples.Count; c < d.val.N/2-6 || c > d.val.N/2+6 { // rounded per class
		t.Errorf("samples without -test: %d rows", res.App.Samples.Count)
	}
}

// TestBuildErrors: every bad input fails with an error naming the file and the
// problem, and leaves nothing where the application would have gone.
func TestBuildErrors(t *testing.T) {
	d := newSatData(t)
	lib := testenv.ORTLib(t)
	p := func(n string) string { return filepath.Join(d.dir, n) }
	n, w := d.train.N, d.train.D
	withX := func(name string, edit func([]float32)) string {
		v := slices.Clone(d.train.Values)
		edit(v)
		return writeArray(t, p(name), []int{n, w}, v)
	}
	withY := func(name string, edit func([]int64) []int64) string {
		y := edit(labels64(d.train))
		return writeArray(t, p(name), []int{len(y)}, y)
	}
	xNaN := withX("X_nan.npy", func(v []float32) { v[3*w+5] = float32(math.NaN()) })
	xInf := withX("X_inf.npy", func(v []float32) { v[7*w] = float32(math.Inf(-1)) })
	xBig := withX("X_300.npy", func(v []float32) { v[2*w+1] = 300 })
	yRange := withY("y_range.npy", func(y []int64) []int64 { y[10] = 6; return y })
	yNeg := withY("y_neg.npy", func(y []int64) []int64 { y[4] = -1; return y })
	yShort := withY("y_short.npy", func(y []int64) []int64 { return y[:n-1] })
	yBinary := withY("y_binary.npy", func(y []int64) []int64 {
		for i := range y {
			y[i] %= 2
		}
		return y
	})
	yValBinary := writeArray(t, p("y_val_binary.npy"), []int{d.val.N}, func() []int64 {
		y := labels64(d.val)
		for i := range y {
			y[i] %= 2
		}
		return y
	}())
	// Training rows without class 3.
	var keepX []float32
	var keepY []int64
	for i := 0; i < n; i++ {
		if d.train.Labels[i] != 3 {
			keepX = append(keepX, d.train.Row(i)...)
			keepY = append(keepY, int64(d.train.Labels[i]))
		}
	}
	xNo3 := writeArray(t, p("X_no3.npy"), []int{len(keepY), w}, keepX)
	yNo3 := writeArray(t, p("y_no3.npy"), []int{len(keepY)}, keepY)
	onehot := writeArray(t, p("y_onehot.npy"), []int{n, 6}, make([]float32, n*6))
	x35 := writeArray(t, p("X_35.npy"), []int{d.test.N, 35}, d.test.Values[:d.test.N*35])
	yTest := writeArray(t, p("y_test.npy"), []int{d.test.N}, labels64(d.test))
	garbage := p("garbage.npy")
	os.WriteFile(garbage, []byte("this is not numpy"), 0o644)
	fortran := p("fortran.npy")
	a, _ := dataset.NewArray([]int{n, w}, d.train.Values)
	os.WriteFile(fortran, bytes.Replace(a.EncodeNPY(), []byte("'fortran_order': False"), []byte("'fortran_order': True "), 1), 0o644)
	bogus := p("bogus.onnx")
	os.WriteFile(bogus, []byte("not a model"), 0o644)
	wide64 := linearModel(t, d.dir, "wide64", 64, 6, "", -1)
	seven := linearModel(t, d.dir, "seven", 36, 7, "", -1)
	nan := linearModel(t, d.dir, "nanout", 36, 6, "Log", -1)
	score := linearModel(t, d.dir, "rawscore", 36, 1, "", -1)
	fixed := linearModel(t, d.dir, "fixed", 36, 6, "", 1)
	mix := linearModel(t, d.dir, "mixbatch", 36, 6, "MixBatch", -1)
	nonEmpty := filepath.Join(t.TempDir(), "taken")
	os.MkdirAll(nonEmpty, 0o755)
	os.WriteFile(filepath.Join(nonEmpty, "keep.txt"), []byte("mine"), 0o644)

	only := func(name, file string) []VariantArg { return []VariantArg{{name, file}} }
	cases := []struct {
		name string
		edit func(o *Options)
		is   error
		want []string // substrings of the error
	}{
		{"shape mismatch", func(o *Options) { o.Variants = only("wide", wide64) },
			ErrModel, []string{wide64, "64 values per sample, but the rows of X have 36"}},
		{"NaN in X", func(o *Options) { o.Train = xNaN + "," + d.yTrain },
			ErrData, []string{xNaN, "row 3, value 5 is NaN"}},
		{"Inf in validation X", func(o *Options) { o.Validation = xInf + "," + d.yTrain },
			ErrData, []string{xInf, "-validation", "row 7, value 0 is -Inf"}},
		{"label out of range", func(o *Options) { o.Train = d.xTrain + "," + yRange },
			ErrData, []string{yRange, "row 10 has label 6, outside [0, 6)"}},
		{"negative label", func(o *Options) { o.Train = d.xTrain + "," + yNeg },
			ErrData, []string{yNeg, "row 4 has label -1"}},
		{"class missing from a split", func(o *Options) { o.Train = xNo3 + "," + yNo3 },
			ErrData, []string{yNo3, "no rows of class 3 (damp_grey_soil)"}},
		{"variants disagree", func(o *Options) { o.Variants = []VariantArg{{"linear", d.linear}, {"seven", seven}} },
			ErrModel, []string{d.linear, seven, "disagree on the number of classes", "outputs 6", "outputs 7"}},
		{"NaN output", func(o *Options) { o.Variants = only("nanout", nan) },
			ErrModel, []string{nan, "neither logits nor probabilities"}},
		{"score outside [0, 1]", func(o *Options) {
			o.Variants, o.Labels, o.UtilityFile, o.Test = only("rawscore", score), nil, "", ""
			o.Train, o.Validation = d.xTrain+","+yBinary, d.xVal+","+yValBinary
		}, ErrModel, []string{score, "outside [0, 1]", "neither a probability"}},
		{"no dynamic batch axis", func(o *Options) { o.Variants = only("fixed", fixed) },
			ErrModel, []string{fixed, "dynamic batch axis"}},
		{"batch-mixing graph", func(o *Options) { o.Variants = only("mixbatch", mix) },
			ErrModel, []string{mix, "batch 1 and at batch 64 differ"}},
		{"missing X", func(o *Options) { o.Train = p("nothere.npy") + "," + d.yTrain },
			ErrData, []string{p("nothere.npy"), "no such file"}},
		{"not numpy", func(o *Options) { o.Validation = garbage + "," + d.yVal },
			ErrData, []string{garbage, "not a .npy file"}},
		{"Fortran order", func(o *Options) { o.Train = fortran + "," + d.yTrain },
			ErrData, []string{fortran, "Fortran", "ascontiguousarray"}},
		{"rows and labels differ", func(o *Options) { o.Train = d.xTrain + "," + yShort },
			ErrData, []string{d.xTrain, yShort, fmt.Sprintf("%d rows", n), fmt.Sprintf("%d labels", n-1)}},
		{"one-hot labels", func(o *Options) { o.Train = d.xTrain + "," + onehot },
			ErrData, []string{onehot, fmt.Sprintf("shape (%d, 6)", n)}},
		{"splits of different widths", func(o *Options) { o.Test = x35 + "," + yTest },
			ErrData, []string{x35, "35 values per row"}},
		{"outside input range", func(o *Options) { o.Train = xBig + "," + d.yTrain },
			ErrData, []string{xBig, "row 2, value 1 is 300, outside input_range"}},
		{"not an ONNX model", func(o *Options) { o.Variants = only("bogus", bogus) },
			ErrModel, []string{bogus, "ONNX Runtime cannot read it"}},
		{"missing model", func(o *Options) { o.Variants = only("gone", p("gone.onnx")) },
			ErrModel, []string{p("gone.onnx"), "no such file"}},
		{"labels count", func(o *Options) { o.Labels = []string{"a", "b", "c"} },
			ErrData, []string{"-labels names 3 classes", "outputs 6"}},
		{"bad variant name", func(o *Options) { o.Variants = only("Linear", d.linear) },
			ErrUsage, []string{`"Linear"`}},
		{"variant twice", func(o *Options) { o.Variants = append(o.Variants, VariantArg{"linear", d.linear}) },
			ErrUsage, []string{"linear given twice"}},
		{"bad split syntax", func(o *Options) { o.Train = "a.npy,b.npy,c.npy" },
			ErrData, []string{"-train a.npy,b.npy,c.npy", "want X.npy,y.npy"}},
		{"utility size", func(o *Options) {
			u := p("u3.yaml")
			os.WriteFile(u, []byte("[[1,0],[0,1]]"), 0o644)
			o.UtilityFile = u
		}, ErrUsage, []string{"u3.yaml", "want a 6 x 6 matrix"}},
		{"non-empty output", func(o *Options) { o.Out = nonEmpty },
			ErrUsage, []string{nonEmpty, "not empty; use -force"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "made")
			o := d.options(t, filepath.Join(parent, "sat"))
			o.Library = lib
			c.edit(&o)
			_, err := Build(context.Background(), o)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, c.is) {
				t.Errorf("error %q does not wrap %v", err, c.is)
			}
			for _, s := range c.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if o.Out == nonEmpty {
				if b, _ := os.ReadFile(filepath.Join(nonEmpty, "keep.txt")); string(b) != "mine" {
					t.Error("the existing directory was touched")
				}
				return
			}
			if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
				ents, _ := os.ReadDir(parent)
				t.Errorf("left behind: %v (%v)", parent, ents)
			}
		})
	}
}

func TestParseVariant(t *testing.T) {
	for _, c := range []struct{ in, name, file, err string }{
		{"linear=models/x.onnx", "linear", "models/x.onnx", ""},
		{"mlp-2=a=b.onnx", "mlp-2", "a=b.onnx", ""},
		{"linear", "", "", "want NAME=FILE.onnx"},
		{"=x.onnx", "", "", "want NAME=FILE.onnx"},
		{"x=", "", "", "want NAME=FILE.onnx"},
		{"Big=x.onnx", "", "", "must match"},
		{"a b=x.onnx", "", "", "must match"},
	} {
		v, err := ParseVariant(c.in)
		switch {
		case c.err == "" && (err != nil || v.Name != c.name || v.File != c.file):
			t.Errorf("%q: %+v %v", c.in, v, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), c.in)):
			t.Errorf("%q: error %v, want %q", c.in, err, c.err)
		}
	}
}

func TestCheckFindsProblems(t *testing.T) {
	lib := testenv.ORTLib(t)
	// A copy of the bundled satellite app, damaged in turn.
	src := "../models/satellite"
	if _, err := os.Stat(filepath.Join(src, "manifest.yaml")); err != nil {
		t.Skip(err)
	}
	cp := func(t *testing.T) string {
		dst := filepath.Join(t.TempDir(), "satellite")
		if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	t.Run("ok", func(t *testing.T) {
		var out bytes.Buffer
		rep, err := Check(context.Background(), cp(t), CheckOptions{Library: lib, NoLatency: true, Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Variants) != 5 || rep.Rows != 1285 || !strings.Contains(out.String(), "forest") {
			t.Errorf("report: %d variants, %d rows\n%s", len(rep.Variants), rep.Rows, out.String())
		}
	})
	edit := func(dir, from, to string) {
		p := filepath.Join(dir, "manifest.yaml")
		b, _ := os.ReadFile(p)
		if !bytes.Contains(b, []byte(from)) {
			t.Fatalf("manifest has no %q", from)
		}
		os.WriteFile(p, bytes.Replace(b, []byte(from), []byte(to), 1), 0o644)
	}
	for _, c := range []struct {
		name string
		hurt func(dir string)
		want string
	}{
		{"accuracy off", func(dir string) { edit(dir, "accuracy: 0.856031", "accuracy: 0.9") }, "variant linear: accuracy 0.8560"},
		{"estimator file missing", func(dir string) { os.Remove(filepath.Join(dir, "est", "logistic.json")) }, "estimator logistic"},
		{"samples count", func(dir string) { edit(dir, "count: 1288", "count: 1000") }, "1288 rows, the manifest's count is 1000"},
		{"model missing", func(dir string) { os.Remove(filepath.Join(dir, "tree.onnx")) }, "tree"},
		{"wrong output name", func(dir string) { edit(dir, "name: \"logits\"", "name: \"nope\"") }, "nope"},
		{"not a manifest", func(dir string) { os.WriteFile(filepath.Join(dir, "manifest.yaml"), []byte("name: [\n"), 0o644) }, "manifest.yaml"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := cp(t)
			c.hurt(dir)
			_, err := Check(context.Background(), dir, CheckOptions{Library: lib, NoLatency: true})
			if !errors.Is(err, ErrCheck) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want %q", err, c.want)
			}
		})
	}
}

// The gateway serves an application whose validation split or samples are
// missing (make install leaves out vad's: README, "Running as a service"), so
// Check passes it too, with a warning saying what serving loses without the
// split, and runs the variants on what rows there are: the samples, else
// random rows in the input range (as the gateway's profile runs them). A
// split that is there but does not fit is still an error.
func TestCheckWithoutValidationSplit(t *testing.T) {
	lib := testenv.ORTLib(t)
	src := "../models/satellite"
	if _, err := os.Stat(filepath.Join(src, "manifest.yaml")); err != nil {
		t.Skip(err)
	}
	cp := func(t *testing.T) string {
		dst := filepath.Join(t.TempDir(), "satellite")
		if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	edit := func(t *testing.T, dir, from, to string) {
		p := filepath.Join(dir, "manifest.yaml")
		b, _ := os.ReadFile(p)
		if !bytes.Contains(b, []byte(from)) {
			t.Fatalf("manifest has no %q", from)
		}
		os.WriteFile(p, bytes.Replace(b, []byte(from), []byte(to), 1), 0o644)
	}
	const (
		valEntry     = "validation:\n  file: \"data/validation.sgs\"\n  count: 1285\n"
		samplesEntry = "samples:\n  file: \"samples.sgs\"\n  count: 1288\n"
	)
	rm := func(t *testing.T, dir, file string) {
		if err := os.Remove(filepath.Join(dir, file)); err != nil {
			t.Fatal(err)
		}
	}
	// What a warning about the validation split must name (lost in serving).
	lost := []string{"label-shift", "scheduler.estimate_answers", "cascade", "scheduler.peek", "not compared"}
	for _, c := range []struct {
		name     string
		hurt     func(t *testing.T, dir string)
		rowsFrom string
		rows     int
		warn     []string
	}{
		{"validation file missing", func(t *testing.T, dir string) { rm(t, dir, "data/validation.sgs") },
			"samples", 1288, append([]string{"data/validation.sgs", "no such file", "label_shift: true refuses"}, lost...)},
		{"validation and samples files missing", func(t *testing.T, dir string) {
			rm(t, dir, "data/validation.sgs")
			rm(t, dir, "samples.sgs")
		}, "random", checkRandomRows, append([]string{"data/validation.sgs", "samples.sgs", "devsim"}, lost...)},
		{"no validation split in the manifest", func(t *testing.T, dir string) { edit(t, dir, valEntry, "") },
			"samples", 1288, append([]string{"names no validation split", "manifest's prior"}, lost...)},
		{"neither split in the manifest", func(t *testing.T, dir string) {
			edit(t, dir, valEntry, "")
			edit(t, dir, samplesEntry, "")
		}, "random", checkRandomRows, append([]string{"names no validation split"}, lost...)},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := cp(t)
			c.hurt(t, dir)
			var out bytes.Buffer
			rep, err := Check(context.Background(), dir, CheckOptions{Library: lib, NoLatency: true, Stdout: &out})
			if err != nil {
				t.Fatal(err)
			}
			if rep.RowsFrom != c.rowsFrom || rep.Rows != c.rows || len(rep.Variants) != 5 {
				t.Errorf("ran %d variants on %d %s rows, want 5 on %d %s rows", len(rep.Variants), rep.Rows, rep.RowsFrom, c.rows, c.rowsFrom)
			}
			all := strings.Join(rep.Warnings, "\n")
			for _, w := range c.warn {
				if !strings.Contains(all, w) {
					t.Errorf("warnings do not say %q:\n%s", w, all)
				}
			}
			if len(rep.Warnings) == 0 || !strings.Contains(out.String(), "warning: "+rep.Warnings[0]) {
				t.Errorf("the report does not print the warnings:\n%s", out.String())
			}
		})
	}
	t.Run("validation file damaged", func(t *testing.T) {
		dir := cp(t)
		if err := os.WriteFile(filepath.Join(dir, "data/validation.sgs"), []byte("not a sample file"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Check(context.Background(), dir, CheckOptions{Library: lib, NoLatency: true})
		if !errors.Is(err, ErrCheck) || !strings.Contains(err.Error(), "validation.sgs") {
			t.Errorf("error %v, want one naming validation.sgs", err)
		}
	})
}

// The gateway serves an application whose manifest names no estimator
// (gateway buildApp), so Check passes it too, with a warning saying what
// serving loses without one, and still runs and compares every variant.
func TestCheckWithoutEstimator(t *testing.T) {
	lib := testenv.ORTLib(t)
	src := "../models/satellite"
	if _, err := os.Stat(filepath.Join(src, "manifest.yaml")); err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(t.TempDir(), "satellite")
	if err := os.CopyFS(dir, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	// Drop the estimators and the difficulty model (trained on one of them).
	p := filepath.Join(dir, "manifest.yaml")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	drop := false
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" && l[0] != ' ' && l[0] != '#' && l[0] != '\n' {
			drop = strings.HasPrefix(l, "estimators:") || strings.HasPrefix(l, "difficulty:")
		}
		if !drop {
			kept = append(kept, l)
		}
	}
	if len(kept) == len(strings.SplitAfter(string(b), "\n")) {
		t.Fatal("the manifest has no estimators to drop")
	}
	if err := os.WriteFile(p, []byte(strings.Join(kept, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep, err := Check(context.Background(), dir, CheckOptions{Library: lib, NoLatency: true, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.App.Estimators) != 0 || len(rep.Estimators) != 0 {
		t.Fatalf("estimators %v measured %v, want none", rep.App.Estimators, rep.Estimators)
	}
	if rep.RowsFrom != "validation" || len(rep.Variants) != 5 || rep.Variants[0].Accuracy == 0 {
		t.Errorf("ran %d variants on %d %s rows (first accuracy %v), want 5 on the validation rows, measured",
			len(rep.Variants), rep.Rows, rep.RowsFrom, rep.Variants[0].Accuracy)
	}
	all := strings.Join(rep.Warnings, "\n")
	for _, w := range []string{"names no estimator", "profiled utility", "degraded", "admission.degrade_refused",
		"admission.max_wait", "label_shift: true refuses", "scheduler.estimate_answers", "difficulty", "sneakgate_estimate_"} {
		if !strings.Contains(all, w) {
			t.Errorf("warnings do not say %q:\n%s", w, all)
		}
	}
	if len(rep.Warnings) != 1 || !strings.Contains(out.String(), "warning: "+rep.Warnings[0]) {
		t.Errorf("want the one warning printed:\n%s", out.String())
	}
}

func TestCountParamsBundled(t *testing.T) {
	paths, _ := filepath.Glob("../models/*/manifest.yaml")
	if len(paths) == 0 {
		t.Skip("no bundled apps")
	}
	for _, p := range paths {
		a, err := manifest.Load(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range a.Variants {
			n, err := countParams(a.Path(v.File))
			if err != nil || n != v.Params {
				t.Errorf("%s/%s: %d parameters (%v), models/train/common.py counted %d", a.Name, v.Name, n, err, v.Params)
			}
		}
	}
	if _, err := countParams(p0(t)); err == nil {
		t.Error("a text file counted as a model")
	}
}

func p0(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "x.onnx")
	os.WriteFile(p, []byte("hello"), 0o644)
	return p
}

func TestDefaultFeatures(t *testing.T) {
	for _, c := range []struct {
		shape []int
		d     int
		want  string
	}{
		{[]int{28, 28}, 784, "avgpool:28:28:4"},
		{[]int{1, 28, 28}, 784, "avgpool:28:28:4"},
		{[]int{3, 3, 4}, 36, "identity"},
		{[]int{576}, 576, "identity"},
		{[]int{32, 32}, 1024, "avgpool:32:32:4"},
		{[]int{17, 19}, 323, "identity"},
	} {
		if got := DefaultFeatures(c.shape, c.d); got != c.want {
			t.Errorf("%v: %s, want %s", c.shape, got, c.want)
		}
		if _, err := sneakpeek.ParseFeatures(DefaultFeatures(c.shape, c.d), c.d); err != nil {
			t.Error(err)
		}
	}
}

// TestFitLogisticSeparable checks the fit on a problem with a known answer:
// well-separated classes must be learnt, and the result must load.
func TestFitLogisticSeparable(t *testing.T) {
	const n, d, k = 300, 2, 3
	f := make([]float32, n*d)
	y := make([]int32, n)
	for i := range y {
		c := i % k
		y[i] = int32(c)
		f[i*d] = float32(c*10) + float32(i%7)/7
		f[i*d+1] = float32((i*13)%11) / 11
	}
	p, err := FitLogistic(f, n, d, y, k, logisticFit{C: 1})
	if err != nil {
		t.Fatal(err)
	}
	feat, _ := sneakpeek.ParseFeatures("identity", d)
	est, err := sneakpeek.NewLogistic("t", feat, p)
	if err != nil {
		t.Fatal(err)
	}
	probs := make([]float64, k)
	for i := range n {
		est.Estimate(f[i*d:(i+1)*d], probs)
		if sneakpeek.Argmax(probs) != int(y[i]) || probs[y[i]] < 0.8 {
			t.Fatalf("row %d: %v for class %d", i, probs, y[i])
		}
	}
	// Binary: class 0's row stays zero (scikit-learn's parameterisation).
	p2, err := FitLogistic(f, n, d, func() []int32 {
		b := slices.Clone(y)
		for i := range b {
			b[i] = min(b[i], 1)
		}
		return b
	}(), 2, logisticFit{C: 1})
	if err != nil {
		t.Fatal(err)
	}
	if p2.Bias[0] != 0 || p2.Weights[0][0] != 0 || p2.Weights[1][0] == 0 {
		t.Errorf("binary fit: weights %v bias %v", p2.Weights, p2.Bias)
	}
}

func TestAccuracyECE(t *testing.T) {
	// Two rows at confidence 0.9 (one right), two at 0.6 (both right):
	// ECE = 0.5*|0.5-0.9| + 0.5*|1-0.6| = 0.4.
	probs := [][]float64{{0.9, 0.1}, {0.9, 0.1}, {0.4, 0.6}, {0.4, 0.6}}
	acc, ece := accuracyECE(probs, []int32{0, 1, 1, 1})
	if acc != 0.75 || math.Abs(ece-0.4) > 1e-12 {
		t.Errorf("accuracy %v ECE %v", acc, ece)
	}
	// Confidence exactly on a bin edge (2/15) belongs to the lower bin, as
	// models/train/common.py bins it; a perfectly calibrated set has ECE 0.
	_, ece = accuracyECE([][]float64{{1, 0}, {1, 0}}, []int32{0, 0})
	if ece != 0 {
		t.Errorf("ECE %v", ece)
	}
	// A row without a distribution (all NaN) counts as wrong with confidence 0.
	nan := math.NaN()
	acc, ece = accuracyECE([][]float64{{1, 0}, {nan, nan}}, []int32{0, 0})
	if acc != 0.5 || math.IsNaN(ece) || math.Abs(ece-0) > 1e-12 {
		t.Errorf("with an all-NaN row: accuracy %v ECE %v, want 0.5 and 0", acc, ece)
	}
}

func writeZip(t testing.TB, p string, members map[string][]byte) string {
	t.Helper()
	var names []string
	for n := range members {
		names = append(names, n)
	}
	slices.Sort(names)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	for _, n := range names {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: n, Method: zip.Deflate})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(members[n])
	}
	if err := errors.Join(zw.Close(), f.Close()); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBuildBaseSpec builds from a base spec describing a model with three inputs
// (Silero VAD v5: the audio window, a zero recurrent state whose batch axis is
// in the middle, an int64 scalar sample rate) and a score output: the metrics
// must be the committed vad manifest's, measured on the same validation split.
func TestBuildBaseSpec(t *testing.T) {
	ref, err := manifest.Load("../models/vad/manifest.yaml")
	if err != nil {
		t.Skip(err)
	}
	v5 := ref.Variant("silero-v5")
	dir := t.TempDir()
	model, _ := filepath.Abs(ref.Path(v5.File))
	base := filepath.Join(dir, "spec.yaml")
	os.WriteFile(base, []byte(`description: "Voice activity"
input_shape: [576]
labels: [silence, speech]
comments: ["from a base spec"]
workloads:
  - {name: meeting, description: mostly speech, mix: [0.2, 0.8]}
variants:
  - name: silero-v5
    file: `+model+`
    family: silero-v5
    inputs:
      - {name: input, kind: data, shape: [-1, 576]}
      - {name: state, kind: zeros, shape: [2, -1, 128]}
      - {name: sr, kind: const, dtype: int64, shape: [], value: 16000}
    output: {name: output, kind: score}
estimators:
  - {name: frames, kind: logistic, features: "audio-frames:8"}
`), 0o644)
	out := filepath.Join(dir, "vad")
	res, err := Build(context.Background(), Options{Out: out, Name: "vad", Base: base,
		Train: ref.Path(ref.Samples.File), Validation: ref.Path(ref.Validation.File),
		Library: testenv.ORTLib(t), LatencyBudget: 10 * time.Millisecond, BenchRuns: 1})
	if err != nil {
		t.Fatal(err)
	}
	a := res.App
	v := a.Variants[0]
	if v.Accuracy != v5.Accuracy || v.Output != v5.Output || len(v.Inputs) != 3 || v.Family != "silero-v5" {
		t.Errorf("silero-v5: accuracy %v output %+v inputs %d family %s; committed %v %+v", v.Accuracy, v.Output, len(v.Inputs), v.Family, v5.Accuracy, v5.Output)
	}
	for y := range v.Confusion {
		if !slices.Equal(v.Confusion[y], v5.Confusion[y]) {
			t.Errorf("confusion row %d: %v, committed %v", y, v.Confusion[y], v5.Confusion[y])
		}
	}
	if a.Description != "Voice activity" || len(a.Workloads) != 1 || a.Workloads[0].Name != "meeting" ||
		len(a.Estimators) != 1 || a.Estimators[0].File != "est/frames.json" {
		t.Errorf("base fields: %q %+v %+v", a.Description, a.Workloads, a.Estimators)
	}
	b, _ := os.ReadFile(filepath.Join(out, "manifest.yaml"))
	if !strings.Contains(string(b), "# from a base spec") {
		t.Error("base comments missing from the header")
	}
	// Without the base spec the same model is refused with a pointer to it.
	_, err = Build(context.Background(), Options{Out: filepath.Join(dir, "x"), Name: "vad",
		Variants: []VariantArg{{"silero-v5", model}},
		Train:    ref.Path(ref.Samples.File), Validation: ref.Path(ref.Validation.File), Library: testenv.ORTLib(t)})
	if !errors.Is(err, ErrModel) || !strings.Contains(err.Error(), "3 inputs") || !strings.Contains(err.Error(), "-base") {
		t.Errorf("three inputs without a base spec: %v", err)
	}
}
