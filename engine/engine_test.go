package engine

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/sneakgate/sneakgate/manifest"
)

// TestAnswersMatchNumpy runs every test model on the requests gen.py answered
// with numpy: this checks input slicing, zero states, the int64 const, and the
// logits, probabilities and score conversions end to end.
func TestAnswersMatchNumpy(t *testing.T) {
	e := newEngine(t, Options{IntraOpThreads: 1})
	registerAll(t, e)
	// An int64 data input (rounded from the request's float32 values) and
	// non-scalar float32 and int64 consts.
	if err := e.Register(testApp(t, "consts", 3, 3, manifest.Variant{Name: "v", File: "consts.onnx",
		Inputs: []manifest.Input{
			{Name: "x", Kind: "data", DType: "int64", Shape: []int64{-1, 3}},
			{Name: "gain", Kind: "const", Shape: []int64{1}, Value: 0.5},
			{Name: "bias", Kind: "const", DType: "int64", Shape: []int64{2}, Value: 2},
		}, Output: manifest.Output{Name: "logits", Kind: "logits"}})); err != nil {
		t.Fatal(err)
	}
	exp := loadExpected(t)
	for _, c := range []struct {
		id  VariantID
		key string
		tol float64
	}{
		{idLogits, "linear", 1e-5}, {idProbs, "linear", 1e-5}, {idTrees, "trees", 1e-6},
		{idMLP, "mlp", 1e-4}, {idStateful, "stateful", 1e-5}, {VariantID{"consts", "v"}, "consts", 1e-6},
	} {
		t.Run(c.id.String(), func(t *testing.T) {
			if _, err := e.Load(c.id); err != nil {
				t.Fatal(err)
			}
			want := exp[c.key]
			got, err := e.Run(c.id, want.Inputs)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want.Probs) {
				t.Fatalf("got %d answers for %d inputs", len(got), len(want.Probs))
			}
			for i := range got {
				if !closeTo(got[i], want.Probs[i], c.tol) {
					t.Errorf("input %d: got %v, numpy %v", i, got[i], want.Probs[i])
				}
				if s := sum(got[i]); math.Abs(s-1) > 1e-5 {
					t.Errorf("input %d: probabilities sum to %v", i, s)
				}
			}
		})
	}
}

func sum(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s
}

// TestBatchingMatchesOneByOne checks that a batched forward pass answers every
// request as running it alone does, at cached batch sizes (reused buffers, also
// after other sizes ran) and beyond the largest profiled size (temporary buffers).
func TestBatchingMatchesOneByOne(t *testing.T) {
	e := newEngine(t, Options{IntraOpThreads: 1, BatchSizes: []int{1, 2, 4, 8, 16}})
	registerAll(t, e)
	for _, id := range allTestIDs {
		t.Run(id.String(), func(t *testing.T) {
			if _, err := e.Load(id); err != nil {
				t.Fatal(err)
			}
			in := randomInputs(40, inputSizeOf(id), -1, 1, 7)
			single := make([][]float64, len(in))
			for i, x := range in {
				r, err := e.Run(id, [][]float32{x})
				if err != nil {
					t.Fatal(err)
				}
				single[i] = r[0]
			}
			for _, b := range []int{13, 16, 3, 40, 13, 1, 17} {
				for start := 0; start+b <= len(in); start += b {
					got, err := e.Run(id, in[start:start+b])
					if err != nil {
						t.Fatalf("batch %d: %v", b, err)
					}
					for i := range got {
						if !closeTo(got[i], single[start+i], 1e-5) {
							t.Fatalf("batch %d, request %d: batched %v, alone %v", b, start+i, got[i], single[start+i])
						}
					}
				}
			}
			if _, err := e.Unload(id); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	e := newEngine(t, Options{})
	registerAll(t, e)
	if _, err := e.Load(idLogits); err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string][][]float32{
		"none":      nil,
		"too short": {{1, 2, 3, 4}, {1, 2, 3}},
		"too long":  {{1, 2, 3, 4, 5}},
	} {
		if _, err := e.Run(idLogits, in); !errors.Is(err, ErrBadInput) {
			t.Errorf("%s: got %v, want ErrBadInput", name, err)
		}
	}
}

func TestLoadUnloadLifecycle(t *testing.T) {
	e := newEngine(t, Options{})
	registerAll(t, e)
	x := [][]float32{{0.1, 0.2, 0.3, 0.4}}

	if _, err := e.Run(idLogits, x); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("Run before Load: %v, want ErrNotLoaded", err)
	}
	if _, err := e.Load(VariantID{"lin", "nope"}); !errors.Is(err, ErrUnknownVariant) {
		t.Fatalf("Load unknown: %v, want ErrUnknownVariant", err)
	}
	if _, err := e.Run(VariantID{"nope", "x"}, x); !errors.Is(err, ErrUnknownVariant) {
		t.Fatalf("Run unknown: %v, want ErrUnknownVariant", err)
	}
	d, err := e.Load(idLogits)
	if err != nil || d <= 0 {
		t.Fatalf("Load: %v, %v; want a positive duration", d, err)
	}
	if d, err := e.Load(idLogits); err != nil || d != 0 {
		t.Fatalf("second Load: %v, %v; want 0, nil", d, err)
	}
	if _, err := e.Load(idMLP); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(e.Resident()); got != "[lin/logits img/mlp]" {
		t.Fatalf("Resident = %s", got)
	}
	if _, err := e.Run(idLogits, x); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Unload(idLogits); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(idLogits, x); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("Run after Unload: %v, want ErrNotLoaded", err)
	}
	if d, err := e.Unload(idLogits); err != nil || d != 0 {
		t.Fatalf("second Unload: %v, %v; want 0, nil", d, err)
	}
	if got := fmt.Sprint(e.Resident()); got != "[img/mlp]" {
		t.Fatalf("Resident = %s", got)
	}
	// Reloading works and answers again.
	if _, err := e.Load(idLogits); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(idLogits, x); err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, e)
}

