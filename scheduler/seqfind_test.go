package scheduler

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSeqFinderMatchesBinarySearch compares seqFinder's searches, one at a
// time, side by side and many in order (findMany), with slices' binary search on queues whose Seqs are
// dense, evenly spread, clustered and exponentially spaced, for Seqs in the
// queue, between and outside.
func TestSeqFinderMatchesBinarySearch(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for _, c := range []struct {
		name string
		gap  func() uint64 // nil: exponential
	}{
		{"dense", func() uint64 { return 1 }},
		{"even", func() uint64 { return 1 + rng.Uint64N(4) }},
		{"clusters", func() uint64 { return []uint64{1, 1, 1, 1_000_000}[rng.IntN(4)] }},
		{"exponential", nil},
	} {
		name, gap := c.name, c.gap
		for _, n := range []int{0, 1, 2, 3, 10, 1000, 50_000} {
			q := make([]*Request, n)
			s := uint64(rng.IntN(3))
			for i := range q {
				q[i] = &Request{Seq: s}
				if gap == nil {
					s += 1 + s/4
				} else {
					s += gap()
				}
				if s > 1<<62 {
					q = q[:i+1]
					break
				}
			}
			var fd seqFinder
			fd.reset(q)
			var batch []seqSearch
			probe := func(seq uint64) {
				wi, wf := slices.BinarySearchFunc(q, seq, func(y *Request, seq uint64) int { return cmp.Compare(y.Seq, seq) })
				if i, f := fd.find(seq); i != wi || f != wf {
					t.Fatalf("%s, %d queued: find(%d) = %d, %v; want %d, %v", name, len(q), seq, i, f, wi, wf)
				}
				batch = append(batch, seqSearch{seq: seq, at: len(batch)})
			}
			for _, r := range q {
				probe(r.Seq)
				probe(r.Seq + 1)
				if r.Seq > 0 {
					probe(r.Seq - 1)
				}
			}
			probe(0)
			probe(s + 10)
			probe(^uint64(0))
			// The same searches side by side, in a shuffled order; then
			// with findMany, all of them (in order of their Seqs) and a few
			// (side by side).
			rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
			for _, many := range []int{0, len(batch), 1 + len(batch)/100} {
				ss := slices.Clone(batch)
				fd.reset(q)
				if many == 0 {
					fd.findAll(ss)
				} else {
					ss = ss[:many]
					fd.findMany(ss)
				}
				for _, b := range ss {
					wi, wf := slices.BinarySearchFunc(q, b.seq, func(y *Request, seq uint64) int { return cmp.Compare(y.Seq, seq) })
					if b.hi != wi || b.hit != wf {
						t.Fatalf("%s, %d queued: findAll/findMany(%d) for %d: %d, %v; want %d, %v", name, len(q), many, b.seq, b.hi, b.hit, wi, wf)
					}
				}
			}
		}
	}
}

// TestSeqFinderGuesses checks tryGuesses, then findAll for what it leaves,
// against slices' binary search, with guesses that are right, off by one or
// two either way, far off and out of range, on dense and sparse queues: a
// guess only says where to look first.
func TestSeqFinderGuesses(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, n := range []int{0, 1, 2, 5, 100, 5000} {
		for _, sparse := range []bool{false, true} {
			q := make([]*Request, n)
			s := uint64(rng.IntN(3))
			for i := range q {
				q[i] = &Request{Seq: s}
				s++
				if sparse {
					s += uint64(rng.IntN(5))
				}
			}
			var fd seqFinder
			var ss []seqSearch
			for range 4000 {
				seq := uint64(rng.IntN(int(s) + 3))
				w, _ := slices.BinarySearchFunc(q, seq, func(y *Request, seq uint64) int { return cmp.Compare(y.Seq, seq) })
				g := w
				switch rng.IntN(4) {
				case 1:
					g += rng.IntN(5) - 2
				case 2:
					g = rng.IntN(n+20) - 10
				case 3:
					g += rng.IntN(2) - 1
				}
				ss = append(ss, seqSearch{seq: seq, at: len(ss), guess: g})
			}
			fd.reset(q)
			if k := fd.tryGuesses(ss); k > 0 {
				fd.findAll(ss[:k])
			}
			for _, b := range ss {
				wi, wf := slices.BinarySearchFunc(q, b.seq, func(y *Request, seq uint64) int { return cmp.Compare(y.Seq, seq) })
				if b.hi != wi || b.hit != wf {
					t.Fatalf("%d queued, sparse %v: search for %d guessed at %d: %d, %v; want %d, %v", n, sparse, b.seq, b.guess, b.hi, b.hit, wi, wf)
				}
			}
			if n > 2 && fd.wrong*3 > fd.guessed*2 {
				t.Fatalf("%d queued: %d of %d guesses left, too many for a quarter of them off", n, fd.wrong, fd.guessed)
			}
		}
	}
}
