package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/protocol"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses; utime 250 and stime 30 ticks.
	line := []byte("4242 (sneak (gate) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 30 0 0 20 0 9 0 100 0 0\n")
	got, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := (CPUTime{User: 2500 * time.Millisecond, System: 300 * time.Millisecond}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got.Total() != 2800*time.Millisecond || got.Sub(CPUTime{User: time.Second}).User != 1500*time.Millisecond {
		t.Errorf("Total/Sub: %+v", got)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 x 30 0"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestReadCPUSelf reads this process's CPU time, burns CPU until the reading
// grows, and checks that the pid form reads the same process.
func TestReadCPUSelf(t *testing.T) {
	before, err := ReadCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	x := 1.0
	for i := 0; ; i++ {
		for range 1 << 20 {
			x = x*1.0000001 + 1e-9
		}
		now, err := ReadCPU(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if now.Total() < before.Total() {
			t.Fatalf("CPU time went back: %v -> %v", before, now)
		}
		if now.Total() > before.Total() {
			break
		}
		if i > 100000 {
			t.Fatalf("CPU time never grew (%v, %g)", now, x)
		}
	}
	if _, err := ReadCPU(1 << 30); err == nil {
		t.Error("a process that does not exist: no error")
	}
}

func TestPayloadIDs(t *testing.T) {
	bodies := requestBodies(3, func(i int) []float32 { return []float32{float32(i), 0.5} }, 250, false)
	l := newLoader(nil, "fashion", 1, time.Second, bodies, "benchab12")
	p := l.payload(4) // bodies[1]
	want := protocol.Payload{ID: "benchab12-4", DeadlineMS: 250, Input: []float32{1, 0.5}}
	if !bytes.Equal(p, want.Marshal()) {
		t.Errorf("payload %s, want %s", p, want.Marshal())
	}
	if id := payloadID(p); id != "benchab12-4" {
		t.Errorf("payloadID %q", id)
	}
	if seq, ok := l.seqOf("benchab12-4"); !ok || seq != 4 {
		t.Errorf("seqOf: %d %v", seq, ok)
	}
	for _, id := range []string{"", "benchab12", "benchab12-", "benchab13-4", "benchab12x4", "benchab12-4x"} {
		if _, ok := l.seqOf(id); ok {
			t.Errorf("seqOf(%q) accepted", id)
		}
	}
	if payloadID([]byte(`{"deadline_ms":3}`)) != "" || payloadID([]byte(`{"id":"open`)) != "" {
		t.Error("payloadID of a payload without a closed id")
	}
	l.scatter = true
	ids := []string{l.id(1), l.id(2), l.id(3), l.id(10)}
	if sorted := slices.Sorted(slices.Values(ids)); slices.Equal(sorted, ids) {
		t.Errorf("scattered ids in increasing order: %v", ids)
	}
	for i, id := range ids {
		want := []int64{1, 2, 3, 10}[i]
		if seq, ok := l.seqOf(id); !ok || seq != want || !strings.HasPrefix(id, "benchab12-") || len(id) != len("benchab12-")+17+len(strconv.FormatInt(want, 10)) {
			t.Errorf("scattered id %q: seqOf %d %v, want %d", id, seq, ok, want)
		}
	}
	if _, ok := l.seqOf("benchab12-0000000000000000-1"); ok {
		t.Error("seqOf accepted a scattered id whose hash is not its sequence number's")
	}
	b64 := requestBodies(1, func(int) []float32 { return []float32{1} }, 0, true)
	if !bytes.HasPrefix(b64[0], []byte(`{"id":"","input_b64":"`)) {
		t.Errorf("b64 body %s", b64[0])
	}
}

// TestRunEndToEnd runs a small benchmark against a real Mosquitto and the real
// gateway binary (built here), with a CPU profile, and checks that every request
// was answered and that the results and their JSON have every part. It asserts
// no timing.
func TestRunEndToEnd(t *testing.T) {
	lib := testenv.ORTLib(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "sneakgate")
	build := exec.Command("go", "build", "-o", bin, "./cmd/sneakgate")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var progress bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const n = 300
	c := Config{App: "fashion", Models: "../models", Policy: "fixed-batch", Variant: "logreg", Encoding: "json",
		Devices: 3, Concurrency: 8, Saturate: true, MaxConcurrency: 16, Requests: n, Warmup: 20, Deadline: 30 * time.Second,
		GatewayBinary: bin, Library: lib, WorkDir: filepath.Join(dir, "work"),
		CPUProfile: filepath.Join(dir, "cpu.pprof"), ProfileSeconds: 1, Progress: &progress}
	res, err := Run(ctx, c)
	if err != nil {
		t.Fatalf("%v\nprogress:\n%s", err, progress.String())
	}
	for name, p := range map[string]Phase{"broker alone": res.Broker, "gateway": res.Gateway} {
		if p.Sent != n || p.Completed != n || p.Unanswered != 0 || p.PublishErrors != 0 || p.Latency.N != n {
			t.Errorf("%s: sent %d, completed %d, unanswered %d, publish errors %d, latencies %d; want %d each",
				name, p.Sent, p.Completed, p.Unanswered, p.PublishErrors, p.Latency.N, n)
		}
		if !(p.Throughput > 0) || p.Latency.P50 <= 0 || p.Latency.P50 > p.Latency.P99 {
			t.Errorf("%s: throughput %v, latency %+v", name, p.Throughput, p.Latency)
		}
	}
	// Each path ran at 8 and 16 in flight; the best of each is its headline phase.
	if res.Saturation == nil || res.Setup.MaxConcurrency != 16 {
		t.Fatalf("saturation %+v, setup %+v", res.Saturation, res.Setup)
	}
	for name, x := range map[string]struct {
		all  []Phase
		best Phase
	}{"broker alone": {res.Saturation.Broker, res.Broker}, "gateway": {res.Saturation.Gateway, res.Gateway}} {
		if len(x.all) != 2 || x.all[0].Concurrency != 8 || x.all[1].Concurrency != 16 {
			t.Errorf("%s: sweep %d phases %+v, want at 8 and 16 in flight", name, len(x.all), x.all)
			continue
		}
		for _, p := range x.all {
			if p.Completed != n || p.Throughput > x.best.Throughput {
				t.Errorf("%s: at %d in flight %d completed, %v/s; the best %v/s", name, p.Concurrency, p.Completed, p.Throughput, x.best.Throughput)
			}
		}
	}
	if res.Broker.Gateway != nil || res.Gateway.Gateway == nil {
		t.Errorf("gateway CPU: broker alone %v, through the gateway %v", res.Broker.Gateway, res.Gateway.Gateway)
	}
	answered := res.Gateway.ByStatus[protocol.StatusOK] + res.Gateway.ByStatus[protocol.StatusLate]
	if answered != n || res.Gateway.ByModel["logreg"] != n || res.Gateway.MeanBatch < 1 {
		t.Errorf("replies: statuses %v, models %v, mean batch %v", res.Gateway.ByStatus, res.Gateway.ByModel, res.Gateway.MeanBatch)
	}
	if q, tot := res.Gateway.Queued, res.Gateway.InGateway; q == nil || tot == nil || q.N != n || tot.N != n ||
		q.P50 <= 0 || q.P50 > tot.P50 || tot.P50 > res.Gateway.Latency.P50 {
		t.Errorf("the gateway's own times: queue_ms %+v, total_ms %+v, round trip %+v", q, tot, res.Gateway.Latency)
	}
	if res.Broker.Queued != nil || res.Broker.InGateway != nil {
		t.Errorf("broker alone has the gateway's times %v %v", res.Broker.Queued, res.Broker.InGateway)
	}
	if f := res.Inference[res.Setup.App+"/logreg"]; f <= 0 {
		t.Errorf("latency correction of logreg %v (all: %v)", f, res.Inference)
	}
	if f := res.Gateway.Inference[res.Setup.App+"/logreg"]; f <= 0 || len(res.Gateway.Inference) != 1 {
		t.Errorf("inference over the phase: logreg %v (all: %v)", f, res.Gateway.Inference)
	}
	if res.Setup.Encoding != "input" || res.Setup.Variant != "logreg" || res.Setup.PayloadBytes <= 0 || res.Ratio <= 0 {
		t.Errorf("setup %+v, ratio %v", res.Setup, res.Ratio)
	}
	prof, err := os.ReadFile(c.CPUProfile)
	if err != nil || len(prof) < 2 || prof[0] != 0x1f || prof[1] != 0x8b {
		t.Errorf("CPU profile: %v (%d bytes, want gzip)", err, len(prof))
	}
	if res.Profiled == nil || res.Profiled.Completed == 0 || res.Profiled.Concurrency != res.Gateway.Concurrency || res.CPUProfile != c.CPUProfile {
		t.Errorf("profiled load %+v, profile %q", res.Profiled, res.CPUProfile)
	}
	var out bytes.Buffer
	res.Print(&out)
	for _, want := range []string{"broker alone (pub->sub)", "through the gateway", "ratio gateway / broker alone", "gateway CPU per request", "logreg 300", "in the gateway (its replies)  queue_ms p50",
		"8 to 16 in flight", "* each path's highest throughput"} {
		if !bytes.Contains(out.Bytes(), []byte(want)) {
			t.Errorf("printed result lacks %q:\n%s", want, out.String())
		}
	}

	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"started", "host", "setup", "broker_alone", "gateway", "ratio", "saturation", "cpu_profile", "profiled"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	gw := m["gateway"].(map[string]any)
	for _, k := range []string{"concurrency", "throughput_per_s", "latency", "broker_cpu", "gateway_cpu", "client_cpu", "by_status", "by_model", "mean_batch", "queue_ms", "total_ms"} {
		if _, ok := gw[k]; !ok {
			t.Errorf("JSON gateway lacks %q", k)
		}
	}
	lat := gw["latency"].(map[string]any)
	for _, k := range []string{"p50_ns", "p90_ns", "p99_ns"} {
		if _, ok := lat[k]; !ok {
			t.Errorf("JSON latency lacks %q", k)
		}
	}
	if _, ok := gw["gateway_cpu"].(map[string]any)["per_request_us"]; !ok {
		t.Error("JSON gateway_cpu lacks per_request_us")
	}
	// The work directory holds what was run.
	for _, f := range []string{"gateway/sneakgate.yaml", "gateway/gateway.log", "broker/mosquitto.conf"} {
		if _, err := os.Stat(filepath.Join(c.WorkDir, f)); err != nil {
			t.Error(err)
		}
	}
}

func TestLevels(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want []int
	}{
		{Config{Concurrency: 64}, []int{64}},
		{Config{Concurrency: 64, MaxConcurrency: 512}, []int{64}},
		{Config{Concurrency: 64, Saturate: true, MaxConcurrency: 512}, []int{64, 128, 256, 512}},
		{Config{Concurrency: 64, Saturate: true, MaxConcurrency: 300}, []int{64, 128, 256}},
		{Config{Concurrency: 64, Saturate: true, MaxConcurrency: 64}, []int{64}},
	} {
		if got := tc.c.levels(); !slices.Equal(got, tc.want) {
			t.Errorf("%+v: levels %v, want %v", tc.c, got, tc.want)
		}
	}
	c := Config{GatewayBinary: "x", Concurrency: 64, Saturate: true, MaxConcurrency: 32}
	if err := c.defaults(); !errors.Is(err, ErrConfig) {
		t.Errorf("max concurrency below concurrency: %v, want ErrConfig", err)
	}
	c = Config{GatewayBinary: "x", Saturate: true}
	if err := c.defaults(); err != nil || !slices.Equal(c.levels(), []int{64, 128, 256, 512}) {
		t.Errorf("defaults: %v, levels %v", err, c.levels())
	}
}

func TestParseCorrection(t *testing.T) {
	text := `# HELP sneakgate_latency_correction_ratio How much longer forward passes take now than their start-up profile.
# TYPE sneakgate_latency_correction_ratio gauge
sneakgate_latency_correction_ratio{app="fashion",variant="logreg"} 6.5
sneakgate_latency_correction_ratio{app="fashion",variant="cnn"} 1.25
sneakgate_latency_correction_total 3
`
	got, err := parseVariantSeries(strings.NewReader(text), correctionMetric)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"fashion/logreg": 6.5, "fashion/cnn": 1.25}
	if !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := parseVariantSeries(strings.NewReader(`sneakgate_latency_correction_ratio{app="a",variant="b"} x`+"\n"), correctionMetric); err == nil {
		t.Error("a malformed value was accepted")
	}
}

func TestInferenceRatios(t *testing.T) {
	text := `sneakgate_infer_duration_seconds_bucket{app="fashion",variant="logreg",le="0.001"} 4
sneakgate_infer_duration_seconds_sum{app="fashion",variant="logreg"} 0.5
sneakgate_infer_duration_seconds_sum{app="fashion",variant="cnn"} 2
sneakgate_infer_profiled_seconds_total{app="fashion",variant="logreg"} 0.25
sneakgate_infer_profiled_seconds_total{app="fashion",variant="cnn"} 1.5
`
	var series [2]map[string]float64
	for i, m := range []string{inferMetric, profiledMetric} {
		var err error
		if series[i], err = parseVariantSeries(strings.NewReader(text), m); err != nil {
			t.Fatal(err)
		}
	}
	if want := map[string]float64{"fashion/logreg": 0.5, "fashion/cnn": 2}; !maps.Equal(series[0], want) {
		t.Errorf("%s: %v, want %v", inferMetric, series[0], want)
	}
	if want := map[string]float64{"fashion/logreg": 0.25, "fashion/cnn": 1.5}; !maps.Equal(series[1], want) {
		t.Errorf("%s: %v, want %v", profiledMetric, series[1], want)
	}
	// What the bench reads from /metrics before and after a phase: both
	// series per variant that has the profiled one.
	totals, err := parseInferTotals(text)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]inferTotals{"fashion/logreg": {Infer: 0.5, Profiled: 0.25}, "fashion/cnn": {Infer: 2, Profiled: 1.5}}; !maps.Equal(totals, want) {
		t.Errorf("totals %v, want %v", totals, want)
	}
	if totals, err := parseInferTotals(`sneakgate_infer_duration_seconds_sum{app="fashion",variant="logreg"} 0.5` + "\n"); err != nil || len(totals) != 0 {
		t.Errorf("a gateway without %s: %v, %v", profiledMetric, totals, err)
	}
	before := map[string]inferTotals{"fashion/logreg": {Infer: 0.5, Profiled: 0.25}, "fashion/cnn": {Infer: 2, Profiled: 1.5}}
	after := map[string]inferTotals{"fashion/logreg": {Infer: 0.8, Profiled: 0.35}, "fashion/cnn": {Infer: 2, Profiled: 1.5},
		"fashion/mlp-small": {Infer: 0.3, Profiled: 0.2}}
	// logreg: 0.3 s of passes profiled at 0.1 s; cnn did not run.
	got := inferenceRatios(before, after)
	if len(got) != 2 || math.Abs(got["fashion/logreg"]-3) > 1e-9 || math.Abs(got["fashion/mlp-small"]-1.5) > 1e-9 {
		t.Errorf("ratios %v, want logreg 3, mlp-small 1.5", got)
	}
	if got := inferenceRatios(nil, map[string]inferTotals{}); got != nil {
		t.Errorf("no variant: %v", got)
	}
}

