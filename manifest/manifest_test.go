package manifest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `name: toy
input_size: 4
input_shape: [2, 2]
input_range: [0, 1]
labels: [no, yes]
default_deadline_ms: 50
prior: [0.9, 0.1]
utility: [[1, -0.1], [-1, 1]]
variants:
  - name: small
    file: small.onnx
    inputs:
      - {name: x, kind: data, shape: [-1, 4]}
      - {name: h, kind: zeros, shape: [2, -1, 8]}
      - {name: sr, kind: const, dtype: int64, shape: [], value: 16000}
    output: {name: p, kind: score}
    accuracy: 0.9
    confusion: [[80, 10], [0, 10]]
    recall: [0.888889, 1]
estimators:
  - {name: knn, kind: knn, file: ref.sgs, k: 5, features: identity}
workloads:
  - {name: natural, mix: [0.9, 0.1]}
  - {name: drift, mix: [0.9, 0.1], mix_end: [0.5, 0.5]}
`

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadGood(t *testing.T) {
	a, err := Load(write(t, good))
	if err != nil {
		t.Fatal(err)
	}
	if a.K() != 2 || a.Variant("small") == nil || a.Variant("big") != nil {
		t.Fatalf("loaded %+v", a)
	}
	if got := a.Path("small.onnx"); got != filepath.Join(a.Dir, "small.onnx") {
		t.Errorf("Path = %q", got)
	}
	if al := a.Alpha(); al[0] != 1.8 || al[1] != 0.2 {
		t.Errorf("Alpha = %v (prior scaled to K when prior_strength is 0)", al)
	}
	if in := a.Variants[0].DataInput(); in.Name != "x" {
		t.Errorf("DataInput = %+v", in)
	}
}

// TestValidationNamesTheField breaks one thing at a time.
func TestValidationNamesTheField(t *testing.T) {
	cases := []struct{ from, to, field string }{
		{"name: toy", "name: Toy!", "name"},
		{"input_size: 4", "input_size: 5", "input_shape"},
		{"prior: [0.9, 0.1]", "prior: [0.9, 0.2]", "prior"},
		{"prior: [0.9, 0.1]", "prior: [0.9]", "prior"},
		{"utility: [[1, -0.1], [-1, 1]]", "utility: [[1, -0.1], [-1]]", "utility[1]"},
		{"recall: [0.888889, 1]", "recall: [0.888889, 1.5]", "variants[0].recall[1]"},
		{"confusion: [[80, 10], [0, 10]]", "confusion: [[80, -1], [0, 10]]", "variants[0].confusion[0]"},
		{"kind: score", "kind: votes", "variants[0].output.kind"},
		{"{name: x, kind: data, shape: [-1, 4]}", "{name: x, kind: data, shape: [-1, 3]}", "variants[0].inputs[0].shape"},
		{"{name: x, kind: data, shape: [-1, 4]}", "{name: x, kind: data, shape: [4]}", "variants[0].inputs[0].shape"},
		{"{name: h, kind: zeros, shape: [2, -1, 8]}", "{name: h, kind: zeros, shape: [2, 8]}", "variants[0].inputs[1].shape"},
		{"kind: const, dtype: int64", "kind: const, dtype: int8", "variants[0].inputs[2].dtype"},
		{"kind: knn, file: ref.sgs, k: 5", "kind: knn, file: ref.sgs, k: 0", "estimators[0].k"},
		{"mix_end: [0.5, 0.5]", "mix_end: [0.5, 0.6]", "workloads[1].mix_end"},
		{"default_deadline_ms: 50", "default_deadline_ms: 0", "default_deadline_ms"},
		{"labels: [no, yes]", "labels: [no, yes, maybe]", "prior"},
		{"utility: [[1, -0.1], [-1, 1]]", "utility: [[1, -0.1], [-1, 1]]\nno_answer_utility: [0]", "no_answer_utility"},
		{"utility: [[1, -0.1], [-1, 1]]", "utility: [[1, -0.1], [-1, 1]]\nno_answer_utility: [0, .nan]", "no_answer_utility[1]"},
	}
	for _, c := range cases {
		if !strings.Contains(good, c.from) {
			t.Fatalf("case %q does not apply", c.from)
		}
		_, err := Load(write(t, strings.Replace(good, c.from, c.to, 1)))
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s -> %s: error %v, want ErrInvalid naming %s", c.from, c.to, err, c.field)
		}
	}
}

