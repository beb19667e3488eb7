package gateway

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/store"
)

// The in-flight file holds the keys of the pass in progress, as the file's
// contents (what a process that dies leaves in the page cache), and no batch
// once it ended; a damaged record reads as an error, not as a batch.
func TestCrashGuardRecordsThePassInProgress(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db.inflight")
	g, err := openCrashGuard(path, 4)
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := readInflight(path); err != nil || len(keys) != 0 {
		t.Fatalf("a new guard records %v (%v), want no batch", keys, err)
	}
	g.running([]uint64{7, 1 << 63, 42})
	if keys, err := readInflight(path); err != nil || !slices.Equal(keys, []uint64{7, 1 << 63, 42}) {
		t.Fatalf("during a pass the file holds %v (%v)", keys, err)
	}
	g.done()
	if keys, err := readInflight(path); err != nil || len(keys) != 0 {
		t.Fatalf("after the pass the file holds %v (%v), want no batch", keys, err)
	}
	g.running([]uint64{9})
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[crashHeader] ^= 1 // the key's first byte
	bad := filepath.Join(t.TempDir(), "bad.inflight")
	if err := os.WriteFile(bad, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if keys, err := readInflight(bad); err == nil {
		t.Errorf("a damaged record read as %v", keys)
	}
	if keys, err := readInflight(filepath.Join(t.TempDir(), "none")); err != nil || keys != nil {
		t.Errorf("no file: %v, %v", keys, err)
	}
	if err := g.close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("a guard closed cleanly left its file: %v", err)
	}
}

// crashVerdicts adds one crash to each pending request of the pass recorded,
// keeps the counts of the pending suspects of earlier starts, and drops the
// suspects no longer pending.
func TestCrashVerdicts(t *testing.T) {
	k := func(id string) store.Key { return store.Key{App: "a", Device: "d", ID: id} }
	pending := []store.Key{k("1"), k("2"), k("3"), k("4")}
	prev := map[store.Key]int{k("2"): 1, k("3"): 1, k("gone"): 1}
	got := crashVerdicts(pending, []uint64{keyHash(k("1")), keyHash(k("2")), keyHash(k("answered"))}, prev)
	want := map[store.Key]int{k("1"): 1, k("2"): 2, k("3"): 1}
	if len(got) != len(want) {
		t.Fatalf("verdicts %v, want %v", got, want)
	}
	for key, n := range want {
		if got[key] != n {
			t.Errorf("%v: %d crashes, want %d", key, got[key], n)
		}
	}
	if keyHash(store.Key{App: "ab", Device: "c"}) == keyHash(store.Key{App: "a", Device: "bc"}) {
		t.Error("the hash does not separate the key's parts")
	}
	path := filepath.Join(t.TempDir(), "s.json")
	if err := writeSuspects(path, got); err != nil {
		t.Fatal(err)
	}
	back, err := readSuspects(path)
	if err != nil || len(back) != len(got) || back[k("2")] != 2 {
		t.Errorf("suspects read back %v (%v), want %v", back, err, got)
	}
	if err := writeSuspects(path, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("no suspects left the file: %v", err)
	}
}

// inflightRunner answers class 0 with the input's first value as its
// probability and records what the in-flight file held during each pass.
type inflightRunner struct {
	fakeRunner
	path string
	seen [][]uint64
}

func (r *inflightRunner) Run(_ scheduler.VariantID, in [][]float32) ([][]float64, error) {
	keys, err := readInflight(r.path)
	if err != nil {
		return nil, err
	}
	r.seen = append(r.seen, keys)
	out := make([][]float64, len(in))
	for i, x := range in {
		out[i] = []float64{float64(x[0]), 1 - float64(x[0])}
	}
	return out, nil
}

