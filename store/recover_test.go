package store_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// journal is what makeJournal wrote: the state of every key it used.
type journal struct {
	pending map[store.Key]*store.Entry
	outbox  map[store.Key][]byte // reply
	done    map[store.Key][]byte // reply
}

// makeJournal writes n requests through the store API into a new journal at
// path: every third is completed, every fifth of the rest goes to the outbox,
// and the others stay pending. It closes the store.
func makeJournal(t *testing.T, path string, n int) journal {
	t.Helper()
	s, err := store.Open(path, storetest.Options(t))
	if err != nil {
		t.Fatal(err)
	}
	j := journal{pending: map[store.Key]*store.Entry{}, outbox: map[store.Key][]byte{}, done: map[store.Key][]byte{}}
	for i := range n {
		e := entry(i)
		e.Input = make([]float32, 64)
		for x := range e.Input {
			e.Input[x] = float32(i*100 + x)
		}
		mustPut(t, s, e, store.New)
		reply := fmt.Appendf(nil, "reply-%d", i)
		switch {
		case i%3 == 0:
			if err := s.Complete(e.Key, reply); err != nil {
				t.Fatal(err)
			}
			j.done[e.Key] = reply
		case i%5 == 0:
			if err := s.Outbox(e.Key, reply, storetest.Epoch.Add(time.Duration(i)*time.Second)); err != nil {
				t.Fatal(err)
			}
			j.outbox[e.Key] = reply
		default:
			j.pending[e.Key] = e
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return j
}

// boltMeta reads the fields of the meta page bbolt uses (the valid one with the
// higher transaction id): page size, root page, high-water mark.
func boltMeta(t *testing.T, path string) (pageSize int, root, pgid uint64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	meta := func(off int) (ps uint32, root, pgid, txid uint64) {
		m := b[off+16:]
		return ne.Uint32(m[8:]), ne.Uint64(m[16:]), ne.Uint64(m[40:]), ne.Uint64(m[48:])
	}
	ps, root, pgid, tx0 := meta(0)
	if _, r1, p1, tx1 := meta(int(ps)); tx1 > tx0 {
		root, pgid = r1, p1
	}
	return int(ps), root, pgid
}

// pagesInUse returns the first n pages after the meta pages that hold a branch
// or a leaf of the journal's B-trees (not free, not the freelist).
func pagesInUse(t *testing.T, path string, n int) []int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ids []int
	err = db.View(func(tx *bolt.Tx) error {
		for id := 2; len(ids) < n; id++ {
			p, err := tx.Page(id)
			if err != nil {
				return err
			}
			if p == nil {
				return fmt.Errorf("fewer than %d pages in use", n)
			}
			if p.Type == "branch" || p.Type == "leaf" {
				ids = append(ids, id)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// patchFile applies fn to the bytes of the file at path and writes them back,
// with the file's length set to what fn returns.
func patchFile(t *testing.T, path string, fn func(b []byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fn(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The damage users found, and more. Each is applied to a closed journal.
var damages = []struct {
	name string
	// allKept: everything is still readable, so the salvage must keep it all.
	allKept bool
	damage  func(t *testing.T, path string)
}{
	{"root page flags flipped", true, func(t *testing.T, path string) {
		ps, root, _ := boltMeta(t, path)
		patchFile(t, path, func(b []byte) []byte {
			off := int(root)*ps + 8 // the page header's flags
			b[off] ^= 0xff
			b[off+1] ^= 0xff
			return b
		})
	}},
	{"root page id flipped", true, func(t *testing.T, path string) {
		ps, root, _ := boltMeta(t, path)
		patchFile(t, path, func(b []byte) []byte {
			b[int(root)*ps] ^= 0x5a
			b[int(root)*ps+1] ^= 0xa5
			return b
		})
	}},
	{"two pages' header flags flipped", false, func(t *testing.T, path string) {
		// The first two pages in use (pages 2 and 3 once, but which pages a
		// journal uses depends on how its writes fell into commits: a free
		// page's damage is no damage).
		ps, _, _ := boltMeta(t, path)
		used := pagesInUse(t, path, 2)
		patchFile(t, path, func(b []byte) []byte {
			for _, id := range used {
				b[id*ps+8] ^= 0xff
			}
			return b
		})
	}},
	{"truncated to half", false, func(t *testing.T, path string) {
		patchFile(t, path, func(b []byte) []byte { return b[:len(b)/2] })
	}},
	{"64 random bytes flipped in data pages", false, func(t *testing.T, path string) {
		ps, _, pgid := boltMeta(t, path)
		r := rand.New(rand.NewPCG(1, 2))
		patchFile(t, path, func(b []byte) []byte {
			for range 64 {
				page := 2 + r.IntN(int(pgid)-2)
				b[page*ps+16+r.IntN(ps-16)] ^= byte(1 + r.IntN(255))
			}
			return b
		})
	}},
	{"zero-length file", false, func(t *testing.T, path string) {
		patchFile(t, path, func([]byte) []byte { return nil })
	}},
	{"garbage", false, func(t *testing.T, path string) {
		r := rand.New(rand.NewPCG(3, 4))
		patchFile(t, path, func(b []byte) []byte {
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return b
		})
	}},
	{"both meta pages corrupted", true, func(t *testing.T, path string) {
		ps, _, _ := boltMeta(t, path)
		patchFile(t, path, func(b []byte) []byte {
			b[16+50] ^= 0x01 // the transaction id: the checksum fails
			b[ps+16+50] ^= 0x01
			return b
		})
	}},
	{"both meta pages destroyed", false, func(t *testing.T, path string) {
		ps, _, _ := boltMeta(t, path)
		patchFile(t, path, func(b []byte) []byte {
			clear(b[:2*ps])
			return b
		})
	}},
	{"truncated to a non-page multiple", false, func(t *testing.T, path string) {
		ps, _, pgid := boltMeta(t, path)
		patchFile(t, path, func(b []byte) []byte {
			return b[:int(pgid)*ps-ps/2-1] // into the last page in use
		})
	}},
}

// TestOpenOrRecoverSurvivesDamage damages a journal in each way users found
// and checks that OpenOrRecover neither panics nor fails: it moves the file
// aside, the check reports the damage, and the new journal is usable and holds
// exactly what was readable, every key either in its old state or released.
func TestOpenOrRecoverSurvivesDamage(t *testing.T) {
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			o := storetest.Options(t)
			dir := t.TempDir()
			path := filepath.Join(dir, "journal.db")
			want := makeJournal(t, path, 300)
			d.damage(t, path)

			s, rec, err := store.OpenOrRecover(path, o)
			if err != nil {
				t.Fatalf("OpenOrRecover: %v", err)
			}
			defer s.Close()
			if rec == nil {
				t.Fatal("OpenOrRecover of a damaged journal: no Recovery")
			}
			t.Logf("recovery: %s", rec.Summary())
			if !strings.HasPrefix(rec.MovedTo, path+".corrupt-") {
				t.Errorf("MovedTo = %q, want %s.corrupt-<time>", rec.MovedTo, path)
			}
			rep, err := store.Inspect(rec.MovedTo)
			if err != nil {
				t.Fatalf("Inspect of the damaged copy: %v", err)
			}
			if !rep.Damaged() {
				t.Errorf("Inspect of the damaged copy: no damage reported")
			}
			if rep.Pending != rec.Pending || rep.Outbox != rec.Outbox || rep.Done != rec.Done || rep.Lost != rec.Lost {
				t.Errorf("Inspect counts %s, recovery kept %s: want the same", rep.Summary(), rec.Summary())
			}
			if err := s.Check(); err != nil {
				t.Errorf("Check of the new journal: %v", err)
			}
			if d.allKept && (rec.Pending != len(want.pending) || rec.Outbox != len(want.outbox) || rec.Done != len(want.done) || rec.Lost != 0) {
				t.Errorf("kept %s; want all of %d pending, %d outbox, %d done", rec.Summary(), len(want.pending), len(want.outbox), len(want.done))
			}
			wantCounts(t, s, rec.Pending, rec.Outbox, rec.Done)
			checkSalvaged(t, s, want)

			// And it works.
			mustPut(t, s, entry(100000), store.New)
			if err := s.Complete(key(100000), []byte("r")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// checkSalvaged checks that every entry in s is as it was written, and that
// every key the journal knew is either in its old state or released (a
// redelivery is new).
func checkSalvaged(t *testing.T, s *store.Store, want journal) {
	t.Helper()
	pending, err := s.Pending()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range pending {
		w := want.pending[e.Key]
		if w == nil {
			t.Errorf("Pending holds %s, which was not pending", e.Key)
			continue
		}
		if !sameEntry(e, w) {
			t.Errorf("Pending entry %s = %+v, want %+v", e.Key, e, w)
		}
	}
	outbox, err := s.OutboxEntries()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range outbox {
		if r, ok := want.outbox[o.Key]; !ok || !bytes.Equal(o.Reply, r) {
			t.Errorf("outbox holds %s with reply %q, want it absent or with %q", o.Key, o.Reply, r)
		}
	}
	check := func(k store.Key, reply []byte, states ...store.Dup) {
		res, err := s.Lookup(k)
		if err != nil {
			t.Errorf("Lookup %s: %v", k, err)
			return
		}
		if res.Dup != store.New && (!slices.Contains(states, res.Dup) || (res.Dup == store.DupDone && !bytes.Equal(res.Reply, reply))) {
			t.Errorf("Lookup %s = %s %q, want one of %v (with %q) or released (new)", k, res.Dup, res.Reply, states, reply)
		}
	}
	for k := range want.pending {
		check(k, nil, store.DupPending)
	}
	for k, r := range want.outbox {
		check(k, r, store.DupPending, store.DupDone)
	}
	for k, r := range want.done {
		check(k, r, store.DupDone)
	}
}

// A corrupt pending record no longer blocks its key: OpenOrRecover drops it
// and releases the key, so the device's resend runs as new.
func TestCorruptRecordReleasesItsKey(t *testing.T) {
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	want := makeJournal(t, path, 20)
	victim := key(1) // pending (neither a multiple of 3 nor of 5)
	victimOut := key(5)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		p := tx.Bucket([]byte("pending"))
		rec := bytes.Clone(p.Get(seqKey(want.pending[victim].Seq)))
		rec[len(rec)-2] ^= 0x40
		if err := p.Put(seqKey(want.pending[victim].Seq), rec); err != nil {
			return err
		}
		ob := tx.Bucket([]byte("outbox"))
		k, v := ob.Cursor().First()
		return ob.Put(bytes.Clone(k), bytes.Clone(v[:len(v)-1]))
	})

	// Plain Open skips the record but keeps its key: the old behaviour.
	if s, err := store.Open(path, o); err != nil {
		t.Fatal(err)
	} else {
		mustPut(t, s, entry(1), store.DupPending)
		s.Close()
	}

	s, rec, err := store.OpenOrRecover(path, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if rec == nil || rec.Lost != 2 || !slicesContain(rec.LostKeys, victim) || !slicesContain(rec.LostKeys, victimOut) {
		t.Fatalf("recovery %+v: want 2 lost, keys %v and %v", rec, victim, victimOut)
	}
	if rec.Pending != len(want.pending)-1 || rec.Outbox != len(want.outbox)-1 || rec.Done != len(want.done) {
		t.Errorf("kept %s, want everything else", rec.Summary())
	}
	checkSalvaged(t, s, want)
	if err := s.Check(); err != nil {
		t.Error(err)
	}
	mustPut(t, s, entry(1), store.New)
	mustPut(t, s, entry(5), store.New)
	mustPut(t, s, entry(2), store.DupPending)
	mustPut(t, s, entry(3), store.DupDone)
}

func slicesContain(ks []store.Key, k store.Key) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

// A healthy journal is opened as it is: no Recovery, nothing moved.
func TestOpenOrRecoverHealthy(t *testing.T) {
	o := storetest.Options(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "journal.db")

	s, rec, err := store.OpenOrRecover(path, o) // a new file
	if err != nil || rec != nil {
		t.Fatalf("OpenOrRecover of a new file: %v, %+v", err, rec)
	}
	s.Close()
	want := makeJournal(t, path, 50)
	s, rec, err = store.OpenOrRecover(path, o)
	if err != nil || rec != nil {
		t.Fatalf("OpenOrRecover of a healthy file: %v, %+v", err, rec)
	}
	defer s.Close()
	wantCounts(t, s, len(want.pending), len(want.outbox), len(want.done))
	checkSalvaged(t, s, want)
	if es, _ := s.Pending(); len(es) != len(want.pending) {
		t.Errorf("Pending: %d entries, want %d", len(es), len(want.pending))
	}
	if names, _ := filepath.Glob(filepath.Join(dir, "*")); len(names) != 1 {
		t.Errorf("files %v, want only the journal", names)
	}
	rep, err := store.Inspect(path)
	if !errors.Is(err, store.ErrLocked) {
		t.Errorf("Inspect while the journal is open: %v, %+v; want ErrLocked", err, rep)
	}
}

// Not damage: a locked file and a newer schema are errors, and the file stays.
func TestOpenOrRecoverErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) { // the lock retries sleep: virtual time
		o := storetest.Options(t)
		o.LockTimeout = time.Second
		path := filepath.Join(t.TempDir(), "journal.db")
		s := storetest.Open(t, path, o)
		if _, _, err := store.OpenOrRecover(path, o); !errors.Is(err, store.ErrLocked) {
			t.Fatalf("OpenOrRecover of an open journal: %v, want ErrLocked", err)
		}
		s.Close()
	})
	o := storetest.Options(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "journal.db")
	makeJournal(t, path, 5)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte{store.SchemaVersion + 1})
	})
	if _, _, err := store.OpenOrRecover(path, o); !errors.Is(err, store.ErrSchema) {
		t.Fatalf("OpenOrRecover of a newer schema: %v, want ErrSchema", err)
	}
	if _, err := store.Inspect(path); !errors.Is(err, store.ErrSchema) {
		t.Errorf("Inspect of a newer schema: %v, want ErrSchema", err)
	}
	if names, _ := filepath.Glob(filepath.Join(dir, "*")); len(names) != 1 {
		t.Errorf("files %v, want only the journal", names)
	}
}

// Salvage copies a damaged journal's readable entries into a new file, which
// opens healthy.
func TestSalvage(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "journal.db"), filepath.Join(dir, "salvaged.db")
	want := makeJournal(t, src, 200)
	damages[4].damage(t, src) // 64 random bytes
	rep, err := store.Salvage(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("salvage: %s", rep.Summary())
	if !rep.Damaged() || rep.Pending+rep.Outbox+rep.Done == 0 {
		t.Errorf("salvage report %s: want damage found and entries kept", rep.Summary())
	}
	if _, err := store.Salvage(src, dst); err == nil {
		t.Error("Salvage onto an existing file: no error")
	}
	if again, err := store.Inspect(dst); err != nil || again.Damaged() ||
		again.Pending != rep.Pending || again.Outbox != rep.Outbox || again.Done != rep.Done {
		t.Errorf("Inspect of the salvaged journal: %v, %+v; want healthy with the kept counts", err, again)
	}
	s := storetest.Open(t, dst, storetest.Options(t))
	wantCounts(t, s, rep.Pending, rep.Outbox, rep.Done)
	checkSalvaged(t, s, want)
	// Seqs keep growing after a salvage.
	e := entry(100000)
	mustPut(t, s, e, store.New)
	for _, w := range want.pending {
		if w.Seq >= e.Seq {
			t.Fatalf("new entry got seq %d, not above the salvaged %d", e.Seq, w.Seq)
		}
	}
}

// Salvage of a file in which no meta page can be read (a text file, an empty
// file: not a journal, or one whose header is destroyed) fails with ErrDamaged
// and leaves no dst: nothing in it can be salvaged, and an empty journal at dst
// would pass for a salvage that found nothing lost. Before, it returned an empty
// journal and no error. Inspect reports such a file damaged.
func TestSalvageNotAJournal(t *testing.T) {
	for _, c := range []struct{ name, content string }{
		{"text", "this is not a journal\n"},
		{"empty", ""},
		{"text of many pages", strings.Repeat("not a journal either\n", 2000)},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "journal.db"), filepath.Join(dir, "salvaged.db")
			if err := os.WriteFile(src, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			rep, err := store.Salvage(src, dst)
			if !errors.Is(err, store.ErrDamaged) {
				t.Errorf("Salvage: %v, %+v; want an error wrapping ErrDamaged", err, rep)
			}
			if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Salvage left %s (%v), want no file", dst, err)
			}
			if rep, err := store.Inspect(src); err != nil || !rep.Damaged() {
				t.Errorf("Inspect: %v, %+v; want a damaged report", err, rep)
			}
		})
	}
}

// Compaction at start-up gives a mostly free file's space back.
func TestOpenOrRecoverCompacts(t *testing.T) {
	clk := storetest.NewClock()
	o := storetest.Options(t)
	o.Now, o.Retention = clk.Now, time.Minute
	o.CompactMinBytes = 1 << 10
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		e := entry(i)
		e.Input = make([]float32, 256)
		mustPut(t, s, e, store.New)
		if i >= 10 {
			if err := s.Complete(e.Key, []byte("r")); err != nil {
				t.Fatal(err)
			}
		}
	}
	clk.Advance(time.Hour)
	if _, err := s.GC(clk.Now()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	before, _ := os.Stat(path)
	rep, err := store.Inspect(path)
	if err != nil || rep.FreeBytes() <= rep.FileSize/2 {
		t.Fatalf("Inspect before: %v, %+v: want more than half free", err, rep)
	}

	s, rec, err := store.OpenOrRecover(path, o)
	if err != nil || rec != nil {
		t.Fatalf("OpenOrRecover: %v, %+v", err, rec)
	}
	after, _ := os.Stat(path)
	t.Logf("compacted %d -> %d bytes (%d in use before)", before.Size(), after.Size(), rep.UsedBytes)
	if after.Size() >= before.Size()/2 {
		t.Errorf("file %d bytes after compaction, %d before: want less than half", after.Size(), before.Size())
	}
	if got := len(pendingKeys(t, s)); got != 10 {
		t.Errorf("Pending after compaction: %d entries, want 10", got)
	}
	mustPut(t, s, entry(1), store.DupPending)
	e := entry(5000)
	mustPut(t, s, e, store.New)
	if e.Seq <= 2000 {
		t.Errorf("seq after compaction %d, want above 2000", e.Seq)
	}
	if err := errors.Join(s.Check(), s.Close()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".compact"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("compaction left its temporary file: %v", err)
	}
}

// MaxBytes refuses new keys once the live data exceeds it, answers duplicates,
// and lets the journal drain.
func TestMaxBytes(t *testing.T) {
	clk := storetest.NewClock()
	s := storetest.New(t, func(o *store.Options) {
		o.Now, o.Retention = clk.Now, time.Minute
		o.MaxBytes = 256 << 10
	})
	n := 0
	var err error
	for ; n < 10000; n++ {
		e := entry(n)
		e.Input = make([]float32, 256)
		if _, err = s.Put(e); err != nil {
			break
		}
	}
	if !errors.Is(err, store.ErrFull) {
		t.Fatalf("Put %d: %v, want ErrFull", n, err)
	}
	st := s.Stats()
	t.Logf("full after %d puts: %d bytes used, file %d", n, st.UsedBytes, st.FileSize)
	if st.UsedBytes <= 256<<10 || st.Pending != n {
		t.Errorf("Stats used %d, pending %d: want above MaxBytes, %d", st.UsedBytes, st.Pending, n)
	}
	mustPut(t, s, entry(0), store.DupPending)
	for i := range n {
		if err := s.Complete(key(i), []byte("r")); err != nil {
			t.Fatal(err)
		}
	}
	mustPut(t, s, entry(0), store.DupDone)
	clk.Advance(time.Hour)
	if _, err := s.GC(clk.Now()); err != nil {
		t.Fatal(err)
	}
	if used := s.Stats().UsedBytes; used > 256<<10 {
		t.Fatalf("used %d bytes after draining, want under MaxBytes", used)
	}
	mustPut(t, s, entry(n), store.New)
}

// A page damaged while the journal is open makes reads fail with ErrDamaged
// instead of panicking.
func TestDamageWhileOpenIsAnError(t *testing.T) {
	o := storetest.Options(t)
	path := filepath.Join(t.TempDir(), "journal.db")
	makeJournal(t, path, 300)
	ps, root, _ := boltMeta(t, path)
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	// Destroy the root page under the open journal (the file is memory-mapped).
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, ps), int64(root)*int64(ps)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := s.Pending(); !errors.Is(err, store.ErrDamaged) {
		t.Errorf("Pending over a destroyed page: %v, want ErrDamaged", err)
	}
	if _, err := s.Put(entry(100000)); !errors.Is(err, store.ErrDamaged) {
		t.Errorf("Put over a destroyed page: %v, want ErrDamaged", err)
	}
	if err := s.Close(); err != nil && !errors.Is(err, store.ErrDamaged) {
		t.Errorf("Close: %v", err)
	}
	s2, rec, err := store.OpenOrRecover(path, o)
	if err != nil || rec == nil {
		t.Fatalf("OpenOrRecover after: %v, %+v; want a recovery", err, rec)
	}
	s2.Close()
}

