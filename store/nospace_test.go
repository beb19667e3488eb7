//go:build linux

package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// noSpaceChild names the environment variable that makes TestFileCannotGrow
// run its body: in a child process (this test binary again), because the file
// size limit it sets applies to every file the process writes.
const noSpaceChild = "SNEAKGATE_STORE_TEST_FSIZE_CHILD"

// TestFileCannotGrow: a real journal file that cannot grow, with no root and no
// special file system: RLIMIT_FSIZE, set in a child process, makes the kernel
// refuse to extend any file past a size, with EFBIG (and SIGXFSZ, which the Go
// runtime ignores, so the call returns the error instead of the process
// dying; if it did not, the child would die of the signal and the test fail).
// It is what a full disk is to bbolt (ENOSPC comes from the same calls), in
// both places it can fail: the ftruncate that grows the file ("at the file's
// size"), and a write past the end of pages an earlier grow had already added
// to the file ("at the high-water mark"). Checked in each:
//
//   - Put of a new key fails with ErrNoSpace (wrapping the file system's error);
//     for a second after a failure it fails at once, without a commit;
//     duplicates are still answered;
//   - Outbox and Complete go on, also in the same group commit as a new Put
//     that fails for want of space: they are committed without it;
//   - the file stays consistent (store.Check, bbolt's included), and a copy of
//     it taken while full, as a kill -9 would leave it, opens cleanly with
//     every acknowledged request;
//   - a Put that fits in the file's free pages is stored, but while the disk
//     is full new keys stay refused until one makes the file grow (or the file
//     has 64 free pages);
//   - once the file may grow again, the first Put a second after the last
//     failure is stored and the journal leaves the no-space state.
func TestFileCannotGrow(t *testing.T) {
	if os.Getenv(noSpaceChild) != "" {
		fileCannotGrow(t, os.Getenv(noSpaceChild))
		return
	}
	for _, at := range []string{"file-size", "high-water-mark"} {
		t.Run(at, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestFileCannotGrow$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), noSpaceChild+"="+at)
			out, err := cmd.CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("--- PASS: TestFileCannotGrow")) {
				t.Fatalf("child process (RLIMIT_FSIZE at the %s): %v\n%s", at, err, out)
			}
			t.Logf("child process:\n%s", out)
		})
	}
}

