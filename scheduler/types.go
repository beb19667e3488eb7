package scheduler

import (
	"fmt"
	"time"

	"github.com/sneakgate/sneakgate/sneakpeek"
)

// VariantID names one model variant of one application.
type VariantID struct {
	App, Variant string
}

func (id VariantID) String() string { return id.App + "/" + id.Variant }

// Variant is what the scheduler knows about one model variant.
type Variant struct {
	ID VariantID
	// Index is the variant's position in its App's Variants.
	Index int
	// Accuracy is the profiled (validation-set) accuracy.
	Accuracy float64
	// Recall is the per-class recall on the validation set.
	Recall []float64
	// Cond is the row-normalised confusion matrix, Cond[y][yhat] = P(yhat | y);
	// not to be changed once NewApp has made the variant (see wrong).
	Cond [][]float64
	// Latency[b] is the measured duration of one forward pass at batch size b
	// (index 0 unused); len(Latency)-1 is the largest batch the variant may run.
	Latency []time.Duration
	// Load and Unload are the measured costs of making the variant resident or not.
	Load, Unload time.Duration
	// MemBytes is the variant's cost against the engine's memory budget.
	MemBytes int64
	// ProfiledUtility is the expected utility under the application's prior (the
	// data-oblivious value of this variant).
	ProfiledUtility float64
	// wrong[y] is wrongValue for class y under the utility matrix wrongFor,
	// computed once by NewApp (Sharpen and Reweigh need it for every class of
	// every variant of every request); nil for a Variant built otherwise, whose
	// values are computed as needed.
	wrong    []float64
	wrongFor [][]float64
}

// MaxBatch is the largest batch size the variant may run.
func (v *Variant) MaxBatch() int { return len(v.Latency) - 1 }

// LatencyAt is the forward-pass duration at batch size b (clamped to 1..MaxBatch).
func (v *Variant) LatencyAt(b int) time.Duration {
	if b < 1 {
		b = 1
	}
	m := v.MaxBatch()
	if b <= m {
		return v.Latency[b]
	}
	// Beyond the table: whole batches of MaxBatch plus the remainder.
	d := time.Duration(b/m) * v.Latency[m]
	if r := b % m; r > 0 {
		d += v.Latency[r]
	}
	return d
}

// App is what the scheduler knows about one application.
type App struct {
	Name string
	// K is the number of classes.
	K int
	// Prior is the class prior of the validation set.
	Prior []float64
	// Utility is W[y][yhat]. An App built by NewApp must not have it changed
	// in place: its variants keep values computed from it (ProfiledUtility,
	// and the values of wrong answers Sharpen and Reweigh read, which are
	// computed afresh only for a matrix assigned in its place).
	Utility [][]float64
	// NoAnswer[y] is the value of a request of true class y that gets no model
	// answer (expired, shed, refused: the application's default action); nil
	// means 0 for every class (manifest no_answer_utility).
	NoAnswer []float64
	// Variants, in manifest order.
	Variants []*Variant
	// DefaultVariant is the index of the variant a fixed-variant policy uses.
	DefaultVariant int
}

