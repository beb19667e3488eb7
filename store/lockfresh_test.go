package store_test

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// OpenOrRecover that finds no file at the path creates one and waits for its
// lock; meanwhile another opener may have created the same file, written a
// journal into it and gone (killed, or stopped). Only a file still empty under
// the lock is new: this one must be verified, and here its damage salvaged.
// Before, the decision "new file" was taken before the lock, and the journal
// went to bbolt unverified (bbolt opened it: its meta pages are intact).
func TestOpenOrRecoverVerifiesAJournalWrittenWhileItWaited(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "other.db")
	want := makeJournal(t, src, 300)
	for _, d := range damages {
		if d.name == "root page flags flipped" {
			d.damage(t, src)
		}
	}
	damaged, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "journal.db")
	once := sync.OnceFunc(func() {
		// The other opener's journal, in the file this opener created (the same
		// inode: os.WriteFile truncates, it does not replace).
		if err := os.WriteFile(path, damaged, 0o600); err != nil {
			t.Error(err)
		}
	})
	store.SetLockOpened(t, func(p string) {
		if p == path {
			once()
		}
	})
	s, rec, err := store.OpenOrRecover(path, storetest.Options(t))
	if err != nil {
		t.Fatalf("OpenOrRecover: %v", err)
	}
	defer s.Close()
	if rec == nil {
		t.Fatal("a damaged journal written while OpenOrRecover waited for the lock was opened unverified: no Recovery")
	}
	if rec.Pending != len(want.pending) || rec.Outbox != len(want.outbox) || rec.Done != len(want.done) || rec.Lost != 0 {
		t.Errorf("kept %s; want all of %d pending, %d outbox, %d done", rec.Summary(), len(want.pending), len(want.outbox), len(want.done))
	}
	checkSalvaged(t, s, want)
}

// Inspect and Salvage read the journal that is at the path once they hold its
// lock: a gateway's start-up compaction may rename a new file over the path
// after they opened the old one and before they lock it (the gateway has
// released the old file by then, so the lock succeeds), and the old file is no
// longer the journal. Before, they reported on (or copied) that stale file.
func TestInspectAndSalvageReadTheFileAtThePath(t *testing.T) {
	for _, how := range []string{"Inspect", "Salvage"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "journal.db")
			makeJournal(t, path, 30)
			newer := filepath.Join(dir, "journal.db.compact")
			want := makeJournal(t, newer, 90)
			once := sync.OnceFunc(func() {
				if err := os.Rename(newer, path); err != nil {
					t.Error(err)
				}
			})
			store.SetLockOpened(t, func(p string) {
				if p == path {
					once()
				}
			})
			var rep *store.Report
			var err error
			if how == "Inspect" {
				rep, err = store.Inspect(path)
			} else {
				rep, err = store.Salvage(path, filepath.Join(dir, "salvaged.db"))
			}
			if err != nil {
				t.Fatalf("%s: %v", how, err)
			}
			if rep.Pending != len(want.pending) || rep.Outbox != len(want.outbox) || rep.Done != len(want.done) {
				t.Errorf("%s read %s; the journal at the path has %d pending, %d outbox, %d done", how, rep.Summary(), len(want.pending), len(want.outbox), len(want.done))
			}
		})
	}
}
