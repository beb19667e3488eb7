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

// A second gateway that opens the journal while the first, holding the lock,
// compacts it at start-up waits for the lock of the file it opened: the one
// the compaction renames its copy over, and whose lock the first gateway
// releases when it closes it. Before, the second one took that lock, found the
// old file healthy and opened it (Open and OpenOrRecover alike): both gateways
// ran, and what the first journaled went to the file at the path while the
// second compacted its stale copy over it, losing requests the first had
// acknowledged. Now lockPath, having the lock, checks that the file is still the
// one at the path, and otherwise opens the path again and waits for that file's
// lock: the second gateway stops with ErrLocked, or opens the journal once the
// first has closed it, with everything the first wrote.
func TestOpenerWaitingThroughACompactionIsLockedOut(t *testing.T) {
	for _, c := range []struct {
		how    string
		aStays bool // A keeps the journal open until B's LockTimeout runs out
	}{{"OpenOrRecover", false}, {"Open", false}, {"OpenOrRecover", true}, {"Open", true}} {
		name := c.how
		if c.aStays {
			name += " until B times out"
		}
		// The lock's retries sleep, and B waits up to its LockTimeout: virtual time.
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { testOpenerWaitingThroughACompaction(t, c.how, c.aStays) })
		})
	}
}

func testOpenerWaitingThroughACompaction(t *testing.T, how string, aStays bool) {
	clk := storetest.NewClock()
	o := storetest.Options(t)
	o.Now, o.Retention = clk.Now, time.Minute
	o.CompactMinBytes = 1 << 10
	o.LockTimeout = time.Minute
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		e := entry(i)
		e.Input = make([]float32, 256)
		mustPut(t, s, e, store.New)
		if err := s.Complete(e.Key, []byte("r")); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(time.Hour)
	if _, err := s.GC(clk.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A, holding the journal's lock, stops before its compaction renames
	// anything (as it opens path.compact) until B has opened the journal and is
	// about to wait for its lock.
	aCompacting, bOpened, bOpenedAgain := make(chan struct{}), make(chan struct{}), make(chan struct{})
	releaseA := sync.OnceFunc(func() { close(bOpened) })
	var (
		mu       sync.Mutex
		bStarted bool
		compacts int
		bOpens   int
	)
	store.SetLockOpened(t, func(p string) {
		mu.Lock()
		switch {
		case p == path+".compact":
			if compacts++; compacts == 1 {
				mu.Unlock()
				close(aCompacting)
				<-bOpened
				return
			}
		case p == path && bStarted:
			switch bOpens++; bOpens {
			case 1:
				releaseA()
			case 2:
				close(bOpenedAgain)
			}
		}
		mu.Unlock()
	})
	type opened struct {
		s   *store.Store
		rec *store.Recovery
		err error
		at  time.Time
	}
	aDone, bDone := make(chan opened, 1), make(chan opened, 1)
	go func() {
		s, rec, err := store.OpenOrRecover(path, o)
		aDone <- opened{s, rec, err, time.Now()}
	}()
	select {
	case <-aCompacting:
	case a := <-aDone:
		t.Fatalf("A's OpenOrRecover returned (%v, %+v) without compacting the journal", a.err, a.rec)
	}
	mu.Lock()
	bStarted = true
	mu.Unlock()
	bStart := time.Now()
	go func() {
		var b opened
		if how == "Open" {
			b.s, b.err = store.Open(path, o)
		} else {
			b.s, b.rec, b.err = store.OpenOrRecover(path, o)
		}
		b.at = time.Now()
		bDone <- b
	}()
	select {
	case <-bOpened:
	case b := <-bDone:
		releaseA()
		t.Fatalf("B's %s returned (%v) before it waited for the lock", how, b.err)
	case <-time.After(10 * time.Second): // a failure only: B opens the file at once
		releaseA()
		t.Fatalf("B's %s did not open the journal through lockPath", how)
	}
	a := <-aDone
	if a.err != nil || a.rec != nil {
		t.Fatalf("A's OpenOrRecover: %v, %+v", a.err, a.rec)
	}
	var b opened
	select {
	case <-bOpenedAgain: // B found the file replaced: it waits for the new one's lock
	case b = <-bDone:
		t.Errorf("B's %s returned (%v) while A has the journal open: want it to wait for the lock of the file now at the path", how, b.err)
	}
	// A journals a request: acknowledged once Put returns.
	acked := entry(5000)
	mustPut(t, a.s, acked, store.New)
	if aStays && b.s == nil && b.err == nil {
		b = <-bDone
		if !errors.Is(b.err, store.ErrLocked) {
			t.Errorf("B's %s while A has the journal open: %v, want ErrLocked", how, b.err)
		} else if d := b.at.Sub(bStart); d < o.LockTimeout || d > o.LockTimeout+time.Second {
			t.Errorf("B's %s failed after %s, want its LockTimeout (%s) in all", how, d, o.LockTimeout)
		}
		t.Logf("B: %v", b.err)
	}
	if err := a.s.Close(); err != nil {
		t.Fatal(err)
	}
	if !aStays {
		if b.s == nil && b.err == nil {
			b = <-bDone // A is gone: B gets the lock now
		}
		if b.err != nil {
			t.Fatalf("B's %s after A closed: %v", how, b.err)
		}
		if b.rec != nil {
			t.Errorf("B's OpenOrRecover salvaged: %s", b.rec.Summary())
		}
		res, err := b.s.Lookup(acked.Key)
		if err != nil || res.Dup != store.DupPending {
			t.Errorf("B's Lookup of %s, acknowledged by A: %s, %v; want pending", acked.Key, res.Dup, err)
		}
	}
	if b.s != nil {
		if err := b.s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	s = storetest.Open(t, path, o)
	if res, err := s.Lookup(acked.Key); err != nil || res.Dup != store.DupPending {
		t.Errorf("Lookup of %s, acknowledged by A, in the journal at the path: %s, %v; want pending", acked.Key, res.Dup, err)
	}
}