// Request is one queued request as the scheduler sees it. Build it with Prepare.
type Request struct {
	// Seq is the arrival order (unique, increasing).
	Seq uint64
	App *App
	// Arrival and Deadline are absolute; Budget = Deadline - Arrival.
	Arrival, Deadline time.Time
	// Queued is when the request first entered the scheduler's queue, after
	// admission and the journal (zero: Arrival). fixed-batch's MaxQueueDelay
	// counts from it, as a dynamic batcher's counts from when a request reaches
	// the batcher (QueuedAt).
	Queued time.Time
	// P is the SneakPeek estimate (a class distribution), or nil when there is
	// none; a degraded answer is argmax P. With a label-shift correction it is
	// the corrected estimate (Reweigh).
	P []float64
	// Class is the argmax of the estimate the variants are valued under
	// (Prepare's; -1 without an estimate): the grouping key.
	Class int
	// ExpUtility[m] is the data-aware expected utility of variant m under P (the
	// profiled utility when P is nil).
	ExpUtility []float64
	// ExpAccuracy[m] is the data-aware expected accuracy sum_y P(y) Recall_m(y).
	ExpAccuracy []float64
	// DegradedUtility is the expected utility of answering with argmax P itself; it
	// is meaningful only when P is not nil.
	DegradedUtility float64
	// NoAnswerUtility is the expected value of giving the request no answer at all
	// (App.NoAnswer under P, or under the prior when P is nil): what an expired or
	// shed request is worth, and the floor a late result decays to.
	NoAnswerUtility float64
	// ShiftedUtility[m] is variant m's expected utility under the corrected
	// estimate (Reweigh), and Mix the live class mix it was corrected for: what
	// Options.EstimateAnswers compares DegradedUtility with. Both nil without a
	// label-shift correction.
	ShiftedUtility []float64
	Mix            *sneakpeek.Mix
	// First is the result of a first, cheap pass when the request came back to
	// the queue for a second one (a Batch with EscalateBelow); nil otherwise.
	First *FirstPass
	// Ref is the caller's handle for the request; the scheduler never looks at it.
	Ref any
	// ix and ixGen mark the queue index (and its generation) that holds the
	// request (index.go): a field on the request instead of a set in the
	// index, whose inserts miss the cache with a long queue; ixGen also
	// carries what the index knows of the request (index.go, ixGone).
	ix    *queueIndex
	ixGen uint64
}

// QueuedAt is when r entered the queue: Queued, or Arrival when Queued is zero.
func (r *Request) QueuedAt() time.Time {
	if r.Queued.IsZero() {
		return r.Arrival
	}
	return r.Queued
}

// Budget is the request's whole deadline budget D.
func (r *Request) Budget() time.Duration { return r.Deadline.Sub(r.Arrival) }

// HardStop is the time from which a result is worth nothing: Deadline + Budget.
func (r *Request) HardStop() time.Time { return r.Deadline.Add(r.Budget()) }

// Engine is the engine's state at decision time.
type Engine struct {
	// Resident lists the loaded variants with the time each was last used.
	Resident map[VariantID]time.Time
	// MemBudget (bytes) and CountBudget (variants) bound residency; 0 = unlimited.
	MemBudget   int64
	CountBudget int
}

// Snapshot is everything a policy may look at to decide.
type Snapshot struct {
	Now time.Time
	// Queue holds the waiting requests in arrival order (increasing Seq).
	// Policies must not modify it.
	//
	// A policy may keep an index of the queue between decisions (index.go:
	// edf, fifo, fixed-batch; bounded.go and cascade_bounded.go: the searching
	// policies and the cascade from 4,096 queued), so that a decision costs
	// what it answers and batches rather than the backlog. It assumes that from one decision to
	// the next the caller removes requests (those the decision answered or
	// batched, and any others) and appends new arrivals with a Seq above every
	// request given before; a batched request may also stay, or come back
	// before the next decision. Changed applications (Apps), a queue with
	// fewer indexed requests than queued, and a queue whose first request or
	// last request before the new arrivals is not indexed (a fresh queue built
	// with the same Seqs) are detected and make the policy rebuild its index,
	// which costs what a decision without one costs. A single request replaced
	// in the middle of the queue by another with the same Seq is not detected
	// (while the queue's length accounts for what left, the index trusts that
	// the requests it found queued still are, and hands out the one replaced):
	// callers must not do that (a reload that prepares the requests again
	// changes Apps, which is detected). A request put back with its old Seq
	// after a later decision is not detected by that index either: only the
	// cascade policy's second passes do that, and the cascade's own index
	// looks for them among the first passes it ran (it counts on the caller
	// removing only what a decision answered or batched between two decisions
	// when first passes come back, as Executor does).
	Queue  []*Request
	Apps   map[string]*App
	Engine Engine
	// Offered, if positive, is the rate (requests per second) offered to the
	// caller's admission, including requests refused before they reached the
	// queue. Under admission control the queue's arrivals understate the load;
	// a policy that prices engine time uses the larger of the two.
	Offered float64
}

// Outcome is how a request is answered without running a model.
type Outcome int

const (
	// Degraded: the SneakPeek estimate answers, clearly marked.
	Degraded Outcome = iota + 1
	// Expired: nothing useful can be done any more; the request is not run.
	Expired
	// FirstAnswer: the request is answered with its first pass's result
	// (Request.First), a model answer, instead of a second pass.
	FirstAnswer
)

