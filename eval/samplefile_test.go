package eval

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/dataset"
)

// copyApp copies the bundled application app (its manifest and every file
// under it) to a temporary directory and returns the new manifest's path.
func copyApp(t *testing.T, app string) string {
	t.Helper()
	src := filepath.Join("..", "models", app)
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dst, "manifest.yaml")
}

// TestLoadAppSampleFileErrorsNameTheFile: a sample or validation file that
// does not fit the application was reported by the manifest's path or the
// application's name, not the file's ("eval: .../manifest.yaml: samples have
// 35 values, input_size is 36"; a label beyond the classes only after every
// variant and estimator had run, as "eval: app satellite: sample 0 has label
// 9, want 0..5"); a validation file of the wrong width was not checked at all
// and reached the estimator.
func TestLoadAppSampleFileErrorsNameTheFile(t *testing.T) {
	prof, err := ReadProfiles("testdata/profiles.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, file string
		set        *dataset.Set
		msg        string
	}{
		{"samples width", "samples.sgs", &dataset.Set{N: 1, D: 35, Values: make([]float32, 35), Labels: []int32{0}}, "35 values per sample, input_size is 36"},
		{"samples label", "samples.sgs", &dataset.Set{N: 1, D: 36, Values: make([]float32, 36), Labels: []int32{9}}, "sample 0 has label 9, want 0..5"},
		{"validation width", "data/validation.sgs", &dataset.Set{N: 1, D: 35, Values: make([]float32, 35), Labels: []int32{0}}, "35 values per sample, input_size is 36"},
		{"validation label", "data/validation.sgs", &dataset.Set{N: 1, D: 36, Values: make([]float32, 36), Labels: []int32{-1}}, "sample 0 has label -1, want 0..5"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := copyApp(t, "satellite")
			file := filepath.Join(filepath.Dir(path), c.file)
			if err := dataset.Write(file, c.set, false); err != nil {
				t.Fatal(err)
			}
			_, err := func() (a *App, err error) {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("panic: %v", r)
					}
				}()
				return LoadApp(context.Background(), path, LoadOptions{Profiles: prof})
			}()
			if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %v: want one naming %s and saying %q", err, file, c.msg)
			}
		})
	}
}
