package store_test

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// lookup fails the test unless Lookup of k says want (and, for DupDone, reply).
func lookup(t *testing.T, s *store.Store, k store.Key, want store.Dup, reply string) {
	t.Helper()
	res, err := s.Lookup(k)
	if err != nil || res.Dup != want || (want == store.DupDone && string(res.Reply) != reply) {
		t.Errorf("Lookup %s: %s %q, %v; want %s %q", k, res.Dup, res.Reply, err, want, reply)
	}
}

// Keys whose hashes collide are told apart by the key each slot's record holds:
// with every key hashing alike, each call still finds its own key, before and
// after a restart (the index rebuilt from the file) and through GC. The
// cleanup's Check compares the index in memory with the file.
func TestKeyIndexWithCollidingHashes(t *testing.T) {
	store.SetKeyHash(t, func(maphash.Seed, []byte) uint64 { return 7 })
	clk := storetest.NewClock()
	o := storetest.Options(t)
	o.Now, o.Retention = clk.Now, time.Minute
	path := filepath.Join(t.TempDir(), "journal.db")
	s := storetest.Open(t, path, o)
	for i := range 5 {
		mustPut(t, s, entry(i), store.New)
	}
	mustPut(t, s, entry(2), store.DupPending)
	if err := s.Outbox(key(1), []byte("r1"), clk.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(key(0), []byte("r0")); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Answered(key(9), []byte("r9")); err != nil || res.Dup != store.New {
		t.Fatalf("Answered of a new key: %v, %v", res.Dup, err)
	}
	check := func(s *store.Store) {
		t.Helper()
		lookup(t, s, key(0), store.DupDone, "r0")
		lookup(t, s, key(1), store.DupDone, "r1")
		lookup(t, s, key(2), store.DupPending, "")
		lookup(t, s, key(9), store.DupDone, "r9")
		lookup(t, s, key(5), store.New, "")
		if got := pendingKeys(t, s); !slices.Equal(got, []store.Key{key(2), key(3), key(4)}) {
			t.Errorf("Pending: %v", got)
		}
	}
	check(s)
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = storetest.Open(t, path, o)
	check(s)

	// Past the retention GC forgets the completed keys, and only them.
	clk.Advance(2 * time.Minute)
	if n, err := s.GC(clk.Now()); n != 2 || err != nil {
		t.Fatalf("GC = %d, %v; want the 2 completed keys", n, err)
	}
	lookup(t, s, key(0), store.New, "")
	lookup(t, s, key(9), store.New, "")
	lookup(t, s, key(1), store.DupDone, "r1")
	lookup(t, s, key(3), store.DupPending, "")
	// A forgotten key is new again, and a fresh Complete finds it.
	mustPut(t, s, entry(0), store.New)
	if err := s.Complete(key(0), []byte("r0 again")); err != nil {
		t.Fatal(err)
	}
	lookup(t, s, key(0), store.DupDone, "r0 again")
	if err := s.Check(); err != nil {
		t.Error(err)
	}
}

// The index's writes land in arrival order: a request's key record is at its
// seq, and an answer recorded without a request at a slot of its own in the
// upper half, so what a commit writes sits at the ends of the bucket whatever
// devices the keys are from.
func TestKeyRecordsInArrivalOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	s := storetest.Open(t, path, storetest.Options(t))
	for i := range 3 {
		mustPut(t, s, entry(i), store.New)
	}
	if _, err := s.Answered(key(7), []byte("r7")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var slots []uint64
	var keys []store.Key
	for k, v := range rawRecords(t, path, "keys") {
		kb, _, ok := store.SplitKeyRecord(v)
		if !ok || len(k) != 8 {
			t.Fatalf("record %x: not a slot and a key", k)
		}
		slots = append(slots, binary.BigEndian.Uint64([]byte(k)))
		for i := range 8 {
			if bytes.Equal(kb, store.EncodeKey(key(i))) {
				keys = append(keys, key(i))
			}
		}
	}
	slices.Sort(slots)
	if !slices.Equal(slots, []uint64{1, 2, 3, 1<<63 | 1}) || len(keys) != 4 {
		t.Errorf("slots %x, keys %v; want seqs 1-3 and the first slot of the upper half", slots, keys)
	}
}

// A journal of schema 1 (the key index keyed by the keys) passes the
// verification, and is rewritten in arrival order when opened: what it knew is
// still known, and the file is of schema 2 after.
func TestSchema1JournalIsMigrated(t *testing.T) {
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		mustPut(t, s, entry(i), store.New)
	}
	if err := s.Outbox(key(1), []byte("r1"), storetest.Epoch.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(key(2), []byte("r2")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Answered(key(7), []byte("r7")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Schema 1: the same records, keyed by the keys, and the schema byte.
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		recs := map[string][]byte{}
		if err := tx.Bucket([]byte("keys")).ForEach(func(_, v []byte) error {
			kb, st, _ := store.SplitKeyRecord(v)
			recs[string(kb)] = bytes.Clone(st)
			return nil
		}); err != nil {
			return err
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
	if rep, err := store.Inspect(path); err != nil || rep.Damaged() || rep.Pending != 2 || rep.Outbox != 1 || rep.Done != 2 {
		t.Fatalf("Inspect of the schema 1 journal: %+v, %v; want healthy, 2 pending, 1 in the outbox, 2 done", rep, err)
	}
	s, rec, err := store.OpenOrRecover(path, o)
	if err != nil || rec != nil {
		t.Fatalf("OpenOrRecover: %v, %+v; want the journal opened as it is", err, rec)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = storetest.Open(t, path, o)
	lookup(t, s, key(0), store.DupPending, "")
	lookup(t, s, key(1), store.DupDone, "r1")
	lookup(t, s, key(2), store.DupDone, "r2")
	lookup(t, s, key(7), store.DupDone, "r7")
	lookup(t, s, key(4), store.New, "")
	if got := pendingKeys(t, s); !slices.Equal(got, []store.Key{key(0), key(3)}) {
		t.Errorf("Pending: %v", got)
	}
	if err := s.Complete(key(0), []byte("r0")); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Answered(key(8), []byte("r8")); err != nil || res.Dup != store.New {
		t.Errorf("Answered of a new key after the migration: %v, %v", res.Dup, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := rawRecords(t, path, "meta")["schema"]; !bytes.Equal(got, []byte{store.SchemaVersion}) {
		t.Errorf("schema after the migration: %v", got)
	}
	if rep, err := store.Inspect(path); err != nil || rep.Damaged() {
		t.Errorf("Inspect after the migration: %+v, %v", rep, err)
	}
}

// A journal that lost its schema record is read by what its key records are:
// a schema 1 index (key -> state) is not taken for slots, whose keys would all
// count corrupt and whose completed keys a salvage would forget.
func TestKeysReadByTheirFormWithoutASchemaRecord(t *testing.T) {
	for _, schema1 := range []bool{false, true} {
		o := storetest.Options(t)
		path := filepath.Join(t.TempDir(), "journal.db")
		s, err := store.Open(path, o)
		if err != nil {
			t.Fatal(err)
		}
		mustPut(t, s, entry(0), store.New)
		if err := s.Complete(key(1), []byte("r1")); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		rawUpdate(t, path, func(tx *bolt.Tx) error {
			if schema1 {
				keys := tx.Bucket([]byte("keys"))
				recs := map[string][]byte{}
				keys.ForEach(func(k, v []byte) error {
					kb, st, _ := store.SplitKeyRecord(v)
					recs[string(kb)] = bytes.Clone(st)
					return nil
				})
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
			}
			return tx.Bucket([]byte("meta")).Delete([]byte("schema"))
		})
		rep, err := store.Inspect(path)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Pending != 1 || rep.Done != 1 || rep.Buckets[1].Corrupt != 0 || len(rep.Problems) != 1 {
			t.Errorf("schema 1 %v: Inspect without a schema record: %d pending, %d done, %d key records corrupt, problems %q; want 1, 1, 0 and only the missing schema",
				schema1, rep.Pending, rep.Done, rep.Buckets[1].Corrupt, rep.Problems)
		}
	}
}
