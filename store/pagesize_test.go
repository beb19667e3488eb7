package store_test

import (
	"path/filepath"
	"testing"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// A new journal gets Options.PageSize (DefaultPageSize when zero); an existing
// one keeps the page size it was created with, whatever the options say.
func TestPageSize(t *testing.T) {
	dir := t.TempDir()
	pageSize := func(path string) int {
		t.Helper()
		rep, err := store.Inspect(path)
		if err != nil {
			t.Fatal(err)
		}
		return rep.PageSize
	}
	o := storetest.Options(t)
	path := filepath.Join(dir, "default.db")
	s := storetest.Open(t, path, o)
	mustPut(t, s, entry(1), store.New)
	s.Close()
	if got := pageSize(path); got != store.DefaultPageSize {
		t.Errorf("new journal: page size %d, want %d", got, store.DefaultPageSize)
	}

	old := filepath.Join(dir, "4k.db")
	o.PageSize = 4096
	s = storetest.Open(t, old, o)
	mustPut(t, s, entry(2), store.New)
	s.Close()
	o.PageSize = 0
	s = storetest.Open(t, old, o)
	mustPut(t, s, entry(2), store.DupPending)
	mustPut(t, s, entry(3), store.New)
	s.Close()
	if got := pageSize(old); got != 4096 {
		t.Errorf("reopened 4 KiB journal: page size %d, want 4096", got)
	}

	for _, bad := range []int{-1, 1000, 512, 3 << 12} {
		o.PageSize = bad
		if s, err := store.Open(filepath.Join(dir, "bad.db"), o); err == nil {
			s.Close()
			t.Errorf("Open with page size %d succeeded", bad)
		}
	}
}
