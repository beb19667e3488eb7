package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

// The loop runs the cascade's second passes: a first-pass answer below the
// threshold goes back to the queue; with time left it is run again on the better
// variant, and without it the first answer is the reply.
func TestLoopRunsCascadeSecondPasses(t *testing.T) {
	for _, c := range []struct {
		name   string
		budget time.Duration
		want   string // the variant that answers
	}{
		{"time for a second pass", time.Second, "better"},
		{"no time for a second pass", 8 * time.Millisecond, "cheap"},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				// The fake answers class 1 with probability 0.9: under the threshold.
				l, ans, f := cascadeLoop(t)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go l.Run(ctx)
				submit(t, l, "x", c.budget, []float64{0.1, 0.9})
				time.Sleep(2 * time.Second)
				synctest.Wait()
				r, ok := ans.get("x")
				if !ok || r.Status != protocol.StatusOK || r.Variant != c.want {
					t.Fatalf("answered %v: %+v, want ok by %s", ok, r, c.want)
				}
				f.mu.Lock()
				defer f.mu.Unlock()
				if c.want == "better" && len(f.runs) != 2 {
					t.Fatalf("%d forward passes, want 2 (first and second pass)", len(f.runs))
				}
				if l.Queued() != 0 {
					t.Fatalf("queued %d after the answer", l.Queued())
				}
			})
		})
	}
}

