package devices

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/protocol"
)

// testApp writes a sample file of 3 classes: input[0] is the true label, input[1]
// is 0 for "easy" samples (the fake model is right) and 1 for "hard" ones (wrong).
func testApp(t *testing.T) *manifest.App {
	t.Helper()
	dir := t.TempDir()
	set := &dataset.Set{D: 4}
	for y := range 3 {
		for i := range 10 {
			set.Values = append(set.Values, float32(y), float32(i%2), 0.5, 0.25)
			set.Labels = append(set.Labels, int32(y))
			set.N++
		}
	}
	if err := dataset.Write(filepath.Join(dir, "samples.bin"), set, false); err != nil {
		t.Fatal(err)
	}
	return &manifest.App{
		Name: "toy", InputSize: 4, Labels: []string{"a", "b", "c"}, DefaultDeadlineMS: 500, Dir: dir,
		Utility: [][]float64{{1, 0, 0}, {0, 0.5, 0}, {0, 0, 1}},
		Samples: &manifest.Samples{File: "samples.bin", Count: set.N},
		Workloads: []manifest.Workload{
			{Name: "only-b", Mix: []float64{0, 1, 0}},
			{Name: "drift", Mix: []float64{1, 0, 0}, MixEnd: []float64{0, 0, 1}},
		},
	}
}

var toyApps = map[string]protocol.AppSpec{"toy": {InputSize: 4, DefaultDeadline: 500 * time.Millisecond}}

// fakeModel is right on easy samples and wrong on hard ones.
func fakeModel(in []float32) int {
	if in[1] == 0 {
		return int(in[0])
	}
	return (int(in[0]) + 1) % 3
}

