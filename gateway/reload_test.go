package gateway

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

func (a *answers) get(id string) (result, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.got[id]
	return r, ok
}

// namedLoopApp is loopApp under another application and variant name.
func namedLoopApp(app, variant string) *scheduler.App {
	a := loopApp()
	a.Name = app
	a.Variants[0].ID = scheduler.VariantID{App: app, Variant: variant}
	return a
}

// A swap waits for the batch in flight; then queued jobs of a changed
// application move to its new version (or are refused when reprepare says they
// cannot be served), the old version retires at once, and a removed
// application keeps serving its queued jobs and retires when they are answered.
//
// With the pipeline on, the queued jobs of the changed application are decided
// into the next batch while a1 runs: the swap puts them back in the queue first.
func TestLoopSwapMovesQueuedJobs(t *testing.T) {
	for _, pipeline := range []bool{false, true} {
		t.Run(fmt.Sprintf("pipeline=%v", pipeline), func(t *testing.T) { testLoopSwapMovesQueuedJobs(t, pipeline) })
	}
}

func testLoopSwapMovesQueuedJobs(t *testing.T, pipeline bool) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return 50 * time.Millisecond },
			resident: map[scheduler.VariantID]bool{}}
		p, err := scheduler.New("edf", scheduler.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ans := &answers{got: map[string]result{}}
		apps := map[string]*scheduler.App{"app": namedLoopApp("app", "old"), "gone": namedLoopApp("gone", "m")}
		m := newMetrics(nil)
		l := newLoop(p, apps, f, scheduler.Engine{}, 100, time.Now, ans.record, zerolog.Nop(), m)
		l.pipeline = pipeline
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go l.Run(ctx)

		put := func(app, id string) { submitTo(t, l, app, id) }
		put("app", "a1") // runs at once on the old version
		synctest.Wait()
		for _, id := range []string{"a2", "a3", "a4"} {
			put("app", id)
		}
		put("gone", "g1")
		put("gone", "g2")

		var mu sync.Mutex
		var retired []string
		applied := false
		sw := &appSwap{
			apps:      map[string]*scheduler.App{"app": namedLoopApp("app", "new")},
			apply:     func() { applied = true },
			reprepare: func(j *job) bool { return j.ID != "a4" }, // a4: its input no longer fits
			retire: func(name string) {
				mu.Lock()
				defer mu.Unlock()
				retired = append(retired, name)
			},
			done: make(chan struct{}),
		}
		if pipeline {
			// a1 is planned to take 2.1 ms (the profile) and takes 50: the next
			// batch is decided while it runs.
			time.Sleep(10 * time.Millisecond)
			synctest.Wait()
			if got := testutil.ToFloat64(m.decidedAhead); got != 1 {
				t.Fatalf("%v batches decided ahead before the swap, want 1", got)
			}
		}
		l.swaps <- sw
		<-sw.done
		if !applied {
			t.Fatal("apply not called")
		}
		mu.Lock()
		if !slices.Equal(retired, []string{"app"}) {
			t.Fatalf("retired at the swap: %v, want [app] (gone still has queued jobs)", retired)
		}
		mu.Unlock()
		if r, ok := ans.get("a1"); !ok || r.Variant != "old" {
			t.Fatalf("the batch in flight: %+v (answered %v), want it finished on the old version first", r, ok)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		want := map[string]string{"a2": "new", "a3": "new", "g1": "m", "g2": "m"}
		for id, v := range want {
			r, ok := ans.get(id)
			if !ok || r.Status != protocol.StatusOK || r.Variant != v {
				t.Errorf("%s: %+v (answered %v), want ok by %q", id, r, ok, v)
			}
		}
		if r, _ := ans.get("a4"); r.Status != protocol.StatusRejected || r.Reason != string(protocol.ReasonUnknownApp) {
			t.Errorf("a4: %+v, want rejected unknown_app", r)
		}
		mu.Lock()
		if !slices.Equal(retired, []string{"app", "gone"}) {
			t.Errorf("retired: %v, want [app gone]", retired)
		}
		mu.Unlock()
		if _, ok := l.apps["gone"]; ok {
			t.Error("the removed application is still in the loop's set")
		}
		if q := l.Queued(); q != 0 {
			t.Errorf("queued = %d after everything was answered", q)
		}
	})
}

