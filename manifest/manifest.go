// Package manifest loads and validates an application manifest: the file under
// models/{app}/manifest.yaml that describes one application's model variants, its
// SneakPeek estimators, its classes, its class prior and its utility matrix.
//
// Basics: Load reads and validates a manifest; every path in it is resolved relative
// to the manifest's own directory. A manifest that is inconsistent (a matrix of the
// wrong size, a prior that does not sum to 1, a variant input that does not fit the
// request input, a NaN, infinite or out-of-range number, sizes whose arithmetic
// would overflow, two labels, estimators, workloads or inputs of one variant with
// the same name) is refused with an error naming the file, the field, the
// variant, estimator or input it belongs to, and the value.
//
// Caveats: Load does not open the ONNX files; the engine checks that the shapes
// declared here match the model when it loads a variant.
package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"gopkg.in/yaml.v3"
)

// App is one application: a classification task served by several model variants.
type App struct {
	// Name is the application's name as used in topics: sneakgate/req/{name}/{device}.
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// InputSize is the number of float32 values in one request's input.
	InputSize int `yaml:"input_size"`
	// InputShape is how those values are laid out for display and documentation
	// (e.g. [28, 28]); its dimensions are positive and their product equals InputSize.
	InputShape []int `yaml:"input_shape"`
	// InputRange, if set, is the closed interval every input value must lie in.
	InputRange *[2]float64 `yaml:"input_range,omitempty"`
	// Labels names the classes (distinct, non-empty: replies name the class by its
	// label); len(Labels) is the number of classes K.
	Labels []string `yaml:"labels"`
	// DefaultDeadlineMS is the budget used when a request names no deadline
	// (positive, and at most what a time.Duration holds).
	DefaultDeadlineMS int64 `yaml:"default_deadline_ms"`
	// Prior is the class prior (sums to 1), the Dirichlet concentration's shape for the
	// kNN estimator and the label mix of the validation split.
	Prior []float64 `yaml:"prior"`
	// PriorStrength is the Dirichlet prior's total mass (sum of alpha); 0 means K.
	// It is finite and >= 0 (at most half the largest float64, so that the
	// concentrations' sum stays finite).
	PriorStrength float64 `yaml:"prior_strength"`
	// Utility is the K x K matrix W[y][yhat]: the value of predicting yhat when the
	// truth is y. The identity matrix values plain accuracy.
	Utility [][]float64 `yaml:"utility"`
	// NoAnswerUtility, if set, is the value of a request of each true class that
	// gets no model answer (expired, shed, refused: the application's default
	// action), one value per class. Omitted means 0 for every class.
	NoAnswerUtility []float64 `yaml:"no_answer_utility,omitempty"`
	// Variants are the model variants, usually from cheapest to most accurate.
	Variants []Variant `yaml:"variants"`
	// Estimators are the SneakPeek estimators; the first is used unless configured.
	Estimators []Estimator `yaml:"estimators"`
	// Difficulty, if set, is the per-sample difficulty model: per request, the
	// probability that each variant answers it correctly (package sneakpeek).
	Difficulty *Difficulty `yaml:"difficulty,omitempty"`
	// Samples points to evaluation samples the simulator and tests may replay.
	Samples *Samples `yaml:"samples,omitempty"`
	// Validation points to the held-out validation split (never used for
	// training) on which every variant's confusion matrix and every estimator's
	// accuracy were measured.
	Validation *Samples `yaml:"validation,omitempty"`
	// Workloads are named label mixes for the simulator and the evaluator.
	Workloads []Workload `yaml:"workloads,omitempty"`

	// Dir is the directory the manifest was loaded from (not read from YAML).
	Dir string `yaml:"-"`
}