func TestSimulate(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	var correct atomic.Int64
	resp := startResponder(t, url, toyApps, func(in []float32) int {
		c := fakeModel(in)
		if c == int(in[0]) {
			correct.Add(1)
		}
		return c
	})

	// The fake gateway expires every 5th request and drops every 7th; it tallies
	// what the report must say.
	var mu sync.Mutex
	n := 0
	tally := map[protocol.Status]int{}
	dropped := 0
	statusOf := map[string]protocol.Status{}
	resp.drop = func(id string) bool {
		mu.Lock()
		defer mu.Unlock()
		n++
		if n%7 == 0 {
			dropped++
			return true
		}
		st := protocol.StatusOK
		if n%5 == 0 {
			st = protocol.StatusExpired
		}
		statusOf[id] = st
		tally[st]++
		return false
	}
	resp.status = func(id string) protocol.Status {
		mu.Lock()
		defer mu.Unlock()
		return statusOf[id]
	}

	var out, trace bytes.Buffer
	rep, err := Simulate(context.Background(), SimConfig{
		Broker: url, AppManifest: testApp(t), Devices: 3, Rate: 400, Arrivals: "uniform",
		Count: 140, Deadline: 300 * time.Millisecond, Drain: time.Second, Seed: 7,
		Out: &out, Progress: &out, Trace: &trace,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", out.String())
	mu.Lock()
	defer mu.Unlock()
	if rep.Sent != 140 || rep.PublishErrors != 0 {
		t.Fatalf("sent %d, publish errors %d", rep.Sent, rep.PublishErrors)
	}
	if rep.Unanswered != dropped || rep.Replies != 140-dropped {
		t.Errorf("unanswered %d replies %d, want %d and %d", rep.Unanswered, rep.Replies, dropped, 140-dropped)
	}
	for _, st := range []protocol.Status{protocol.StatusOK, protocol.StatusExpired} {
		if rep.ByStatus[st] != tally[st] {
			t.Errorf("status %s: %d, want %d", st, rep.ByStatus[st], tally[st])
		}
	}
	if rep.Answered != tally[protocol.StatusOK] || rep.ByModel["fake"] != rep.Answered {
		t.Errorf("answered %d, by model %v, want %d", rep.Answered, rep.ByModel, tally[protocol.StatusOK])
	}
	// Accuracy: the fake gateway knows the true label (input[0]) and counted its
	// right answers.
	if rep.Correct != int(correct.Load()) || rep.Correct == 0 || rep.Correct == rep.Answered {
		t.Errorf("correct %d of %d, fake gateway answered %d right", rep.Correct, rep.Answered, correct.Load())
	}
	if got, want := rep.AccuracyAnswered, float64(rep.Correct)/float64(rep.Answered); got != want {
		t.Errorf("accuracy of answered %v, want %v", got, want)
	}
	if got, want := rep.AccuracyAll, float64(rep.Correct)/140; got != want {
		t.Errorf("accuracy of all %v, want %v", got, want)
	}
	// Every reply the fake gateway sends within 300 ms says deadline_met; expired
	// ones say so too (they were published in time), so deadline_met counts all.
	if rep.DeadlineMet != rep.Replies || rep.Goodput != float64(rep.Correct)/140 {
		t.Errorf("deadline met %d of %d replies, goodput %v", rep.DeadlineMet, rep.Replies, rep.Goodput)
	}
	if rep.Latency.N != rep.Replies || rep.Latency.P50 <= 0 || rep.Latency.P50 > rep.Latency.P99 || rep.Latency.P99 > rep.Latency.Max {
		t.Errorf("latency %+v", rep.Latency)
	}
	if rep.GatewayTotal.N != rep.Replies {
		t.Errorf("gateway total %+v", rep.GatewayTotal)
	}
	for _, want := range []string{"sent          140", "accuracy", "deadline met", "round trip", "models        fake"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if rep.BudgetMin != 300*time.Millisecond || rep.BudgetMax != 300*time.Millisecond {
		t.Errorf("replies judged against %v to %v, want -deadline's 300ms", rep.BudgetMin, rep.BudgetMax)
	}
	checkTrace(t, &trace, rep, statusOf)
}

// checkTrace checks a run's trace against its report and the fake gateway's
// statuses by id: one line per request sent, numbered 0..Sent-1, in send
// order for the sent times; the unanswered and unusable ones last, without a
// status (the unusable ones with the reply's rtt and why it was unusable); the
// statuses as sent (all ok when statusOf is nil); the utilities adding up to
// the report's; every reply's budget_ms within the report's budgets, and the
// answers within their budget_ms counting the report's device deadline met.
func checkTrace(t *testing.T, trace *bytes.Buffer, rep Report, statusOf map[string]protocol.Status) {
	t.Helper()
	var recs []TraceRecord
	dec := json.NewDecoder(trace)
	for dec.More() {
		var r TraceRecord
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if len(recs) != rep.Sent {
		t.Fatalf("%d trace lines for %d requests sent", len(recs), rep.Sent)
	}
	seen := map[int]TraceRecord{}
	var utility float64
	unanswered, unusable, deviceMet := 0, 0, 0
	var budgetMin, budgetMax float64
	for i, r := range recs {
		seen[r.Seq] = r
		utility += r.Utility
		if !strings.HasSuffix(r.ID, fmt.Sprintf("-%d", r.Seq)) || !strings.HasPrefix(r.Device, "sim-") {
			t.Errorf("line %d: id %q, seq %d, device %q", i, r.ID, r.Seq, r.Device)
		}
		if r.Status == "" {
			last := rep.Unanswered + rep.Unusable
			if r.Unusable != "" {
				unusable++
				if r.RTTMS == nil || *r.RTTMS <= 0 || i < len(recs)-last {
					t.Errorf("line %d: unusable (%s) %q with rtt %v, not among the last %d", i, r.Unusable, r.ID, r.RTTMS, last)
				}
			} else if unanswered++; r.RTTMS != nil || i < len(recs)-last {
				t.Errorf("line %d: unanswered %q with rtt %v, not among the last %d", i, r.ID, r.RTTMS, last)
			}
			continue
		}
		want := protocol.StatusOK
		if statusOf != nil {
			want = statusOf[r.ID]
		}
		if r.BudgetMS == nil {
			t.Errorf("line %d: %q answered %q without budget_ms", i, r.ID, r.Status)
		} else {
			if budgetMin == 0 || *r.BudgetMS < budgetMin {
				budgetMin = *r.BudgetMS
			}
			budgetMax = max(budgetMax, *r.BudgetMS)
			if r.Status.Answered() && r.Class != nil && r.RTTMS != nil && *r.RTTMS <= *r.BudgetMS {
				deviceMet++
			}
		}
		if r.Status != want || r.RTTMS == nil || *r.RTTMS <= 0 || r.TotalMS == nil {
			t.Errorf("line %d: %q status %q rtt %v total %v, the fake gateway sent %q", i, r.ID, r.Status, r.RTTMS, r.TotalMS, want)
		}
		if r.Status == protocol.StatusOK && (r.Model != "fake" || r.Batch != 1 || r.Class == nil) {
			t.Errorf("line %d: %q answered by %q in a batch of %d, class %v; the fake gateway answers alone, as \"fake\"", i, r.ID, r.Model, r.Batch, r.Class)
		}
	}
	if len(seen) != rep.Sent || unanswered != rep.Unanswered || unusable != rep.Unusable {
		t.Errorf("%d distinct seqs, %d unanswered, %d unusable; want %d, %d and %d", len(seen), unanswered, unusable, rep.Sent, rep.Unanswered, rep.Unusable)
	}
	for n := 1; n < rep.Sent; n++ {
		if seen[n].SentMS < seen[n-1].SentMS {
			t.Errorf("request %d sent at %.3f ms, before request %d at %.3f", n, seen[n].SentMS, n-1, seen[n-1].SentMS)
		}
	}
	if deviceMet != rep.DeviceDeadlineMet {
		t.Errorf("%d answers in the trace within their budget_ms, report's device deadline met %d", deviceMet, rep.DeviceDeadlineMet)
	}
	if ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }; budgetMin != ms(rep.BudgetMin) || budgetMax != ms(rep.BudgetMax) {
		t.Errorf("trace budgets %v to %v ms, report %v to %v", budgetMin, budgetMax, rep.BudgetMin, rep.BudgetMax)
	}
	if math.Abs(utility/float64(rep.Sent)-rep.Utility) > 1e-9 {
		t.Errorf("trace utilities average %v, report %v", utility/float64(rep.Sent), rep.Utility)
	}
}

func TestSimulateAccuracyExact(t *testing.T) {
	// With only easy samples of class b, accuracy must be exactly 1; with every
	// request answered and the drain short, the run is fast.
	url := "tcp://" + mqtttest.StartMosquitto(t)
	startResponder(t, url, toyApps, func(in []float32) int { return int(in[0]) })
	app := testApp(t)
	rep, err := Simulate(context.Background(), SimConfig{
		Broker: url, AppManifest: app, Devices: 2, Rate: 500, Count: 60, Workload: "only-b", B64: true, Quiet: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Replies != 60 || rep.Correct != 60 || rep.AccuracyAll != 1 || rep.ByStatus[protocol.StatusOK] != 60 {
		t.Fatalf("report %+v", rep)
	}
	// Every answer is b, right and on time: W[b][b] = 0.5 each.
	if math.Abs(rep.Utility-0.5) > 1e-9 {
		t.Errorf("utility %v, want 0.5", rep.Utility)
	}
}

func TestSimulateConfigErrors(t *testing.T) {
	app := testApp(t)
	for _, c := range []SimConfig{
		{AppManifest: app}, // no rate
		{AppManifest: app, Rate: 1, Arrivals: "bursty"},
		{AppManifest: app, Rate: 1, Devices: -1},
		{AppManifest: app, Rate: 1, DevicePrefix: "bad name"},
		{Rate: 1}, // no app
		{AppManifest: app, Rate: 1, Workload: "nope"},
	} {
		c.Broker, c.Quiet = "tcp://127.0.0.1:1", true
		if _, err := Simulate(context.Background(), c); !errors.Is(err, ErrSimConfig) {
			t.Errorf("Simulate(%+v) = %v, want ErrSimConfig", c, err)
		}
	}
}

func TestSampler(t *testing.T) {
	set := &dataset.Set{N: 4, D: 1, Values: []float32{0, 1, 2, 2}, Labels: []int32{0, 1, 2, 2}}
	s, err := newSampler(set, "s.sgs", 3, &manifest.Workload{Name: "drift", Mix: []float64{1, 0, 0}, MixEnd: []float64{0, 0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	count := func(progress float64) [3]int {
		var c [3]int
		for range 10000 {
			i, y := s.draw(rng, progress)
			if int(set.Labels[i]) != y {
				t.Fatalf("sample %d has label %d, drew %d", i, set.Labels[i], y)
			}
			c[y]++
		}
		return c
	}
	if c := count(0); c[0] != 10000 {
		t.Errorf("start of drift: %v", c)
	}
	if c := count(1); c[2] != 10000 {
		t.Errorf("end of drift: %v", c)
	}
	if c := count(0.5); c[1] != 0 || c[0] < 4700 || c[0] > 5300 {
		t.Errorf("middle of drift: %v", c)
	}
	if _, err := newSampler(set, "s.sgs", 3, &manifest.Workload{Name: "x", Mix: []float64{0, 0.5, 0.5}}); err != nil {
		t.Error(err)
	}
	missing := &dataset.Set{N: 1, D: 1, Values: []float32{0}, Labels: []int32{0}}
	if _, err := newSampler(missing, "s.sgs", 3, &manifest.Workload{Name: "x", Mix: []float64{0.5, 0.5, 0}}); err == nil {
		t.Error("a mix that needs a class without samples must fail")
	}
	if _, err := newSampler(&dataset.Set{N: 1, D: 1, Values: []float32{0}, Labels: []int32{5}}, "s.sgs", 3, nil); err == nil {
		t.Error("a label beyond the classes must fail")
	}
}

// TestSampleFileErrorsNameTheFile: an application's sample file that does not
// fit it (wrong row width, a label beyond its classes, no rows, no row of a
// class a workload draws) was reported without naming the file ("sample file
// has 3 values per sample, application toy wants 4"; "devices: sample 0 has
// label 5, but the application has 3 classes").
func TestSampleFileErrorsNameTheFile(t *testing.T) {
	for _, c := range []struct {
		name     string
		set      *dataset.Set
		workload string
		msg      string
	}{
		{"width", &dataset.Set{N: 1, D: 3, Values: []float32{0, 0, 0}, Labels: []int32{0}}, "", "3 values per sample, application toy wants 4"},
		{"label", &dataset.Set{N: 1, D: 4, Values: []float32{0, 0, 0, 0}, Labels: []int32{5}}, "", "sample 0 has label 5, but the application has 3 classes"},
		{"empty", &dataset.Set{N: 0, D: 4}, "", "no samples"},
		{"class", &dataset.Set{N: 1, D: 4, Values: []float32{0, 0, 0, 0}, Labels: []int32{0}}, "only-b", "no sample of it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			app := testApp(t)
			path := app.Path(app.Samples.File)
			if err := dataset.Write(path, c.set, false); err != nil {
				t.Fatal(err)
			}
			_, _, err := (&SimConfig{AppManifest: app, Workload: c.workload}).loadApp()
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %v: want one naming %s and saying %q", err, path, c.msg)
			}
			if c.name == "width" && !errors.Is(err, ErrSimConfig) {
				t.Errorf("error %v: want ErrSimConfig", err)
			}
		})
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	rand.Shuffle(len(d), func(i, j int) { d[i], d[j] = d[j], d[i] })
	p := LatencyPercentiles(d)
	if p.P50 != 50*time.Millisecond || p.P90 != 90*time.Millisecond || p.P99 != 99*time.Millisecond || p.Max != 100*time.Millisecond || p.N != 100 {
		t.Errorf("%+v", p)
	}
	if p := LatencyPercentiles(nil); p.N != 0 {
		t.Errorf("%+v", p)
	}
	// Nearest rank on a few values: the p-th percentile is the ceil(p*n)-th smallest.
	p = LatencyPercentiles([]time.Duration{3, 1, 2})
	if p.P50 != 2 || p.P90 != 3 || p.P99 != 3 || p.Max != 3 || p.N != 3 {
		t.Errorf("3 values: %+v", p)
	}
	p = LatencyPercentiles([]time.Duration{7})
	if p.P50 != 7 || p.P99 != 7 || p.Max != 7 {
		t.Errorf("1 value: %+v", p)
	}
}

// TestSimulateU8 sends the samples as input_u8_b64 to a fake gateway that
// decodes them with the application's range: every answer is right, so the
// values arrived exact; an app without an input_range is a config error.
func TestSimulateU8(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	rng := [2]float64{0, 255}
	apps := map[string]protocol.AppSpec{"toy": {InputSize: 4, DefaultDeadline: 500 * time.Millisecond, Range: &rng}}
	startResponder(t, url, apps, func(in []float32) int { return int(in[0]) })
	app := testApp(t)
	if _, err := Simulate(context.Background(), SimConfig{Broker: url, AppManifest: app, Count: 1, U8: true, Quiet: true}); !errors.Is(err, ErrSimConfig) {
		t.Fatalf("no input_range: %v, want ErrSimConfig", err)
	}
	app.InputRange = &rng
	rep, err := Simulate(context.Background(), SimConfig{
		Broker: url, AppManifest: app, Devices: 2, Rate: 500, Count: 30, U8: true, Quiet: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Replies != 30 || rep.Correct != 30 || rep.ByStatus[protocol.StatusOK] != 30 {
		t.Fatalf("report %+v", rep)
	}
}

func TestSimFlags(t *testing.T) {
	fs := flag.NewFlagSet("devsim", flag.ContinueOnError)
	cfg := SimFlags(fs)
	if err := fs.Parse([]string{"-rate", "20", "-devices", "8", "-deadline", "50ms", "-count", "100", "-workload", "drift", "-b64", "-u8", "-arrivals", "uniform"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Rate != 20 || cfg.Devices != 8 || cfg.Deadline != 50*time.Millisecond || cfg.Count != 100 ||
		cfg.Workload != "drift" || !cfg.B64 || !cfg.U8 || cfg.Arrivals != "uniform" || cfg.App != "fashion" || cfg.Broker != "tcp://127.0.0.1:1883" {
		t.Errorf("%+v", cfg)
	}
}

func TestSimulateDurationPoissonAndCancel(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	// The second run lasts an hour unless cancelled: the fake gateway cancels it
	// once it has answered five of that run's requests, so that the run is
	// under way when it ends however long the dial took. (A 300 ms timeout set
	// before Simulate counted the dial too; a machine slow enough to take that
	// long to connect left the run nothing sent.)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var answered, cancelAt atomic.Int64
	startResponder(t, url, toyApps, func(in []float32) int {
		if answered.Add(1) == cancelAt.Load() {
			cancel()
		}
		return fakeModel(in)
	})
	rep, err := Simulate(context.Background(), SimConfig{
		Broker: url, AppManifest: testApp(t), Devices: 2, Rate: 200, Duration: 500 * time.Millisecond, Quiet: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Poisson with mean 100 requests: far outside [50, 150] would be a bug.
	if rep.Sent < 50 || rep.Sent > 150 || rep.Replies != rep.Sent || rep.Arrivals != "poisson" {
		t.Errorf("sent %d, replies %d, arrivals %s", rep.Sent, rep.Replies, rep.Arrivals)
	}

	cancelAt.Store(answered.Load() + 5)
	rep, err = Simulate(ctx, SimConfig{
		Broker: url, AppManifest: testApp(t), Devices: 1, Rate: 100, Duration: time.Hour, Quiet: true,
	})
	// Stopped by the cancel, and paced until then: a Poisson process at 100/s
	// plans far fewer than 2*100*Sending+10 arrivals in Sending (the time from
	// the run's start to its last send), which lasts as long as the machine
	// takes to get five answers back.
	if paced := int(2*100*rep.Sending.Seconds()) + 10; !errors.Is(err, context.Canceled) || rep.Sent < 5 || rep.Sent > paced {
		t.Errorf("cancelled run: sent %d (at most %d in %v), err %v", rep.Sent, paced, rep.Sending, err)
	}
}

// TestSimulateRealManifest replays the committed Fashion-MNIST samples (manifest,
// sample file, drifting workload) through a fake gateway that always answers class 0.
func TestSimulateRealManifest(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	startResponder(t, url, map[string]protocol.AppSpec{"fashion": {InputSize: 784, DefaultDeadline: time.Second}},
		func([]float32) int { return 0 })
	rep, err := Simulate(context.Background(), SimConfig{
		Broker: url, Models: "../models", App: "fashion", Workload: "drift", Devices: 2, Rate: 1000, Count: 200, Quiet: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Replies != 200 || rep.Answered != 200 || rep.Correct == 200 {
		t.Errorf("report %+v", rep)
	}
}

// A late answer decays toward the value of no answer, not toward 0.
func TestAnswerUtilityDecaysToNoAnswer(t *testing.T) {
	s := &sim{w: [][]float64{{1, -0.1}, {-1, 1}},
		na: func(y int) float64 { return []float64{0, -1}[y] }}
	budget := 100 * time.Millisecond
	onTime, late, hard := 50.0, 150.0, 250.0
	if u := s.answerUtility(1, 1, &onTime, budget); u != 1 {
		t.Fatalf("on time: %v, want 1", u)
	}
	if u := s.answerUtility(1, 1, &late, budget); !(u > -1 && u < 1) {
		t.Fatalf("half a budget late: %v, want between the no-answer value -1 and 1", u)
	}
	if u := s.answerUtility(1, 1, &hard, budget); u != -1 {
		t.Fatalf("past the hard stop: %v, want the no-answer value -1", u)
	}
	if u := s.answerUtility(0, 1, &hard, budget); u != -0.1 {
		t.Fatalf("a wrong answer worth less than no answer is not discounted up: %v", u)
	}
}

// A reply the client cannot parse (here a status this build does not know)
// still came back: the report counts its request unusable, not unanswered,
// and the message malformed, and the drain stops waiting for it. (Every
// request was reported unanswered, the malformed replies nowhere, and the run
// waited out the whole drain time.)
func TestSimulateMalformedRepliesAreNotUnanswered(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	resp := startResponder(t, url, toyApps, fakeModel)
	resp.status = func(id string) protocol.Status {
		if strings.HasSuffix(id, "-3") || strings.HasSuffix(id, "-11") {
			return protocol.Status("shed")
		}
		return protocol.StatusOK
	}
	const drain = time.Minute
	var out, trace bytes.Buffer
	rep, err := Simulate(context.Background(), SimConfig{Broker: url, AppManifest: testApp(t), Devices: 2,
		Rate: 1000, Arrivals: "uniform", Count: 20, Drain: drain, Out: &out, Trace: &trace})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", out.String())
	if rep.Sent != 20 || rep.Replies != 18 || rep.Unusable != 2 || rep.Unanswered != 0 {
		t.Errorf("sent %d: replies %d, unusable %d, unanswered %d; want 20: 18, 2 and 0",
			rep.Sent, rep.Replies, rep.Unusable, rep.Unanswered)
	}
	if rep.Malformed != 2 || rep.Dropped != 0 || rep.Unmatched != 0 {
		t.Errorf("malformed %d, dropped %d, unmatched %d; want 2, 0 and 0", rep.Malformed, rep.Dropped, rep.Unmatched)
	}
	// Unusable replies count as no answer, as an unanswered request does.
	if rep.AccuracyAll != float64(rep.Correct)/20 || rep.Answered != 18 {
		t.Errorf("answered %d, accuracy of all %v, want 18 and %v", rep.Answered, rep.AccuracyAll, float64(rep.Correct)/20)
	}
	if want := "replies       18, unusable 2, unanswered 0, duplicate replies 0; malformed 2, dropped 0\n"; !strings.Contains(out.String(), want) {
		t.Errorf("report lacks %q", want)
	}
	var js map[string]any
	if b, err := json.Marshal(rep); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &js); err != nil {
		t.Fatal(err)
	}
	if js["unusable"] != 2.0 || js["malformed"] != 2.0 || js["dropped"] != 0.0 || js["unanswered"] != 0.0 {
		t.Errorf("JSON report: unusable %v, malformed %v, dropped %v, unanswered %v", js["unusable"], js["malformed"], js["dropped"], js["unanswered"])
	}
	// Something came back for every request: the drain ended then.
	if rep.Elapsed >= drain {
		t.Errorf("ran %v, the whole drain time: it waited on for the malformed replies' requests", rep.Elapsed)
	}
	if want := `"unusable":"bad reply: status \"shed\""`; strings.Count(trace.String(), want) != 2 {
		t.Errorf("trace has %d lines with %s, want 2:\n%s", strings.Count(trace.String(), want), want, trace.String())
	}
	checkTrace(t, &trace, rep, nil)
}

// A reply the client dropped (its Replies buffer full) stops the drain's wait
// for its request, which stays pending: a usable copy that comes later is
// still recorded as the answer; a dropped copy after an answer changes nothing.
func TestSimDroppedReplyEndsTheWait(t *testing.T) {
	s := &sim{pending: map[string]outstanding{}, done: map[string]bool{}, idle: make(chan struct{}, 1),
		w: [][]float64{{1, 0}, {0, 1}}, na: func(int) float64 { return 0 }, budget: time.Second,
		rep: Report{ByStatus: map[protocol.Status]int{}, ByReason: map[protocol.Reason]int{}, ByModel: map[string]int{}}}
	sent := time.Now()
	for _, id := range []string{"a", "b"} {
		s.pending[id] = outstanding{label: 1, sent: sent}
		s.silent++
	}
	s.undelivered(Undelivered{ID: "a", At: sent.Add(time.Millisecond), Err: ErrDropped})
	s.undelivered(Undelivered{ID: "a", At: sent.Add(2 * time.Millisecond), Err: ErrDropped}) // a second copy
	s.undelivered(Undelivered{ID: "other", Err: ErrDropped})                                 // not this run's
	if o := s.pending["a"]; s.silent != 1 || o.unusable != "dropped" || o.came != sent.Add(time.Millisecond) {
		t.Fatalf("after a's reply was dropped: %d silent, a %+v; want 1, dropped at 1ms", s.silent, o)
	}
	select {
	case <-s.idle:
		t.Fatal("idle while b waits")
	default:
	}
	s.record(Received{Reply: &protocol.Reply{ID: "b", Status: protocol.StatusOK, Class: protocol.Ptr(1)}, At: sent.Add(time.Millisecond)})
	select {
	case <-s.idle:
	default:
		t.Fatal("not idle with a reply come for every request")
	}
	s.record(Received{Reply: &protocol.Reply{ID: "a", Status: protocol.StatusOK, Class: protocol.Ptr(1)}, At: sent.Add(3 * time.Millisecond)})
	s.undelivered(Undelivered{ID: "a", Err: ErrDropped})
	if s.silent != 0 || len(s.pending) != 0 || s.rep.Replies != 2 || s.rep.Answered != 2 {
		t.Errorf("%d silent, %d pending, %d replies, %d answered; want 0, 0, 2 and 2", s.silent, len(s.pending), s.rep.Replies, s.rep.Answered)
	}
}
