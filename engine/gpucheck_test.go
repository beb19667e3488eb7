package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/manifest"
)

// TestGPULatencyTable is scripts/gpu-check.sh's table: every variant of the
// applications under ../models profiled on the CPU provider and on the GPU
// provider of the same library, at the batch sizes in SNEAKGATE_GPU_BATCHES
// (default 1 2 4 ... 256), and written to the file SNEAKGATE_GPU_TABLE. It runs
// only when that variable is set. SNEAKGATE_GPU_TABLE_PROVIDER (default cuda)
// is the provider of the second column: the script's --cpu-only rehearsal sets
// cpu to check itself without a GPU. SNEAKGATE_GPU_CPU_THREADS (default 1, the
// gateway's default) sizes the intra-op pool of both. SNEAKGATE_GPU_TABLE_APPS
// (names separated by spaces) limits the table to those applications, and
// SNEAKGATE_GPU_PROVIDER_OPTIONS (key=value pairs separated by spaces) adds
// options to the second provider's (engine/cudalegacy.go lists CUDA's).
//
// Each application is measured on each provider in a process of its own (this
// test binary run again, one engine each), so that a model that kills the
// process on one provider costs only its own rows: on an H200 the CUDA
// provider of the ONNX Runtime `make ort-gpu` installs died with SIGSEGV
// creating a session for the vad models (docs/deployment.md, "GPU"). Such an
// application's rows show "-" for that provider, the table ends with a line
// saying which variant died and how, and the test fails after writing it.
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
	if part := os.Getenv(tablePartEnv); part != "" {
		measureTablePart(t, part, batches, threads)
		return
	}
	var rows []latencyRow
	var failures []string
	ortVersion := ""
	only := strings.Fields(os.Getenv("SNEAKGATE_GPU_TABLE_APPS"))
	for _, a := range realManifests(t) {
		if len(only) > 0 && !slices.Contains(only, a.Name) {
			continue
		}
		parts := [2]tablePart{}
		for i, p := range [2]string{ProviderCPU, prov} {
			tp, err := runTablePart(t, a, []string{"cpu", "second"}[i], p)
			if err != nil {
				failures = append(failures, err.Error())
				t.Log(err)
			}
			parts[i] = tp
			if tp.ORT != "" {
				ortVersion = tp.ORT
			}
		}
		for _, id := range tableIDs(a) {
			r := latencyRow{id: id, batch: batches, cpu: parts[0].latency(id), gpu: parts[1].latency(id)}
			rows = append(rows, r)
		}
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("cpu: ONNX Runtime %s, CPU provider, %d intra-op thread(s); second column: %s provider; one process per application and provider", ortVersion, threads, prov)
	if po := strings.TrimSpace(os.Getenv("SNEAKGATE_GPU_PROVIDER_OPTIONS")); po != "" && prov != ProviderCPU {
		head += "; " + prov + " options: " + po
	}
	if prov != ProviderCUDA {
		head += " (a rehearsal: no GPU was used)"
	}
	writeLatencyTable(f, head, prov, rows)
	for _, m := range failures {
		fmt.Fprintf(f, "# %s\n", m)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if len(failures) > 0 {
		t.Errorf("%d of the measurements failed (listed at the end of %s)", len(failures), out)
	}
}

// The environment of a child process of TestGPULatencyTable: which column it
// measures ("cpu" or "second"), the application's manifest, and the file it
// writes its tablePart to.
const (
	tablePartEnv     = "SNEAKGATE_GPU_TABLE_PART"
	tablePartApp     = "SNEAKGATE_GPU_TABLE_PART_APP"
	tablePartFileEnv = "SNEAKGATE_GPU_TABLE_PART_FILE"
)

// tablePart is what a child process measured: its ONNX Runtime version and,
// per variant, the median batch latencies.
type tablePart struct {
	ORT  string
	Rows []partRow
}

type partRow struct {
	ID      VariantID
	Latency []time.Duration
}

// latency is id's row, nil when it was not measured.
func (tp tablePart) latency(id VariantID) []time.Duration {
	if i := slices.IndexFunc(tp.Rows, func(r partRow) bool { return r.ID == id }); i >= 0 {
		return tp.Rows[i].Latency
	}
	return nil
}

// tableIDs are the ids of a's variants, in the manifest's order.
func tableIDs(a *manifest.App) []VariantID {
	ids := make([]VariantID, len(a.Variants))
	for i, v := range a.Variants {
		ids[i] = VariantID{App: a.Name, Variant: v.Name}
	}
	return ids
}

// runTablePart runs this test again in a child process that measures a's
// variants on prov, and returns what it wrote. The child's output goes to
// stderr too. A child that fails or dies returns an error saying which variant
// it was measuring and how it ended (the signal, and the ONNX Runtime call it
// was in), with the rows it finished before that.
func runTablePart(t *testing.T, a *manifest.App, part, prov string) (tablePart, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), part+".json")
	// The child gets what is left of this test's time, so that one that hangs
	// (a GPU that stops answering) ends with the parent instead of holding
	// the GPU after it.
	timeout := time.Duration(0)
	if d, ok := t.Deadline(); ok {
		timeout = max(time.Until(d)-5*time.Second, time.Second)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestGPULatencyTable$", "-test.count=1", "-test.v", "-test.timeout="+timeout.String())
	cmd.Env = append(os.Environ(), tablePartEnv+"="+part, tablePartApp+"="+a.Dir, tablePartFileEnv+"="+file)
	var log bytes.Buffer
	cmd.Stdout = io.MultiWriter(os.Stderr, &log)
	cmd.Stderr = cmd.Stdout
	t0 := time.Now()
	runErr := cmd.Run()
	var tp tablePart
	if b, err := os.ReadFile(file); err == nil {
		if err := json.Unmarshal(b, &tp); err != nil {
			return tp, fmt.Errorf("%s on %s: %v", a.Name, prov, err)
		}
	}
	if runErr != nil {
		return tp, fmt.Errorf("%s on %s: the measuring process failed (%v)%s", a.Name, prov, runErr, childDeath(log.String()))
	}
	if len(tp.Rows) < len(a.Variants) {
		// Exit 0 without the rows: it skipped (no library, no SNEAKGATE_GPU_TABLE
		// in its environment) or ran no test.
		return tp, fmt.Errorf("%s on %s: the measuring process ended measuring %d of %d variants%s", a.Name, prov, len(tp.Rows), len(a.Variants), childDeath(log.String()))
	}
	t.Logf("%s on %s: %d variants measured in %s", a.Name, prov, len(tp.Rows), time.Since(t0).Round(time.Millisecond))
	return tp, nil
}

