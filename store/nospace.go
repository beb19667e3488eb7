package store

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"
)

// noSpaceRetry is how long, after a commit failed for want of space, Put of a
// new key fails with ErrNoSpace without trying; the first Put after it tries
// again (and either ends the state or starts another wait).
const noSpaceRetry = time.Second

// noSpaceState is the journal's state after a commit failed for want of space
// (Store.noSpace; nil while commits succeed).
type noSpaceState struct {
	since time.Time // the first failure of the series
	last  time.Time // the latest failure, or probe that fitted (newKeysFitted)
	cause error     // the file system's error, as bbolt returned it
}

// noSpaceErrnos are the file system's ways of saying that the journal file
// cannot grow: the file system is full, a quota is reached, or the file size
// limit (RLIMIT_FSIZE, or the file system's largest file) is.
var noSpaceErrnos = []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG}

// isNoSpace reports whether a commit error means that the journal file could
// not grow. bbolt wraps a failed write (WriteAt) with %w, but formats a failed
// grow (ftruncate, which is where a file system that allocates on truncate,
// such as FAT, and RLIMIT_FSIZE say no) with %s ("file resize error: truncate
// ...: file too large"), so the text is looked at too.
func isNoSpace(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	for _, e := range noSpaceErrnos {
		if errors.Is(err, e) || strings.Contains(msg, e.Error()) {
			return true
		}
	}
	return false
}

// checkSpace fails with ErrNoSpace, without trying, while a commit failed for
// want of space (or new keys were let in while it lasted) less than
// noSpaceRetry ago. Put calls it before storing a new key, after the duplicate
// check.
func (s *Store) checkSpace() error {
	p := s.noSpace.Load()
	if p == nil || s.opts.Now().Sub(p.last) >= noSpaceRetry {
		return nil
	}
	return fmt.Errorf("%w: refused without trying for %s after the last failure (%v)", ErrNoSpace, noSpaceRetry, p.cause)
}

// noSpaceFailed records a commit that failed for want of space (cause) and
// logs the first of a series; the committer calls it.
func (s *Store) noSpaceFailed(cause error) {
	now := s.opts.Now()
	st := &noSpaceState{since: now, last: now, cause: cause}
	if p := s.noSpace.Load(); p != nil {
		st.since = p.since
	} else if last := s.noSpaceLogged; last.IsZero() || now.Sub(last) >= noSpaceLogEvery {
		s.noSpaceLogged = now
		s.log.Error().Err(cause).Str("path", s.path).
			Msg("journal: no space to grow the file (disk full, quota or file size limit); new requests are refused until a write succeeds, retried every second; replies and completions go on")
	}
	s.noSpace.Store(st)
	s.statsMu.Lock()
	s.stats.NoSpaceErrors++
	s.stats.NoSpaceSince = st.since
	s.statsMu.Unlock()
}

// diskHasRoom is diskRoom; tests replace it.
var diskHasRoom = diskRoom

// noSpaceLogEvery is the least time between two log lines about the journal
// running out of space: a limit statfs cannot see (quota, RLIMIT_FSIZE) can end
// and start the state every second.
const noSpaceLogEvery = time.Minute

// noSpaceReserve is how much free space in the file (in pages) ends the
// no-space state without the file growing (newKeysFitted).
const noSpaceReserve = 64

// newKeysFitted is told of a commit that stored new keys, the file's pages
// having taken sizeBefore bytes before it; the committer calls it. In the
// no-space state, such a commit is a probe: if the file grew, or holds at least
// noSpaceReserve free pages, or its file system has that much room (Linux:
// statfs; a quota or a file size limit it cannot see ends the state, and the
// next commit that cannot grow the file starts it again), the state ends.
// Otherwise the new keys took free pages that completions need, so new keys
// stay refused, and the next probe waits another noSpaceRetry.
func (s *Store) newKeysFitted(sizeBefore int64) {
	p := s.noSpace.Load()
	if p == nil {
		return
	}
	// Not s.view: writers waiting to queue hold s.mu shared, and a Close
	// waiting for it would keep the committer from reading, and them waiting.
	tx, err := s.db.Begin(false)
	if err != nil {
		return
	}
	size := tx.Size()
	if err := tx.Rollback(); err != nil {
		return
	}
	reserve := noSpaceReserve * s.pageSize
	if size <= sizeBefore && size-s.usedBytes(size) < reserve && !diskHasRoom(s.path, reserve) {
		q := *p
		q.last = s.opts.Now()
		s.noSpace.Store(&q)
		return
	}
	s.noSpace.Store(nil)
	s.statsMu.Lock()
	s.stats.NoSpaceSince = time.Time{}
	s.statsMu.Unlock()
	s.log.Warn().Str("path", s.path).Dur("after", s.opts.Now().Sub(p.since)).
		Msg("journal: writes succeed again; new requests are accepted")
}

// splitNewPuts divides a group whose commit failed for want of space into the
// Puts and Answered that would have stored a new key and the rest (duplicates,
// Outbox, Complete, GC), which usually fit in the file's free pages.
func splitNewPuts(group []*op) (newPuts, rest []*op) {
	for _, o := range group {
		if o.newKey() {
			newPuts = append(newPuts, o)
		} else {
			rest = append(rest, o)
		}
	}
	return newPuts, rest
}
