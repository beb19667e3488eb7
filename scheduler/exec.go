package scheduler

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrInvalidDecision is wrapped by every error of Executor.Apply and Validate: a
// policy asked for something the caller cannot do.
var ErrInvalidDecision = errors.New("invalid decision")

// Executor applies a policy's decisions for its caller: the gateway's scheduling
// loop and the evaluation simulator share it, so that both carry out a decision
// the same way and check it the same way. It owns the queue (the waiting requests
// in arrival order, as Snapshot.Queue wants them) and the engine's residency (the
// resident variants with the time each was last used, and the budgets).
//
// Apply checks a decision against them before it changes anything: every verdict
// answers a distinct queued request with a known outcome (Degraded needs an
// estimate, FirstAnswer a first pass); a batch runs a known variant of its
// requests' application on distinct queued requests no verdict answers, evicts
// only resident variants, loads only known ones, runs a variant resident after
// its swap, and a batch that loads leaves the residency within the budgets. An
// invalid decision changes nothing. A valid one takes the answered and batched
// requests out of the queue and makes the batch's evictions and loads (loads last
// used at the decision's time). The caller does the rest: it replies, runs the
// batch, and afterwards puts back a cascade's unsure requests (Add) and notes the
// batch's variant as used (Used).
//
// An Executor is not safe for concurrent use.
type Executor struct {
	queue       []*Request
	resident    map[VariantID]time.Time
	memBudget   int64
	countBudget int
	lookup      func(VariantID) *Variant
}

// NewExecutor returns an executor with an empty queue, e's budgets and a copy of
// e.Resident as its residency. lookup finds a variant by ID (nil for a variant the
// caller does not know); its MemBytes are what the memory budget counts, and
// resident variants it does not know count for neither budget (as in PlanSwap).
func NewExecutor(e Engine, lookup func(VariantID) *Variant) *Executor {
	x := &Executor{resident: make(map[VariantID]time.Time, len(e.Resident)),
		memBudget: e.MemBudget, countBudget: e.CountBudget, lookup: lookup}
	for id, t := range e.Resident {
		x.resident[id] = t
	}
	return x
}

// Queue is the queue in arrival order (increasing Seq). It is the executor's:
// read it, do not change it.
func (x *Executor) Queue() []*Request { return x.queue }

// Len is the number of queued requests.
func (x *Executor) Len() int { return len(x.queue) }

// Resident is the residency: each resident variant with its last use. It is the
// executor's: read it, do not change it.
func (x *Executor) Resident() map[VariantID]time.Time { return x.resident }

// Engine is the engine's state for a Snapshot: the residency (the executor's own
// map, which the policy must not change) and the budgets.
func (x *Executor) Engine() Engine {
	return Engine{Resident: x.resident, MemBudget: x.memBudget, CountBudget: x.countBudget}
}

// search returns where a request with seq is or would be in the queue, and
// whether one is there.
func (x *Executor) search(seq uint64) (int, bool) {
	return slices.BinarySearchFunc(x.queue, seq, func(q *Request, seq uint64) int { return cmp.Compare(q.Seq, seq) })
}

// queued reports whether r itself is in the queue.
func (x *Executor) queued(r *Request) bool {
	i, ok := x.search(r.Seq)
	return ok && x.queue[i] == r
}

// Add puts r in the queue at its arrival position (by Seq): at the end for an
// arrival, which has the highest Seq so far, or back in its place for a request
// that returns (a cascade's first pass that was unsure). It refuses a request
// whose Seq is already queued.
func (x *Executor) Add(r *Request) error {
	if n := len(x.queue); n == 0 || x.queue[n-1].Seq < r.Seq {
		x.queue = append(x.queue, r)
		return nil
	}
	i, ok := x.search(r.Seq)
	if ok {
		return fmt.Errorf("scheduler: request %d is queued already", r.Seq)
	}
	x.queue = slices.Insert(x.queue, i, r)
	return nil
}