// Each pass runs with its requests in the in-flight file; a suspect runs in a
// pass of its own before the rest of its batch, and every request gets its own
// answer back.
func TestSuspectsRunAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db.inflight")
	r := &inflightRunner{fakeRunner: fakeRunner{resident: map[scheduler.VariantID]bool{}}, path: path}
	l, _ := newTestLoop(t, loopApp(), &r.fakeRunner, "edf")
	l.run = r
	var err error
	if l.guard, err = openCrashGuard(path, 32); err != nil {
		t.Fatal(err)
	}
	defer l.guard.close()
	a := l.apps["app"]
	var reqs []*scheduler.Request
	for i, id := range []string{"a", "b", "c", "d"} {
		j := &job{App: "app", Device: "dev", ID: id, Input: []float32{float32(i) / 10}, suspect: id == "c"}
		reqs = append(reqs, &scheduler.Request{App: a, Ref: j})
	}
	d := l.execute(&scheduler.Batch{Variant: a.Variants[0], Requests: reqs})
	if d.err != nil {
		t.Fatal(d.err)
	}
	h := func(id string) uint64 { return keyHash(store.Key{App: "app", Device: "dev", ID: id}) }
	want := [][]uint64{{h("c")}, {h("a"), h("b"), h("d")}}
	if len(r.seen) != 2 || !slices.Equal(r.seen[0], want[0]) || !slices.Equal(r.seen[1], want[1]) {
		t.Errorf("passes recorded %v, want %v", r.seen, want)
	}
	for i, p := range d.probs {
		if want := float64(float32(i) / 10); p[0] != want {
			t.Errorf("request %d answered %v, want its own answer %v", i, p, want)
		}
	}
	if keys, err := readInflight(path); err != nil || len(keys) != 0 {
		t.Errorf("after the batch the file holds %v (%v)", keys, err)
	}
	// Without a suspect the batch is one pass.
	reqs[2].Ref.(*job).suspect = false
	r.seen = nil
	if d := l.execute(&scheduler.Batch{Variant: a.Variants[0], Requests: reqs}); d.err != nil || len(r.seen) != 1 || len(r.seen[0]) != 4 {
		t.Errorf("no suspect: %d passes %v (%v), want one of 4", len(r.seen), r.seen, d.err)
	}
}

// TestCrashGuardAfterCrash: a gateway that died during a forward pass (the
// in-flight file names its requests) is followed by one that runs each of
// them alone, and answers error (engine_crashed), without running it, the one
// that was in such a pass at an earlier death too; the rest are served as
// usual. Real broker, engine and journal.
func TestCrashGuardAfterCrash(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	dir := t.TempDir()
	cfg := testConfig(t, b.URL(), dir)
	_, samples := fashionSamples(t)
	now := time.Now()
	reply := protocol.ReplyTopic("sneakgate", "fashion", "cam-crash")
	key := func(id string) store.Key { return store.Key{App: "fashion", Device: "cam-crash", ID: id} }
	ids := []string{"p1", "p2", "p3", "p4"}
	var entries []*store.Entry
	for i, id := range ids {
		entries = append(entries, &store.Entry{Key: key(id), Received: now, Deadline: now.Add(time.Minute),
			ReplyTo: reply, Input: samples.Row(10 + i)})
	}
	journalPending(t, cfg.Store.Path, entries...)
	// The died run: p1, p2 and p3 in the pass it died in; p3 had been in one
	// at an earlier death too.
	dead, err := openCrashGuard(inflightPath(cfg.Store.Path), 32)
	if err != nil {
		t.Fatal(err)
	}
	dead.running([]uint64{keyHash(key("p1")), keyHash(key("p2")), keyHash(key("p3"))})
	if err := unmapFile(dead.mem); err != nil { // the process is gone; its file stays
		t.Fatal(err)
	}
	dead.f.Close()
	if err := writeSuspects(suspectsPath(cfg.Store.Path), map[store.Key]int{key("p3"): 1}); err != nil {
		t.Fatal(err)
	}

	dev := newDevice(t, b.URL(), "cam-crash")
	gw := startGateway(t, cfg, Options{})
	got := dev.await(ids, 30*time.Second)
	for _, id := range []string{"p1", "p2"} {
		if r := got[id]; r.Status != protocol.StatusOK || r.Batch != 1 {
			t.Errorf("%s (a suspect): %s, batch %d; want ok, run alone", id, r.Status, r.Batch)
		}
	}
	if r := got["p3"]; r.Status != protocol.StatusError || r.Reason != protocol.ReasonEngineCrashed || r.Model != "" {
		t.Errorf("p3 (in a pass at two deaths): %+v; want error engine_crashed, not run", r)
	}
	if r := got["p4"]; r.Status != protocol.StatusOK {
		t.Errorf("p4: %+v", r)
	}
	if a, c := testutil.ToFloat64(gw.g.m.crashSuspects.WithLabelValues("alone")), testutil.ToFloat64(gw.g.m.crashSuspects.WithLabelValues("answered")); a != 2 || c != 1 {
		t.Errorf("sneakgate_crash_suspects alone %v answered %v, want 2, 1", a, c)
	}
	s, err := readSuspects(suspectsPath(cfg.Store.Path))
	if err != nil || len(s) != 3 || s[key("p1")] != 1 || s[key("p3")] != 2 {
		t.Errorf("suspects file %v (%v), want p1 and p2 at 1, p3 at 2", s, err)
	}
	gw.stop(t)
	if _, err := os.Stat(inflightPath(cfg.Store.Path)); !os.IsNotExist(err) {
		t.Errorf("a clean stop left the in-flight file: %v", err)
	}
	// The next start finds nothing pending: no suspects left.
	startGateway(t, cfg, Options{}).stop(t)
	if _, err := os.Stat(suspectsPath(cfg.Store.Path)); !os.IsNotExist(err) {
		t.Errorf("suspects file left with nothing pending: %v", err)
	}
}

