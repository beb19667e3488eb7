package scheduler

import (
	"fmt"
	"github.com/sneakgate/sneakgate/sneakpeek"
	"math/rand/v2"
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

func benchQueue(rng *rand.Rand, a *App, n int, now time.Time) []*Request {
	q := make([]*Request, n)
	for i := range q {
		p := make([]float64, a.K)
		c := rng.IntN(a.K)
		for y := range p {
			p[y] = 0.3 / float64(a.K-1)
		}
		p[c] = 0.7
		arr := now.Add(-time.Duration(rng.Int64N(int64(20 * time.Millisecond))))
		q[i] = Prepare(a, uint64(i), arr, arr.Add(ms(20+rng.Float64()*80)), p, nil)
	}
	return q
}

// BenchmarkDecide measures one decision with n queued requests and reports the
// time per scheduled request (batched or answered by the decision).
func BenchmarkDecide(b *testing.B) {
	for _, name := range []string{"sneakpeek", "oblivious", "edf", "fixed-batch"} {
		for _, n := range []int{10, 100, 1000, 10000} {
			b.Run(fmt.Sprintf("%s/queued=%d", name, n), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(uint64(n), 7))
				a := benchApp(rng)
				now := t0.Add(time.Second)
				s := &Snapshot{Now: now, Queue: benchQueue(rng, a, n, now), Apps: map[string]*App{a.Name: a},
					Engine: Engine{Resident: map[VariantID]time.Time{a.Variants[0].ID: now, a.Variants[4].ID: now}, CountBudget: 3}}
				p, err := New(name, Options{MaxQueueDelay: time.Nanosecond})
				if err != nil {
					b.Fatal(err)
				}
				scheduled := 0
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					d := p.Decide(s)
					scheduled += len(d.Verdicts)
					if d.Batch != nil {
						scheduled += len(d.Batch.Requests)
					}
				}
				if scheduled == 0 {
					b.Fatal("nothing scheduled")
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(scheduled)/1e3, "µs/sched")
				b.ReportMetric(float64(scheduled)/float64(b.N), "sched/op")
			})
		}
	}
}
