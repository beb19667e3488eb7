package cachefile

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

type key struct {
	A string `json:"a"`
	N int    `json:"n"`
}

// Name depends on the key's JSON alone; SameKey compares it.
func TestNameAndSameKey(t *testing.T) {
	a, b := key{"x", 1}, key{"x", 2}
	na, nb := Name("app.v", a), Name("app.v", b)
	if !regexp.MustCompile(`^app\.v\.[0-9a-f]{16}\.json$`).MatchString(na) {
		t.Errorf("name %q", na)
	}
	if na == nb || na != Name("app.v", &key{"x", 1}) {
		t.Errorf("names %q %q: want different keys apart, equal ones alike", na, nb)
	}
	if !SameKey(a, &key{"x", 1}) || SameKey(a, b) {
		t.Error("SameKey")
	}
	if SameKey(map[string]float64{"x": 1}, func() {}) {
		t.Error("SameKey of a value that does not marshal")
	}
}

// Store replaces the file atomically and removes the stale entries, not
// itself.
func TestStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sub")
	old := filepath.Join(dir, Name("app.v", key{"old", 0}))
	cur := filepath.Join(dir, Name("app.v", key{"new", 0}))
	other := filepath.Join(dir, "app.w.0000000000000000.json")
	for _, f := range []string{old, other} {
		if err := Store(f, 1, "t", "none"); err != nil {
			t.Fatal(err)
		}
	}
	if err := Store(cur, map[string]int{"v": 2}, "t", "app.v.*.json"); err != nil {
		t.Fatal(err)
	}
	got, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(got) != 2 || got[0] != cur && got[1] != cur {
		t.Errorf("files %v, want %s and %s", got, cur, other)
	}
	if b, _ := os.ReadFile(cur); string(b) != "{\n  \"v\": 2\n}\n" {
		t.Errorf("content %q", b)
	}
	hidden, _ := filepath.Glob(filepath.Join(dir, ".t-*"))
	if len(hidden) != 0 {
		t.Errorf("temporary files left: %v", hidden)
	}
}
