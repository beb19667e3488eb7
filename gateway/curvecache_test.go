package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/scheduler"
)

// curveRig is what measureCurve needs of a gateway, on real components: the
// ONNX Runtime engine with fashion's committed models registered, fashion's
// manifest and validation split, and the curve cache in cfg's
// engine.profile_cache. A new rig on the same directory is a restart.
type curveRig struct {
	t    *testing.T
	g    *Gateway
	a    *appRuntime
	logs bytes.Buffer
	runs int // RunAll calls by measure
}

// newCurveRig makes a rig on testConfig serving the manifest at path, with the
// profile cache in cache (none when empty), fashion peeked on the cnn.
func newCurveRig(t *testing.T, path, cache string, edit func(*Config)) *curveRig {
	t.Helper()
	cfg := testConfig(t, "tcp://127.0.0.1:1", t.TempDir())
	cfg.Engine.ProfileCache = cache
	cfg.Scheduler.Policy = "sneakpeek"
	cfg.Scheduler.Peek = map[string]string{"fashion": "cnn"}
	if edit != nil {
		edit(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Options{LibraryPath: cfg.Engine.Library,
		IntraOpThreads: cfg.Engine.IntraOpThreads, InterOpThreads: cfg.Engine.InterOpThreads})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	m, err := manifest.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Register(m); err != nil {
		t.Fatal(err)
	}
	sched, err := scheduler.NewApp(m)
	if err != nil {
		t.Fatal(err)
	}
	r := &curveRig{t: t, a: &appRuntime{m: m, sched: sched, key: m.Name}}
	r.g = &Gateway{cfg: cfg, log: zerolog.New(&r.logs).Level(zerolog.InfoLevel), now: time.Now, eng: eng}
	return r
}

// run is RunAll, counted.
func (r *curveRig) run(ctx context.Context, id engine.VariantID, in [][]float32, batch int) ([][]float64, error) {
	r.runs++
	return r.g.eng.RunAll(ctx, id, in, batch)
}

// measure measures the curve between variants cheap and better and returns it
// with the RunAll calls it made and what it logged.
func (r *curveRig) measure(cheap, better int) (scheduler.CascadeConfig, int, string) {
	r.t.Helper()
	r.runs = 0
	r.logs.Reset()
	c, err := r.g.measureCurveWith(context.Background(), r.a, cheap, better, "peek", r.run)
	if err != nil {
		r.t.Fatal(err)
	}
	return c, r.runs, r.logs.String()
}

// file is the cache file of the curve between cheap and better as the rig's
// inputs are now.
func (r *curveRig) file(cheap, better int) string {
	r.t.Helper()
	k := r.g.curveKey(r.a, cheap, better)
	if k == nil {
		r.t.Fatalf("no key: %s", r.logs.String())
	}
	return r.g.curveFile(k)
}

// A restart measuring the same curve on the same inputs reads it from the
// cache: no model runs, the "curve from cache" line naming the file, and a
// configuration deep-equal to the one measured. Fashion's peek pair (the cnn,
// then resnet-m), as scheduler.peek: {fashion: cnn} measures it, and through
// measurePeek, the start-up's and the reload's path.
func TestCurveCacheReadsBack(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "profiles")
	r1 := newCurveRig(t, fashionManifest, dir, nil)
	peek, better, err := scheduler.PeekPair(r1.a.sched, r1.g.cfg.SchedulerOptions())
	if err != nil {
		t.Fatal(err)
	}
	measured, runs, logs := r1.measure(peek, better)
	if runs != 2 || !strings.Contains(logs, "peek curve measured") || len(measured.Curve) < 2 {
		t.Fatalf("cold cache: %d runs, curve %+v, logged %s; want both variants run", runs, measured, logs)
	}
	file := r1.file(peek, better)
	if got, _ := filepath.Glob(filepath.Join(dir, curveDir, "*")); len(got) != 1 || got[0] != file {
		t.Fatalf("the cache holds %v, want %s", got, file)
	}

	r2 := newCurveRig(t, fashionManifest, dir, nil) // a restart: a new engine, a new manifest
	cached, runs, logs := r2.measure(peek, better)
	if runs != 0 {
		t.Errorf("warm cache: %d model runs, want none", runs)
	}
	if !strings.Contains(logs, `"message":"peek curve from cache"`) || !strings.Contains(logs, `"cache":"`+file+`"`) {
		t.Errorf("warm cache logged %s, want \"peek curve from cache\" naming %s", logs, file)
	}
	if !reflect.DeepEqual(cached, measured) {
		t.Errorf("cached curve %+v\nmeasured %+v", cached, measured)
	}

	r3 := newCurveRig(t, fashionManifest, dir, nil)
	if err := r3.g.measurePeek(context.Background(), r3.a); err != nil {
		t.Fatal(err)
	}
	if r3.a.peek == nil || !reflect.DeepEqual(*r3.a.peek, measured) || !strings.Contains(r3.logs.String(), "peek curve from cache") {
		t.Errorf("measurePeek: %+v, logged %s; want the cached curve", r3.a.peek, r3.logs.String())
	}
}