// Variant is one ONNX model of an application.
type Variant struct {
	Name string `yaml:"name"`
	// File is the ONNX file, relative to the manifest.
	File string `yaml:"file"`
	// Family is free text (logistic, mlp, cnn, tree-ensemble, silero-v5...).
	Family string `yaml:"family"`
	// Inputs lists every ONNX input of the model and how it is fed.
	Inputs []Input `yaml:"inputs"`
	// Output says which ONNX output holds the answer and how to read it.
	Output Output `yaml:"output"`
	// Params is the number of parameters (informational, >= 0).
	Params int64 `yaml:"params"`
	// Accuracy is the accuracy measured on the held-out validation split, in [0,1].
	Accuracy float64 `yaml:"accuracy"`
	// Confusion is the K x K count matrix on the validation split, rows = true class.
	Confusion [][]float64 `yaml:"confusion"`
	// Recall is the per-class recall on the validation split (row-normalised diagonal).
	Recall []float64 `yaml:"recall"`
	// LatencyUS records per-sample latency measured offline at batch 1 and 32
	// (informational; the gateway measures its own profile at start-up), each
	// finite and >= 0.
	LatencyUS map[string]float64 `yaml:"latency_us,omitempty"`
}

// Input describes one ONNX input of a variant.
type Input struct {
	// Name is the ONNX input's name, unique among the variant's inputs.
	Name string `yaml:"name"`
	// Kind is "data" (taken from the request input), "zeros" (a zero tensor, e.g. an
	// initial recurrent state) or "const" (a constant scalar or tensor).
	Kind string `yaml:"kind"`
	// DType is "float32" (default) or "int64".
	DType string `yaml:"dtype"`
	// Shape is the tensor shape with -1 marking the batch axis (exactly one -1 for
	// data and zeros; none for const); the other dimensions are positive and their
	// product fits an int. For data, that product must equal Length.
	Shape []int64 `yaml:"shape"`
	// Offset and Length select the slice of the request input fed to a data input;
	// Length 0 means the whole request input from Offset. The slice lies within
	// the request input.
	Offset int `yaml:"offset"`
	Length int `yaml:"length"`
	// Value fills a const input: finite and within its dtype's range (rounded to
	// the nearest integer for int64).
	Value float64 `yaml:"value"`
}

// Output describes how a variant's answer is read.
type Output struct {
	Name string `yaml:"name"`
	// Kind is "logits" (softmax is applied), "probabilities" (used as is) or
	// "score" (a single probability of the positive class, class 1 of 2).
	Kind string `yaml:"kind"`
}

// Estimator describes one SneakPeek estimator.
type Estimator struct {
	// Name is unique among the manifest's estimators.
	Name string `yaml:"name"`
	// Kind is "knn" or "logistic" (more kinds may be added by package sneakpeek).
	Kind string `yaml:"kind"`
	// File holds the estimator's parameters, relative to the manifest.
	File string `yaml:"file"`
	// K is the number of neighbours for knn.
	K int `yaml:"k,omitempty"`
	// Features names the feature transform applied to the request input before the
	// estimator (see package sneakpeek), e.g. "pool4" or "identity".
	Features string `yaml:"features"`
	// Accuracy and ECE (both in [0,1]) are measured on the validation split;
	// CostUS (finite, >= 0) is the measured cost per request in microseconds.
	Accuracy float64 `yaml:"accuracy"`
	ECE      float64 `yaml:"ece"`
	CostUS   float64 `yaml:"cost_us"`
}

// Difficulty describes a per-sample difficulty model (sneakpeek.Difficulty).
type Difficulty struct {
	// File holds its parameters (JSON), relative to the manifest.
	File string `yaml:"file" json:"file"`
	// Estimator names the estimator whose class estimate the model reads.
	Estimator string `yaml:"estimator" json:"estimator"`
	// Form is the model's form, "shared" or "per-variant" (sneakpeek.FormShared,
	// FormPerVariant); the parameter file says it too, and LoadDifficulty refuses
	// a file of the other form.
	Form string `yaml:"form,omitempty" json:"form,omitempty"`
	// AUC is, per variant (manifest order), the area under the ROC curve of its
	// correctness predictions on held-out rows; ClassAUC is the same for the
	// class-based expected accuracy sum_y p(y) recall(y), for comparison. Both are
	// in [0,1].
	AUC      []float64 `yaml:"auc,omitempty" json:"auc"`
	ClassAUC []float64 `yaml:"class_auc,omitempty" json:"class_auc"`
	// TrainedOn says which rows it was trained on and how AUC was measured.
	TrainedOn string `yaml:"trained_on,omitempty" json:"trained_on"`
	// CostUS is the measured cost per request in microseconds (finite, >= 0).
	CostUS float64 `yaml:"cost_us,omitempty" json:"cost_us"`
}