// A panic in a commit breaks the store: every later call fails with ErrDamaged,
// nothing hangs, and Close releases the file.
func TestPanicInCommitBreaksTheStore(t *testing.T) {
	o := storetest.Options(t)
	boom := false
	o.BeforeCommit = func([]store.Op) error {
		if boom {
			panic("boom")
		}
		return nil
	}
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, entry(0), store.New)
	boom = true
	for i := 1; i < 3; i++ {
		if _, err := s.Put(entry(i)); !errors.Is(err, store.ErrDamaged) {
			t.Errorf("Put %d after a panic: %v, want ErrDamaged", i, err)
		}
	}
	if _, err := s.Pending(); !errors.Is(err, store.ErrDamaged) {
		t.Errorf("Pending after a panic: %v, want ErrDamaged", err)
	}
	if err := s.Close(); !errors.Is(err, store.ErrDamaged) {
		t.Errorf("Close after a panic: %v, want ErrDamaged", err)
	}
	o.BeforeCommit = nil
	s2, rec, err := store.OpenOrRecover(path, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if rec != nil {
		t.Errorf("recovery %s: want none (the panicked commit never reached the file)", rec.Summary())
	}
	if got := pendingKeys(t, s2); !reflect.DeepEqual(got, []store.Key{key(0)}) {
		t.Errorf("Pending = %v, want %v", got, key(0))
	}
}

