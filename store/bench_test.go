package store_test

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

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

// BenchmarkLifecycle measures a request's whole journal life as the gateway
// drives it (Put, Outbox before the publish, Complete after the PUBACK), with
// 64 requests in flight, fsync on, a 784-value input (Fashion-MNIST) and a
// 300-byte reply: the journal's share of the gateway's CPU per request. Besides
// the time per request (the wall clock over 64 in flight) it reports the
// process's CPU time per request (cpu-us/op, from getrusage: the benchmark's
// goroutines and the committer, user and system) and bbolt's pages written
// per request (pages/op: one per node written, whatever its size).
func BenchmarkLifecycle(b *testing.B) {
	s := storetest.New(b, quiet, func(o *store.Options) { o.NoSync = false })
	input := make([]float32, 784)
	for j := range input {
		input[j] = float32(j) / 784
	}
	reply := []byte(`{"id":"req-000000","app":"fashion","device":"dev-3","status":"ok","class":3,"label":"Dress",` +
		`"variant":"logreg","batch":6,"deadline_met":true,"slack_ms":987,"total_ms":12.5,"queue_ms":3.1,` +
		`"infer_ms":0.4,"est_accuracy":0.83,"estimator":"sneakpeek","probs":null,"received_at":"2026-11-30T12:00:00Z"}`)
	before := s.Stats()
	pages := store.PagesWritten(s)
	cpu := cpuTime(b)
	b.ReportAllocs()
	b.ResetTimer()
	parallel(b.N, 64, func(i int) {
		e := entry(i)
		e.Input = input
		e.Attrs = nil
		if _, err := s.Put(e); err != nil {
			b.Error(err)
		}
		if err := s.Outbox(e.Key, reply, e.Deadline); err != nil {
			b.Error(err)
		}
		if err := s.Complete(e.Key, reply); err != nil {
			b.Error(err)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(cpuTime(b)-cpu)/float64(time.Microsecond)/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64(store.PagesWritten(s)-pages)/float64(b.N), "pages/op")
	reportBatching(b, s, before)
}

// cpuTime is the process's CPU time so far, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLookup measures Lookup of a key the journal does not know (what
// admission asks of every request it refuses or answers from the estimate
// under overload) and of one it holds pending, with 10,000 keys in it.
func BenchmarkLookup(b *testing.B) {
	s := storetest.Open(b, b.TempDir()+"/j.db", store.Options{NoSync: true, Logger: zerolog.Nop()})
	const n = 10000
	parallel(n, 64, func(i int) {
		if _, err := s.Put(benchEntry(i)); err != nil {
			b.Error(err)
		}
	})
	for name, k := range map[string]store.Key{"unknown": key(n + 1), "pending": key(n / 2)} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Lookup(k); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
