package appbuild

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sneakgate/sneakgate/manifest"
)

// ErrUsage wraps errors in the options themselves (a bad -variant, a missing
// split, a refused output directory); the command line exits 2 on them.
var ErrUsage = errors.New("app build")

// VariantArg is one -variant NAME=FILE.onnx argument.
type VariantArg struct {
	Name, File string
}

var variantName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// ParseVariant parses "NAME=FILE.onnx". NAME must be a manifest name
// (lower-case letter, then letters, digits, '-' or '_'; at most 32).
func ParseVariant(s string) (VariantArg, error) {
	name, file, ok := strings.Cut(s, "=")
	if !ok || name == "" || file == "" {
		return VariantArg{}, fmt.Errorf("%w: -variant %q: want NAME=FILE.onnx", ErrUsage, s)
	}
	if !variantName.MatchString(name) {
		return VariantArg{}, fmt.Errorf("%w: -variant %q: the name %q must match %s", ErrUsage, s, name, variantName)
	}
	return VariantArg{Name: name, File: file}, nil
}

// Options configures Build.
type Options struct {
	// Name is the application's name (overrides the base spec's).
	Name string
	// Out is the application directory to write. It must not exist or be
	// empty unless Force is set; it is written in a temporary directory beside
	// it and renamed into place at the end.
	Out   string
	Force bool
	// Variants are the ONNX models, in manifest order after the base spec's.
	Variants []VariantArg
	// Train, Validation and Test name the splits (see SplitSpec); Test is
	// optional.
	Train, Validation, Test string
	// Labels or LabelsFile name the classes (else the base spec's, else
	// "class0", "class1", ...).
	Labels     []string
	LabelsFile string
	// UtilityFile is a YAML K x K matrix (or a mapping with utility and,
	// optionally, no_answer_utility); identity when neither it nor the base
	// spec gives one.
	UtilityFile string
	// Deadline is the default deadline (0: the base spec's, else 50 ms).
	Deadline time.Duration
	// Base is a partial manifest (YAML) the build completes; see BaseSpec.
	Base string
	// Description overrides the base spec's description.
	Description string
	// InputRange, if set, is the manifest's input_range; every value of every
	// split must lie in it.
	InputRange *[2]float64
	// Features is the feature transform of the default estimators (empty:
	// chosen from the input shape, see DefaultFeatures).
	Features string
	// KNNReference is the most training rows in a kNN reference set (0:
	// 2,000); KNNK its number of neighbours (0: 5).
	KNNReference, KNNK int
	// NoDifficulty skips the per-sample difficulty model.
	NoDifficulty bool
	// SampleCount bounds samples.sgs (0: 2,000 rows).
	SampleCount int
	// Seed drives every random choice (stratified subsets); 0 means 1.
	Seed uint64
	// Library is the ONNX Runtime library (empty: $SNEAKGATE_ORT_LIB).
	Library string
	// LatencyBudget is the time spent timing each variant at each batch size
	// (0: 300 ms); BenchRuns the testing.Benchmark runs per estimator, the best
	// kept (0: 3).
	LatencyBudget time.Duration
	BenchRuns     int
	// CommandLine is recorded in the manifest's header comment.
	CommandLine string
	// Out and Log receive the report and progress lines (nil: discarded).
	Stdout, Log io.Writer
}

func (o *Options) defaults() {
	if o.KNNReference <= 0 {
		o.KNNReference = 2000
	}
	if o.KNNK <= 0 {
		o.KNNK = 5
	}
	if o.SampleCount <= 0 {
		o.SampleCount = 2000
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.LatencyBudget <= 0 {
		o.LatencyBudget = 300 * time.Millisecond
	}
	if o.BenchRuns <= 0 {
		o.BenchRuns = 3
	}
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

// BaseSpec is the partial manifest a build starts from (-base FILE): any field
// of manifest.App (description, input_shape, input_range, labels, utility,
// no_answer_utility, default_deadline_ms, workloads; variants with their
// inputs, output, family and params, for models with several inputs such as
// a recurrent state; estimators with name, kind, features and k), plus the
// header comment lines. What the build measures (accuracy, confusion, recall,
// prior, prior_strength, estimator metrics, samples, validation) is filled in;
// values of those fields in the base are ignored. A base variant's file is
// relative to the base file; a -variant of the same name replaces it. Unknown
// keys are refused, as by manifest.Load.
type BaseSpec struct {
	manifest.App `yaml:",inline"`
	// Comments are written at the top of manifest.yaml, one "# " line each.
	Comments []string `yaml:"comments"`
	// KNNReference overrides Options.KNNReference when set.
	KNNReference int `yaml:"knn_reference"`
}

// loadBase reads a base spec; its variant files are resolved against its
// directory.
func loadBase(path string) (*BaseSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("base spec: %w", err)
	}
	var s BaseSpec
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("base spec %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	for i := range s.Variants {
		v := &s.Variants[i]
		if v.File != "" && !filepath.IsAbs(v.File) {
			v.File = filepath.Join(dir, v.File)
		}
	}
	return &s, nil
}

// utilitySpec is a -utility file in its mapping form.
type utilitySpec struct {
	Utility         [][]float64 `yaml:"utility"`
	NoAnswerUtility []float64   `yaml:"no_answer_utility"`
}

// loadUtility reads a -utility file: a bare K x K list of lists, or a mapping
// with utility and optionally no_answer_utility.
func loadUtility(path string) (*utilitySpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("utility: %w", err)
	}
	var m [][]float64
	if err := yaml.Unmarshal(b, &m); err == nil && m != nil {
		return &utilitySpec{Utility: m}, nil
	}
	var s utilitySpec
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("utility %s: want a K x K list of lists or a mapping with utility (and no_answer_utility): %w", path, err)
	}
	if s.Utility == nil {
		return nil, fmt.Errorf("utility %s: no utility matrix", path)
	}
	return &s, nil
}

// loadLabels reads a -labels-file: one label per line; blank lines and lines
// starting with '#' are skipped.
func loadLabels(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("labels: %w", err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("labels %s: no labels", path)
	}
	return out, nil
}