// childDeath reads a child's output for what it was doing when it ended: the
// last "measuring" line, the Go runtime's signal line, and the first ONNX
// Runtime C call on the stack.
func childDeath(out string) string {
	var measuring, signal, call, fatal string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.Contains(l, "measuring "):
			measuring = l[strings.Index(l, "measuring "):]
		case strings.Contains(l, "_test.go:") && !strings.Contains(l, " measured in "):
			fatal = l[strings.Index(l, ": ")+2:]
		case signal == "" && (strings.HasPrefix(l, "SIG") || strings.HasPrefix(l, "panic:") || strings.HasPrefix(l, "fatal error:")):
			signal = l
		case call == "" && strings.Contains(l, "._Cfunc_"):
			call = l[strings.Index(l, "._Cfunc_")+len("._Cfunc_"):]
			if i := strings.IndexByte(call, '('); i >= 0 {
				call = call[:i]
			}
		}
	}
	s := ""
	if measuring != "" {
		s += " while " + measuring
	}
	if signal != "" {
		s += ": " + signal
	}
	if call != "" {
		s += " in ONNX Runtime's " + call
	}
	if signal == "" && fatal != "" {
		s += ": " + fatal
	}
	return s
}

// measureTablePart is the child: one engine, on the CPU provider for part
// "cpu" and on SNEAKGATE_GPU_TABLE_PROVIDER for "second", profiles the
// variants of the application whose directory is SNEAKGATE_GPU_TABLE_PART_APP
// and writes a tablePart to SNEAKGATE_GPU_TABLE_PART_FILE, after each variant
// (so that a crash keeps what was measured before it).
func measureTablePart(t *testing.T, part string, batches []int, threads int) {
	file, dir := os.Getenv(tablePartFileEnv), os.Getenv(tablePartApp)
	if file == "" || dir == "" {
		t.Fatalf("%s is set without %s and %s", tablePartEnv, tablePartFileEnv, tablePartApp)
	}
	o := Options{BatchSizes: batches, WarmupRuns: 3, ProfileRuns: 7}
	o.IntraOpThreads, o.InterOpThreads = threads, 1 // on a GPU: for the nodes ONNX Runtime leaves on the CPU
	want := ProviderCPU
	switch part {
	case "cpu":
	case "second":
		if want = os.Getenv("SNEAKGATE_GPU_TABLE_PROVIDER"); want == "" {
			want = ProviderCUDA
		}
		if want != ProviderCPU {
			o.ProviderOptions = map[string]string{"device_id": gpuDevice()}
			for _, kv := range strings.Fields(os.Getenv("SNEAKGATE_GPU_PROVIDER_OPTIONS")) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					t.Fatalf("SNEAKGATE_GPU_PROVIDER_OPTIONS: %q is not key=value", kv)
				}
				o.ProviderOptions[k] = v
			}
		}
		o.Provider = want
	default:
		t.Fatalf("%s=%q: want cpu or second", tablePartEnv, part)
	}
	a, err := manifest.Load(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, o)
	if st := e.Provider(); st.Active != want {
		t.Fatalf("the engine runs %s, want %s: %v", st.Active, want, st.Fallback)
	}
	if err := e.Register(a); err != nil {
		t.Fatal(err)
	}
	tp := tablePart{ORT: runtimeVersion()}
	ctx := context.Background()
	for _, id := range e.Variants(a.Name) {
		t.Logf("measuring %s on %s", id, want)
		t0 := time.Now()
		if err := e.Profile(ctx, id); err != nil {
			t.Fatal(err)
		}
		p, _ := e.ProfileOf(id)
		tp.Rows = append(tp.Rows, partRow{ID: id, Latency: p.Latency})
		t.Logf("%s on %s measured in %s", id, want, time.Since(t0).Round(time.Millisecond))
		b, err := json.Marshal(tp)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
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
			c, g := at(r.cpu, i), at(r.gpu, i)
			ratio := "-"
			if c > 0 && g > 0 {
				ratio = fmt.Sprintf("%.2f", float64(c)/float64(g))
			}
			fmt.Fprintf(w, "%-28s %6d %11s %11s %12s %12s %8s\n", r.id, b,
				num(ms(c), "%.3f"), num(ms(g), "%.3f"), num(us(c)/float64(b), "%.1f"), num(us(g)/float64(b), "%.1f"), ratio)
		}
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// at is ds[i], 0 when ds is shorter (a variant not measured).
func at(ds []time.Duration, i int) time.Duration {
	if i < len(ds) {
		return ds[i]
	}
	return 0
}

