//go:build !unix

package store

import (
	"os"
	"time"
)

// lockFile does nothing where flock is not available: bbolt takes its own lock
// when it opens the file (Open), so only the verification that OpenOrRecover,
// Inspect and Salvage run before that is unprotected from a concurrent writer.
func lockFile(f *os.File, exclusive bool, timeout time.Duration) error { return nil }

// closeFile closes f.
func closeFile(f *os.File) error { return f.Close() }
