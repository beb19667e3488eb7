package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestSeqSetMatchesMap drives a seqSet as the queue index does (Seqs added in
// increasing order with gaps, now and then an old one again, below the window
// too, removed in any order), with a window small enough to slide, and checks has and rank after
// every step against a map: has is exact for every Seq it says it knows, and
// every Seq from the window's base up is known; rank counts the set Seqs
// below, those below the window counted whatever the Seq.
func TestSeqSetMatchesMap(t *testing.T) {
	belowAll := 0
	defer func() {
		if belowAll == 0 && !t.Failed() {
			t.Error("no Seq was added again below the window")
		}
	}()
	for seed := range uint64(8) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			var s seqSet
			ref := map[uint64]bool{}
			var set []uint64
			next := uint64(rng.IntN(1000))
			queued := 100 + rng.IntN(20000)
			gap := 1 + rng.IntN(int(seed%4)*40+1)
			slides, below := 0, 0
			for step := range 20000 {
				switch x := rng.IntN(10); {
				case x < 5 || len(set) == 0:
					if rng.IntN(50) == 0 && len(set) > 0 { // an old one back (the cascade's), maybe below the window
						seq := set[rng.IntN(len(set))] - 1
						if !ref[seq] {
							if seq < s.base {
								below++
							}
							s.add(seq, queued)
							ref[seq] = true
							set = append(set, seq)
						}
						break
					}
					if rng.IntN(50) == 0 && s.base > 1 { // an old one back below the window
						seq := s.base - 1 - uint64(rng.IntN(int(min(s.base-1, 1000))))
						if !ref[seq] {
							below++
							s.add(seq, queued)
							ref[seq] = true
							set = append(set, seq)
						}
						break
					}
					base := s.base
					s.add(next, queued)
					if s.base != base && base != 0 {
						slides++
					}
					ref[next] = true
					set = append(set, next)
					next += 1 + uint64(rng.IntN(gap))
				default:
					i := rng.IntN(len(set))
					seq := set[i]
					set[i] = set[len(set)-1]
					set = set[:len(set)-1]
					s.remove(seq)
					delete(ref, seq)
				}
				if step%97 != 0 {
					continue
				}
				for range 20 {
					seq := uint64(rng.IntN(int(next) + 100))
					if len(set) > 0 && rng.IntN(2) == 0 {
						seq = set[rng.IntN(len(set))]
					}
					got, known := s.has(seq)
					if known != (seq >= s.base) || known && got != ref[seq] {
						t.Fatalf("step %d: has(%d) = %v, %v; set %v, base %d", step, seq, got, known, ref[seq], s.base)
					}
					want := 0
					for x := range ref {
						if x < seq || x < s.base {
							want++
						}
					}
					if r := s.rank(seq); r != want {
						t.Fatalf("step %d: rank(%d) = %d, want %d (base %d)", step, seq, r, want, s.base)
					}
				}
			}
			if gap > 40 && slides == 0 {
				t.Errorf("the window never slid (gap %d, queued %d)", gap, queued)
			}
			belowAll += below
			t.Logf("gap %d, queued %d: %d slides, base %d, %d words", gap, queued, slides, s.base, len(s.bits))
		})
	}
}
