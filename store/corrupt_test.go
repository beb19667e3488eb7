package store_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// rawUpdate edits the closed journal at path with bbolt directly.
func rawUpdate(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// Corrupt records are reported, counted and skipped; the others are recovered.
func TestCorruptRecordsAreSkipped(t *testing.T) {
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	s := storetest.Open(t, path, o)
	var seqs []uint64
	for i := range 5 {
		e := entry(i)
		mustPut(t, s, e, store.New)
		seqs = append(seqs, e.Seq)
	}
	if err := s.Outbox(key(4), []byte("r4"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	rawUpdate(t, path, func(tx *bolt.Tx) error {
		p := tx.Bucket([]byte("pending"))
		// Garbage, a flipped bit, and a record from a future format version.
		flipped := append([]byte(nil), p.Get(seqKey(seqs[2]))...)
		flipped[len(flipped)-3] ^= 0x10
		future := append([]byte(nil), p.Get(seqKey(seqs[3]))...)
		future[0] = 99
		for seq, v := range map[uint64][]byte{seqs[1]: []byte("\x01\x01garbage"), seqs[2]: flipped, seqs[3]: future} {
			if err := p.Put(seqKey(seq), v); err != nil {
				return err
			}
		}
		ob := tx.Bucket([]byte("outbox"))
		k, v := ob.Cursor().First()
		return ob.Put(k, v[:len(v)-1])
	})

	s = storetest.Open(t, path, o)
	got := pendingKeys(t, s)
	if len(got) != 1 || got[0] != key(0) {
		t.Errorf("Pending = %v, want only %v", got, key(0))
	}
	if got := outboxKeys(t, s); len(got) != 0 {
		t.Errorf("OutboxEntries = %v, want none (its record is truncated)", got)
	}
	if c := s.Stats().Corrupt; c != 4 {
		t.Errorf("Stats.Corrupt = %d, want 4", c)
	}
	// The keys stay known: redeliveries are not run twice.
	mustPut(t, s, entry(2), store.DupPending)
	if err := s.Outbox(key(2), []byte("r"), time.Time{}); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("Outbox of a corrupt entry: err %v, want ErrCorrupt", err)
	}
	// And they can still be completed (the gateway may answer from elsewhere).
	if err := s.Complete(key(2), []byte("r")); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, s, 3, 1, 1)
}

func TestNewerSchemaIsRefused(t *testing.T) {
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	if err := storetest.Open(t, path, o).Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte{store.SchemaVersion + 1})
	})
	if s, err := store.Open(path, o); !errors.Is(err, store.ErrSchema) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open of a newer schema: err %v, want ErrSchema", err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error { // so the cleanup check can open it
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte{store.SchemaVersion})
	})
}

// GC drops a completed key whose key record does not decode together with its
// expiry record, and counts it as corrupt. Before, it dropped only the expiry
// record and kept the key record for good: nothing pointed at it any more,
// Stats.Done kept counting it, and every Put and Lookup of its key failed with
// ErrCorrupt.
func TestGCCorruptKeyRecord(t *testing.T) {
	clk := storetest.NewClock()
	o := storetest.Options(t)
	o.Now, o.Retention = clk.Now, time.Minute
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Complete(key(i), []byte("reply")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	bad := store.EncodeKey(key(1))
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		kb := tx.Bucket([]byte("keys"))
		slot := store.KeySlot(kb, bad)
		v := bytes.Clone(kb.Get(slot))
		v[len(v)-1] ^= 0x01 // the reply's last byte: the checksum fails
		return kb.Put(slot, v)
	})
	s, err = store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Lookup(key(1)); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("Lookup of the damaged key before GC: %v, want ErrCorrupt", err)
	}
	clk.Advance(2 * time.Minute)
	if n, err := s.GC(clk.Now()); n != 3 || err != nil {
		t.Errorf("GC = %d, %v; want 3 keys dropped, the undecodable one among them", n, err)
	}
	if st := s.Stats(); st.Done != 0 || st.Corrupt != 1 {
		t.Errorf("after GC: Stats.Done %d, Stats.Corrupt %d; want 0 and 1", st.Done, st.Corrupt)
	}
	if res, err := s.Lookup(key(1)); err != nil || res.Dup != store.New {
		t.Errorf("Lookup of the damaged key after GC: %v, %v; want new (forgotten)", res.Dup, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var keys, expiries int
	db.View(func(tx *bolt.Tx) error {
		keys = tx.Bucket([]byte("keys")).Stats().KeyN
		expiries = tx.Bucket([]byte("expiry")).Stats().KeyN
		return nil
	})
	db.Close()
	if keys != 0 || expiries != 0 {
		t.Errorf("after GC: %d key records, %d expiry records; want none", keys, expiries)
	}
	if rep, err := store.Inspect(path); err != nil || rep.Damaged() {
		t.Errorf("Inspect after GC: %v, %v; want a healthy journal", rep, err)
	}
}

// Check runs safely while the committer writes: bbolt's Tx.Check reads the
// freelist a committing writer changes (a data race under -race before Check
// excluded commits), as a test's closing check meets a reply's asynchronous
// completion still committing.
func TestCheckWhileCommitting(t *testing.T) {
	s := storetest.New(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			if _, err := s.Put(entry(i)); err != nil {
				t.Error(err)
				return
			}
			s.CompleteAsync(key(i), []byte("reply"), nil)
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		if err := s.Check(); err != nil {
			t.Fatal(err)
		}
	}
}
