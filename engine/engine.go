package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
	ort "github.com/yalue/onnxruntime_go"

	"github.com/sneakgate/sneakgate/manifest"
)

// Engine runs the model variants of registered applications on ONNX Runtime and
// keeps track of which are resident. See the package doc for the concurrency
// contract.
type Engine struct {
	opts       Options
	prov       providerConfig // the provider sessions use (CPU after a fallback)
	provStatus ProviderStatus
	log        zerolog.Logger
	so         *ort.SessionOptions // every session's options (but OnCPU applications')
	cpuSO      *ort.SessionOptions // OnCPU applications' sessions when prov is not the CPU; nil until the first
	checkSO    *ort.SessionOptions // the I/O checks' temporary sessions: one thread, no optimisation
	sleep      func(time.Duration) // the profiler's pause before a measured run (tests replace it)
	measured   func([][]float32)   // if set, sees the inputs of every measured profile run first (tests)
	// Test hooks, nil outside tests: lookedUp is called by Load between finding
	// its variant and locking it, creating by load with the variant counted and
	// its session about to be created, closeWaits by Close about to wait for the
	// Unregister calls in progress.
	lookedUp   func(VariantID)
	creating   func(VariantID)
	closeWaits func()

	mu        sync.RWMutex
	closed    bool
	apps      map[string]*manifest.App
	variants  map[VariantID]*variant
	order     []VariantID // registration order
	usedBytes int64       // MemBytes of resident and loading variants
	usedCount int
	leaving   sync.WaitGroup // Unregister calls unloading the variants they took away
}

// New creates an engine. The first engine of a process initialises ONNX Runtime
// from Options.LibraryPath (or $SNEAKGATE_ORT_LIB); the runtime then stays
// initialised until the process exits. New returns an error wrapping ErrOptions,
// ErrNoLibrary, ErrLibraryMismatch or ErrProvider.
func New(opts Options) (*Engine, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	p, err := providerFor(o.Provider, o.ProviderOptions)
	if err != nil {
		return nil, err
	}
	o.Provider = p.Name
	if err := initEnv(o.LibraryPath); err != nil {
		return nil, err
	}
	p, pst, err := decideProvider(p, probeProvider(p), o.FallbackToCPU)
	if err != nil {
		return nil, err
	}
	if pst.FellBack() {
		o.Logger.Warn().Err(pst.Fallback).Str("requested", pst.Requested).Str("provider", pst.Active).
			Msgf("execution provider %s unavailable: running on the CPU instead", pst.Requested)
	}
	so, err := sessionOptions(&o, p)
	if err != nil {
		return nil, err
	}
	cso, err := ort.NewSessionOptions()
	if err == nil {
		err = errors.Join(cso.SetIntraOpNumThreads(1), cso.SetInterOpNumThreads(1),
			cso.SetGraphOptimizationLevel(ort.GraphOptimizationLevelDisableAll))
	}
	if err != nil {
		so.Destroy()
		if cso != nil {
			cso.Destroy()
		}
		return nil, fmt.Errorf("engine: check session options: %w", err)
	}
	e := &Engine{opts: o, prov: p, provStatus: pst, log: o.Logger,
		so: so, checkSO: cso, sleep: time.Sleep, apps: map[string]*manifest.App{}, variants: map[VariantID]*variant{}}
	e.log.Info().Str("ort", runtimeVersion()).Str("provider", p.Name).Str("requested_provider", pst.Requested).
		Int("intra_op_threads", o.IntraOpThreads).Int("inter_op_threads", o.InterOpThreads).
		Int64("memory_budget_bytes", o.MemoryBudgetBytes).Int("max_resident", o.MaxResident).
		Msg("engine ready")
	return e, nil
}

// Register adds an application's variants. It validates the manifest and checks
// that every variant's file exists, but loads nothing. The engine keeps app;
// the caller must not modify it afterwards. Register returns an error wrapping
// manifest.ErrInvalid, ErrModelFile, ErrAlreadyRegistered or ErrClosed.
func (e *Engine) Register(app *manifest.App, opts ...RegisterOption) error {
	return e.RegisterAs(app.Name, app, opts...)
}

