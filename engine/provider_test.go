package engine

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	ort "github.com/yalue/onnxruntime_go"
)

// TestDecideProvider: the fallback decision alone, with made-up probe errors.
func TestDecideProvider(t *testing.T) {
	cuda := providerConfig{Name: ProviderCUDA, Options: map[string]string{"device_id": "0"}}
	noGPU := errors.New("CUDA failure 100: no CUDA-capable device is detected")
	wrapped := errors.Join(ErrProvider, noGPU)
	for _, c := range []struct {
		name       string
		req        providerConfig
		probe      error
		fallback   bool
		wantActive string
		wantErr    bool
	}{
		{"cpu", providerConfig{Name: ProviderCPU}, nil, false, ProviderCPU, false},
		{"cpu, fallback allowed", providerConfig{Name: ProviderCPU}, nil, true, ProviderCPU, false},
		{"cuda works", cuda, nil, true, ProviderCUDA, false},
		{"cuda works, strict", cuda, nil, false, ProviderCUDA, false},
		{"cuda fails, fallback", cuda, noGPU, true, ProviderCPU, false},
		{"cuda fails, strict", cuda, noGPU, false, "", true},
		{"cuda fails with ErrProvider, strict", cuda, wrapped, false, "", true},
		{"tensorrt fails, fallback", providerConfig{Name: ProviderTensorRT}, noGPU, true, ProviderCPU, false},
	} {
		p, st, err := decideProvider(c.req, c.probe, c.fallback)
		if c.wantErr {
			if !errors.Is(err, ErrProvider) || !strings.Contains(err.Error(), "no CUDA-capable device") {
				t.Errorf("%s: err %v, want ErrProvider with the probe's reason", c.name, err)
			}
			continue
		}
		if err != nil || p.Name != c.wantActive || st.Active != c.wantActive || st.Requested != c.req.Name {
			t.Errorf("%s: %+v %+v %v, want active %s", c.name, p, st, err, c.wantActive)
		}
		if fell := c.probe != nil; st.FellBack() != fell || (fell && !errors.Is(st.Fallback, noGPU)) {
			t.Errorf("%s: fallback %v, want the probe's error %v", c.name, st.Fallback, c.probe)
		}
		if st.FellBack() && len(p.Options) != 0 {
			t.Errorf("%s: the CPU provider after a fallback keeps options %v", c.name, p.Options)
		}
	}
}

// TestProbeModelOnCPU runs the hand-encoded probe model on the CPU provider:
// the encoding is a valid ONNX model that computes x + x.
func TestProbeModelOnCPU(t *testing.T) {
	if err := initEnv(libPath(t)); err != nil {
		t.Fatal(err)
	}
	so, err := ort.NewSessionOptions()
	if err != nil {
		t.Fatal(err)
	}
	defer so.Destroy()
	if err := runProbe(so, ProviderCPU); err != nil {
		t.Fatal(err)
	}
}

