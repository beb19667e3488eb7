package scheduler

import (
	"cmp"
	"slices"
	"time"
)

// queueIndex is a policy's view of the queue kept between decisions, so that a
// decision costs what it schedules rather than what is queued: per application,
// the requests in arrival order, and priority queues (keyqueue.go) by deadline
// and by hard stop.
//
// It relies on the Snapshot contract (see Snapshot.Queue): the queue is in Seq
// order, and between two decisions the caller removes requests and appends new
// ones with a Seq above every request it gave the policy before. New requests
// are then the queue's tail (only that tail is scanned, as rateMeter does), and
// a removed request is found lazily: when an indexed request comes up, a search
// by Seq in the queue (seqfind.go) says whether it is still there. Anything
// else (the applications changed, a request was replaced or put back with an
// older Seq, the index holds fewer requests than the queue) is detected and the
// index is rebuilt from the queue, which costs what one full decision used to.
//
// Most of those searches are not needed. A decision takes many more requests
// from the index than it answers or batches (a searching policy's prefix, 512
// and more, for 32 batched), and takes most of them again at the next
// decision; at 100k queued each search is a few probes that miss the cache.
// So an index that sync keeps (not the cascade's) marks the requests it knows
// to be queued (with its epoch, in Request.ixGen): the new arrivals, and those a
// search found. At the next sync it searches only what the last decision
// answered or batched (note): when the queue lost exactly those of them found
// gone (its length says how many it lost: the new arrivals are its tail),
// nothing else left it, and every mark still holds; otherwise the epoch moves
// on, every mark lapses and the searches find out as before.
//
// Those searches, and the hard-stop sweeps' look at whether a request is gone,
// read requests spread over the queue, out of the cache at 100k queued (edf
// overloaded: 19 of 34 us a decision). So the index also keeps the Seqs of the
// requests it holds and has not found gone (held, seqset.go), a few hundred
// kilobytes: an entry, which carries its Seq, is known gone without its
// request, and a search starts at the place held's rank guesses (the number
// of held Seqs below, less, at settle, those of the last decision's below):
// when the caller removed what the index expects, the guess is the place, and
// the search reads two requests instead of 4-6 after a bracket of fences.
type queueIndex struct {
	// arrival, deadline and stop select the structures to keep; class keeps
	// them per application and class (Request.Class) instead of per
	// application (the searching policies that group by class: the fill of a
	// decision over a prefix takes a class's requests beyond it, bounded.go).
	arrival, deadline, stop, class bool
	apps                           map[string]*App
	maxSeq                         uint64
	per                            map[*App]*appIndex
	// perClass replaces per when class is set; built says which of the two
	// the index was built with.
	perClass map[classKey]*appIndex
	built    bool
	// gen is the index's generation (a reset starts a new one): an indexed
	// request carries the index and its generation (Request.ix, ixGen), for
	// the checks of the contract. tag is gen as ixGen carries it, liveTag the
	// ixGen of a request known to be queued in this epoch (knownLive).
	gen, tag, liveTag uint64
	// byApp lists the indexes in a fixed order (first appearance) for
	// deterministic iteration; spare are emptied ones to reuse.
	byApp, spare []*appIndex
	// q is the decision's queue; broken is set when a lookup found the
	// contract broken (the decision must be made again after a rebuild).
	q      []*Request
	broken bool
	// find searches q by Seq; seqs and keep are liveOnly's scratch.
	find seqFinder
	seqs []seqSearch
	keep []bool
	// ref is the time deadlines are keyed from (the decision that built the
	// index).
	ref time.Time
	// gone counts the requests found gone (markGone) during a decision; the
	// hard-stop queues are swept in proportion at its end (restore).
	gone int
	// marks: the index is kept by sync and uses its marks of requests known
	// to be queued (knownLive) in epoch; prevLen is the queue's length at the
	// last sync, decided what the decisions since answered or batched (note).
	marks   bool
	epoch   uint64
	prevLen int
	decided []*Request
	// held has the Seq of every request the index holds and has not found
	// gone (add, markGone): the gone without reading the requests, and a
	// guess of each request's place in the queue (seqset.go). dseqs is
	// settle's scratch.
	held  seqSet
	dseqs []uint64
}

