// Package storetest opens journals for tests: a temporary file, test options, a
// manual clock, and a consistency check (store.Check, which includes bbolt's
// Tx.Check) when the test ends.
//
//	s := storetest.New(t)                          // NoSync, clock at Epoch
//	clk := storetest.NewClock()
//	s := storetest.New(t, func(o *store.Options) { o.Now = clk.Now; o.Retention = time.Minute })
//
// Every store opened here is checked and closed by t.Cleanup. A store the test
// closed itself is reopened for the check, so crash-recovery tests are checked too.
package storetest

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/store"
)

// Epoch is where a new Clock starts.
var Epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Options returns the options New starts from: NoSync, a logger writing to t,
// and a new Clock's Now.
func Options(t testing.TB) store.Options {
	o := store.DefaultOptions()
	o.NoSync = true
	o.Now = NewClock().Now
	o.Logger = zerolog.New(zerolog.NewTestWriter(t)).With().Str("component", "store").Logger()
	return o
}

// New opens a store on a new file in t.TempDir(), with Options(t) changed by each
// fn in turn. It fails the test if Open fails.
func New(t testing.TB, fns ...func(*store.Options)) *store.Store {
	t.Helper()
	o := Options(t)
	for _, fn := range fns {
		fn(&o)
	}
	return Open(t, filepath.Join(t.TempDir(), "journal.db"), o)
}

// Open opens path with o, failing the test if Open fails, and registers the
// cleanup that checks and closes the store. Use it to reopen a file.
func Open(t testing.TB, path string, o store.Options) *store.Store {
	t.Helper()
	s, err := store.Open(path, o)
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(func() { check(t, s, path, o) })
	return s
}

func check(t testing.TB, s *store.Store, path string, o store.Options) {
	t.Helper()
	err := s.Check()
	if errors.Is(err, store.ErrClosed) {
		var again *store.Store
		if again, err = store.Open(path, o); err == nil {
			err = errors.Join(again.Check(), again.Close())
		}
	}
	if err != nil {
		t.Errorf("storetest: journal check after the test: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("storetest: %v", err)
	}
}

// Clock is a manual clock, safe for concurrent use. Time moves only when the test
// moves it.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock at Epoch.
func NewClock() *Clock { return &Clock{now: Epoch} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
