package gateway

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/manifest"
)

// died leaves what a process that died creating id's session on provider
// leaves: the marker, never released.
func died(t *testing.T, journal, library string, key, name, fingerprint string, id engine.VariantID, provider string) {
	t.Helper()
	g := openLoadGuard(journal, provider, library, map[string]string{name: fingerprint}, time.Now(), zerolog.Nop())
	g.track(key, name, fingerprint)
	if g.hook(id, provider) == nil {
		t.Fatal("no marker for a session on " + provider)
	}
}

func TestLoadGuard(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "sneakgate.db")
	const lib = "/lib/ort-gpu.so"
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	apps := map[string]string{"vad": "fp-vad", "fashion": "fp-fashion"}
	open := func(provider, library string, apps map[string]string) *loadGuard {
		t.Helper()
		return openLoadGuard(journal, provider, library, apps, now, zerolog.Nop())
	}

	// A clean run: markers come and go, nothing is pinned; none for the CPU.
	g := open("cuda", lib, apps)
	g.track("fashion", "fashion", "fp-fashion")
	release := g.hook(engine.VariantID{App: "fashion", Variant: "cnn"}, "cuda")
	if m, _ := filepath.Glob(filepath.Join(loadingDir(journal), "*")); len(m) != 1 {
		t.Fatalf("markers while creating: %v", m)
	}
	release()
	if g.hook(engine.VariantID{App: "fashion", Variant: "cnn"}, engine.ProviderCPU) != nil {
		t.Error("a marker for a session on the CPU")
	}
	if m, _ := filepath.Glob(filepath.Join(loadingDir(journal), "*")); len(m) != 0 {
		t.Fatalf("markers after: %v", m)
	}
	if _, ok := open("cuda", lib, apps).pinned("fashion"); ok {
		t.Fatal("pinned after a clean run")
	}

	// A run died creating vad/silero-legacy on cuda (after a reload: key vad#2).
	died(t, journal, lib, "vad#2", "vad", "fp-vad", engine.VariantID{App: "vad#2", Variant: "silero-legacy"}, "cuda")
	g = open("cuda", lib, apps)
	pin, ok := g.pinned("vad")
	if !ok || pin.Variant != "silero-legacy" || pin.Provider != "cuda" || !pin.Since.Equal(now) {
		t.Fatalf("after the death: pin %+v %v", pin, ok)
	}
	if _, ok := g.pinned("fashion"); ok {
		t.Error("fashion pinned too")
	}
	if m, _ := filepath.Glob(filepath.Join(loadingDir(journal), "*")); len(m) != 0 {
		t.Errorf("markers left: %v", m)
	}
	// Kept across starts while nothing changes.
	if _, ok := open("cuda", lib, apps).pinned("vad"); !ok {
		t.Fatal("the pin did not survive a start")
	}
	// Lifted by a new library, a new model or configuration, another provider.
	for name, c := range map[string]struct {
		provider, library string
		apps              map[string]string
	}{
		"library":  {"cuda", "/lib/ort-gpu-2.so", apps},
		"model":    {"cuda", lib, map[string]string{"vad": "fp-vad-2"}},
		"provider": {"tensorrt", lib, apps},
		"removed":  {"cuda", lib, map[string]string{"fashion": "fp-fashion"}},
	} {
		if _, ok := open(c.provider, c.library, c.apps).pinned("vad"); ok {
			t.Errorf("%s changed: still pinned", name)
		}
		if _, err := os.Stat(pinsPath(journal)); !os.IsNotExist(err) {
			t.Errorf("%s changed: pins file %v", name, err)
		}
		died(t, journal, lib, "vad", "vad", "fp-vad", engine.VariantID{App: "vad", Variant: "silero-legacy"}, "cuda")
		open("cuda", lib, apps)
	}
	// An unreadable pins file lifts every pin, with a warning, and is replaced.
	if err := os.WriteFile(pinsPath(journal), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := open("cuda", lib, apps).pinned("vad"); ok {
		t.Error("pinned from an unreadable file")
	}
}

// A pin holds whichever working directory names the library: a relative
// engine.library (or a configuration named by a relative path) reads
// differently from another directory, and the guard compares absolute paths.
// Before, the pin was lifted at the very start that made it.
func TestLoadGuardLibraryRelativeToTheWorkingDirectory(t *testing.T) {
	root := t.TempDir()
	journal := filepath.Join(root, "state", "sneakgate.db")
	apps := map[string]string{"vad": "fp-vad"}
	t.Chdir(root)
	died(t, journal, "ort/libonnxruntime.so", "vad", "vad", "fp-vad", engine.VariantID{App: "vad", Variant: "silero-legacy"}, "cuda")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(filepath.Join(root, "etc"))
	g := openLoadGuard(journal, "cuda", "../ort/libonnxruntime.so", apps, time.Now(), zerolog.Nop())
	if pin, ok := g.pinned("vad"); !ok || pin.Library != filepath.Join(root, "ort", "libonnxruntime.so") {
		t.Fatalf("pinned %v (%+v), want pinned with the library's absolute path", ok, pin)
	}
}

