package scheduler

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/sneakpeek"
)

// estimateArrival is a benchRequest whose corrected estimate, in mix, is all
// but certain of one class: one that the estimate answers in a mix where its
// answers are worth more than the models'.
func estimateArrival(rng *rand.Rand, a *App, seq uint64, now time.Time, n int, mix *sneakpeek.Mix) *Request {
	r := benchRequest(rng, a, seq, now, n, false)
	c := rng.IntN(a.K)
	q := make([]float64, a.K)
	for y := range q {
		q[y] = 0.0001 / float64(a.K-1)
	}
	q[c] = 0.9999
	Reweigh(r, q, mix)
	return r
}

// TestEstimateRuleIsThePrepass checks that admission's test (the
// EstimateRule a decision publishes) answers exactly the requests the
// prepass answers estimate_worth_more: requests of every kind (raw, corrected
// in a mix where the estimate is worth more and in one where it is not,
// sure and unsure, back from a first pass), with a memory budget that rules
// out a variant and without, and a policy that does not answer from the
// estimate publishes no rule.
func TestEstimateRuleIsThePrepass(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 17))
	a := benchApp(rng)
	apps := map[string]*App{a.Name: a}
	worth, worthLess := uniformMix(a, 0.999), uniformMix(a, 0.1)
	// Worth more than every variant but the largest, v4, which a budget of
	// 4 bytes rules out (5 bytes).
	between := uniformMix(a, (a.Variants[3].ProfiledUtility+a.Variants[4].ProfiledUtility)/2)
	now := t0.Add(time.Second)
	for _, budget := range []int64{0, 4} { // 4: v4 (5 bytes) cannot be made resident
		p, err := New("sneakpeek", Options{Shrink: 0.5, EstimateAnswers: true})
		if err != nil {
			t.Fatal(err)
		}
		var q []*Request
		for i := range 400 {
			var r *Request
			switch i % 6 {
			case 0:
				r = benchRequest(rng, a, uint64(i), now, 400, false)
			case 1, 2:
				r = estimateArrival(rng, a, uint64(i), now, 400, worth)
			case 3:
				r = estimateArrival(rng, a, uint64(i), now, 400, worthLess)
			case 4:
				r = estimateArrival(rng, a, uint64(i), now, 400, between)
			default:
				r = benchRequest(rng, a, uint64(i), now, 400, false)
				qc := append([]float64(nil), r.P...)
				Reweigh(r, qc, worth) // as sure as the raw estimate (0.7)
			}
			if i%50 == 7 {
				r.First = &FirstPass{Variant: a.Variants[0], Done: now}
			}
			// Far from its deadline: only the estimate answers it now.
			r.Deadline = now.Add(time.Hour)
			q = append(q, r)
		}
		s := &Snapshot{Now: now, Queue: q, Apps: apps, Engine: Engine{MemBudget: budget,
			Resident: map[VariantID]time.Time{a.Variants[0].ID: now}}}
		d := p.Decide(s)
		if d.Answers == nil {
			t.Fatal("sneakpeek with EstimateAnswers publishes no rule")
		}
		byPrepass := map[*Request]bool{}
		for _, v := range d.Verdicts {
			if v.Reason == ReasonEstimateWorthMore {
				byPrepass[v.Request] = true
			}
		}
		n := 0
		for _, r := range q {
			if r.First != nil {
				continue // the prepass answers it with its first pass
			}
			if got := d.Answers.Answers(r); got != byPrepass[r] {
				t.Errorf("budget %d, request %d: the rule says %v, the prepass %v", budget, r.Seq, got, byPrepass[r])
			}
			if byPrepass[r] {
				n++
			}
		}
		t.Logf("budget %d: %d of %d answered from the estimate", budget, n, len(q))
		if n == 0 || n == len(q) {
			t.Fatalf("budget %d: %d of %d answered from the estimate: the test tests nothing", budget, n, len(q))
		}
		if d2 := p.Decide(s); d2.Answers != d.Answers {
			t.Error("the rule was made again for the same applications and residency")
		}
	}
	for _, name := range []string{"oblivious", "edf", "sneakpeek-nodegrade"} {
		p, err := New(name, Options{Shrink: 0.5, EstimateAnswers: true})
		if err != nil {
			t.Fatal(err)
		}
		r := estimateArrival(rng, a, 0, now, 1, worth)
		if d := p.Decide(&Snapshot{Now: now, Queue: []*Request{r}, Apps: apps}); d.Answers != nil {
			t.Errorf("%s publishes a rule", name)
		}
	}
	if (*EstimateRule)(nil).Answers(estimateArrival(rng, a, 0, now, 1, worth)) {
		t.Error("a nil rule answers")
	}
}