// Random damage of many kinds, with fixed seeds: OpenOrRecover never fails or
// panics (a panic in one of bbolt's goroutines would kill the test binary), and
// the journal it returns is consistent and usable.
func TestOpenOrRecoverNeverPanics(t *testing.T) {
	dir := t.TempDir()
	orig := filepath.Join(dir, "orig.db")
	makeJournal(t, orig, 300)
	good, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	ps, _, _ := boltMeta(t, orig)
	o := storetest.Options(t)
	o.Logger = o.Logger.Level(3) // errors only
	const seeds = 60
	recovered := 0
	for seed := range uint64(seeds) {
		r := rand.New(rand.NewPCG(seed, 99))
		b := bytes.Clone(good)
		kind := r.IntN(4)
		switch kind {
		case 0: // bytes anywhere, meta pages included
			for range 1 + r.IntN(64) {
				b[r.IntN(len(b))] ^= byte(1 + r.IntN(255))
			}
		case 1: // page headers
			for range 1 + r.IntN(8) {
				b[r.IntN(len(b)/ps)*ps+r.IntN(16)] ^= byte(1 + r.IntN(255))
			}
		case 2: // truncation
			b = b[:r.IntN(len(b))]
		case 3: // a page of garbage
			page := 2 + r.IntN(len(b)/ps-2)
			for i := range ps {
				b[page*ps+i] = byte(r.Uint32())
			}
		}
		path := filepath.Join(dir, fmt.Sprintf("j%d.db", seed))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, rec, err := store.OpenOrRecover(path, o)
		if errors.Is(err, store.ErrSchema) {
			// The schema byte has no checksum: a flip to 2..16 reads as a newer
			// version, which is refused rather than recovered.
			t.Logf("seed %d (damage %d): %v", seed, kind, err)
			continue
		}
		if err != nil {
			t.Errorf("seed %d (damage %d): OpenOrRecover: %v", seed, kind, err)
			continue
		}
		if err := s.Check(); err != nil {
			t.Errorf("seed %d (damage %d): Check: %v", seed, kind, err)
		}
		if _, err := s.Pending(); err != nil {
			t.Errorf("seed %d (damage %d): Pending: %v", seed, kind, err)
		}
		if _, err := s.Put(entry(100000)); err != nil {
			t.Errorf("seed %d (damage %d): Put: %v", seed, kind, err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("seed %d (damage %d): Close: %v", seed, kind, err)
		}
		if rec != nil {
			if s2, rec2, err := store.OpenOrRecover(path, o); err != nil || rec2 != nil {
				t.Errorf("seed %d (damage %d): the next start: %v, salvages again: %v", seed, kind, err, rec2 != nil)
			} else {
				s2.Close()
			}
			recovered++
			if rep, err := store.Inspect(rec.MovedTo); err != nil || !rep.Damaged() {
				t.Errorf("seed %d (damage %d): Inspect of the damaged copy: %v, %+v", seed, kind, err, rep)
			}
		}
	}
	t.Logf("%d of %d damaged files needed a recovery", recovered, seeds)
}

// deleteKeyRecord deletes key kb's record from the key index.
func deleteKeyRecord(tx *bolt.Tx, kb []byte) error {
	keys := tx.Bucket([]byte("keys"))
	return keys.Delete(store.KeySlot(keys, kb))
}

// The start-up verification and salvage (inspect.go) once identified completed
// keys by a 64-bit FNV-1a hash of the key. Two request ids whose keys share that
// hash (found in about a minute on two cores: FNV is not collision resistant,
// and a device chooses its ids) made a healthy journal look damaged at every
// start, and the salvage dropped the second key: an acknowledged pending request
// was lost, or a completed one forgotten and its redelivery run again.
func TestKeyHashCollision(t *testing.T) {
	// The 64-bit FNV-1a hashes of their encoded keys are both 0xbbdd742c1750443c.
	a := store.Key{App: "cls", Device: "dev-1", ID: "076468e94297ab57"}
	b := store.Key{App: "cls", Device: "dev-1", ID: "d77913c32ea301d9"}
	for _, bDone := range []bool{false, true} {
		t.Run(fmt.Sprintf("second key done=%v", bDone), func(t *testing.T) {
			o := storetest.Options(t)
			path := filepath.Join(t.TempDir(), "journal.db")
			s, err := store.Open(path, o)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Complete(a, []byte("reply-a")); err != nil {
				t.Fatal(err)
			}
			mustPut(t, s, &store.Entry{Key: b, ReplyTo: "sg/reply", Input: []float32{1, 2}}, store.New)
			if bDone {
				if err := s.Complete(b, []byte("reply-b")); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Check(); err != nil {
				t.Fatalf("the journal is sound before the restart: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			s, rec, err := store.OpenOrRecover(path, o)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if rec != nil {
				t.Errorf("a healthy journal was moved aside as damaged: %s", rec.Summary())
			}
			res, err := s.Lookup(b)
			if err != nil {
				t.Fatal(err)
			}
			want := store.DupPending
			if bDone {
				want = store.DupDone
			}
			if res.Dup != want {
				t.Errorf("after the restart, %s is %s, want %s", b, res.Dup, want)
			}
			if res, err := s.Lookup(a); err != nil || res.Dup != store.DupDone {
				t.Errorf("after the restart, %s is %v, %v; want dup-done", a, res.Dup, err)
			}
		})
	}
}

// rawRecords copies every record of a bucket of the closed journal at path.
func rawRecords(t *testing.T, path, bucket string) map[string][]byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs := map[string][]byte{}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucket)).ForEach(func(k, v []byte) error {
			recs[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// A record left reachable beside the current one of the same request (same key,
// same seq), as a damaged branch can leave an old page in the tree: a pending
// record whose reply is in the outbox, or an outbox record a later Outbox
// replaced. Exactly one record of the request is kept: the one the key index
// names; else an outbox record before the pending one (an outbox record exists
// only once the reply was written, and nothing moves a request back to
// pending), a sent reply before an unsent one (it may have reached the device),
// and between two alike the first in the outbox's order (the earlier flush
// time). The stale copy is dropped, counted corrupt in its bucket and named in
// the problems, and is not lost. Before, both were kept and re-indexed: the
// salvaged journal held two copies of the request (two different replies to
// publish, or a reply and a pending entry to run again), failed Check, and
// every later start salvaged it again.
func TestSalvageKeepsOneRecordPerRequest(t *testing.T) {
	t1, t2 := storetest.Epoch.Add(time.Minute), storetest.Epoch.Add(2*time.Minute)
	r1, r2 := []byte("reply-1"), []byte("reply-2")
	// A step writes through the store, or edits the closed file; saved keeps
	// the records read between steps.
	type saved struct{ pending, outbox, keys map[string][]byte }
	outbox := func(at time.Time, r []byte) func(*store.Store, store.Key) error {
		return func(s *store.Store, k store.Key) error { return s.Outbox(k, r, at) }
	}
	unsent := func(at time.Time, r []byte) func(*store.Store, store.Key) error {
		return func(s *store.Store, k store.Key) error { return s.OutboxUnsent(k, r, at) }
	}
	for _, c := range []struct {
		name string
		// writes are the store writes after Put, each in a session of its own.
		writes []func(*store.Store, store.Key) error
		// edit changes the file after the writes: first holds the records as
		// they were after Put, prev those before the last write.
		edit func(tx *bolt.Tx, kb []byte, first, prev saved) error
		// want: the reply kept (nil: the request kept pending), and whether the
		// reply is sent; dropped: how many stale copies are dropped.
		want    []byte
		sent    bool
		dropped int
	}{{
		name:   "stale pending copy, the index names the reply",
		writes: [](func(*store.Store, store.Key) error){outbox(t1, r1)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			return putAll(tx.Bucket([]byte("pending")), first.pending)
		},
		want: r1, sent: true, dropped: 1,
	}, {
		name:   "replaced outbox record before the one the index names",
		writes: [](func(*store.Store, store.Key) error){outbox(t1, r1), outbox(t2, r2)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			return putAll(tx.Bucket([]byte("outbox")), prev.outbox)
		},
		want: r2, sent: true, dropped: 1,
	}, {
		name:   "replaced outbox record after the one the index names",
		writes: [](func(*store.Store, store.Key) error){outbox(t2, r1), outbox(t1, r2)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			return putAll(tx.Bucket([]byte("outbox")), prev.outbox)
		},
		want: r2, sent: true, dropped: 1,
	}, {
		name:   "stale index entry and pending copy, the reply in the outbox",
		writes: [](func(*store.Store, store.Key) error){outbox(t1, r1)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			return errors.Join(putAll(tx.Bucket([]byte("pending")), first.pending), putAll(tx.Bucket([]byte("keys")), first.keys))
		},
		want: r1, sent: true, dropped: 1,
	}, {
		name:   "no index entry, pending copy and reply",
		writes: [](func(*store.Store, store.Key) error){outbox(t1, r1)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			return errors.Join(putAll(tx.Bucket([]byte("pending")), first.pending), deleteKeyRecord(tx, kb))
		},
		want: r1, sent: true, dropped: 1,
	}, {
		name:   "no index entry, unsent reply then sent reply",
		writes: [](func(*store.Store, store.Key) error){unsent(t1, r1), outbox(t2, r2)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			return errors.Join(putAll(tx.Bucket([]byte("outbox")), prev.outbox), deleteKeyRecord(tx, kb))
		},
		want: r2, sent: true, dropped: 1,
	}, {
		name:   "no index entry, sent reply then unsent reply",
		writes: [](func(*store.Store, store.Key) error){outbox(t1, r1), unsent(t2, r2)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			return errors.Join(putAll(tx.Bucket([]byte("outbox")), prev.outbox), deleteKeyRecord(tx, kb))
		},
		want: r1, sent: true, dropped: 1,
	}, {
		name:   "no index entry, two sent replies",
		writes: [](func(*store.Store, store.Key) error){outbox(t2, r2), outbox(t1, r1)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			return errors.Join(putAll(tx.Bucket([]byte("outbox")), prev.outbox), deleteKeyRecord(tx, kb))
		},
		want: r1, sent: true, dropped: 1, // the earlier flush time
	}, {
		name:   "the reply the index names is missing, a replaced one is not",
		writes: [](func(*store.Store, store.Key) error){outbox(t1, r1), outbox(t2, r2)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			b := tx.Bucket([]byte("outbox"))
			var cur []byte
			b.ForEach(func(k, _ []byte) error { cur = bytes.Clone(k); return nil })
			return errors.Join(b.Delete(cur), putAll(b, prev.outbox))
		},
		want: r1, sent: true,
	}, {
		name:   "the reply the index names is missing, the pending record is not",
		writes: [](func(*store.Store, store.Key) error){outbox(t1, r1)},
		edit: func(tx *bolt.Tx, kb []byte, first, prev saved) error {
			b := tx.Bucket([]byte("outbox"))
			var cur []byte
			b.ForEach(func(k, _ []byte) error { cur = bytes.Clone(k); return nil })
			return errors.Join(b.Delete(cur), putAll(tx.Bucket([]byte("pending")), first.pending))
		},
		want: nil, // it runs again
	}} {
		t.Run(c.name, func(t *testing.T) {
			o := storetest.Options(t)
			path := filepath.Join(t.TempDir(), "journal.db")
			read := func() saved {
				return saved{rawRecords(t, path, "pending"), rawRecords(t, path, "outbox"), rawRecords(t, path, "keys")}
			}
			session := func(fn func(s *store.Store) error) {
				t.Helper()
				s, err := store.Open(path, o)
				if err != nil {
					t.Fatal(err)
				}
				if err := errors.Join(fn(s), s.Close()); err != nil {
					t.Fatal(err)
				}
			}
			e := entry(1)
			session(func(s *store.Store) error { _, err := s.Put(e); return err })
			first, prev := read(), saved{}
			for _, w := range c.writes {
				prev = read()
				session(func(s *store.Store) error { return w(s, e.Key) })
			}
			rawUpdate(t, path, func(tx *bolt.Tx) error { return c.edit(tx, store.EncodeKey(e.Key), first, prev) })

			s, rec, err := store.OpenOrRecover(path, o)
			if err != nil {
				t.Fatal(err)
			}
			if rec == nil {
				t.Fatal("OpenOrRecover found no damage")
			}
			t.Logf("salvage: %s", rec.Summary())
			for _, p := range rec.Problems {
				t.Logf("  %s", p)
			}
			dropped := 0
			for _, b := range rec.Buckets {
				dropped += b.Corrupt
			}
			if rec.Lost != 0 || len(rec.LostKeys) != 0 || dropped != c.dropped {
				t.Errorf("salvage: %d lost %v, %d records dropped; want none lost, %d dropped", rec.Lost, rec.LostKeys, dropped, c.dropped)
			}
			pend, err := s.Pending()
			if err != nil {
				t.Fatal(err)
			}
			out, err := s.OutboxEntries()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pend {
				t.Logf("  pending: %s seq %d", p.Key, p.Seq)
			}
			for _, ob := range out {
				t.Logf("  outbox:  %s seq %d reply %q unsent %v", ob.Key, ob.Seq, ob.Reply, ob.Unsent)
			}
			switch {
			case len(pend)+len(out) != 1 || rec.Pending+rec.Outbox != 1:
				t.Errorf("the salvaged journal holds %d pending and %d outbox records of %s (the report: %d and %d), want one in all",
					len(pend), len(out), e.Key, rec.Pending, rec.Outbox)
			case c.want == nil && len(pend) != 1:
				t.Errorf("the request's reply is kept (%q), want it pending", out[0].Reply)
			case c.want != nil && (len(out) != 1 || !bytes.Equal(out[0].Reply, c.want) || out[0].Unsent == c.sent):
				t.Errorf("kept %d pending, %d outbox %+v; want the reply %q (sent %v)", len(pend), len(out), out, c.want, c.sent)
			}
			wantDup, wantReply := store.DupPending, []byte(nil)
			if c.sent {
				wantDup, wantReply = store.DupDone, c.want
			}
			if res, err := s.Lookup(e.Key); err != nil || res.Dup != wantDup || !bytes.Equal(res.Reply, wantReply) {
				t.Errorf("Lookup %s: %s %q, %v; want %s %q", e.Key, res.Dup, res.Reply, err, wantDup, wantReply)
			}
			if err := s.Check(); err != nil {
				t.Errorf("the salvaged journal fails Check: %v", err)
			}
			s.Close()
			s, rec, err = store.OpenOrRecover(path, o)
			if err != nil {
				t.Fatal(err)
			}
			if rec != nil {
				t.Errorf("the next start salvages again: %s", rec.Summary())
			}
			s.Close()
		})
	}
}

// putAll puts every record of recs into b.
func putAll(b *bolt.Bucket, recs map[string][]byte) error {
	for k, v := range recs {
		if err := b.Put([]byte(k), v); err != nil {
			return err
		}
	}
	return nil
}