// A request's ixGen packs, for the index that holds it (Request.ix), the
// index's generation (bits 32-62), ixGone (bit 63), set when the index found
// it gone from the queue (markGone), and the low 32 bits of the epoch in
// which the index last knew it to be queued (knownLive): one word, so that
// Request stays in its size class (a field more made a request 240 bytes
// instead of 224, and an overloaded decision at 100k queued 5-10% dearer, in
// the garbage collector).
const (
	ixGone    = 1 << 63
	ixEpoch   = 1<<32 - 1
	ixGenBits = (ixGone - 1) &^ ixEpoch
)

// stopSweep is how many entries of a hard-stop queue's far part and heap
// keyQueue.sweep looks at per request found gone. With k per request gone, a
// round of F entries takes F/(k*g) decisions when g requests leave per
// decision, over which at most F/k of its entries become garbage: about
// 1/(2k) of them are garbage on average (less, as most requests leave while
// young). While the index's largest structure (sizes; the hard-stop queues,
// as a rule) holds more than 1.5 times the queue, the sweep looks at four
// times as many: the index is rebuilt at twice (sync).
const stopSweep = 2

// decide makes a decision from the index (indexed), rebuilding the index once
// when the queue broke its contract, and falls back to the full recomputation
// (full) when it breaks again.
func (ix *queueIndex) decide(s *Snapshot, indexed, full func(*Snapshot) Decision) Decision {
	for range 2 {
		d := indexed(s)
		if !ix.broken {
			ix.note(d)
			return d
		}
		ix.per = nil // the queue broke the index's contract: rebuild
	}
	return full(s)
}

// classKey names an application's class (queueIndex.class).
type classKey struct {
	app   *App
	class int
}

// appIndex is one application's part of the index (or, with
// queueIndex.class, one class's of an application).
type appIndex struct {
	app   *App
	class int
	// arr is the requests in arrival order from head on.
	arr  []*Request
	head int
	// dl is a priority queue by (Deadline, Seq), stop by (HardStop, Seq)
	// (keyqueue.go), their entries carrying the key so that a comparison does
	// not dereference the requests.
	dl, stop keyQueue
	// popped are the entries taken from dl or stop during a decision, to be put
	// back when it ends (restore).
	poppedDl, poppedStop []keyEntry
	// ahead[aheadAt:] are live entries nextByDeadline took from dl and has
	// not handed out yet (put back by restore after poppedDl).
	ahead   []keyEntry
	aheadAt int
}

// sync brings the index up to date with s. It returns false when the index
// had to be rebuilt from scratch (not an error: the caller just paid more).
func (x *queueIndex) sync(s *Snapshot) bool {
	x.q = s.Queue
	x.find.reset(s.Queue)
	x.broken = false
	x.marks = true
	defer func() {
		x.prevLen = len(s.Queue)
		clear(x.decided)
		x.decided = x.decided[:0]
	}()
	least, most := x.sizes()
	fresh := x.per == nil || x.built != x.class || !x.sameApps(s.Apps) || most > 2*len(s.Queue)+256
	start := 0
	if !fresh {
		start = len(s.Queue)
		for start > 0 && s.Queue[start-1].Seq > x.maxSeq {
			start--
		}
		// Fewer indexed than queued: something came back with an old Seq.
		fresh = least+len(s.Queue)-start < len(s.Queue) || !x.indexed(s.Queue, start)
	}
	if fresh || !x.settle(start) {
		x.reset(s.Apps)
		x.ref = s.Now
		for _, r := range s.Queue {
			x.add(r, false)
		}
		return false
	}
	for _, r := range s.Queue[start:] {
		x.add(r, true)
	}
	return true
}

