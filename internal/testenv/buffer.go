package testenv

import (
	"bytes"
	"strings"
	"sync"
)

// Buffer collects what goroutines write (a logger's lines, a process's
// output) for a test to read while they may still be writing.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count returns how many times s was written so far.
func (l *Buffer) Count(s string) int { return strings.Count(l.String(), s) }