// The passes of a phase: how many, and per pass the wall time, the engine
// thread's CPU time and the profile's time, from the increases of the four
// series; a gateway without the CPU series gives CPU 0.
func TestInferencePasses(t *testing.T) {
	text := `sneakgate_infer_duration_seconds_sum{app="fashion",variant="logreg"} 0.5
sneakgate_infer_duration_seconds_count{app="fashion",variant="logreg"} 1000
sneakgate_infer_profiled_seconds_total{app="fashion",variant="logreg"} 0.25
sneakgate_infer_cpu_seconds_total{app="fashion",variant="logreg"} 0.3
sneakgate_infer_duration_seconds_sum{app="fashion",variant="cnn"} 2
sneakgate_infer_duration_seconds_count{app="fashion",variant="cnn"} 10
sneakgate_infer_profiled_seconds_total{app="fashion",variant="cnn"} 1.5
`
	before, err := parseInferTotals(text)
	if err != nil {
		t.Fatal(err)
	}
	if want := (inferTotals{Infer: 0.5, Profiled: 0.25, CPU: 0.3, Passes: 1000}); before["fashion/logreg"] != want {
		t.Errorf("logreg totals %+v, want %+v", before["fashion/logreg"], want)
	}
	if want := (inferTotals{Infer: 2, Profiled: 1.5, Passes: 10}); before["fashion/cnn"] != want {
		t.Errorf("cnn totals (no CPU series) %+v, want %+v", before["fashion/cnn"], want)
	}
	after := map[string]inferTotals{
		// 500 more passes: 0.1 s of wall time, 0.04 s of CPU, 0.02 s profiled.
		"fashion/logreg": {Infer: 0.6, Profiled: 0.27, CPU: 0.34, Passes: 1500},
		"fashion/cnn":    {Infer: 2, Profiled: 1.5, Passes: 10}, // did not run
	}
	got := inferencePasses(before, after)
	p, ok := got["fashion/logreg"]
	if len(got) != 1 || !ok || p.Passes != 500 || math.Abs(p.WallUS-200) > 1e-6 || math.Abs(p.CPUUS-80) > 1e-6 ||
		math.Abs(p.ProfiledUS-40) > 1e-6 {
		t.Errorf("passes %+v, want logreg only: 500 passes of 200 µs wall, 80 µs CPU, 40 µs profiled", got)
	}
	if got := inferencePasses(before, before); got != nil {
		t.Errorf("no pass in between: %v", got)
	}
	var buf bytes.Buffer
	r := Result{Gateway: Phase{Inference: map[string]float64{"fashion/logreg": 5}, InferencePasses: got}}
	r.Print(&buf)
	if !strings.Contains(buf.String(), "500 passes, each 200 µs: 80 µs CPU (2.00x the profile), 120 µs waiting; the profile 40 µs") {
		t.Errorf("report does not give the passes' split:\n%s", buf.String())
	}
}