// TestWarm checks that Warm runs a resident variant at the batch size it is
// given (capped at the largest profiled one) and at 1, so that those sizes'
// tensors exist before the first request, and that answers are unchanged by it.
func TestWarm(t *testing.T) {
	e := newEngine(t, Options{BatchSizes: []int{1, 4, 8}})
	registerAll(t, e)
	if err := e.Warm(VariantID{"img", "nope"}, 8); !errors.Is(err, ErrUnknownVariant) {
		t.Fatalf("Warm unknown: %v, want ErrUnknownVariant", err)
	}
	if err := e.Warm(idMLP, 8); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("Warm before Load: %v, want ErrNotLoaded", err)
	}
	x := randomInputs(1, 784, 0, 1, 5) // batch 1, which Warm runs too
	for _, id := range []VariantID{idMLP, idStateful, idTrees} {
		if _, err := e.Load(id); err != nil {
			t.Fatal(err)
		}
	}
	before, err := e.Run(idMLP, x)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id    VariantID
		batch int
	}{{idMLP, 100}, {idStateful, 4}, {idTrees, 0}} {
		if err := e.Warm(c.id, c.batch); err != nil {
			t.Fatalf("Warm(%s, %d): %v", c.id, c.batch, err)
		}
		want := map[int]bool{1: true, min(max(c.batch, 1), 8): true}
		s := e.variants[c.id].sess
		if len(s.batches) != 8 {
			t.Fatalf("%s: %d batch sizes kept, want 8", c.id, len(s.batches))
		}
		for b := 1; b <= 8; b++ {
			if got := s.batches[b-1] != nil; got != want[b] {
				t.Errorf("%s warmed at %d: batch %d's tensors exist = %v, want %v", c.id, c.batch, b, got, want[b])
			}
		}
	}
	after, err := e.Run(idMLP, x)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("answers changed by Warm:\n%v\n%v", before, after)
	}
}

