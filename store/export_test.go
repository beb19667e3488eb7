package store

import (
	"bytes"
	"hash/maphash"
	"time"

	bolt "go.etcd.io/bbolt"
)

// PagesWritten is bbolt's count of pages written since s was opened (one per
// node written, whatever its size): the journal's write cost in benchmarks.
func PagesWritten(s *Store) int64 {
	st := s.db.Stats()
	return st.TxStats.GetWrite()
}

// SetDiskRoom replaces the statfs check of the no-space state (diskRoom) until
// the test ends.
func SetDiskRoom(t interface{ Cleanup(func()) }, f func(path string, n int64) bool) {
	old := diskHasRoom
	diskHasRoom = f
	t.Cleanup(func() { diskHasRoom = old })
}

// SetCommitTx replaces bbolt's Tx.Commit in the group commit (commitTx) until
// the test ends.
func SetCommitTx(t interface{ Cleanup(func()) }, f func(tx *bolt.Tx) error) {
	old := commitTx
	commitTx = f
	t.Cleanup(func() { commitTx = old })
}

// CloseWaiting reports whether s's lock is taken or wanted exclusively (Close
// waits for it): a reader would now block.
func CloseWaiting(s *Store) bool {
	if s.mu.TryRLock() {
		s.mu.RUnlock()
		return false
	}
	return true
}

// SetCrashPoint makes f run at each step of OpenOrRecover's salvage (crashPoint)
// until the test ends.
func SetCrashPoint(t interface{ Cleanup(func()) }, f func(step string)) {
	old := crashPoint
	crashPoint = f
	t.Cleanup(func() { crashPoint = old })
}

// SetLinkFile replaces os.Link in OpenOrRecover's salvage (linkFile) until the
// test ends.
func SetLinkFile(t interface{ Cleanup(func()) }, f func(oldname, newname string) error) {
	old := linkFile
	linkFile = f
	t.Cleanup(func() { linkFile = old })
}

// SetSalvageTxBytes sets the size of a salvage's transactions (salvageTxBytes)
// until the test ends.
func SetSalvageTxBytes(t interface{ Cleanup(func()) }, n int) {
	old := salvageTxBytes
	salvageTxBytes = n
	t.Cleanup(func() { salvageTxBytes = old })
}

// EncodeKey is k as the key index stores it (encodeKey).
func EncodeKey(k Key) []byte { return encodeKey(k) }

// KeySlot returns the key of kb's record in a schema 2 keys bucket (found by
// a scan), or nil.
func KeySlot(keys interface {
	ForEach(func(k, v []byte) error) error
}, kb []byte) []byte {
	var slot []byte
	keys.ForEach(func(k, v []byte) error {
		if got, _, ok := splitKeyRecord(v); ok && bytes.Equal(got, kb) {
			slot = bytes.Clone(k)
		}
		return nil
	})
	return slot
}

// SchemaVersion is the journal layout this build writes; SchemaKeysByKey the
// first one, which it migrates.
const SchemaVersion, SchemaKeysByKey = schemaVersion, schemaKeysByKey

// SetLockOpened makes f run each time a journal file (or a compaction's or
// salvage's new file) has been opened and its lock is about to be waited for
// (lockOpened), until the test ends.
func SetLockOpened(t interface{ Cleanup(func()) }, f func(path string)) {
	old := lockOpened
	lockOpened = f
	t.Cleanup(func() { lockOpened = old })
}

// SetCorruptReportLimit sets the most corrupt records a Store remembers having
// reported (corruptReportLimit) until the test ends.
func SetCorruptReportLimit(t interface{ Cleanup(func()) }, n int) {
	old := corruptReportLimit
	corruptReportLimit = n
	t.Cleanup(func() { corruptReportLimit = old })
}

// SetKeyHash makes the key indexes of stores opened until the test ends hash
// keys with h.
func SetKeyHash(t interface{ Cleanup(func()) }, h func(seed maphash.Seed, b []byte) uint64) {
	old := keyHash
	keyHash = h
	t.Cleanup(func() { keyHash = old })
}

// EncodeState is a key's state record: pending at seq, or done at doneAt with
// expiry number n and reply (schema 1's keys bucket values).
func EncodeState(pending bool, seq uint64, doneAt time.Time, n uint64, reply []byte) []byte {
	if pending {
		return encodeState(keyState{state: statePending, seq: seq})
	}
	return encodeState(keyState{state: stateDone, doneAt: doneAt, n: n, reply: reply})
}

// SplitKeyRecord is splitKeyRecord.
func SplitKeyRecord(v []byte) (kb, state []byte, ok bool) { return splitKeyRecord(v) }