// note records what decision d answered and batched, for the next sync
// (settle). A decision made without the index need not be noted: the next
// sync then finds the queue shorter than it can account for.
func (x *queueIndex) note(d Decision) {
	for _, v := range d.Verdicts {
		x.decided = append(x.decided, v.Request)
	}
	if d.Batch != nil {
		x.decided = append(x.decided, d.Batch.Requests...)
	}
}

// settle checks the marks of requests known to be queued against the queue
// of this sync, whose new arrivals start at start. Every request marked at the
// last sync (or found by a search since) was in the last queue; the caller
// removed prevLen - start of them. Those the decisions since answered or
// batched (note) are looked up, and the ones gone are marked gone: when they
// are all the queue lost, every other mark still holds. Otherwise (the caller
// removed others too, or a decision was not noted) the epoch moves on and the
// marks lapse. A request replaced by another with its Seq moves it on too (it
// breaks the contract; the searches that follow find out). It returns false
// when the index must be rebuilt: the epoch's 32 bits in ixGen came round.
func (x *queueIndex) settle(start int) bool {
	removed, gone, replaced := x.prevLen-start, 0, false
	if removed > 0 && len(x.decided) > 0 {
		x.seqs, x.dseqs = x.seqs[:0], x.dseqs[:0]
		for i, r := range x.decided {
			if x.knownLive(r) {
				x.seqs = append(x.seqs, seqSearch{seq: r.Seq, at: i})
				x.dseqs = append(x.dseqs, r.Seq)
			}
		}
		// Each is guessed where it would be if the caller removed exactly
		// these: its rank among the held Seqs, less those of these below it.
		slices.Sort(x.dseqs)
		x.dseqs = slices.Compact(x.dseqs)
		for i := range x.seqs {
			sr := &x.seqs[i]
			below, _ := slices.BinarySearch(x.dseqs, sr.seq)
			sr.guess = x.held.rank(sr.seq) - below
		}
		if k := x.find.tryGuesses(x.seqs); k > 0 {
			x.find.findMany(x.seqs[:k])
		}
		for _, sr := range x.seqs {
			r := x.decided[sr.at]
			switch {
			case !sr.hit:
				if x.holds(r) { // not a second entry of r
					x.markGone(r)
					gone++
				}
			case x.q[sr.hi] != r:
				replaced = true
			}
		}
	}
	if gone != removed || replaced {
		x.epoch++
		x.liveTag = x.tag | x.epoch&ixEpoch
		return x.epoch&ixEpoch != 0
	}
	return true
}

// knownLive reports whether r is marked as queued by this epoch of x (see
// settle): then r is in the decision's queue without a search.
func (x *queueIndex) knownLive(r *Request) bool {
	return r.ixGen == x.liveTag && r.ix == x && x.marks
}

// sizes returns the number of entries of the smallest and the largest kept
// structure. Each holds every queued request (and removed ones not yet found),
// so neither may be smaller than the queue; the largest bounds the garbage.
func (x *queueIndex) sizes() (least, most int) {
	var arr, dl, stop int
	for _, ai := range x.byApp {
		arr += len(ai.arr) - ai.head
		dl += ai.dl.len()
		stop += ai.stop.len()
	}
	least = -1
	for _, k := range [...]struct {
		on bool
		n  int
	}{{x.arrival, arr}, {x.deadline, dl}, {x.stop, stop}} {
		if k.on {
			if least < 0 || k.n < least {
				least = k.n
			}
			most = max(most, k.n)
		}
	}
	return max(least, 0), most
}

// indexed spot-checks that the queue's first request and its last before the
// new tail (q[start:]) are indexed: a queue that is not the previous one with
// requests removed and new ones appended (a caller that builds a fresh queue
// with the same Seqs) is caught here.
func (x *queueIndex) indexed(q []*Request, start int) bool {
	if start == 0 {
		return true
	}
	return x.holds(q[0]) && x.holds(q[start-1])
}

func (x *queueIndex) sameApps(apps map[string]*App) bool { return sameApps(x.apps, apps) }

// sameApps reports whether a and b name the same applications (pointers).
func sameApps(a, b map[string]*App) bool {
	if len(a) != len(b) {
		return false
	}
	for name, x := range b {
		if a[name] != x {
			return false
		}
	}
	return true
}