func TestClosedEngine(t *testing.T) {
	e := newEngine(t, Options{})
	registerAll(t, e)
	if _, err := e.Load(idLogits); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(idLogits, [][]float32{{1, 2, 3, 4}}); !errors.Is(err, ErrClosed) {
		t.Errorf("Run: %v", err)
	}
	if _, err := e.Load(idLogits); !errors.Is(err, ErrClosed) {
		t.Errorf("Load: %v", err)
	}
	if err := e.Warm(idLogits, 4); !errors.Is(err, ErrClosed) {
		t.Errorf("Warm: %v", err)
	}
	if err := e.Register(imgApp(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Register: %v", err)
	}
	// A new engine in the same process works: the ONNX Runtime environment is shared.
	e2 := newEngine(t, Options{})
	registerAll(t, e2)
	if _, err := e2.Load(idLogits); err != nil {
		t.Fatal(err)
	}
}

func TestBudgetEnforced(t *testing.T) {
	// Learn the variants' sizes from an unbudgeted engine.
	probe := newEngine(t, Options{})
	registerAll(t, probe)
	mem := map[VariantID]int64{}
	for _, id := range allTestIDs {
		m, err := probe.MemBytes(id)
		if err != nil || m <= 0 {
			t.Fatalf("MemBytes(%s) = %d, %v", id, m, err)
		}
		mem[id] = m
	}
	if fi, _ := os.Stat("testdata/mlp.onnx"); mem[idMLP] < fi.Size() {
		t.Fatalf("MemBytes(mlp) = %d is below its file size %d", mem[idMLP], fi.Size())
	}

	t.Run("bytes", func(t *testing.T) {
		budget := mem[idMLP] + max(mem[idLogits], mem[idTrees])
		e := newEngine(t, Options{MemoryBudgetBytes: budget})
		registerAll(t, e)
		for _, id := range []VariantID{idMLP, idLogits} {
			if _, err := e.Load(id); err != nil {
				t.Fatal(err)
			}
		}
		_, err := e.Load(idTrees)
		if !errors.Is(err, ErrOverBudget) || !strings.Contains(err.Error(), "lin/trees") {
			t.Fatalf("Load over budget: %v, want ErrOverBudget naming lin/trees", err)
		}
		if got := fmt.Sprint(e.Resident()); got != "[lin/logits img/mlp]" {
			t.Fatalf("engine evicted on its own: resident %s", got)
		}
		if _, err := e.Unload(idLogits); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Load(idTrees); err != nil {
			t.Fatalf("Load after making room: %v", err)
		}
		if b, n := e.Usage(); b != mem[idMLP]+mem[idTrees] || n != 2 {
			t.Fatalf("Usage = %d, %d", b, n)
		}
	})
	t.Run("too big for an empty engine", func(t *testing.T) {
		e := newEngine(t, Options{MemoryBudgetBytes: mem[idMLP] - 1})
		registerAll(t, e)
		if _, err := e.Load(idMLP); !errors.Is(err, ErrOverBudget) {
			t.Fatalf("got %v, want ErrOverBudget", err)
		}
	})
	t.Run("count", func(t *testing.T) {
		e := newEngine(t, Options{MaxResident: 2})
		registerAll(t, e)
		if b, n := e.Budget(); b != 0 || n != 2 {
			t.Fatalf("Budget = %d, %d", b, n)
		}
		for _, id := range []VariantID{idTrees, idStateful} {
			if _, err := e.Load(id); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := e.Load(idProbs); !errors.Is(err, ErrOverBudget) {
			t.Fatalf("third Load: %v, want ErrOverBudget", err)
		}
		if d, err := e.Load(idTrees); err != nil || d != 0 {
			t.Fatalf("Load of a resident variant at the budget: %v, %v; want 0, nil", d, err)
		}
	})
}

// TestConcurrentRunAndSwap runs batches from one goroutine while another loads
// and unloads the same variants, as the gateway's worker and scheduler do. Under
// -race this checks the locking; every Run either answers correctly or reports
// ErrNotLoaded.
func TestConcurrentRunAndSwap(t *testing.T) {
	e := newEngine(t, Options{IntraOpThreads: 1, MaxResident: 1, BatchSizes: []int{1, 8}})
	registerAll(t, e)
	in := randomInputs(8, 4, -1, 1, 3)
	want := map[VariantID][][]float64{}
	for _, id := range []VariantID{idLogits, idTrees} {
		if _, err := e.Load(id); err != nil {
			t.Fatal(err)
		}
		r, err := e.Run(id, in)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = r
		if _, err := e.Unload(id); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, notLoaded int
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := []VariantID{idLogits, idTrees}[i%2]
			r, err := e.Run(id, in)
			switch {
			case errors.Is(err, ErrNotLoaded):
				notLoaded++
			case err != nil:
				t.Errorf("Run %s: %v", id, err)
				return
			default:
				ok++
				for j := range r {
					if !closeTo(r[j], want[id][j], 1e-6) {
						t.Errorf("Run %s request %d: %v, want %v", id, j, r[j], want[id][j])
						return
					}
				}
			}
		}
	})
	for i := range 200 {
		id, other := idLogits, idTrees
		if i%2 == 1 {
			id, other = other, id
		}
		if _, err := e.Unload(other); err != nil {
			t.Error(err)
		}
		if _, err := e.Load(id); err != nil {
			t.Error(err)
		}
		_ = e.Resident()
		checkConsistent(t, e)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d batches answered, %d found their variant unloaded", ok, notLoaded)
}

func TestRegisterErrors(t *testing.T) {
	e := newEngine(t, Options{})
	if err := e.Register(linApp(t)); err != nil {
		t.Fatal(err)
	}
	if err := e.Register(linApp(t)); !errors.Is(err, ErrAlreadyRegistered) {
		t.Errorf("second Register: %v, want ErrAlreadyRegistered", err)
	}
	missing := imgApp(t)
	missing.Variants[0].File = "absent.onnx"
	if err := e.Register(missing); !errors.Is(err, ErrModelFile) || !strings.Contains(err.Error(), "img/mlp") {
		t.Errorf("missing file: %v, want ErrModelFile naming img/mlp", err)
	}
	invalid := imgApp(t)
	invalid.Prior = []float64{1}
	if err := e.Register(invalid); !errors.Is(err, manifest.ErrInvalid) {
		t.Errorf("invalid manifest: %v, want manifest.ErrInvalid", err)
	}
	notFirst := imgApp(t)
	notFirst.Variants[0].Inputs = []manifest.Input{data("image", 1, 2, -1, 392)}
	if err := e.Register(notFirst); !errors.Is(err, manifest.ErrInvalid) {
		t.Errorf("batch axis after a non-unit axis: %v, want manifest.ErrInvalid", err)
	}
	if got := e.Variants("img"); len(got) != 0 {
		t.Errorf("a failed Register left variants %v", got)
	}
}

// TestModelMismatch declares manifests that disagree with the models; Load must
// refuse each with ErrModelMismatch, name the variant and say what differs, and
// leave nothing reserved.
func TestModelMismatch(t *testing.T) {
	lin := func(name string, ins []manifest.Input, out manifest.Output) manifest.Variant {
		return manifest.Variant{Name: name, File: "linear.onnx", Inputs: ins, Output: out}
	}
	// The app's requests carry 8 values; a data input reads the first n.
	first := func(in manifest.Input, n int) manifest.Input {
		in.Length = n
		return in
	}
	logits := manifest.Output{Name: "logits", Kind: "logits"}
	x4 := first(data("x", -1, 4), 4)
	app := testApp(t, "bad", 8, 3,
		lin("wrong-shape", []manifest.Input{first(data("x", -1, 5), 5)}, logits),
		lin("wrong-rank", []manifest.Input{first(data("x", -1, 2, 2), 4)}, logits),
		lin("wrong-dtype", []manifest.Input{first(manifest.Input{Name: "x", Kind: "data", DType: "int64", Shape: []int64{-1, 4}}, 4)}, logits),
		lin("wrong-input", []manifest.Input{first(data("features", -1, 4), 4)}, logits),
		lin("extra-input", []manifest.Input{x4, {Name: "h", Kind: "zeros", Shape: []int64{-1, 2}}}, logits),
		lin("wrong-output", []manifest.Input{x4}, manifest.Output{Name: "scores", Kind: "logits"}),
		lin("wrong-batch-axis", []manifest.Input{first(data("x", 1, -1), 1)}, logits),
		manifest.Variant{Name: "fixed-batch", File: "fixed.onnx", Inputs: []manifest.Input{x4}, Output: logits},
		manifest.Variant{Name: "missing-state", File: "stateful.onnx", Inputs: []manifest.Input{data("input", -1, 8)},
			Output: manifest.Output{Name: "output", Kind: "probabilities"}},
	)
	e := newEngine(t, Options{})
	if err := e.Register(app); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]string{
		"wrong-shape":      {`input "x": manifest shape [-1 5] does not fit model shape [-1 4]`},
		"wrong-rank":       {`manifest shape [-1 2 2] does not fit model shape [-1 4]`},
		"wrong-dtype":      {`input "x": manifest dtype int64, model`},
		"wrong-input":      {`input "features" is not a model input`, `model input "x"`},
		"extra-input":      {`input "h" is not a model input`},
		"wrong-output":     {`output "scores" is not a model output (model outputs: "logits", "probs")`},
		"wrong-batch-axis": {`manifest shape [1 -1] does not fit model shape [-1 4]`},
		"fixed-batch":      {`manifest shape [-1 4] does not fit model shape [1 4]`, `output "logits": shape [1 3] has no dynamic first (batch) axis`},
		"missing-state":    {`model input "state"`, `model input "sr"`, `1 values per sample, probabilities output needs 3`},
	} {
		id := VariantID{"bad", name}
		_, err := e.Load(id)
		if !errors.Is(err, ErrModelMismatch) {
			t.Errorf("%s: got %v, want ErrModelMismatch", name, err)
			continue
		}
		if !strings.Contains(err.Error(), id.String()) {
			t.Errorf("%s: error does not name the variant: %v", name, err)
		}
		if file := app.Path(app.Variant(name).File); !strings.Contains(err.Error(), file) {
			t.Errorf("%s: error does not name the model file %s: %v", name, file, err)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error lacks %q:\n%v", name, w, err)
			}
		}
	}
	if b, n := e.Usage(); b != 0 || n != 0 {
		t.Errorf("failed loads left usage %d bytes, %d variants", b, n)
	}
}

