package scheduler

import (
	"errors"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// policyFunc is a fake policy: the decision of a function of the snapshot.
type policyFunc func(s *Snapshot) Decision

func (policyFunc) Name() string                  { return "fake" }
func (f policyFunc) Decide(s *Snapshot) Decision { return f(s) }

// lookupIn finds variants in apps, as the gateway and the simulator do.
func lookupIn(apps map[string]*App) func(VariantID) *Variant {
	return func(id VariantID) *Variant { return (&Snapshot{Apps: apps}).Lookup(id) }
}

// execFixture is an executor over two applications ("app": cheap 100 bytes and
// big 400; "other": the same) with queue q: four requests of app (seq 1-4, seq 2
// without an estimate, seq 3 back from a first pass) and one of other (seq 5).
type execFixture struct {
	x     *Executor
	apps  map[string]*App
	a, o  *App
	q     []*Request
	extra *Request // a request of app that is not queued
}

func newExecFixture(t *testing.T, e Engine) *execFixture {
	t.Helper()
	a, o := testApp(), testApp()
	o.Name = "other"
	for _, v := range o.Variants {
		v.ID.App = "other"
	}
	f := &execFixture{a: a, o: o, apps: map[string]*App{"app": a, "other": o}}
	f.x = NewExecutor(e, lookupIn(f.apps))
	p := []float64{0.3, 0.7}
	f.q = []*Request{req(a, 1, t0, ms(50), p), req(a, 2, t0, ms(50), nil), req(a, 3, t0, ms(50), p),
		req(a, 4, t0, ms(50), p), req(o, 5, t0, ms(50), p)}
	f.q[2].First = &FirstPass{Variant: a.Variants[0], Class: 1, Confidence: 0.6, Done: t0}
	for _, r := range f.q {
		if err := f.x.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	f.extra = req(a, 9, t0, ms(50), p)
	return f
}

func (f *execFixture) snapshot(now time.Time) *Snapshot {
	return &Snapshot{Now: now, Queue: f.x.Queue(), Apps: f.apps, Engine: f.x.Engine()}
}

// Every kind of invalid decision is refused with a message that says what is
// wrong, and leaves the queue and the residency as they were.
func TestExecutorRefusesInvalidDecisions(t *testing.T) {
	cheap := VariantID{"app", "cheap"}
	big := VariantID{"app", "big"}
	otherBig := VariantID{"other", "big"}
	// Resident: app/cheap (100 bytes) and other/big (400); budgets 600 bytes
	// and 3 variants unless a case says otherwise.
	cases := []struct {
		name string
		e    Engine // budgets only
		pol  func(f *execFixture) Decision
		want string
	}{
		{"verdict without request", Engine{}, func(f *execFixture) Decision {
			return Decision{Verdicts: []Verdict{{Request: nil, Outcome: Expired}}}
		}, "answers no request"},
		{"answered twice", Engine{}, func(f *execFixture) Decision {
			return Decision{Verdicts: []Verdict{{f.q[0], Expired, ""}, {f.q[1], Expired, ""}, {f.q[0], Expired, ""}}}
		}, "answers request 1 twice"},
		{"answered when not queued", Engine{}, func(f *execFixture) Decision {
			return Decision{Verdicts: []Verdict{{f.q[0], Expired, ""}, {f.extra, Expired, ""}}}
		}, "answers request 9, which is not queued"},
		{"answered: another request with a queued seq", Engine{}, func(f *execFixture) Decision {
			return Decision{Verdicts: []Verdict{{req(f.a, 2, t0, ms(50), nil), Expired, ""}}}
		}, "answers request 2, which is not queued"},
		{"degraded without estimate", Engine{}, func(f *execFixture) Decision {
			return Decision{Verdicts: []Verdict{{f.q[0], Degraded, ""}, {f.q[1], Degraded, ""}}}
		}, "answers request 2 degraded, and it has no estimate"},
		{"first answer without first pass", Engine{}, func(f *execFixture) Decision {
			return Decision{Verdicts: []Verdict{{f.q[2], FirstAnswer, ""}, {f.q[3], FirstAnswer, ""}}}
		}, "answers request 4 with a first pass it never had"},
		{"unknown outcome", Engine{}, func(f *execFixture) Decision {
			return Decision{Verdicts: []Verdict{{f.q[0], Outcome(0), ""}}}
		}, "answers request 1 with unknown outcome Outcome(0)"},
		{"batch without variant", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Requests: f.q[:1]}}
		}, "without a variant"},
		{"empty batch", Engine{}, func(f *execFixture) Decision {
			return Decision{Verdicts: []Verdict{{f.q[0], Expired, ""}}, Batch: &Batch{Variant: f.a.Variants[0]}}
		}, "runs an empty batch on app/cheap"},
		{"unknown variant", Engine{}, func(f *execFixture) Decision {
			v := *f.a.Variants[0]
			v.ID.Variant = "ghost"
			return Decision{Batch: &Batch{Variant: &v, Requests: f.q[:1], Load: []VariantID{v.ID}}}
		}, "runs unknown app/ghost"},
		{"batched when not queued", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[0], Requests: []*Request{f.q[0], f.extra}}}
		}, "batches request 9, which is not queued"},
		{"batched twice", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[0], Requests: []*Request{f.q[0], f.q[1], f.q[0]}}}
		}, "batches request 1, which the decision answers or batches already"},
		{"answered and batched", Engine{}, func(f *execFixture) Decision {
			return Decision{Verdicts: []Verdict{{f.q[1], Expired, ""}},
				Batch: &Batch{Variant: f.a.Variants[0], Requests: []*Request{f.q[0], f.q[1]}}}
		}, "batches request 2, which the decision answers or batches already"},
		{"nil request in batch", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[0], Requests: []*Request{f.q[0], nil}}}
		}, "batch request 1 is nil"},
		{"requests of two applications", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[0], Requests: []*Request{f.q[0], f.q[4]}}}
		}, "batches request 5 of other with requests of another application"},
		{"variant of another application", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.o.Variants[1], Requests: f.q[:2]}}
		}, "runs other/big on requests of app"},
		{"evicts a variant not resident", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[1], Requests: f.q[:1], Evict: []VariantID{big}, Load: []VariantID{big}}}
		}, "evicts app/big, which is not resident"},
		{"evicts twice", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[1], Requests: f.q[:1], Evict: []VariantID{cheap, cheap}, Load: []VariantID{big}}}
		}, "evicts app/cheap, which is not resident"},
		{"loads an unknown variant", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[0], Requests: f.q[:1], Load: []VariantID{{"app", "ghost"}}}}
		}, "loads unknown app/ghost"},
		{"runs without loading", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[1], Requests: f.q[:1]}}
		}, "runs app/big without loading it"},
		{"runs what it evicts", Engine{}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[0], Requests: f.q[:1], Evict: []VariantID{cheap}}}
		}, "runs app/cheap without loading it"},
		{"over the memory budget", Engine{MemBudget: 600}, func(f *execFixture) Decision {
			// 100 + 400 + 400 = 900 bytes.
			return Decision{Batch: &Batch{Variant: f.a.Variants[1], Requests: f.q[:1], Load: []VariantID{big}}}
		}, "residency after the swap is 900 bytes, over the 600 budget"},
		{"over the count budget", Engine{CountBudget: 2}, func(f *execFixture) Decision {
			return Decision{Batch: &Batch{Variant: f.a.Variants[1], Requests: f.q[:1], Load: []VariantID{big}}}
		}, "3 variants resident after the swap, budget 2"},
		{"evicts too little", Engine{MemBudget: 500, CountBudget: 2}, func(f *execFixture) Decision {
			// Evicting cheap leaves other/big (400) + big (400).
			return Decision{Batch: &Batch{Variant: f.a.Variants[1], Requests: f.q[:1], Evict: []VariantID{cheap}, Load: []VariantID{big}}}
		}, "residency after the swap is 800 bytes, over the 500 budget"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := c.e
			e.Resident = map[VariantID]time.Time{cheap: t0, otherBig: t0.Add(ms(1))}
			f := newExecFixture(t, e)
			queue := slices.Clone(f.x.Queue())
			res := maps.Clone(f.x.Resident())
			d := policyFunc(func(*Snapshot) Decision { return c.pol(f) }).Decide(f.snapshot(t0.Add(ms(10))))
			if err := f.x.Validate(d); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate: %v, want an error with %q", err, c.want)
			}
			err := f.x.Apply(d, t0.Add(ms(10)))
			if !errors.Is(err, ErrInvalidDecision) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Apply: %v, want an invalid decision with %q", err, c.want)
			}
			if !slices.Equal(f.x.Queue(), queue) {
				t.Errorf("queue changed by an invalid decision: %v, was %v", seqs(f.x.Queue()), seqs(queue))
			}
			if !maps.Equal(f.x.Resident(), res) {
				t.Errorf("residency changed by an invalid decision: %v, was %v", f.x.Resident(), res)
			}
		})
	}
}