// Samples points to a sample file: replayable evaluation samples or a split.
type Samples struct {
	// File is a sample file relative to the manifest (format: package dataset).
	File string `yaml:"file"`
	// Count is the number of samples in it (>= 0).
	Count int `yaml:"count"`
}

// Workload is a named label mix.
type Workload struct {
	// Name is unique among the manifest's workloads.
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// Mix is the class mix (sums to 1). A drifting workload has Mix and MixEnd and
	// moves linearly from one to the other over the run.
	Mix    []float64 `yaml:"mix"`
	MixEnd []float64 `yaml:"mix_end,omitempty"`
}

// Errors returned by Load.
var (
	// ErrInvalid is wrapped by every validation error.
	ErrInvalid = errors.New("invalid manifest")
)

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// Load reads the manifest at path, resolves its relative paths and validates it.
// It returns an error wrapping ErrInvalid that names the offending field when the
// manifest is inconsistent, or the read/parse error.
func Load(path string) (*App, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	var a App
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	a.Dir = filepath.Dir(path)
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	return &a, nil
}

// Path resolves a file named in the manifest relative to the manifest's directory.
func (a *App) Path(file string) string {
	if filepath.IsAbs(file) {
		return file
	}
	return filepath.Join(a.Dir, file)
}

// K is the number of classes.
func (a *App) K() int { return len(a.Labels) }

// Variant returns the variant with the given name, or nil.
func (a *App) Variant(name string) *Variant {
	for i := range a.Variants {
		if a.Variants[i].Name == name {
			return &a.Variants[i]
		}
	}
	return nil
}

// NoAnswer returns the value of a request of true class y that gets no model
// answer: NoAnswerUtility[y], or 0 when the manifest sets none.
func (a *App) NoAnswer(y int) float64 {
	if y < 0 || y >= len(a.NoAnswerUtility) {
		return 0
	}
	return a.NoAnswerUtility[y]
}

