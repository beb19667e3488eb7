package store_test

import (
	"errors"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// TestCommitFailsAfterMeta: a commit whose fdatasync of the meta page fails
// (ENOSPC from a thin-provisioned device or a network file system; simulated
// here by a Commit that succeeds and then reports ENOSPC, which is what bbolt
// leaves: it reads its meta pages from the file, so the failed commit is the
// one later transactions see) is not a commit that could not grow the file.
// Its Put must not be refused as ErrNoSpace, since the key is journaled; the
// store is broken instead (ErrDamaged: a restart verifies the file), and the
// file on disk is sound, with the first request.
func TestCommitFailsAfterMeta(t *testing.T) {
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	var inject atomic.Bool
	store.SetCommitTx(t, func(tx *bolt.Tx) error {
		if err := tx.Commit(); err != nil {
			return err
		}
		if inject.Load() {
			return syscall.ENOSPC // fdatasync of the meta page
		}
		return nil
	})
	mustPut(t, s, entry(0), store.New)
	inject.Store(true)
	_, err = s.Put(entry(1))
	if errors.Is(err, store.ErrNoSpace) || !errors.Is(err, store.ErrDamaged) {
		t.Fatalf("Put whose meta page was written but not synced: %v, want ErrDamaged, not ErrNoSpace", err)
	}
	inject.Store(false)
	if _, err := s.Put(entry(2)); !errors.Is(err, store.ErrDamaged) {
		t.Errorf("Put after it: %v, want ErrDamaged (the store is broken)", err)
	}
	if _, err := s.Lookup(key(3)); !errors.Is(err, store.ErrDamaged) {
		t.Errorf("Lookup of an unknown key after it: %v, want ErrDamaged", err)
	}
	if st := s.Stats(); !st.NoSpaceSince.IsZero() || st.NoSpaceErrors != 0 {
		t.Errorf("stats: %+v, want no no-space state", st)
	}
	if err := s.Close(); !errors.Is(err, store.ErrDamaged) {
		t.Errorf("Close: %v, want ErrDamaged", err)
	}
	c := storetest.Open(t, path, o)
	if res, err := c.Lookup(key(0)); err != nil || res.Dup != store.DupPending {
		t.Errorf("request 0 after reopening: %+v, %v", res, err)
	}
}
