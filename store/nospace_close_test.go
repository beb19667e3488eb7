package store_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// TestCloseDuringNoSpaceProbe: Close while the committer finishes a probe of
// the no-space state (a new Put that fitted) and writers wait to queue. The
// writers hold the store's lock shared while they wait; Close waits for it
// exclusively, which stops new readers; so the committer must not take it
// (it did, reading the file's size through view: a deadlock).
func TestCloseDuringNoSpaceProbe(t *testing.T) {
	clk := storetest.NewClock()
	o := storetest.Options(t)
	o.Now = clk.Now
	o.MaxBatchSize = 1 // a queue of one: the third writer waits to queue
	gate := &commitGate{}
	var full atomic.Bool
	o.BeforeCommit = func(ops []store.Op) error {
		if full.Load() {
			return fmt.Errorf("write journal.db: %w", syscall.ENOSPC)
		}
		return gate.beforeCommit(ops)
	}
	store.SetDiskRoom(t, func(string, int64) bool { return false })
	path := filepath.Join(t.TempDir(), "journal.db")
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	if _, err := s.Put(entry(0)); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("Put on a full disk: %v", err)
	}
	full.Store(false)
	clk.Advance(time.Second)

	gate.hold()
	done := make(chan struct{}, 3)
	put := func(i int) { s.Put(entry(i)); done <- struct{}{} } //nolint:errcheck // any outcome
	go put(1)                                                  // the probe, held in BeforeCommit
	gate.waitHeld(t)
	go put(2) // queued
	go put(3) // waits to queue, holding the lock shared
	waitQueued(t, s, 3)
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	for !store.CloseWaiting(s) {
		runtime.Gosched()
	}
	gate.release()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return: the committer waits for the lock Close wants")
	}
	for range 3 {
		<-done
	}
	c := storetest.Open(t, path, o)
	if res, err := c.Lookup(entry(1).Key); err != nil || res.Dup == store.New {
		t.Errorf("the probe after reopening: %+v, %v", res, err)
	}
}