// TestGPUFallback: with a library that cannot run CUDA or TensorRT (the CPU-only
// one `make test` uses; the GPU one on a machine without a GPU), FallbackToCPU
// gives a working CPU engine that says why, and its profile cache key is the
// CPU's.
func TestGPUFallback(t *testing.T) {
	if gpuExpected() {
		t.Skip("SNEAKGATE_TEST_GPU=1: the provider is expected to work here (TestGPUProvider)")
	}
	var logs bytes.Buffer
	for _, p := range []string{ProviderCUDA, ProviderTensorRT} {
		logs.Reset()
		e := newEngine(t, Options{Provider: p, ProviderOptions: map[string]string{"device_id": "0"},
			FallbackToCPU: true, IntraOpThreads: 1, Logger: zerolog.New(&logs)})
		st := e.Provider()
		if !st.FellBack() && st.Active == p {
			t.Skipf("%s works with %s on this machine: nothing to fall back from (TestGPUProvider checks it)", p, libPath(t))
		}
		if st.Requested != p || st.Active != ProviderCPU || !st.FellBack() || !errors.Is(st.Fallback, ErrProvider) {
			t.Fatalf("%s: status %+v, want a fallback to cpu", p, st)
		}
		if e.prov.Name != ProviderCPU || e.prov.Options != nil {
			t.Errorf("%s: sessions use %+v", p, e.prov)
		}
		if !strings.Contains(logs.String(), `"level":"warn"`) || !strings.Contains(logs.String(), "execution provider "+p+" unavailable: running on the CPU") {
			t.Errorf("%s: no warning in the log:\n%s", p, logs.String())
		}
		t.Logf("%s: %v", p, st.Fallback)
		registerAll(t, e)
		id := allTestIDs[0]
		if _, err := e.Load(id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Run(id, randomInputs(2, inputSizeOf(id), 0, 1, 1)); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Unload(id); err != nil {
			t.Fatal(err)
		}
	}
	// Without FallbackToCPU, New fails (TestGPUProvidersFailClearly); the CPU
	// provider never probes and never falls back.
	e := newEngine(t, Options{FallbackToCPU: true})
	if st := e.Provider(); st.Requested != ProviderCPU || st.Active != ProviderCPU || st.FellBack() {
		t.Errorf("cpu: %+v", st)
	}
}

// TestLegacyCUDAPathReachesProvider: the library scripts/install-ort-gpu.sh
// installs refuses onnxruntime_go's V2 CUDA options; the V1 path must get as
// far as loading libonnxruntime_providers_cuda.so beside it. Without CUDA 13
// (this machine) that load fails naming the missing CUDA library, which shows
// that the provider library was found and tried. Runs when SNEAKGATE_GPU_ORT_LIB
// names that library (scripts/gpu-check.sh sets it; so can a developer).
func TestLegacyCUDAPathReachesProvider(t *testing.T) {
	lib := os.Getenv("SNEAKGATE_GPU_ORT_LIB")
	if lib == "" {
		t.Skip("SNEAKGATE_GPU_ORT_LIB is not set (the library `make ort-gpu` installs, .cache/onnxruntime-gpu/libonnxruntime.so.1.29.0)")
	}
	if os.Getenv(LibraryEnv) != lib {
		t.Skipf("this process runs %s=%s; run with %s=%s too (one library per process)",
			LibraryEnv, os.Getenv(LibraryEnv), LibraryEnv, lib)
	}
	if err := initEnv(lib); err != nil {
		t.Fatal(err)
	}
	err := probeProvider(providerConfig{Name: ProviderCUDA, Options: map[string]string{"device_id": "0"}})
	t.Logf("probe: %v", err)
	if gpuExpected() {
		if err != nil {
			t.Fatalf("SNEAKGATE_TEST_GPU=1 but the CUDA provider does not work: %v", err)
		}
		return
	}
	if err == nil {
		t.Skip("the CUDA provider works on this machine (set SNEAKGATE_TEST_GPU=1 to run the GPU tests)")
	}
	if !errors.Is(err, ErrProvider) || !strings.Contains(err.Error(), "through the V1 API") {
		t.Fatalf("probe: %v, want ErrProvider from the V1 path", err)
	}
	// ONNX Runtime's own message for a provider library that did not load, or
	// a CUDA error from a provider that loaded on a machine without a device.
	if !strings.Contains(err.Error(), "OrtSessionOptionsAppendExecutionProvider_Cuda: Failed to load shared library") &&
		!strings.Contains(err.Error(), "CUDA failure") {
		t.Errorf("the V1 path did not reach the CUDA provider library: %v", err)
	}
}

// gpuExpected: SNEAKGATE_TEST_GPU=1 says this machine has a working GPU and the
// GPU library, so GPU tests must run and pass instead of skipping.
func gpuExpected() bool { return os.Getenv("SNEAKGATE_TEST_GPU") == "1" }

// TestGPUProvider runs the test models on the CUDA provider and compares them
// with the CPU provider (same library, same process). It needs an NVIDIA GPU
// with CUDA 13 and cuDNN 9, the library `make ort-gpu` installs in
// SNEAKGATE_ORT_LIB, and SNEAKGATE_TEST_GPU=1; scripts/gpu-check.sh runs it.
func TestGPUProvider(t *testing.T) {
	if !gpuExpected() {
		t.Skip("needs an NVIDIA GPU: run scripts/gpu-check.sh on a machine with one (it sets SNEAKGATE_TEST_GPU=1 and the GPU library)")
	}
	gpu := newEngine(t, Options{Provider: ProviderCUDA, ProviderOptions: map[string]string{"device_id": gpuDevice()}})
	if st := gpu.Provider(); st.Active != ProviderCUDA || st.FellBack() {
		t.Fatalf("status %+v, want cuda", st)
	}
	cpu := newEngine(t, Options{IntraOpThreads: 1})
	registerAll(t, gpu)
	registerAll(t, cpu)
	for _, id := range allTestIDs {
		in := randomInputs(64, inputSizeOf(id), 0, 1, 7)
		for _, e := range []*Engine{gpu, cpu} {
			if _, err := e.Load(id); err != nil {
				t.Fatalf("%s: %v", id, err)
			}
		}
		g, err := gpu.Run(id, in)
		if err != nil {
			t.Fatalf("%s on cuda: %v", id, err)
		}
		c, err := cpu.Run(id, in)
		if err != nil {
			t.Fatal(err)
		}
		worst := 0.0
		for i := range g {
			for k := range g[i] {
				worst = math.Max(worst, math.Abs(g[i][k]-c[i][k]))
			}
		}
		t.Logf("%s: largest difference cuda-cpu over 64 inputs: %.2g", id, worst)
		if worst > 1e-3 {
			t.Errorf("%s: cuda and cpu differ by %g", id, worst)
		}
	}
	// Profiling on the GPU works and is cached apart from the CPU's.
	dir := t.TempDir()
	g2 := newEngine(t, Options{Provider: ProviderCUDA, ProviderOptions: map[string]string{"device_id": gpuDevice()},
		ProfileCache: dir, ProfileRuns: 3})
	registerAll(t, g2)
	if err := g2.Profile(context.Background(), allTestIDs[0]); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no profile cache entry in %s: %v", dir, err)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"provider": "cuda"`) {
		t.Errorf("profile cache entry does not name the cuda provider:\n%s", b)
	}
	// An application registered OnCPU runs on the CPU beside CUDA ones.
	g3 := newEngine(t, Options{Provider: ProviderCUDA, ProviderOptions: map[string]string{"device_id": gpuDevice()}})
	if err := g3.Register(linApp(t), OnCPU()); err != nil {
		t.Fatal(err)
	}
	if err := g3.Register(imgApp(t)); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[VariantID]string{{App: "lin", Variant: "logits"}: ProviderCPU, {App: "img", Variant: "mlp"}: ProviderCUDA} {
		if got, err := g3.ProviderOf(id); err != nil || got != want {
			t.Errorf("ProviderOf(%s) = %q, %v; want %q", id, got, err, want)
		}
		if _, err := g3.Load(id); err != nil {
			t.Fatal(err)
		}
		if _, err := g3.Run(id, randomInputs(4, inputSizeOf(id), 0, 1, 3)); err != nil {
			t.Errorf("%s on %s: %v", id, want, err)
		}
	}
}

