package scheduler

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestKeyQueueMatchesSort drives a keyQueue the way the queue index does (a
// rebuild's entries, pushes of new arrivals, a decision's pops put back when
// it ends, entries dropped for good, the odd put-back out of order, sweeps of
// entries whose requests are gone), with keys
// that collide (few distinct times, so that the Seq decides), negative ones
// and saturated ones, and checks every pop and top against a sorted copy of
// what it holds.
func TestKeyQueueMatchesSort(t *testing.T) {
	for seed := range uint64(24) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 3))
			var q keyQueue
			if seed%2 == 0 {
				q.reset() // as the index's: everything far until the first pop
			}
			var ref []keyEntry // what q holds, sorted
			seq := uint64(0)
			span := 1 + rng.IntN(1000)
			if seed%3 == 0 {
				span = 1_000_000
			}
			saturated := 200 // one key in this many is math.MaxInt64
			if seed%4 == 1 {
				saturated = 2
			}
			key := func() time.Duration {
				switch {
				case rng.IntN(saturated) == 0:
					return math.MaxInt64
				case rng.IntN(200) == 0:
					return -time.Duration(rng.IntN(span))
				}
				return time.Duration(rng.IntN(span))
			}
			young := seed%3 == 1 // new entries young, as the hard-stop queues'
			push := func() {
				e := entryOf(key(), &Request{Seq: seq})
				seq++
				if young && rng.IntN(8) > 0 {
					q.pushYoung(e)
				} else {
					q.push(e)
				}
				i, _ := slices.BinarySearchFunc(ref, e, cmpKeyEntry)
				ref = slices.Insert(ref, i, e)
			}
			for range rng.IntN(5000) {
				push()
			}
			pops, swept, youngGone := 0, 0, 0
			var keep []bool
			var old []keyEntry // young for a whole step at the sweep
			for step := range 400 {
				for range rng.IntN(40) {
					push()
				}
				var popped []keyEntry
				for k := rng.IntN(80); k > 0 && q.len() > 0; k-- {
					if q.len() != len(ref) {
						t.Fatalf("step %d: len %d, holds %d", step, q.len(), len(ref))
					}
					if top := q.top(); top != ref[0] {
						t.Fatalf("step %d: top %+v, want %+v", step, top, ref[0])
					}
					e := q.pop()
					pops++
					if e != ref[0] {
						t.Fatalf("step %d: pop %+v, want %+v", step, e, ref[0])
					}
					ref = ref[1:]
					if rng.IntN(3) > 0 { // a live entry, put back at the end
						popped = append(popped, e)
					}
				}
				if len(popped) > 1 && rng.IntN(10) == 0 { // out of order: into the heap
					popped[0], popped[len(popped)-1] = popped[len(popped)-1], popped[0]
				}
				q.putBack(popped)
				for _, e := range popped {
					i, _ := slices.BinarySearchFunc(ref, e, cmpKeyEntry)
					ref = slices.Insert(ref, i, e)
				}
				// Requests gone from the queue, swept away: young entries
				// young for a whole step, and those of far and the heap the
				// round reaches; the stack keeps its own.
				gone := func(e keyEntry) bool { return e.r.Seq%5 == uint64(step)%5 }
				old = append(old[:0], q.young[:q.youngOld]...)
				q.sweepYoung(gone)
				if rng.IntN(3) == 0 {
					q.sweep(rng.IntN(300), gone)
				}
				// keep[s]: q holds the entry of the request with Seq s (a
				// slice, not a map: a map a step made the GC run through the
				// reference's inserts and the test ten times slower).
				keep = slices.Grow(keep[:0], int(seq))[:seq]
				clear(keep)
				for _, part := range [][]keyEntry{q.h[min(len(q.h), heapPad):], q.far, q.back, q.young} {
					for _, e := range part {
						keep[e.r.Seq] = true
					}
				}
				for _, e := range old {
					if gone(e) {
						if keep[e.r.Seq] {
							t.Fatalf("step %d: request %d gone, young for a whole step, still held after sweepYoung", step, e.r.Seq)
						}
						youngGone++
					}
				}
				n := len(ref)
				ref = slices.DeleteFunc(ref, func(e keyEntry) bool { return gone(e) && !keep[e.r.Seq] })
				swept += n - len(ref)
				if q.len() != len(ref) {
					t.Fatalf("step %d: len %d after a sweep, holds %d", step, q.len(), len(ref))
				}
			}
			for q.len() > 0 {
				if e := q.pop(); e != ref[0] {
					t.Fatalf("drain: pop %+v, want %+v", e, ref[0])
				}
				ref = ref[1:]
			}
			// Young entries mostly leave through a pop (youngFirst) here: a few
			// in each seed reach sweepYoung gone.
			if len(ref) != 0 || pops < 1000 || swept < 10 || young && youngGone == 0 {
				t.Fatalf("%d left in the reference, %d pops, %d swept, %d dropped by sweepYoung", len(ref), pops, swept, youngGone)
			}
		})
	}
}

func cmpKeyEntry(a, b keyEntry) int {
	if c := cmp.Compare(a.at, b.at); c != 0 {
		return c
	}
	return cmp.Compare(a.seq, b.seq)
}
