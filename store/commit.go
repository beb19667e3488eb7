package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// counts are the journal's sizes, kept in the meta bucket so Open need not scan.
type counts struct{ pending, outbox, done int }

func (c *counts) add(d counts) {
	c.pending += d.pending
	c.outbox += d.outbox
	c.done += d.done
}

func readCounts(meta *bolt.Bucket) (counts, error) {
	v := meta.Get(keyCounts)
	if v == nil {
		return counts{}, nil
	}
	return readCountsValue(v)
}

func writeCounts(meta *bolt.Bucket, c counts) error {
	var b []byte
	for _, n := range [...]int{c.pending, c.outbox, c.done} {
		if n < 0 {
			return fmt.Errorf("negative count in %+v (journal index out of step)", c)
		}
		b = binary.AppendUvarint(b, uint64(n))
	}
	return meta.Put(keyCounts, b)
}

// buckets are the journal's buckets inside one write transaction, and the
// committer's arena for the keys and values written in it.
type buckets struct {
	meta, keys, pending, outbox, expiry *bolt.Bucket
	mem                                 *arena
	// kx is the key index (keyindex.go) in the committer's transaction.
	kx keysTx
}

// arena hands out the memory of the keys and values a group commit writes. bbolt
// keeps the slices given to Put until the transaction ends, so the committer
// resets the arena only once its group is committed (or has failed): the same
// memory then serves the next group, instead of a few small allocations per
// write for the garbage collector. Only the committer uses it.
type arena struct {
	chunks [][]byte
	cur    int // index of the chunk being carved
	off    int // bytes of chunks[cur] handed out
}

const (
	arenaChunk     = 64 << 10
	arenaMaxChunks = 64 // what a reset keeps; a larger group allocates the rest
)

// buf returns an empty slice with room for size bytes. A nil arena, and a size
// beyond a quarter chunk, allocate.
func (a *arena) buf(size int) []byte {
	if a == nil || size > arenaChunk/4 {
		return make([]byte, 0, size)
	}
	for {
		if a.cur == len(a.chunks) {
			a.chunks = append(a.chunks, make([]byte, arenaChunk))
		}
		if c := a.chunks[a.cur]; a.off+size <= len(c) {
			b := c[a.off : a.off : a.off+size]
			a.off += size
			return b
		}
		a.cur, a.off = a.cur+1, 0
	}
}

// seqKey, outboxKey, expiryKey and state encode as the functions of the same
// names, in the arena.
func (b buckets) seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(b.mem.buf(8), seq)
}

func (b buckets) outboxKey(flushBy time.Time, seq uint64) []byte {
	return appendOutboxKey(b.mem.buf(16), flushBy, seq)
}

func (b buckets) expiryKey(doneAt time.Time, n uint64) []byte {
	return binary.BigEndian.AppendUint64(appendTimeKey(b.mem.buf(16), doneAt), n)
}

func (b buckets) state(st keyState) []byte { return appendState(b.mem.buf(stateSize(st)), st) }

// recordPool recycles the buffers of Put's pending records (getRecord, putRecord).
var recordPool sync.Pool

// maxPooledRecord is the largest record buffer putRecord keeps.
const maxPooledRecord = 64 << 10

// getRecord returns an empty buffer with room for size bytes.
func getRecord(size int) []byte {
	if p, ok := recordPool.Get().(*[]byte); ok && cap(*p) >= size {
		return (*p)[:0]
	}
	return make([]byte, 0, max(size, 4<<10))
}

// putRecord gives back a buffer of getRecord once nothing refers to it (the
// commit that wrote it is over).
func putRecord(b []byte) {
	if cap(b) <= maxPooledRecord {
		recordPool.Put(&b)
	}
}

// reset makes the arena's memory available again: call it only when no
// transaction holds slices from it.
func (a *arena) reset() {
	a.cur, a.off = 0, 0
	if len(a.chunks) > arenaMaxChunks {
		clear(a.chunks[arenaMaxChunks:])
		a.chunks = a.chunks[:arenaMaxChunks]
	}
}

