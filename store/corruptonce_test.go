package store_test

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"

	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

const corruptLine = "skipping corrupt journal record"

// corruptJournal writes a journal with n healthy outbox replies after
// nBad outbox replies and one pending entry whose records it then damages,
// plus one healthy pending entry (key(0)). It returns the file's path.
func corruptJournal(t *testing.T, o store.Options, clk *storetest.Clock, nBad, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	var badPending uint64
	for i := range 2 + nBad + n {
		e := entry(i)
		mustPut(t, s, e, store.New)
		if i == 1 {
			badPending = e.Seq
		}
		if i >= 2 {
			// The damaged replies flush first (their keys sort first).
			if err := s.Outbox(key(i), []byte("reply"), clk.Now().Add(time.Duration(i)*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		p := tx.Bucket([]byte("pending"))
		v := bytes.Clone(p.Get(seqKey(badPending)))
		v[len(v)-1] ^= 0x01
		if err := p.Put(seqKey(badPending), v); err != nil {
			return err
		}
		ob := tx.Bucket([]byte("outbox"))
		c := ob.Cursor()
		var ks [][]byte
		for k, _ := c.First(); k != nil && len(ks) < nBad; k, _ = c.Next() {
			ks = append(ks, bytes.Clone(k))
		}
		for _, k := range ks {
			v := bytes.Clone(ob.Get(k))
			if err := ob.Put(k, v[:len(v)-1]); err != nil {
				return err
			}
		}
		return nil
	})
	return path
}

// A corrupt record stays in the journal while it is open, and the gateway reads
// the outbox at every flush (every 5 s): each corrupt record is logged, and
// counted in Stats.Corrupt, once per open journal, not at every read. Before,
// one damaged outbox reply logged an error line every 5 s for as long as the
// gateway ran, and Stats.Corrupt counted reads rather than records.
func TestCorruptRecordReportedOncePerOpen(t *testing.T) {
	clk := storetest.NewClock()
	var logs testenv.Buffer
	o := storetest.Options(t)
	o.Now = clk.Now
	o.Logger = zerolog.New(&logs)
	path := corruptJournal(t, o, clk, 1, 2)

	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 { // 20 flushes, 5 s apart, and as many reads of the pending entries
		clk.Advance(5 * time.Second)
		if got := outboxKeys(t, s); len(got) != 2 || got[0] != key(3) || got[1] != key(4) {
			t.Fatalf("OutboxEntries = %v, want %v and %v", got, key(3), key(4))
		}
		if got := pendingKeys(t, s); len(got) != 1 || got[0] != key(0) {
			t.Fatalf("Pending = %v, want only %v", got, key(0))
		}
	}
	if n := logs.Count(corruptLine); n != 2 {
		t.Errorf("%d %q lines after 20 reads of each bucket, want 2 (one per corrupt record)", n, corruptLine)
	}
	if c := s.Stats().Corrupt; c != 2 {
		t.Errorf("Stats.Corrupt = %d, want 2 (the corrupt records, not their reads)", c)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// The next open journal reports them again, once.
	s, err = store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range 3 {
		clk.Advance(5 * time.Second)
		outboxKeys(t, s)
	}
	if c := s.Stats().Corrupt; c != 1 {
		t.Errorf("after reopening: Stats.Corrupt = %d, want 1", c)
	}
	if n := logs.Count(corruptLine); n != 3 {
		t.Errorf("after reopening: %d %q lines in all, want 3", n, corruptLine)
	}
}

// The records remembered as reported are bounded: past the limit, corrupt
// records are skipped with one line saying so, and none per record or read.
func TestCorruptRecordsReportedAreBounded(t *testing.T) {
	store.SetCorruptReportLimit(t, 2)
	clk := storetest.NewClock()
	var logs testenv.Buffer
	o := storetest.Options(t)
	o.Now = clk.Now
	o.Logger = zerolog.New(&logs)
	path := corruptJournal(t, o, clk, 4, 1) // 5 corrupt records: 1 pending, 4 outbox

	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range 10 {
		clk.Advance(5 * time.Second)
		if got := outboxKeys(t, s); len(got) != 1 || got[0] != key(6) {
			t.Fatalf("OutboxEntries = %v, want only %v", got, key(6))
		}
		pendingKeys(t, s)
	}
	if n := logs.Count(corruptLine); n != 2 {
		t.Errorf("%d %q lines, want 2 (the limit)", n, corruptLine)
	}
	if n := logs.Count("too many corrupt journal records"); n != 1 {
		t.Errorf("%d lines saying the limit is reached, want 1", n)
	}
	if c := s.Stats().Corrupt; c != 2 {
		t.Errorf("Stats.Corrupt = %d, want 2 (the limit)", c)
	}
}
