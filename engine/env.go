package engine

import (
	"fmt"
	"os"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// ortEnv is the process's ONNX Runtime environment. ONNX Runtime allows one per
// process; it is created by the first New and lives until the process exits, so
// engines can be created and closed any number of times (tests do).
var ortEnv struct {
	mu   sync.Mutex
	lib  string      // the library the environment was created from
	info os.FileInfo // lib's identity, to accept other paths to the same file; nil if unknown
}

// initEnv creates the ONNX Runtime environment from lib unless it exists. It
// returns an error wrapping ErrNoLibrary when lib is empty or cannot be loaded,
// or ErrLibraryMismatch when the environment came from another file.
func initEnv(lib string) error {
	ortEnv.mu.Lock()
	defer ortEnv.mu.Unlock()
	if ortEnv.lib != "" {
		if ortEnv.info == nil || lib == "" || lib == ortEnv.lib {
			return nil
		}
		if fi, err := os.Stat(lib); err == nil && os.SameFile(fi, ortEnv.info) {
			return nil
		}
		return fmt.Errorf("%w: %s is in use, %s was asked for", ErrLibraryMismatch, ortEnv.lib, lib)
	}
	if ort.IsInitialized() {
		// Another package of this process created the environment; share it.
		ortEnv.lib = "(initialised elsewhere)"
		return nil
	}
	if lib == "" {
		return fmt.Errorf("%w: set Options.LibraryPath or %s (scripts/install-ort.sh installs it)",
			ErrNoLibrary, LibraryEnv)
	}
	fi, err := os.Stat(lib)
	if err != nil {
		return fmt.Errorf("%w: %v (scripts/install-ort.sh installs it)", ErrNoLibrary, err)
	}
	ort.SetSharedLibraryPath(lib)
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNoLibrary, lib, err)
	}
	ortEnv.lib, ortEnv.info = lib, fi
	return nil
}

// runtimeVersion is the loaded ONNX Runtime's version, e.g. "1.30.0".
func runtimeVersion() string { return ort.GetVersion() }

// loadedLibrary is the path the process's ONNX Runtime was loaded from, or ""
// when another package initialised it.
func loadedLibrary() string {
	ortEnv.mu.Lock()
	defer ortEnv.mu.Unlock()
	if ortEnv.info == nil {
		return ""
	}
	return ortEnv.lib
}