func bucketsOf(tx *bolt.Tx) buckets {
	b := buckets{
		meta:    tx.Bucket(bucketMeta),
		keys:    tx.Bucket(bucketKeys),
		pending: tx.Bucket(bucketPending),
		outbox:  tx.Bucket(bucketOutbox),
		expiry:  tx.Bucket(bucketExpiry),
	}
	// Pending, key and expiry records are only ever added at the end (their
	// keys are a sequence, a slot in arrival order and a completion time):
	// fill their pages before splitting instead of leaving each one half empty
	// (bbolt's default for random inserts), so a group commit writes fewer
	// pages.
	if b.pending != nil {
		b.pending.FillPercent = appendFill
	}
	if b.keys != nil {
		b.keys.FillPercent = appendFill
	}
	if b.expiry != nil {
		b.expiry.FillPercent = appendFill
	}
	return b
}

// appendFill is the bbolt fill percent of the buckets whose keys only grow.
const appendFill = 1.0

// op is one write queued for the committer. Its apply function runs inside the
// group's transaction and may run more than once (when another member of the group
// fails, the group is rolled back and retried without it), so it must derive its
// results from the transaction alone and reset them first.
type op struct {
	Op
	apply func(b buckets, o *op) error

	// Results of the last apply.
	res   PutResult
	delta counts
	bytes int

	err  error
	done chan struct{}
	// notify, if set, is called with err once the op is committed or has
	// failed, on the committer's goroutine (submitAsync).
	notify func(error)
}

// finish closes o.done and calls o.notify.
func (o *op) finish() {
	close(o.done)
	if o.notify != nil {
		o.notify(o.err)
	}
}

// newKey reports whether o stored a key the journal did not know (a new Put,
// or Answered's record).
func (o *op) newKey() bool {
	return (o.Kind == OpPut || o.Kind == OpAnswered) && o.res.Dup == New
}

func (o *op) put(b *bolt.Bucket, k, v []byte) error {
	o.bytes += len(k) + len(v)
	return b.Put(k, v)
}

// enqueue queues ops for the next group commit, in order; it returns ErrClosed,
// queueing none, after Close.
func (s *Store) enqueue(ops ...*op) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	for _, o := range ops {
		o.done = make(chan struct{})
		s.queued.Add(1)
		s.ops <- o
	}
	return nil
}

// submit queues o for the next group commit and waits until it is committed or
// has failed.
func (s *Store) submit(o *op) error {
	if err := s.enqueue(o); err != nil {
		return err
	}
	<-o.done
	return o.err
}

// submitAll queues ops for the next group commit together and waits until
// each is committed or has failed; errs[i] is ops[i]'s outcome.
func (s *Store) submitAll(ops []*op) (errs []error) {
	errs = make([]error, len(ops))
	if err := s.enqueue(ops...); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for i, o := range ops {
		<-o.done
		errs[i] = o.err
	}
	return errs
}

// submitAsync queues o for the next group commit without waiting; o.notify is
// called with the outcome.
func (s *Store) submitAsync(o *op) {
	if err := s.enqueue(o); err != nil {
		o.err = err
		o.notify(err)
	}
}

// commitLoop is the only goroutine that writes through the group commit. It takes
// the writes queued while the previous commit ran (and, with MaxBatchDelay, those
// that arrive during the delay), up to MaxBatchSize, and commits them together.
func (s *Store) commitLoop() {
	defer close(s.stopped)
	// A fault reading the memory-mapped file (an I/O error, a page beyond its
	// end) panics instead of crashing the process; commit recovers it.
	debug.SetPanicOnFault(true)
	group := make([]*op, 0, s.opts.MaxBatchSize)
	mem := new(arena)
	busy := false // the previous group was large (Options.DelayUnderLoad, BusyGroupSize)
	// While the key table shrinks, a wait for writes longer than shrinkIdleStep
	// moves a step of it.
	idle := time.NewTimer(shrinkIdleStep)
	idle.Stop()
	defer idle.Stop()
	for {
		var first *op
		var ok bool
		if s.keys.shrinking() {
			idle.Reset(shrinkIdleStep)
			select {
			case first, ok = <-s.ops:
				idle.Stop()
			case <-idle.C:
				s.txMu.Lock() // as a commit's apply: Check reads the table under it
				s.keys.drainStep()
				s.txMu.Unlock()
				continue
			}
		} else {
			first, ok = <-s.ops
		}
		if !ok {
			return
		}
		group = s.fill(append(group[:0], first), !s.opts.DelayUnderLoad || busy)
		busy = len(group) >= s.opts.BusyGroupSize
		if p := s.broken.Load(); p != nil {
			s.fail(group, *p)
		} else {
			s.safeCommit(group, mem)
		}
		mem.reset()
		s.queued.Add(-int64(len(group)))
		clear(group)
	}
}

