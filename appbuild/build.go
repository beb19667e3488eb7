package appbuild

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	ort "github.com/yalue/onnxruntime_go"
	"gopkg.in/yaml.v3"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
)

// Result is what Build made: the manifest as written and the measurements.
type Result struct {
	// Dir is the application directory written; App its manifest as loaded
	// from there.
	Dir string
	App *manifest.App
	// Variants and Estimators are in manifest order.
	Variants   []variantResult
	Estimators []estimatorResult
	// DefaultWhy says why the first estimator is the default.
	DefaultWhy string
	// SamplesFrom says where samples.sgs came from.
	SamplesFrom string
	// Difficulty is the per-sample difficulty model's training (nil: skipped).
	Difficulty *difficultyResult
	// Took is the build's wall time.
	Took time.Duration
}

// defaultDeadline is the default_deadline_ms when neither -deadline nor the
// base spec gives one.
const defaultDeadline = 50 * time.Millisecond

// Build makes an application directory from ONNX variants and labelled splits
// (see the package doc). Nothing is left in o.Out unless it succeeds: the
// directory is written beside it under a temporary name and renamed at the
// end. Errors wrap ErrUsage, ErrData or ErrModel and name the file concerned.
func Build(ctx context.Context, o Options) (res *Result, err error) {
	t0 := time.Now()
	o.defaults()
	var b builder
	b.o = &o
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("app build: internal error: %v\n%s", r, debug.Stack())
		}
		if err != nil {
			b.cleanup()
		}
	}()
	if err := b.prepare(); err != nil {
		return nil, err
	}
	if err := b.run(ctx); err != nil {
		return nil, err
	}
	b.res.Took = time.Since(t0)
	printBuild(o.Stdout, b.res)
	return b.res, nil
}

type builder struct {
	o       *Options
	base    *BaseSpec
	util    *utilitySpec
	labels  []string
	tmp     string   // the temporary directory beside Out
	created []string // parent directories Build created
	res     *Result
}

// cleanup removes the temporary directory and the parents Build created.
func (b *builder) cleanup() {
	if b.tmp != "" {
		os.RemoveAll(b.tmp)
	}
	for i := len(b.created) - 1; i >= 0; i-- {
		os.Remove(b.created[i]) // only if still empty
	}
}

// prepare checks the options and reads the small files.
func (b *builder) prepare() error {
	o := b.o
	if o.Out == "" {
		return fmt.Errorf("%w: -out DIR is required", ErrUsage)
	}
	if o.Train == "" || o.Validation == "" {
		return fmt.Errorf("%w: -train and -validation are required (%s)", ErrUsage, SplitSpec)
	}
	if len(o.Labels) > 0 && o.LabelsFile != "" {
		return fmt.Errorf("%w: give -labels or -labels-file, not both", ErrUsage)
	}
	if err := checkOut(o.Out, o.Force); err != nil {
		return err
	}
	if o.Base != "" {
		base, err := loadBase(o.Base)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUsage, err)
		}
		b.base = base
	} else {
		b.base = &BaseSpec{}
	}
	if o.Name != "" {
		b.base.Name = o.Name
	}
	if !variantName.MatchString(b.base.Name) {
		if b.base.Name == "" {
			return fmt.Errorf("%w: -name is required (or name in the base spec)", ErrUsage)
		}
		return fmt.Errorf("%w: name %q must match %s", ErrUsage, b.base.Name, variantName)
	}
	seen := map[string]bool{}
	for _, v := range o.Variants {
		if seen[v.Name] {
			return fmt.Errorf("%w: -variant %s given twice", ErrUsage, v.Name)
		}
		seen[v.Name] = true
		if _, err := ParseVariant(v.Name + "=" + v.File); err != nil {
			return err
		}
	}
	if len(o.Variants) == 0 && len(b.base.Variants) == 0 {
		return fmt.Errorf("%w: at least one -variant NAME=FILE.onnx is required", ErrUsage)
	}
	seenLabel := map[string]bool{}
	for _, l := range o.Labels {
		if l == "" || seenLabel[l] {
			return fmt.Errorf("%w: -labels %q: every label must be non-empty and different", ErrUsage, strings.Join(o.Labels, ","))
		}
		seenLabel[l] = true
	}
	var err error
	switch {
	case len(o.Labels) > 0:
		b.labels = o.Labels
	case o.LabelsFile != "":
		if b.labels, err = loadLabels(o.LabelsFile); err != nil {
			return fmt.Errorf("%w: %w", ErrUsage, err)
		}
	case len(b.base.Labels) > 0:
		b.labels = b.base.Labels
	}
	if o.UtilityFile != "" {
		if b.util, err = loadUtility(o.UtilityFile); err != nil {
			return fmt.Errorf("%w: %w", ErrUsage, err)
		}
	}
	return nil
}

