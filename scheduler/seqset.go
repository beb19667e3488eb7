package scheduler

import "math/bits"

// seqSet is the queue index's record of the requests it believes queued, by
// Seq: one bit per Seq over a window [base, base+64*len(bits)), with counts
// that give the number of set Seqs below any Seq (rank) in a few steps, all in
// a few kilobytes that stay in the cache where the requests do not (a
// request is 224 bytes; at 100k queued, 22 MB). The index (index.go) sets a
// request's bit when it indexes it and clears it when it finds it gone
// (markGone), so that
//
//   - an entry of the hard-stop queue, which carries its request's Seq,
//     says whether the request was found gone without reading the request
//     (keyQueue.sweep looked at 64 entries a decision at 100k queued
//     overloaded, each a request out of the cache);
//   - rank guesses where a request is, or would be, in the decision's queue:
//     the index's queue is the caller's, less what it removed that the index
//     has not found yet, so when it knows what left (settle), the guess is
//     the place, and a search for a request takes one probe instead of a
//     bracket between fences and 4-6 probes (seqFinder.tryGuesses).
//
// A Seq below base (the window slides up when a new Seq does not fit and the
// window may not grow) is not known: has says so, and the caller reads the
// request instead; below counts the set ones, for rank.
type seqSet struct {
	base uint64
	bits []uint64
	// tree is a Fenwick tree of the number of set bits in each block of
	// blockWords words (tree[0] unused).
	tree  []int32
	below int
}

const (
	blockWords = 8
	// minSetWords is the least window (64k Seqs) and maxSetPer the most
	// bits per queued request it may grow to beyond that.
	minSetWords = 1024
	maxSetPer   = 8
)

// reset empties s, keeping its buffers.
func (s *seqSet) reset() {
	clear(s.bits)
	s.bits = s.bits[:0]
	clear(s.tree)
	s.base, s.below = 0, 0
}

// add sets seq; queued is the length of the queue (it bounds
// the window: maxSetPer bits per queued request, and at least minSetWords
// words).
func (s *seqSet) add(seq uint64, queued int) {
	if len(s.bits) == 0 {
		s.base = seq &^ 63
		s.grow(minSetWords)
	}
	if seq < s.base {
		s.below++
		return
	}
	w := (seq - s.base) / 64
	if w >= uint64(len(s.bits)) {
		limit := max(minSetWords, maxSetPer*queued/64)
		if w < uint64(limit) {
			n := len(s.bits)
			for uint64(n) <= w {
				n *= 2
			}
			s.grow(n)
		} else {
			s.slide(w - uint64(len(s.bits)/2))
		}
		w = (seq - s.base) / 64
	}
	if s.bits[w]&(1<<(seq&63)) == 0 {
		s.bits[w] |= 1 << (seq & 63)
		s.update(int(w)/blockWords, 1)
	}
}

// remove clears seq, which is set (or counted below the window).
func (s *seqSet) remove(seq uint64) {
	if seq < s.base {
		s.below--
		return
	}
	w := (seq - s.base) / 64
	if w >= uint64(len(s.bits)) || s.bits[w]&(1<<(seq&63)) == 0 {
		return
	}
	s.bits[w] &^= 1 << (seq & 63)
	s.update(int(w)/blockWords, -1)
}

// has reports whether seq is set; known is false for a Seq below the window.
func (s *seqSet) has(seq uint64) (set, known bool) {
	if seq < s.base {
		return false, false
	}
	w := (seq - s.base) / 64
	return w < uint64(len(s.bits)) && s.bits[w]&(1<<(seq&63)) != 0, true
}

// rank is the number of set Seqs below seq (those below the window counted
// whatever seq is).
func (s *seqSet) rank(seq uint64) int {
	n := s.below
	if seq <= s.base || len(s.bits) == 0 {
		return n
	}
	w := (seq - s.base) / 64
	if w >= uint64(len(s.bits)) {
		return n + s.prefix(len(s.bits)/blockWords)
	}
	b := int(w) / blockWords
	n += s.prefix(b)
	for _, x := range s.bits[b*blockWords : w] {
		n += bits.OnesCount64(x)
	}
	return n + bits.OnesCount64(s.bits[w]&(1<<(seq&63)-1))
}

// prefix is the number of set bits in the blocks before block b.
func (s *seqSet) prefix(b int) int {
	n := 0
	for ; b > 0; b &= b - 1 {
		n += int(s.tree[b])
	}
	return n
}

func (s *seqSet) update(b int, d int32) {
	for b++; b < len(s.tree); b += b & -b {
		s.tree[b] += d
	}
}

// grow makes the window n words long (n a multiple of blockWords).
func (s *seqSet) grow(n int) {
	if cap(s.bits) >= n {
		s.bits = s.bits[:n]
	} else {
		s.bits = append(s.bits[:cap(s.bits)], make([]uint64, n-cap(s.bits))...)
	}
	s.rebuild()
}

// slide moves the window up by k words, counting the set bits it leaves in
// below.
func (s *seqSet) slide(k uint64) {
	m := min(k, uint64(len(s.bits)))
	for _, x := range s.bits[:m] {
		s.below += bits.OnesCount64(x)
	}
	n := copy(s.bits, s.bits[m:])
	clear(s.bits[n:])
	s.base += 64 * k
	s.rebuild()
}

// rebuild recomputes the Fenwick tree from the bits.
func (s *seqSet) rebuild() {
	nb := len(s.bits) / blockWords
	if cap(s.tree) >= nb+1 {
		s.tree = s.tree[:nb+1]
		clear(s.tree)
	} else {
		s.tree = make([]int32, nb+1)
	}
	for b := range nb {
		c := 0
		for _, x := range s.bits[b*blockWords : (b+1)*blockWords] {
			c += bits.OnesCount64(x)
		}
		s.tree[b+1] += int32(c)
		if p := (b + 1) + (b+1)&-(b+1); p <= nb {
			s.tree[p] += s.tree[b+1]
		}
	}
}