// safeCommit commits a group, turning a panic in bbolt's Begin, Commit or
// Rollback into a broken store: the group fails with an error wrapping
// ErrDamaged, and so does everything after it (bbolt's locks and pages are in an
// unknown state, so nothing else is attempted; restart and let OpenOrRecover
// verify the file). Panics in a write's own apply are caught by safeApply and
// fail only that write.
func (s *Store) safeCommit(group []*op, mem *arena) {
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		err := fmt.Errorf("%w: bbolt panicked in a commit: %v", ErrDamaged, p)
		s.broken.Store(&err)
		s.log.Error().Err(err).Str("path", s.path).Msg("journal broken: every later write fails; restart the gateway")
		for _, o := range group {
			select {
			case <-o.done:
				continue // already answered
			default:
			}
			o.err = err
			o.finish()
		}
		s.statsMu.Lock()
		s.stats.CommitErrors++
		s.statsMu.Unlock()
	}()
	s.commit(group, mem)
}

// fill adds the writes already queued to group and, when wait is set and
// MaxBatchDelay is positive, those arriving within it, up to MaxBatchSize.
func (s *Store) fill(group []*op, wait bool) []*op {
	for len(group) < s.opts.MaxBatchSize {
		select {
		case o, ok := <-s.ops:
			if !ok {
				return group
			}
			group = append(group, o)
			continue
		default:
		}
		break
	}
	if !wait || s.opts.MaxBatchDelay <= 0 || len(group) >= s.opts.MaxBatchSize {
		return group
	}
	timer := time.NewTimer(s.opts.MaxBatchDelay)
	defer timer.Stop()
	for len(group) < s.opts.MaxBatchSize {
		select {
		case o, ok := <-s.ops:
			if !ok {
				return group
			}
			group = append(group, o)
		case <-timer.C:
			return group
		}
	}
	return group
}

// commit applies a group in one transaction. A member whose apply fails is taken
// out with its error and the rest are retried, as bbolt's DB.Batch does; a failed
// commit fails every member, except that a commit that failed for want of space
// fails its Puts of new keys and retries the rest (ErrNoSpace). The writes take
// their keys and values from mem.
func (s *Store) commit(group []*op, mem *arena) {
	s.txMu.Lock()
	defer s.txMu.Unlock()
	for len(group) > 0 {
		tx, err := s.db.Begin(true)
		if err != nil {
			s.fail(group, fmt.Errorf("begin commit: %w", err))
			return
		}
		b := bucketsOf(tx)
		b.mem = mem
		s.keys.discard()
		b.kx = keysTx{x: s.keys, keys: b.keys, mem: mem}
		var delta counts
		bytes := 0
		failed := -1
		for i, o := range group {
			o.res, o.delta, o.bytes = PutResult{}, counts{}, 0
			if err := safeApply(b, o); err != nil {
				o.err = err
				failed = i
				break
			}
			delta.add(o.delta)
			bytes += o.bytes
		}
		if failed >= 0 {
			tx.Rollback()
			group[failed].finish()
			group = append(group[:failed], group[failed+1:]...)
			continue
		}
		sizeBefore := tx.Size() // the pages before this commit's (allocated as it commits)
		if err := s.finishTx(tx, b, delta, bytes, group); err != nil {
			if errors.Is(err, errMetaWritten) {
				// Not rolled back: what the group wrote is what the file now
				// shows, durable or not. Neither a failure (a new Put would be
				// refused, yet journaled) nor a retry (on top of it, with counts
				// that miss it) is true: stop, and let a restart verify the file.
				err = fmt.Errorf("%w: %w", ErrDamaged, err)
				s.broken.Store(&err)
				s.log.Error().Err(err).Str("path", s.path).Msg("journal broken: a commit failed after writing its meta page; every later write fails; restart the gateway")
				s.fail(group, err)
				return
			}
			if isNoSpace(err) {
				// The file could not grow (bbolt rolled the commit back). The new
				// keys fail; the rest is committed again without them: completions
				// and replies usually fit in the file's free pages, and they are what
				// lets the journal drain.
				cause := err
				err = fmt.Errorf("%w: %w", ErrNoSpace, cause)
				s.noSpaceFailed(cause)
				if newPuts, rest := splitNewPuts(group); len(newPuts) > 0 && len(rest) > 0 {
					s.fail(newPuts, err)
					group = rest
					continue
				}
			}
			s.fail(group, err)
			return
		}
		s.keys.apply()
		for _, o := range group {
			if o.newKey() {
				s.newKeysFitted(sizeBefore)
				break
			}
		}
		for _, o := range group {
			o.finish()
		}
		return
	}
}