// checkOut refuses an output path that is a file or a non-empty directory
// (unless force).
func checkOut(out string, force bool) error {
	fi, err := os.Stat(out)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%w: -out %s: %w", ErrUsage, out, err)
	case !fi.IsDir():
		return fmt.Errorf("%w: -out %s exists and is not a directory", ErrUsage, out)
	}
	ents, err := os.ReadDir(out)
	if err != nil {
		return fmt.Errorf("%w: -out %s: %w", ErrUsage, out, err)
	}
	if len(ents) > 0 && !force {
		return fmt.Errorf("%w: -out %s is not empty; use -force to replace it", ErrUsage, out)
	}
	return nil
}

func (b *builder) run(ctx context.Context) error {
	o := b.o
	train, err := readSplit("train", o.Train)
	if err != nil {
		return err
	}
	val, err := readSplit("validation", o.Validation)
	if err != nil {
		return err
	}
	var test *split
	if o.Test != "" {
		if test, err = readSplit("test", o.Test); err != nil {
			return err
		}
	}
	d := val.d
	for _, s := range []*split{train, test} {
		if s != nil && s.d != d {
			return fmt.Errorf("%w: %s (-%s features) has %d values per row, %s (-validation) has %d", ErrData, s.xsrc, s.name, s.d, val.xsrc, d)
		}
	}
	if b.base.InputSize != 0 && b.base.InputSize != d {
		return fmt.Errorf("%w: the base spec %s says input_size %d, the rows of %s have %d values", ErrData, o.Base, b.base.InputSize, val.xsrc, d)
	}
	fmt.Fprintf(o.Log, "read train %d rows, validation %d rows, %d values per row\n", train.n, val.n, d)

	// Inspect the models (ONNX Runtime must be up for that).
	eng, err := newEngine(o.Library)
	if err != nil {
		return err
	}
	eng.Close()
	so, err := ort.NewSessionOptions()
	if err != nil {
		return fmt.Errorf("ONNX Runtime: %w", err)
	}
	defer so.Destroy()
	if err := errors.Join(so.SetIntraOpNumThreads(1), so.SetInterOpNumThreads(1)); err != nil {
		return fmt.Errorf("ONNX Runtime: %w", err)
	}
	plans, err := b.planVariants(d, so)
	if err != nil {
		return err
	}
	k, err := b.classes(plans, train, val)
	if err != nil {
		return err
	}
	if err := train.checkLabels(k, b.labels, true); err != nil {
		return err
	}
	if err := val.checkLabels(k, b.labels, true); err != nil {
		return err
	}
	if test != nil {
		if err := test.checkLabels(k, b.labels, false); err != nil {
			return err
		}
	}
	rng := o.InputRange
	if rng == nil {
		rng = b.base.InputRange
	}
	if rng != nil {
		if !(rng[0] < rng[1]) {
			return fmt.Errorf("%w: input range %v: low must be below high", ErrUsage, *rng)
		}
		for _, s := range []*split{train, val, test} {
			if s != nil {
				if err := s.checkRange(*rng); err != nil {
					return err
				}
			}
		}
	}

	// Everything is written in a temporary directory beside Out.
	if err := b.makeTemp(); err != nil {
		return err
	}
	vres, err := measureVariants(ctx, o, b.base.Name, b.labels, plans, val)
	if err != nil {
		return err
	}
	app, err := b.assemble(plans, vres, val, d, rng)
	if err != nil {
		return err
	}
	samplesFrom, err := b.writeSamples(app, val, test)
	if err != nil {
		return err
	}
	knnRef := o.KNNReference
	if b.base.KNNReference > 0 {
		knnRef = b.base.KNNReference
	}
	eres, err := trainEstimators(ctx, o, app, train, knnRef)
	if err != nil {
		return err
	}
	if err := evaluateEstimators(ctx, app, val, eres, o.BenchRuns); err != nil {
		return err
	}
	pick, why := chooseDefault(eres)
	if pick > 0 {
		app.Estimators = append([]manifest.Estimator{app.Estimators[pick]}, slices.Delete(slices.Clone(app.Estimators), pick, pick+1)...)
		eres = append([]estimatorResult{eres[pick]}, slices.Delete(slices.Clone(eres), pick, pick+1)...)
	}
	for i := range app.Estimators {
		e := &app.Estimators[i]
		e.Accuracy, e.ECE, e.CostUS = round(eres[i].Accuracy, 4), round(eres[i].ECE, 4), round(eres[i].CostUS, 3)
	}
	var dres *difficultyResult
	if !o.NoDifficulty {
		var exclude []int
		if app.Estimators[0].Kind == "knn" {
			exclude = eres[0].refIdx
		}
		preds := make([][]int, len(vres))
		for v := range vres {
			preds[v] = vres[v].Pred
		}
		if dres, err = trainDifficulty(ctx, o, app, train, val, exclude, preds, o.BenchRuns); err != nil {
			return fmt.Errorf("per-sample difficulty model: %w", err)
		}
	}
	header := b.header(train, val, test, samplesFrom)
	if err := writeManifest(filepath.Join(b.tmp, "manifest.yaml"), app, header); err != nil {
		return err
	}
	if err := writeMeasured(filepath.Join(b.tmp, "measured.json"), vres, eres); err != nil {
		return err
	}

	// Check what was written as the gateway will read it, then move it into place.
	if err := ctx.Err(); err != nil {
		return err
	}
	fmt.Fprintf(o.Log, "checking %s\n", b.tmp)
	rep, err := Check(ctx, b.tmp, CheckOptions{Library: o.Library, NoLatency: true})
	if err != nil {
		return fmt.Errorf("app build: the application written does not check (a bug): %w", err)
	}
	if err := b.commit(); err != nil {
		return err
	}
	rep.App.Dir = o.Out
	b.res = &Result{Dir: o.Out, App: rep.App, Variants: vres, Estimators: eres, DefaultWhy: why, SamplesFrom: samplesFrom, Difficulty: dres}
	return nil
}

