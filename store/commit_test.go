package store_test

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// gate blocks the first group commit in BeforeCommit until released, so a test
// can queue writes behind it and know exactly how they will be grouped.
type gate struct {
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func newGate() *gate {
	return &gate{entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gate) beforeCommit([]store.Op) error {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.entered)
		<-g.release
	}
	return nil
}

// Concurrent Puts are all durable and share commits: while one commit is in
// progress, the others queue and go into the next one together.
func TestConcurrentPutsAreGroupCommitted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const writers = 64
		g := newGate()
		o := storetest.Options(t)
		o.BeforeCommit = g.beforeCommit
		path := filepath.Join(t.TempDir(), "journal.db")
		s := storetest.Open(t, path, o)

		var wg sync.WaitGroup
		errs := make(chan error, writers)
		wg.Go(func() {
			_, err := s.Put(entry(0))
			errs <- err
		})
		<-g.entered
		for i := 1; i < writers; i++ {
			wg.Go(func() {
				_, err := s.Put(entry(i))
				errs <- err
			})
		}
		synctest.Wait() // every writer is queued behind the first commit
		if q := s.Stats().Queued; q != writers {
			t.Errorf("Stats.Queued = %d, want %d", q, writers)
		}
		close(g.release)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}

		st := s.Stats()
		t.Logf("%d puts in %d commits (largest %d)", st.Puts, st.Commits, st.MaxBatch)
		if st.Puts != writers || st.Commits != 2 || st.MaxBatch != writers-1 || st.Batched != writers-1 {
			t.Errorf("Stats = %+v; want %d puts in 2 commits, the second of %d", st, writers, writers-1)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = storetest.Open(t, path, storetest.Options(t))
		if n := len(pendingKeys(t, s)); n != writers {
			t.Errorf("%d entries pending after reopen, want %d", n, writers)
		}
	})
}

// With MaxBatchDelay, a lone write waits for company before committing.
func TestMaxBatchDelayGroupsWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := storetest.New(t, func(o *store.Options) { o.MaxBatchDelay = 10 * time.Millisecond })
		start := time.Now()
		var wg sync.WaitGroup
		for i := range 3 {
			wg.Go(func() { mustPut(t, s, entry(i), store.New) })
		}
		wg.Wait()
		if st := s.Stats(); st.Commits != 1 || st.MaxBatch != 3 {
			t.Errorf("Stats = %+v, want 3 puts in 1 commit", st)
		}
		if d := time.Since(start); d != 10*time.Millisecond {
			t.Errorf("the group committed after %s, want MaxBatchDelay (10ms)", d)
		}
	})
}

// A write that fails on its own (Outbox of an unknown key) fails alone: the
// others in its group commit.
func TestFailingWriteDoesNotFailItsGroup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		s := storetest.New(t, func(o *store.Options) { o.BeforeCommit = g.beforeCommit })
		var wg sync.WaitGroup
		wg.Go(func() { mustPut(t, s, entry(0), store.New) })
		<-g.entered
		wg.Go(func() { mustPut(t, s, entry(1), store.New) })
		wg.Go(func() {
			if err := s.Outbox(key(9), []byte("r"), time.Time{}); !errors.Is(err, store.ErrNotPending) {
				t.Errorf("Outbox of an unknown key: err %v, want ErrNotPending", err)
			}
		})
		wg.Go(func() { mustPut(t, s, entry(2), store.New) })
		synctest.Wait()
		close(g.release)
		wg.Wait()
		if st := s.Stats(); st.Commits != 2 || st.Puts != 3 || st.CommitErrors != 0 {
			t.Errorf("Stats = %+v, want 3 puts in 2 commits, no commit errors", st)
		}
		wantCounts(t, s, 3, 0, 0)
	})
}

// Two Puts of one key in the same group: exactly one is New.
func TestSameKeyInOneGroup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		s := storetest.New(t, func(o *store.Options) { o.BeforeCommit = g.beforeCommit })
		var wg sync.WaitGroup
		wg.Go(func() { mustPut(t, s, entry(0), store.New) })
		<-g.entered
		results := make(chan store.Dup, 4)
		for range 4 {
			wg.Go(func() {
				res, err := s.Put(entry(1))
				if err != nil {
					t.Error(err)
				}
				results <- res.Dup
			})
		}
		synctest.Wait()
		close(g.release)
		wg.Wait()
		close(results)
		count := map[store.Dup]int{}
		for d := range results {
			count[d]++
		}
		if count[store.New] != 1 || count[store.DupPending] != 3 {
			t.Errorf("results %v, want 1 new and 3 dup-pending", count)
		}
	})
}

