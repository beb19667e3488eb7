package main

import (
	nativeendian "encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/store"
)

// writeJournal writes a small journal at path: n requests, a third of them
// answered.
func writeJournal(t *testing.T, path string, n int) {
	t.Helper()
	s, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		k := store.Key{App: "cls", Device: "dev", ID: fmt.Sprint(i)}
		if _, err := s.Put(&store.Entry{Key: k, ReplyTo: "r", Input: make([]float32, 32)}); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			if err := s.Complete(k, []byte("reply")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestJournalCheckAndSalvage runs journal check on a healthy and a damaged
// journal, and journal salvage on the damaged one.
func TestJournalCheckAndSalvage(t *testing.T) {
	dir := t.TempDir()
	healthy, damaged := filepath.Join(dir, "healthy.db"), filepath.Join(dir, "damaged.db")
	writeJournal(t, healthy, 200)
	writeJournal(t, damaged, 200)
	// Destroy the page the root bucket lives on: bbolt panics on such a file.
	b, err := os.ReadFile(damaged)
	if err != nil {
		t.Fatal(err)
	}
	ne := nativeendian.NativeEndian
	ps := int(ne.Uint32(b[16+8:]))
	meta := 16 // of the meta page with the higher transaction id
	if ne.Uint64(b[ps+16+48:]) > ne.Uint64(b[16+48:]) {
		meta = ps + 16
	}
	root := int(ne.Uint64(b[meta+16:]))
	for i := range 64 {
		b[root*ps+16+i] ^= 0xa5
	}
	if err := os.WriteFile(damaged, b, 0o600); err != nil {
		t.Fatal(err)
	}

	out, code := runBinary(t, "journal", "check", healthy)
	if code != 0 || !strings.Contains(out, "healthy") || !strings.Contains(out, "133 pending, 0 outbox, 67 done") {
		t.Errorf("check of a healthy journal: exit %d, output:\n%s", code, out)
	}
	out, code = runBinary(t, "journal", "check", damaged)
	if code != 1 || !strings.Contains(out, "DAMAGED") || !strings.Contains(out, "journal salvage") {
		t.Errorf("check of a damaged journal: exit %d, output:\n%s", code, out)
	}
	t.Logf("check of the damaged journal:\n%s", out)
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine") {
		t.Errorf("check of a damaged journal panicked:\n%s", out)
	}

	salvaged := filepath.Join(dir, "salvaged.db")
	out, code = runBinary(t, "journal", "salvage", damaged, "-out", salvaged)
	if code != 0 || !strings.Contains(out, "salvaged "+damaged+" into "+salvaged) {
		t.Errorf("salvage: exit %d, output:\n%s", code, out)
	}
	if out, code = runBinary(t, "journal", "check", salvaged); code != 0 {
		t.Errorf("check of the salvaged journal: exit %d, output:\n%s", code, out)
	}
	if out, code = runBinary(t, "journal", "salvage", damaged, "-out", salvaged); code != 1 || !strings.Contains(out, "already exists") {
		t.Errorf("salvage onto an existing file: exit %d, output:\n%s", code, out)
	}

	for _, args := range [][]string{{"journal"}, {"journal", "frob"}, {"journal", "check"}, {"journal", "salvage", damaged}} {
		if out, code := runBinary(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage); output:\n%s", args, code, out)
		}
	}
	if out, code := runBinary(t, "journal", "check", filepath.Join(dir, "nonexistent.db")); code != 1 {
		t.Errorf("check of a missing file: exit %d, want 1; output:\n%s", code, out)
	}
}

// journal salvage of a file that is not a journal (a text file) fails, exit 1,
// with an error that says so, and writes no NEWFILE; before, it exited 0 and
// left an empty journal as if the file had been salvaged with nothing lost.
// journal check of such a file exits 1 and does not send the operator to
// salvage.
func TestJournalSalvageNotAJournal(t *testing.T) {
	dir := t.TempDir()
	text, out := filepath.Join(dir, "notes.txt"), filepath.Join(dir, "new.db")
	if err := os.WriteFile(text, []byte("this is not a journal\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, code := runBinary(t, "journal", "salvage", text, "-out", out)
	if code != 1 || !strings.Contains(got, "not a bbolt file") || strings.Contains(got, "salvaged "+text) {
		t.Errorf("salvage of a text file: exit %d, want 1 and an error; output:\n%s", code, got)
	}
	if _, err := os.Lstat(out); !os.IsNotExist(err) {
		t.Errorf("salvage of a text file left %s (%v)", out, err)
	}
	got, code = runBinary(t, "journal", "check", text)
	if code != 1 || !strings.Contains(got, "not a bbolt file") || strings.Contains(got, "journal salvage") {
		t.Errorf("check of a text file: exit %d, want 1, saying it is no journal; output:\n%s", code, got)
	}
}
