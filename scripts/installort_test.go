// Package scripts tests the shell scripts and the Makefile's install target: they
// run here as they run for an operator, without the network.
package scripts

import (
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