// Replace calls f on every queued request in order and puts what it returns in
// the request's place, or takes the request out when it returns nil (an
// application's new version replacing the old one's requests). A replacement
// keeps the request's Seq; if one does not, the queue is sorted again.
func (x *Executor) Replace(f func(*Request) *Request) {
	q := x.queue[:0]
	for _, r := range x.queue {
		if n := f(r); n != nil {
			q = append(q, n)
		}
	}
	clear(x.queue[len(q):])
	x.queue = q
	if !slices.IsSortedFunc(q, func(a, b *Request) int { return cmp.Compare(a.Seq, b.Seq) }) {
		slices.SortStableFunc(q, func(a, b *Request) int { return cmp.Compare(a.Seq, b.Seq) })
	}
}

// Used notes that variant id ran a batch that finished at; a variant that is not
// resident (any more) is left out.
func (x *Executor) Used(id VariantID, at time.Time) {
	if _, ok := x.resident[id]; ok {
		x.resident[id] = at
	}
}

// SetResident makes ids the residency (the engine's own account, which wins
// after a failed load or unload), keeping the last use of those already
// resident; the others are last used at now.
func (x *Executor) SetResident(ids []VariantID, now time.Time) {
	res := make(map[VariantID]time.Time, len(ids))
	for _, id := range ids {
		t, ok := x.resident[id]
		if !ok {
			t = now
		}
		res[id] = t
	}
	x.resident = res
}

// Validate reports whether Apply would accept d: nil, or an error wrapping
// ErrInvalidDecision that says what is wrong. It changes nothing.
func (x *Executor) Validate(d Decision) error {
	_, err := x.validate(d)
	return err
}

// Apply validates d (see Executor) and, if it is valid, takes the requests it
// answers or batches out of the queue and makes its batch's evictions and
// loads, the loads last used at now; the batch's Requests become a copy of
// their own (a policy may batch a slice of the queue). An invalid d changes
// nothing; the error wraps ErrInvalidDecision.
func (x *Executor) Apply(d Decision, now time.Time) error {
	gone, err := x.validate(d)
	if err != nil {
		return err
	}
	if b := d.Batch; b != nil {
		// A policy may batch a slice of Snapshot.Queue, which is the queue
		// itself: the batch gets its own copy before the queue is compacted.
		b.Requests = slices.Clone(b.Requests)
	}
	if len(gone) > 0 {
		x.queue = slices.DeleteFunc(x.queue, func(r *Request) bool { return gone[r] })
	}
	if b := d.Batch; b != nil {
		x.Swapped(b, now)
	}
	return nil
}

// Swapped makes b's evictions and loads in the residency, the loads last used
// at now, as Apply did. A caller whose residency came back from the engine
// (SetResident) before b ran takes b's swap again with it: the gateway's loop,
// for a batch decided while the one before ran.
func (x *Executor) Swapped(b *Batch, now time.Time) {
	for _, id := range b.Evict {
		delete(x.resident, id)
	}
	for _, id := range b.Load {
		x.resident[id] = now
	}
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidDecision, fmt.Sprintf(format, args...))
}