// planVariants merges the base spec's variants with -variant and inspects each.
func (b *builder) planVariants(d int, so *ort.SessionOptions) ([]*plan, error) {
	type item struct {
		name, file string
		base       *manifest.Variant
	}
	var items []item
	for i := range b.base.Variants {
		v := &b.base.Variants[i]
		items = append(items, item{name: v.Name, file: v.File, base: v})
	}
	for _, a := range b.o.Variants {
		found := false
		for i := range items {
			if items[i].name == a.Name {
				items[i].file, found = a.File, true
			}
		}
		if !found {
			items = append(items, item{name: a.Name, file: a.File})
		}
	}
	var plans []*plan
	for _, it := range items {
		if !variantName.MatchString(it.name) {
			return nil, fmt.Errorf("%w: variant name %q must match %s", ErrUsage, it.name, variantName)
		}
		if it.file == "" {
			return nil, fmt.Errorf("%w: variant %s has no file (give -variant %s=FILE.onnx)", ErrUsage, it.name, it.name)
		}
		p, err := planVariant(it.name, it.file, it.base, d, so)
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
	}
	return plans, nil
}

// classes returns the number of classes the variants agree on and settles the
// labels.
func (b *builder) classes(plans []*plan, train, val *split) (int, error) {
	k := 0
	var first *plan
	for _, p := range plans {
		w := p.width
		if w == 1 {
			w = 2 // a score: the probability of class 1 of 2
		}
		if w == 0 {
			if p.kind == "score" {
				w = 2
			} else {
				continue
			}
		}
		if k == 0 {
			k, first = w, p
		} else if w != k {
			return 0, fmt.Errorf("%w: the variants disagree on the number of classes: %s (%s) outputs %d, %s (%s) outputs %d",
				ErrModel, first.spec.Name, first.src, k, p.spec.Name, p.src, w)
		}
	}
	switch {
	case k == 0 && len(b.labels) > 0:
		k = len(b.labels)
	case k == 0:
		for _, s := range []*split{train, val} {
			for _, y := range s.y {
				if y >= 0 && y < 1<<16 {
					k = max(k, int(y)+1)
				}
			}
		}
	}
	if k < 2 {
		return 0, fmt.Errorf("%w: %d class: an application needs at least 2", ErrData, k)
	}
	if len(b.labels) == 0 {
		for c := range k {
			b.labels = append(b.labels, fmt.Sprintf("class%d", c))
		}
	} else if len(b.labels) != k {
		src := "-labels"
		switch {
		case b.o.LabelsFile != "":
			src = b.o.LabelsFile
		case len(b.o.Labels) == 0:
			src = "the base spec's labels"
		}
		how := "the data"
		if first != nil {
			how = fmt.Sprintf("%s (%s) outputs", first.spec.Name, first.src)
		}
		return 0, fmt.Errorf("%w: %s names %d classes, but %s %d", ErrData, src, len(b.labels), how, k)
	}
	return k, nil
}