// A data input whose size does not fit the request input names the manifest
// file, the application, the variant and both sizes, besides the field.
func TestInputSizeMismatchMessage(t *testing.T) {
	for _, c := range []struct{ to, field, sizes string }{
		{"{name: x, kind: data, shape: [-1, 3]}", "variants[0].inputs[0].shape", "3 values per sample, want 4 (offset 0, length 4 of input_size 4)"},
		{"{name: x, kind: data, shape: [-1, 2], offset: 1, length: 3}", "variants[0].inputs[0].shape", "2 values per sample, want 3 (offset 1, length 3 of input_size 4)"},
		{"{name: x, kind: data, shape: [-1, 4], offset: 2, length: 4}", "variants[0].inputs[0]", "offset 2 and length 4 need 6 values, input_size is 4"},
	} {
		path := write(t, strings.Replace(good, "{name: x, kind: data, shape: [-1, 4]}", c.to, 1))
		_, err := Load(path)
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("%s: error %v, want ErrInvalid", c.to, err)
		}
		for _, w := range []string{path, c.field, "variant small of toy", c.sizes} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error does not say %q:\n%v", c.to, w, err)
			}
		}
	}
}

func TestNoAnswerUtility(t *testing.T) {
	a, err := Load(write(t, good))
	if err != nil {
		t.Fatal(err)
	}
	if a.NoAnswerUtility != nil || a.NoAnswer(1) != 0 {
		t.Errorf("omitted no_answer_utility: %v, NoAnswer(1) = %v, want nil and 0", a.NoAnswerUtility, a.NoAnswer(1))
	}
	a, err = Load(write(t, strings.Replace(good, "prior: [0.9, 0.1]", "prior: [0.9, 0.1]\nno_answer_utility: [0, -1]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if a.NoAnswer(0) != 0 || a.NoAnswer(1) != -1 || a.NoAnswer(2) != 0 {
		t.Errorf("NoAnswer = %v %v %v, want 0 -1 0", a.NoAnswer(0), a.NoAnswer(1), a.NoAnswer(2))
	}
}

func TestUnknownFieldRefused(t *testing.T) {
	if _, err := Load(write(t, good+"colour: blue\n")); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("unknown field: %v", err)
	}
}

func TestShippedManifestsLoad(t *testing.T) {
	paths, _ := filepath.Glob("../models/*/manifest.yaml")
	if len(paths) == 0 {
		t.Fatal("no manifests under models/")
	}
	for _, p := range paths {
		if _, err := Load(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestValidationRefusesBadValues breaks one value at a time with values the
// checks once let through: integer overflow (an offset whose end wraps past
// MaxInt crashed the engine's first forward pass), NaN and infinities, negative
// dimensions, duplicate names. Each error must name the manifest file, the field,
// the section's name where it has one, and the value.
func TestValidationRefusesBadValues(t *testing.T) {
	const (
		dataIn  = "{name: x, kind: data, shape: [-1, 4]}"
		zerosIn = "{name: h, kind: zeros, shape: [2, -1, 8]}"
		constIn = "{name: sr, kind: const, dtype: int64, shape: [], value: 16000}"
		est     = "{name: knn, kind: knn, file: ref.sgs, k: 5, features: identity}"
		prior   = "prior: [0.9, 0.1]"
	)
	cases := []struct{ name, from, to, field, value, section string }{
		// Integer overflow.
		{"offset+length wraps", dataIn, "{name: x, kind: data, shape: [-1, 4], offset: 9223372036854775805, length: 4}",
			"variants[0].inputs[0]", "9223372036854775805", `input "x"`},
		{"offset past input_size", dataIn, "{name: x, kind: data, shape: [-1, 4], offset: 9223372036854775807}",
			"variants[0].inputs[0]", "9223372036854775807", `input "x"`},
		{"length past input_size", dataIn, "{name: x, kind: data, shape: [-1, 4], offset: 1, length: 9223372036854775807}",
			"variants[0].inputs[0]", "9223372036854775807", `input "x"`},
		{"data shape product wraps", dataIn, "{name: x, kind: data, shape: [-1, 4611686018427387905, 4]}",
			"variants[0].inputs[0].shape", "4611686018427387905", `input "x"`},
		{"zeros shape product wraps", zerosIn, "{name: h, kind: zeros, shape: [4294967296, -1, 4294967296]}",
			"variants[0].inputs[1].shape", "4294967296", `input "h"`},
		{"input_shape product wraps", "input_shape: [2, 2]", "input_shape: [4611686018427387905, 4]",
			"input_shape", "4611686018427387905", ""},
		{"default_deadline_ms overflows a Duration", "default_deadline_ms: 50", "default_deadline_ms: 9223372036854775807",
			"default_deadline_ms", "9223372036854775807", ""},
		// Dimensions and counts.
		{"input_shape negative dimensions", "input_shape: [2, 2]", "input_shape: [-2, -2]", "input_shape", "-2", ""},
		{"input_shape zero dimension", "input_shape: [2, 2]", "input_shape: [0, 2]", "input_shape", "0", ""},
		{"samples count negative", "workloads:", "samples: {file: s.sgs, count: -1}\nworkloads:", "samples.count", "-1", ""},
		{"params negative", "accuracy: 0.9", "accuracy: 0.9\n    params: -5", "variants[0].params", "-5", `variant "small"`},
		// Non-finite and out-of-range floats.
		{"variant accuracy NaN", "accuracy: 0.9", "accuracy: .nan", "variants[0].accuracy", "NaN", `variant "small"`},
		{"prior_strength NaN", prior, prior + "\nprior_strength: .nan", "prior_strength", "NaN", ""},
		{"prior_strength +Inf", prior, prior + "\nprior_strength: .inf", "prior_strength", "+Inf", ""},
		{"prior_strength negative", prior, prior + "\nprior_strength: -1", "prior_strength", "-1", ""},
		{"prior_strength overflows alpha's sum", prior, prior + "\nprior_strength: 1.7e308", "prior_strength", "1.7e+308", ""},
		{"estimator cost_us NaN", "features: identity}", "features: identity, cost_us: .nan}", "estimators[0].cost_us", "NaN", `estimator "knn"`},
		{"estimator cost_us negative", "features: identity}", "features: identity, cost_us: -1}", "estimators[0].cost_us", "-1", `estimator "knn"`},
		{"estimator cost_us +Inf", "features: identity}", "features: identity, cost_us: .inf}", "estimators[0].cost_us", "+Inf", `estimator "knn"`},
		{"estimator accuracy NaN", "features: identity}", "features: identity, accuracy: .nan}", "estimators[0].accuracy", "NaN", `estimator "knn"`},
		{"estimator accuracy above 1", "features: identity}", "features: identity, accuracy: 1.5}", "estimators[0].accuracy", "1.5", `estimator "knn"`},
		{"estimator ece NaN", "features: identity}", "features: identity, ece: .nan}", "estimators[0].ece", "NaN", `estimator "knn"`},
		{"estimator ece negative", "features: identity}", "features: identity, ece: -0.1}", "estimators[0].ece", "-0.1", `estimator "knn"`},
		{"difficulty auc NaN", "workloads:", "difficulty: {file: d.json, estimator: knn, auc: [.nan]}\nworkloads:", "difficulty.auc[0]", "NaN", `variant "small"`},
		{"difficulty class_auc above 1", "workloads:", "difficulty: {file: d.json, estimator: knn, class_auc: [1.5]}\nworkloads:", "difficulty.class_auc[0]", "1.5", `variant "small"`},
		{"difficulty cost_us +Inf", "workloads:", "difficulty: {file: d.json, estimator: knn, cost_us: .inf}\nworkloads:", "difficulty.cost_us", "+Inf", ""},
		{"difficulty cost_us negative", "workloads:", "difficulty: {file: d.json, estimator: knn, cost_us: -2}\nworkloads:", "difficulty.cost_us", "-2", ""},
		{"latency_us NaN", "accuracy: 0.9", "accuracy: 0.9\n    latency_us: {\"1\": .nan}", `variants[0].latency_us["1"]`, "NaN", `variant "small"`},
		{"latency_us negative", "accuracy: 0.9", "accuracy: 0.9\n    latency_us: {\"32\": -3}", `variants[0].latency_us["32"]`, "-3", `variant "small"`},
		{"const value +Inf", constIn, "{name: sr, kind: const, shape: [], value: .inf}", "variants[0].inputs[2].value", "+Inf", `input "sr"`},
		{"const value NaN", constIn, "{name: sr, kind: const, shape: [], value: .nan}", "variants[0].inputs[2].value", "NaN", `input "sr"`},
		{"float32 const value past float32", constIn, "{name: sr, kind: const, shape: [], value: 1e39}", "variants[0].inputs[2].value", "1e+39", `input "sr"`},
		{"int64 const value past int64", constIn, "{name: sr, kind: const, dtype: int64, shape: [], value: 1e19}", "variants[0].inputs[2].value", "1e+19", `input "sr"`},
		{"confusion NaN", "confusion: [[80, 10], [0, 10]]", "confusion: [[80, .nan], [0, 10]]", "variants[0].confusion[0][1]", "NaN", `variant "small"`},
		{"utility +Inf", "utility: [[1, -0.1], [-1, 1]]", "utility: [[1, .inf], [-1, 1]]", "utility[0][1]", "+Inf", ""},
		{"workload mix NaN", "{name: natural, mix: [0.9, 0.1]}", "{name: natural, mix: [.nan, 0.1]}", "workloads[0].mix[0]", "NaN", `workload "natural"`},
		// Duplicate names.
		{"duplicate labels", "labels: [no, yes]", "labels: [yes, yes]", "labels[1]", `"yes"`, ""},
		{"empty label", "labels: [no, yes]", `labels: ["", yes]`, "labels[0]", `""`, ""},
		{"duplicate estimator names", est, est + "\n  - {name: knn, kind: knn, file: other.sgs, k: 5, features: identity}",
			"estimators[1].name", `"knn"`, ""},
		{"duplicate input names", zerosIn, "{name: x, kind: zeros, shape: [2, -1, 8]}", "variants[0].inputs[1].name", `"x"`, `variant "small"`},
		{"duplicate workload names", "{name: drift,", "{name: natural,", "workloads[1].name", `"natural"`, ""},
	}
	for _, c := range cases {
		body := strings.Replace(good, c.from, c.to, 1)
		if body == good {
			t.Fatalf("%s: replacement does not apply", c.name)
		}
		p := write(t, body)
		_, err := Load(p)
		if err == nil {
			t.Errorf("%s: accepted (%s)", c.name, c.to)
			continue
		}
		msg := err.Error()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(msg, p) || !strings.Contains(msg, c.field) ||
			!strings.Contains(msg, c.value) || !strings.Contains(msg, c.section) {
			t.Errorf("%s: error %q, want ErrInvalid naming %s, %s, %s and %s", c.name, msg, p, c.field, c.section, c.value)
		}
	}
}

// TestValidateBoundaryValues accepts the edges of each range the checks above
// refuse past: offsets and lengths that exactly fill input_size, accuracies and
// AUCs of 0 and 1, zero costs and prior_strength, constants at their dtype's limits.
func TestValidateBoundaryValues(t *testing.T) {
	cases := []struct{ from, to string }{
		{"{name: x, kind: data, shape: [-1, 4]}", "{name: x, kind: data, shape: [-1, 1], offset: 3, length: 1}"},
		{"{name: x, kind: data, shape: [-1, 4]}", "{name: x, kind: data, shape: [-1, 1], offset: 3}"},
		{"{name: x, kind: data, shape: [-1, 4]}", "{name: x, kind: data, shape: [1, -1, 2, 2]}"},
		{"accuracy: 0.9", "accuracy: 1\n    params: 0\n    latency_us: {\"1\": 0, \"32\": 12.5}"},
		{"prior: [0.9, 0.1]", "prior: [0.9, 0.1]\nprior_strength: 0"},
		{"prior: [0.9, 0.1]", "prior: [0.9, 0.1]\nprior_strength: 1e300"},
		{"features: identity}", "features: identity, accuracy: 0, ece: 1, cost_us: 0}"},
		{"workloads:", "difficulty: {file: d.json, estimator: knn, auc: [1], class_auc: [0], cost_us: 0}\nsamples: {file: s.sgs, count: 0}\nworkloads:"},
		{"{name: sr, kind: const, dtype: int64, shape: [], value: 16000}", "{name: sr, kind: const, dtype: int64, shape: [], value: -9223372036854775808}"},
		{"{name: sr, kind: const, dtype: int64, shape: [], value: 16000}", "{name: sr, kind: const, shape: [1, 2], value: 3.4028234663852886e38}"},
		{"input_shape: [2, 2]", "input_shape: [1, 4, 1]"},
	}
	for _, c := range cases {
		body := strings.Replace(good, c.from, c.to, 1)
		if body == good {
			t.Fatalf("%s: replacement does not apply", c.from)
		}
		if _, err := Load(write(t, body)); err != nil {
			t.Errorf("%s -> %s: %v", c.from, c.to, err)
		}
	}
}