// reset empties the index (keeping its buffers) for the given applications.
func (x *queueIndex) reset(apps map[string]*App) {
	if x.apps == nil {
		x.apps = map[string]*App{}
	}
	clear(x.apps)
	for name, a := range apps {
		x.apps[name] = a
	}
	x.per = map[*App]*appIndex{}
	x.built = x.class
	if x.class {
		x.perClass = map[classKey]*appIndex{}
	} else {
		x.perClass = nil
	}
	x.gen++
	x.tag = x.gen << 32 & ixGenBits
	if x.tag == 0 { // gen's 31 bits came round
		x.gen++
		x.tag = x.gen << 32 & ixGenBits
	}
	x.liveTag = x.tag | x.epoch&ixEpoch
	x.held.reset()
	for _, ai := range x.byApp {
		ai.empty()
	}
	x.spare = append(x.spare, x.byApp...)
	clear(x.byApp)
	x.byApp = x.byApp[:0]
	x.maxSeq = 0
}

// empty clears ai for reuse, keeping its buffers (a rebuild would otherwise
// grow them again from nothing, copying them a dozen times at 100k queued).
func (ai *appIndex) empty() {
	ai.app, ai.class = nil, 0
	clear(ai.arr)
	ai.arr, ai.head = ai.arr[:0], 0
	ai.dl.reset()
	ai.stop.reset()
	clear(ai.poppedDl)
	clear(ai.poppedStop)
	clear(ai.ahead)
	ai.poppedDl, ai.poppedStop, ai.ahead, ai.aheadAt = ai.poppedDl[:0], ai.poppedStop[:0], ai.ahead[:0], 0
}

// add indexes r; new (an arrival, not a rebuild): its hard-stop entry is
// young (keyQueue.pushYoung).
func (x *queueIndex) add(r *Request, new bool) {
	var ai *appIndex
	if x.class {
		ai = x.perClass[classKey{r.App, r.Class}]
	} else {
		ai = x.per[r.App]
	}
	if ai == nil {
		if n := len(x.spare); n > 0 {
			ai, x.spare = x.spare[n-1], x.spare[:n-1]
			ai.app = r.App
		} else {
			ai = &appIndex{app: r.App}
		}
		if x.class {
			ai.class = r.Class
			x.perClass[classKey{r.App, r.Class}] = ai
		} else {
			ai.class = -1
			x.per[r.App] = ai
		}
		x.byApp = append(x.byApp, ai)
	}
	if x.arrival {
		ai.arr = append(ai.arr, r)
	}
	if x.deadline {
		ai.dl.push(entryOf(r.Deadline.Sub(x.ref), r))
	}
	if x.stop {
		if e := entryOf(r.HardStop().Sub(x.ref), r); new {
			ai.stop.pushYoung(e)
		} else {
			ai.stop.push(e)
		}
	}
	r.ix, r.ixGen = x, x.liveTag
	x.held.add(r.Seq, len(x.q))
	x.maxSeq = max(x.maxSeq, r.Seq)
}

// live reports whether r is still in the decision's queue (a search by Seq,
// seqfind.go). A different request with r's Seq breaks the contract: it marks
// the index broken and reports false.
func (x *queueIndex) live(r *Request) bool {
	if x.knownLive(r) {
		return true
	}
	i, found := x.find.find(r.Seq)
	return x.found(r, i, found)
}

// found is live's verdict on r from its search.
func (x *queueIndex) found(r *Request, i int, found bool) bool {
	if !found {
		x.markGone(r)
		return false
	}
	if x.q[i] != r {
		x.broken = true
		return false
	}
	if x.holds(r) {
		r.ixGen = x.liveTag
	}
	return true
}

