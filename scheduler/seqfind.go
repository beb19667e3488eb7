package scheduler

import (
	"cmp"
	"slices"
)

// seqFinder finds requests by Seq in a decision's queue (in increasing Seq
// order): it answers what slices.BinarySearchFunc(q, seq, by Seq) would, the
// position of seq in q, or where it would be, and whether it is there. The
// queue index (index.go) asks it whether each request it takes is still queued,
// twice per scheduled request (when taken, and at the next decision, when it
// is usually gone), and at 100k queued every probe of a search reads a request
// that is not in the cache: bisection's 17 probes were half of an edf decision.
// So that it costs about the same at any length:
//
//   - fences: the Seqs of 64 requests spread evenly over the queue, and of
//     the requests 1, 2, 4, 8, ... from its end, read once per decision (when
//     findAll first needs them; those near the end when a search falls
//     there), bracket a search to 1/63 of the queue without a probe, and a
//     search for one of the latest requests much closer (a lone search, as
//     fifo makes a few of, starts from the queue's ends, or the fences if
//     they are there). After the queue has turned over, the last 1/63 of it
//     is dense in Seq at its end and sparse before (edf, not overloaded at
//     100k queued, serves nine in ten requests the decision after they
//     arrive): without the fences near the end a search for one of the
//     latest took 13-17 probes, with them 1-3;
//   - interpolation: the Seqs are distinct integers that grow with arrival
//     time, so the position of seq between two known requests is about
//     proportional to its Seq (exact when none is missing in between). An
//     interpolation probe that does not halve the range is followed by a
//     bisection step, so that a bracket whose Seqs are spread unevenly takes at
//     most twice bisection's probes;
//   - side by side: findAll makes one probe of each search in turn, so that the
//     cache misses of different searches overlap instead of adding up.
type seqFinder struct {
	q []*Request
	// fence[j] is q[fenceAt[j]].Seq, fenceAt increasing from 0 to len(q)-1;
	// built lazily (the queue's two ends, or every fence), none while the
	// queue is shorter than two.
	fence   []uint64
	fenceAt []int
	// all: the fences are every fence, not only the ends; tail: with those
	// near the end (tailFences).
	all, tail bool
	// guessed and wrong count tryGuesses' searches and those it left (for
	// the tests).
	guessed, wrong int
}

// maxFences is the number of evenly spread fences of a long queue.
const maxFences = 64

// reset sets the queue to search (the fences are read on the first search).
func (f *seqFinder) reset(q []*Request) {
	f.q = q
	f.fence, f.fenceAt, f.all, f.tail = f.fence[:0], f.fenceAt[:0], false, false
}

// fences reads the fences, unless they are there: the queue's two ends for a
// lone search (all false), else maxFences spread evenly over the queue (at
// most one per request); tailFences adds those near the end.
func (f *seqFinder) fences(all bool) {
	n := len(f.q)
	if n < 2 || f.all || !all && len(f.fence) > 0 {
		return
	}
	f.fence, f.fenceAt, f.tail = f.fence[:0], f.fenceAt[:0], false
	if !all {
		f.fence = append(f.fence, f.q[0].Seq, f.q[n-1].Seq)
		f.fenceAt = append(f.fenceAt, 0, n-1)
		return
	}
	f.all = true
	k := min(n, maxFences)
	for j := range k {
		at := j * (n - 1) / (k - 1)
		f.fence = append(f.fence, f.q[at].Seq)
		f.fenceAt = append(f.fenceAt, at)
	}
}

// tailFences adds fences between the last two even ones, at 1, 2, 4, 8, ...
// requests from the end, when a search first needs them (the fences are every
// fence). The latest requests are the densest in Seq (none of the newest has
// been served yet, while further back most may have been) and often the ones
// searched for (a policy that serves requests due soon takes the new ones
// that are), and between two even fences the interpolation would take the
// dense end for a sparse one's.
func (f *seqFinder) tailFences() {
	f.tail = true
	n, k := len(f.q), len(f.fence)
	if k < 3 {
		return
	}
	last := f.fenceAt[k-2]
	f.fence, f.fenceAt = f.fence[:k-1], f.fenceAt[:k-1]
	d := 1
	for n-1-2*d > last {
		d *= 2
	}
	for ; d > 0; d /= 2 {
		if at := n - 1 - d; at > last {
			f.fence = append(f.fence, f.q[at].Seq)
			f.fenceAt = append(f.fenceAt, at)
		}
	}
	f.fence = append(f.fence, f.q[n-1].Seq)
	f.fenceAt = append(f.fenceAt, n-1)
}

