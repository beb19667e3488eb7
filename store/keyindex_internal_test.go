package store

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkKeyIndexMemory reports the heap the key index in memory holds per
// key (bytes/key) for 1M keys, and Open's time to build it from a journal of
// that many completed keys (open-s).
//
//	go test -run '^$' -bench KeyIndexMemory -benchtime 1x ./store
func BenchmarkKeyIndexMemory(b *testing.B) {
	const n = 1_000_000
	path := filepath.Join(b.TempDir(), "journal.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	// n completed keys written straight into the file, in chunks.
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true, Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	reply := make([]byte, 200)
	now := time.Now()
	for start := 0; start < n; start += 100_000 {
		err := db.Update(func(tx *bolt.Tx) error {
			keys, expiry := tx.Bucket(bucketKeys), tx.Bucket(bucketExpiry)
			keys.FillPercent, expiry.FillPercent = appendFill, appendFill
			for i := start; i < start+100_000; i++ {
				kb := encodeKey(Key{App: "fashion", Device: fmt.Sprintf("cam-%03d", i%500), ID: fmt.Sprintf("req-%09d", i)})
				st := encodeState(keyState{state: stateDone, doneAt: now, n: uint64(i + 1), reply: reply})
				if err := keys.Put(slotKey(nil, slotAnswered|uint64(i+1)), appendKeyRecord(nil, kb, st)); err != nil {
					return err
				}
				if err := expiry.Put(expiryKey(now, uint64(i+1)), kb); err != nil {
					return err
				}
			}
			return writeCounts(tx.Bucket(bucketMeta), counts{done: start + 100_000})
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		b.Fatal(err)
	}
	db, s = nil, nil
	b.ResetTimer()
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.GC() // and the pools' victims
		runtime.ReadMemStats(&before)
		start := time.Now()
		s, err := Open(path, Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		open := time.Since(start)
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := s.keys.len(); got != n {
			b.Fatalf("index holds %d keys, want %d", got, n)
		}
		b.Logf("heap %d -> %d; %d in m, %d hashes in more", before.HeapAlloc, after.HeapAlloc, len(s.keys.m), len(s.keys.more))
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/key")
		b.ReportMetric(open.Seconds(), "open-s")
		runtime.KeepAlive(s)
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// stage stages keys 0 to n-1 (hash and slot i) added to x, or removed.
func stage(x *keyIndex, n int, add bool) {
	for i := range n {
		x.staged = append(x.staged, stagedSlot{h: uint64(i), slot: uint64(i), add: add})
	}
}

// burst returns an index that held n = 4*shrinkBelow keys (hash and slot i),
// all but the last n/4-1 of them staged to leave (as GC drops them): its next
// apply begins to shrink it.
func burst() (x *keyIndex, n int) {
	x, n = newKeyIndex(), 4*shrinkBelow
	stage(x, n, true)
	x.apply()
	stage(x, n-n/4+1, false)
	return x, n
}

// Once most keys have left (GC), the table moves to a map of its size, a step
// per apply, so a burst's memory is given back; the keys left are all found at
// every step, and the move ends in the number of steps it should.
func TestKeyIndexShrinks(t *testing.T) {
	x, n := burst()
	if x.peak != n || x.old != nil {
		t.Fatalf("peak %d after %d keys, old %v", x.peak, n, x.old != nil)
	}
	before := x.m
	x.apply()
	left := n/4 - 1
	if reflect.ValueOf(x.old).UnsafePointer() != reflect.ValueOf(before).UnsafePointer() || len(x.m) != 0 || x.peak != left {
		t.Fatalf("after removing all but %d: old is the map before %v, %d in the new map, peak %d",
			left, reflect.ValueOf(x.old).UnsafePointer() == reflect.ValueOf(before).UnsafePointer(), len(x.m), x.peak)
	}
	steps := 0
	for x.old != nil {
		x.apply() // nothing staged: a step of the move
		steps++
		if x.len() != left || len(x.m) != min(steps*shrinkStep, left) {
			t.Fatalf("step %d: %d slots, %d moved; want %d, %d", steps, x.len(), len(x.m), left, min(steps*shrinkStep, left))
		}
		for i := n - n/4 + 1; i < n; i += 97 {
			if s := x.slots(nil, uint64(i)); len(s) != 1 || s[0] != uint64(i) {
				t.Fatalf("step %d: key %d: slots %v", steps, i, s)
			}
		}
	}
	if want := (left + shrinkStep - 1) / shrinkStep; steps != want {
		t.Errorf("moved in %d steps, want %d", steps, want)
	}
	for i := n - n/4 + 1; i < n; i++ {
		if s, ok := x.m[uint64(i)]; !ok || s != uint64(i) {
			t.Fatalf("key %d lost in the move", i)
		}
	}
	x.apply()
	if x.old != nil || len(x.m) != left || x.peak != left {
		t.Errorf("after the move: old %v, %d keys, peak %d", x.old != nil, len(x.m), x.peak)
	}
}

// shrinkingStore opens a journal whose key table is in the middle of a
// shrink: n hashes (of no key the caller puts) in the old map.
func shrinkingStore(t *testing.T, n int, o Options) *Store {
	t.Helper()
	o.NoSync = true
	s, err := Open(filepath.Join(t.TempDir(), "journal.db"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.txMu.Lock()
	s.keys.mu.Lock()
	s.keys.old = map[uint64]uint64{}
	for i := range n {
		s.keys.old[uint64(i)] = slotAnswered | uint64(1<<40+i)
	}
	s.keys.mu.Unlock()
	s.txMu.Unlock()
	return s
}

// oldLen is how many hashes are left in a shrinking table's old map.
func (s *Store) oldLen() int {
	s.keys.mu.RLock()
	defer s.keys.mu.RUnlock()
	return len(s.keys.old)
}

// Every commit moves one step of a shrinking table, however long it took (a
// slow sync, here a sleep in BeforeCommit, must not move the whole table under
// the table's lock); in the bubble no idle step runs between the commits, so
// the count is exact.
func TestCommitMovesAStepOfAShrinkingTable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := 4 * shrinkStep
		s := shrinkingStore(t, n, Options{BeforeCommit: func([]Op) error {
			time.Sleep(2 * time.Second)
			return nil
		}})
		for i := range 3 {
			if _, err := s.Put(&Entry{Key: Key{App: "cls", Device: "dev", ID: fmt.Sprint(i)}, Deadline: time.Now().Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			if got, want := s.oldLen(), n-(i+1)*shrinkStep; got != want {
				t.Fatalf("after %d commits: %d hashes left in the old map, want %d", i+1, got, want)
			}
		}
	})
}

// While no write comes, the committer moves a step of a shrinking table every
// shrinkIdleStep until it is done, and then waits for writes again.
func TestIdleCommitterMovesAShrinkingTable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := 10*shrinkStep + 5
		s := shrinkingStore(t, n, Options{})
		// The committer waits for writes without a timer (the table was not
		// shrinking when it began to); a commit wakes it, moves a step, and
		// from then on it moves one per shrinkIdleStep.
		if _, err := s.Put(&Entry{Key: Key{App: "cls", Device: "dev", ID: "0"}, Deadline: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := s.oldLen(); got != n-shrinkStep {
			t.Fatalf("after the commit: %d left, want %d", got, n-shrinkStep)
		}
		time.Sleep(3*shrinkIdleStep + shrinkIdleStep/2)
		synctest.Wait()
		if got := s.oldLen(); got != n-4*shrinkStep {
			t.Fatalf("after three idle steps: %d left, want %d", got, n-4*shrinkStep)
		}
		time.Sleep(10 * shrinkIdleStep)
		synctest.Wait()
		if s.keys.shrinking() || s.keys.len() != n+1 { // and the key put
			t.Fatalf("after the move: shrinking %v, %d slots, want %d", s.keys.shrinking(), s.keys.len(), n+1)
		}
	})
}

// Keys added, removed and sharing hashes while the table shrinks are found as
// they would be without it: a key removed from the old map, one whose first
// slot is in the old map and whose second is in more, one added anew.
func TestKeyIndexChangesWhileShrinking(t *testing.T) {
	x, n := burst()
	x.apply()
	if x.old == nil {
		t.Fatal("not shrinking")
	}
	// Each in the old map still (no step has run yet): n-1 stays, n-2 goes,
	// n-3 gets a second slot (a hash shared), then loses its first.
	x.staged = append(x.staged, stagedSlot{h: uint64(n - 2), slot: uint64(n - 2)},
		stagedSlot{h: uint64(n - 3), slot: 1 << 40, add: true},
		stagedSlot{h: uint64(n + 5), slot: uint64(n + 5), add: true})
	x.apply()
	x.staged = append(x.staged, stagedSlot{h: uint64(n - 3), slot: uint64(n - 3)})
	x.apply()
	for x.old != nil {
		for _, c := range []struct {
			h    uint64
			want []uint64
		}{{uint64(n - 1), []uint64{uint64(n - 1)}}, {uint64(n - 2), nil}, {uint64(n - 3), []uint64{1 << 40}}, {uint64(n + 5), []uint64{uint64(n + 5)}}} {
			if got := x.slots(nil, c.h); !slices.Equal(got, c.want) {
				t.Fatalf("hash %d: slots %v, want %v", c.h, got, c.want)
			}
		}
		x.apply()
	}
	if got, want := x.len(), n/4-1; got != want { // one key gone, one added
		t.Errorf("%d slots after the move, want %d", got, want)
	}
}

// Readers (under mu, as Lookup reads) run while apply moves the table, and
// always find a key that stays (run with -race).
func TestKeyIndexShrinksUnderReaders(t *testing.T) {
	x, n := burst()
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			for {
				x.mu.RLock()
				s := x.slots(nil, uint64(n-1))
				x.mu.RUnlock()
				if len(s) != 1 || s[0] != uint64(n-1) {
					errs <- fmt.Errorf("key %d: slots %v", n-1, s)
					return
				}
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
			}
		}()
	}
	x.apply()
	for x.old != nil {
		x.apply()
	}
	close(stop)
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if len(x.m) != n/4-1 || x.peak != len(x.m) {
		t.Errorf("after the shrink: len %d, peak %d; want %d", len(x.m), x.peak, n/4-1)
	}
}

// BenchmarkKeyIndexShrink reports the longest apply (max-apply-s: the longest
// pause of commits) while a million keys, added in one apply, leave in chunks
// of gcChunk, as GC drops them, until a quarter less one are left, and then
// until the table has shrunk; and the sum of those applies (total-s).
//
//	go test -run '^$' -bench KeyIndexShrink -benchtime 1x ./store
func BenchmarkKeyIndexShrink(b *testing.B) {
	const n = 1_000_000
	for range b.N {
		b.StopTimer()
		x := newKeyIndex()
		stage(x, n, true)
		x.apply()
		b.StartTimer()
		var longest, total time.Duration
		at, applies := 0, 0
		for i := 0; i < n-n/4+1 || x.old != nil; i += gcChunk {
			for j := i; j < min(i+gcChunk, n-n/4+1); j++ {
				x.staged = append(x.staged, stagedSlot{h: uint64(j), slot: uint64(j)})
			}
			start := time.Now()
			x.apply()
			d := time.Since(start)
			if d > longest {
				longest, at = d, applies
			}
			total += d
			applies++
		}
		b.Logf("longest apply: %d of %d (%v)", at, applies, longest)
		b.ReportMetric(longest.Seconds(), "max-apply-s")
		b.ReportMetric(total.Seconds(), "total-s")
		if x.len() != n/4-1 {
			b.Fatalf("%d keys left, want %d", x.len(), n/4-1)
		}
	}
}

// The index against a plain multimap of hash to slots, through random changes
// (hashes shared by several slots among them, first slots removed while others
// remain, batches rolled back) over two bursts, each shrunk: after every apply
// the hashes it changed have the slots the multimap has; and after every
// apply while the table shrinks (and every 16th otherwise) so does every
// hash, no hash is in both maps, more holds only hashes with a first slot,
// and len counts the slots.
func TestKeyIndexShrinkRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(24, 2))
	x := newKeyIndex()
	ref := map[uint64][]uint64{}
	type pair struct{ h, slot uint64 }
	var live []pair // every slot in ref, for removals at random
	nextSlot := uint64(1)
	shrinks := 0
	var buf []uint64
	// same reports whether hash h has the slots ref has, in any order.
	same := func(h uint64) bool {
		buf = x.slots(buf[:0], h)
		want := ref[h]
		if len(buf) != len(want) {
			return false
		}
		for _, s := range want {
			if !slices.Contains(buf, s) {
				return false
			}
		}
		return true
	}
	check := func(step int) {
		t.Helper()
		for h := range x.old {
			if _, ok := x.m[h]; ok {
				t.Fatalf("step %d: hash %d in both maps", step, h)
			}
		}
		for h, s := range x.more {
			if len(s) == 0 || x.first(h) == nil {
				t.Fatalf("step %d: hash %d: more %v without a first slot", step, h, s)
			}
		}
		if x.len() != len(live) {
			t.Fatalf("step %d: len %d, want %d", step, x.len(), len(live))
		}
		for h, want := range ref {
			if !same(h) {
				t.Fatalf("step %d: hash %d: slots %v, want %v", step, h, x.slots(nil, h), want)
			}
		}
	}
	// hashOf draws a hash: mostly new ones, often one of a slot in from (a
	// shared hash, up to 8 slots), among them those of the old map while it
	// shrinks.
	hashOf := func(from []pair) uint64 {
		if len(from) > 0 && rng.IntN(4) == 0 {
			if h := from[rng.IntN(len(from))].h; len(ref[h]) < 8 {
				return h
			}
		}
		return rng.Uint64N(1 << 20)
	}
	add := func(p pair) { ref[p.h] = append(ref[p.h], p.slot) }
	remove := func(p pair) {
		if ref[p.h] = slices.DeleteFunc(ref[p.h], func(s uint64) bool { return s == p.slot }); len(ref[p.h]) == 0 {
			delete(ref, p.h)
		}
	}
	step := 0
	// Bursts of slots, a quarter of them sharing a hash: enough hashes to
	// shrink the table (shrinkBelow) after each.
	for _, phase := range []struct{ grow, keep int }{{7 * shrinkBelow / 4, shrinkBelow / 8}, {2 * shrinkBelow, shrinkBelow / 5}} {
		// A burst, added in a few applies.
		for len(live) < phase.grow {
			for range 4096 {
				p := pair{hashOf(live), nextSlot}
				nextSlot++
				x.staged = append(x.staged, stagedSlot{h: p.h, slot: p.slot, add: true})
				add(p)
				live = append(live, p)
			}
			x.apply()
			step++
		}
		check(step)
		// GC: most keys leave, in chunks, the first slots of shared hashes
		// among them; keys keep arriving (some sharing the hashes of the
		// keys left, some removed in the batch that added them), and some
		// batches are rolled back. Then the changes go on while the table
		// shrinks, until it has.
		for shrinking := false; len(live) > phase.keep || x.old != nil; {
			failed := rng.IntN(10) == 0 // the commit fails: nothing of it is applied
			cur := live
			if failed {
				cur = slices.Clone(live)
			}
			first := len(x.staged)
			for range 1 + rng.IntN(2048) {
				if len(cur) > phase.keep/2 && rng.IntN(8) != 0 {
					i := rng.IntN(len(cur))
					p := cur[i]
					cur[i] = cur[len(cur)-1]
					cur = cur[:len(cur)-1]
					x.staged = append(x.staged, stagedSlot{h: p.h, slot: p.slot})
					if !failed {
						remove(p)
					}
				} else {
					p := pair{hashOf(cur), nextSlot}
					nextSlot++
					cur = append(cur, p)
					x.staged = append(x.staged, stagedSlot{h: p.h, slot: p.slot, add: true})
					if !failed {
						add(p)
					}
				}
			}
			if failed {
				x.discard()
				continue
			}
			staged := slices.Clone(x.staged[first:])
			live = cur
			x.apply()
			step++
			if x.old != nil && !shrinking {
				shrinks++
			}
			shrinking = x.old != nil
			for _, c := range staged {
				if !same(c.h) {
					t.Fatalf("step %d: hash %d: slots %v, want %v", step, c.h, x.slots(nil, c.h), ref[c.h])
				}
			}
			if shrinking || step%16 == 0 {
				check(step)
			}
		}
		check(step)
	}
	if shrinks < 2 {
		t.Errorf("the table shrank %d times, want 2 (one per burst)", shrinks)
	}
}
