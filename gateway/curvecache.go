package gateway

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/internal/cachefile"
	"github.com/sneakgate/sneakgate/scheduler"
)

// The curve cache keeps the cascade and peek curves measureCurve measures in
// the curves folder of engine.profile_cache, as the engine keeps its profiles
// there (engine/cache.go): one file per application and pair of variants, named
// {app}.{cheap}.{better}.{hash}.json after its key, which it also holds. The
// folder keeps the files out of the engine's way: its profile files are
// {app}.{variant}.{hash}.json and it removes {app}.{variant}.*.json, which would
// match a curve's file. Every failure is logged and the curve measured: the
// cache only saves start-up time.
const curveDir = "curves"

// curveFormat changes whenever the meaning of a cached curve changes: what
// measureCurve runs the variants on and how, or what
// scheduler.CascadeFromOutputs computes from their outputs. A field added to
// scheduler.CascadeConfig or scheduler.CascadePoint changes curveShape, which
// misses the cache by itself.
const curveFormat = 1

// curveShape is the Go syntax of a CascadeConfig with one point: the
// configuration's field names and types.
var curveShape = fmt.Sprintf("%#v", scheduler.CascadeConfig{Curve: []scheduler.CascadePoint{{}}})

// curveVariant is one of a curve's variants in its key.
type curveVariant struct {
	Name  string `json:"name"`
	Index int    `json:"index"` // in the manifest: CascadeConfig.Cheap or Better
	// Engine is what the variant's outputs depend on: the model file's hash,
	// ONNX Runtime's version, the provider and its options, the threads.
	Engine engine.OutputKey `json:"engine"`
}

// curveKey is everything a measured curve depends on.
type curveKey struct {
	Format int    `json:"format"`
	Shape  string `json:"shape"`
	App    string `json:"app"`
	// Cheap runs first (the cascade's first pass, the peek), Better second.
	Cheap  curveVariant `json:"cheap"`
	Better curveVariant `json:"better"`
	// The validation split's file hash and the bound on the rows measured
	// (cascadeRows): which rows are measured (every step-th, step =
	// max(1, samples/MaxRows)) follows from them, so that a hit need not read
	// the split; a change to that rule changes curveFormat.
	ValidationSHA256 string `json:"validation_sha256"`
	MaxRows          int    `json:"max_rows"`
	// Batch is RunAll's batch size (scheduler.max_batch).
	Batch int `json:"batch"`
	// Classes and Utility are the application's (scheduler.App's K and
	// Utility): the curve's utilities are read from the matrix.
	Classes int         `json:"classes"`
	Utility [][]float64 `json:"utility"`
}

// curveEntry is one cache file.
type curveEntry struct {
	Key      curveKey  `json:"key"`
	Measured time.Time `json:"measured"`
	// Samples and Rows (not read back) are the split's rows and those measured.
	Samples int                     `json:"samples"`
	Rows    int                     `json:"rows"`
	Curve   scheduler.CascadeConfig `json:"curve"`
}

// curveKey returns the key of a's curve between variants cheap and better, or
// nil when the cache is off or an input cannot be hashed (logged).
func (g *Gateway) curveKey(a *appRuntime, cheap, better int) *curveKey {
	if g.cfg.Engine.ProfileCache == "" {
		return nil
	}
	k := &curveKey{Format: curveFormat, Shape: curveShape, App: a.m.Name, MaxRows: cascadeRows,
		Batch: g.cfg.Scheduler.MaxBatch, Classes: a.sched.K, Utility: a.sched.Utility}
	for _, p := range []struct {
		i int
		v *curveVariant
	}{{cheap, &k.Cheap}, {better, &k.Better}} {
		name := a.sched.Variants[p.i].ID.Variant
		ok, err := g.eng.OutputKey(engine.VariantID{App: a.key, Variant: name})
		if err != nil {
			g.log.Warn().Err(err).Str("app", a.m.Name).Str("variant", name).Msg("curve cache: cannot key the variant; measuring")
			return nil
		}
		*p.v = curveVariant{Name: name, Index: p.i, Engine: ok}
	}
	var err error
	if k.ValidationSHA256, err = cachefile.SHA256(a.m.Path(a.m.Validation.File)); err != nil {
		if os.IsNotExist(err) {
			return nil // measuring fails, naming the file
		}
		g.log.Warn().Err(err).Str("app", a.m.Name).Msg("curve cache: cannot hash the validation split; measuring")
		return nil
	}
	if _, err := json.Marshal(k); err != nil { // a utility that is not a finite number
		g.log.Warn().Err(err).Str("app", a.m.Name).Msg("curve cache: cannot encode the key; measuring")
		return nil
	}
	return k
}