// find is one search.
func (f *seqFinder) find(seq uint64) (int, bool) {
	s := seqSearch{seq: seq}
	for f.start(&s, false); !s.done; {
		m := s.probe()
		s.update(m, f.q[m].Seq)
	}
	return s.hi, s.hit
}

// findAll runs the searches ss (seq set) side by side, in rounds: each round
// first reads the probed request of every search still going, then moves the
// searches on, so that the reads do not wait for one another (a branch on a
// value not yet read would stop the processor from reading further ahead). It
// reorders ss (at says where each search was).
func (f *seqFinder) findAll(ss []seqSearch) {
	n := 0 // the searches still going are ss[:n]
	for i := range ss {
		if f.start(&ss[i], true); !ss[i].done {
			ss[n], ss[i] = ss[i], ss[n]
			n++
		}
	}
	for n > 0 {
		for i := range ss[:n] {
			s := &ss[i]
			s.m = s.probe()
			s.y = f.q[s.m].Seq
		}
		k := 0
		for i := range ss[:n] {
			if ss[i].update(ss[i].m, ss[i].y); !ss[i].done {
				ss[k], ss[i] = ss[i], ss[k]
				k++
			}
		}
		n = k
	}
}

// findMany answers the searches ss as findAll does (findAll may reorder
// them). Many searches at once (manySearches: a decision that sheds most of a
// long queue answers tens of thousands) run one after the other instead, each
// galloping from where the last one ended (gallop): findAll's rounds would go
// over all of them at each probe, and searches of neighbouring Seqs read the
// same places.
func (f *seqFinder) findMany(ss []seqSearch) {
	if !manySearches(len(ss), len(f.q)) {
		f.findAll(ss)
		return
	}
	lo := 0
	for i := range ss {
		s := &ss[i]
		if i > 0 && s.seq < ss[i-1].seq {
			lo = 0
		}
		s.hi, s.hit = gallop(f.q, lo, s.seq)
		s.done, lo = true, s.hi
	}
}

// manySearches reports whether n searches in a queue of length m are better
// made one after the other in order of their Seqs (gallop) than side by side:
// more than a sixty-fourth of the queue, and at least 64.
func manySearches(n, m int) bool { return n > m/64 && n >= 64 }

// gallop is where seq is in q (or would be) and whether it is there, as
// slices.BinarySearchFunc by Seq answers, for a seq above every Seq in
// q[:lo]: it looks at q[lo], q[lo+1], q[lo+3], ... until one is not below
// seq, then bisects. A decision's verdicts come in the queue's order, so that
// searching for them in turn, each from where the last one ended, costs about
// the logarithm of the distance between them.
func gallop(q []*Request, lo int, seq uint64) (int, bool) {
	hi, step := lo, 1
	for hi < len(q) && q[hi].Seq < seq {
		lo = hi + 1
		hi += step
		step *= 2
	}
	hi = min(hi+1, len(q))
	j, hit := slices.BinarySearchFunc(q[lo:hi], seq, func(y *Request, seq uint64) int { return cmp.Compare(y.Seq, seq) })
	return lo + j, hit
}