// scheduler.policy: cascade end to end: the gateway measures the curve on the
// validation split, serves on the first and the better variants (satellite's
// first named by scheduler.cascade_first, fashion's the cheapest), and measures
// a reloaded application's curve too.
func TestCascadePolicyEndToEnd(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	const sat = "../models/satellite/manifest.yaml"
	cfg.Scheduler.Policy = PolicyCascade
	cfg.Scheduler.CascadeFirst = map[string]string{"satellite": "mlp-small"}
	cfg.Apps = []AppConfig{{Manifest: sat}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r := startGateway(t, cfg, Options{})
	next := *cfg
	next.Apps = []AppConfig{{Manifest: sat}, {Manifest: fashionManifest}}
	if res, err := r.g.Reload(context.Background(), &next); err != nil || len(res.Added) != 1 {
		t.Fatalf("reload: %+v, %v", res, err)
	}
	// The pairs, checked on the tables as measured, before any request has run
	// (serving rewrites every table with the loop's own time: gateway/latency.go).
	pairs := map[string][2]int{}
	for _, app := range []string{"satellite", "fashion"} {
		m, _ := appSamples(t, "../models/"+app+"/manifest.yaml")
		rt, _ := r.g.app(app)
		cheap, better, err := scheduler.CascadePair(rt.sched, cfg.SchedulerOptions())
		if err != nil {
			t.Fatal(err)
		}
		switch app {
		case "satellite": // named by scheduler.cascade_first
			if m.Variants[cheap].Name != "mlp-small" {
				t.Fatalf("satellite: cascade runs %s first, want mlp-small (cascade_first)", m.Variants[cheap].Name)
			}
		default:
			// The cheapest by the profile the gateway measured at start-up: on a
			// loaded machine logreg and mlp-small (a few µs a request each) can
			// rank either way, so the test checks the rule, not a name.
			o := cfg.SchedulerOptions()
			first := scheduler.Amortised(rt.sched.Variants[cheap], o.MaxBatch)
			for _, v := range rt.sched.Variants {
				if a := scheduler.Amortised(v, o.MaxBatch); a < first {
					t.Fatalf("%s: cascade runs %s first (%v a request), but %s is cheaper (%v)", app, m.Variants[cheap].Name, first, v.ID.Variant, a)
				}
			}
		}
		if rt.cascade == nil || rt.cascade.Cheap != cheap || rt.cascade.Better != better {
			t.Fatalf("%s: the measured cascade is %+v, want first %d better %d", app, rt.cascade, cheap, better)
		}
		pairs[app] = [2]int{cheap, better}
	}
	dev := newDevice(t, b.URL(), "sensor-1")
	for _, app := range []string{"satellite", "fashion"} {
		m, rows := appSamples(t, "../models/"+app+"/manifest.yaml")
		cheap, better := pairs[app][0], pairs[app][1]
		allowed := map[string]bool{m.Variants[cheap].Name: true, m.Variants[better].Name: true}
		var appIDs []string
		for i := range 150 {
			id := fmt.Sprintf("%s-%d", app, i)
			dev.request(app, "sensor-1", id, rows.Row(i), 10000)
			appIDs = append(appIDs, id)
		}
		used := map[string]int{}
		for id, rep := range dev.await(appIDs, 60*time.Second) {
			if rep.Status != protocol.StatusOK || !allowed[rep.Model] {
				t.Errorf("%s: %s by %q, want ok by one of %v", id, rep.Status, rep.Model, allowed)
			}
			used[rep.Model]++
		}
		t.Logf("%s: answers by variant %v", app, used)
	}
}

// scheduler.peek end to end: with sneakpeek and fashion peeked on the cnn, the
// gateway measures the peek's curve on the validation split (the cnn first,
// the most accurate variant second), serves real requests, and sends the cnn's
// unsure answers back for a second opinion (counted). A peek with another
// policy, or naming a variant the application lacks, is a configuration error.
//
// The search puts a request on the cnn only when engine time has a price (with
// time free it runs on the better variant: a tie never goes to the peek), and
// the price is set by the arrival rate against the profiled latencies. With
// measured profiles, the cnn's share therefore rode on how fast the test's
// device could publish against how fast the engine looked at start-up: 92-268
// of 2,000 answers on a quiet or busy box, and none (the test failed) with
// other packages' tests running beside it (2026-12-03). Pinning resnet-m's
// table alone (twenty times its measured one) still left the rest measured:
// the cnn's share was 2-50 of 1,000 on this box on 2026-12-04 and the test
// failed 3 runs of 7, since the cheaper variants' measured tables moved by
// 2.5x between starts and took the cnn's place. Pinning every table with the
// resnets at 20-40 ms + 10-40 ms a sample still failed in make test (the race
// detector and other packages beside it: cnn 2, lenet 225, mlp-large 285,
// resnet-s 487): the publishing rate, and with it the price of engine time,
// then moved from below the resnets' pace, where resnet-s wins, to far above
// it, where the cnn's expected second passes on resnet-s cost more than lenet
// or mlp-large alone. So the test pins every table in the profile cache,
// measured once, so that the cnn wins at every price above the resnets' pace:
// the cnn at 0.5 ms + 0.1 ms a sample (about its own), the four cheaper
// variants at 1 s + 100 ms a sample (never worth their time), resnet-s at 100
// ms + 50 ms and resnet-m at 200 ms + 200 ms a sample (any publishing rate
// above 20 a second prices engine time); it serves with the latency correction
// off, so that the plans keep the pinned tables whatever the engine's passes
// take. It sends 1,000 of fashion's samples: with the race detector, 849-969
// ran on the cnn and 32-52 came back in ten runs, four and six side by side
// (2026-12-04). The deadline is 2 minutes, far beyond what the pinned tables
// need for them, so none is shed.
func TestPeekEndToEnd(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.Scheduler.Policy = "sneakpeek"
	cfg.Scheduler.Peek = map[string]string{"fashion": "cnn"}
	// Every request must get a model answer (a few would otherwise be answered
	// from the estimate: scheduler.estimate_answers).
	cfg.Scheduler.EstimateAnswers = false
	cfg.Scheduler.LatencyCorrection = false
	cfg.Apps = []AppConfig{{Manifest: fashionManifest}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := *cfg
	bad.Scheduler.Policy = "edf"
	if err := bad.Validate(); err == nil {
		t.Error("scheduler.peek accepted with the edf policy")
	}
	first := startGateway(t, cfg, Options{}) // measures and caches the profiles
	heavy := func(r *running) *scheduler.Variant {
		v := r.g.appSet()["fashion"].sched.Variants
		if len(v) == 0 || v[len(v)-1].ID.Variant != "resnet-m" {
			t.Fatalf("fashion's last variant is not resnet-m: %v", v)
		}
		return v[len(v)-1]
	}
	first.stop(t)
	ms := time.Millisecond
	for v, c := range map[string][2]time.Duration{
		"logreg": {time.Second, 100 * ms}, "mlp-small": {time.Second, 100 * ms}, "mlp-large": {time.Second, 100 * ms}, "lenet": {time.Second, 100 * ms},
		"cnn":      {ms / 2, ms / 10},
		"resnet-s": {100 * ms, 50 * ms},
		"resnet-m": {200 * ms, 200 * ms},
	} {
		pinCachedProfile(t, cfg.Engine.ProfileCache, "fashion", v, c[0], c[1])
	}
	r := startGateway(t, cfg, Options{})
	mb := cfg.Scheduler.MaxBatch
	if got, want := heavy(r).Latency[mb], 200*ms+time.Duration(mb)*200*ms; got != want {
		t.Fatalf("resnet-m at batch %d: %v after the cache was pinned, want %v", mb, got, want)
	}
	rt, _ := r.g.app("fashion")
	m, rows := appSamples(t, fashionManifest)
	peek, better, err := scheduler.PeekPair(rt.sched, cfg.SchedulerOptions())
	if err != nil {
		t.Fatal(err)
	}
	if m.Variants[peek].Name != "cnn" || rt.peek == nil || rt.peek.Cheap != peek || rt.peek.Better != better || len(rt.peek.Curve) < 2 {
		t.Fatalf("peek %+v, want the cnn (%d) first and %d second, with a curve", rt.peek, peek, better)
	}
	dev := newDevice(t, b.URL(), "sensor-1")
	var ids []string
	for i := range min(rows.N, 1000) {
		id := fmt.Sprintf("f-%d", i)
		dev.request("fashion", "sensor-1", id, rows.Row(i), 120000)
		ids = append(ids, id)
	}
	used := map[string]int{}
	for id, rep := range dev.await(ids, 180*time.Second) {
		if rep.Status != protocol.StatusOK {
			t.Errorf("%s: %s (%s), want ok", id, rep.Status, rep.Reason)
		}
		used[rep.Model]++
	}
	n := testutil.ToFloat64(r.g.m.requeued.WithLabelValues("fashion"))
	t.Logf("answers by variant %v; %v first passes sent back", used, n)
	if n == 0 || used["cnn"] == 0 {
		t.Errorf("%v cnn answers, %v first passes sent back: want the cnn to peek", used["cnn"], n)
	}

	unknown := *cfg
	unknown.Scheduler.Peek = map[string]string{"fashion": "no-such-variant"}
	if _, err := New(context.Background(), Options{Config: &unknown}); err == nil {
		t.Error("a peek naming no variant of the application started")
	}
}

// pinCachedProfile sets every latency of app's variant's profile in the
// profile cache dir to fixed + b*perSample at its batch size b (the cache's
// key, which names what the profile depends on, stays as the engine wrote it),
// so that the next start reads the pinned table.
func pinCachedProfile(t *testing.T, dir, app, variant string, fixed, perSample time.Duration) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, app+"."+variant+".*.json"))
	if err != nil || len(files) != 1 {
		t.Fatalf("profile cache for %s.%s: %v, %v", app, variant, files, err)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var entry map[string]json.RawMessage
	if err := json.Unmarshal(b, &entry); err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(entry["profile"], &p); err != nil {
		t.Fatal(err)
	}
	lat, ok := p["latency_ns"].([]any)
	batch, _ := p["batch"].([]any)
	if !ok || len(lat) == 0 || len(batch) != len(lat) {
		t.Fatalf("%s: no latency_ns and batch of one length in %s", files[0], entry["profile"])
	}
	for i, b := range batch {
		lat[i] = int64(fixed + time.Duration(b.(float64))*perSample)
	}
	if entry["profile"], err = json.Marshal(p); err != nil {
		t.Fatal(err)
	}
	if b, err = json.Marshal(entry); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A cascade's second pass whose batch fails answers with the first pass's
// answer, which it has, not error internal (found in review: the request got
// an error although a model had answered it).
func TestFailedSecondPassAnswersTheFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, ans, f := cascadeLoop(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go l.Run(ctx)
		submit(t, l, "x", time.Second, []float64{0.1, 0.9})
		// The first pass ends at 1 ms and the second starts; it fails.
		time.Sleep(1500 * time.Microsecond)
		f.mu.Lock()
		f.failRun = fmt.Errorf("injected: the better variant failed")
		f.mu.Unlock()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		r, ok := ans.get("x")
		if !ok || r.Status != protocol.StatusOK || r.Variant != "cheap" {
			t.Fatalf("answered %v: %+v, want ok by cheap (the first pass)", ok, r)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.runs) != 2 {
			t.Fatalf("%d forward passes, want 2 (the first, and the failed second)", len(f.runs))
		}
	})
}

