package store_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// toSchema1 rewrites the closed schema 2 journal at path as schema 1 (the key
// index keyed by the keys), letting edit change the state records first.
func toSchema1(t *testing.T, path string, edit func(recs map[string][]byte)) {
	t.Helper()
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		recs := map[string][]byte{}
		if err := tx.Bucket([]byte("keys")).ForEach(func(_, v []byte) error {
			kb, st, _ := store.SplitKeyRecord(v)
			recs[string(kb)] = bytes.Clone(st)
			return nil
		}); err != nil {
			return err
		}
		if edit != nil {
			edit(recs)
		}
		if err := tx.DeleteBucket([]byte("keys")); err != nil {
			return err
		}
		keys, err := tx.CreateBucket([]byte("keys"))
		if err != nil {
			return err
		}
		for kb, st := range recs {
			if err := keys.Put([]byte(kb), st); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte{store.SchemaKeysByKey})
	})
}

// A schema 1 key record the migration cannot read (its state record fails its
// checksum) is kept, under a slot of its own: as in schema 1, a Lookup or Put
// of the key reports it corrupt (the gateway stops, and the next start's
// verification salvages the journal) instead of taking the key for new and
// journaling its pending request a second time.
func TestSchema1MigrationKeepsAnUnreadableKeyRecord(t *testing.T) {
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, entry(0), store.New)
	mustPut(t, s, entry(1), store.New)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	toSchema1(t, path, func(recs map[string][]byte) {
		v := recs[string(store.EncodeKey(key(0)))]
		v[len(v)-1] ^= 0x01
	})
	s, err = store.Open(path, o) // not OpenOrRecover: nothing verifies the file first
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Lookup(key(0)); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("Lookup of the key with an unreadable record: %v, want ErrCorrupt (as before the migration)", err)
	}
	if res, err := s.Put(entry(0)); err == nil {
		t.Errorf("Put of the pending key with an unreadable record: %s, nil; want an error (it is pending: a New journals it twice)", res.Dup)
	}
	if n := len(pendingKeys(t, s)); n != 2 {
		t.Errorf("%d pending entries, want 2", n)
	}
	lookup(t, s, key(1), store.DupPending, "")
}

// Two schema 1 keys claiming one seq (damage the verification reports) are
// both still known after the migration, as they were before it: neither is
// taken for new.
func TestSchema1MigrationKeepsKeysClaimingOneSeq(t *testing.T) {
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	res := mustPut(t, s, entry(0), store.New)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	toSchema1(t, path, func(recs map[string][]byte) {
		for _, i := range []int{3, 5} {
			recs[string(store.EncodeKey(key(i)))] = store.EncodeState(true, res.Seq, time.Time{}, 0, nil)
		}
	})
	s, err = store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, i := range []int{0, 3, 5} {
		if r, err := s.Lookup(key(i)); err != nil || r.Dup != store.DupPending {
			t.Errorf("Lookup %s: %s, %v; want dup-pending (as before the migration)", key(i), r.Dup, err)
		}
	}
}

// A pending bucket sequence set back (a damaged bucket header: nothing checks
// it against the records) must not let a new request's key record overwrite
// another key's record at the slot its seq names.
func TestPutDoesNotOverwriteAnotherKeysSlot(t *testing.T) {
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, entry(0), store.New) // slot 1
	if err := s.Complete(key(0), []byte("r0")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket([]byte("pending")).SetSequence(0) })
	s = storetest.Open(t, path, o)
	mustPut(t, s, entry(1), store.New) // seq 1 again
	lookup(t, s, key(0), store.DupDone, "r0")
	lookup(t, s, key(1), store.DupPending, "")
}