// makeTemp creates the temporary directory beside Out (and Out's parents).
func (b *builder) makeTemp() error {
	parent := filepath.Dir(filepath.Clean(b.o.Out))
	var missing []string
	for p := parent; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		}
		missing = append(missing, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil {
			return fmt.Errorf("%w: -out %s: %w", ErrUsage, b.o.Out, err)
		}
		b.created = append(b.created, missing[i])
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(b.o.Out)+".build-")
	if err != nil {
		return fmt.Errorf("%w: -out %s: %w", ErrUsage, b.o.Out, err)
	}
	b.tmp = tmp
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes it 0700
		return err
	}
	return os.Mkdir(filepath.Join(tmp, "data"), 0o755)
}

// commit moves the temporary directory to Out, replacing what is there.
func (b *builder) commit() error {
	out := filepath.Clean(b.o.Out)
	if err := checkOut(out, b.o.Force); err != nil { // it may have changed meanwhile
		return err
	}
	var old string
	if _, err := os.Stat(out); err == nil {
		old = b.tmp + ".old"
		if err := os.Rename(out, old); err != nil {
			return fmt.Errorf("-out %s: %w", out, err)
		}
	}
	if err := os.Rename(b.tmp, out); err != nil {
		if old != "" {
			os.Rename(old, out)
		}
		return fmt.Errorf("-out %s: %w", out, err)
	}
	b.tmp = ""
	if old != "" {
		os.RemoveAll(old)
	}
	return nil
}

// assemble builds the manifest in memory (Dir = the temporary directory),
// copying the variants.
func (b *builder) assemble(plans []*plan, vres []variantResult, val *split, d int, rng *[2]float64) (*manifest.App, error) {
	o, base := b.o, b.base
	k := len(b.labels)
	app := &manifest.App{
		Name: base.Name, Description: base.Description, InputSize: d, InputShape: base.InputShape,
		InputRange: rng, Labels: b.labels, DefaultDeadlineMS: base.DefaultDeadlineMS,
		Utility: base.Utility, NoAnswerUtility: base.NoAnswerUtility, Workloads: base.Workloads,
		Estimators: slices.Clone(base.Estimators), Dir: b.tmp,
	}
	if o.Description != "" {
		app.Description = o.Description
	}
	if app.Description == "" {
		app.Description = fmt.Sprintf("%s: %d classes, %d input values (built by sneakgate app build)", app.Name, k, d)
	}
	if len(app.InputShape) == 0 {
		app.InputShape = []int{d}
		in := plans[0].spec.DataInput()
		if in.Length == 0 && in.Offset == 0 {
			var shape []int
			n := 1
			for _, x := range in.Shape {
				if x > 0 {
					shape = append(shape, int(x))
					n *= int(x)
				}
			}
			if n == d && len(shape) > 0 {
				app.InputShape = shape
			}
		}
	}
	if o.Deadline > 0 {
		app.DefaultDeadlineMS = int64(math.Ceil(float64(o.Deadline) / float64(time.Millisecond)))
	}
	if app.DefaultDeadlineMS <= 0 {
		app.DefaultDeadlineMS = int64(defaultDeadline / time.Millisecond)
	}
	if b.util != nil {
		app.Utility, app.NoAnswerUtility = b.util.Utility, b.util.NoAnswerUtility
		if app.NoAnswerUtility == nil {
			app.NoAnswerUtility = base.NoAnswerUtility
		}
	}
	if app.Utility == nil {
		app.Utility = identity(k)
	}
	app.Prior = classMix(val.labels, k)
	for c := range app.Prior {
		app.Prior[c] = round(app.Prior[c], 6)
	}
	for i, p := range plans {
		v := p.spec
		v.File = v.Name + ".onnx"
		v.Output.Kind = vres[i].Kind
		v.Accuracy = round(vres[i].Accuracy, 6)
		v.Confusion = vres[i].Confusion
		v.Recall = make([]float64, k)
		for c, r := range vres[i].Recall {
			v.Recall[c] = round(r, 6)
		}
		v.LatencyUS = nil
		if err := copyFile(p.src, filepath.Join(b.tmp, v.File)); err != nil {
			return nil, fmt.Errorf("variant %s: copying %s: %w", v.Name, p.src, err)
		}
		app.Variants = append(app.Variants, v)
	}
	if len(app.Estimators) == 0 {
		feat := o.Features
		if feat == "" {
			feat = DefaultFeatures(app.InputShape, d)
		}
		app.Estimators = defaultEstimators(feat, o.KNNK)
	}
	for i := range app.Estimators {
		e := &app.Estimators[i]
		if e.Name == "" || e.Kind == "" {
			return nil, fmt.Errorf("%w: base spec estimators[%d]: name and kind are required", ErrUsage, i)
		}
		if e.Features == "" {
			e.Features = o.Features
			if e.Features == "" {
				e.Features = DefaultFeatures(app.InputShape, d)
			}
		}
		switch e.Kind {
		case "logistic":
			if e.File == "" {
				e.File = "est/" + e.Name + ".json"
			}
		case "knn":
			if e.File == "" {
				e.File = "est/" + e.Name + "-ref.sgs"
			}
			if e.K <= 0 {
				e.K = o.KNNK
			}
		default:
			return nil, fmt.Errorf("%w: estimator %s: kind %q: the build trains logistic and knn", ErrUsage, e.Name, e.Kind)
		}
		e.Accuracy, e.ECE, e.CostUS = 0, 0, 0
	}
	if err := checkMatrixSize("utility", app.Utility, k, o.UtilityFile, o.Base); err != nil {
		return nil, err
	}
	if err := app.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUsage, err)
	}
	return app, nil
}