func gpuDevice() string {
	if d := os.Getenv("SNEAKGATE_GPU_DEVICE"); d != "" {
		return d
	}
	return "0"
}

func TestParseLegacyCUDA(t *testing.T) {
	c, err := parseLegacyCUDA(nil)
	if err != nil || c.deviceID != 0 || c.memLimit != math.MaxUint64 || c.copyInDefault != 1 || c.algo != 0 {
		t.Errorf("defaults: %+v %v", c, err)
	}
	c, err = parseLegacyCUDA(map[string]string{"device_id": "2", "gpu_mem_limit": "1073741824",
		"arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "heuristic", "do_copy_in_default_stream": "0"})
	if err != nil || c != (legacyCUDA{deviceID: 2, memLimit: 1 << 30, arena: 1, algo: 1, copyInDefault: 0}) {
		t.Errorf("all keys: %+v %v", c, err)
	}
	for k, v := range map[string]string{"device_id": "-1", "gpu_mem_limit": "lots", "arena_extend_strategy": "x",
		"cudnn_conv_algo_search": "fast", "do_copy_in_default_stream": "2", "enable_cuda_graph": "1"} {
		if _, err := parseLegacyCUDA(map[string]string{k: v}); !errors.Is(err, ErrProvider) || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: %v, want ErrProvider naming the key", k, v, err)
		}
	}
}

// TestLegacyCUDALayout checks cudalegacy.go's OrtApi indices and the V1 options
// layout against onnxruntime_go's onnxruntime_c_api.h with the C compiler.
func TestLegacyCUDALayout(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler")
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/yalue/onnxruntime_go").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Skipf("onnxruntime_go's source is not in the module cache: %v", err)
	}
	src := filepath.Join(t.TempDir(), "layout.c")
	os.WriteFile(src, []byte(`#include <stdio.h>
#include <stddef.h>
#include "onnxruntime_c_api.h"
#define IDX(f) (int)(offsetof(OrtApi, f) / sizeof(void *))
int main(void) {
	printf("%d %d %d %d %d ", ORT_API_VERSION, IDX(GetErrorMessage), IDX(ReleaseStatus), IDX(SessionOptionsAppendExecutionProvider_CUDA), (int)sizeof(OrtCUDAProviderOptions));
	printf("%d %d %d %d %d\n", (int)offsetof(OrtCUDAProviderOptions, gpu_mem_limit), (int)offsetof(OrtCUDAProviderOptions, arena_extend_strategy),
		(int)offsetof(OrtCUDAProviderOptions, do_copy_in_default_stream), (int)offsetof(OrtCUDAProviderOptions, default_memory_arena_cfg),
		(int)offsetof(OrtCUDAProviderOptions, tunable_op_max_tuning_duration_ms));
	return 0;
}
`), 0o644)
	bin := filepath.Join(t.TempDir(), "layout")
	if out, err := exec.Command(cc, "-I", dir, "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("compiling against %s: %v\n%s", dir, err, out)
	}
	got, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{"24", "2", "93", "152", strconv.Itoa(64), "8", "16", "20", "40", "56"}, " ")
	if strings.TrimSpace(string(got)) != want {
		t.Errorf("onnxruntime_c_api.h gives %q, cudalegacy.go assumes %q: update its constants and struct", strings.TrimSpace(string(got)), want)
	}
}