// liveOnly keeps the entries of es whose request is live, in order, as live
// would one after the other; the searches run side by side (seqFinder.findAll).
// An index kept by sync searches only for the requests it neither knows to be
// queued (knownLive) nor found gone before (isGone: a request that left is not
// put back with its old Seq, see Snapshot.Queue).
func (x *queueIndex) liveOnly(es []keyEntry) []keyEntry {
	x.seqs = x.seqs[:0]
	x.keep = x.keep[:0]
	for i, e := range es {
		ok := x.knownLive(e.r)
		x.keep = append(x.keep, ok)
		if !ok && !(x.marks && x.entryGone(e)) {
			x.seqs = append(x.seqs, seqSearch{seq: e.seq, at: i, guess: x.held.rank(e.seq)})
		}
	}
	if len(x.seqs) > 0 {
		if k := x.find.tryGuesses(x.seqs); k > 0 {
			x.find.findAll(x.seqs[:k])
		}
		for _, s := range x.seqs {
			x.keep[s.at] = x.found(es[s.at].r, s.hi, s.hit)
		}
	}
	k := 0
	for i, e := range es {
		if x.keep[i] {
			es[k] = e
			k++
		}
	}
	clear(es[k:])
	return es[:k]
}

// holds reports whether r is marked as indexed by this generation of x.
func (x *queueIndex) holds(r *Request) bool { return r.ix == x && r.ixGen&^ixEpoch == x.tag }

// markGone marks r, found gone from the queue, if x holds it: its entries
// left in the index are garbage (its deadline entry is dropped when found,
// its hard-stop entry when swept or popped).
func (x *queueIndex) markGone(r *Request) {
	if x.holds(r) {
		r.ixGen |= ixGone
		x.held.remove(r.Seq)
		x.gone++
	}
}

// isGone reports whether this generation of x marked r gone (markGone): only
// then may a sweep drop r's entry (a request that another index has marked
// since, or one held by a later generation, is kept). ixGen is read first: it
// rules out most requests a sweep looks at, and r.ix lies in the request's
// cache line before it.
func (x *queueIndex) isGone(r *Request) bool { return r.ixGen&^ixEpoch == x.tag|ixGone && r.ix == x }

// entryGone is isGone of e's request, from held when it knows e's Seq (the
// request is not read). An entry's request is held by this generation of x
// (a rebuild empties the queues), and its Seq is cleared from held when, and
// only when, markGone marks it.
func (x *queueIndex) entryGone(e keyEntry) bool {
	if set, known := x.held.has(e.seq); known {
		return !set
	}
	return x.isGone(e.r)
}

// member reports whether r (taken from the queue) is indexed; a queued request
// that is not breaks the contract and marks the index broken.
func (x *queueIndex) member(r *Request) bool {
	ok := x.holds(r)
	if !ok {
		x.broken = true
	}
	return ok
}

// hopeless returns the verdicts for every queued request past help (Hopeless at
// now), in queue order, as splitHopeless does: per application, the prefix of
// the hard-stop heap up to now + the fastest variant. The entries are popped and
// put back by restore, so that a decision that is not applied leaves the index
// as it was. mark, if not nil, receives each hopeless request.
func (x *queueIndex) hopeless(now time.Time, vs []Verdict, mark map[*Request]bool) []Verdict {
	n0 := len(vs)
	for _, ai := range x.byApp {
		limit := now.Add(fastest(ai.app)).Sub(x.ref)
		for ai.stop.len() > 0 {
			e := ai.stop.top()
			if limit < e.at {
				break
			}
			ai.stop.pop()
			r := e.r
			if x.entryGone(e) || !x.live(r) {
				continue
			}
			ai.poppedStop = append(ai.poppedStop, e)
			vs = append(vs, Verdict{Request: r, Outcome: Expired, Reason: ReasonPastHardStop})
			if mark != nil {
				mark[r] = true
			}
		}
	}
	slices.SortFunc(vs[n0:], func(a, b Verdict) int { return cmp.Compare(a.Request.Seq, b.Request.Seq) })
	return vs
}

// nextByDeadline returns ai's earliest-deadline live request that skip does not
// reject, moving it (and anything skipped) out of the queue until restore; nil
// when there is none. A removed request is dropped for good. more is how many
// further requests the caller expects to take after this one (see peek).
func (x *queueIndex) nextByDeadline(ai *appIndex, skip func(*Request) bool, more int) *Request {
	for {
		e := x.peek(ai, more)
		if e == nil {
			return nil
		}
		x.take(ai)
		if !skip(e.r) {
			return e.r
		}
	}
}

