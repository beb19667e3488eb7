package gateway

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
)

// The load guard keeps a model that kills a GPU provider while ONNX Runtime
// creates its session, or while the start-up profile first runs it, from
// stopping the gateway at every start. On an H200 the CUDA provider of the
// library scripts/install-ort-gpu.sh installs dies with SIGSEGV creating a
// session for the vad models (docs/deployment.md, "GPU"); a gateway serving
// vad on CUDA died while profiling at every start, before it answered anything.
//
// The engine calls the guard around those two steps, and around the warm-up
// passes, a session's first runs when the profile came from the cache
// (engine.Options.Guard).
// For a session on a provider other than the CPU the guard writes a marker file
// under STORE.loading/ naming the application, the variant, the provider, the
// library and the application's fingerprint (its configuration entry, manifest
// and files: fingerprint), and removes it after. A process that dies in
// between, however it dies, leaves the marker in the page cache (there is no
// fsync: it is a process's death it records, not a machine's). At the next
// start each marker pins its application to the CPU provider (engine.OnCPU):
// the pin is kept in STORE.cpu-pins.json (fsynced, written at start-up only)
// for as long as the application's fingerprint, the provider and the library
// stay what they were, so that a new model, configuration or ONNX Runtime is
// tried on the GPU again. Deleting the file lifts every pin at the next start.
// A death on the CPU provider leaves no marker: there is nothing to fall back
// to, and the crash guard (crashguard.go) covers the forward passes.

// loadingDir and pinsPath are the guard's files beside the journal.
func loadingDir(journal string) string { return journal + ".loading" }
func pinsPath(journal string) string   { return journal + ".cpu-pins.json" }

// cpuPin is one application pinned to the CPU provider, and why.
type cpuPin struct {
	Variant     string    `json:"variant"`  // the variant the process died with
	Provider    string    `json:"provider"` // on this provider
	Library     string    `json:"library"`  // with this ONNX Runtime library
	Fingerprint string    `json:"fingerprint"`
	Since       time.Time `json:"since"`
}

// loadMarker is one marker file: a session being created, or first run, on a
// provider other than the CPU.
type loadMarker struct {
	App         string `json:"app"`
	Variant     string `json:"variant"`
	Provider    string `json:"provider"`
	Library     string `json:"library"`
	Fingerprint string `json:"fingerprint"`
}

// loadGuard is the guard of a running gateway.
type loadGuard struct {
	dir     string
	library string
	log     zerolog.Logger
	pins    map[string]cpuPin // by application name; read-only after openLoadGuard

	mu      sync.Mutex
	tracked map[string]trackedApp // by engine key (track)
}

type trackedApp struct{ name, fingerprint string }

// openLoadGuard reads what the last run left under journal's guard files,
// pins (and logs) the applications a marker names, lifts the pins of
// applications whose fingerprint (apps: name to fingerprint), provider or
// library changed, writes the pins back when they changed, and returns the
// guard for this run. provider is engine.provider. Like the crash guard it
// never fails the start: a file it cannot read is logged and taken as empty;
// when the pins cannot be written they hold for this run and the markers are
// kept, so that the next start pins again; without the markers' directory the
// run has no load guard (logged, and again at each marker it cannot write).
func openLoadGuard(journal, provider, library string, apps map[string]string, now time.Time, log zerolog.Logger) *loadGuard {
	// The library as an absolute path: a configuration named by a relative path
	// resolves engine.library relative to the working directory, so the same
	// file would otherwise read differently from another directory and lift the
	// pin (one more crash).
	library = absLibrary(library)
	g := &loadGuard{dir: loadingDir(journal), library: library, log: log, pins: map[string]cpuPin{}, tracked: map[string]trackedApp{}}
	path := pinsPath(journal)
	changed := false
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &g.pins); err != nil {
			log.Warn().Err(err).Str("path", path).Msg("load guard: unreadable pins file: every application is tried on its provider again")
			g.pins, changed = map[string]cpuPin{}, true
		} else if g.pins == nil { // "null"
			g.pins = map[string]cpuPin{}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		log.Error().Err(err).Str("path", path).Msg("load guard: the pins file cannot be read: every application is tried on its provider again")
	}
	entries, err := os.ReadDir(g.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Error().Err(err).Str("path", g.dir).Msg("load guard: the markers cannot be read: a death of the last run creating a GPU session is not known")
	}
	var markers []string
	for _, e := range entries {
		p := filepath.Join(g.dir, e.Name())
		markers = append(markers, p)
		var m loadMarker
		b, err := os.ReadFile(p)
		if err == nil {
			err = json.Unmarshal(b, &m)
		}
		if err == nil && m.App != "" && m.Provider != "" {
			log.Error().Str("app", m.App).Str("variant", m.Variant).Str("provider", m.Provider).
				Msgf("the last run died creating or first running %s/%s's session on %s: %s runs on the CPU provider from now on, while its model, configuration and %s's library stay the same (delete %s to try again)",
					m.App, m.Variant, m.Provider, m.App, m.Provider, path)
			g.pins[m.App] = cpuPin{Variant: m.Variant, Provider: m.Provider, Library: absLibrary(m.Library), Fingerprint: m.Fingerprint, Since: now.UTC()}
			changed = true
		} else if err != nil {
			log.Warn().Err(err).Str("path", p).Msg("load guard: unreadable marker, ignored")
		}
	}
	for app, pin := range g.pins {
		if abs := absLibrary(pin.Library); abs != pin.Library { // written by a build before absolute paths
			pin.Library = abs
			g.pins[app], changed = pin, true
		}
		fp, ok := apps[app]
		if ok && fp == pin.Fingerprint && pin.Provider == provider && pin.Library == library {
			continue
		}
		log.Info().Str("app", app).Str("provider", pin.Provider).
			Msg("load guard: the application, its configuration or the engine changed since it was pinned to the CPU: it is tried on its provider again")
		delete(g.pins, app)
		changed = true
	}
	if changed {
		if err := g.writePins(path); err != nil {
			log.Error().Err(err).Str("path", path).Strs("pinned", g.pinnedApps()).
				Msg("load guard: the pins cannot be written: they hold for this run only, and the markers are kept for the next start")
			markers = nil
		}
	}
	for _, p := range markers {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn().Err(err).Str("path", p).Msg("load guard: cannot remove a marker; the next start reads it again")
		}
	}
	if err := os.MkdirAll(g.dir, 0o700); err != nil {
		log.Error().Err(err).Msg("load guard: cannot create the markers' directory: a model that crashes the GPU provider will crash every start")
	}
	return g
}

