package store_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
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
	path, o, s := openJournal(t)
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
	toSchema1(t, path, nil) // the same records, keyed by the keys, and the schema byte
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
		path, o, s := openJournal(t)
		mustPut(t, s, entry(0), store.New)
		if err := s.Complete(key(1), []byte("r1")); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if schema1 {
			toSchema1(t, path, nil)
		}
		rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("schema")) })
		rep, err := store.Inspect(path)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Pending != 1 || rep.Done != 1 || rep.Buckets[1].Corrupt != 0 || len(rep.Problems) != 1 {
			t.Errorf("schema 1 %v: Inspect without a schema record: %d pending, %d done, %d key records corrupt, problems %q; want 1, 1, 0 and only the missing schema",
				schema1, rep.Pending, rep.Done, rep.Buckets[1].Corrupt, rep.Problems)
		}
		// Open, which does not verify, refuses it rather than stamp it schema 2
		// (a schema 1 index read as slots would lose its keys); OpenOrRecover
		// salvages it, keys and all.
		if s, err := store.Open(path, o); !errors.Is(err, store.ErrSchema) {
			if err == nil {
				s.Close()
			}
			t.Fatalf("schema 1 %v: Open without a schema record: %v, want ErrSchema", schema1, err)
		}
		s, _, err = store.OpenOrRecover(path, o)
		if err != nil {
			t.Fatalf("schema 1 %v: OpenOrRecover: %v", schema1, err)
		}
		if res, err := s.Lookup(key(0)); err != nil || res.Dup != store.DupPending {
			t.Errorf("schema 1 %v: after the salvage, request 0: %+v, %v; want pending", schema1, res, err)
		}
		if res, err := s.Lookup(key(1)); err != nil || res.Dup != store.DupDone {
			t.Errorf("schema 1 %v: after the salvage, key 1: %+v, %v; want done", schema1, res, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Without a schema record, a schema 1 key index whose first record (in key
// order) is itself unreadable is still read as schema 1: the one damaged
// record counts corrupt, not every key, and a salvage keeps the other
// completed keys (read as slots, it would forget them all, and their requests
// would run again).
func TestKeysReadByTheirFormWhenTheFirstRecordIsDamaged(t *testing.T) {
	for _, schema1 := range []bool{true, false} {
		path, o, s := openJournal(t)
		for i := range 6 {
			mustPut(t, s, entry(i), store.New)
			if err := s.Complete(key(i), []byte("r")); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		first := ""
		if schema1 {
			toSchema1(t, path, func(recs map[string][]byte) {
				for kb := range recs {
					if first == "" || kb < first {
						first = kb
					}
				}
				v := recs[first]
				v[len(v)-1] ^= 0x01 // its checksum fails
			})
		} else {
			rawUpdate(t, path, func(tx *bolt.Tx) error {
				keys := tx.Bucket([]byte("keys"))
				sk, v := keys.Cursor().First()
				kb, _, _ := store.SplitKeyRecord(v)
				first = string(kb)
				v = bytes.Clone(v)
				v[len(v)-1] ^= 0x01
				return keys.Put(bytes.Clone(sk), v)
			})
		}
		rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("schema")) })
		rep, err := store.Inspect(path)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Done != 5 || rep.Buckets[1].Corrupt != 1 {
			t.Errorf("schema 1 %v: Inspect: %d done, %d key records corrupt; want 5 and 1 (the damaged one)", schema1, rep.Done, rep.Buckets[1].Corrupt)
		}
		out := filepath.Join(t.TempDir(), "salvaged.db")
		if rep, err := store.Salvage(path, out); err != nil || rep.Done != 5 {
			t.Fatalf("schema 1 %v: Salvage: %d done, %v; want 5", schema1, rep.Done, err)
		}
		s = storetest.Open(t, out, o)
		for i := range 6 {
			if string(store.EncodeKey(key(i))) != first {
				lookup(t, s, key(i), store.DupDone, "r")
			}
		}
	}
}

// openJournal opens a store on a new file with storetest's options, without
// storetest's check at the end (the tests rewrite the file after closing it).
func openJournal(t *testing.T) (string, store.Options, *store.Store) {
	t.Helper()
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	return path, o, s
}

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
	path, o, s := openJournal(t)
	mustPut(t, s, entry(0), store.New)
	mustPut(t, s, entry(1), store.New)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	toSchema1(t, path, func(recs map[string][]byte) {
		v := recs[string(store.EncodeKey(key(0)))]
		v[len(v)-1] ^= 0x01
	})
	s, err := store.Open(path, o) // not OpenOrRecover: nothing verifies the file first
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
	path, o, s := openJournal(t)
	res := mustPut(t, s, entry(0), store.New)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	toSchema1(t, path, func(recs map[string][]byte) {
		for _, i := range []int{3, 5} {
			recs[string(store.EncodeKey(key(i)))] = store.EncodeState(true, res.Seq, time.Time{}, 0, nil)
		}
	})
	s, err := store.Open(path, o)
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

// A salvage of a schema 1 journal writes a schema 2 journal that holds what
// the old one held, and opens healthy.
func TestSalvageOfSchema1Journal(t *testing.T) {
	clk := storetest.NewClock()
	o := storetest.Options(t)
	o.Now = clk.Now
	dir := t.TempDir()
	path := filepath.Join(dir, "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		mustPut(t, s, entry(i), store.New)
	}
	if err := s.Outbox(key(1), []byte("r1"), clk.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(key(2), []byte("r2")); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{9, 7, 8} { // answered, out of key order
		if _, err := s.Answered(key(i), []byte("r")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	toSchema1(t, path, nil)
	out := filepath.Join(dir, "salvaged.db")
	rep, err := store.Salvage(path, out)
	if err != nil || rep.Damaged() || rep.Pending != 3 || rep.Outbox != 1 || rep.Done != 4 {
		t.Fatalf("Salvage of the schema 1 journal: %+v, %v; want healthy, 3 pending, 1 in the outbox, 4 done", rep, err)
	}
	if got := rawRecords(t, out, "meta")["schema"]; !bytes.Equal(got, []byte{store.SchemaVersion}) {
		t.Errorf("schema of the salvaged journal: %v", got)
	}
	if rep, err := store.Inspect(out); err != nil || rep.Damaged() {
		t.Errorf("Inspect of the salvaged journal: %+v, %v", rep, err)
	}
	s = storetest.Open(t, out, o)
	lookup(t, s, key(0), store.DupPending, "")
	lookup(t, s, key(1), store.DupDone, "r1")
	lookup(t, s, key(2), store.DupDone, "r2")
	for _, i := range []int{7, 8, 9} {
		lookup(t, s, key(i), store.DupDone, "r")
	}
	lookup(t, s, key(5), store.New, "")
	if _, err := s.Answered(key(10), []byte("r10")); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, entry(11), store.New)
	if err := s.Complete(key(0), []byte("r0")); err != nil {
		t.Fatal(err)
	}
	lookup(t, s, key(10), store.DupDone, "r10")
	lookup(t, s, key(0), store.DupDone, "r0")
	if got := pendingKeys(t, s); !slices.Equal(got, []store.Key{key(3), key(4), key(11)}) {
		t.Errorf("Pending: %v", got)
	}
}

// The verification of a schema 2 journal, whose completed keys come in slot
// order rather than key order, still finds a key recorded twice.
func TestInspectFindsAKeyTwiceInSlotOrder(t *testing.T) {
	path, _, s := openJournal(t)
	for i := 9; i >= 0; i-- {
		if _, err := s.Answered(key(i), []byte("r")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := store.Inspect(path); err != nil || rep.Damaged() || rep.Done != 10 {
		t.Fatalf("Inspect: %+v, %v; want healthy with 10 done", rep, err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		keys := tx.Bucket([]byte("keys"))
		v := bytes.Clone(keys.Get(store.KeySlot(keys, store.EncodeKey(key(4)))))
		return keys.Put(binary.BigEndian.AppendUint64(nil, 1<<63|100), v)
	})
	rep, err := store.Inspect(path)
	if err != nil || !rep.Damaged() || !strings.Contains(strings.Join(rep.Problems, "\n"), "appears twice") {
		t.Errorf("Inspect of a key recorded twice: %+v, %v; want it reported", rep, err)
	}
}

// A pending or keys bucket sequence set back (a damaged bucket header:
// nothing checks it against the records) must not let a new key's record
// overwrite another key's record at the slot the sequence names: a request's
// (its seq) or an answer's without a request (the keys bucket's number).
func TestPutDoesNotOverwriteAnotherKeysSlot(t *testing.T) {
	path, o, s := openJournal(t)
	mustPut(t, s, entry(0), store.New) // slot 1
	if err := s.Complete(key(0), []byte("r0")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Answered(key(5), []byte("r5")); err != nil { // slot 1<<63|1
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return errors.Join(tx.Bucket([]byte("pending")).SetSequence(0), tx.Bucket([]byte("keys")).SetSequence(0))
	})
	s = storetest.Open(t, path, o)
	mustPut(t, s, entry(1), store.New) // seq 1 again
	if _, err := s.Answered(key(6), []byte("r6")); err != nil {
		t.Fatal(err)
	}
	lookup(t, s, key(0), store.DupDone, "r0")
	lookup(t, s, key(1), store.DupPending, "")
	lookup(t, s, key(5), store.DupDone, "r5")
	lookup(t, s, key(6), store.DupDone, "r6")
}

// An outbox record whose key record is lost (a damaged file; Open does not
// verify) keeps its seq from a new request when the pending sequence is set
// back too: Open sets it past the outbox records' seqs.
func TestPutDoesNotReuseAnOrphanOutboxSeq(t *testing.T) {
	path, o, s := openJournal(t)
	res := mustPut(t, s, entry(0), store.New)
	if err := s.Outbox(key(0), []byte("r0"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		var slot [8]byte
		binary.BigEndian.PutUint64(slot[:], res.Seq)
		return errors.Join(tx.Bucket([]byte("keys")).Delete(slot[:]), tx.Bucket([]byte("pending")).SetSequence(0))
	})
	s, err := store.Open(path, o) // not storetest's: its check after the test finds the orphan
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if again := mustPut(t, s, entry(1), store.New); again.Seq <= res.Seq {
		t.Errorf("a new request got seq %d; the orphan outbox record has %d", again.Seq, res.Seq)
	}
}

// Staged index changes in groups that are retried (a failing member taken
// out) or fail (the commit hook) never reach the index, and the committed ones
// all do: answers without a request, new Puts, a GC and a Put again of the
// keys it dropped, in one group each time. The cleanup's Check compares the
// index in memory with the file.
func TestKeyIndexStagingAcrossRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clk := storetest.NewClock()
		var mu sync.Mutex
		var g *gate   // when set, the next commit waits in the hook for g.release
		failPut := -1 // the hook fails a group holding a Put of entry(failPut)
		hook := func(ops []store.Op) error {
			mu.Lock()
			wait, fail := g, failPut
			g = nil
			mu.Unlock()
			if wait != nil {
				close(wait.entered)
				<-wait.release
			}
			for _, op := range ops {
				if op.Kind == store.OpPut && fail >= 0 && op.Key == key(fail) {
					return errors.New("injected")
				}
			}
			return nil
		}
		s := storetest.New(t, func(o *store.Options) {
			o.Now, o.Retention, o.BeforeCommit = clk.Now, time.Minute, hook
		})
		var wg sync.WaitGroup
		// group runs first alone, held in the hook, queues the others in order
		// behind it, and lets them commit as one group.
		group := func(first func(), rest ...func()) {
			gt := newGate()
			mu.Lock()
			g = gt
			mu.Unlock()
			wg.Go(first)
			<-gt.entered
			for _, fn := range rest {
				wg.Go(fn)
				synctest.Wait()
			}
			close(gt.release)
			wg.Wait()
		}
		answered := func(i int, reply string) func() {
			return func() {
				if _, err := s.Answered(key(i), []byte(reply)); err != nil {
					t.Error(err)
				}
			}
		}
		put := func(i int) func() { return func() { mustPut(t, s, entry(i), store.New) } }

		group(put(0),
			answered(5, "r5"),
			put(1),
			func() { // fails alone: the group is retried without it
				if err := s.Outbox(key(9), nil, time.Time{}); !errors.Is(err, store.ErrNotPending) {
					t.Errorf("Outbox of an unknown key: %v", err)
				}
			},
			answered(6, "r6"),
			put(7),
		)
		lookup(t, s, key(5), store.DupDone, "r5")
		lookup(t, s, key(6), store.DupDone, "r6")
		lookup(t, s, key(1), store.DupPending, "")
		lookup(t, s, key(7), store.DupPending, "")
		lookup(t, s, key(9), store.New, "")
		if err := s.Check(); err != nil {
			t.Fatal(err)
		}

		// A group the hook fails: none of its keys become known.
		mu.Lock()
		failPut = 2
		mu.Unlock()
		group(answered(8, "r8"), func() {
			if _, err := s.Put(entry(2)); err == nil {
				t.Error("Put with a failing commit succeeded")
			}
		}, func() {
			if _, err := s.Answered(key(3), []byte("r3")); err == nil {
				t.Error("Answered in a failing commit succeeded")
			}
		})
		lookup(t, s, key(2), store.New, "")
		lookup(t, s, key(3), store.New, "")
		mu.Lock()
		failPut = -1
		mu.Unlock()
		mustPut(t, s, entry(2), store.New)
		if err := s.Check(); err != nil {
			t.Fatal(err)
		}

		// Past the retention, GC drops the answered keys; a Put and an answer
		// of two of them in the same group, after it, are new.
		clk.Advance(2 * time.Minute)
		group(put(4),
			func() {
				if n, err := s.GC(clk.Now()); n != 3 || err != nil {
					t.Errorf("GC = %d, %v; want the 3 answered keys", n, err)
				}
			},
			put(5),
			answered(6, "r6 again"),
		)
		lookup(t, s, key(5), store.DupPending, "")
		lookup(t, s, key(6), store.DupDone, "r6 again")
		lookup(t, s, key(8), store.New, "")
		if err := s.Check(); err != nil {
			t.Fatal(err)
		}
	})
}

// Readers (Lookup, OutboxEntry, Check) run while the committer applies its
// changes to the index (run with -race).
func TestKeyIndexReadersDuringCommits(t *testing.T) {
	clk := storetest.NewClock()
	s := storetest.New(t, func(o *store.Options) { o.Now, o.Retention = clk.Now, time.Minute })
	done := make(chan struct{})
	var wg sync.WaitGroup
	for r := range 3 {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				k := key(n % 50)
				if _, err := s.Lookup(k); err != nil {
					t.Error(err)
					return
				}
				if _, err := s.OutboxEntry(k); err != nil {
					t.Error(err)
					return
				}
				if r == 0 && n%20 == 0 {
					if err := s.Check(); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	for i := range 50 {
		mustPut(t, s, entry(i), store.New)
		switch i % 3 {
		case 0:
			if err := s.Complete(key(i), []byte("r")); err != nil {
				t.Fatal(err)
			}
		case 1:
			if err := s.Outbox(key(i), []byte("r"), time.Time{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Answered(key(100+i), []byte("a")); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			clk.Advance(time.Minute)
			if _, err := s.GC(clk.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	wg.Wait()
}
