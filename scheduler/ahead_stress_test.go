package scheduler

import (
	"math/rand/v2"
	"testing"
	"time"
)

// Long queues through the Executor with PlanAhead, and the gateway's
// disturbances: batches put back (unplan), decisions not applied (+Resync),
// evictions, a reload of one application. Every decision must be valid, and
// no decision without a batch may leave kept batches behind. (From a review
// of kept plans, 2026-12-03.)
func TestPlanAheadStressExecutor(t *testing.T) {
	for _, name := range []string{"sneakpeek", "oblivious", "sneakpeek-pref"} {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(9, 3))
			a := benchApp(rng)
			b := otherApp(rng)
			apps := map[string]*App{a.Name: a, b.Name: b}
			p := mustPolicy(t, name, Options{PlanAhead: 3, EstimateAnswers: true, Shrink: 0.3, PriceHorizon: 20 * time.Millisecond}).(*searching)
			x := NewExecutor(Engine{CountBudget: 3, Resident: map[VariantID]time.Time{a.Variants[0].ID: t0, a.Variants[4].ID: t0}}, lookupIn(apps))
			now := t0.Add(time.Second)
			const n = boundedMin + 1000
			seq := uint64(0)
			arrive := func(k int, overloaded bool) {
				for range k {
					app := a
					if rng.IntN(4) == 0 {
						app = b
					}
					seq++
					r := benchRequest(rng, app, seq, now, n, overloaded)
					if rng.IntN(5) == 0 {
						c := rng.IntN(app.K)
						qc := make([]float64, app.K)
						for y := range qc {
							qc[y] = 0.0001 / float64(app.K-1)
						}
						qc[c] = 0.9999
						Reweigh(r, qc, uniformMix(app, 0.999))
					}
					if err := x.Add(r); err != nil {
						t.Fatal(err)
					}
				}
			}
			arrive(n, false)
			steps := trials(600)
			for step := range steps {
				s := &Snapshot{Now: now, Queue: x.Queue(), Apps: apps, Engine: x.Engine()}
				taken0 := p.aheadTaken
				d := p.Decide(s)
				if p.aheadTaken == taken0 && len(p.ahead) > 0 && d.Batch == nil {
					t.Errorf("step %d: a decision without a batch left %d kept batches (verdicts %d)", step, len(p.ahead), len(d.Verdicts))
				}
				switch ev := rng.IntN(20); {
				case ev == 0:
					p.Resync() // not applied
				default:
					if err := x.Apply(d, now); err != nil {
						t.Fatalf("step %d: %v (taken %d)", step, err, p.aheadTaken)
					}
					if d.Batch != nil {
						if ev == 1 { // unplanned: back in the queue
							for _, r := range d.Batch.Requests {
								if err := x.Add(r); err != nil {
									t.Fatal(err)
								}
							}
						} else {
							now = d.Batch.Finish
							x.Used(d.Batch.Variant.ID, now)
						}
					}
				}
				if step == steps/2 { // reload of other
					nb := *b
					apps[b.Name] = &nb
					x.Replace(func(r *Request) *Request {
						if r.App == b {
							return Prepare(&nb, r.Seq, r.Arrival, r.Deadline, r.P, nil)
						}
						return r
					})
					b = &nb
				}
				if step == steps*3/4 {
					x.SetResident([]VariantID{a.Variants[0].ID}, now)
				}
				now = now.Add(10 * time.Microsecond)
				arrive(max(0, n-x.Len()), step > steps/3 && step < steps/3+steps/10)
			}
			t.Logf("taken %d dropped %d bounded %d", p.aheadTaken, p.aheadDropped, p.boundedHits)
			if p.aheadTaken == 0 {
				t.Error("no decision ran a kept batch: the case tests nothing")
			}
		})
	}
}