// TestOutputShapeKnownOnlyAfterRun: when the model does not declare its output's
// row size (Silero's state outputs, for one), the first run's output is checked
// and adopted as that batch size's buffer. ONNX Runtime infers the test models'
// output shapes, so the test makes the engine forget them.
func TestOutputShapeKnownOnlyAfterRun(t *testing.T) {
	e := newEngine(t, Options{BatchSizes: []int{1, 4}})
	registerAll(t, e)
	if err := e.Register(testApp(t, "bad", 4, 4, manifest.Variant{Name: "v", File: "linear.onnx",
		Inputs: []manifest.Input{data("x", -1, 4)}, Output: manifest.Output{Name: "logits", Kind: "logits"}})); err != nil {
		t.Fatal(err)
	}
	forget := func(id VariantID) {
		v := e.variants[id]
		v.life.Lock()
		v.outDims, v.checked = []int64{-1, -1}, true
		v.life.Unlock()
	}
	in := randomInputs(6, 4, -1, 1, 5)
	if _, err := e.Load(idLogits); err != nil {
		t.Fatal(err)
	}
	want, err := e.Run(idLogits, in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Unload(idLogits); err != nil {
		t.Fatal(err)
	}
	forget(idLogits)
	if _, err := e.Load(idLogits); err != nil {
		t.Fatal(err)
	}
	if e.variants[idLogits].sess.bufs.out != nil {
		t.Fatal("output buffer preallocated for an unknown row size")
	}
	for _, b := range []int{1, 3, 3, 6, 6, 1} { // 6 is beyond the cached sizes
		got, err := e.Run(idLogits, in[:b])
		if err != nil {
			t.Fatalf("batch %d: %v", b, err)
		}
		for i := range got {
			if !closeTo(got[i], want[i], 1e-6) {
				t.Fatalf("batch %d request %d: %v, want %v", b, i, got[i], want[i])
			}
		}
	}

	bad := VariantID{"bad", "v"} // K = 4, the model gives 3
	forget(bad)
	if _, err := e.Load(bad); err != nil {
		t.Fatalf("Load cannot see the row size: %v", err)
	}
	for range 2 {
		_, err := e.Run(bad, [][]float32{{1, 2, 3, 4}})
		if !errors.Is(err, ErrModelMismatch) || !strings.Contains(err.Error(), "want [1, ...] with 4 values per sample") {
			t.Fatalf("wrong row size: %v, want ErrModelMismatch", err)
		}
	}
}

// TestCloseDuringRuns closes the engine while another goroutine runs batches:
// every Run answers or fails with ErrNotLoaded or ErrClosed, and Close waits for
// the running batch.
func TestCloseDuringRuns(t *testing.T) {
	e := newEngine(t, Options{IntraOpThreads: 1})
	registerAll(t, e)
	if _, err := e.Load(idMLP); err != nil {
		t.Fatal(err)
	}
	in := randomInputs(16, 784, 0, 1, 9)
	started := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			if i == 10 {
				close(started)
			}
			_, err := e.Run(idMLP, in)
			if errors.Is(err, ErrClosed) || errors.Is(err, ErrNotLoaded) {
				return
			}
			if err != nil {
				t.Errorf("Run: %v", err)
				return
			}
		}
	})
	<-started
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}
