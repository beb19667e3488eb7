package engine

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestGPULatencyTable is scripts/gpu-check.sh's table: every variant of the
// applications under ../models profiled on the CPU provider and on the GPU
// provider of the same library (one process), at the batch sizes in
// SNEAKGATE_GPU_BATCHES (default 1 2 4 ... 256), and written to the file
// SNEAKGATE_GPU_TABLE. It runs only when that variable is set.
// SNEAKGATE_GPU_TABLE_PROVIDER (default cuda) is the provider of the second
// column: the script's --cpu-only rehearsal sets cpu to check itself without a
// GPU. SNEAKGATE_GPU_CPU_THREADS (default 1, the gateway's default) sizes the
// CPU engine's intra-op pool.
func TestGPULatencyTable(t *testing.T) {
	out := os.Getenv("SNEAKGATE_GPU_TABLE")
	if out == "" {
		t.Skip("SNEAKGATE_GPU_TABLE is not set: scripts/gpu-check.sh runs this")
	}
	batches, err := parseBatches(os.Getenv("SNEAKGATE_GPU_BATCHES"))
	if err != nil {
		t.Fatal(err)
	}
	threads := 1
	if s := os.Getenv("SNEAKGATE_GPU_CPU_THREADS"); s != "" {
		if threads, err = strconv.Atoi(s); err != nil || threads < 0 {
			t.Fatalf("SNEAKGATE_GPU_CPU_THREADS=%q: want a number >= 0", s)
		}
	}
	prov := os.Getenv("SNEAKGATE_GPU_TABLE_PROVIDER")
	if prov == "" {
		prov = ProviderCUDA
	}
	var popts map[string]string
	if prov != ProviderCPU {
		popts = map[string]string{"device_id": gpuDevice()}
	}
	apps := realManifests(t)
	base := Options{BatchSizes: batches, WarmupRuns: 3, ProfileRuns: 7}
	co := base
	co.IntraOpThreads, co.InterOpThreads = threads, 1
	cpu := newEngine(t, co)
	gpo := base
	gpo.Provider, gpo.ProviderOptions = prov, popts
	gpo.IntraOpThreads, gpo.InterOpThreads = threads, 1 // for the nodes ONNX Runtime leaves on the CPU
	gpu := newEngine(t, gpo)
	if st := gpu.Provider(); st.Active != prov {
		t.Fatalf("second engine runs %s, want %s: %v", st.Active, prov, st.Fallback)
	}
	var rows []latencyRow
	ctx := context.Background()
	for _, a := range apps {
		for _, e := range []*Engine{cpu, gpu} {
			if err := e.Register(a); err != nil {
				t.Fatal(err)
			}
		}
		for _, id := range cpu.Variants(a.Name) {
			t0 := time.Now()
			if err := cpu.Profile(ctx, id); err != nil {
				t.Fatal(err)
			}
			if err := gpu.Profile(ctx, id); err != nil {
				t.Fatal(err)
			}
			cp, _ := cpu.ProfileOf(id)
			gp, _ := gpu.ProfileOf(id)
			rows = append(rows, latencyRow{id: id, batch: batches, cpu: cp.Latency, gpu: gp.Latency})
			t.Logf("%s measured in %s", id, time.Since(t0).Round(time.Millisecond))
		}
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("cpu: ONNX Runtime %s, CPU provider, %d intra-op thread(s); second column: %s provider", runtimeVersion(), threads, prov)
	if prov != ProviderCUDA {
		head += " (a rehearsal: no GPU was used)"
	}
	writeLatencyTable(f, head, prov, rows)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// latencyRow is one variant's median forward-pass durations by batch size.
type latencyRow struct {
	id       VariantID
	batch    []int
	cpu, gpu []time.Duration
}

// writeLatencyTable prints one line per variant and batch size: the CPU's and
// the other provider's batch latency in milliseconds, per-sample microseconds
// of each, and the CPU/GPU ratio (above 1: the GPU is faster).
func writeLatencyTable(w io.Writer, head, prov string, rows []latencyRow) {
	fmt.Fprintf(w, "# %s\n", head)
	fmt.Fprintf(w, "%-28s %6s %11s %11s %12s %12s %8s\n", "variant", "batch", "cpu_ms", prov+"_ms",
		"cpu_us/smp", prov+"_us/smp", "cpu/"+prov)
	for _, r := range rows {
		for i, b := range r.batch {
			c, g := r.cpu[i], r.gpu[i]
			ratio := "-"
			if g > 0 {
				ratio = fmt.Sprintf("%.2f", float64(c)/float64(g))
			}
			fmt.Fprintf(w, "%-28s %6d %11.3f %11.3f %12.1f %12.1f %8s\n", r.id, b,
				ms(c), ms(g), us(c)/float64(b), us(g)/float64(b), ratio)
		}
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// parseBatches reads increasing positive batch sizes separated by spaces or
// commas; empty means 1, 2, 4, ... 256.
func parseBatches(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return []int{1, 2, 4, 8, 16, 32, 64, 128, 256}, nil
	}
	var bs []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' }) {
		b, err := strconv.Atoi(f)
		if err != nil || b < 1 || (len(bs) > 0 && b <= bs[len(bs)-1]) {
			return nil, fmt.Errorf("batch sizes %q: want increasing positive numbers", s)
		}
		bs = append(bs, b)
	}
	return bs, nil
}

func TestLatencyTableFormat(t *testing.T) {
	if bs, err := parseBatches(""); err != nil || len(bs) != 9 || bs[8] != 256 {
		t.Errorf("default batches: %v %v", bs, err)
	}
	if bs, err := parseBatches("1, 8 64"); err != nil || fmt.Sprint(bs) != "[1 8 64]" {
		t.Errorf("1, 8 64: %v %v", bs, err)
	}
	for _, s := range []string{"0", "4 2", "x"} {
		if _, err := parseBatches(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	var b strings.Builder
	writeLatencyTable(&b, "head", "cuda", []latencyRow{{id: VariantID{App: "fashion", Variant: "cnn"},
		batch: []int{1, 256}, cpu: []time.Duration{200 * time.Microsecond, 25 * time.Millisecond},
		gpu: []time.Duration{400 * time.Microsecond, 1 * time.Millisecond}}})
	want := "# head\n" +
		"variant                       batch      cpu_ms     cuda_ms   cpu_us/smp  cuda_us/smp cpu/cuda\n" +
		"fashion/cnn                       1       0.200       0.400        200.0        400.0     0.50\n" +
		"fashion/cnn                     256      25.000       1.000         97.7          3.9    25.00\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}