// A pin or a marker written before the guard compared absolute paths names a
// relative library as the working directory of its run resolved it; read from
// the same directory it is the same library. Before, every such pin was lifted
// at the first start of the build that compares absolute paths, and so was the
// pin made from such a marker at that very start: one more crash on the GPU
// provider, the one the pin was there to spare.
func TestLoadGuardKeepsPinsWithARelativeLibrary(t *testing.T) {
	root := t.TempDir()
	journal := filepath.Join(root, "state", "sneakgate.db")
	if err := os.MkdirAll(filepath.Dir(journal), 0o700); err != nil {
		t.Fatal(err)
	}
	apps := map[string]string{"vad": "fp-vad", "fashion": "fp-fashion"}
	const rel = "ort/libonnxruntime.so"
	abs := filepath.Join(root, "ort", "libonnxruntime.so")
	t.Chdir(root)
	// As the previous build left them: a pin, and a marker of a run that died.
	pins := `{"vad": {"variant": "silero-legacy", "provider": "cuda", "library": "` + rel + `", "fingerprint": "fp-vad", "since": "2026-12-04T12:00:00Z"}}`
	if err := os.WriteFile(pinsPath(journal), []byte(pins), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(loadingDir(journal), 0o700); err != nil {
		t.Fatal(err)
	}
	marker := `{"app": "fashion", "variant": "cnn", "provider": "cuda", "library": "` + rel + `", "fingerprint": "fp-fashion"}`
	if err := os.WriteFile(filepath.Join(loadingDir(journal), "fashion.cnn.json"), []byte(marker), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the start that reads them, and the next (the pins rewritten)
		g := openLoadGuard(journal, "cuda", rel, apps, time.Now(), zerolog.Nop())
		for _, app := range []string{"vad", "fashion"} {
			if pin, ok := g.pinned(app); !ok || pin.Library != abs {
				t.Errorf("%s: pinned %v (%+v), want pinned with the library's absolute path", app, ok, pin)
			}
		}
	}
}

// TestLoadGuardPinsAtStart: a gateway started after a run that died creating
// a session on the GPU provider pins the application (and says so in the log
// and sneakgate_app_pinned_to_cpu). On this machine the engine falls back to
// the CPU, so the pin changes no session; on a GPU TestOnCPU's engine check
// holds.
func TestLoadGuardPinsAtStart(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:1", t.TempDir())
	cfg.Engine.Provider = "cuda"
	cfg.Engine.ProviderOptions = map[string]string{"device_id": "0"}
	var fp string
	for _, ac := range cfg.Apps {
		m, err := manifest.Load(ac.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		if m.Name == "fashion" {
			if fp, err = fingerprint(m, ac); err != nil {
				t.Fatal(err)
			}
		}
	}
	died(t, cfg.Store.Path, cfg.engineLibrary(), "fashion", "fashion", fp, engine.VariantID{App: "fashion", Variant: "resnet-m"}, "cuda")

	var logs testenv.Buffer
	g, err := New(context.Background(), Options{Config: cfg, Logger: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer g.closeAll()
	if v := metricValue(t, g.reg, "sneakgate_app_pinned_to_cpu", "app", "fashion"); v != 1 {
		t.Errorf("sneakgate_app_pinned_to_cpu{app=fashion} = %v, want 1", v)
	}
	if l := logs.String(); !strings.Contains(l, "the last run died creating or first running fashion/resnet-m's session on cuda") {
		t.Errorf("no error line about the death:\n%s", l)
	}
	if _, err := os.Stat(pinsPath(cfg.Store.Path)); err != nil {
		t.Errorf("pins file: %v", err)
	}
}

// TestLoadGuardNeverFailsStart: like the crash guard, the load guard never
// stops the gateway from starting. Files it cannot read are logged and taken
// as empty; when the pins cannot be written the pins found hold for this run
// and the markers stay for the next start, which pins again.
func TestLoadGuardNeverFailsStart(t *testing.T) {
	const lib = "/lib/ort-gpu.so"
	apps := map[string]string{"vad": "fp-vad"}
	id := engine.VariantID{App: "vad", Variant: "silero-legacy"}
	markers := func(journal string) int {
		m, _ := filepath.Glob(filepath.Join(loadingDir(journal), "*"))
		return len(m)
	}

	// The pins file cannot be read or written (a directory in its place).
	journal := filepath.Join(t.TempDir(), "sneakgate.db")
	died(t, journal, lib, "vad", "vad", "fp-vad", id, "cuda")
	if err := os.MkdirAll(filepath.Join(pinsPath(journal), "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	g := openLoadGuard(journal, "cuda", lib, apps, time.Now(), zerolog.Nop())
	if _, ok := g.pinned("vad"); !ok {
		t.Error("the marker does not pin vad for this run")
	}
	if markers(journal) != 1 {
		t.Error("the marker was removed although the pin could not be written")
	}
	// Writable again: the next start pins from the marker kept.
	if err := os.RemoveAll(pinsPath(journal)); err != nil {
		t.Fatal(err)
	}
	g = openLoadGuard(journal, "cuda", lib, apps, time.Now(), zerolog.Nop())
	if _, ok := g.pinned("vad"); !ok {
		t.Error("the kept marker does not pin vad at the next start")
	}
	if _, err := os.Stat(pinsPath(journal)); err != nil || markers(journal) != 0 {
		t.Errorf("pins file %v, %d markers left", err, markers(journal))
	}

	// A pins file holding JSON null.
	journal = filepath.Join(t.TempDir(), "sneakgate.db")
	died(t, journal, lib, "vad", "vad", "fp-vad", id, "cuda")
	if err := os.WriteFile(pinsPath(journal), []byte("null\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g = openLoadGuard(journal, "cuda", lib, apps, time.Now(), zerolog.Nop())
	if _, ok := g.pinned("vad"); !ok {
		t.Error("a null pins file: vad not pinned")
	}

	// The markers' directory is a file.
	journal = filepath.Join(t.TempDir(), "sneakgate.db")
	if err := os.WriteFile(loadingDir(journal), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	g = openLoadGuard(journal, "cuda", lib, apps, time.Now(), zerolog.Nop())
	if g.hook(id, "cuda") != nil {
		t.Error("a marker written where none can be")
	}
}