// absLibrary is library as an absolute path, resolved against the working
// directory (as the engine resolves it); "" stays "". A relative path in a pin
// or marker left by a build before the guard compared absolute paths was
// resolved against the working directory of its run: it is resolved here
// against this run's, the same file unless the gateway starts elsewhere now.
func absLibrary(library string) string {
	if library == "" {
		return ""
	}
	if abs, err := filepath.Abs(library); err == nil {
		return abs
	}
	return library
}

func (g *loadGuard) writePins(path string) error {
	if len(g.pins) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	b, err := json.MarshalIndent(g.pins, "", "  ")
	if err != nil {
		return err
	}
	return replaceFile(path, append(b, '\n'))
}

// pinned reports whether application name is pinned to the CPU.
func (g *loadGuard) pinned(name string) (cpuPin, bool) {
	if g == nil {
		return cpuPin{}, false
	}
	p, ok := g.pins[name]
	return p, ok
}

// pinnedApps lists the pinned applications, sorted.
func (g *loadGuard) pinnedApps() []string {
	if g == nil {
		return nil
	}
	names := make([]string, 0, len(g.pins))
	for n := range g.pins {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// track records the application registered under engine key, for the markers.
func (g *loadGuard) track(key, name, fingerprint string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.tracked[key] = trackedApp{name: name, fingerprint: fingerprint}
	g.mu.Unlock()
}

// hook is engine.Options.Guard: a marker for a session on a provider other
// than the CPU, removed by the returned function.
func (g *loadGuard) hook(id engine.VariantID, provider string) func() {
	if g == nil || provider == engine.ProviderCPU {
		return nil
	}
	g.mu.Lock()
	t, ok := g.tracked[id.App]
	g.mu.Unlock()
	if !ok {
		t = trackedApp{name: strings.SplitN(id.App, "#", 2)[0]}
	}
	b, _ := json.Marshal(loadMarker{App: t.name, Variant: id.Variant, Provider: provider, Library: g.library, Fingerprint: t.fingerprint}) // plain fields
	p := filepath.Join(g.dir, url.PathEscape(id.App+"."+id.Variant)+".json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		g.log.Warn().Err(err).Str("variant", id.String()).Msg("load guard: cannot write the marker; a crash now would repeat at the next start")
		return nil
	}
	return func() {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			g.log.Warn().Err(err).Str("path", p).Msg("load guard: cannot remove the marker; the next start pins the application to the CPU")
		}
	}
}

// registerPinMetric exports sneakgate_app_pinned_to_cpu{app}: 1 for an
// application the load guard runs on the CPU after a crash.
func registerPinMetric(reg prometheus.Registerer, g *loadGuard) {
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sneakgate_app_pinned_to_cpu",
		Help: "1 for an application running on the CPU provider because an earlier run died creating or first running one of its sessions on the GPU provider (STORE.cpu-pins.json)"},
		[]string{"app"})
	for _, n := range g.pinnedApps() {
		v.WithLabelValues(n).Set(1)
	}
	reg.MustRegister(v)
}
