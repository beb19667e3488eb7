// Package scripts tests the shell scripts and the Makefile's install target: they
// run here as they run for an operator, without the network.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallORTSelectsLibraryByArchitecture runs install-ort.sh's selection alone
// (--print-path-for): no download, no DEST.
func TestInstallORTSelectsLibraryByArchitecture(t *testing.T) {
	const (
		x64   = "package/bin/napi-v6/linux/x64/libonnxruntime.so.1"
		arm64 = "package/bin/napi-v6/linux/arm64/libonnxruntime.so.1"
	)
	for arch, want := range map[string]string{
		"x86_64": x64, "amd64": x64,
		"aarch64": arm64, "arm64": arm64,
	} {
		out, err := exec.Command("bash", "install-ort.sh", "--print-path-for", arch).CombinedOutput()
		if err != nil {
			t.Errorf("install-ort.sh --print-path-for %s: %v\n%s", arch, err, out)
			continue
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("install-ort.sh --print-path-for %s = %q, want %q", arch, got, want)
		}
	}
	for arch, msg := range map[string]string{
		"riscv64": "unsupported architecture 'riscv64'",
		"armv7l":  "no 32-bit ARM library",
		"":        "unsupported architecture",
	} {
		out, err := exec.Command("bash", "install-ort.sh", "--print-path-for", arch).CombinedOutput()
		if err == nil {
			t.Errorf("install-ort.sh --print-path-for %q succeeded (%q), want a failure", arch, out)
			continue
		}
		if !strings.Contains(string(out), msg) || !strings.Contains(string(out), "x86_64 and aarch64") && arch != "armv7l" {
			t.Errorf("install-ort.sh --print-path-for %q: message %q, want one saying %q and naming the supported architectures", arch, out, msg)
		}
	}
}

// TestInstallORTScriptsRunFromAnyDirectory: both install scripts source
// lib/npm-fetch.sh from their own directory, so they work from any working
// directory (the Makefile runs them from the repository root, an operator from
// anywhere by absolute path).
func TestInstallORTScriptsRunFromAnyDirectory(t *testing.T) {
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ script, flag, want string }{
		{"install-ort.sh", "--print-path-for", "package/bin/napi-v6/linux/x64/libonnxruntime.so.1"},
		{"install-ort-gpu.sh", "--print-members-for", "libonnxruntime.so.1.29.0"},
	} {
		for _, cwd := range []string{t.TempDir(), filepath.Dir(dir)} {
			cmd := exec.Command("bash", filepath.Join(dir, c.script), c.flag, "x86_64")
			cmd.Dir = cwd
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), c.want) {
				t.Errorf("%s %s x86_64 from %s: %v\n%s", c.script, c.flag, cwd, err, out)
			}
		}
	}
}

// TestInstallORTChecksTheInstalledLibrary: install-ort.sh leaves DEST alone only
// when it is the pinned library, by size and SHA-256; a file of the pinned size
// with other bytes (a sparse stand-in here) is refused, not taken for installed.
// The library make test installed, where present, is found installed offline.
func TestInstallORTChecksTheInstalledLibrary(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "libonnxruntime.so.1.30.0")
	f, err := os.Create(dest)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(dest, 45828512); err != nil { // x86_64's pinned size
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "install-ort.sh", dest)
	cmd.Env = append(os.Environ(), "ORT_ARCH=x86_64")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "has the pinned size but SHA-256") || !strings.Contains(string(out), "remove it and re-run") {
		t.Errorf("a file of the pinned size with other bytes: %v\n%s", err, out)
	}
	installed, err := filepath.Abs("../.cache/onnxruntime/libonnxruntime.so.1.30.0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(installed); err != nil {
		t.Skipf("no installed library to check (%v); make test installs it first", err)
	}
	if out, err := exec.Command("bash", "install-ort.sh", installed).CombinedOutput(); err != nil {
		t.Errorf("the installed library: %v\n%s", err, out)
	}
}
