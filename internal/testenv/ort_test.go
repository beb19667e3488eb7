package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/engine"
)

func TestORTLibEnvIsEngines(t *testing.T) {
	if ORTLibEnv != engine.LibraryEnv {
		t.Errorf("ORTLibEnv %q, engine.LibraryEnv %q", ORTLibEnv, engine.LibraryEnv)
	}
}

func TestMakefileInstallsORTLibInRepo(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mk), "ORT_LIB := $(CURDIR)/.cache/onnxruntime/libonnxruntime.so.$(ORT_VERSION)") ||
		!strings.Contains(string(mk), "ORT_VERSION := 1.30.0") {
		t.Errorf("the Makefile's ORT_LIB is no longer %s: update ORTLibInRepo", ORTLibInRepo)
	}
}

func TestFindORTLib(t *testing.T) {
	lib := filepath.Join(t.TempDir(), "libonnxruntime.so")
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(ORTLibEnv, lib)
	if p, err := FindORTLib(); err != nil || p != lib {
		t.Errorf("with %s set: %q, %v", ORTLibEnv, p, err)
	}
	t.Setenv(ORTLibEnv, lib+".missing")
	if _, err := FindORTLib(); err == nil || !strings.Contains(err.Error(), ORTLibEnv) {
		t.Errorf("with %s naming a missing file: %v", ORTLibEnv, err)
	}
	t.Setenv(ORTLibEnv, "")
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	p, err := FindORTLib()
	if _, serr := os.Stat(filepath.Join(root, ORTLibInRepo)); serr == nil {
		if err != nil || p != filepath.Join(root, ORTLibInRepo) {
			t.Errorf("unset %s, library in the repository: %q, %v", ORTLibEnv, p, err)
		}
	} else if err == nil {
		t.Errorf("unset %s, no library in the repository: %q", ORTLibEnv, p)
	}
}
