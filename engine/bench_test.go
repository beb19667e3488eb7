package engine

import (
	"fmt"
	"strings"
	"testing"
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