// Alpha returns the Dirichlet concentration: Prior scaled to PriorStrength (K if 0).
func (a *App) Alpha() []float64 {
	s := a.PriorStrength
	if s == 0 {
		s = float64(a.K())
	}
	out := make([]float64, len(a.Prior))
	for i, p := range a.Prior {
		out[i] = p * s
	}
	return out
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// Validate checks the manifest's internal consistency.
func (a *App) Validate() error {
	if !nameRE.MatchString(a.Name) {
		return invalid("name %q: must match %s", a.Name, nameRE)
	}
	if a.InputSize <= 0 {
		return invalid("input_size: must be positive, got %d", a.InputSize)
	}
	if len(a.InputShape) > 0 {
		n := 1
		for _, d := range a.InputShape {
			if d <= 0 {
				return invalid("input_shape %v: dimension %d: dimensions must be positive", a.InputShape, d)
			}
			// n*d > input_size, tested without computing n*d (which may overflow).
			if n > a.InputSize/d {
				return invalid("input_shape %v: product exceeds input_size %d", a.InputShape, a.InputSize)
			}
			n *= d
		}
		if n != a.InputSize {
			return invalid("input_shape %v: product %d != input_size %d", a.InputShape, n, a.InputSize)
		}
	}
	if a.InputRange != nil && !(a.InputRange[0] < a.InputRange[1]) {
		return invalid("input_range %v: low must be below high", *a.InputRange)
	}
	k := len(a.Labels)
	if k < 2 {
		return invalid("labels: need at least 2 classes, got %d", k)
	}
	// Replies name the class by its label: each must be one class's.
	labels := map[string]int{}
	for y, l := range a.Labels {
		if l == "" {
			return invalid("labels[%d] %q: must not be empty", y, l)
		}
		if z, dup := labels[l]; dup {
			return invalid("labels[%d] %q: duplicate of labels[%d]", y, l, z)
		}
		labels[l] = y
	}
	if a.DefaultDeadlineMS <= 0 || a.DefaultDeadlineMS > maxDeadlineMS {
		return invalid("default_deadline_ms %d: must be in [1, %d] (a time.Duration)", a.DefaultDeadlineMS, maxDeadlineMS)
	}
	if err := checkDist("prior", a.Prior, k); err != nil {
		return err
	}
	// Alpha scales the prior (which sums to 1 within 1e-3) by prior_strength: half
	// the largest float64 keeps the concentrations' sum finite.
	if !(a.PriorStrength >= 0 && a.PriorStrength <= math.MaxFloat64/2) {
		return invalid("prior_strength %v: must be a finite number in [0, %g]", a.PriorStrength, math.MaxFloat64/2)
	}
	if err := checkMatrix("utility", a.Utility, k); err != nil {
		return err
	}
	if a.NoAnswerUtility != nil {
		if len(a.NoAnswerUtility) != k {
			return invalid("no_answer_utility: want %d values, got %d", k, len(a.NoAnswerUtility))
		}
		for y, x := range a.NoAnswerUtility {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return invalid("no_answer_utility[%d] %v: not a finite number", y, x)
			}
		}
	}
	if len(a.Variants) == 0 {
		return invalid("variants: need at least one")
	}
	seen := map[string]bool{}
	for i := range a.Variants {
		v := &a.Variants[i]
		f := fmt.Sprintf("variants[%d]", i)
		if !nameRE.MatchString(v.Name) {
			return invalid("%s.name %q: must match %s", f, v.Name, nameRE)
		}
		if seen[v.Name] {
			return invalid("%s.name %q: duplicate", f, v.Name)
		}
		seen[v.Name] = true
		bad := within(fmt.Sprintf("variant %q", v.Name))
		if v.File == "" {
			return bad("%s.file: required", f)
		}
		if err := a.checkInputs(f, v); err != nil {
			return err
		}
		switch v.Output.Kind {
		case "logits", "probabilities":
		case "score":
			if k != 2 {
				return bad("%s.output.kind score needs exactly 2 labels, have %d", f, k)
			}
		default:
			return bad("%s.output.kind %q: want logits, probabilities or score", f, v.Output.Kind)
		}
		if v.Output.Name == "" {
			return bad("%s.output.name: required", f)
		}
		if v.Params < 0 {
			return bad("%s.params %d: must not be negative", f, v.Params)
		}
		if !unit(v.Accuracy) {
			return bad("%s.accuracy %v: must be in [0,1]", f, v.Accuracy)
		}
		if err := checkMatrix(f+".confusion", v.Confusion, k); err != nil {
			return fmt.Errorf("%w (variant %q)", err, v.Name)
		}
		for y, row := range v.Confusion {
			for _, c := range row {
				if c < 0 {
					return bad("%s.confusion[%d] %v: negative count", f, y, c)
				}
			}
		}
		if len(v.Recall) != k {
			return bad("%s.recall: want %d values, got %d", f, k, len(v.Recall))
		}
		for y, r := range v.Recall {
			if !unit(r) {
				return bad("%s.recall[%d] %v: must be in [0,1]", f, y, r)
			}
		}
		for _, key := range slices.Sorted(maps.Keys(v.LatencyUS)) {
			if us := v.LatencyUS[key]; !cost(us) {
				return bad("%s.latency_us[%q] %v: must be a finite number >= 0", f, key, us)
			}
		}
	}
	estimators := map[string]int{}
	for i, e := range a.Estimators {
		f := fmt.Sprintf("estimators[%d]", i)
		if e.Name == "" || e.Kind == "" || e.File == "" {
			return invalid("%s: name, kind and file are required", f)
		}
		// Configurations and the difficulty model name estimators.
		if j, dup := estimators[e.Name]; dup {
			return invalid("%s.name %q: duplicate of estimators[%d]", f, e.Name, j)
		}
		estimators[e.Name] = i
		bad := within(fmt.Sprintf("estimator %q", e.Name))
		if e.Kind == "knn" && e.K <= 0 {
			return bad("%s.k %d: must be positive for knn", f, e.K)
		}
		if !unit(e.Accuracy) {
			return bad("%s.accuracy %v: must be in [0,1]", f, e.Accuracy)
		}
		if !unit(e.ECE) {
			return bad("%s.ece %v: must be in [0,1]", f, e.ECE)
		}
		if !cost(e.CostUS) {
			return bad("%s.cost_us %v: must be a finite number >= 0", f, e.CostUS)
		}
	}
	if d := a.Difficulty; d != nil {
		if d.File == "" || d.Estimator == "" {
			return invalid("difficulty: file and estimator are required")
		}
		found := false
		for _, e := range a.Estimators {
			found = found || e.Name == d.Estimator
		}
		if !found {
			return invalid("difficulty.estimator %q: not one of the estimators", d.Estimator)
		}
		if d.Form != "" && d.Form != "shared" && d.Form != "per-variant" {
			return invalid("difficulty.form %q: want shared or per-variant", d.Form)
		}
		for _, f := range []struct {
			name string
			v    []float64
		}{{"auc", d.AUC}, {"class_auc", d.ClassAUC}} {
			if f.v != nil && len(f.v) != len(a.Variants) {
				return invalid("difficulty.%s: want %d values (one per variant), got %d", f.name, len(a.Variants), len(f.v))
			}
			for j, x := range f.v {
				if !unit(x) {
					return invalid("difficulty.%s[%d] %v: must be in [0,1] (variant %q)", f.name, j, x, a.Variants[j].Name)
				}
			}
		}
		if !cost(d.CostUS) {
			return invalid("difficulty.cost_us %v: must be a finite number >= 0", d.CostUS)
		}
	}
	for _, s := range []struct {
		name string
		s    *Samples
	}{{"samples", a.Samples}, {"validation", a.Validation}} {
		if s.s != nil && s.s.Count < 0 {
			return invalid("%s.count %d: must not be negative", s.name, s.s.Count)
		}
	}
	workloads := map[string]int{}
	for i, w := range a.Workloads {
		f := fmt.Sprintf("workloads[%d]", i)
		if w.Name == "" {
			return invalid("%s.name: required", f)
		}
		// The simulator and the evaluator look workloads up by name.
		if j, dup := workloads[w.Name]; dup {
			return invalid("%s.name %q: duplicate of workloads[%d]", f, w.Name, j)
		}
		workloads[w.Name] = i
		if err := checkDist(f+".mix", w.Mix, k); err != nil {
			return fmt.Errorf("%w (workload %q)", err, w.Name)
		}
		if w.MixEnd != nil {
			if err := checkDist(f+".mix_end", w.MixEnd, k); err != nil {
				return fmt.Errorf("%w (workload %q)", err, w.Name)
			}
		}
	}
	return nil
}