// Without -saturate the report says that one concurrency may measure the
// gateway's latency rather than its capacity; with it, it marks each path's
// best level instead.
func TestPrintSaysWhatTheRatioCompares(t *testing.T) {
	one := Result{Setup: Setup{App: "fashion", Concurrency: 64},
		Broker: Phase{Concurrency: 64, Throughput: 100}, Gateway: Phase{Concurrency: 64, Throughput: 30}, Ratio: 0.3}
	var out bytes.Buffer
	one.Print(&out)
	if !strings.Contains(out.String(), "-saturate compares each at its capacity") || strings.Contains(out.String(), "* each path's highest") {
		t.Errorf("one concurrency:\n%s", out.String())
	}
	sat := one
	sat.Setup.MaxConcurrency = 128
	sat.Saturation = &Saturation{Broker: []Phase{one.Broker, {Concurrency: 128, Throughput: 90}},
		Gateway: []Phase{one.Gateway, {Concurrency: 128, Throughput: 40}}}
	sat.Gateway = sat.Saturation.Gateway[1]
	out.Reset()
	sat.Print(&out)
	if strings.Contains(out.String(), "-saturate compares") || strings.Count(out.String(), "*\n") != 2 || !strings.Contains(out.String(), "64 to 128 in flight") {
		t.Errorf("saturated:\n%s", out.String())
	}
}
