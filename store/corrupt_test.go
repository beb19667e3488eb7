package store_test

import (
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
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte{2})
	})
	if s, err := store.Open(path, o); !errors.Is(err, store.ErrSchema) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open of a newer schema: err %v, want ErrSchema", err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error { // so the cleanup check can open it
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte{1})
	})
}
