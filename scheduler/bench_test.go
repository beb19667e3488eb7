package scheduler

import (
	"cmp"
	"flag"
	"fmt"
	"github.com/sneakgate/sneakgate/sneakpeek"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// benchApp is a 10-class application with 5 variants (a Fashion-MNIST-like family:
// 20x latency range, per-class recalls that differ between variants).
func benchApp(rng *rand.Rand) *App {
	const k = 10
	a := &App{Name: "bench", K: k, Prior: make([]float64, k), Utility: make([][]float64, k)}
	for y := range k {
		a.Prior[y] = 1.0 / k
		a.Utility[y] = make([]float64, k)
		a.Utility[y][y] = 1
	}
	for i := range 5 {
		v := &Variant{ID: VariantID{"bench", fmt.Sprintf("v%d", i)}, Index: i,
			Latency: linear(ms(0.05*float64(1+4*i)), ms(0.01*float64(1+5*i)), 32),
			Load:    ms(2 + float64(i)), Unload: ms(0.5), MemBytes: int64(1 + i)}
		v.Recall = make([]float64, k)
		v.Cond = make([][]float64, k)
		for y := range k {
			r := 0.6 + 0.07*float64(i) + 0.1*rng.Float64()
			r = min(r, 0.99)
			v.Recall[y] = r
			v.Cond[y] = make([]float64, k)
			for yh := range k {
				v.Cond[y][yh] = (1 - r) / (k - 1)
			}
			v.Cond[y][y] = r
		}
		v.Accuracy = sneakpeek.ExpectedAccuracy(a.Prior, v.Recall)
		v.ProfiledUtility = ExpectedUtility(a.Prior, v.Cond, a.Utility)
		a.Variants = append(a.Variants, v)
	}
	a.DefaultVariant = 4
	return a
}

// benchRequest is one queued request of benchQueue's workload. Overloaded: the
// budgets are 20-100 ms, far less than the queue needs at N >= 1,000 even on the
// cheapest variant. Not overloaded: the budgets spread over n x 50 us, more than
// three times what the queue needs on the cheapest variant (about 12 us a
// request at batch 32), so every request can be served in time.
func benchRequest(rng *rand.Rand, a *App, seq uint64, arr time.Time, n int, overloaded bool) *Request {
	p := make([]float64, a.K)
	c := rng.IntN(a.K)
	for y := range p {
		p[y] = 0.3 / float64(a.K-1)
	}
	p[c] = 0.7
	budget := ms(20 + rng.Float64()*80)
	if !overloaded {
		budget = ms(20) + time.Duration(rng.Int64N(int64(n)*int64(50*time.Microsecond)))
	}
	return Prepare(a, seq, arr, arr.Add(budget), p, nil)
}

func benchQueue(rng *rand.Rand, a *App, n int, now time.Time) []*Request {
	return benchQueueLoad(rng, a, n, now, true)
}

func benchQueueLoad(rng *rand.Rand, a *App, n int, now time.Time, overloaded bool) []*Request {
	q := make([]*Request, n)
	for i := range q {
		arr := now.Add(-time.Duration(rng.Int64N(int64(20 * time.Millisecond))))
		q[i] = benchRequest(rng, a, uint64(i), arr, n, overloaded)
	}
	return q
}

// benchPolicies are the policies BenchmarkDecide measures (placebo is sneakpeek
// with other estimates and costs the same).
var benchPolicies = []string{"sneakpeek", "oblivious", "oblivious-switch", "bruteforce", "edf", "fifo", "fixed-batch", "cascade"}

func benchPolicy(tb testing.TB, name string, a *App) Policy {
	if name == "cascade" {
		p, err := NewCascade(Options{MaxQueueDelay: time.Nanosecond}, map[string]CascadeConfig{a.Name: {Cheap: 0, Better: 4,
			Curve: []CascadePoint{{0.5, 0, 0.8}, {0.7, 0.2, 0.85}, {0.9, 0.5, 0.9}}}})
		if err != nil {
			tb.Fatal(err)
		}
		return p
	}
	p, err := New(name, Options{MaxQueueDelay: time.Nanosecond})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkDecide measures one decision with n queued requests, as the gateway's
// loop makes them: each decision is applied (its verdicts and batch leave the
// queue, untimed) and the queue is refilled to n with new arrivals at its tail,
// and the clock advances 10 us. It reports the time per scheduled request
// (batched or answered by the decision) besides the time per decision. The
// decisions timed are the b.N that follow the initial queue (and one untimed
// decision, in which a policy with an index builds it); BenchmarkDecideSteady
// times them after the queue has turned over.
func BenchmarkDecide(b *testing.B) {
	for _, name := range benchPolicies {
		for _, load := range []string{"over", "under"} {
			for _, n := range []int{1000, 10000, 100000} {
				b.Run(fmt.Sprintf("%s/%sload/queued=%d", name, load, n), func(b *testing.B) {
					l := newBenchLoop(b, name, n, load == "over")
					// One decision before the clock starts: a policy that keeps
					// an index of the queue (index.go) builds it on its first
					// decision, once for the gateway's lifetime, not once per
					// decision.
					l.apply(l.p.Decide(l.snapshot()))
					l.time(b)
				})
			}
		}
	}
}

// BenchmarkDecidePlanAhead is BenchmarkDecide for the searching policies with
// Options.PlanAhead 0 (every decision plans) and 3 (the gateway's default),
// side by side; it also reports the share of decisions that ran a kept batch
// (kept).
func BenchmarkDecidePlanAhead(b *testing.B) {
	for _, name := range []string{"sneakpeek", "oblivious"} {
		for _, ahead := range []int{0, 3} {
			for _, load := range []string{"over", "under"} {
				for _, n := range []int{1000, 10000} {
					b.Run(fmt.Sprintf("%s/ahead=%d/%sload/queued=%d", name, ahead, load, n), func(b *testing.B) {
						l := newBenchLoop(b, name, n, load == "over")
						l.p = benchPolicyOpts(b, name, Options{MaxQueueDelay: time.Nanosecond, PlanAhead: ahead})
						l.apply(l.p.Decide(l.snapshot()))
						sp := l.p.(*searching)
						taken0 := sp.aheadTaken
						l.time(b)
						b.ReportMetric(float64(sp.aheadTaken-taken0)/float64(b.N), "kept")
					})
				}
			}
		}
	}
}

// BenchmarkDecideEstimateAnswers is BenchmarkDecide for sneakpeek with
// Options.EstimateAnswers and a stream of arrivals a quarter of which the
// estimate answers (estimate_worth_more: corrected estimates all but certain
// of one class, in a mix where the estimate's answers are worth more than
// every variant's). "queued": every arrival reaches the queue, as without
// admission's test (and before it, for every arrival); "admitted": each
// arrival first meets the latest decision's Decision.Answers, as at the
// gateway's admission, and one it passes is answered there (timed, and
// counted as scheduled, as a verdict would be). The initial queue holds
// none the estimate answers.
func BenchmarkDecideEstimateAnswers(b *testing.B) {
	for _, mode := range []string{"queued", "admitted"} {
		for _, load := range []string{"over", "under"} {
			for _, n := range []int{1000, 10000, 100000} {
				b.Run(fmt.Sprintf("%s/%sload/queued=%d", mode, load, n), func(b *testing.B) {
					if mode == "admitted" && benchAdmit == nil {
						b.Skip("no admission test in this tree")
					}
					l := newBenchLoop(b, "sneakpeek", n, load == "over")
					l.p = benchPolicyOpts(b, "sneakpeek", Options{MaxQueueDelay: time.Nanosecond, Shrink: 0.5, EstimateAnswers: true})
					uniform := make([]float64, l.a.K)
					for y := range uniform {
						uniform[y] = 1 / float64(l.a.K)
					}
					l.estMix = &sneakpeek.Mix{Prior: uniform, Answer: 0.999}
					l.estEvery, l.admit = 4, mode == "admitted"
					l.apply(l.p.Decide(l.snapshot()))
					l.time(b)
				})
			}
		}
	}
}

// benchPolicyOpts is the searching policy name with options o.
func benchPolicyOpts(tb testing.TB, name string, o Options) Policy {
	p, err := New(name, o)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkDecideSteady is BenchmarkDecide after the queue has turned over, as
// in a long spell of load: before the clock starts the same loop runs (untimed)
// until every request of the initial queue has left it, or until 20 x n
// requests have arrived, 60,000 decisions were made or -steady.warmup (20 s)
// has passed, whichever comes first (not overloaded at 100k queued, edf's
// latest initial deadlines are about 55,000 decisions away; a policy whose
// decisions take milliseconds stops at the time). The queue then no longer
// holds a dense run of Seqs in memory order: what is left of each arrival is
// the requests the policy has not served yet, scattered in Seq and in memory.
// Besides BenchmarkDecide's figures it reports the decisions run before the
// clock started (warm-decisions), the share of the initial queue still queued
// then (initial-left), the longest single decision timed (max-µs: on a shared
// machine also whatever preempted it; only reported, the tests assert no
// timing), and for a policy with a queue index the number of times a timed
// decision rebuilt it (rebuilds, each a pass over the whole queue) and for a
// searching policy the share of timed decisions made over a prefix of the
// queue (bounded, bounded.go) and the number of times a timed decision
// rebuilt the summary of the queue from the whole queue at once
// (sum-rebuilds, workHist).
//
// The warm-up runs once per sub-benchmark: the state it reaches is kept for
// the sub-benchmark's next run (the testing package runs it with b.N = 1
// first, and again for -count), which goes on from there.
func BenchmarkDecideSteady(b *testing.B) {
	for _, name := range benchPolicies {
		for _, load := range []string{"over", "under"} {
			for _, n := range []int{1000, 10000, 100000} {
				key := fmt.Sprintf("%s/%sload/queued=%d", name, load, n)
				b.Run(key, func(b *testing.B) {
					l := steadyLoop(b, key, name, n, load == "over")
					warm, left := l.warm, l.initialLeft()
					l.time(b)
					b.ReportMetric(float64(warm), "warm-decisions")
					b.ReportMetric(left, "initial-left")
				})
			}
		}
	}
}

var steadyWarmup = flag.Duration("steady.warmup", 20*time.Second, "BenchmarkDecideSteady: the longest warm-up of a sub-benchmark")

// steady holds the last sub-benchmark's turned-over loop (see
// BenchmarkDecideSteady), keyed by its name.
var steady struct {
	key string
	l   *benchLoop
}

// steadyLoop returns the loop for key after its warm-up.
func steadyLoop(b *testing.B, key, name string, n int, overloaded bool) *benchLoop {
	if steady.key == key {
		return steady.l
	}
	steady.key, steady.l = "", nil // let the previous one go first
	l := newBenchLoop(b, name, n, overloaded)
	start := time.Now()
	for l.initialLeft() > 0 && l.seq < uint64(21*n) && l.warm < 60000 && time.Since(start) < *steadyWarmup {
		l.apply(l.p.Decide(l.snapshot()))
		l.warm++
	}
	steady.key, steady.l = key, l
	return l
}

// benchLoop is the gateway's loop of BenchmarkDecide: the queue, the clock and
// the policy.
type benchLoop struct {
	rng        *rand.Rand
	a          *App
	n          int
	overloaded bool
	now        time.Time
	q          []*Request
	seq        uint64
	resident   map[VariantID]time.Time
	p          Policy
	// warm counts the untimed decisions of BenchmarkDecideSteady's warm-up;
	// gone is apply's scratch.
	warm int
	gone []uint64
	// estEvery, when positive, makes every estEvery-th arrival one the
	// estimate answers in estMix (BenchmarkDecideEstimateAnswers); with
	// admit, the latest decision (last) meets each arrival first
	// (benchAdmit), admitted counts those it answered and admitNs the
	// time its tests took.
	estEvery int
	estMix   *sneakpeek.Mix
	admit    bool
	last     Decision
	admitted int
	admitNs  int64
}

func newBenchLoop(tb testing.TB, name string, n int, overloaded bool) *benchLoop {
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	a := benchApp(rng)
	now := t0.Add(time.Second)
	return &benchLoop{rng: rng, a: a, n: n, overloaded: overloaded, now: now,
		q: benchQueueLoad(rng, a, n, now, overloaded), seq: uint64(n),
		resident: map[VariantID]time.Time{a.Variants[0].ID: now, a.Variants[4].ID: now},
		p:        benchPolicy(tb, name, a)}
}

func (l *benchLoop) snapshot() *Snapshot {
	return &Snapshot{Now: l.now, Queue: l.q, Apps: map[string]*App{l.a.Name: l.a},
		Engine: Engine{Resident: l.resident, CountBudget: 3}}
}

// initialLeft is the share of the initial queue (Seq below n) still queued.
func (l *benchLoop) initialLeft() float64 {
	k, _ := slices.BinarySearchFunc(l.q, uint64(l.n), func(r *Request, seq uint64) int { return cmp.Compare(r.Seq, seq) })
	return float64(k) / float64(l.n)
}

// apply removes what d answered or batched from the queue, advances the clock
// 10 us and refills the queue to n; it returns the number of requests removed.
func (l *benchLoop) apply(d Decision) int {
	l.gone = l.gone[:0]
	for _, v := range d.Verdicts {
		l.gone = append(l.gone, v.Request.Seq)
	}
	if d.Batch != nil {
		for _, r := range d.Batch.Requests {
			l.gone = append(l.gone, r.Seq)
		}
	}
	slices.Sort(l.gone)
	l.gone = slices.Compact(l.gone)
	// The queue is in Seq order: move the runs between removed requests down.
	w := 0 // l.q[:w] is kept
	from := 0
	for _, seq := range l.gone {
		i, ok := slices.BinarySearchFunc(l.q[from:], seq, func(r *Request, seq uint64) int { return cmp.Compare(r.Seq, seq) })
		if !ok {
			panic("benchLoop: a decision answered a request that is not queued")
		}
		i += from
		w += copy(l.q[w:], l.q[from:i])
		from = i + 1
	}
	w += copy(l.q[w:], l.q[from:])
	clear(l.q[w:])
	l.q = l.q[:w]
	l.now = l.now.Add(10 * time.Microsecond)
	l.last = d
	for len(l.q) < l.n {
		r := benchRequest(l.rng, l.a, l.seq, l.now, l.n, l.overloaded)
		l.seq++
		if l.estEvery > 0 && l.seq%uint64(l.estEvery) == 0 {
			c := l.rng.IntN(l.a.K)
			q := make([]float64, l.a.K)
			for y := range q {
				q[y] = 0.0001 / float64(l.a.K-1)
			}
			q[c] = 0.9999
			Reweigh(r, q, l.estMix)
		}
		if l.admit {
			t := time.Now()
			ok := benchAdmit(l.last, r)
			l.admitNs += time.Since(t).Nanoseconds()
			if ok {
				l.admitted++
				continue
			}
		}
		l.q = append(l.q, r)
	}
	return len(l.gone)
}

// time runs b.N decisions, each applied untimed, and reports the time per
// scheduled request (µs/sched), the requests scheduled per decision
// (sched/op), the longest decision (max-µs), and where the policy has them
// its index's rebuilds, its share of bounded decisions and its summary's
// rebuilds (see BenchmarkDecideSteady).
func (l *benchLoop) time(b *testing.B) {
	scheduled := 0
	var longest time.Duration
	ix := benchIndex(l.p)
	var gen0 uint64
	if ix != nil {
		gen0 = ix.gen
	}
	sp, _ := l.p.(*searching)
	var hits0, sums0 int
	if sp != nil {
		hits0, sums0 = sp.boundedHits, sp.hist.rebuilds
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s := l.snapshot()
		start := time.Now()
		d := l.p.Decide(s)
		longest = max(longest, time.Since(start))
		b.StopTimer()
		a0 := l.admitted
		scheduled += l.apply(d) + l.admitted - a0
		b.StartTimer()
	}
	if scheduled == 0 {
		b.Fatal("nothing scheduled")
	}
	// With admission's test (BenchmarkDecideEstimateAnswers), its time
	// (admitNs, timed apart in the untimed refill) counts too.
	b.ReportMetric(float64(b.Elapsed().Nanoseconds()+l.admitNs)/float64(scheduled)/1e3, "µs/sched")
	b.ReportMetric(float64(scheduled)/float64(b.N), "sched/op")
	b.ReportMetric(float64(longest.Nanoseconds())/1e3, "max-µs")
	if ix != nil {
		b.ReportMetric(float64(ix.gen-gen0), "rebuilds")
	}
	if sp != nil {
		b.ReportMetric(float64(sp.boundedHits-hits0)/float64(b.N), "bounded")
		b.ReportMetric(float64(sp.hist.rebuilds-sums0), "sum-rebuilds")
	}
}

// benchIndex is p's queue index, or nil.
func benchIndex(p Policy) *queueIndex {
	switch p := p.(type) {
	case *edf:
		return &p.ix
	case *fifo:
		return &p.ix
	case *fixedBatch:
		return &p.ix
	case *searching:
		return &p.ix
	case *cascade:
		return &p.idx.ix
	}
	return nil
}
