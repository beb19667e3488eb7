// Package testenv holds helpers the tests of several packages share. It
// imports nothing of this module, so any package's tests may use it.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// ORTLibEnv names the ONNX Runtime library (engine.LibraryEnv; a test checks
// they agree, as this package cannot import engine).
const ORTLibEnv = "SNEAKGATE_ORT_LIB"

// ORTLibInRepo is where `make ort` (scripts/install-ort.sh) puts the library,
// relative to the repository root (the Makefile's ORT_LIB).
const ORTLibInRepo = ".cache/onnxruntime/libonnxruntime.so.1.30.0"

// FindORTLib returns the ONNX Runtime library for tests, as an absolute path:
// $SNEAKGATE_ORT_LIB, which must exist, else the copy `make ort` installs under
// the repository root (found from the working directory up). It is for code
// without a testing.TB (TestMain); tests call ORTLib.
func FindORTLib() (string, error) {
	if p := os.Getenv(ORTLibEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", ORTLibEnv, p, err)
		}
		return filepath.Abs(p)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, ORTLibInRepo)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("ONNX Runtime library not found: set %s or run `make ort` (%w)", ORTLibEnv, err)
	}
	return p, nil
}

// ORTLib returns the ONNX Runtime library for a test (FindORTLib). Without one
// the test is skipped, except under CI=true where it fails; a
// $SNEAKGATE_ORT_LIB that does not exist always fails it.
func ORTLib(t testing.TB) string {
	t.Helper()
	p, err := FindORTLib()
	switch {
	case err == nil:
		return p
	case os.Getenv(ORTLibEnv) != "" || os.Getenv("CI") == "true":
		t.Fatal(err)
	default:
		t.Skip(err)
	}
	return ""
}

// RepoRoot returns the repository root: the nearest directory at or above the
// working directory (a test's package directory) that holds go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod at or above the working directory")
		}
		dir = parent
	}
}