// TestOnCPU: an application registered OnCPU on an engine whose provider is
// not the CPU gets sessions from separate CPU options, and its variants' output
// keys and profile cache keys name the CPU; the other applications keep the
// engine's provider. Without a GPU the engine's provider is set by hand (its
// sessions still run on the CPU); on a GPU TestGPUProvider checks it for real.
func TestOnCPU(t *testing.T) {
	e := newEngine(t, Options{IntraOpThreads: 1, ProfileCache: t.TempDir(), BatchSizes: []int{1, 2}})
	e.prov = providerConfig{Name: ProviderCUDA, Options: map[string]string{"device_id": "0"}}
	if err := e.Register(linApp(t), OnCPU()); err != nil {
		t.Fatal(err)
	}
	if err := e.Register(imgApp(t)); err != nil {
		t.Fatal(err)
	}
	if e.cpuSO == nil || e.cpuSO == e.so {
		t.Fatal("no CPU session options of their own for the OnCPU application")
	}
	for id, want := range map[VariantID]string{{App: "lin", Variant: "logits"}: ProviderCPU, {App: "img", Variant: "mlp"}: ProviderCUDA} {
		if got, err := e.ProviderOf(id); err != nil || got != want {
			t.Errorf("ProviderOf(%s) = %q, %v; want %q", id, got, err, want)
		}
		k, err := e.OutputKey(id)
		if err != nil {
			t.Fatal(err)
		}
		if k.Provider != want || (want == ProviderCPU) != (k.ProviderOptions == nil) {
			t.Errorf("%s: output key names %s %v, want %s", id, k.Provider, k.ProviderOptions, want)
		}
		if _, err := e.Load(id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Run(id, randomInputs(2, inputSizeOf(id), 0, 1, 1)); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if _, err := e.ProviderOf(VariantID{App: "nope", Variant: "x"}); !errors.Is(err, ErrUnknownVariant) {
		t.Errorf("ProviderOf an unknown variant: %v", err)
	}
	// On an engine that runs on the CPU, OnCPU changes nothing.
	c := newEngine(t, Options{IntraOpThreads: 1})
	if err := c.Register(linApp(t), OnCPU()); err != nil {
		t.Fatal(err)
	}
	if c.cpuSO != nil {
		t.Error("a CPU engine made separate CPU options")
	}
}

// TestGuard: Options.Guard is called around each session's creation, each
// Profile's runs and each Warm's passes, with the provider they use, and
// released after each.
func TestGuard(t *testing.T) {
	var calls []string
	open := 0
	e := newEngine(t, Options{IntraOpThreads: 1, BatchSizes: []int{1, 2}, ProfileRuns: 1,
		Guard: func(id VariantID, provider string) func() {
			calls = append(calls, id.String()+" "+provider)
			open++
			return func() { open-- }
		}})
	registerAll(t, e)
	id := VariantID{App: "img", Variant: "mlp"}
	if err := e.Profile(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Load(id); err != nil {
		t.Fatal(err)
	}
	if err := e.Warm(id, 2); err != nil {
		t.Fatal(err)
	}
	want := []string{"img/mlp cpu", "img/mlp cpu", "img/mlp cpu", "img/mlp cpu"} // profile: create, runs; Load's create; Warm's passes
	if !slices.Equal(calls, want) || open != 0 {
		t.Errorf("guard calls %q (%d open), want %q", calls, open, want)
	}
}