// retiringRunner is a fakeRunner whose applications can be unregistered, as a
// retired version's are from the engine (Gateway.retire): their variants leave
// the residency, and every later Load, Unload or Run of one fails as the
// engine's do (engine.ErrUnknownVariant).
type retiringRunner struct {
	*fakeRunner
	gone map[string]bool // under fakeRunner.mu
}

func (r *retiringRunner) unregister(app string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gone[app] = true
	for id := range r.resident {
		if id.App == app {
			delete(r.resident, id)
		}
	}
}

func (r *retiringRunner) known(id scheduler.VariantID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone[id.App] {
		return fmt.Errorf("%w: %s", engine.ErrUnknownVariant, id)
	}
	return nil
}

func (r *retiringRunner) Load(id scheduler.VariantID) (time.Duration, error) {
	if err := r.known(id); err != nil {
		return 0, err
	}
	return r.fakeRunner.Load(id)
}

func (r *retiringRunner) Unload(id scheduler.VariantID) (time.Duration, error) {
	if err := r.known(id); err != nil {
		return 0, err
	}
	return r.fakeRunner.Unload(id)
}

func (r *retiringRunner) Run(id scheduler.VariantID, in [][]float32) ([][]float64, error) {
	if err := r.known(id); err != nil {
		return nil, err
	}
	return r.fakeRunner.Run(id, in)
}

