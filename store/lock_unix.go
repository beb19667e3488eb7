//go:build unix

package store

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockRetry is how often lockFile tries again while another process holds the
// lock (bbolt's own interval).
const lockRetry = 50 * time.Millisecond

// lockFile takes bbolt's advisory lock on f: exclusive, as a writer takes it, or
// shared, as a read-only opener does. It waits up to timeout for another process
// to release a conflicting lock, then fails with ErrLocked. bbolt, given the
// same *os.File through Options.OpenFile, takes the lock again on the same open
// file description, which succeeds at once; closing f releases it.
func lockFile(f *os.File, exclusive bool, timeout time.Duration) error {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	start := time.Now()
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		if time.Since(start) >= timeout {
			return fmt.Errorf("%w (waited %s; is a gateway using this file?)", ErrLocked, timeout)
		}
		time.Sleep(lockRetry)
	}
}

// closeFile releases the lock on f and closes it. Closing alone is not enough
// when bbolt's memory map of f outlives it (after a panic): the map keeps the
// open file description, and with it the lock, alive.
func closeFile(f *os.File) error {
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return f.Close()
}
