package store

import (
	"fmt"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
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

// Once most keys have left (GC), the table is copied into a map of its size,
// so a burst's memory is given back; the keys left are all still found.
func TestKeyIndexShrinks(t *testing.T) {
	x := newKeyIndex()
	n := 4 * shrinkBelow
	stage(x, n, true)
	x.apply()
	if x.peak != n {
		t.Fatalf("peak %d after %d keys", x.peak, n)
	}
	before := x.m
	stage(x, n-n/4+1, false)
	x.apply()
	if reflect.ValueOf(x.m).UnsafePointer() == reflect.ValueOf(before).UnsafePointer() || x.peak != len(x.m) || len(x.m) != n/4-1 {
		t.Fatalf("after removing all but %d: the same map %v, peak %d, len %d", n/4-1, reflect.ValueOf(x.m).UnsafePointer() == reflect.ValueOf(before).UnsafePointer(), x.peak, len(x.m))
	}
	for i := n - n/4 + 1; i < n; i++ {
		if s, ok := x.m[uint64(i)]; !ok || s != uint64(i) {
			t.Fatalf("key %d lost in the copy", i)
		}
	}
}

// Readers (under mu, as Lookup reads) run while apply shrinks the table, and
// always find a key that stays (run with -race: the copy, made without mu held
// so that they need not wait for it, only reads the table they read).
func TestKeyIndexShrinksUnderReaders(t *testing.T) {
	x := newKeyIndex()
	n := 4 * shrinkBelow
	stage(x, n, true)
	x.apply()
	stage(x, n-n/4+1, false)
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

// BenchmarkKeyIndexShrink reports how long the committer spends in the apply
// that removes three quarters and one of a million keys and copies the table
// into a map of its size (shrink-s): the pause of commits once after a burst.
//
//	go test -run '^$' -bench KeyIndexShrink -benchtime 1x ./store
func BenchmarkKeyIndexShrink(b *testing.B) {
	const n = 1_000_000
	for range b.N {
		b.StopTimer()
		x := newKeyIndex()
		stage(x, n, true)
		x.apply()
		stage(x, n-n/4+1, false)
		b.StartTimer()
		start := time.Now()
		x.apply()
		b.ReportMetric(time.Since(start).Seconds(), "shrink-s")
		if len(x.m) != n/4-1 {
			b.Fatalf("%d keys left, want %d", len(x.m), n/4-1)
		}
	}
}