// validate checks d and returns the requests it answers or batches.
func (x *Executor) validate(d Decision) (map[*Request]bool, error) {
	n := len(d.Verdicts)
	if d.Batch != nil {
		n += len(d.Batch.Requests)
	}
	gone := make(map[*Request]bool, n)
	for i, v := range d.Verdicts {
		r := v.Request
		switch {
		case r == nil:
			return nil, invalid("verdict %d answers no request", i)
		case gone[r]:
			return nil, invalid("answers request %d twice", r.Seq)
		case !x.queued(r):
			return nil, invalid("answers request %d, which is not queued", r.Seq)
		}
		gone[r] = true
		switch v.Outcome {
		case Expired:
		case Degraded:
			if len(r.P) == 0 {
				return nil, invalid("answers request %d degraded, and it has no estimate", r.Seq)
			}
		case FirstAnswer:
			if r.First == nil {
				return nil, invalid("answers request %d with a first pass it never had", r.Seq)
			}
		default:
			return nil, invalid("answers request %d with unknown outcome %v", r.Seq, v.Outcome)
		}
	}
	b := d.Batch
	if b == nil {
		return gone, nil
	}
	if b.Variant == nil {
		return nil, invalid("runs a batch without a variant")
	}
	id := b.Variant.ID
	if len(b.Requests) == 0 {
		return nil, invalid("runs an empty batch on %v", id)
	}
	if x.lookup(id) == nil {
		return nil, invalid("runs unknown %v", id)
	}
	app := b.Requests[0].App
	for i, r := range b.Requests {
		switch {
		case r == nil:
			return nil, invalid("batch request %d is nil", i)
		case gone[r]:
			return nil, invalid("batches request %d, which the decision answers or batches already", r.Seq)
		case !x.queued(r):
			return nil, invalid("batches request %d, which is not queued", r.Seq)
		case r.App != app:
			return nil, invalid("batches request %d of %s with requests of another application", r.Seq, appName(r.App))
		}
		gone[r] = true
	}
	if app == nil || id.App != app.Name {
		return nil, invalid("runs %v on requests of %s", id, appName(app))
	}
	if err := x.checkSwap(b); err != nil {
		return nil, err
	}
	return gone, nil
}

func appName(a *App) string {
	if a == nil {
		return "no application"
	}
	return a.Name
}

// checkSwap checks b's evictions, loads and the residency after them.
func (x *Executor) checkSwap(b *Batch) error {
	// The residency after the swap: x.resident less out (the evictions, made
	// first) plus in (the loads).
	var out, in []VariantID
	resident := func(id VariantID) bool {
		if slices.Contains(in, id) {
			return true
		}
		_, ok := x.resident[id]
		return ok && !slices.Contains(out, id)
	}
	for _, id := range b.Evict {
		if !resident(id) {
			return invalid("evicts %v, which is not resident", id)
		}
		if x.lookup(id) == nil {
			return invalid("evicts unknown %v", id)
		}
		out = append(out, id)
	}
	for _, id := range b.Load {
		if x.lookup(id) == nil {
			return invalid("loads unknown %v", id)
		}
		if !slices.Contains(in, id) {
			in = append(in, id)
		}
	}
	if !resident(b.Variant.ID) {
		return invalid("runs %v without loading it", b.Variant.ID)
	}
	if len(b.Load) == 0 {
		// Nothing more is resident than before: the budgets are the engine's
		// (and the policy's PlanSwap's) business, not this decision's.
		return nil
	}
	// As in PlanSwap, resident variants the caller does not know count for
	// neither budget.
	var mem int64
	count := 0
	add := func(id VariantID) {
		if v := x.lookup(id); v != nil {
			count++
			mem += v.MemBytes
		}
	}
	for id := range x.resident {
		if !slices.Contains(out, id) && !slices.Contains(in, id) {
			add(id)
		}
	}
	for _, id := range in {
		add(id)
	}
	if x.memBudget > 0 && mem > x.memBudget {
		return invalid("residency after the swap is %d bytes, over the %d budget", mem, x.memBudget)
	}
	if x.countBudget > 0 && count > x.countBudget {
		return invalid("%d variants resident after the swap, budget %d", count, x.countBudget)
	}
	return nil
}

// AheadLead is how long before the running batch's planned end a caller that
// decides the next batch while the engine runs (the gateway's
// scheduler.pipeline, and the simulator's model of it) decides it, given its
// decisions' smoothed cost: twice that cost and a margin for the hand-over to
// the engine and the noise in the decisions' time, so that the decision is
// ready when the engine is free while requests that arrive until then are
// still in it.
func AheadLead(decisionCost time.Duration) time.Duration { return 2*decisionCost + aheadMargin }

// aheadMargin is AheadLead's part for the hand-over and the noise.
const aheadMargin = 250 * time.Microsecond
