package engine

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/manifest"
)

// libPath finds the ONNX Runtime library for tests (internal/testenv.ORTLib:
// $SNEAKGATE_ORT_LIB, else the repository's copy; skipped without one except
// under CI=true).
func libPath(t testing.TB) string { return testenv.ORTLib(t) }

// newEngine returns an engine on the real library with opts; the test ends with a
// consistency check of the budget accounting, then Close.
func newEngine(t testing.TB, opts Options) *Engine {
	t.Helper()
	opts.LibraryPath = libPath(t)
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		checkConsistent(t, e)
		if err := e.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if r := e.Resident(); len(r) != 0 {
			t.Errorf("resident after Close: %v", r)
		}
	})
	return e
}

// checkConsistent checks that the budget accounting matches the resident set.
func checkConsistent(t testing.TB, e *Engine) {
	t.Helper()
	var want int64
	res := e.Resident()
	for _, id := range res {
		m, err := e.MemBytes(id)
		if err != nil {
			t.Errorf("MemBytes(%s): %v", id, err)
		}
		want += m
	}
	bytes, count := e.Usage()
	if bytes != want || count != len(res) {
		t.Errorf("usage %d bytes / %d variants, resident %v hold %d bytes", bytes, count, res, want)
	}
	b, c := e.Budget()
	if (b > 0 && bytes > b) || (c > 0 && count > c) {
		t.Errorf("usage %d bytes / %d variants exceeds budget %d / %d", bytes, count, b, c)
	}
}

// testApp builds a valid application over the models in testdata.
func testApp(t testing.TB, name string, inputSize, k int, vs ...manifest.Variant) *manifest.App {
	t.Helper()
	dir, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	a := &manifest.App{Name: name, InputSize: inputSize, DefaultDeadlineMS: 100, Dir: dir}
	for i := range k {
		a.Labels = append(a.Labels, string(rune('a'+i)))
		a.Prior = append(a.Prior, 1/float64(k))
		row := make([]float64, k)
		row[i] = 1
		a.Utility = append(a.Utility, row)
	}
	for _, v := range vs {
		v.Accuracy = 0.9
		v.Confusion = a.Utility
		v.Recall = make([]float64, k)
		for i := range v.Recall {
			v.Recall[i] = 1
		}
		a.Variants = append(a.Variants, v)
	}
	if err := a.Validate(); err != nil {
		t.Fatalf("test app %s: %v", name, err)
	}
	return a
}

func data(name string, shape ...int64) manifest.Input {
	return manifest.Input{Name: name, Kind: "data", Shape: shape}
}

// The test applications: lin (linear.onnx read as logits and as probabilities,
// and trees.onnx), img (mlp.onnx) and vad (stateful.onnx).
func linApp(t testing.TB) *manifest.App {
	return testApp(t, "lin", 4, 3,
		manifest.Variant{Name: "logits", File: "linear.onnx", Inputs: []manifest.Input{data("x", -1, 4)},
			Output: manifest.Output{Name: "logits", Kind: "logits"}},
		manifest.Variant{Name: "probs", File: "linear.onnx", Inputs: []manifest.Input{data("x", -1, 4)},
			Output: manifest.Output{Name: "probs", Kind: "probabilities"}},
		manifest.Variant{Name: "trees", File: "trees.onnx", Inputs: []manifest.Input{data("x", -1, 4)},
			Output: manifest.Output{Name: "probabilities", Kind: "probabilities"}})
}

func imgApp(t testing.TB) *manifest.App {
	a := testApp(t, "img", 784, 10,
		manifest.Variant{Name: "mlp", File: "mlp.onnx", Inputs: []manifest.Input{data("image", -1, 1, 28, 28)},
			Output: manifest.Output{Name: "logits", Kind: "logits"}})
	a.InputRange = &[2]float64{0, 1}
	return a
}

func vadApp(t testing.TB) *manifest.App {
	in := data("input", -1, 8)
	in.Offset = 2
	return testApp(t, "vad", 10, 2,
		manifest.Variant{Name: "stateful", File: "stateful.onnx", Inputs: []manifest.Input{
			in,
			{Name: "state", Kind: "zeros", Shape: []int64{2, -1, 4}},
			{Name: "sr", Kind: "const", DType: "int64", Value: 16000},
		}, Output: manifest.Output{Name: "output", Kind: "score"}})
}

var (
	idLogits   = VariantID{"lin", "logits"}
	idProbs    = VariantID{"lin", "probs"}
	idTrees    = VariantID{"lin", "trees"}
	idMLP      = VariantID{"img", "mlp"}
	idStateful = VariantID{"vad", "stateful"}
	allTestIDs = []VariantID{idLogits, idProbs, idTrees, idMLP, idStateful}
)

// registerAll registers the three test applications.
func registerAll(t testing.TB, e *Engine) {
	t.Helper()
	for _, a := range []*manifest.App{linApp(t), imgApp(t), vadApp(t)} {
		if err := e.Register(a); err != nil {
			t.Fatal(err)
		}
	}
}

// expected holds the answers gen.py computed with numpy.
type expectedCase struct {
	Inputs [][]float32 `json:"inputs"`
	Probs  [][]float64 `json:"probs"`
}

func loadExpected(t testing.TB) map[string]expectedCase {
	t.Helper()
	b, err := os.ReadFile("testdata/expected.json")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]expectedCase
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// randomInputs returns n inputs of size values in [lo, hi), deterministic in seed.
func randomInputs(n, size int, lo, hi float64, seed uint64) [][]float32 {
	out := make([][]float32, n)
	x := seed*2654435761 + 1
	for i := range out {
		out[i] = make([]float32, size)
		for j := range out[i] {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			out[i][j] = float32(lo + (hi-lo)*float64(x%1_000_003)/1_000_003)
		}
	}
	return out
}

func inputSizeOf(id VariantID) int {
	switch id.App {
	case "img":
		return 784
	case "vad":
		return 10
	}
	return 4
}

func closeTo(a, b []float64, tol float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(a[i]-b[i]) > tol {
			return false
		}
	}
	return true
}
