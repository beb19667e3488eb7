package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// appRuntime is one served version of an application. A reload that changes an
// application makes a new appRuntime; requests hold the one they were admitted
// under until the loop moves them to the new one (loop.applySwap).
type appRuntime struct {
	m       *manifest.App
	sched   *scheduler.App
	est     estimator
	estName string
	// monitor watches the estimates against the answers of the app's most
	// accurate variant (monitor-only: the scheduler keeps trusting the estimates;
	// docs/evaluation.md shows acting on it costs more than it saves).
	monitor    *sneakpeek.Guard
	monitorRef string // the reference variant's name
	// shift, if not nil, corrects each estimate for the live label mix.
	shift *sneakpeek.PriorShift
	// diff, if not nil, is the per-sample difficulty model (see AppConfig.ClassBased).
	diff *sneakpeek.Difficulty
	// cascade is the version's cascade curve when the policy is the cascade
	// (measured by newPolicy at start-up, which gives it to NewCascade, and by
	// Reload).
	cascade *scheduler.CascadeConfig
	// peek is the version's peek curve when scheduler.peek names it
	// (measured by newPolicy at start-up and by Reload, given to the policy's
	// ConfigurePeek).
	peek *scheduler.CascadeConfig

	// key registers the version's variants in the engine: the application's
	// name for the version loaded at start-up, name#N for reloaded ones.
	key string
	// conf is the configuration entry it was built from; fingerprint hashes it
	// with the manifest and the files it names that the gateway reads (reload
	// compares them).
	conf        AppConfig
	fingerprint string
	// collectors are its metrics (the monitor's gauges), unregistered when the
	// version stops serving.
	collectors []prometheus.Collector
}

// app returns the served version of the application name.
func (g *Gateway) app(name string) (*appRuntime, bool) {
	a, ok := (*g.apps.Load())[name]
	return a, ok
}

// appSet returns the served applications by name. The map is never modified:
// a reload replaces it.
func (g *Gateway) appSet() map[string]*appRuntime { return *g.apps.Load() }

// loadApps builds every configured application (no engine work) and the
// protocol environment that looks them up.
func (g *Gateway) loadApps() error {
	apps := map[string]*appRuntime{}
	for i, ac := range g.cfg.Apps {
		a, err := g.buildApp(i, ac)
		if err != nil {
			return err
		}
		if _, dup := apps[a.m.Name]; dup {
			return fmt.Errorf("gateway: %w: apps[%d]: application %q configured twice", ErrConfig, i, a.m.Name)
		}
		a.key = a.m.Name
		apps[a.m.Name] = a
	}
	g.apps.Store(&apps)
	for _, a := range apps {
		g.registerAppMetrics(a)
	}
	allow, err := protocol.NewAllowList(g.cfg.MQTT.ReplyAllow)
	if err != nil {
		return fmt.Errorf("gateway: %w: mqtt.reply_allow: %v", ErrConfig, err)
	}
	g.env = protocol.Env{
		Prefix: g.cfg.MQTT.TopicPrefix,
		Limits: protocol.Limits{MaxPayloadBytes: g.cfg.Admission.MaxPayloadBytes,
			MinDeadline: g.cfg.Admission.MinDeadline, MaxDeadline: g.cfg.Admission.MaxDeadline},
		ReplyAllow: allow,
		App: func(name string) (protocol.AppSpec, bool) {
			a, ok := g.app(name)
			if !ok {
				return protocol.AppSpec{}, false
			}
			return protocol.AppSpec{InputSize: a.m.InputSize, Range: a.m.InputRange,
				DefaultDeadline: time.Duration(a.m.DefaultDeadlineMS) * time.Millisecond}, true
		},
	}
	return nil
}