// RegisterOption is an option of Register and RegisterAs.
type RegisterOption func(*registerOptions)

type registerOptions struct{ cpu bool }

// OnCPU runs the application's variants on the CPU provider whatever provider
// the engine's other sessions use: for a model the GPU provider cannot run (on
// an H200, the CUDA provider of the ONNX Runtime scripts/install-ort-gpu.sh
// installs kills the process creating a session for the vad models,
// docs/deployment.md, "GPU"). The CPU sessions take the engine's thread and
// session settings, but not Options.PadBatches (on the CPU padding only costs);
// their profiles and output keys name the CPU provider. On an engine that runs
// on the CPU already it changes nothing.
func OnCPU() RegisterOption { return func(o *registerOptions) { o.cpu = true } }

// RegisterAs is Register under key instead of the application's name: the
// variants' ids are VariantID{App: key, ...}. A gateway reloading a changed
// application registers the new version under a new key while the old one still
// serves, then unregisters the old key. Profile caches are named by the
// application's name, so every version shares them.
func (e *Engine) RegisterAs(key string, app *manifest.App, opts ...RegisterOption) error {
	var ro registerOptions
	for _, o := range opts {
		o(&ro)
	}
	onCPU := ro.cpu && e.prov.Name != ProviderCPU
	if err := app.Validate(); err != nil {
		return fmt.Errorf("engine: register %s: %w", app.Name, err)
	}
	if key == "" {
		return fmt.Errorf("engine: register %s: empty key", app.Name)
	}
	vs := make([]*variant, len(app.Variants))
	for i := range app.Variants {
		v, err := newVariant(key, app, &app.Variants[i], e.opts.maxBatch())
		if err != nil {
			return fmt.Errorf("engine: register: %w", err)
		}
		if err := e.checkBatchBytes(v); err != nil {
			return fmt.Errorf("engine: register: %w", err)
		}
		v.onCPU = onCPU
		vs[i] = v
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	if onCPU && e.cpuSO == nil {
		so, err := sessionOptions(&e.opts, providerConfig{Name: ProviderCPU})
		if err != nil {
			return fmt.Errorf("engine: register %s on the CPU: %w", app.Name, err)
		}
		e.cpuSO = so
	}
	if _, ok := e.apps[key]; ok {
		return fmt.Errorf("%w: %s", ErrAlreadyRegistered, key)
	}
	e.apps[key] = app
	for _, v := range vs {
		e.variants[v.id] = v
		e.order = append(e.order, v.id)
	}
	return nil
}

// BatchBytesLimit is the most bytes of batch buffers (batchBytes) Register
// accepts for one variant, unless Options.MemoryBudgetBytes is larger: then
// the budget is the limit. 1 GiB: two thirds of the memory the systemd unit
// lets the gateway have (MemoryMax=1500M), and 17 times what the engine takes
// for a 3x224x224 image model at the default largest batch of 32 (55 MiB).
const BatchBytesLimit = 1 << 30

// batchBytes is what the engine allocates for v's batches at the largest batch
// size: kept, the input and output buffers a resident session keeps (counted
// in MemBytes), and profile, the inputs Profile generates to measure it
// (profilePool: at least two of the largest batches). Both scale with the
// largest batch size times the input size, and they are allocated together
// while the variant is profiled.
func (e *Engine) batchBytes(v *variant) (kept, profile int64) {
	size := v.app.InputSize
	return v.mem - v.fileBytes, 4 * int64(size) * int64(profilePool(size, e.opts.BatchSizes, e.opts.ProfileRuns))
}

// checkBatchBytes refuses a variant whose batch buffers exceed
// BatchBytesLimit (or the memory budget, when larger), before anything is
// allocated: at a large batch size and a large input (a batch of 65536
// 3x224x224 images is 39 GB, and the profile's inputs twice that) the first
// profile was a fatal out of memory, not an error.
func (e *Engine) checkBatchBytes(v *variant) error {
	limit := max(int64(BatchBytesLimit), e.opts.MemoryBudgetBytes)
	kept, profile := e.batchBytes(v)
	if kept+profile <= limit {
		return nil
	}
	return fmt.Errorf("%w: application %s, variant %s (%s): input size %d values (%d bytes a sample) at batch size %d "+
		"needs %d bytes (%.1f GiB) of batch buffers (%d kept while resident, %d of profile inputs), "+
		"over the limit of %d bytes (%.1f GiB: the larger of %d and the memory budget); "+
		"lower the largest batch size or raise the memory budget",
		ErrBatchMemory, v.app.Name, v.spec.Name, v.id, v.app.InputSize, 4*v.app.InputSize, e.opts.maxBatch(),
		kept+profile, gib(kept+profile), kept, profile, limit, gib(limit), int64(BatchBytesLimit))
}

func gib(n int64) float64 { return float64(n) / (1 << 30) }

// Unregister unloads the variants registered under key (waiting for a Load,
// Unload or Profile of them in progress) and forgets them; later calls with
// their ids fail with ErrUnknownVariant. The caller must not Run them any more.
// Unregistering an unknown key does nothing.
func (e *Engine) Unregister(key string) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	if _, ok := e.apps[key]; !ok {
		e.mu.Unlock()
		return nil
	}
	delete(e.apps, key)
	e.leaving.Add(1)
	defer e.leaving.Done()
	var vs []*variant
	e.order = slices.DeleteFunc(e.order, func(id VariantID) bool {
		if id.App != key {
			return false
		}
		vs = append(vs, e.variants[id])
		delete(e.variants, id)
		return true
	})
	e.mu.Unlock()
	return errors.Join(e.unloadAll(vs)...)
}

