package engine

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/manifest"
)

// BenchmarkRun measures Run (input copy, forward pass, output conversion) per
// test model at batch 1 and 32 with one intra-op thread:
//
//	go test -run '^$' -bench Run -benchmem ./engine
func BenchmarkRun(b *testing.B) {
	e := newEngine(b, Options{IntraOpThreads: 1, InterOpThreads: 1})
	registerAll(b, e)
	for _, id := range allTestIDs {
		benchVariant(b, e, id, inputSizeOf(id), 0, 1)
	}
}

func benchVariant(b *testing.B, e *Engine, id VariantID, size int, lo, hi float64) {
	if _, err := e.Load(id); err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{1, 32} {
		in := randomInputs(n, size, lo, hi, 1)
		b.Run(fmt.Sprintf("%s/b=%d", strings.ReplaceAll(id.String(), "/", "-"), n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Run(id, in); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/sample")
		})
	}
	if _, err := e.Unload(id); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRunEvictedCache measures Run of fashion's cheap variants (from
// ../models, skipped without them) as BenchmarkRun does ("hot": the same
// inputs again and again, code and data in the caches) and with the caches
// evicted before every run (8 MiB written, not timed) and new inputs each
// time: a forward pass inside the gateway follows the handlers', the broker
// client's and the journal's work on the same two cores, so it starts cold.
// The start-up profile is measured hot.
//
//	go test -run '^$' -bench RunEvictedCache ./engine
func BenchmarkRunEvictedCache(b *testing.B) {
	e, fashion := fashionEngine(b)
	evict := make([]byte, 8<<20)
	for _, name := range []string{"logreg", "mlp-small", "cnn"} {
		id := VariantID{App: "fashion", Variant: name}
		if _, err := e.Load(id); err != nil {
			b.Fatal(err)
		}
		for _, n := range []int{1, 8, 32} {
			sets := make([][][]float32, 64)
			for i := range sets {
				sets[i] = randomInputs(n, fashion.InputSize, 0, 1, uint64(i+1))
			}
			for _, cold := range []bool{false, true} {
				mode := "hot"
				if cold {
					mode = "evicted"
				}
				b.Run(fmt.Sprintf("%s/b=%d/%s", name, n, mode), func(b *testing.B) {
					for i := range b.N {
						in := sets[0]
						if cold {
							b.StopTimer()
							in = sets[i%len(sets)]
							for k := 0; k < len(evict); k += 64 {
								evict[k]++
							}
							b.StartTimer()
						}
						if _, err := e.Run(id, in); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
		if _, err := e.Unload(id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRunAfterIdle measures Run of fashion's logreg, mlp-small and cnn
// (from ../models, skipped without them) as BenchmarkRun does ("hot": the same
// inputs back to back, as the start-up profile measured before ProfileGap) and
// after the engine has been idle for DefaultProfileGap (the goroutine asleep,
// not timed) with new inputs each time ("idle"): a serving engine's worker waits
// for every batch, and its pass then starts with its thread woken and the caches,
// TLB and branch predictors holding other work. The start-up profile now
// measures the second way. ns/op includes the pause; us/pass does not.
//
//	go test -run '^$' -bench RunAfterIdle -benchtime 2000x ./engine
func BenchmarkRunAfterIdle(b *testing.B) {
	e, fashion := fashionEngine(b)
	for _, name := range []string{"logreg", "mlp-small", "cnn"} {
		id := VariantID{App: "fashion", Variant: name}
		if _, err := e.Load(id); err != nil {
			b.Fatal(err)
		}
		for _, n := range []int{1, 4, 8, 32} {
			sets := make([][][]float32, 64)
			for i := range sets {
				sets[i] = randomInputs(n, fashion.InputSize, 0, 1, uint64(i+1))
			}
			for _, idle := range []bool{false, true} {
				mode := "hot"
				if idle {
					mode = "idle"
				}
				b.Run(fmt.Sprintf("%s/b=%d/%s", name, n, mode), func(b *testing.B) {
					var passes time.Duration
					for i := range b.N {
						in := sets[0]
						if idle {
							in = sets[i%len(sets)]
							time.Sleep(DefaultProfileGap)
						}
						t0 := time.Now()
						if _, err := e.Run(id, in); err != nil {
							b.Fatal(err)
						}
						passes += time.Since(t0)
					}
					b.ReportMetric(float64(passes.Microseconds())/float64(b.N), "us/pass")
				})
			}
		}
		if _, err := e.Unload(id); err != nil {
			b.Fatal(err)
		}
	}
}

// fashionEngine is an engine of one intra-op and one inter-op thread with the
// bundled fashion application registered, and that application (the benchmark
// skips without it).
func fashionEngine(b *testing.B) (*Engine, *manifest.App) {
	b.Helper()
	var fashion *manifest.App
	for _, a := range realManifests(b) {
		if a.Name == "fashion" {
			fashion = a
		}
	}
	if fashion == nil {
		b.Skip("skipping: no ../models/fashion")
	}
	e := newEngine(b, Options{IntraOpThreads: 1, InterOpThreads: 1})
	if err := e.Register(fashion); err != nil {
		b.Fatal(err)
	}
	return e, fashion
}