// buildApp loads and validates the application of configuration entry i: its
// manifest, estimator, scheduler view and monitor. It touches neither the engine
// nor the metrics registry. A panic in it is returned as an error naming the
// entry (recoverApp).
func (g *Gateway) buildApp(i int, ac AppConfig) (_ *appRuntime, err error) {
	defer recoverApp(&err, "", fmt.Sprintf("apps[%d] (%s)", i, ac.Manifest), "building the application")
	m, err := manifest.Load(ac.Manifest)
	if err != nil {
		return nil, fmt.Errorf("gateway: apps[%d]: %w", i, err)
	}
	if ac.DefaultDeadline > 0 {
		m.DefaultDeadlineMS = ac.DefaultDeadline.Milliseconds()
	}
	// A request that names no deadline gets this budget, which must lie within
	// the limits every other budget is held to (docs/protocol.md).
	if d, lim := time.Duration(m.DefaultDeadlineMS)*time.Millisecond, g.cfg.Admission; d < lim.MinDeadline || d > lim.MaxDeadline {
		return nil, fmt.Errorf("gateway: %w: apps[%d] (%s): default deadline %s is outside admission.min_deadline..max_deadline (%s..%s)",
			ErrConfig, i, m.Name, d, lim.MinDeadline, lim.MaxDeadline)
	}
	if need, enc := minPayload(m); need > g.cfg.Admission.MaxPayloadBytes {
		return nil, fmt.Errorf("gateway: %w: apps[%d] (%s): input_size %d needs at least %d bytes of payload (%s), over admission.max_payload_bytes (%d): every request would be rejected",
			ErrConfig, i, m.Name, m.InputSize, need, enc, g.cfg.Admission.MaxPayloadBytes)
	}
	a := &appRuntime{m: m, conf: ac}
	if a.fingerprint, err = fingerprint(m, ac); err != nil {
		return nil, fmt.Errorf("gateway: apps[%d]: %w", i, err)
	}
	if a.sched, err = scheduler.NewApp(m); err != nil {
		return nil, fmt.Errorf("gateway: apps[%d]: %w", i, err)
	}
	if len(m.Estimators) == 0 {
		if ac.LabelShift != nil && *ac.LabelShift {
			return nil, fmt.Errorf("gateway: %w: apps[%d].label_shift: %s has no estimator", ErrConfig, i, m.Name)
		}
		return a, nil
	}
	est := m.Estimators[0]
	if ac.Estimator != "" {
		found := false
		for _, e := range m.Estimators {
			if e.Name == ac.Estimator {
				est, found = e, true
			}
		}
		if !found {
			return nil, fmt.Errorf("gateway: %w: apps[%d].estimator: %q is not in %s", ErrConfig, i, ac.Estimator, ac.Manifest)
		}
	}
	if a.est, err = loadEstimator(m, est); err != nil {
		return nil, fmt.Errorf("gateway: apps[%d]: %w", i, err) // names the estimator, the app and the file
	}
	a.estName = "sneakpeek-" + est.Name
	var ref int
	a.monitor, ref = sneakpeek.NewGuardFor(m, sneakpeek.GuardOptions{})
	a.monitorRef = m.Variants[ref].Name
	if m.Difficulty != nil && !ac.ClassBased && m.Difficulty.Estimator == est.Name {
		if a.diff, err = sneakpeek.LoadDifficulty(m); err != nil {
			return nil, fmt.Errorf("gateway: apps[%d]: %w", i, err) // names the difficulty model, the app and the file
		}
	}
	if ac.LabelShift == nil || *ac.LabelShift {
		marginal, answers, err := g.shiftStart(m, a.est, a.sched.Utility)
		switch {
		case err == nil:
			a.shift = sneakpeek.NewPriorShift(marginal, sneakpeek.ShiftOptions{Answers: answers})
		case ac.LabelShift != nil:
			return nil, fmt.Errorf("gateway: apps[%d].label_shift: %w", i, err)
		default:
			// On by default: an application packaged without its validation
			// split (THIRD_PARTY.md) serves without the correction.
			g.log.Warn().Err(err).Str("app", m.Name).Msg("label-shift correction off: its starting prior, the estimator's mean output on the validation split, cannot be computed (set apps[].label_shift: false to silence this)")
		}
	}
	return a, nil
}

// registerAppMetrics exports a's monitor; unregisterAppMetrics takes it back.
func (g *Gateway) registerAppMetrics(a *appRuntime) {
	if a.monitor != nil {
		a.collectors = g.m.registerMonitor(a.m.Name, a.monitor)
	}
}

func (g *Gateway) unregisterAppMetrics(a *appRuntime) {
	for _, c := range a.collectors {
		g.m.reg.Unregister(c)
	}
	a.collectors = nil
}