// With the pipeline on, a batch decided while a removed application's last
// batch runs may evict that application's variant (one variant resident at
// most). When that batch ends the application retires, and its variants leave
// the engine: the decided batch, whose eviction would fail on the unregistered
// variant and take its requests with it, is put back and decided again on the
// residency the retirement left.
func TestLoopPipelineUnplansAfterARetirement(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		xm := scheduler.VariantID{App: "x", Variant: "m"}
		f := &retiringRunner{fakeRunner: &fakeRunner{lat: func(int) time.Duration { return 10 * time.Millisecond },
			resident: map[scheduler.VariantID]bool{xm: true}}, gone: map[string]bool{}}
		p, err := scheduler.New("edf", scheduler.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ans := &answers{got: map[string]result{}}
		y := namedLoopApp("y", "m")
		m := newMetrics(nil)
		l := newLoop(p, map[string]*scheduler.App{"x": namedLoopApp("x", "m"), "y": y}, f,
			scheduler.Engine{CountBudget: 1}, 100, time.Now, ans.record, zerolog.Nop(), m)
		l.pipeline = true
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go l.Run(ctx)

		put := func(app, id string) { submitTo(t, l, app, id) }
		put("x", "x1") // runs at once on x/m
		synctest.Wait()
		put("x", "x2") // queued when x is removed: it keeps x serving
		var mu sync.Mutex
		var retired []string
		sw := &appSwap{apps: map[string]*scheduler.App{"y": y}, apply: func() {},
			reprepare: func(*job) bool { return true },
			retire: func(name string) {
				mu.Lock()
				defer mu.Unlock()
				retired = append(retired, name)
				f.unregister(name)
			},
			done: make(chan struct{})}
		l.swaps <- sw
		<-sw.done // after x1; x2 runs next, planned 2.1 ms, running 10
		put("y", "y1")
		time.Sleep(5 * time.Millisecond)
		synctest.Wait()
		if got := testutil.ToFloat64(m.decidedAhead); got != 1 {
			t.Fatalf("%v batches decided ahead while x2 ran, want 1 (y1, evicting x/m)", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		for _, id := range []string{"x1", "x2", "y1"} {
			if r, ok := ans.get(id); !ok || r.Status != protocol.StatusOK {
				t.Errorf("%s: %+v (answered %v), want ok", id, r, ok)
			}
		}
		mu.Lock()
		if !slices.Equal(retired, []string{"x"}) {
			t.Errorf("retired: %v, want [x]", retired)
		}
		mu.Unlock()
		if q := l.Queued(); q != 0 {
			t.Errorf("queued = %d after everything was answered", q)
		}
	})
}

// TestReloadUnderLoad reloads a serving gateway (real Mosquitto, ONNX Runtime,
// journal and models) while a device keeps sending: the changed application's
// requests all get answers, the removed one's requests admitted before the swap
// are answered and later ones are rejected unknown_app, the added one serves at
// once, and a reload that fails leaves everything serving.
func TestReloadUnderLoad(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	const sat, vad = "../models/satellite/manifest.yaml", "../models/vad/manifest.yaml"
	cfg.Apps = []AppConfig{{Manifest: sat}, {Manifest: vad}}
	// Every satellite request must get a model answer: the class-ordered stream
	// shifts the live mix enough that answers from the estimate would
	// otherwise be worth more for some (scheduler.estimate_answers).
	cfg.Scheduler.EstimateAnswers = false
	r := startGateway(t, cfg, Options{})
	dev := newDevice(t, b.URL(), "sensor-1")
	_, satRows := appSamples(t, sat)
	_, vadRows := appSamples(t, vad)
	_, fashRows := fashionSamples(t)

	// A device sends satellite and vad requests without pause until told to stop.
	stop := make(chan struct{})
	sent := make(chan []string, 1)
	go func() {
		var ids []string
		for i := 0; ; i++ {
			select {
			case <-stop:
				sent <- ids
				return
			default:
			}
			id := fmt.Sprintf("sat-%d", i)
			dev.request("satellite", "sensor-1", id, satRows.Row(i%satRows.N), 10000)
			vid := fmt.Sprintf("vad-%d", i)
			dev.request("vad", "sensor-1", vid, vadRows.Row(i%vadRows.N), 10000)
			ids = append(ids, id, vid)
		}
	}()
	dev.await([]string{"sat-20", "vad-20"}, 60*time.Second) // serving under load

	// A reload that cannot load an application changes nothing.
	bad := *cfg
	bad.Apps = []AppConfig{{Manifest: sat}, {Manifest: filepath.Join(t.TempDir(), "missing.yaml")}}
	if _, err := r.g.Reload(context.Background(), &bad); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("reload with a missing manifest: %v, want an error naming it", err)
	}

	next := *cfg
	next.Apps = []AppConfig{{Manifest: sat, DefaultDeadline: 2 * time.Second}, {Manifest: fashionManifest}}
	next.Log.Level = "debug" // not applied: needs a restart
	res, err := r.g.Reload(context.Background(), &next)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reload: %+v", res)
	if !slices.Equal(res.Added, []string{"fashion"}) || !slices.Equal(res.Changed, []string{"satellite"}) ||
		!slices.Equal(res.Removed, []string{"vad"}) || !slices.Equal(res.Ignored, []string{"log"}) {
		t.Fatalf("reload result %+v", res)
	}
	// The new versions' variants were made resident before they served (the
	// test's budget is unlimited), not loaded on their first requests.
	resident := map[engine.VariantID]bool{}
	for _, id := range r.g.eng.Resident() {
		resident[id] = true
	}
	for _, name := range []string{"fashion", "satellite"} {
		a := r.g.appSet()[name]
		for _, id := range r.g.eng.Variants(a.key) {
			if !resident[id] {
				t.Errorf("%s (%s) is not resident after the reload", id, name)
			}
		}
	}
	// From here on vad is not served and fashion is.
	var after []string
	for i := range 20 {
		id := fmt.Sprintf("fash-%d", i)
		dev.request("fashion", "sensor-1", id, fashRows.Row(i), 10000)
		vid := fmt.Sprintf("vad-after-%d", i)
		dev.request("vad", "sensor-1", vid, vadRows.Row(i), 10000)
		after = append(after, id, vid)
	}
	close(stop)
	before := <-sent
	replies := dev.await(append(slices.Clone(before), after...), 120*time.Second)
	counts := map[string]int{}
	for _, id := range append(before, after...) {
		rep := replies[id]
		if n := dev.count(id); n != 1 {
			t.Errorf("%s answered %d times", id, n)
		}
		ok := rep.Status == protocol.StatusOK
		unknown := rep.Status == protocol.StatusRejected && rep.Reason == protocol.ReasonUnknownApp
		switch {
		case strings.HasPrefix(id, "vad-after-"):
			if !unknown {
				t.Errorf("%s sent after the reload: %s %s, want rejected unknown_app", id, rep.Status, rep.Reason)
			}
		case strings.HasPrefix(id, "vad-"):
			// Admitted before the swap: answered; arrived after it: refused.
			if !ok && !unknown {
				t.Errorf("%s: %s %s", id, rep.Status, rep.Error)
			}
		default:
			if !ok {
				t.Errorf("%s: %s %s, want ok", id, rep.Status, rep.Error)
			}
		}
		counts[fmt.Sprintf("%s %s", strings.SplitN(id, "-", 2)[0], rep.Status)]++
	}
	t.Logf("%d requests sent during the reload; replies by app and status: %v", len(before), counts)
	if counts["vad ok"] == 0 {
		t.Error("no vad request admitted before the reload was answered")
	}
}