// peek returns ai's earliest-deadline live entry, leaving it in place; nil
// when there is none (or the index is found broken). The entries are checked
// several at a time (liveOnly), so that their searches overlap: when none is
// left checked ahead, it takes 1+more entries (more is how many further
// requests the caller expects to take after this one), and up to four times
// as many that the last decision put back before them (mostly requests it
// answered or batched, gone since). Those it does not hand out go back with
// the rest at restore.
func (x *queueIndex) peek(ai *appIndex, more int) *keyEntry {
	for ai.aheadAt == len(ai.ahead) {
		if ai.dl.len() == 0 || x.broken {
			return nil
		}
		ai.ahead, ai.aheadAt = ai.ahead[:0], 0
		for ai.dl.len() > 0 && (len(ai.ahead) <= more || ai.dl.fromBack() && len(ai.ahead) < 4*(more+1)+64) {
			ai.ahead = append(ai.ahead, ai.dl.pop())
		}
		ai.ahead = x.liveOnly(ai.ahead)
	}
	if x.broken {
		return nil
	}
	return &ai.ahead[ai.aheadAt]
}

// take moves the entry peek returned out of the queue until restore.
func (x *queueIndex) take(ai *appIndex) {
	ai.poppedDl = append(ai.poppedDl, ai.ahead[ai.aheadAt])
	ai.aheadAt++
}

// earliest is the application (or class) whose deadline queue holds the
// earliest live request (nil when none is left): the cascade's bounded
// decisions (cascade_bounded.go) take the queue in deadline order over every
// application. more is how many the caller expects to take after it (peek).
func (x *queueIndex) earliest(more int) *appIndex {
	var best *appIndex
	var top keyEntry
	for _, ai := range x.byApp {
		if e := x.peek(ai, more); e != nil && (best == nil || keyEntryLess(*e, top)) {
			best, top = ai, *e
		}
	}
	return best
}

// popEarliest takes the earliest-deadline live request over every application
// out of the index (until restore); nil when none is left. more is how many
// the caller expects to take after it.
func (x *queueIndex) popEarliest(more int) *Request {
	best := x.earliest(more)
	if best == nil {
		return nil
	}
	r := x.peek(best, more).r
	x.take(best)
	return r
}

// peekEarliest is the request popEarliest would take next.
func (x *queueIndex) peekEarliest() *Request {
	if best := x.earliest(0); best != nil {
		return x.peek(best, 0).r
	}
	return nil
}

// ofClass is the part of an index kept per class (queueIndex.class) that
// holds app's requests of the given class; nil when it has none.
func (x *queueIndex) ofClass(app *App, class int) *appIndex {
	return x.perClass[classKey{app, class}]
}

// untake gives back to ai the last k entries taken from it (take) during the
// decision, as if they had not been: they become the next peek hands out, in
// the order they were taken. Nothing else may have been taken from ai since.
func (x *queueIndex) untake(ai *appIndex, k int) {
	if k == 0 {
		return
	}
	n := len(ai.poppedDl)
	back := ai.poppedDl[n-k:]
	if ai.aheadAt >= k {
		ai.aheadAt -= k
		copy(ai.ahead[ai.aheadAt:], back)
	} else {
		ai.ahead = append(slices.Clone(back), ai.ahead[ai.aheadAt:]...)
		ai.aheadAt = 0
	}
	clear(back)
	ai.poppedDl = ai.poppedDl[:n-k]
}