// curveFile is the cache file of key (which curveKey marshalled).
func (g *Gateway) curveFile(key *curveKey) string {
	// Application and variant names cannot contain '.' (manifest.nameRE), so
	// the prefix is unambiguous.
	name := cachefile.Name(key.App+"."+key.Cheap.Name+"."+key.Better.Name, key)
	return filepath.Join(g.cfg.Engine.ProfileCache, curveDir, name)
}

// sameCurveKey reports whether a and b are the same key (both not nil).
func sameCurveKey(a, b *curveKey) bool {
	return a != nil && b != nil && cachefile.SameKey(a, b)
}

// readCurve returns the curve file holds under key, when it does.
func (g *Gateway) readCurve(a *appRuntime, key *curveKey, file string) (scheduler.CascadeConfig, bool) {
	if key == nil {
		return scheduler.CascadeConfig{}, false
	}
	b, err := os.ReadFile(file)
	if err != nil {
		if !os.IsNotExist(err) {
			g.log.Warn().Err(err).Str("app", a.m.Name).Str("cache", file).Msg("curve cache: unreadable; measuring")
		}
		return scheduler.CascadeConfig{}, false
	}
	var e curveEntry
	if err := json.Unmarshal(b, &e); err != nil {
		g.log.Warn().Err(err).Str("app", a.m.Name).Str("cache", file).Msg("curve cache: corrupt entry; measuring")
		return scheduler.CascadeConfig{}, false
	}
	if !sameCurveKey(key, &e.Key) || !curveFits(e.Curve, key) {
		g.log.Warn().Str("app", a.m.Name).Str("cache", file).Msg("curve cache: entry does not match its key; measuring")
		return scheduler.CascadeConfig{}, false
	}
	return e.Curve, true
}

// curveFits reports whether c is shaped as scheduler.CascadeFromOutputs makes
// a curve under key: its variants, at least one point, and a class row per
// point when there are class gains.
func curveFits(c scheduler.CascadeConfig, key *curveKey) bool {
	if c.Cheap != key.Cheap.Index || c.Better != key.Better.Index || len(c.Curve) == 0 {
		return false
	}
	for _, m := range [][][]float64{c.ClassGain, c.ClassEscalated} {
		if len(m) != 0 && len(m) != len(c.Curve) {
			return false
		}
		for _, row := range m {
			if len(row) != key.Classes {
				return false
			}
		}
	}
	return true
}

// writeCurve stores c, measured on rows of the split's samples, under key in
// file, atomically, and removes the entries of the same application and pair
// stored under other keys. Failures are logged.
func (g *Gateway) writeCurve(a *appRuntime, key *curveKey, file string, c scheduler.CascadeConfig, samples, rows int) {
	e := curveEntry{Key: *key, Measured: g.now().UTC(), Samples: samples, Rows: rows, Curve: c}
	if err := cachefile.Store(file, e, "curve", a.m.Name+"."+key.Cheap.Name+"."+key.Better.Name+".*.json"); err != nil {
		g.log.Warn().Err(err).Str("app", a.m.Name).Str("cache", file).Msg("curve cache: cannot store")
	}
}