// fingerprint hashes an application's configuration entry, its manifest and
// every file the manifest names that the gateway reads: its variants', its
// estimators', and its difficulty model's and validation split's (read only in
// some configurations: buildApp, shift.go, cascade.go); equal fingerprints mean
// a reload has nothing to do for the application. A difficulty model or
// validation split that cannot be opened is hashed as such, not an error: the
// gateway fails for it only where it reads it. The samples file is read by the
// simulator and the evaluation tools (devices/sim.go), not by the gateway.
func fingerprint(m *manifest.App, ac AppConfig) (string, error) {
	h := sha256.New()
	conf, _ := json.Marshal(ac) // plain fields: cannot fail
	h.Write(conf)
	files := []string{ac.Manifest}
	for _, v := range m.Variants {
		files = append(files, m.Path(v.File))
	}
	for _, e := range m.Estimators {
		files = append(files, m.Path(e.File))
	}
	var optional []string
	if m.Difficulty != nil {
		optional = append(optional, m.Path(m.Difficulty.File))
	}
	if m.Validation != nil {
		optional = append(optional, m.Path(m.Validation.File))
	}
	for i, p := range append(files, optional...) {
		f, err := os.Open(p)
		if err != nil && i >= len(files) {
			fmt.Fprintf(h, "\x00%s\x01unreadable", p)
			continue
		}
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "\x00%s\x00", p)
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// prepareEngine registers a's variants under a.key, measures (or reads cached)
// profiles and fills the scheduler's latency tables. beside profiles outside the
// residency budget, next to variants that serve (a reload). A panic in it is
// returned as an error naming the application (recoverApp; the engine returns
// a panic in a variant's load or forward pass as engine.PanicError itself).
func (g *Gateway) prepareEngine(ctx context.Context, a *appRuntime, beside bool) (err error) {
	defer recoverApp(&err, a.m.Name, "", "registering and profiling its variants")
	var opts []engine.RegisterOption
	pin, pinned := g.lguard.pinned(a.m.Name)
	if a.conf.Provider == engine.ProviderCPU || pinned {
		opts = append(opts, engine.OnCPU())
		switch p := g.eng.Provider().Active; {
		case p == engine.ProviderCPU:
		case pinned && a.conf.Provider != engine.ProviderCPU:
			g.log.Error().Str("app", a.m.Name).Str("provider", engine.ProviderCPU).Str("engine_provider", p).
				Str("died_with", pin.Variant).Time("since", pin.Since).
				Msgf("application runs on the CPU provider: a run died creating or first running %s/%s on %s (%s; apps[].provider: cpu makes it permanent)",
					a.m.Name, pin.Variant, pin.Provider, pinsPath(g.cfg.Store.Path))
		default:
			g.log.Info().Str("app", a.m.Name).Str("provider", engine.ProviderCPU).Str("engine_provider", p).
				Msg("application runs on the CPU provider (apps[].provider)")
		}
	}
	g.lguard.track(a.key, a.m.Name, a.fingerprint)
	if err := g.eng.RegisterAs(a.key, a.m, opts...); err != nil {
		if errors.Is(err, engine.ErrBatchMemory) {
			// The engine's own words are "the largest batch size" and "the memory budget".
			return fmt.Errorf("gateway: %w (engine.batch_sizes, engine.memory_budget_mb)", err)
		}
		return fmt.Errorf("gateway: %w", err)
	}
	ids := g.eng.Variants(a.key)
	profile := g.eng.Profile
	if beside {
		profile = g.eng.ProfileBeside
	}
	if err := profile(ctx, ids...); err != nil {
		return fmt.Errorf("gateway: engine profile: %w", err)
	}
	maxB := g.cfg.Scheduler.MaxBatch
	for _, v := range a.sched.Variants {
		p, ok := g.eng.ProfileOf(engine.VariantID{App: a.key, Variant: v.ID.Variant})
		if !ok {
			return fmt.Errorf("gateway: engine: no profile for %s", v.ID)
		}
		v.Latency = make([]time.Duration, maxB+1)
		for b := 1; b <= maxB; b++ {
			v.Latency[b] = p.LatencyAt(b)
		}
		v.Load, v.Unload, v.MemBytes = p.Load, p.Unload, p.MemBytes
		g.log.Debug().Str("variant", v.ID.String()).Int64("b1_us", v.Latency[1].Microseconds()).
			Int64("bmax_us", v.Latency[maxB].Microseconds()).Int64("load_us", v.Load.Microseconds()).
			Int64("mem_bytes", v.MemBytes).Float64("accuracy", v.Accuracy).Msg("variant profile")
	}
	return nil
}

// ReloadResult says what a reload did, by application name.
type ReloadResult struct {
	Added, Changed, Removed, Unchanged []string
	// Ignored names the configuration sections that changed but take effect only
	// after a restart.
	Ignored []string
}

// Reload applies cfg's application list while the gateway serves (SIGHUP): a
// new application starts serving; a changed one (its configuration entry, its
// manifest or any file it names) is swapped in once its variants are registered
// and profiled (and, with engine.warm_up and no residency limits, loaded and
// warmed), and its queued requests move to the new version; a removed one
// answers rejected (unknown_app) to new requests while its queued requests
// finish. Nothing queued is lost. A configuration or application that fails to
// load leaves everything as it was and returns the error, which names the
// problem. Other sections of cfg that differ from the running configuration
// are not applied (they need a restart) and are listed in the result.
func (g *Gateway) Reload(ctx context.Context, cfg *Config) (res ReloadResult, err error) {
	return g.reload(ctx, func() (*Config, error) { return cfg, nil })
}

// ReloadFile is Reload of the configuration file at path (SIGHUP), with adjust
// (if not nil) applied to it first (the command line's overrides). A file that
// does not load (unreadable, not YAML, an unknown key) is refused like a
// configuration Reload refuses, and counted alike in sneakgate_reloads_total.
func (g *Gateway) ReloadFile(ctx context.Context, path string, adjust func(*Config)) (ReloadResult, error) {
	return g.reload(ctx, func() (*Config, error) {
		cfg, err := LoadConfig(path)
		if err == nil && adjust != nil {
			adjust(cfg)
		}
		return cfg, err
	})
}

func (g *Gateway) reload(ctx context.Context, load func() (*Config, error)) (res ReloadResult, err error) {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	defer func() {
		if err != nil {
			g.m.reloads.WithLabelValues("refused").Inc()
			g.logPanic(err, "reload refused: preparing an application panicked; the previous configuration and applications keep serving")
		} else {
			g.m.reloads.WithLabelValues("ok").Inc()
		}
		releaseMemory() // what loading the new configuration read
	}()
	cfg, err := load()
	if err != nil {
		return res, err
	}
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	res.Ignored = changedSections(g.cfg, cfg)
	old := g.appSet()
	next := map[string]*appRuntime{}
	var built []*appRuntime // new versions registered in the engine
	undo := func() {
		for _, a := range built {
			if err := g.eng.Unregister(a.key); err != nil {
				g.log.Warn().Err(err).Str("key", a.key).Msg("reload: unregistering a version that was not swapped in")
			}
		}
	}
	for i, ac := range cfg.Apps {
		a, err := g.buildApp(i, ac)
		if err != nil {
			undo()
			return res, err
		}
		name := a.m.Name
		if _, dup := next[name]; dup {
			undo()
			return res, fmt.Errorf("gateway: %w: apps[%d]: application %q configured twice", ErrConfig, i, name)
		}
		if cur, ok := old[name]; ok && cur.fingerprint == a.fingerprint {
			next[name] = cur
			res.Unchanged = append(res.Unchanged, name)
			continue
		}
		g.appGen++
		a.key = fmt.Sprintf("%s#%d", name, g.appGen)
		built = append(built, a) // undo unregisters it too (nothing when it never registered)
		if err := g.prepareEngine(ctx, a, true); err != nil {
			undo()
			return res, fmt.Errorf("gateway: apps[%d] (%s): %w", i, name, err)
		}
		if g.cfg.Scheduler.Policy == PolicyCascade {
			c, err := g.measureCascade(ctx, a)
			if err != nil {
				undo()
				return res, fmt.Errorf("gateway: apps[%d] (%s): %w", i, name, err)
			}
			a.cascade = &c
		}
		if err := g.measurePeek(ctx, a); err != nil {
			undo()
			return res, fmt.Errorf("gateway: apps[%d] (%s): %w", i, name, err)
		}
		next[name] = a
		if _, ok := old[name]; ok {
			res.Changed = append(res.Changed, name)
		} else {
			res.Added = append(res.Added, name)
		}
	}
	for name := range old {
		if _, ok := next[name]; !ok {
			res.Removed = append(res.Removed, name)
		}
	}
	sched := map[string]*scheduler.App{}
	for n, a := range next {
		sched[n] = a.sched
	}
	if err := scheduler.ValidateVariants(sched, g.cfg.SchedulerOptions()); err != nil {
		undo()
		return res, fmt.Errorf("gateway: %w: scheduler.fixed_variant, cascade_first or peek: %v", ErrConfig, err)
	}
	for _, s := range [][]string{res.Added, res.Changed, res.Removed, res.Unchanged} {
		slices.Sort(s)
	}
	// Without residency limits the new versions' variants are made resident
	// and warmed before the swap, as at start: otherwise the first requests
	// after it wait for the loads (resnet-m's takes about 50 ms, a fashion
	// request's whole default budget) and for sessions' slow first passes.
	// Under engine.memory_budget_mb or max_resident they are loaded when the
	// loop first runs them, as the scheduler plans: loads here would take
	// budget from the swaps it has planned for the serving versions, and a
	// load refused for the budget fails its batch.
	// With engine.warm_up off they are loaded when first run too: an operator
	// short of memory does not want both versions resident at once.
	if bytes, count := g.eng.Budget(); bytes == 0 && count == 0 && g.cfg.Engine.WarmUp {
		for _, a := range built {
			if err := g.loadAndWarm(ctx, g.eng.Variants(a.key)); err != nil {
				undo()
				return res, fmt.Errorf("gateway: %s: %w", a.m.Name, err)
			}
		}
	}
	if len(built) == 0 && len(res.Removed) == 0 {
		return res, nil
	}
	// Request handlers hold the read lock from lookup to Submit: once the write
	// lock is held, every request admitted under the old set is in the loop's
	// admission channel, ahead of the swap, and every later one sees the new set.
	apply := func() {
		g.runner.setKeys(next)
		if cc, ok := g.loop.policy.(scheduler.CascadeConfigurer); ok {
			for name, a := range next {
				if a.cascade != nil {
					cc.Configure(name, *a.cascade)
				}
			}
		}
		if pc, ok := g.loop.policy.(scheduler.PeekConfigurer); ok {
			for name, a := range next {
				if a.peek != nil {
					pc.ConfigurePeek(name, *a.peek)
				} else {
					// Not peeked (any more): no stale curve for the new version.
					pc.ConfigurePeek(name, scheduler.CascadeConfig{})
				}
			}
		}
	}
	sw := &appSwap{apps: sched, apply: apply, reprepare: g.reprepare,
		retire: func(name string) { g.retire(old[name]) }, done: make(chan struct{})}
	g.swapping.Lock()
	g.apps.Store(&next)
	select {
	case g.loop.swaps <- sw: // reloads are serialised and wait for done: there is room
	case <-g.loop.stopped:
		// Unless the loop stopped with an earlier reload's swap still in the
		// channel: waiting for room would hold the lock for good.
		g.swapping.Unlock()
		return res, errors.New("gateway: stopped during the reload")
	}
	g.swapping.Unlock()
	select {
	case <-sw.done:
	case <-g.loop.stopped:
		return res, errors.New("gateway: stopped during the reload")
	}
	// The versions they replace have retired, their metrics with them.
	for _, name := range res.Changed {
		g.registerAppMetrics(next[name])
	}
	for _, name := range res.Added {
		g.registerAppMetrics(next[name])
	}
	g.publishStatus(protocol.StateOnline, "")
	return res, nil
}

// reprepare moves a queued job to the served version of its application (the
// loop calls it after a swap). It reports false when no version can serve it any
// more: the application was removed, or its input size changed.
func (g *Gateway) reprepare(j *job) bool {
	a, ok := g.app(j.App)
	if !ok || len(j.Input) != a.m.InputSize {
		return false
	}
	j.rt = a
	j.Estimate, j.Correct, j.Answer, j.Mix = g.estimate(a, j.Input)
	g.observe(a, j.Answer) // in the new version's live mix
	return true
}

// retire forgets a version that serves no more (its queued requests are all
// answered, or moved to a newer version): its variants leave the engine, its
// metrics the registry (before the reload that swapped it out registers the
// newer version's, which have the same names: an application changed, or
// removed and added back while it still served). The loop calls it with no
// batch in flight.
func (g *Gateway) retire(a *appRuntime) {
	if a == nil {
		return
	}
	if err := g.eng.Unregister(a.key); err != nil {
		g.log.Warn().Err(err).Str("app", a.m.Name).Msg("unregistering a retired application version")
	}
	g.unregisterAppMetrics(a)
	if _, ok := g.app(a.m.Name); !ok {
		g.runner.dropKey(a.m.Name)
	}
	g.log.Info().Str("app", a.m.Name).Str("key", a.key).Msg("application version retired")
}

// changedSections lists the top-level configuration sections other than apps
// that differ between a and b.
func changedSections(a, b *Config) []string {
	var out []string
	va, vb := reflect.ValueOf(*a), reflect.ValueOf(*b)
	t := va.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || name == "apps" {
			continue
		}
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, name)
		}
	}
	return out
}

// minPayload is the size of the smallest request payload that can carry m's
// input, and its encoding: {"input_u8_b64":"..."} for an application with an
// input_range (a byte per value), else {"input_b64":"..."} (four).
func minPayload(m *manifest.App) (int, string) {
	field, per := "input_b64", 4
	if m.InputRange != nil {
		field, per = "input_u8_b64", 1
	}
	n := m.InputSize
	if n > (math.MaxInt/2)/per {
		return math.MaxInt, field // no payload carries it
	}
	return len(`{"":""}`) + len(field) + base64.StdEncoding.EncodedLen(n*per), field
}
