package engine

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallScript checks scripts/install-ort.sh's offline paths: a library of
// the pinned size is left alone, a file of another size is refused loudly. (The
// download path needs the npm registry; `make ort` exercises it.)
func TestInstallScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	lib := libPath(t)
	if fi, _ := os.Stat(lib); fi.Size() != 45828512 {
		t.Skipf("%s is not the pinned 1.30.0 build", lib)
	}
	before, _ := os.Stat(lib)
	out, err := exec.Command("bash", "../scripts/install-ort.sh", lib).CombinedOutput()
	if err != nil {
		t.Fatalf("existing library: %v\n%s", err, out)
	}
	if after, _ := os.Stat(lib); !after.ModTime().Equal(before.ModTime()) {
		t.Error("the script rewrote an existing library")
	}

	bad := filepath.Join(t.TempDir(), "libonnxruntime.so")
	if err := os.WriteFile(bad, []byte("not a library"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("bash", "../scripts/install-ort.sh", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "want 45828512") {
		t.Fatalf("wrong-size file: %v\n%s", err, out)
	}
}