// unloadAll unloads vs, each under its life lock (waiting for its running
// batch), and returns one error per variant.
func (e *Engine) unloadAll(vs []*variant) []error {
	errs := make([]error, 0, len(vs))
	for _, v := range vs {
		v.life.Lock()
		_, err := e.unload(v)
		v.life.Unlock()
		errs = append(errs, err)
	}
	return errs
}

// lookup returns the registered variant id, or an error wrapping ErrClosed or
// ErrUnknownVariant.
func (e *Engine) lookup(id VariantID) (*variant, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return nil, ErrClosed
	}
	v, ok := e.variants[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownVariant, id)
	}
	return v, nil
}

// Load makes a variant resident: it creates the ONNX Runtime session and returns
// how long that took. Loading a resident variant does nothing and returns 0.
// The first Load of a variant also checks the model's real inputs and output
// against the manifest (a temporary session, not included in the returned
// duration). Load returns an error wrapping ErrUnknownVariant (also when the
// variant is unregistered while Load waits for it), ErrOverBudget (nothing is
// evicted: the caller unloads first), ErrModelMismatch, ErrPanic (a
// *PanicError: the check or the session's creation panicked; the budget is
// released) or ErrClosed, or ONNX Runtime's error.
func (e *Engine) Load(id VariantID) (time.Duration, error) {
	v, err := e.lookup(id)
	if err != nil {
		return 0, err
	}
	if e.lookedUp != nil {
		e.lookedUp(id)
	}
	v.life.Lock()
	defer v.life.Unlock()
	return e.load(v, true)
}

// load is Load with v.life held. Unbudgeted (budgeted false), v is loaded
// without counting against the residency budgets (and its unload does not
// count either): ProfileBeside's temporary sessions.
func (e *Engine) load(v *variant, budgeted bool) (time.Duration, error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return 0, ErrClosed
	}
	if e.variants[v.id] != v {
		// Unregistered since it was looked up: its Unregister may have
		// unloaded it already and would never see a session made now.
		e.mu.Unlock()
		return 0, fmt.Errorf("%w: %s", ErrUnknownVariant, v.id)
	}
	if v.sess != nil {
		e.mu.Unlock()
		return 0, nil
	}
	if budgeted {
		if err := e.reserveLocked(v); err != nil {
			e.mu.Unlock()
			return 0, err
		}
	}
	e.mu.Unlock()
	s, d, err := e.create(v)
	if err != nil {
		if budgeted {
			e.release(v)
		}
		return 0, err
	}
	e.mu.Lock()
	v.sess, v.lastLoad, v.loaded, v.unbudgeted = s, d, true, !budgeted
	e.mu.Unlock()
	e.log.Debug().Str("variant", v.id.String()).Dur("took", d).Int64("mem_bytes", v.mem).Msg("loaded")
	return d, nil
}

