package scripts

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallORTGPUSelectsMembersByArchitecture runs install-ort-gpu.sh's
// selection alone (--print-members-for): no download, no DESTDIR.
func TestInstallORTGPUSelectsMembersByArchitecture(t *testing.T) {
	const (
		core = "com.github.asus4.onnxruntime@0.4.9"
		gpu  = "com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9"
		dir  = "package/Plugins/Linux/x64/"
	)
	want := strings.Join([]string{
		gpu + " " + dir + "libonnxruntime_providers_shared.so libonnxruntime_providers_shared.so",
		gpu + " " + dir + "libonnxruntime_providers_cuda.so libonnxruntime_providers_cuda.so",
		core + " " + dir + "libonnxruntime.so libonnxruntime.so.1.29.0", // last: its presence means installed
	}, "\n")
	for _, arch := range []string{"x86_64", "amd64"} {
		out, err := exec.Command("bash", "install-ort-gpu.sh", "--print-members-for", arch).CombinedOutput()
		if err != nil {
			t.Errorf("--print-members-for %s: %v\n%s", arch, err, out)
			continue
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("--print-members-for %s:\n%s\nwant:\n%s", arch, got, want)
		}
	}
	for arch, msg := range map[string]string{
		"aarch64": "build ONNX Runtime with CUDA from source",
		"arm64":   "build ONNX Runtime with CUDA from source",
		"riscv64": "unsupported architecture 'riscv64'",
		"":        "unsupported architecture",
	} {
		out, err := exec.Command("bash", "install-ort-gpu.sh", "--print-members-for", arch).CombinedOutput()
		if err == nil {
			t.Errorf("--print-members-for %q succeeded (%q), want a failure", arch, out)
			continue
		}
		if !strings.Contains(string(out), msg) || !strings.Contains(string(out), "x86_64 only") {
			t.Errorf("--print-members-for %q: message %q, want one saying %q and naming x86_64", arch, out, msg)
		}
	}
}

