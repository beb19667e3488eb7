package store

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"
)

// doneSet compares keys byte for byte, in order or out of it (a damaged page),
// and keeps keys longer than its chunks.
func TestDoneSet(t *testing.T) {
	long := bytes.Repeat([]byte("k"), doneChunk+10)
	for _, tc := range []struct {
		name string
		keys [][]byte
	}{
		{"ascending", [][]byte{[]byte("a"), []byte("b"), long, []byte("m"), []byte("z")}},
		{"out of order", [][]byte{[]byte("b"), []byte("d"), []byte("a"), long, []byte("c")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d doneSet
			for i, k := range tc.keys {
				if d.has(k) {
					t.Fatalf("%q is in the set before it was added", k[:1])
				}
				d.add(k)
				for j, k2 := range tc.keys {
					if got, want := d.has(k2), j <= i; got != want {
						t.Fatalf("after adding %d keys, has(%q...) = %v, want %v", i+1, k2[:1], got, want)
					}
				}
			}
			for _, k := range [][]byte{[]byte(""), []byte("aa"), long[:len(long)-1], []byte("zz")} {
				if d.has(k) {
					t.Errorf("has(%q) for a key never added", fmt.Sprintf("%.4s", k))
				}
			}
		})
	}
}

// Many keys, across several doublings of the table and so through its probe
// chains: each found once added, none before, nor near misses of them.
func TestDoneSetGrows(t *testing.T) {
	var d doneSet
	const n = 20000
	key := func(i int) []byte { return []byte(fmt.Sprintf("fashion/dev-%d/%d", i%7, i)) }
	rng := rand.New(rand.NewPCG(7, 8))
	order := rng.Perm(n)
	for j, i := range order {
		if d.has(key(i)) {
			t.Fatalf("key %d in the set before it was added", i)
		}
		d.add(key(i))
		if j%997 == 0 {
			for _, i2 := range order[:j+1] {
				if !d.has(key(i2)) {
					t.Fatalf("after %d keys: key %d lost", j+1, i2)
				}
			}
		}
	}
	for i := range n {
		if !d.has(key(i)) || d.has(append(key(i), 'x')) || d.has(key(i)[1:]) {
			t.Fatalf("key %d: has %v, with a byte more %v, with a byte less %v", i, d.has(key(i)), d.has(append(key(i), 'x')), d.has(key(i)[1:]))
		}
	}
	if len(d.slots) < 2*n || len(d.slots)&(len(d.slots)-1) != 0 {
		t.Errorf("%d slots for %d keys, want a power of two at least twice as many", len(d.slots), n)
	}
}

// BenchmarkDoneSet reports the heap a doneSet holds for a million keys of 32
// bytes or so (the encoding of an app, a device and an id), added in key
// order (a schema 1 index) and in no order (schema 2's arrival order), and
// the time to add them and look each up once.
//
//	go test -run '^$' -bench DoneSet -benchtime 1x ./store
func BenchmarkDoneSet(b *testing.B) {
	const n = 1_000_000
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = encodeKey(Key{App: "fashion", Device: fmt.Sprintf("dev-%04d", i%1000), ID: fmt.Sprintf("req-%08d", i)})
	}
	slices.SortFunc(keys, bytes.Compare)
	scattered := slices.Clone(keys)
	rand.New(rand.NewPCG(1, 2)).Shuffle(n, func(i, j int) { scattered[i], scattered[j] = scattered[j], scattered[i] })
	for name, ks := range map[string][][]byte{"in-order": keys, "no-order": scattered} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				start := time.Now()
				d := new(doneSet)
				for _, k := range ks {
					if d.has(k) {
						b.Fatal("a key twice")
					}
					d.add(k)
				}
				for _, k := range keys {
					if !d.has(k) {
						b.Fatal("a key lost")
					}
				}
				took := time.Since(start)
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/1e6, "MB")
				b.ReportMetric(took.Seconds(), "s")
				runtime.KeepAlive(d)
			}
		})
	}
}
