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