// TestInstallORTGPUOffline checks install-ort-gpu.sh's paths that need no
// network: a file of the pinned size with other bytes (sparse stand-ins here) is
// refused for its checksum, a file of another size for its size, and nothing
// touches the CPU library. (The files themselves, left alone when they are the
// pinned ones, are checked where `make ort-gpu` has run.)
func TestInstallORTGPUOffline(t *testing.T) {
	sizes := map[string]int64{"libonnxruntime_providers_shared.so": 14632,
		"libonnxruntime_providers_cuda.so": 229780440, "libonnxruntime.so.1.29.0": 28497752}
	dest := t.TempDir()
	for name, size := range sizes {
		if err := os.Truncate(mustCreate(t, filepath.Join(dest, name)), size); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("bash", "install-ort-gpu.sh", dest).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "has the pinned size but SHA-256") || !strings.Contains(string(out), "remove it and re-run") {
		t.Fatalf("files of the pinned sizes with other bytes: %v\n%s", err, out)
	}
	// Only the provider, of another size: the others are missing (to be
	// fetched), and the provider stops the script before anything is fetched.
	for _, name := range []string{"libonnxruntime_providers_shared.so", "libonnxruntime.so.1.29.0"} {
		if err := os.Remove(filepath.Join(dest, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Truncate(filepath.Join(dest, "libonnxruntime_providers_cuda.so"), 5); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("bash", "install-ort-gpu.sh", dest).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "exists with 5 bytes, want 229780440") || !strings.Contains(string(out), "remove it and re-run") {
		t.Fatalf("wrong-size file: %v\n%s", err, out)
	}
	if out, err := exec.Command("bash", "install-ort-gpu.sh", "--gpu").CombinedOutput(); err == nil || !strings.Contains(string(out), "usage") {
		t.Errorf("an unknown flag: %v\n%s", err, out)
	}
}

func mustCreate(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

// TestGPUCheckWithoutGPU runs gpu-check.sh's checks that stop it before any
// test or measurement: no nvidia-smi, nvidia-smi without a GPU, another device
// number than the GPUs listed, no library, and (when `make ort-gpu` has run on a
// machine without CUDA 13) the CUDA libraries its provider cannot find.
// NVIDIA_SMI points the script at stubs, so a real GPU does not change this.
func TestGPUCheckWithoutGPU(t *testing.T) {
	stubs := t.TempDir()
	stub := func(name, body string) string {
		p := filepath.Join(stubs, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	one := stub("one-gpu", `[ "$1" = -L ] && echo "GPU 0: NVIDIA H200 (UUID: GPU-0)" || echo 580.00`)
	empty := t.TempDir()
	run := func(env []string, args ...string) (int, string) {
		cmd := exec.Command("bash", append([]string{"gpu-check.sh"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	for _, c := range []struct {
		name string
		env  []string
		args []string
		code int
		msg  string
	}{
		{"no nvidia-smi", []string{"NVIDIA_SMI=" + filepath.Join(stubs, "absent")}, nil, 2, "no NVIDIA GPU: " + filepath.Join(stubs, "absent") + " is not installed"},
		{"no device", []string{"NVIDIA_SMI=" + stub("none", `echo "No devices were found"; exit 6`)}, nil, 2, "No devices were found"},
		{"lists no GPU", []string{"NVIDIA_SMI=" + stub("blank", `exit 0`)}, nil, 2, "lists none"},
		{"other device", []string{"NVIDIA_SMI=" + one}, []string{"--device", "1"}, 2, "no GPU 1:"},
		{"bad device", []string{"NVIDIA_SMI=" + one}, []string{"--device", "x"}, 64, "want a GPU number"},
		{"unknown flag", nil, []string{"--gpu"}, 64, "unknown argument '--gpu'"},
		{"no library", []string{"NVIDIA_SMI=" + one, "ORT_GPU_DIR=" + empty}, nil, 3, "run `make ort-gpu` first"},
		{"no library, rehearsal", []string{"ORT_GPU_DIR=" + empty}, []string{"--cpu-only"}, 3, "run `make ort-gpu` first"},
	} {
		code, out := run(c.env, c.args...)
		if code != c.code || !strings.Contains(out, c.msg) {
			t.Errorf("%s: exit %d, %q; want exit %d saying %q", c.name, code, out, c.code, c.msg)
		}
	}

	cuda := "../.cache/onnxruntime-gpu/libonnxruntime_providers_cuda.so"
	if _, err := os.Stat(cuda); err != nil {
		t.Log("skipping the CUDA-libraries case: `make ort-gpu` has not run")
		return
	}
	if out, _ := exec.Command("ldd", cuda).CombinedOutput(); !strings.Contains(string(out), "libcudart.so.13 => not found") {
		t.Log("skipping the CUDA-libraries case: this machine has CUDA 13's runtime")
		return
	}
	code, out := run([]string{"NVIDIA_SMI=" + one})
	if code != 3 || !strings.Contains(out, "the CUDA provider cannot load: missing") || !strings.Contains(out, "libcudart.so.13") {
		t.Errorf("without CUDA 13: exit %d, %q; want exit 3 naming libcudart.so.13", code, out)
	}
}

// TestGPUCheckOutRelative: GPU_CHECK_OUT relative to where the script is run
// from names the table's file there, although the tests run in engine/. A stub
// engine test binary (--engine-test) writes the table; --cpu-only with stub
// library files skips the GPU and CUDA checks.
func TestGPUCheckOutRelative(t *testing.T) {
	lib := t.TempDir()
	for _, f := range []string{"libonnxruntime.so.1.29.0", "libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"} {
		if err := os.WriteFile(filepath.Join(lib, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(t.TempDir(), "engine.test")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n[ -z \"$SNEAKGATE_GPU_TABLE\" ] || echo 'the table' >\"$SNEAKGATE_GPU_TABLE\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("gpu-check.sh")
	if err != nil {
		t.Fatal(err)
	}
	name := "gpu-check-relative-" + filepath.Base(t.TempDir()) + ".txt"
	t.Cleanup(func() { os.Remove(filepath.Join("..", "engine", name)) }) // where it went before
	cwd := t.TempDir()
	cmd := exec.Command("bash", script, "--cpu-only", "--engine-test", bin)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "ORT_GPU_DIR="+lib, "GPU_CHECK_OUT="+name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(cwd, name)); err != nil || string(b) != "the table\n" {
		t.Errorf("the table in the directory run from: %q, %v\n%s", b, err, out)
	}
}