// create runs the I/O check of v and makes its session, and returns the
// session and how long making it took. A panic in either is returned as a
// *PanicError (what the session had allocated by then is not freed).
func (e *Engine) create(v *variant) (_ *session, _ time.Duration, err error) {
	defer recovered(v, "load", &err)
	if e.creating != nil {
		e.creating(v.id)
	}
	if err := e.check(v); err != nil {
		return nil, 0, err
	}
	so := e.so
	if v.onCPU {
		e.mu.RLock()
		so = e.cpuSO // set before v was registered, destroyed only by Close after its loads
		e.mu.RUnlock()
	}
	defer e.guard(v)() // released after a panic too: only a dead process leaves the marker
	t0 := e.opts.Now()
	s, err := newSession(v, so, e.opts.maxBatch())
	d := e.opts.Now().Sub(t0)
	if err != nil {
		return nil, 0, err
	}
	if e.padded(v) {
		s.padTo = e.opts.BatchSizes
	}
	return s, d, nil
}

// recovered, deferred by a function of v with the address of its error
// result, returns a panic of the function as a *PanicError of op in that
// result instead of letting it unwind further.
func recovered(v *variant, op string, err *error) {
	if p := recover(); p != nil {
		*err = &PanicError{App: v.app.Name, Variant: v.id, Op: op, Value: p, Stack: debug.Stack()}
	}
}

// reserveLocked counts v against the budgets, or returns ErrOverBudget.
func (e *Engine) reserveLocked(v *variant) error {
	if m := e.opts.MaxResident; m > 0 && e.usedCount+1 > m {
		return fmt.Errorf("%w: loading %s would make %d resident variants, the budget is %d",
			ErrOverBudget, v.id, e.usedCount+1, m)
	}
	if m := e.opts.MemoryBudgetBytes; m > 0 && e.usedBytes+v.mem > m {
		return fmt.Errorf("%w: %s needs %d bytes, %d of %d are in use",
			ErrOverBudget, v.id, v.mem, e.usedBytes, m)
	}
	e.usedBytes += v.mem
	e.usedCount++
	return nil
}

func (e *Engine) release(v *variant) {
	e.mu.Lock()
	e.usedBytes -= v.mem
	e.usedCount--
	e.mu.Unlock()
}

// check runs the I/O check of v once; v.life is held.
func (e *Engine) check(v *variant) error {
	if v.checked {
		return nil
	}
	ins, outs, err := ort.GetInputOutputInfoWithOptions(v.path, e.checkSO)
	if err != nil {
		return fmt.Errorf("engine: load %s: reading %s: %w", v.id, v.path, err)
	}
	if err := checkIO(v.id, &v.spec, v.path, v.row, ins, outs); err != nil {
		return err
	}
	for _, o := range outs {
		if o.Name == v.spec.Output.Name {
			v.outDims = o.Dimensions.Clone()
		}
	}
	v.checked = true
	return nil
}

// Unload destroys a variant's session, after any batch running on it finishes,
// and returns how long the destruction took. Unloading a variant that is not
// resident does nothing and returns 0. Unload returns an error wrapping
// ErrUnknownVariant or ErrClosed, or ONNX Runtime's error (the variant is then
// not resident all the same).
func (e *Engine) Unload(id VariantID) (time.Duration, error) {
	v, err := e.lookup(id)
	if err != nil {
		return 0, err
	}
	v.life.Lock()
	defer v.life.Unlock()
	return e.unload(v)
}

