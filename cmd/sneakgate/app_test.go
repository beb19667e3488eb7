package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/engine"
)

// `sneakgate app` exit statuses and messages: usage errors exit 2, bad input
// exits 1 with a message naming the file, and nothing is left at -out. (The
// whole path, build then check then serving after a reload, is
// TestBringYourOwnModelServedAfterReload.)
func TestAppCommandErrors(t *testing.T) {
	ex := "../../models/examples/digits/"
	out := filepath.Join(t.TempDir(), "new", "digits")
	build := func(extra ...string) []string {
		args := []string{"app", "build", "-name", "digits", "-out", out,
			"-variant", "linear=" + ex + "linear.onnx",
			"-train", ex + "X_train.npy," + ex + "y_train.npy",
			"-validation", ex + "X_validation.npy," + ex + "y_validation.npy"}
		return append(args, extra...)
	}
	missing := filepath.Join(t.TempDir(), "absent.npy")
	cases := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"no subcommand", []string{"app"}, 2, []string{"usage:", "app build", "want build or check"}},
		{"unknown subcommand", []string{"app", "make"}, 2, []string{`unknown app command "make"`}},
		{"bad -variant", build("-variant", "mlp"), 2, []string{`-variant "mlp": want NAME=FILE.onnx`}},
		{"bad variant name", build("-variant", "MLP=x.onnx"), 2, []string{`"MLP" must match`}},
		{"stray argument", build("extra"), 2, []string{`unexpected arguments ["extra"]`}},
		{"missing file", build("-test", missing+","+ex+"y_test.npy"), 1, []string{missing, "no such file"}},
		{"bad input range", build("-input-range", "0"), 1, []string{`-input-range "0": want lo,hi`}},
		{"check without dir", []string{"app", "check"}, 2, []string{"app check: no DIR"}},
		{"check absent dir", []string{"app", "check", filepath.Join(t.TempDir(), "none")}, 1, []string{"none", "no such file"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg, code := runBinary(t, c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d\n%s", code, c.code, msg)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("output does not say %q:\n%s", w, msg)
				}
			}
			if _, err := os.Stat(filepath.Dir(out)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left behind", filepath.Dir(out))
			}
		})
	}
}

// Without $SNEAKGATE_ORT_LIB the commands find the library that make ort put
// in the binary's checkout (bin/sneakgate -> .cache/onnxruntime) or that make
// install put under the binary's PREFIX, from any working directory: before,
// only a checkout's root and /usr/local were searched, so `app build` run
// from models/examples/digits, as models/README.md says, found no library.
func TestORTLibraryFoundBesideTheBinary(t *testing.T) {
	t.Setenv(engine.LibraryEnv, "")
	t.Chdir(t.TempDir()) // no .cache here
	for _, where := range []string{".cache/onnxruntime", "lib/sneakgate"} {
		root := t.TempDir()
		lib := filepath.Join(root, where, ortLibName)
		if err := os.MkdirAll(filepath.Dir(lib), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(lib, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if got := ortLibraryFor("", filepath.Join(root, "bin", "sneakgate")); got != lib {
			t.Errorf("library in %s: found %q, want %q", where, got, lib)
		}
		if got := ortLibraryFor("/x.so", filepath.Join(root, "bin", "sneakgate")); got != "/x.so" {
			t.Errorf("-ort-lib /x.so: %q", got)
		}
	}
}