// maxDeadlineMS is the largest default_deadline_ms a time.Duration holds.
const maxDeadlineMS = math.MaxInt64 / int64(time.Millisecond)

// within returns invalid with the section's names (`variant "small"`) appended to
// the message in parentheses.
func within(section string) func(format string, args ...any) error {
	return func(format string, args ...any) error {
		return invalid(format+" (%s)", append(args, section)...)
	}
}

// unit reports whether x is a number in [0, 1] (NaN is not).
func unit(x float64) bool { return x >= 0 && x <= 1 }

// cost reports whether x is a finite number >= 0 (a cost or a latency).
func cost(x float64) bool { return x >= 0 && !math.IsInf(x, 1) }

func (a *App) checkInputs(f string, v *Variant) error {
	data := 0
	names := map[string]int{}
	for j, in := range v.Inputs {
		g := fmt.Sprintf("%s.inputs[%d]", f, j)
		if in.Name == "" {
			return invalid("%s.name: required (variant %q)", g, v.Name)
		}
		if i, dup := names[in.Name]; dup {
			return invalid("%s.name %q: duplicate of %s.inputs[%d] (variant %q)", g, in.Name, f, i, v.Name)
		}
		names[in.Name] = j
		bad := within(fmt.Sprintf("variant %q, input %q", v.Name, in.Name))
		switch in.DType {
		case "", "float32", "int64":
		default:
			return bad("%s.dtype %q: want float32 or int64", g, in.DType)
		}
		batchAxes, prod := 0, int64(1)
		for _, d := range in.Shape {
			switch {
			case d == -1:
				batchAxes++
			case d > 0:
				// The engine holds a sample's (or a constant's) element count in an int.
				if prod > math.MaxInt/d {
					return bad("%s.shape %v: dimension %d: the product of the dimensions exceeds %d", g, in.Shape, d, math.MaxInt)
				}
				prod *= d
			default:
				return bad("%s.shape %v: dimension %d: dimensions must be positive or -1", g, in.Shape, d)
			}
		}
		switch in.Kind {
		case "data":
			data++
			if batchAxes != 1 {
				return bad("%s.shape %v: data input needs exactly one -1 (batch) axis", g, in.Shape)
			}
			// The slice [offset, offset+n) must lie in [0, input_size); no sum here may
			// overflow (an end past MaxInt wraps negative and passes a plain end check).
			// The messages name the variant and the application, and both sizes.
			if in.Offset < 0 || in.Offset >= a.InputSize || in.Length < 0 || in.Length > a.InputSize-in.Offset {
				if in.Offset < 0 || in.Length < 0 {
					return invalid("%s: variant %s of %s, input %q: offset %d and length %d must not be negative", g, v.Name, a.Name, in.Name, in.Offset, in.Length)
				}
				need := fmt.Sprintf("more than %d", math.MaxInt)
				if l := max(in.Length, 1); in.Offset <= math.MaxInt-l {
					need = fmt.Sprint(in.Offset + l)
				}
				return invalid("%s: variant %s of %s, input %q: offset %d and length %d need %s values, input_size is %d",
					g, v.Name, a.Name, in.Name, in.Offset, in.Length, need, a.InputSize)
			}
			n := in.Length
			if n == 0 {
				n = a.InputSize - in.Offset
			}
			if prod != int64(n) {
				return invalid("%s.shape %v: variant %s of %s, input %q: %d values per sample, want %d (offset %d, length %d of input_size %d)",
					g, in.Shape, v.Name, a.Name, in.Name, prod, n, in.Offset, n, a.InputSize)
			}
		case "zeros":
			if batchAxes != 1 {
				return bad("%s.shape %v: zeros input needs exactly one -1 (batch) axis", g, in.Shape)
			}
		case "const":
			if batchAxes != 0 {
				return bad("%s.shape %v: const input has no batch axis", g, in.Shape)
			}
			// The engine fills the tensor with float32(value), or int64(round(value)).
			if in.DType == "int64" {
				if r := math.Round(in.Value); !(r >= math.MinInt64 && r < math.MaxInt64) {
					return bad("%s.value %v: must be a finite number in int64's range", g, in.Value)
				}
			} else if !(math.Abs(in.Value) <= math.MaxFloat32) {
				return bad("%s.value %v: must be a finite number in float32's range", g, in.Value)
			}
		default:
			return bad("%s.kind %q: want data, zeros or const", g, in.Kind)
		}
	}
	if data != 1 {
		return invalid("%s.inputs: need exactly one data input, got %d (variant %q)", f, data, v.Name)
	}
	return nil
}

// DataInput returns the variant's data input.
func (v *Variant) DataInput() Input {
	for _, in := range v.Inputs {
		if in.Kind == "data" {
			return in
		}
	}
	return Input{}
}

func checkDist(field string, p []float64, k int) error {
	if len(p) != k {
		return invalid("%s: want %d values, got %d", field, k, len(p))
	}
	s := 0.0
	for i, x := range p {
		if x < 0 || math.IsNaN(x) || math.IsInf(x, 0) {
			return invalid("%s[%d] %v: must be a non-negative number", field, i, x)
		}
		s += x
	}
	if math.Abs(s-1) > 1e-3 {
		return invalid("%s: sums to %v, want 1", field, s)
	}
	return nil
}

func checkMatrix(field string, m [][]float64, k int) error {
	if len(m) != k {
		return invalid("%s: want %d rows, got %d", field, k, len(m))
	}
	for i, row := range m {
		if len(row) != k {
			return invalid("%s[%d]: want %d columns, got %d", field, i, k, len(row))
		}
		for j, x := range row {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return invalid("%s[%d][%d] %v: not a finite number", field, i, j, x)
			}
		}
	}
	return nil
}