// unload is Unload with v.life held.
func (e *Engine) unload(v *variant) (time.Duration, error) {
	e.mu.Lock()
	s := v.sess
	v.sess = nil
	e.mu.Unlock()
	if s == nil {
		return 0, nil
	}
	d, err := s.close(e.opts.Now)
	e.mu.Lock()
	if !v.unbudgeted {
		e.usedBytes -= v.mem
		e.usedCount--
	}
	v.unbudgeted = false
	v.lastUnload, v.unloaded = d, true
	e.mu.Unlock()
	e.log.Debug().Str("variant", v.id.String()).Dur("took", d).Msg("unloaded")
	return d, err
}

// Run performs one batched forward pass of a resident variant over inputs, one
// request each, and returns each request's class distribution (K values; a
// score output p is returned as [1-p, p]). Every input must hold the
// application's input_size values; Run does not keep them. Run returns an error
// wrapping ErrUnknownVariant, ErrNotLoaded, ErrBadInput, ErrModelMismatch (the
// output's shape is wrong), ErrPanic (a *PanicError: the pass panicked) or
// ErrClosed, or ONNX Runtime's error.
func (e *Engine) Run(id VariantID, inputs [][]float32) ([][]float64, error) {
	e.mu.RLock()
	if e.closed {
		e.mu.RUnlock()
		return nil, ErrClosed
	}
	v := e.variants[id]
	var s *session
	if v != nil {
		s = v.sess
	}
	e.mu.RUnlock()
	switch {
	case v == nil:
		return nil, fmt.Errorf("%w: %s", ErrUnknownVariant, id)
	case s == nil:
		return nil, fmt.Errorf("%w: %s", ErrNotLoaded, id)
	case len(inputs) == 0:
		return nil, fmt.Errorf("%w: %s: no inputs", ErrBadInput, id)
	}
	return runOn(v, s, inputs, 0)
}

// Warm runs unmeasured forward passes of a resident variant, at batch (at most
// the largest profiled batch size) and at 1, and discards their answers. A
// session's first passes are slower than its steady ones (ONNX Runtime sizes
// its memory arena and plans each new input shape on first use, and the engine
// creates each batch size's tensors then): on the bundled models from a few
// hundred microseconds to several milliseconds more per pass
// (docs/benchmarks.md, "Warm sessions before the first request"). Passes at
// other sizes after these two cost about what steady ones do, since the arena
// then holds the largest. Every input value is 0, or the end of the
// application's input_range nearest to 0. The two passes hold the variant
// against Load and Unload, like RunAll; both run even when the first fails, and
// Warm returns their errors joined: those Run returns (ErrUnknownVariant,
// ErrNotLoaded, ErrModelMismatch, ErrPanic, ErrClosed, or ONNX Runtime's),
// each saying which batch size failed.
func (e *Engine) Warm(id VariantID, batch int) error {
	v, err := e.lookup(id)
	if err != nil {
		return err
	}
	v.life.Lock()
	defer v.life.Unlock()
	e.mu.RLock()
	s := v.sess
	e.mu.RUnlock()
	if s == nil {
		return fmt.Errorf("%w: %s", ErrNotLoaded, id)
	}
	batch = min(max(batch, 1), e.opts.maxBatch())
	x := make([]float32, v.app.InputSize)
	if r := v.app.InputRange; r != nil {
		fill := float32(min(max(0, r[0]), r[1]))
		for i := range x {
			x[i] = fill
		}
	}
	in := make([][]float32, batch)
	for i := range in {
		in[i] = x
	}
	// Guarded like Profile's runs: with the profile from the cache these are the
	// session's first passes on its provider.
	defer e.guard(v)()
	var errs []error
	for _, b := range []int{batch, 1} {
		if _, err := runOn(v, s, in[:b], 0); err != nil {
			errs = append(errs, fmt.Errorf("warm-up pass at batch %d: %w", b, err))
		}
	}
	return errors.Join(errs...)
}