func checkMatrixSize(field string, m [][]float64, k int, files ...string) error {
	ok := len(m) == k
	for _, row := range m {
		ok = ok && len(row) == k
	}
	if ok {
		return nil
	}
	var from []string
	for _, f := range files {
		if f != "" {
			from = append(from, f)
		}
	}
	return fmt.Errorf("%w: %s (%s): want a %d x %d matrix (%d classes)", ErrUsage, field, strings.Join(from, ", "), k, k, k)
}

// writeSamples writes data/validation.sgs and samples.sgs (from the test
// split, else a stratified part of validation) and records them in app.
func (b *builder) writeSamples(app *manifest.App, val, test *split) (string, error) {
	k := app.K()
	vset := val.set()
	if err := dataset.Write(filepath.Join(b.tmp, "data", "validation.sgs"), vset, exactUint8(vset.Values)); err != nil {
		return "", err
	}
	app.Validation = &manifest.Samples{File: "data/validation.sgs", Count: val.n}
	var set *dataset.Set
	var from string
	n := b.o.SampleCount
	switch {
	case test != nil && test.n <= n:
		set, from = test.set(), fmt.Sprintf("the whole -test split (%d rows)", test.n)
	case test != nil:
		idx, _ := stratified(test.labels, k, n, b.o.Seed+2)
		set, from = test.subset(idx), fmt.Sprintf("%d stratified rows of the %d-row -test split", len(idx), test.n)
	default:
		idx, _ := stratified(val.labels, k, min(n, (val.n+1)/2), b.o.Seed+2)
		set = val.subset(idx)
		from = fmt.Sprintf("%d stratified rows of the validation split (no -test given: they are part of the rows every metric here was measured on)", len(idx))
	}
	if err := dataset.Write(filepath.Join(b.tmp, "samples.sgs"), set, exactUint8(set.Values)); err != nil {
		return "", err
	}
	app.Samples = &manifest.Samples{File: "samples.sgs", Count: set.N}
	if len(app.Workloads) == 0 {
		mix := classMix(set.Labels, k)
		for c := range mix {
			mix[c] = round(mix[c], 6)
		}
		app.Workloads = []manifest.Workload{{Name: "natural", Description: "the class mix of samples.sgs", Mix: mix}}
	}
	return from, nil
}

func (b *builder) header(train, val, test *split, samplesFrom string) []string {
	h := []string{"Generated by `sneakgate app build` (package appbuild); rebuild rather than edit."}
	h = append(h, b.base.Comments...)
	if b.o.CommandLine != "" {
		h = append(h, "Command: "+b.o.CommandLine)
	}
	src := func(s *split) string {
		if s.xsrc == s.ysrc {
			return s.xsrc
		}
		return s.xsrc + ", " + s.ysrc
	}
	h = append(h, fmt.Sprintf("Training split (estimators): %d rows from %s.", train.n, src(train)),
		fmt.Sprintf("Validation split (accuracy, confusion, recall, prior, estimator metrics; data/validation.sgs): %d rows from %s.", val.n, src(val)))
	if test != nil {
		h = append(h, fmt.Sprintf("Test split: %d rows from %s.", test.n, src(test)))
	}
	h = append(h, "samples.sgs: "+samplesFrom+".")
	return h
}

