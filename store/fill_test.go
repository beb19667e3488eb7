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

// The delay counts from the group's first write being queued: a write that
// waited behind the previous commit waits only what is left of MaxBatchDelay,
// and none when that commit took longer.
func TestFillDelayCountsFromTheFirstWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &Store{ops: make(chan *op, 4), opts: Options{MaxBatchDelay: 10 * time.Millisecond, MaxBatchSize: 4}}
		first := &op{queuedAt: time.Now()}
		time.Sleep(4 * time.Millisecond) // the previous commit
		start := time.Now()
		if g := s.fill([]*op{first}, true); len(g) != 1 || time.Since(start) != 6*time.Millisecond {
			t.Fatalf("after 4ms queued: %d writes after %s more, want 1 after 6ms", len(g), time.Since(start))
		}
		first = &op{queuedAt: time.Now()}
		time.Sleep(12 * time.Millisecond)
		s.ops <- &op{queuedAt: time.Now()}
		start = time.Now()
		if g := s.fill([]*op{first}, true); len(g) != 2 || time.Since(start) != 0 {
			t.Fatalf("after 12ms queued: %d writes after %s more, want the 2 queued at once", len(g), time.Since(start))
		}
	})
}