// runOn checks inputs (numbered from first in errors) and runs one forward pass
// of v's session s over them. A panic in the pass is returned as a *PanicError:
// every forward pass of the engine (Run, Warm, RunAll, Profile) runs here.
func runOn(v *variant, s *session, inputs [][]float32, first int) (_ [][]float64, err error) {
	defer recovered(v, "run", &err)
	for i, x := range inputs {
		if len(x) != v.app.InputSize {
			return nil, fmt.Errorf("%w: %s: input %d has %d values, want %d",
				ErrBadInput, v.id, first+i, len(x), v.app.InputSize)
		}
	}
	k := v.classes
	flat := make([]float64, len(inputs)*k)
	out := make([][]float64, len(inputs))
	for i := range out {
		out[i] = flat[i*k : (i+1)*k : (i+1)*k]
	}
	if err := s.run(inputs, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Resident lists the resident variants in registration order.
func (e *Engine) Resident() []VariantID {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var ids []VariantID
	for _, id := range e.order {
		if e.variants[id].sess != nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// Budget returns the residency budgets: bytes of MemBytes and a count of
// variants; 0 means unlimited.
func (e *Engine) Budget() (bytes int64, count int) {
	return e.opts.MemoryBudgetBytes, e.opts.MaxResident
}

// Usage returns the summed MemBytes and the count of resident variants,
// including any being loaded right now.
func (e *Engine) Usage() (bytes int64, count int) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.usedBytes, e.usedCount
}

// MemBytes returns what a variant counts against the memory budget (see the
// package doc), or an error wrapping ErrUnknownVariant or ErrClosed.
func (e *Engine) MemBytes(id VariantID) (int64, error) {
	v, err := e.lookup(id)
	if err != nil {
		return 0, err
	}
	return v.mem, nil
}

// Variants lists the registered variants of app in manifest order (all apps'
// when app is empty).
func (e *Engine) Variants(app string) []VariantID {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var ids []VariantID
	for _, id := range e.order {
		if app == "" || id.App == app {
			ids = append(ids, id)
		}
	}
	return ids
}

// Close unloads every variant, waiting for running batches and for Unregister
// calls in progress, and releases the engine's session options. Every later
// call returns ErrClosed; Close itself may be called again and then returns
// nil. The ONNX Runtime environment stays initialised for other engines of the
// process.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	vs := make([]*variant, 0, len(e.order))
	for _, id := range e.order {
		vs = append(vs, e.variants[id])
	}
	e.mu.Unlock()
	errs := e.unloadAll(vs)
	// Variants unregistered before Close are not in vs; a Load of one may still
	// be creating its session with e.so, which its Unregister waits for.
	if e.closeWaits != nil {
		e.closeWaits()
	}
	e.leaving.Wait()
	errs = append(errs, e.so.Destroy(), e.checkSO.Destroy())
	if e.cpuSO != nil {
		errs = append(errs, e.cpuSO.Destroy())
	}
	return errors.Join(errs...)
}

// RunAll runs inputs through variant id in batches of at most batch and returns
// one class distribution per input: a measurement over a whole split (a cascade's
// operating curve, a model's accuracy). A variant that is not resident is loaded
// for the duration outside the residency budget, like ProfileBeside, and
// unloaded again (also when a pass fails or panics: ErrPanic); a resident one
// stays.
func (e *Engine) RunAll(ctx context.Context, id VariantID, inputs [][]float32, batch int) ([][]float64, error) {
	v, err := e.lookup(id)
	if err != nil {
		return nil, err
	}
	v.life.Lock()
	defer v.life.Unlock()
	e.mu.RLock()
	resident := v.sess != nil
	e.mu.RUnlock()
	if !resident {
		if _, err := e.load(v, false); err != nil {
			return nil, err
		}
		defer e.unload(v) // only frees memory
	}
	batch = max(1, batch)
	out := make([][]float64, 0, len(inputs))
	for i := 0; i < len(inputs); i += batch {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		e.mu.RLock()
		s := v.sess
		e.mu.RUnlock()
		res, err := runOn(v, s, inputs[i:min(i+batch, len(inputs))], i)
		if err != nil {
			return nil, err
		}
		out = append(out, res...)
	}
	return out, nil
}
