package store

import (
	"testing"
	"testing/synctest"
	"time"
)

// fill takes what is queued; it waits MaxBatchDelay for more only when asked
// (the commit loop asks when the journal is busy, with Options.DelayUnderLoad).
func TestFillWaitsOnlyWhenAsked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &Store{ops: make(chan *op, 4), opts: Options{MaxBatchDelay: 10 * time.Millisecond, MaxBatchSize: 4}}
		s.ops <- &op{}
		start := time.Now()
		if g := s.fill([]*op{{}}, false); len(g) != 2 || time.Since(start) != 0 {
			t.Fatalf("without waiting: %d writes after %s, want the 2 queued at once", len(g), time.Since(start))
		}
		if g := s.fill([]*op{{}}, true); len(g) != 1 || time.Since(start) != 10*time.Millisecond {
			t.Fatalf("waiting: %d writes after %s, want 1 after MaxBatchDelay", len(g), time.Since(start))
		}
		go func() {
			time.Sleep(3 * time.Millisecond)
			s.ops <- &op{}
		}()
		start = time.Now()
		if g := s.fill([]*op{{}}, true); len(g) != 2 || time.Since(start) != 10*time.Millisecond {
			t.Fatalf("waiting: %d writes after %s, want 2 after MaxBatchDelay", len(g), time.Since(start))
		}
	})
}