// num formats x, or "-" for 0 (not measured).
func num(x float64, format string) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf(format, x)
}

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
	b.Reset()
	writeLatencyTable(&b, "head", "cuda", []latencyRow{{id: VariantID{App: "vad", Variant: "silero-v5"},
		batch: []int{1}, cpu: []time.Duration{200 * time.Microsecond}}})
	if got := strings.Split(b.String(), "\n")[2]; got != "vad/silero-v5                     1       0.200           -        200.0            -        -" {
		t.Errorf("a row not measured on the GPU: %q", got)
	}
}

// TestChildDeath: what the table says about a measuring process that died,
// read from the Go runtime's crash output (abridged from the H200 run).
func TestChildDeath(t *testing.T) {
	out := `=== RUN   TestGPULatencyTable
    gpucheck_test.go:245: measuring vad/silero-legacy on cuda
SIGSEGV: segmentation violation
PC=0x7fbefe312e90 m=9 sigcode=2 addr=0x7fbefe312e90
signal arrived during cgo execution

goroutine 21 gp=0x1a443b104d20 m=9 mp=0x1a443b808008 [syscall]:
runtime.cgocall(0x615440, 0x1a443b037090)
github.com/yalue/onnxruntime_go._Cfunc_CreateSessionFromFile(0x7fbc60596150, 0x129d4880, 0x1a443b222168, 0x12f2bef0)
`
	want := " while measuring vad/silero-legacy on cuda: SIGSEGV: segmentation violation in ONNX Runtime's CreateSessionFromFile"
	if got := childDeath(out); got != want {
		t.Errorf("childDeath:\n got %q\nwant %q", got, want)
	}
	if got := childDeath("    gpucheck_test.go:241: the engine runs cpu, want cuda: no GPU\n--- FAIL: TestGPULatencyTable\n"); got != ": the engine runs cpu, want cuda: no GPU" {
		t.Errorf("a plain failure: %q", got)
	}
}

// TestTablePartIncomplete: a measuring process that exits 0 without measuring
// every variant (here it skips: SNEAKGATE_GPU_TABLE is empty in its
// environment) is a failure of the table, not rows of "-" under "ok".
func TestTablePartIncomplete(t *testing.T) {
	t.Setenv("SNEAKGATE_GPU_TABLE", "")
	a := &manifest.App{Name: "lin", Dir: t.TempDir(), Variants: []manifest.Variant{{Name: "logits"}}}
	tp, err := runTablePart(t, a, "cpu", ProviderCPU)
	if err == nil || !strings.Contains(err.Error(), "0 of 1") {
		t.Errorf("a child that measured nothing: %+v, %v", tp, err)
	}
}