// tryGuesses answers the searches of ss whose guess (seqSearch.guess: the
// place seq is expected at, or would be at, in the queue) proves right, from
// the Seqs at the guess and just before it, and moves the others to the front
// of ss: it returns how many are left (to findAll or findMany). Like findAll,
// it reads the guesses' requests in a loop of its own before it branches on
// them. A guess only says where to look: a wrong one costs its two reads.
func (f *seqFinder) tryGuesses(ss []seqSearch) int {
	q := f.q
	n := len(q)
	for i := range ss {
		s := &ss[i]
		g := min(max(s.guess, 0), n)
		s.m, s.sLo, s.sHi = g, 0, ^uint64(0)
		if g > 0 {
			s.sLo = q[g-1].Seq
		}
		if g < n {
			s.sHi = q[g].Seq
		}
	}
	k := 0
	for i := range ss {
		s := &ss[i]
		switch g := s.m; {
		case g < n && s.sHi == s.seq:
			s.hi, s.hit = g, true
		case g > 0 && s.sLo == s.seq:
			s.hi, s.hit = g-1, true
		case (g == 0 || s.sLo < s.seq) && (g == n || s.seq < s.sHi):
			s.hi, s.hit = g, false
		default:
			ss[k], ss[i] = ss[i], ss[k]
			k++
			continue
		}
		s.done = true
	}
	f.guessed += len(ss)
	f.wrong += k
	return k
}

// seqSearch is one search, stepped by findAll. When done, hi is the position
// of seq in the queue, or where it would be, and hit whether it is there; at
// is the caller's (findAll's argument's order).
type seqSearch struct {
	seq      uint64
	at       int
	guess    int // tryGuesses' first probe
	lo, hi   int
	sLo, sHi uint64
	// m is the position probed in a round of findAll, y its Seq.
	m int
	y uint64
	// bisect: the next probe bisects (the last one did not halve the range).
	bisect, done, hit bool
}

// start brackets the search between two fences, or finds seq at one or
// outside them. Invariant of a search not done: q[lo].Seq = sLo < seq < sHi =
// q[hi].Seq and hi-lo > 1, the answer in (lo, hi].
func (f *seqFinder) start(s *seqSearch, all bool) {
	s.done, s.bisect = true, false
	switch q := f.q; len(q) {
	case 0:
		s.hi, s.hit = 0, false
		return
	case 1:
		s.hi, s.hit = 0, q[0].Seq == s.seq
		if q[0].Seq < s.seq {
			s.hi = 1
		}
		return
	}
	f.fences(all)
	j, hit := slices.BinarySearch(f.fence, s.seq)
	if f.all && !f.tail && !hit && j == len(f.fence)-1 {
		f.tailFences()
		j, hit = slices.BinarySearch(f.fence, s.seq)
	}
	switch {
	case hit:
		s.hi, s.hit = f.fenceAt[j], true
	case j == 0:
		s.hi, s.hit = 0, false
	case j == len(f.fence):
		s.hi, s.hit = len(f.q), false
	default:
		s.lo, s.hi, s.sLo, s.sHi = f.fenceAt[j-1], f.fenceAt[j], f.fence[j-1], f.fence[j]
		s.done = s.hi-s.lo <= 1 // nothing between two fences: not there
	}
}

// probe is the position to read next, in (lo, hi).
func (s *seqSearch) probe() int {
	lo, hi := s.lo, s.hi
	if s.bisect {
		return int(uint(lo+hi) >> 1)
	}
	m := lo + int(float64(hi-lo)*(float64(s.seq-s.sLo)/float64(s.sHi-s.sLo))+0.5)
	return min(max(m, lo+1), hi-1)
}

// update moves the search on from the probe of position m, whose Seq is y.
func (s *seqSearch) update(m int, y uint64) {
	w := s.hi - s.lo
	switch {
	case y == s.seq:
		s.hi, s.hit, s.done = m, true, true
		return
	case y < s.seq:
		s.lo, s.sLo = m, y
	default:
		s.hi, s.sHi = m, y
	}
	s.bisect = !s.bisect && 2*(s.hi-s.lo) > w
	if s.hi-s.lo <= 1 {
		s.hit, s.done = false, true
	}
}

// queued reports whether r itself is in q (in Seq order).
func queued(q []*Request, r *Request) bool {
	i, found := slices.BinarySearchFunc(q, r.Seq, func(x *Request, seq uint64) int { return cmp.Compare(x.Seq, seq) })
	return found && q[i] == r
}
