package store_test

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

func quiet(o *store.Options) { o.Logger = zerolog.Nop() }

// benchEntry is a request with a 64-value input.
func benchEntry(i int) *store.Entry {
	e := entry(i)
	e.Input = make([]float32, 64)
	for j := range e.Input {
		e.Input[j] = float32(i + j)
	}
	return e
}

// parallel runs fn(i) for i in [0, n) on writers goroutines.
func parallel(n, writers int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				fn(i)
			}
		})
	}
	wg.Wait()
}

func reportBatching(b *testing.B, s *store.Store, before store.Stats) {
	st := s.Stats()
	if c := st.Commits - before.Commits; c > 0 {
		b.ReportMetric(float64(st.Ops-before.Ops)/float64(c), "ops/commit")
	}
}

// BenchmarkPut measures Put with fsync on: one writer (latency bound by one
// fsync per Put) and 64 writers (group commit), and 64 writers with groups of
// one, which is what committing every Put alone would cost.
func BenchmarkPut(b *testing.B) {
	for _, c := range []struct {
		name     string
		writers  int
		maxBatch int
		noSync   bool
	}{
		{"writers=1", 1, 0, false},
		{"writers=64", 64, 0, false},
		{"writers=64/nogroup", 64, 1, false},
		{"writers=1/nosync", 1, 0, true},
		{"writers=64/nosync", 64, 0, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := storetest.New(b, quiet, func(o *store.Options) { o.NoSync = c.noSync; o.MaxBatchSize = c.maxBatch })
			entries := make([]*store.Entry, b.N)
			for i := range entries {
				entries[i] = benchEntry(i)
			}
			before := s.Stats()
			b.ResetTimer()
			parallel(b.N, c.writers, func(i int) {
				if _, err := s.Put(entries[i]); err != nil {
					b.Error(err)
				}
			})
			b.StopTimer()
			reportBatching(b, s, before)
		})
	}
}

// BenchmarkComplete measures Complete with fsync on, of entries put beforehand.
func BenchmarkComplete(b *testing.B) {
	for _, writers := range []int{1, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			s := storetest.New(b, quiet, func(o *store.Options) { o.NoSync = false })
			parallel(b.N, 64, func(i int) {
				if _, err := s.Put(benchEntry(i)); err != nil {
					b.Error(err)
				}
			})
			reply := []byte(`{"status":"ok","class":3,"variant":"resnet18","batch":8}`)
			before := s.Stats()
			b.ResetTimer()
			parallel(b.N, writers, func(i int) {
				if err := s.Complete(key(i), reply); err != nil {
					b.Error(err)
				}
			})
			b.StopTimer()
			reportBatching(b, s, before)
		})
	}
}

// BenchmarkPending measures recovery: reading 10,000 pending entries.
func BenchmarkPending(b *testing.B) {
	const n = 10_000
	s := storetest.New(b, quiet)
	parallel(n, runtime.GOMAXPROCS(0)*4, func(i int) {
		if _, err := s.Put(benchEntry(i)); err != nil {
			b.Error(err)
		}
	})
	b.ResetTimer()
	for b.Loop() {
		es, err := s.Pending()
		if err != nil || len(es) != n {
			b.Fatalf("Pending: %d entries, %v", len(es), err)
		}
	}
	b.ReportMetric(float64(s.Stats().FileSize)/(1<<20), "file-MiB")
}