// The gateway's "no ack without commit" seam: a failed commit fails the Put and
// leaves nothing behind; the redelivery then succeeds.
func TestInjectedCommitFailure(t *testing.T) {
	errDisk := errors.New("injected: disk full")
	var mu sync.Mutex
	failing := true
	s := storetest.New(t, func(o *store.Options) {
		o.BeforeCommit = func(ops []store.Op) error {
			mu.Lock()
			defer mu.Unlock()
			if failing && ops[0].Kind == store.OpPut {
				return errDisk
			}
			return nil
		}
	})
	if _, err := s.Put(entry(1)); !errors.Is(err, errDisk) {
		t.Fatalf("Put with a failing commit: err %v, want the injected error", err)
	}
	if ks := pendingKeys(t, s); len(ks) != 0 {
		t.Errorf("Pending after a failed Put = %v, want none", ks)
	}
	if st := s.Stats(); st.CommitErrors != 1 || st.Commits != 0 || st.Pending != 0 {
		t.Errorf("Stats = %+v, want 1 commit error and nothing stored", st)
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	mustPut(t, s, entry(1), store.New)
	wantCounts(t, s, 1, 0, 0)
}

func TestSecondOpenFailsWithErrLocked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) { // bbolt's lock retries sleep: virtual time
		o := storetest.Options(t)
		o.LockTimeout = 2 * time.Second
		path := filepath.Join(t.TempDir(), "journal.db")
		storetest.Open(t, path, o)
		start := time.Now()
		s2, err := store.Open(path, o)
		if !errors.Is(err, store.ErrLocked) {
			if err == nil {
				s2.Close()
			}
			t.Fatalf("second Open: err %v, want ErrLocked", err)
		}
		if d := time.Since(start); d < o.LockTimeout-100*time.Millisecond || d > o.LockTimeout+100*time.Millisecond {
			t.Errorf("second Open gave up after %s, want about LockTimeout (%s)", d, o.LockTimeout)
		}
		t.Log(err)
	})
}

// With DelayUnderLoad, a lone write on an idle journal commits at once; the
// delay is for a journal whose last commit had company.
func TestDelayUnderLoadSparesTheIdleJournal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := storetest.New(t, func(o *store.Options) {
			o.MaxBatchDelay, o.DelayUnderLoad = 10*time.Millisecond, true
		})
		start := time.Now()
		mustPut(t, s, entry(1), store.New)
		if d := time.Since(start); d != 0 {
			t.Errorf("a lone write on an idle journal committed after %s, want at once", d)
		}
	})
}

// With DelayUnderLoad and BusyGroupSize, the delay starts only after a group
// commit of at least BusyGroupSize writes.
func TestBusyGroupSize(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var hold chan struct{}
		held := make(chan struct{}, 1)
		s := storetest.New(t, func(o *store.Options) {
			o.MaxBatchDelay, o.DelayUnderLoad, o.BusyGroupSize = 10*time.Millisecond, true, 3
			o.BeforeCommit = func([]store.Op) error {
				mu.Lock()
				h := hold
				hold = nil
				mu.Unlock()
				if h != nil {
					held <- struct{}{}
					<-h
				}
				return nil
			}
		})
		// group runs a commit of one Put held until n more Puts are queued
		// behind it, then lets both go: the n commit together.
		next := 0
		group := func(n int) {
			t.Helper()
			h := make(chan struct{})
			mu.Lock()
			hold = h
			mu.Unlock()
			var wg sync.WaitGroup
			first := next
			wg.Go(func() { mustPut(t, s, entry(first), store.New) })
			<-held
			for i := range n {
				wg.Go(func() { mustPut(t, s, entry(first+1+i), store.New) })
			}
			synctest.Wait()
			close(h)
			wg.Wait()
			next += n + 1
		}
		lone := func() time.Duration {
			t.Helper()
			start := time.Now()
			mustPut(t, s, entry(next), store.New)
			next++
			return time.Since(start)
		}
		start := time.Now()
		group(2)
		if d := time.Since(start); d != 0 {
			t.Errorf("a group after a lone write waited %s, want none", d)
		}
		if d := lone(); d != 0 {
			t.Errorf("a write after a group of 2 (BusyGroupSize 3) waited %s, want none", d)
		}
		group(3)
		if d := lone(); d != 10*time.Millisecond {
			t.Errorf("a write after a group of 3 (BusyGroupSize 3) waited %s, want MaxBatchDelay (10ms)", d)
		}
		if d := lone(); d != 0 {
			t.Errorf("a write after a lone write waited %s, want none", d)
		}
		if st := s.Stats(); st.MaxBatch != 3 || st.Puts != uint64(next) {
			t.Errorf("Stats = %+v, want %d puts, at most 3 in a commit", st, next)
		}
	})
}

// CompleteAsync returns before the commit; its callback reports the outcome
// once the completion is durable, and Close commits what is queued.
func TestCompleteAsync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	o := storetest.Options(t)
	g := newGate()
	o.BeforeCommit = g.beforeCommit
	s := storetest.Open(t, path, o)
	put := make(chan error, 1)
	go func() { // held in BeforeCommit: the next writes queue behind it
		_, err := s.Put(entry(0))
		put <- err
	}()
	<-g.entered
	done := make(chan error, 3)
	s.CompleteAsync(key(1), []byte("r1"), func(err error) { done <- err })
	s.CompleteAsync(key(2), []byte("r2"), func(err error) { done <- err })
	select {
	case err := <-done:
		t.Fatalf("callback before the commit: %v", err)
	default:
	}
	close(g.release)
	if err := <-put; err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	mustPut(t, s, entry(1), store.DupDone)
	// Refused arguments are reported at once, a panicking callback does not
	// stop the journal, and Close commits what is queued.
	s.CompleteAsync(store.Key{}, nil, func(err error) { done <- err })
	if err := <-done; !errors.Is(err, store.ErrInvalid) {
		t.Errorf("bad key: %v, want ErrInvalid", err)
	}
	s.CompleteAsync(key(3), []byte("r3"), func(error) { panic("callback") })
	s.CompleteAsync(key(4), []byte("r4"), func(err error) { done <- err })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("completion queued before Close: %v", err)
	}
	s.CompleteAsync(key(5), []byte("r5"), func(err error) { done <- err })
	if err := <-done; !errors.Is(err, store.ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
	s = storetest.Open(t, path, o)
	for i := 1; i <= 4; i++ {
		mustPut(t, s, entry(i), store.DupDone)
	}
	wantCounts(t, s, 1, 0, 4)
}