// BenchmarkCrashGuardPass is the guard's cost per forward pass of 32 requests:
// hashing their keys and the two records.
func BenchmarkCrashGuardPass(b *testing.B) {
	g, err := openCrashGuard(filepath.Join(b.TempDir(), "j.db.inflight"), 32)
	if err != nil {
		b.Fatal(err)
	}
	defer g.close()
	keys := make([]store.Key, 32)
	for i := range keys {
		keys[i] = store.Key{App: "fashion", Device: "sim-0001", ID: "k4-" + string(rune('a'+i)) + "-73520"}
	}
	buf := make([]uint64, 0, 32)
	b.ReportAllocs()
	for b.Loop() {
		buf = buf[:0]
		for _, k := range keys {
			buf = append(buf, keyHash(k))
		}
		g.running(buf)
		g.done()
	}
}

// A start that cannot write the suspects file (a full disk) keeps the
// in-flight file as the last run left it, so that the next start that can
// write counts that crash (once): truncated, the crash was forgotten, and a
// request that crashed the process alone was run alone again at every start.
// Meanwhile the suspects still run alone, without the guard.
func TestCrashCheckKeepsTheRecordWhenSuspectsCannotBeWritten(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Store.Path = filepath.Join(dir, "j.db")
	key := func(id string) store.Key { return store.Key{App: "a", Device: "d", ID: id} }
	pending := func() []*job {
		return []*job{{App: "a", Device: "d", ID: "1"}, {App: "a", Device: "d", ID: "2"}, {App: "a", Device: "d", ID: "3"}}
	}
	dead, err := openCrashGuard(inflightPath(cfg.Store.Path), 32)
	if err != nil {
		t.Fatal(err)
	}
	dead.running([]uint64{keyHash(key("1")), keyHash(key("2"))})
	if err := unmapFile(dead.mem); err != nil { // the process is gone; its file stays
		t.Fatal(err)
	}
	dead.f.Close()
	start := func() *Gateway {
		g := &Gateway{cfg: &cfg, log: zerolog.Nop(), m: newMetrics(nil), recovered: pending()}
		g.crashCheck(32)
		t.Cleanup(func() { g.guard.close() })
		return g
	}
	suspects := func(g *Gateway) []string {
		var ids []string
		for _, j := range g.recovered {
			if j.suspect {
				ids = append(ids, j.ID)
			}
		}
		return ids
	}
	// The suspects file cannot be written (its temporary file is a directory).
	blocker := suspectsPath(cfg.Store.Path) + ".tmp"
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	g := start()
	if got := suspects(g); !slices.Equal(got, []string{"1", "2"}) || len(g.crashed) != 0 {
		t.Fatalf("suspects %v, crashed %d; want 1 and 2, none", got, len(g.crashed))
	}
	if g.guard != nil {
		t.Error("the guard runs on a record it will truncate and a crash count it could not write")
	}
	if keys, err := readInflight(inflightPath(cfg.Store.Path)); err != nil || len(keys) != 2 {
		t.Fatalf("the in-flight file holds %v (%v), want the crashed pass kept", keys, err)
	}
	// Without the guard the suspects still run alone.
	l, _ := newTestLoop(t, loopApp(), &fakeRunner{lat: func(int) time.Duration { return 0 }, resident: map[scheduler.VariantID]bool{}}, "edf")
	a := l.apps["app"]
	var reqs []*scheduler.Request
	for _, j := range g.recovered {
		reqs = append(reqs, &scheduler.Request{App: a, Ref: j})
	}
	if d := l.execute(&scheduler.Batch{Variant: a.Variants[0], Requests: reqs}); d.err != nil || !slices.Equal(l.run.(*fakeRunner).runs, []int{1, 1, 1}) {
		t.Errorf("passes %v (%v), want 1, 1 (the suspects) and 1", l.run.(*fakeRunner).runs, d.err)
	}
	// The next start, which can write, counts the crash once.
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	g = start()
	if got := suspects(g); !slices.Equal(got, []string{"1", "2"}) || len(g.crashed) != 0 || g.guard == nil {
		t.Fatalf("next start: suspects %v, crashed %d, guard %v; want 1 and 2, none, a guard", got, len(g.crashed), g.guard != nil)
	}
	if s, err := readSuspects(suspectsPath(cfg.Store.Path)); err != nil || len(s) != 2 || s[key("1")] != 1 || s[key("2")] != 1 {
		t.Errorf("suspects file %v (%v), want 1 and 2 at one crash", s, err)
	}
	// And a start after that, with no pass recorded since, counts nothing more.
	g = start()
	if got := suspects(g); !slices.Equal(got, []string{"1", "2"}) || len(g.crashed) != 0 {
		t.Errorf("third start: suspects %v, crashed %d; want 1 and 2, none", got, len(g.crashed))
	}
}