// fileCannotGrow is TestFileCannotGrow's body, in the child process.
func fileCannotGrow(t *testing.T, at string) {
	clk := storetest.NewClock()
	o := storetest.Options(t)
	o.Now = clk.Now
	gate := &commitGate{}
	o.BeforeCommit = gate.beforeCommit
	path := filepath.Join(t.TempDir(), "journal.db")
	s := storetest.Open(t, path, o)

	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &orig); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &orig); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(restore) // before storetest's check, which runs after it

	// Some requests, then the limit: no byte past the file's current size (or
	// past the pages in use, when the file is longer).
	e := func(i, size int) *store.Entry {
		x := entry(i)
		x.Input = make([]float32, size)
		for j := range x.Input {
			x.Input[j] = float32(i) + float32(j)/7 // not all zeros, whatever the encoding
		}
		return x
	}
	acked := map[int]bool{}
	for i := range 8 {
		mustPut(t, s, e(i, 1000), store.New)
		acked[i] = true
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	limit := fi.Size()
	if at == "high-water-mark" {
		// Put until a grow leaves the file longer than its pages in use.
		for i := 8; s.Stats().FileSize >= limit; i++ {
			mustPut(t, s, e(i, 1000), store.New)
			acked[i] = true
			if fi, err = os.Stat(path); err != nil {
				t.Fatal(err)
			}
			limit = fi.Size()
		}
		limit = s.Stats().FileSize
	}
	t.Logf("file %d bytes, %d in pages; writes past %d bytes fail", fi.Size(), s.Stats().FileSize, limit)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: uint64(limit), Max: orig.Max}); err != nil {
		t.Fatal(err)
	}

	// Fill the file's free pages, until a commit needs more.
	next := 100
	var putErr error
	for ; next < 100+10000; next++ {
		if _, putErr = s.Put(e(next, 1000)); putErr != nil {
			break
		}
		acked[next] = true
	}
	t.Logf("%d requests stored; then %v", len(acked), putErr)
	if !errors.Is(putErr, store.ErrNoSpace) {
		t.Fatalf("Put on a file that cannot grow: %v, want ErrNoSpace", putErr)
	}
	if !errors.Is(putErr, syscall.EFBIG) && at == "high-water-mark" {
		t.Errorf("Put: %v, want it to wrap EFBIG (a failed write)", putErr)
	}
	st := s.Stats()
	if st.NoSpaceErrors != 1 || st.NoSpaceSince.IsZero() || st.CommitErrors != 1 {
		t.Fatalf("after the first failure: %+v, want 1 no-space error since now", st)
	}

	// Within the second: refused at once, without a commit; a duplicate is
	// answered.
	next++
	if _, err := s.Put(e(next, 10)); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("Put just after the failure: %v, want ErrNoSpace", err)
	}
	mustPut(t, s, e(0, 1000), store.DupPending)
	if st := s.Stats(); st.NoSpaceErrors != 1 || st.CommitErrors != 1 {
		t.Fatalf("a refused Put tried a commit: %+v", st)
	}

	// Replies and completions go on.
	if err := s.Outbox(key(0), []byte("reply 0"), storetest.Epoch); err != nil {
		t.Fatalf("Outbox while full: %v", err)
	}
	for _, i := range []int{0, 1} {
		if err := s.Complete(key(i), []byte(fmt.Sprintf("reply %d", i))); err != nil {
			t.Fatalf("Complete(%d) while full: %v", i, err)
		}
	}

	// A second later a Put tries again, and fails (it is too large for any
	// free pages), in the same group commit as a completion, which is stored.
	clk.Advance(time.Second)
	gate.hold()
	var wg sync.WaitGroup
	var completeErr, completeErr3, bigErr error
	wg.Go(func() { completeErr = s.Complete(key(2), []byte("reply 2")) }) // held in BeforeCommit
	gate.waitHeld(t)
	next++
	wg.Go(func() { _, bigErr = s.Put(e(next, 100_000)) })
	wg.Go(func() { completeErr3 = s.Complete(key(3), []byte("reply 3")) })
	waitQueued(t, s, 3)
	gate.release()
	wg.Wait()
	if !errors.Is(bigErr, store.ErrNoSpace) {
		t.Errorf("large Put: %v, want ErrNoSpace", bigErr)
	}
	if completeErr != nil {
		t.Errorf("Complete: %v", completeErr)
	}
	if completeErr3 != nil {
		t.Errorf("Complete in a group commit with a Put that did not fit: %v", completeErr3)
	}
	if st := s.Stats(); st.NoSpaceErrors != 2 {
		t.Errorf("after the second failure: %+v, want 2 no-space errors", st)
	}
	if err := s.Check(); err != nil {
		t.Fatalf("journal while full: %v", err)
	}

	// A second later a small Put fits in the pages the completions freed: it is
	// stored, but the file did not grow and the disk is full (statfs; the
	// kernel's file size limit is not a full disk, so the test says so), so new
	// keys stay refused for another second (the free pages are the completions'
	// room).
	var diskFull atomic.Bool
	diskFull.Store(true)
	store.SetDiskRoom(t, func(string, int64) bool { return !diskFull.Load() })
	clk.Advance(time.Second)
	next++
	mustPut(t, s, e(next, 10), store.New)
	acked[next] = true
	next++
	if _, err := s.Put(e(next, 10)); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("Put just after a Put that fitted without growing the file: %v, want ErrNoSpace", err)
	}
	if st := s.Stats(); st.NoSpaceSince.IsZero() || st.NoSpaceErrors != 2 {
		t.Fatalf("after a Put that fitted without growing the file: %+v, want still in the no-space state", st)
	}

	diskFull.Store(false)

	// Space again. What a kill -9 would leave now opens cleanly, with every
	// acknowledged request.
	restore()
	crashed := filepath.Join(t.TempDir(), "crashed.db")
	copyFile(t, path, crashed)
	c, rec, err := store.OpenOrRecover(crashed, o)
	if err != nil || rec != nil {
		t.Fatalf("OpenOrRecover of the file as it was while full: %v, recovery %+v", err, rec)
	}
	for i := range acked {
		if res, err := c.Lookup(key(i)); err != nil || res.Dup == store.New {
			t.Errorf("acknowledged request %d: %+v, %v after reopening", i, res, err)
		}
	}
	if err := errors.Join(c.Check(), c.Close()); err != nil {
		t.Fatal(err)
	}

	// Until a second has passed since the last failure, new keys are still
	// refused at once; then the first one is stored, and the state ends.
	next++
	if _, err := s.Put(e(next, 10)); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("Put within the second: %v, want ErrNoSpace", err)
	}
	clk.Advance(time.Second)
	mustPut(t, s, e(next, 100_000), store.New)
	if st := s.Stats(); !st.NoSpaceSince.IsZero() || st.NoSpaceErrors != 2 {
		t.Fatalf("after a Put fitted again: %+v, want NoSpaceSince zero", st)
	}
}

// commitGate holds one group commit in BeforeCommit, when asked, so that a
// test can queue writes behind it and know they commit together.
type commitGate struct {
	mu       sync.Mutex
	held     chan struct{} // closed when the commit to hold is held; nil: hold none
	released chan struct{}
}

func (g *commitGate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held, g.released = make(chan struct{}), make(chan struct{})
}

func (g *commitGate) beforeCommit([]store.Op) error {
	g.mu.Lock()
	held, released := g.held, g.released
	g.held = nil
	g.mu.Unlock()
	if held != nil {
		close(held)
		<-released
	}
	return nil
}

func (g *commitGate) waitHeld(t *testing.T) {
	g.mu.Lock()
	held := g.held
	g.mu.Unlock()
	if held == nil {
		return // already taken
	}
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("no commit reached BeforeCommit")
	}
}

func (g *commitGate) release() { close(g.released) }

// waitQueued waits until n writes are queued or committing.
func waitQueued(t *testing.T, s *store.Store, n int) {
	for start := time.Now(); s.Stats().Queued < n; time.Sleep(time.Millisecond) {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("%d writes queued, want %d", s.Stats().Queued, n)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
