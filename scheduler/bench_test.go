package scheduler

import (
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

func benchPolicy(b *testing.B, name string, a *App) Policy {
	if name == "cascade" {
		p, err := NewCascade(Options{MaxQueueDelay: time.Nanosecond}, map[string]CascadeConfig{a.Name: {Cheap: 0, Better: 4,
			Curve: []CascadePoint{{0.5, 0, 0.8}, {0.7, 0.2, 0.85}, {0.9, 0.5, 0.9}}}})
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	p, err := New(name, Options{MaxQueueDelay: time.Nanosecond})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkDecide measures one decision with n queued requests, as the gateway's
// loop makes them: each decision is applied (its verdicts and batch leave the
// queue, untimed) and the queue is refilled to n with new arrivals at its tail,
// and the clock advances 10 us. It reports the time per scheduled request
// (batched or answered by the decision) besides the time per decision.
func BenchmarkDecide(b *testing.B) {
	for _, name := range benchPolicies {
		for _, load := range []string{"over", "under"} {
			for _, n := range []int{1000, 10000, 100000} {
				b.Run(fmt.Sprintf("%s/%sload/queued=%d", name, load, n), func(b *testing.B) {
					benchDecide(b, name, n, load == "over")
				})
			}
		}
	}
}

func benchDecide(b *testing.B, name string, n int, overloaded bool) {
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	a := benchApp(rng)
	now := t0.Add(time.Second)
	q := benchQueueLoad(rng, a, n, now, overloaded)
	seq := uint64(n)
	resident := map[VariantID]time.Time{a.Variants[0].ID: now, a.Variants[4].ID: now}
	p := benchPolicy(b, name, a)
	scheduled := 0
	gone := map[*Request]bool{}
	// One decision before the clock starts: a policy that keeps an index of
	// the queue (index.go) builds it on its first decision, once for the
	// gateway's lifetime, not once per decision.
	for i := -1; i < b.N; i++ {
		if i == 0 {
			scheduled = 0
			b.ReportAllocs()
			b.ResetTimer()
		}
		s := &Snapshot{Now: now, Queue: q, Apps: map[string]*App{a.Name: a},
			Engine: Engine{Resident: resident, CountBudget: 3}}
		d := p.Decide(s)
		b.StopTimer()
		clear(gone)
		for _, v := range d.Verdicts {
			gone[v.Request] = true
		}
		if d.Batch != nil {
			for _, r := range d.Batch.Requests {
				gone[r] = true
			}
		}
		scheduled += len(gone)
		q = slices.DeleteFunc(q, func(r *Request) bool { return gone[r] })
		now = now.Add(10 * time.Microsecond)
		for len(q) < n {
			q = append(q, benchRequest(rng, a, seq, now, n, overloaded))
			seq++
		}
		b.StartTimer()
	}
	if scheduled == 0 {
		b.Fatal("nothing scheduled")
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(scheduled)/1e3, "µs/sched")
	b.ReportMetric(float64(scheduled)/float64(b.N), "sched/op")
}