// TestEstimateAnswersKeepDecisionsBounded: with a long queue and a steady
// stream of arrivals the estimate answers that reach the queue (admission did
// not test them), a decision must still read a prefix of the queue, not the
// whole of it (issue 10: the scheduler's cost independent of the backlog).
// The work is counted, not timed: the requests the prepasses read. Before
// the answers were kept apart for the prefix's decision
// (searching.pendingBeyond), each decision with such an arrival was made over
// the whole queue (6,096 requests read); now a decision reads its prefix
// (512 requests, 1,536 when it has to double it) and the requests beyond it
// the estimate answers, 545 on average.
func TestEstimateAnswersKeepDecisionsBounded(t *testing.T) {
	o := Options{Shrink: 0.5, EstimateAnswers: true, MaxQueueDelay: time.Nanosecond}
	rng := rand.New(rand.NewPCG(5, 13))
	a := benchApp(rng)
	apps := map[string]*App{a.Name: a}
	mix := uniformMix(a, 0.999)
	pol, err := New("sneakpeek", o)
	if err != nil {
		t.Fatal(err)
	}
	p := pol.(*searching)
	now := t0.Add(time.Second)
	const n = boundedMin + 2000
	var q []*Request
	seq := uint64(0)
	arrive := func(k int) (estimated int) {
		for i := range k {
			var r *Request
			if i%4 == 0 {
				r = estimateArrival(rng, a, seq, now, n, mix)
				estimated++
			} else {
				r = benchRequest(rng, a, seq, now, n, false)
			}
			q = append(q, r)
			seq++
		}
		return estimated
	}
	arrive(n)
	resident := map[VariantID]time.Time{a.Variants[0].ID: now, a.Variants[4].ID: now}
	apply := func(d Decision) { q = applyDecision(d, q, resident, now) }
	// The first decision reads the whole queue (its first rule); the
	// stream follows.
	apply(p.Decide(&Snapshot{Now: now, Queue: q, Apps: apps, Engine: Engine{Resident: resident, CountBudget: 3}}))
	worst, total, answered, stream := 0, 0, 0, 0
	for step := range 100 {
		now = now.Add(200 * time.Microsecond)
		stream += arrive(n - len(q))
		before := p.admits
		d := p.Decide(&Snapshot{Now: now, Queue: q, Apps: apps, Engine: Engine{Resident: resident, CountBudget: 3}})
		work := p.admits - before
		worst = max(worst, work)
		if testing.Verbose() && step%10 == 0 {
			t.Logf("step %d: %d read", step, work)
		}
		total += work
		if work >= len(q)/2 {
			t.Errorf("step %d: the decision read %d requests of %d queued", step, work, len(q))
		}
		for _, v := range d.Verdicts {
			if v.Reason == ReasonEstimateWorthMore {
				answered++
			}
		}
		apply(d)
	}
	t.Logf("%d queued, at most %d read a decision, %d on average; %d of the %d arrivals the estimate answers answered (%d bounded decisions)",
		len(q), worst, total/100, answered, stream, p.boundedHits)
	if mean := total / 100; mean > len(q)/8 {
		t.Errorf("a decision read %d requests on average, %d queued", mean, len(q))
	}
	if answered != stream {
		t.Errorf("%d of the %d arrivals the estimate answers answered by the next decision", answered, stream)
	}
	if stream == 0 {
		t.Fatal("no arrival the estimate answers: the test tests nothing")
	}
}

// benchAdmit is the gateway's admission test for BenchmarkDecideEstimateAnswers:
// the latest decision's rule answers r.
var benchAdmit = func(d Decision, r *Request) bool { return d.Answers.Answers(r) }

// TestEstimateRuleNoVariantFits: with no variant that can be made resident the
// prepass answers a request expired (no_variant_fits_budget) before it asks
// whether the estimate is worth more; admission's rule says no as well, so
// the two agree (a review found the rule answering such requests).
func TestEstimateRuleNoVariantFits(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 17))
	a := benchApp(rng)
	for _, v := range a.Variants {
		v.MemBytes = 100
	}
	now := t0.Add(time.Second)
	p, err := New("sneakpeek", Options{Shrink: 0.5, EstimateAnswers: true})
	if err != nil {
		t.Fatal(err)
	}
	r := estimateArrival(rng, a, 1, now, 1, uniformMix(a, 0.999))
	r.Deadline = now.Add(time.Hour)
	d := p.Decide(&Snapshot{Now: now, Queue: []*Request{r}, Apps: map[string]*App{a.Name: a},
		Engine: Engine{MemBudget: 10, Resident: map[VariantID]time.Time{}}})
	if len(d.Verdicts) != 1 || d.Verdicts[0].Reason == ReasonEstimateWorthMore {
		t.Fatalf("prepass verdicts %+v, want one that is not estimate_worth_more", d.Verdicts)
	}
	if d.Answers != nil && d.Answers.Answers(r) {
		t.Errorf("the rule answers from the estimate a request the prepass answers %s %s", d.Verdicts[0].Outcome, d.Verdicts[0].Reason)
	}
}