func (o Outcome) String() string {
	switch o {
	case Degraded:
		return "degraded"
	case Expired:
		return "expired"
	case FirstAnswer:
		return "first_pass"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Verdict answers one request without running a model.
type Verdict struct {
	Request *Request
	Outcome Outcome
	// Reason names why, e.g. "past_hard_stop", "no_variant_meets_deadline".
	Reason string
}

// Batch is one forward pass of one variant over some requests.
type Batch struct {
	Variant *Variant
	// Requests, in the order their inputs are stacked.
	Requests []*Request
	// Evict and Load are the residency changes to make first, in order.
	Evict, Load []VariantID
	// Start is when the batch is planned to start (the decision's Now), Finish
	// when it is predicted to finish (swap cost included).
	Start, Finish time.Time
	// Utility is the predicted total penalised utility of the batch.
	Utility float64
	// Kept marks a batch an earlier decision planned and kept for this one to
	// run without planning again (Options.PlanAhead).
	Kept bool
	// EscalateBelow, when positive, makes the batch a first pass (the cascade
	// policy): a request whose answer's top-class probability is below it is not
	// answered; the caller sets its First and puts it back in the queue, in
	// arrival order, for the policy to decide again (a second pass, or
	// FirstAnswer). 0 answers every request, as before. A request that already
	// has a First is always answered.
	EscalateBelow float64
}

// FirstPass is the result of a request's first pass, kept while it waits for a
// second one.
type FirstPass struct {
	// Variant answered with Class at Confidence (its top-class probability); the
	// pass finished at Done.
	Variant    *Variant
	Class      int
	Confidence float64
	Done       time.Time
	// Probs is the caller's copy of the answer (the gateway replies with it); the
	// scheduler does not read it.
	Probs []float64
}

// Decision is what a policy asks the caller to do now.
type Decision struct {
	// Verdicts are applied first (requests removed from the queue and answered).
	Verdicts []Verdict
	// Batch, if not nil, runs now; its requests leave the queue.
	Batch *Batch
	// WakeAt, if not zero, is when the policy wants to decide again even if nothing
	// happens (a batching delay). The caller also decides again whenever a request
	// arrives or a batch finishes.
	WakeAt time.Time
	// Gate, if not nil, is admission by what this decision shed (PriceGate): a
	// caller that admits requests may answer an arrival the gate sheds from its
	// estimate instead of queueing it, until a later decision's gate replaces
	// it or it expires (GateTTL). Only a searching, data-aware policy that
	// answers from the estimate sets it.
	Gate *PriceGate
	// Answers, if not nil, is the policy's test of Options.EstimateAnswers
	// (EstimateRule): a caller that admits requests answers an arrival it
	// passes from its estimate (degraded, ReasonEstimateWorthMore) instead of
	// queueing it, as the policy would at its next decision. A searching,
	// data-aware policy with Options.EstimateAnswers sets it on every decision.
	Answers *EstimateRule
}

// Policy decides. Implementations are registered by name with Register.
type Policy interface {
	Name() string
	Decide(s *Snapshot) Decision
}

// Resyncer is a Policy that keeps, between decisions, state that assumes its
// last decision was applied. A caller that does not apply a decision (it
// failed Executor.Apply) calls Resync before the next Decide, so that the
// policy reads the queue as it is. The searching policies are Resyncers: they
// keep the requests the estimate answers that their last decision answered
// (noteEstimateAnswers), which an unapplied decision left queued.
type Resyncer interface {
	Resync()
}

// PlanDeadline is the deadline the scheduler plans a request with: its deadline
// less reserve, the time an answer then takes to reach the device's broker (the
// gateway's egress delay), so that a batch planned to end at the deadline is
// handed over in time rather than a reserve late; at most half the budget is
// reserved, so that a broker slow for a moment does not make every request look
// hopeless.
func PlanDeadline(arrival, deadline time.Time, reserve time.Duration) time.Time {
	if reserve <= 0 {
		return deadline
	}
	return deadline.Add(-min(reserve, deadline.Sub(arrival)/2))
}