// A reload with nothing changed does nothing; an edit to any file of an
// application's manifest directory the gateway reads makes it a new version:
// the manifest, and the difficulty model and the validation split, which the
// manifest names (the gateway reads the split to measure the cascade and peek
// curves and the label-shift prior). A split that is gone is no error for a
// configuration that does not read it.
func TestReloadDetectsChangedFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("../models/satellite")); err != nil {
		t.Fatal(err)
	}
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.Apps = []AppConfig{{Manifest: filepath.Join(dir, "manifest.yaml")}}
	r := startGateway(t, cfg, Options{})
	res, err := r.g.Reload(context.Background(), cfg)
	if err != nil || !slices.Equal(res.Unchanged, []string{"satellite"}) || len(res.Changed)+len(res.Added)+len(res.Removed) > 0 {
		t.Fatalf("reload of the same configuration: %+v, %v", res, err)
	}
	appendTo := func(file, text string) func() {
		return func() {
			f, err := os.OpenFile(filepath.Join(dir, file), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString(text); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	edits := []struct {
		what string
		edit func()
	}{
		{"the difficulty model replaced", appendTo("est/difficulty.json", "\n")},
		{"the validation split replaced", func() {
			// Another split of the same shape: the samples file's rows.
			rows, err := os.ReadFile(filepath.Join(dir, "samples.sgs"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "data/validation.sgs"), rows, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"the validation split removed", func() {
			if err := os.Remove(filepath.Join(dir, "data/validation.sgs")); err != nil {
				t.Fatal(err)
			}
		}},
		{"the manifest edited", appendTo("manifest.yaml", "# edited\n")},
	}
	var before *appRuntime
	for _, e := range edits {
		before, _ = r.g.app("satellite")
		e.edit()
		res, err = r.g.Reload(context.Background(), cfg)
		if err != nil || !slices.Equal(res.Changed, []string{"satellite"}) {
			t.Fatalf("reload after %s: %+v, %v", e.what, res, err)
		}
		after, _ := r.g.app("satellite")
		if after == before || after.key == before.key {
			t.Fatalf("after %s the application was not swapped: key %s -> %s", e.what, before.key, after.key)
		}
		if got := r.g.eng.Variants(before.key); len(got) != 0 {
			t.Errorf("after %s the old version's variants are still registered: %v", e.what, got)
		}
	}
	// It answers.
	dev := newDevice(t, b.URL(), "sensor-1")
	_, rows := appSamples(t, filepath.Join(dir, "manifest.yaml"))
	dev.request("satellite", "sensor-1", "x", rows.Row(0), 10000)
	if rep := dev.await([]string{"x"}, 30*time.Second)["x"]; rep.Status != protocol.StatusOK {
		t.Fatalf("after the reload: %s %s", rep.Status, rep.Error)
	}
	if got := testutil.ToFloat64(r.g.m.reloads.WithLabelValues("ok")); got != float64(1+len(edits)) {
		t.Errorf("sneakgate_reloads_total{result=ok} = %v, want %d", got, 1+len(edits))
	}
	// A configuration file that does not load is refused and counted as
	// refused, as one Reload refuses (before, SIGHUP's path never counted it).
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("bogus_key: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.g.ReloadFile(context.Background(), bad, nil); err == nil || !strings.Contains(err.Error(), "bogus_key") {
		t.Errorf("reload of a file with an unknown key: %v, want an error naming it", err)
	}
	if got := testutil.ToFloat64(r.g.m.reloads.WithLabelValues("refused")); got != 1 {
		t.Errorf("sneakgate_reloads_total{result=refused} = %v after a file that does not load, want 1", got)
	}
}

// stillPolicy runs nothing and answers nothing: what is queued stays queued.
type stillPolicy struct{}

func (stillPolicy) Name() string                                  { return "still" }
func (stillPolicy) Decide(*scheduler.Snapshot) scheduler.Decision { return scheduler.Decision{} }

// An application removed while requests of it are queued, and added back by
// the next reload before they are answered, serves from its new version; the
// removed version retires at that reload's swap and takes its metrics with it,
// so that the new version's are registered in their place instead of the
// registration panicking on the old ones (which no reload would ever remove).
func TestReloadReaddsARetiringApplication(t *testing.T) {
	const vad = "../models/vad/manifest.yaml"
	cfg := testConfig(t, "tcp://127.0.0.1:1", t.TempDir())
	cfg.Apps = []AppConfig{{Manifest: fashionManifest}, {Manifest: vad}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	g := &Gateway{cfg: cfg, log: zerolog.Nop(), rejectLog: zerolog.Nop(), m: m, reg: reg, now: time.Now,
		client: &fakeClient{}}
	if err := g.loadApps(); err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Options{LibraryPath: cfg.Engine.Library, WarmupRuns: cfg.Engine.WarmupRuns,
		ProfileRuns: cfg.Engine.ProfileRuns, ProfileCache: cfg.Engine.ProfileCache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	g.eng, g.runner = eng, newEngineRunner(eng, g.appSet())
	sapps := map[string]*scheduler.App{}
	for n, a := range g.appSet() {
		sapps[n] = a.sched
	}
	ans := &answers{got: map[string]result{}}
	g.loop = newLoop(stillPolicy{}, sapps, &fakeRunner{resident: map[scheduler.VariantID]bool{}}, scheduler.Engine{}, 8,
		time.Now, ans.record, zerolog.Nop(), m)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { g.loop.Run(ctx); close(stopped) }()
	defer func() { cancel(); <-stopped }()

	v1 := g.appSet()["fashion"]
	now := time.Now()
	if !g.loop.Reserve(8) || !g.loop.Submit(&job{App: "fashion", Device: "d", ID: "f1", Received: now,
		Deadline: now.Add(time.Hour), Input: make([]float32, v1.m.InputSize), rt: v1}) {
		t.Fatal("f1 not submitted")
	}
	less := *cfg
	less.Apps = []AppConfig{{Manifest: vad}}
	res, err := g.Reload(ctx, &less)
	if err != nil || !slices.Equal(res.Removed, []string{"fashion"}) {
		t.Fatalf("removing fashion: %+v, %v", res, err)
	}
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("adding fashion back while its removed version serves f1 panicked: %v", p)
			}
		}()
		res, err = g.Reload(ctx, cfg)
	}()
	if err != nil || !slices.Equal(res.Added, []string{"fashion"}) {
		t.Fatalf("adding fashion back: %+v, %v", res, err)
	}
	v2 := g.appSet()["fashion"]
	if v2 == v1 || len(v2.collectors) == 0 || len(v1.collectors) != 0 {
		t.Errorf("metrics: the new version's %d collectors, the retired one's %d; want the new one's only",
			len(v2.collectors), len(v1.collectors))
	}
	if n := testutil.CollectAndCount(reg, "sneakgate_estimate_observations"); n != 2 {
		t.Errorf("%d sneakgate_estimate_observations series, want 2 (fashion's new version and vad)", n)
	}
	if _, ok := ans.get("f1"); ok || g.loop.Queued() != 1 {
		t.Errorf("f1 answered (%v) or queued %d: want it queued, moved to the new version", ok, g.loop.Queued())
	}
}

// submitTo submits request id of app to l with a 10 s budget.
func submitTo(t *testing.T, l *loop, app, id string) {
	t.Helper()
	now := time.Now()
	if !l.Reserve(100) || !l.Submit(&job{App: app, Device: "d", ID: id, Received: now,
		Deadline: now.Add(10 * time.Second), Input: []float32{1}}) {
		t.Fatalf("submit %s refused", id)
	}
}

// A reload after the loop has stopped returns an error: before, with the swap
// channel's one place taken by a reload the stopped loop never took, it blocked
// for good on the send, holding the swapping lock that every request handler
// takes.
func TestReloadAfterTheLoopStopped(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	sat, _ := filepath.Abs("../models/satellite/manifest.yaml")
	vad, _ := filepath.Abs("../models/vad/manifest.yaml")
	cfg.Apps = []AppConfig{{Manifest: sat}, {Manifest: vad}}
	r := startGateway(t, cfg, Options{})
	r.stop(t)
	r.g.loop.swaps <- &appSwap{done: make(chan struct{})} // a reload the loop never took
	less := *cfg
	less.Apps = cfg.Apps[:1] // vad removed: the reload reaches the swap
	done := make(chan error, 1)
	go func() {
		_, err := r.g.Reload(context.Background(), &less)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("reload after the loop stopped: no error")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("reload after the loop stopped blocked on the swap channel")
	}
	if !r.g.swapping.TryLock() {
		t.Fatal("the swapping lock is still held")
	}
	r.g.swapping.Unlock()
}