// clockRunner takes exactly the profiled time of each pass (loopApp's table)
// on the loop's clock.
type clockRunner struct {
	fakeRunner
	now *time.Time
	lat []time.Duration
}

func (r *clockRunner) Run(id scheduler.VariantID, in [][]float32) ([][]float64, error) {
	*r.now = r.now.Add(r.lat[len(in)])
	return r.fakeRunner.Run(id, in)
}

// A batch split for its suspects is accounted as the passes it ran as: the
// latency correction, sneakgate_infer_duration_seconds and
// sneakgate_batch_size see each pass at its own size, and each reply the
// size and duration of its own pass. Taken as one pass of the whole batch,
// passes that each took exactly their profile raised the variant's factor
// (x1.15 after one batch of 4 suspects and 1 other; a whole crashed batch of 32 suspects
// would be x1.3 in one batch), and the scheduler then took the variant for
// slower than it is.
func TestSplitBatchAccountedPerPass(t *testing.T) {
	app := loopApp()
	v := app.Variants[0]
	profile := slices.Clone(v.Latency)
	now := time.Unix(1000, 0)
	r := &clockRunner{fakeRunner: fakeRunner{lat: func(int) time.Duration { return 0 }, resident: map[scheduler.VariantID]bool{}},
		now: &now, lat: profile}
	l, ans := newTestLoop(t, app, &r.fakeRunner, "edf")
	l.run = r
	l.now = func() time.Time { return now }
	var reqs []*scheduler.Request
	for _, id := range []string{"s1", "s2", "x", "s3", "s4"} {
		j := &job{App: "app", Device: "dev", ID: id, Input: []float32{0}, Deadline: now.Add(time.Minute), suspect: id[0] == 's'}
		reqs = append(reqs, &scheduler.Request{App: app, Ref: j, ExpAccuracy: []float64{0.9}})
	}
	d := l.execute(&scheduler.Batch{Variant: v, Requests: reqs})
	if d.err != nil {
		t.Fatal(d.err)
	}
	l.finish(d)
	if got := r.runs; !slices.Equal(got, []int{1, 1, 1, 1, 1}) {
		t.Fatalf("passes %v, want five of 1", got)
	}
	if f := testutil.ToFloat64(l.m.latencyFactor.WithLabelValues("app", "m")); f < 0.999 || f > 1.001 {
		t.Errorf("latency factor %v after passes that each took their profile, want 1", f)
	}
	if !slices.Equal(v.Latency, profile) {
		t.Errorf("the variant's table moved: %v, profiled %v", v.Latency, profile)
	}
	if n := testutil.CollectAndCount(l.m.batchSize); n != 1 {
		t.Fatalf("%d batch size series", n)
	}
	if got := histCount(t, l.m.batchSize); got != 5 {
		t.Errorf("sneakgate_batch_size has %d samples, want 5 (one per pass)", got)
	}
	if got := histCount(t, l.m.inferTime); got != 5 {
		t.Errorf("sneakgate_infer_duration_seconds has %d samples, want 5 (one per pass)", got)
	}
	for id, res := range ans.got {
		if res.Batch != 1 || res.Infer != profile[1] {
			t.Errorf("%s: batch %d, infer %v; want its own pass: 1, %v", id, res.Batch, res.Infer, profile[1])
		}
	}
	// Four suspects and two others: the others' pass is of 2.
	r.runs = nil
	reqs = append(reqs, &scheduler.Request{App: app, Ref: &job{App: "app", Device: "dev", ID: "y", Input: []float32{0}, Deadline: now.Add(time.Minute)},
		ExpAccuracy: []float64{0.9}})
	ans.got = map[string]result{}
	l.finish(l.execute(&scheduler.Batch{Variant: v, Requests: reqs}))
	for id, res := range ans.got {
		want := 1
		if id == "x" || id == "y" {
			want = 2
		}
		if res.Batch != want || res.Infer != profile[want] {
			t.Errorf("%s: batch %d, infer %v; want %d, %v", id, res.Batch, res.Infer, want, profile[want])
		}
	}
	if f := testutil.ToFloat64(l.m.latencyFactor.WithLabelValues("app", "m")); f < 0.999 || f > 1.001 {
		t.Errorf("latency factor %v, want 1", f)
	}
}

// histCount is the number of observations in h's only series.
func histCount(t *testing.T, h prometheus.Collector) uint64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 4)
	h.Collect(ch)
	close(ch)
	var n uint64
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		n += pb.GetHistogram().GetSampleCount()
	}
	return n
}