// round rounds x to n decimals.
func round(x float64, n int) float64 {
	p := math.Pow(10, float64(n))
	return math.Round(x*p) / p
}

// writeManifest writes app as YAML with header comment lines; lists of
// scalars are written on one line.
func writeManifest(path string, app *manifest.App, header []string) error {
	var n yaml.Node
	if err := n.Encode(app); err != nil {
		return err
	}
	flowScalars(&n)
	dropInputDefaults(&n, false)
	var hc []string
	for _, h := range header {
		for _, l := range strings.Split(h, "\n") {
			hc = append(hc, "# "+l)
		}
	}
	n.HeadComment = strings.Join(hc, "\n")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := yaml.NewEncoder(f)
	enc.SetIndent(2)
	err = errors.Join(enc.Encode(&n), enc.Close())
	return errors.Join(err, f.Close())
}

// dropInputDefaults removes the fields of variants' inputs that hold their
// default (dtype "", offset 0, length 0, value 0), as the bundled manifests
// leave them out.
func dropInputDefaults(n *yaml.Node, inInputs bool) {
	if n.Kind == yaml.MappingNode && inInputs {
		var keep []*yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch {
			case k.Value == "dtype" && v.Value == "",
				(k.Value == "offset" || k.Value == "length" || k.Value == "value") && v.Value == "0":
				continue
			}
			keep = append(keep, k, v)
		}
		n.Content = keep
		return
	}
	for i, c := range n.Content {
		child := n.Kind == yaml.MappingNode && i%2 == 1 && n.Content[i-1].Value == "inputs"
		if n.Kind == yaml.SequenceNode && inInputs {
			child = true
		}
		dropInputDefaults(c, child)
	}
}

func flowScalars(n *yaml.Node) {
	if n.Kind == yaml.SequenceNode {
		flow := true
		for _, c := range n.Content {
			flow = flow && c.Kind == yaml.ScalarNode
		}
		if flow {
			n.Style = yaml.FlowStyle
		}
	}
	for _, c := range n.Content {
		flowScalars(c)
	}
}

// measured.json, in the schema of models/tools/measure (models/train/report.py
// reads it).
type measuredVariant struct {
	ORTAccuracy      float64     `json:"ort_accuracy"`
	Confusion        [][]float64 `json:"confusion"`
	Recall           []float64   `json:"recall"`
	ManifestAccuracy float64     `json:"manifest_accuracy"`
	MaxBatchDiff     float64     `json:"max_batch_diff"`
	USBatch1         float64     `json:"us_batch1"`
	USPerSample32    float64     `json:"us_per_sample_batch32"`
}

type measuredEstimator struct {
	CostUS        float64 `json:"cost_us"`
	RelCheapest   float64 `json:"relative_to_cheapest_variant"`
	CheapestName  string  `json:"cheapest_variant"`
	AllocsPerCall int64   `json:"allocs_per_call"`
}

func writeMeasured(path string, vres []variantResult, eres []estimatorResult) error {
	out := struct {
		Note       string                       `json:"note"`
		Variants   map[string]measuredVariant   `json:"variants"`
		Estimators map[string]measuredEstimator `json:"estimators"`
	}{Note: "offline measurement by sneakgate app build on this machine, one intra-op thread; informational",
		Variants: map[string]measuredVariant{}, Estimators: map[string]measuredEstimator{}}
	cheapest, cheapestUS := "", math.Inf(1)
	for _, v := range vres {
		out.Variants[v.Name] = measuredVariant{ORTAccuracy: v.Accuracy, Confusion: v.Confusion, Recall: v.Recall,
			ManifestAccuracy: round(v.Accuracy, 6), MaxBatchDiff: v.MaxBatchDiff, USBatch1: v.USBatch1, USPerSample32: v.USPerSample32}
		if v.USBatch1 < cheapestUS {
			cheapest, cheapestUS = v.Name, v.USBatch1
		}
	}
	for _, e := range eres {
		out.Estimators[e.Name] = measuredEstimator{CostUS: e.CostUS, RelCheapest: e.CostUS / cheapestUS,
			CheapestName: cheapest, AllocsPerCall: e.Allocs}
	}
	b, err := json.MarshalIndent(out, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}
