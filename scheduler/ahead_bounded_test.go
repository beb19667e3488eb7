package scheduler

import (
	"math/rand/v2"
	"testing"
	"time"
)

// validFor checks d against q as Executor.validate does (queued, distinct).
func validFor(t *testing.T, step int, d Decision, q []*Request) {
	t.Helper()
	in := map[*Request]bool{}
	for _, r := range q {
		in[r] = true
	}
	gone := map[*Request]bool{}
	for _, v := range d.Verdicts {
		if !in[v.Request] || gone[v.Request] {
			t.Fatalf("step %d: verdict on %d not queued or twice", step, v.Request.Seq)
		}
		gone[v.Request] = true
	}
	if d.Batch != nil {
		for _, r := range d.Batch.Requests {
			if !in[r] || gone[r] {
				t.Fatalf("step %d: batch request %d not queued or twice", step, r.Seq)
			}
			gone[r] = true
		}
	}
}

// With kept plans, a policy that decides long queues over a prefix
// (bounded.go) makes every decision a twin that always decides over the whole
// queue makes, kept batches included, and every decision is valid: the
// bounded decisions' summary and index stay right across the decisions that
// run a kept batch. (From a review of kept plans, 2026-12-03.)
func TestPlanAheadBoundedEqualsFull(t *testing.T) {
	for _, name := range []string{"sneakpeek", "oblivious", "sneakpeek-pref"} {
		for _, turned := range []bool{false, true} {
			t.Run(name, func(t *testing.T) {
				t.Parallel() // (see trials)
				rng := rand.New(rand.NewPCG(5, 17))
				a := benchApp(rng)
				b := otherApp(rng)
				apps := map[string]*App{a.Name: a, b.Name: b}
				o := Options{MaxQueueDelay: time.Nanosecond, PlanAhead: 3}
				if name == "sneakpeek-pref" {
					o.Shrink, o.PriceHorizon = 0.3, 20*time.Millisecond
				}
				bounded, whole := boundedPair(t, name, o)
				now := t0.Add(time.Second)
				n := boundedMin + 1000
				if !turned {
					n = boundedMin + 2000
				}
				var q []*Request
				seq := uint64(0)
				arrive := func(k int, overloaded bool) {
					for range k {
						app := a
						if rng.IntN(4) == 0 {
							app = b
						}
						q = append(q, benchRequest(rng, app, seq, now, n, overloaded))
						seq++
					}
				}
				arrive(n, false)
				resident := map[VariantID]time.Time{a.Variants[0].ID: now, a.Variants[4].ID: now}
				steps := trials(360)
				for step := range steps {
					s := &Snapshot{Now: now, Queue: q, Apps: apps, Engine: Engine{Resident: resident, CountBudget: 3}}
					d := decideSame(t, step, bounded, whole, s)
					validFor(t, step, d, q)
					q = applyDecision(d, s.Queue, s.Engine.Resident, s.Now)
					if turned {
						now = now.Add(10 * time.Microsecond)
						if step == steps*2/3 {
							arrive(300, true)
						}
						arrive(n-len(q), false)
					} else {
						now = now.Add(200 * time.Microsecond)
						overloaded := (step/40)%3 == 2
						k := n - len(q)
						if overloaded {
							k = 400
						}
						arrive(k, overloaded)
					}
				}
				t.Logf("turned=%v: %d bounded hits, taken %d/%d dropped %d/%d", turned, bounded.boundedHits, bounded.aheadTaken, whole.aheadTaken, bounded.aheadDropped, whole.aheadDropped)
				if bounded.boundedHits == 0 || bounded.aheadTaken == 0 {
					t.Errorf("%d decisions over a prefix, %d kept batches taken: the case tests nothing", bounded.boundedHits, bounded.aheadTaken)
				}
			})
		}
	}
}
