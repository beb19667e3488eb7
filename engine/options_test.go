package engine

import (
	"errors"
	"maps"
	"math"
	"os"
	"strings"
	"testing"
)

func TestProviderMapping(t *testing.T) {
	for _, c := range []struct {
		name string
		opts map[string]string
		want providerConfig
		err  bool
	}{
		{name: "", want: providerConfig{Name: "cpu"}},
		{name: "CPU", want: providerConfig{Name: "cpu"}},
		{name: "cuda", opts: map[string]string{"device_id": "1"},
			want: providerConfig{Name: "cuda", Options: map[string]string{"device_id": "1"}}},
		{name: " TensorRT ", opts: map[string]string{"trt_fp16_enable": "1"},
			want: providerConfig{Name: "tensorrt", Options: map[string]string{"trt_fp16_enable": "1"}}},
		{name: "cpu", opts: map[string]string{"device_id": "0"}, err: true},
		{name: "rocm", err: true},
	} {
		got, err := providerFor(c.name, c.opts)
		if c.err {
			if !errors.Is(err, ErrProvider) {
				t.Errorf("%q %v: got %v, want ErrProvider", c.name, c.opts, err)
			}
			continue
		}
		if err != nil || got.Name != c.want.Name || !maps.Equal(got.Options, c.want.Options) {
			t.Errorf("%q %v: got %+v, %v; want %+v", c.name, c.opts, got, err, c.want)
		}
	}
}

// TestGPUProvidersFailClearly: the CPU-only library cannot append CUDA or
// TensorRT; without Options.FallbackToCPU New must say so instead of silently
// running on the CPU.
func TestGPUProvidersFailClearly(t *testing.T) {
	if gpuExpected() {
		t.Skip("SNEAKGATE_TEST_GPU=1: CUDA works here (TestGPUProvider)")
	}
	lib := libPath(t)
	for _, p := range []string{ProviderCUDA, ProviderTensorRT} {
		e, err := New(Options{LibraryPath: lib, Provider: p, ProviderOptions: map[string]string{"device_id": "0"}})
		if err == nil {
			st := e.Provider()
			e.Close()
			if st.Active == p && !st.FellBack() {
				t.Skipf("%s works with %s on this machine (TestGPUProvider checks it)", p, lib)
			}
			t.Fatalf("%s: New succeeded without the provider: %+v", p, st)
		}
		if !errors.Is(err, ErrProvider) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want ErrProvider naming the provider", p, err)
		}
		t.Logf("%s: %v", p, err)
	}
}

func TestOptionsValidation(t *testing.T) {
	for name, o := range map[string]Options{
		"negative threads": {IntraOpThreads: -1},
		"negative budget":  {MemoryBudgetBytes: -1},
		"batch order":      {BatchSizes: []int{1, 4, 2}},
		"zero batch":       {BatchSizes: []int{0, 1}},
		"negative runs":    {WarmupRuns: -1},
	} {
		if _, err := o.withDefaults(); !errors.Is(err, ErrOptions) {
			t.Errorf("%s: %v, want ErrOptions", name, err)
		}
	}
	o, err := Options{}.withDefaults()
	if err != nil || o.ProfileRuns != DefaultProfileRuns || o.maxBatch() != 32 || o.Now == nil {
		t.Errorf("defaults: %+v, %v", o, err)
	}
}

func TestLibraryErrors(t *testing.T) {
	lib := libPath(t)
	e := newEngine(t, Options{LibraryPath: lib})
	_ = e
	// The environment exists now; another library file cannot replace it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{LibraryPath: self}); !errors.Is(err, ErrLibraryMismatch) {
		t.Errorf("other library: %v, want ErrLibraryMismatch", err)
	}
	t.Setenv(LibraryEnv, "")
	e2, err := New(Options{}) // no path: the process's library
	if err != nil {
		t.Fatalf("no path once initialised: %v", err)
	}
	e2.Close()
}

func TestConvert(t *testing.T) {
	dst := make([]float64, 3)
	kindLogits.convert([]float32{1000, 1000, -1000}, dst) // would overflow without the max shift
	if !closeTo(dst, []float64{0.5, 0.5, 0}, 1e-12) {
		t.Errorf("softmax: %v", dst)
	}
	kindProbabilities.convert([]float32{0.25, 0.5, 0.25}, dst)
	if !closeTo(dst, []float64{0.25, 0.5, 0.25}, 0) {
		t.Errorf("probabilities: %v", dst)
	}
	two := make([]float64, 2)
	kindScore.convert([]float32{0.75}, two)
	if !closeTo(two, []float64{0.25, 0.75}, 0) {
		t.Errorf("score: %v", two)
	}
	kindLogits.convert([]float32{0, float32(math.Log(3))}, two)
	if !closeTo(two, []float64{0.25, 0.75}, 1e-7) {
		t.Errorf("softmax 2: %v", two)
	}
	if _, err := parseKind("argmax"); err == nil {
		t.Error("parseKind accepted argmax")
	}
}