// finishTx persists the new counts, runs the BeforeCommit hook and commits.
func (s *Store) finishTx(tx *bolt.Tx, b buckets, delta counts, bytes int, group []*op) error {
	s.statsMu.Lock()
	c := counts{s.stats.Pending, s.stats.Outbox, s.stats.Done}
	s.statsMu.Unlock()
	c.add(delta)
	if err := writeCounts(b.meta, c); err != nil {
		tx.Rollback()
		return err
	}
	if hook := s.opts.BeforeCommit; hook != nil {
		ops := make([]Op, len(group))
		for i, o := range group {
			ops[i] = o.Op
		}
		if err := hook(ops); err != nil {
			tx.Rollback()
			return fmt.Errorf("commit: %w", err)
		}
	}
	size := tx.Size()
	txid := tx.ID()
	if err := commitTx(tx); err != nil {
		if s.metaWritten(txid) {
			return fmt.Errorf("commit: %w: %w", errMetaWritten, err)
		}
		return fmt.Errorf("commit: %w", err)
	}
	used := s.usedBytes(size)
	s.used.Store(used)
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	st := &s.stats
	st.Pending, st.Outbox, st.Done = c.pending, c.outbox, c.done
	st.Commits++
	st.Ops += uint64(len(group))
	if len(group) > 1 {
		st.Batched += uint64(len(group))
	}
	st.MaxBatch = max(st.MaxBatch, len(group))
	st.BytesWritten += uint64(bytes)
	st.FileSize = size
	st.UsedBytes = used
	for _, o := range group {
		if o.Kind != OpPut {
			continue
		}
		if o.res.Dup == New {
			st.Puts++
		} else {
			st.Duplicates++
		}
	}
	return nil
}

// commitTx is bbolt's Tx.Commit; tests replace it (SetCommitTx).
var commitTx = (*bolt.Tx).Commit

// errMetaWritten marks a commit error that came after bbolt wrote the
// transaction's meta page (its fdatasync failed: ENOSPC from a thin-provisioned
// device or a network file system, EIO): bbolt "rolls back" its own state, but
// it reads the meta page from the file, so the commit is what later
// transactions see, while its durability is unknown.
var errMetaWritten = errors.New("the meta page was written")

// metaWritten reports whether the write transaction txid, whose Commit failed,
// is nevertheless the file's latest (its meta page was written); true when it
// cannot tell.
func (s *Store) metaWritten(txid int) bool {
	tx, err := s.db.Begin(false)
	if err != nil {
		return true
	}
	defer tx.Rollback()
	return tx.ID() >= txid
}

func (s *Store) fail(group []*op, err error) {
	s.statsMu.Lock()
	s.stats.CommitErrors++
	s.statsMu.Unlock()
	for _, o := range group {
		o.err = err
		o.finish()
	}
}

// safeApply turns a panic in an apply function into that member's error, so one
// bad write cannot stop the committer and strand every other writer. bbolt
// panics on damaged pages, so the error wraps ErrDamaged.
func safeApply(b buckets, o *op) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: panic in a journal write: %v", ErrDamaged, p)
		}
	}()
	return o.apply(b, o)
}