func seqs(q []*Request) []uint64 {
	out := make([]uint64, len(q))
	for i, r := range q {
		out[i] = r.Seq
	}
	return out
}

// Valid decisions take what they answer and batch out of the queue and make
// their swaps; Add puts requests back in arrival order; Used and SetResident
// keep the last uses.
func TestExecutorAppliesValidDecisions(t *testing.T) {
	cheap, big := VariantID{"app", "cheap"}, VariantID{"app", "big"}
	otherBig := VariantID{"other", "big"}
	f := newExecFixture(t, Engine{MemBudget: 900, CountBudget: 2,
		Resident: map[VariantID]time.Time{cheap: t0, otherBig: t0.Add(ms(1))}})
	at := t0.Add(ms(10))
	// Verdicts of every outcome, and a batch that swaps cheap for big.
	d := Decision{
		Verdicts: []Verdict{{f.q[1], Expired, "x"}, {f.q[2], FirstAnswer, ""}},
		Batch: &Batch{Variant: f.a.Variants[1], Requests: []*Request{f.q[3], f.q[0]},
			Evict: []VariantID{cheap}, Load: []VariantID{big}},
	}
	if err := f.x.Apply(d, at); err != nil {
		t.Fatal(err)
	}
	if got := seqs(f.x.Queue()); !slices.Equal(got, []uint64{5}) {
		t.Fatalf("queue %v, want [5]", got)
	}
	want := map[VariantID]time.Time{big: at, otherBig: t0.Add(ms(1))}
	if !maps.Equal(f.x.Resident(), want) {
		t.Fatalf("residency %v, want %v", f.x.Resident(), want)
	}
	// The batch finishes; request 4 is unsure and comes back before 5; 1 and 6
	// arrive (1 goes first, 6 last); 5 cannot be queued twice.
	f.x.Used(big, at.Add(ms(5)))
	f.x.Used(cheap, at.Add(ms(5))) // not resident: left out
	for _, r := range []*Request{f.q[3], req(f.a, 6, at, ms(50), nil), f.q[0]} {
		if err := f.x.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.x.Add(f.q[4]); err == nil {
		t.Error("a request queued twice")
	}
	if got := seqs(f.x.Queue()); !slices.Equal(got, []uint64{1, 4, 5, 6}) {
		t.Fatalf("queue %v, want [1 4 5 6]", got)
	}
	want = map[VariantID]time.Time{big: at.Add(ms(5)), otherBig: t0.Add(ms(1))}
	if !maps.Equal(f.x.Resident(), want) {
		t.Fatalf("residency %v after Used, want %v", f.x.Resident(), want)
	}
	// A degraded answer, and a batch on a resident variant without a swap
	// (the budget is not checked: nothing is loaded).
	d = Decision{Verdicts: []Verdict{{f.q[0], Degraded, ""}},
		Batch: &Batch{Variant: f.o.Variants[1], Requests: []*Request{f.q[4]}}}
	if err := f.x.Apply(d, at.Add(ms(6))); err != nil {
		t.Fatal(err)
	}
	if got := seqs(f.x.Queue()); !slices.Equal(got, []uint64{4, 6}) {
		t.Fatalf("queue %v, want [4 6]", got)
	}
	// Reloading evicting and loading the same variant, and nothing at all.
	d = Decision{Batch: &Batch{Variant: f.a.Variants[1], Requests: f.x.Queue()[:1], Evict: []VariantID{big}, Load: []VariantID{big}}}
	if err := f.x.Apply(d, at.Add(ms(7))); err != nil {
		t.Fatal(err)
	}
	if err := f.x.Apply(Decision{WakeAt: at}, at.Add(ms(8))); err != nil {
		t.Fatal(err)
	}
	if got := seqs(f.x.Queue()); !slices.Equal(got, []uint64{6}) {
		t.Fatalf("queue %v, want [6]", got)
	}
	// The engine's account wins; known last uses stay.
	f.x.SetResident([]VariantID{big, cheap}, at.Add(ms(20)))
	want = map[VariantID]time.Time{big: at.Add(ms(7)), cheap: at.Add(ms(20))}
	if !maps.Equal(f.x.Resident(), want) {
		t.Fatalf("residency %v after SetResident, want %v", f.x.Resident(), want)
	}
	// Replace swaps requests for others (a reload) and drops some.
	f.x.Add(f.q[0])
	f.x.Replace(func(r *Request) *Request {
		if r.Seq == 1 {
			return nil
		}
		return req(f.o, r.Seq, r.Arrival, r.Budget(), nil)
	})
	if q := f.x.Queue(); len(q) != 1 || q[0].Seq != 6 || q[0].App != f.o {
		t.Fatalf("queue after Replace: %v", seqs(q))
	}
}

// The registered policies' decisions are valid: driven through an executor
// over a random stream with a tight residency budget, none is refused, and
// every request is answered exactly once.
func TestExecutorAcceptsPolicies(t *testing.T) {
	for _, name := range []string{"edf", "fifo", "fixed-batch", "sneakpeek", "oblivious", "sneakpeek/plan-ahead", "oblivious/plan-ahead"} {
		t.Run(name, func(t *testing.T) {
			policy, ahead, _ := strings.Cut(name, "/")
			a, o := testApp(), testApp()
			o.Name = "other"
			for _, v := range o.Variants {
				v.ID.App = "other"
			}
			apps := map[string]*App{"app": a, "other": o}
			opts := Options{}
			if ahead != "" {
				// Small batches and a burst of arrivals make plans of several.
				opts = Options{MaxBatch: 4, PlanAhead: 3}
			}
			pol := mustPolicy(t, policy, opts)
			x := NewExecutor(Engine{MemBudget: 500, CountBudget: 2, Resident: map[VariantID]time.Time{}}, lookupIn(apps))
			rng := rand.New(rand.NewPCG(7, 1))
			now, busy := t0, t0
			const n = 400
			answered := map[uint64]int{}
			seq := uint64(0)
			for step := 0; seq < n || x.Len() > 0; step++ {
				if step > 20*n {
					t.Fatalf("%d still queued after %d steps", x.Len(), step)
				}
				now = now.Add(time.Duration(rng.ExpFloat64() * float64(ms(2))))
				burst := rng.IntN(4)
				if ahead != "" {
					burst *= 4
				}
				for k := burst; k > 0 && seq < n; k-- {
					seq++
					app := a
					if rng.IntN(3) == 0 {
						app = o
					}
					var p []float64
					if rng.IntN(4) > 0 {
						c := rng.Float64()
						p = []float64{c, 1 - c}
					}
					if err := x.Add(req(app, seq, now, ms(20+rng.Float64()*40), p)); err != nil {
						t.Fatal(err)
					}
				}
				if now.Before(busy) || x.Len() == 0 {
					continue
				}
				d := pol.Decide(&Snapshot{Now: now, Queue: x.Queue(), Apps: apps, Engine: x.Engine()})
				if err := x.Apply(d, now); err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				for _, v := range d.Verdicts {
					answered[v.Request.Seq]++
				}
				if b := d.Batch; b != nil {
					for _, r := range b.Requests {
						answered[r.Seq]++
					}
					busy = b.Finish
					x.Used(b.Variant.ID, b.Finish)
				}
			}
			if len(answered) != n {
				t.Fatalf("answered %d of %d", len(answered), n)
			}
			if s, ok := pol.(*searching); ok && ahead != "" && s.aheadTaken == 0 {
				t.Fatal("no decision ran a kept batch: the case tests nothing")
			}
			for s, c := range answered {
				if c != 1 {
					t.Fatalf("request %d answered %d times", s, c)
				}
			}
		})
	}
}

// Resident variants the caller does not know count for neither budget, as in
// PlanSwap: the swap PlanSwap plans beside one is valid.
func TestExecutorBudgetIgnoresUnknownResident(t *testing.T) {
	cheap, ghost := VariantID{"app", "cheap"}, VariantID{"gone", "x"}
	f := newExecFixture(t, Engine{MemBudget: 500, CountBudget: 2,
		Resident: map[VariantID]time.Time{cheap: t0, ghost: t0}})
	s := f.snapshot(t0.Add(ms(1)))
	sw, ok := PlanSwap(s, f.a.Variants[1])
	if !ok || len(sw.Evict) != 0 {
		t.Fatalf("PlanSwap = %+v, %v", sw, ok)
	}
	d := Decision{Batch: &Batch{Variant: f.a.Variants[1], Requests: f.q[:1], Evict: sw.Evict, Load: sw.Load}}
	if err := f.x.Apply(d, s.Now); err != nil {
		t.Fatal(err)
	}
	if len(f.x.Resident()) != 3 {
		t.Errorf("residency %v", f.x.Resident())
	}
}

// A batch that is a slice of the snapshot's queue (the executor's own) keeps
// its requests when Apply compacts the queue.
func TestExecutorBatchOfTheQueue(t *testing.T) {
	f := newExecFixture(t, Engine{Resident: map[VariantID]time.Time{{"app", "cheap"}: t0}})
	s := f.snapshot(t0.Add(ms(1)))
	b := &Batch{Variant: f.a.Variants[0], Requests: s.Queue[2:4]}
	if err := f.x.Apply(Decision{Verdicts: []Verdict{{s.Queue[0], Expired, ""}}, Batch: b}, s.Now); err != nil {
		t.Fatal(err)
	}
	if got := seqs(b.Requests); !slices.Equal(got, []uint64{3, 4}) {
		t.Errorf("batch %v after Apply, want [3 4]", got)
	}
	if got := seqs(f.x.Queue()); !slices.Equal(got, []uint64{2, 5}) {
		t.Errorf("queue %v, want [2 5]", got)
	}
}