// copyFashion copies fashion's manifest and files into a new directory and
// returns the manifest's path there.
func copyFashion(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fashion")
	if err := os.CopyFS(dir, os.DirFS(filepath.Dir(fashionManifest))); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "manifest.yaml")
}

// Any change to what the curve depends on measures it again: the utility
// matrix, the validation split's bytes (not where it lies), scheduler.max_batch,
// the engine's threads, a model's bytes; so do a corrupt entry and an entry
// whose key differs from the one it is filed under. An entry replaced under a
// new key is removed, another pair's is not. A model replaced while the
// variants run leaves nothing stored. Fashion's cheapest pair (logreg, then
// mlp-small) keeps the runs short.
func TestCurveCacheMeasuresAgain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "profiles")
	app := copyFashion(t)
	fresh := func(edit func(*Config)) *curveRig { return newCurveRig(t, app, dir, edit) }
	const cheap, better = 0, 1 // logreg, mlp-small
	expect := func(what string, r *curveRig, wantRuns int) (scheduler.CascadeConfig, string) {
		t.Helper()
		c, runs, logs := r.measure(cheap, better)
		if runs != wantRuns {
			t.Errorf("%s: %d model runs, want %d; logged %s", what, runs, wantRuns, logs)
		}
		return c, logs
	}
	entries := func() []string {
		got, _ := filepath.Glob(filepath.Join(dir, curveDir, "fashion.logreg.mlp-small.*.json"))
		return got
	}
	file := filepath.Join(filepath.Dir(app), "data", "validation.sgs")
	// flipLabel changes the label of the split's first sample (a measured row).
	flipLabel := func() {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		at := len(b) - 4*int(binary.LittleEndian.Uint32(b[8:]))
		binary.LittleEndian.PutUint32(b[at:], (binary.LittleEndian.Uint32(b[at:])+1)%10)
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	base, _ := expect("cold", fresh(nil), 2)
	expect("warm", fresh(nil), 0)
	expect("warm, the application copied elsewhere", newCurveRig(t, copyFashion(t), dir, nil), 0)

	r := fresh(nil)
	u := make([][]float64, len(r.a.sched.Utility))
	for i, row := range r.a.sched.Utility {
		u[i] = append([]float64(nil), row...)
	}
	u[0][2] = 0.25
	r.a.sched.Utility = u
	if c, _ := expect("another utility matrix", r, 2); reflect.DeepEqual(c, base) {
		t.Error("another utility matrix gave the same curve")
	}
	if got, want := entries(), r.file(cheap, better); len(got) != 1 || got[0] != want {
		t.Errorf("after the utility change the cache holds %v, want only %s", got, want)
	}
	expect("the utility matrix back (its entry was replaced)", fresh(nil), 2)
	expect("warm again", fresh(nil), 0)

	flipLabel()
	expect("a label of the split changed", fresh(nil), 2)
	expect("warm on the changed split", fresh(nil), 0)

	expect("scheduler.max_batch 8", fresh(func(c *Config) { c.Scheduler.MaxBatch = 8 }), 2)
	expect("scheduler.max_batch 8, warm", fresh(func(c *Config) { c.Scheduler.MaxBatch = 8 }), 0)
	expect("engine.intra_op_threads 2", fresh(func(c *Config) { c.Engine.IntraOpThreads = 2 }), 2)
	expect("the default configuration (its entry was replaced)", fresh(nil), 2)

	if _, runs, _ := fresh(nil).measure(cheap, 2); runs != 2 {
		t.Errorf("another pair (logreg, lenet): %d model runs, want 2", runs)
	}
	expect("warm after another pair was stored", fresh(nil), 0)

	entry := fresh(nil).file(cheap, better)
	if err := os.WriteFile(entry, []byte(`{"key": `), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, logs := expect("a corrupt entry", fresh(nil), 2); !strings.Contains(logs, "curve cache: corrupt entry") {
		t.Errorf("a corrupt entry logged %s", logs)
	}
	b, err := os.ReadFile(entry)
	if err != nil {
		t.Fatalf("the corrupt entry was not rewritten: %v", err)
	}
	var e map[string]any
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("the rewritten entry: %v", err)
	}
	e["key"].(map[string]any)["batch"] = 7
	b, _ = json.Marshal(e)
	if err := os.WriteFile(entry, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, logs := expect("an entry under another key", fresh(nil), 2); !strings.Contains(logs, "curve cache: entry does not match its key") {
		t.Errorf("an entry under another key logged %s", logs)
	}
	expect("warm after the rewrite", fresh(nil), 0)

	// mlp-small.onnx replaced by logreg.onnx (the same inputs and output) as
	// the first variant runs: mlp-small's runs are logreg's, which its old hash
	// must not key.
	model := filepath.Join(filepath.Dir(app), "mlp-small.onnx")
	logreg, err := os.ReadFile(filepath.Join(filepath.Dir(app), "logreg.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	r = fresh(nil)
	if err := os.Remove(entry); err != nil {
		t.Fatal(err)
	}
	replaced := false
	replacing := func(ctx context.Context, id engine.VariantID, in [][]float32, batch int) ([][]float64, error) {
		if !replaced {
			replaced = true
			if err := os.WriteFile(model, logreg, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return r.run(ctx, id, in, batch)
	}
	r.logs.Reset()
	if _, err := r.g.measureCurveWith(context.Background(), r.a, cheap, better, "peek", replacing); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.logs.String(), "changed while the curve was measured; not stored") || len(entries()) != 0 {
		t.Errorf("a model replaced during the runs: logged %s; the cache holds %v, want nothing", r.logs.String(), entries())
	}
	expect("a model's bytes changed", fresh(nil), 2)
	expect("warm on the changed model", fresh(nil), 0)
}

// A cache that cannot be written or read is logged and the curve measured each
// time, the same; so is no cache at all (engine.profile_cache empty).
func TestCurveCacheUnusable(t *testing.T) {
	const cheap, better = 0, 1
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var first scheduler.CascadeConfig
	for i, c := range []struct {
		name, dir string
		log       []string
	}{
		{"under a regular file", filepath.Join(notDir, "profiles"), []string{"curve cache: cannot store"}},
		{"a directory where the entry goes", t.TempDir(), []string{"curve cache: unreadable", "curve cache: cannot store"}},
		{"no cache", "", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newCurveRig(t, fashionManifest, c.dir, nil)
			if c.name == "a directory where the entry goes" {
				if err := os.MkdirAll(filepath.Join(r.file(cheap, better), "x"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for try := range 2 {
				got, runs, logs := r.measure(cheap, better)
				if runs != 2 {
					t.Errorf("try %d: %d model runs, want 2", try, runs)
				}
				for _, l := range c.log {
					if !strings.Contains(logs, l) {
						t.Errorf("try %d: logged %s, want %q", try, logs, l)
					}
				}
				if c.log == nil && strings.Contains(logs, "curve cache") {
					t.Errorf("no cache, logged %s", logs)
				}
				if i == 0 && try == 0 {
					first = got
				} else if !reflect.DeepEqual(got, first) {
					t.Errorf("try %d: curve %+v, want %+v", try, got, first)
				}
			}
		})
	}
}