// cascadeLoop is a loop, not yet running, serving loopApp with a cheap variant
// (1 ms a pass on the fake engine, which answers class 1 with probability 0.9)
// and a better one (planned at 20 ms + 1 ms a request) under the cascade, whose
// curve escalates a first answer under a confidence of 0.95.
func cascadeLoop(t *testing.T) (*loop, *answers, *fakeRunner) {
	t.Helper()
	a := loopApp()
	cheap := a.Variants[0]
	cheap.ID.Variant = "cheap"
	better := *cheap
	better.ID.Variant, better.Index = "better", 1
	better.Latency = make([]time.Duration, 33)
	for b := 1; b <= 32; b++ {
		better.Latency[b] = 20*time.Millisecond + time.Duration(b)*time.Millisecond
	}
	a.Variants = []*scheduler.Variant{cheap, &better}
	a.DefaultVariant = 1
	f := &fakeRunner{resident: map[scheduler.VariantID]bool{cheap.ID: true, better.ID: true},
		lat: func(b int) time.Duration { return time.Millisecond }}
	p, err := scheduler.NewCascade(scheduler.Options{}, map[string]scheduler.CascadeConfig{"app": {
		Cheap: 0, Better: 1, Curve: []scheduler.CascadePoint{
			{Threshold: 0.5, Escalated: 0, Utility: 0.8}, {Threshold: 0.95, Escalated: 1, Utility: 0.9}}}})
	if err != nil {
		t.Fatal(err)
	}
	ans := &answers{got: map[string]result{}}
	return newLoop(p, map[string]*scheduler.App{"app": a}, f, scheduler.Engine{}, 100, time.Now, ans.record, zerolog.Nop(), newMetrics(nil)), ans, f
}