// arrivals calls f with ai's live requests in arrival order until it returns
// false. Removed requests met on the way are dropped from the list.
func (x *queueIndex) arrivals(ai *appIndex, f func(*Request) bool) {
	w := ai.head // live requests are compacted to the front as the scan passes
	i := ai.head
	stop := false
	for ; i < len(ai.arr) && !stop; i++ {
		r := ai.arr[i]
		if !x.live(r) {
			continue
		}
		ai.arr[w] = r
		w++
		stop = !f(r)
	}
	// Close the gap [w, i) left by removed requests: move the live prefix
	// [head, w) up against i.
	if gap := i - w; gap > 0 {
		copy(ai.arr[ai.head+gap:i], ai.arr[ai.head:w])
		clear(ai.arr[ai.head : ai.head+gap])
		ai.head += gap
	}
	if ai.head == len(ai.arr) {
		ai.arr, ai.head = ai.arr[:0], 0
	} else if ai.head > len(ai.arr)/2 && ai.head > 64 {
		n := copy(ai.arr, ai.arr[ai.head:])
		clear(ai.arr[n:])
		ai.arr, ai.head = ai.arr[:n], 0
	}
}

// expireApp is expireApp (fifo.go) from the index: a no-variant-fits verdict
// for each of ai's live requests that is not hopeless, in arrival order.
func (x *queueIndex) expireApp(vs []Verdict, ai *appIndex, hopeless map[*Request]bool) []Verdict {
	x.arrivals(ai, func(r *Request) bool {
		if !hopeless[r] {
			vs = append(vs, Verdict{Request: r, Outcome: Expired, Reason: ReasonNoVariantFits})
		}
		return true
	})
	return vs
}

// restore puts back every entry popped during the decision, so that the index
// again holds every request of the queue (the caller removes what the decision
// answered; the index finds out lazily).
func (x *queueIndex) restore() {
	x.sweep()
	for _, ai := range x.byApp {
		ai.poppedDl = append(ai.poppedDl, ai.ahead[ai.aheadAt:]...)
		clear(ai.ahead)
		ai.ahead, ai.aheadAt = ai.ahead[:0], 0
		ai.dl.putBack(ai.poppedDl)
		ai.stop.putBack(ai.poppedStop)
		clear(ai.poppedDl)
		clear(ai.poppedStop)
		ai.poppedDl, ai.poppedStop = ai.poppedDl[:0], ai.poppedStop[:0]
	}
	x.q = nil
	x.find.reset(nil)
}

// sweep ends a decision for the hard-stop queues: the entries young for a
// whole decision are dropped if their requests are gone, kept otherwise
// (keyQueue.sweepYoung), and stopSweep entries of the far parts and heaps per
// request found gone during the decision, shared among the applications by
// their sizes, are looked at (keyQueue.sweep). Answered requests used to
// leave the hard-stop queue only when their hard stop came, so that a
// decision now and then rebuilt the whole index to drop them (at 100k queued
// about every 3,000 decisions, 15-18 ms).
func (x *queueIndex) sweep() {
	gone := x.gone
	x.gone = 0
	if !x.stop {
		return
	}
	far := 0
	for _, ai := range x.byApp {
		ai.stop.sweepYoung(x.entryGone)
		far += len(ai.stop.far) + ai.stop.heapLen()
	}
	if gone == 0 {
		return
	}
	k := stopSweep * gone
	if _, most := x.sizes(); 2*most > 3*len(x.q) {
		k *= 4 // a burst of garbage (or a pattern the round is slow for): catch up
	}
	for _, ai := range x.byApp {
		if n := len(ai.stop.far) + ai.stop.heapLen(); n > 0 {
			ai.stop.sweep((k*n+far-1)/far, x.entryGone)
		}
	}
}

// keyEntry is an entry of the deadline and hard-stop queues: the request's
// deadline (or hard stop) relative to the index's reference time (a monotonic
// difference when both carry a monotonic reading, as time.Time.Compare does),
// the request's Seq, which breaks a tie and says without reading the request
// whether the index found it gone (seqSet), and the request.
type keyEntry struct {
	at  time.Duration
	seq uint64
	r   *Request
}

// entryOf is r's entry at key at.
func entryOf(at time.Duration, r *Request) keyEntry { return keyEntry{at: at, seq: r.Seq, r: r} }

func keyEntryLess(a, b keyEntry) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.seq < b.seq
}
