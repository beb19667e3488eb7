package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// gcChunk is the most completed keys one GC commit drops, so GC never holds up
// the group commit for long.
const gcChunk = 1024

// Put stores e unless its key is already known, in one group commit, and returns
// only once that commit is durable (or has failed): acknowledge the request to the
// broker only after Put returns a nil error.
//
// For a new key Put assigns e.Seq (and e.Received, if zero, from Options.Now) and
// returns New. For a key that is pending or in the outbox it stores nothing and
// returns DupPending; for a key completed within Options.Retention it returns
// DupDone with the stored reply. The duplicate check and the insert are one
// transaction, so two concurrent Puts of one key yield exactly one New.
//
// Put returns ErrInvalid for a nil entry or a bad key, ErrTooLarge for an entry
// that encodes to more than MaxRecordSize bytes, ErrFull for a new key while the
// journal holds more than Options.MaxBytes, ErrNoSpace (wrapped) for a new key
// when the file cannot grow, ErrClosed after Close, and the commit's error
// (wrapping Options.BeforeCommit's, if that failed it).
func (s *Store) Put(e *Entry) (PutResult, error) {
	if e == nil {
		return PutResult{}, fmt.Errorf("store: put: %w: nil entry", ErrInvalid)
	}
	if err := validKey(e.Key); err != nil {
		return PutResult{}, fmt.Errorf("store: put %s: %w", e.Key, err)
	}
	now := s.opts.Now()
	c := *e
	if c.Received.IsZero() {
		c.Received = now
	}
	rec := appendEntry(getRecord(seqHeader+entrySize(&c)), &c, 0)
	defer putRecord(rec) // bbolt holds it until the commit, which submit waits for
	if len(rec) > MaxRecordSize {
		return PutResult{}, fmt.Errorf("store: put %s: %w: %d bytes", e.Key, ErrTooLarge, len(rec))
	}
	kb := encodeKey(e.Key)
	retention := s.opts.Retention
	o := &op{Op: Op{Kind: OpPut, Key: e.Key}}
	o.apply = func(b buckets, o *op) error {
		stale := false
		v, slot, found := b.kx.get(kb)
		if found {
			st, err := decodeState(v)
			if err != nil {
				return fmt.Errorf("key index: %w", err)
			}
			if o.res, stale = known(b, st, now, retention); !stale {
				return nil
			}
		}
		if err := s.checkNewKey(1); err != nil { // refuse new keys only
			return err
		}
		seq, err := b.pending.NextSequence()
		if err != nil {
			return err
		}
		setSeq(rec, seq)
		if err := o.put(b.pending, b.seqKey(seq), rec); err != nil {
			return err
		}
		if !stale {
			slot = seq // a forgotten key keeps its slot
		}
		if err := b.kx.put(o, kb, slot, b.state(keyState{state: statePending, seq: seq}), !stale); err != nil {
			return err
		}
		o.res = PutResult{Dup: New, Seq: seq}
		o.delta.pending = 1
		if stale {
			o.delta.done = -1
		}
		return nil
	}
	if err := s.submit(o); err != nil {
		return PutResult{}, fmt.Errorf("store: put %s: %w", e.Key, err)
	}
	if o.res.Dup == New {
		e.Seq, e.Received = o.res.Seq, c.Received
	}
	return o.res, nil
}

// known is Put's answer for a key the journal knows in state st, or stale when
// it was completed longer ago than retention (forgotten: stored afresh).
func known(b buckets, st keyState, now time.Time, retention time.Duration) (res PutResult, stale bool) {
	switch {
	case st.state == stateOutbox:
		return outboxDup(b.outbox, st), false
	case st.state != stateDone:
		return PutResult{Dup: DupPending, Seq: st.seq}, false
	case now.Sub(st.doneAt) < retention:
		return PutResult{Dup: DupDone, Reply: bytes.Clone(st.reply)}, false
	}
	return PutResult{}, true
}

// outboxDup is Put's answer for a key whose reply is in the outbox: a reply that
// may have been delivered is the answer (DupDone), so that a repeat never
// contradicts it; an unsent one is still to come (DupPending). An unreadable
// record counts as pending.
func outboxDup(outbox *bolt.Bucket, st keyState) PutResult {
	oe, err := decodeOutbox(outbox.Get(outboxKey(st.flushBy, st.seq)), st.seq)
	if err != nil || oe.Unsent {
		return PutResult{Dup: DupPending, Seq: st.seq}
	}
	return PutResult{Dup: DupDone, Reply: oe.Reply}
}

// Outbox keeps reply for key k durably until Complete. Call it before the reply
// is first handed to the broker: if the process dies before the broker
// acknowledges it, the reply is still there to be published again, unchanged, and
// a duplicate of the request gets the same reply (DupDone), never a second,
// different answer. The pending entry leaves Pending (its Input is dropped) and
// appears in OutboxEntries, ordered by flushBy (usually the request's deadline;
// zero sorts last). Calling Outbox again for a key in the outbox replaces its
// reply and flushBy. Like Put, it returns once durable.
//
// Outbox returns ErrNotPending when k is neither pending nor in the outbox,
// ErrInvalid for a bad key, ErrTooLarge for a reply over MaxRecordSize,
// ErrCorrupt when k's pending record is corrupt, ErrClosed after Close, and the
// commit's error.
func (s *Store) Outbox(k Key, reply []byte, flushBy time.Time) error {
	return s.outbox(k, reply, flushBy, false)
}

// OutboxUnsent is Outbox for a reply that is not being handed to the broker (it
// is away): OutboxEntries marks it Unsent, so the caller may rewrite it before it
// is first published, and a duplicate of the request is DupPending until then.
// Replacing an unsent reply with Outbox marks it sent. Errors as Outbox.
func (s *Store) OutboxUnsent(k Key, reply []byte, flushBy time.Time) error {
	return s.outbox(k, reply, flushBy, true)
}

func (s *Store) outbox(k Key, reply []byte, flushBy time.Time, unsent bool) error {
	o, err := outboxOp(k, reply, flushBy, unsent)
	if err != nil {
		return err
	}
	if err := s.submit(o); err != nil {
		return fmt.Errorf("store: outbox %s: %w", k, err)
	}
	return nil
}

// OutboxItem is one reply for OutboxAll.
type OutboxItem struct {
	Key
	Reply   []byte
	FlushBy time.Time
	// Unsent writes it as OutboxUnsent does, instead of as Outbox.
	Unsent bool
}

// OutboxAll is Outbox (OutboxUnsent for an item marked Unsent) of each item,
// queued for the group commit together and waited for together: one wait
// instead of one per reply. The writes are separate (each fails or succeeds on
// its own, as with Outbox, and a key may appear more than once: the last one
// wins); errs[i] is item i's error.
func (s *Store) OutboxAll(items []OutboxItem) (errs []error) {
	errs = make([]error, len(items))
	ops := make([]*op, 0, len(items))
	idx := make([]int, 0, len(items))
	for i, it := range items {
		o, err := outboxOp(it.Key, it.Reply, it.FlushBy, it.Unsent)
		if err != nil {
			errs[i] = err
			continue
		}
		ops = append(ops, o)
		idx = append(idx, i)
	}
	for j, err := range s.submitAll(ops) {
		if err != nil {
			errs[idx[j]] = fmt.Errorf("store: outbox %s: %w", items[idx[j]].Key, err)
		}
	}
	return errs
}

// outboxOp is Outbox's write; it refuses a bad key or an oversized reply.
func outboxOp(k Key, reply []byte, flushBy time.Time, unsent bool) (*op, error) {
	if err := validKey(k); err != nil {
		return nil, fmt.Errorf("store: outbox %s: %w", k, err)
	}
	if len(reply) > MaxRecordSize {
		return nil, fmt.Errorf("store: outbox %s: %w: %d-byte reply", k, ErrTooLarge, len(reply))
	}
	kb := encodeKey(k)
	o := &op{Op: Op{Kind: OpOutbox, Key: k}}
	o.apply = func(b buckets, o *op) error {
		v, slot, found := b.kx.get(kb)
		if !found {
			return ErrNotPending
		}
		st, err := decodeState(v)
		if err != nil {
			return fmt.Errorf("key index: %w", err)
		}
		// The outbox record keeps the entry's fields but its input: they are
		// copied from the current record, which is then deleted.
		var from *bolt.Bucket
		var fromKey []byte
		var kind byte
		switch st.state {
		case statePending:
			from, fromKey, kind = b.pending, b.seqKey(st.seq), kindEntry
		case stateOutbox:
			from, fromKey, kind = b.outbox, b.outboxKey(st.flushBy, st.seq), kindOutbox
		default:
			return ErrNotPending
		}
		head, attrs, err := outboxParts(from.Get(fromKey), kind, st.seq)
		if err != nil {
			if kind == kindEntry {
				return fmt.Errorf("pending record %d: %w", st.seq, err)
			}
			return fmt.Errorf("outbox record %d: %w", st.seq, err)
		}
		// Copied before the delete: head and attrs alias the record's page.
		rec := appendOutbox(b.mem.buf(outboxSize(head, attrs, reply)), head, attrs, st.seq, flushBy, reply, unsent)
		if len(rec) > MaxRecordSize {
			return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(rec))
		}
		if err := from.Delete(fromKey); err != nil {
			return err
		}
		if kind == kindEntry {
			o.delta = counts{pending: -1, outbox: 1}
		}
		if err := o.put(b.outbox, b.outboxKey(flushBy, st.seq), rec); err != nil {
			return err
		}
		return b.kx.put(o, kb, slot, b.state(keyState{state: stateOutbox, seq: st.seq, flushBy: flushBy}), false)
	}
	return o, nil
}

// Complete records that the reply for k was handed to the broker: k leaves
// Pending or OutboxEntries, and k with reply is remembered for Options.Retention
// so a redelivered duplicate gets DupDone. Like Put, it returns once durable.
//
// Complete is idempotent: for a key already completed within Retention it keeps
// the first reply and writes nothing. A key that was never put (for example a
// request rejected before Put) is recorded as completed too, so its duplicates
// get the same reply. Complete returns ErrInvalid for a bad key, ErrClosed after
// Close, and the commit's error.
func (s *Store) Complete(k Key, reply []byte) error {
	o, err := s.completeOp(k, reply, false)
	if err != nil {
		return err
	}
	if err := s.submit(o); err != nil {
		return fmt.Errorf("store: complete %s: %w", k, err)
	}
	return nil
}

// CompleteAsync is Complete without waiting for the commit: done is called
// once with what Complete would have returned, when the write is durable or has
// failed. It is called on the journal's committer goroutine, so it must be
// quick and must not block or call the Store (a panic in it is recovered and
// logged); it is called before CompleteAsync returns when the arguments are
// refused or the store is closed. Close commits the writes already queued, so
// every done is called by the time Close returns.
func (s *Store) CompleteAsync(k Key, reply []byte, done func(error)) {
	o, err := s.completeOp(k, reply, false)
	if err != nil {
		done(err)
		return
	}
	o.notify = func(err error) {
		defer func() {
			if p := recover(); p != nil {
				s.log.Error().Interface("panic", p).Stringer("key", k).Msg("panic in a CompleteAsync callback (recovered)")
			}
		}()
		if err != nil {
			err = fmt.Errorf("store: complete %s: %w", k, err)
		}
		done(err)
	}
	s.submitAsync(o)
}

// completeOp is Complete's write, and with onlyNew Answered's; it refuses a bad
// key or an oversized reply.
func (s *Store) completeOp(k Key, reply []byte, onlyNew bool) (*op, error) {
	name, kind := "complete", OpComplete
	if onlyNew {
		name, kind = "answered", OpAnswered
	}
	if err := validKey(k); err != nil {
		return nil, fmt.Errorf("store: %s %s: %w", name, k, err)
	}
	if len(reply) > MaxRecordSize {
		return nil, fmt.Errorf("store: %s %s: %w: %d-byte reply", name, k, ErrTooLarge, len(reply))
	}
	kb := encodeKey(k)
	now := s.opts.Now()
	retention := s.opts.Retention
	o := &op{Op: Op{Kind: kind, Key: k}}
	o.apply = func(b buckets, o *op) error {
		stale := false
		v, slot, found := b.kx.get(kb)
		if found {
			st, err := decodeState(v)
			if err != nil {
				return fmt.Errorf("key index: %w", err)
			}
			if onlyNew {
				if o.res, stale = known(b, st, now, retention); !stale {
					return nil
				}
			}
			switch st.state {
			case statePending:
				err = b.pending.Delete(b.seqKey(st.seq))
				o.delta.pending = -1
			case stateOutbox:
				err = b.outbox.Delete(b.outboxKey(st.flushBy, st.seq))
				o.delta.outbox = -1
			case stateDone:
				if now.Sub(st.doneAt) < retention {
					return nil
				}
				o.delta.done = -1 // forgotten; remembered afresh below
			}
			if err != nil {
				return err
			}
		}
		if onlyNew { // new keys only, forgotten ones included, as Put
			if err := s.checkNewKey(answeredShare); err != nil {
				return err
			}
		}
		n, err := b.expiry.NextSequence()
		if err != nil {
			return err
		}
		if err := o.put(b.expiry, b.expiryKey(now, n), kb); err != nil {
			return err
		}
		o.delta.done++
		o.res = PutResult{Dup: New}
		if !found {
			if slot, err = b.kx.newSlot(); err != nil {
				return err
			}
		}
		return b.kx.put(o, kb, slot, b.state(keyState{state: stateDone, doneAt: now, n: n, reply: reply}), !found)
	}
	return o, nil
}

// Answered records reply as the answer of a request that was answered without
// being put (an answer from its estimate at admission), unless the journal
// knows k, in one group commit, and returns once that commit is durable: a copy
// of the request the broker delivers again, even after a restart, then finds k
// completed with this reply (DupDone), as a journaled request's copies do. For a
// key the journal knows it writes nothing and returns what Put would
// (DupPending, or DupDone with the stored reply); a key completed longer ago
// than Retention is recorded afresh.
//
// Unlike Complete it refuses a new key (one completed longer ago than
// Retention included, as Put does) while its disk has no space (ErrNoSpace,
// wrapped), and with ErrFull already while the journal holds more than half of
// Options.MaxBytes (Put: all of it), so that answers nobody waits on cannot
// fill the journal and have Put refuse every request; otherwise it returns
// Complete's errors.
func (s *Store) Answered(k Key, reply []byte) (PutResult, error) {
	o, err := s.completeOp(k, reply, true)
	if err != nil {
		return PutResult{}, err
	}
	if err := s.submit(o); err != nil {
		return PutResult{}, fmt.Errorf("store: answered %s: %w", k, err)
	}
	return o.res, nil
}

// Pending returns every entry without a reply, in Seq (arrival) order: the
// requests to recover after a restart. It reads only the pending records, not the
// completed keys. A corrupt record is skipped, and logged and counted in
// Stats.Corrupt the first time this Store meets it (not at every call: it stays
// in the file); it does not stop the others. Pending returns ErrClosed after
// Close.
func (s *Store) Pending() ([]*Entry, error) {
	var out []*Entry
	err := s.view(func(tx *bolt.Tx) error {
		out = make([]*Entry, 0, s.Stats().Pending)
		c := tx.Bucket(bucketPending).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) != 8 {
				s.skipCorrupt(fmt.Errorf("%w: %d-byte pending key", ErrCorrupt, len(k)), "pending", k)
				continue
			}
			e, err := decodeEntry(v, binary.BigEndian.Uint64(k))
			if err != nil {
				s.skipCorrupt(err, "pending", k)
				continue
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: pending: %w", err)
	}
	return out, nil
}

// OutboxEntries returns the replies waiting in the outbox, ordered by FlushBy
// (then Seq). Corrupt records are handled as in Pending. It returns ErrClosed
// after Close.
func (s *Store) OutboxEntries() ([]OutboxEntry, error) {
	var out []OutboxEntry
	err := s.view(func(tx *bolt.Tx) error {
		out = make([]OutboxEntry, 0, s.Stats().Outbox)
		c := tx.Bucket(bucketOutbox).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) != 16 {
				s.skipCorrupt(fmt.Errorf("%w: %d-byte outbox key", ErrCorrupt, len(k)), "outbox", k)
				continue
			}
			e, err := decodeOutbox(v, binary.BigEndian.Uint64(k[8:]))
			if err != nil {
				s.skipCorrupt(err, "outbox", k)
				continue
			}
			out = append(out, *e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: outbox entries: %w", err)
	}
	return out, nil
}

// GC forgets completed keys (and their replies) completed at or before
// now - Options.Retention, and returns how many it dropped. It commits in chunks
// through the group commit, so it delays Puts by at most one chunk. Call it
// periodically; Put already ignores expired keys, so GC only reclaims space.
// A key record that fails to decode, named by an expiry record GC drops, is
// dropped too (counted in Stats.Corrupt and logged, and among the keys dropped).
// It returns ErrClosed after Close.
func (s *Store) GC(now time.Time) (int, error) {
	cutoff := nanos(now.Add(-s.opts.Retention))
	total := 0
	for {
		var dropped int
		var more bool
		type corruptKey struct {
			kb  []byte
			err error
		}
		var corrupt []corruptKey
		o := &op{Op: Op{Kind: OpGC}}
		o.apply = func(b buckets, o *op) error {
			dropped, more, corrupt = 0, false, nil
			var dead [][]byte
			c := b.expiry.Cursor()
			for k, kb := c.First(); k != nil; k, kb = c.Next() {
				if len(dead) == gcChunk {
					more = true
					break
				}
				if len(k) != 16 {
					return fmt.Errorf("%w: %d-byte expiry key", ErrCorrupt, len(k))
				}
				doneAt := int64(binary.BigEndian.Uint64(k) ^ (1 << 63))
				if doneAt > cutoff {
					break
				}
				dead = append(dead, bytes.Clone(k))
				v, slot, found := b.kx.get(kb)
				if !found {
					continue
				}
				// The key may have been put and completed again since: drop it only
				// if this expiry record is its current one.
				st, err := decodeState(v)
				switch {
				case err != nil:
					// Which state it held cannot be told, but its expiry record says
					// it was completed past the retention: drop it as expired. Kept,
					// it could never be read (a Put or Lookup of the key fails with
					// ErrCorrupt) nor forgotten, once its expiry record is gone. (Were
					// it a newer, pending state, put after this expiry, the next
					// start's verification finds the pending count off and
					// re-indexes the request.)
					corrupt = append(corrupt, corruptKey{bytes.Clone(kb), err})
				case st.state != stateDone || nanos(st.doneAt) != doneAt || st.n != binary.BigEndian.Uint64(k[8:]):
					continue
				}
				if err := b.kx.del(kb, slot); err != nil {
					return err
				}
				dropped++
			}
			for _, k := range dead {
				if err := b.expiry.Delete(k); err != nil {
					return err
				}
			}
			o.delta.done = -dropped
			return nil
		}
		if err := s.submit(o); err != nil {
			return total, fmt.Errorf("store: gc: %w", err)
		}
		for _, c := range corrupt {
			s.countCorrupt(fmt.Errorf("%w (dropped by GC: its expiry record is past the retention)", c.err), "keys", c.kb)
		}
		total += dropped
		if !more {
			return total, nil
		}
	}
}

// stateOf reads k's key record in tx; ok is false for an unknown key. The
// state's reply aliases the page: copy it before tx ends.
func (s *Store) stateOf(tx *bolt.Tx, kb []byte) (st keyState, ok bool, err error) {
	s.keys.mu.RLock()
	v, _, found := s.keys.find(tx.Bucket(bucketKeys), kb, false)
	s.keys.mu.RUnlock()
	if !found {
		return keyState{}, false, nil
	}
	if st, err = decodeState(v); err != nil {
		return keyState{}, false, fmt.Errorf("key index: %w", err)
	}
	return st, true, nil
}

// unlessUnknown runs fn in a read transaction (view) unless the key table has
// no slot for the encoded key kb, which then has no record: as a Lookup of a
// new request's key finds, the usual case, where the transaction would cost
// most of it (BenchmarkLookup). The table is the applied one that find reads;
// its answer can be a commit old, as find's can. ErrClosed and a broken
// journal's error are returned either way.
func (s *Store) unlessUnknown(kb []byte, fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	closed, broken := s.closed, s.broken.Load()
	s.mu.RUnlock()
	switch {
	case closed:
		return ErrClosed
	case broken != nil:
		return *broken
	case !s.keys.has(kb):
		return nil
	}
	return s.view(fn)
}

// OutboxEntry returns k's reply in the outbox as it is now, or nil when k is not
// in the outbox (it was completed, or never got there). A caller that read
// OutboxEntries a while ago uses it to check that an entry is still there, and
// still as it was, before acting on it. It returns ErrInvalid for a bad key,
// ErrCorrupt (wrapped) for an unreadable record and ErrClosed after Close.
func (s *Store) OutboxEntry(k Key) (*OutboxEntry, error) {
	if err := validKey(k); err != nil {
		return nil, fmt.Errorf("store: outbox entry %s: %w", k, err)
	}
	var out *OutboxEntry
	kb := encodeKey(k)
	err := s.unlessUnknown(kb, func(tx *bolt.Tx) error {
		st, ok, err := s.stateOf(tx, kb)
		if err != nil || !ok || st.state != stateOutbox {
			return err
		}
		out, err = decodeOutbox(tx.Bucket(bucketOutbox).Get(outboxKey(st.flushBy, st.seq)), st.seq)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: outbox entry %s: %w", k, err)
	}
	return out, nil
}

// Lookup reports, without writing, what Put would say of key k now: New for an
// unknown key (or one completed longer ago than Retention), DupPending, or DupDone
// with a copy of the stored reply. The answer can change as soon as it is
// returned; Put remains the authority. It lets a caller recognise a duplicate
// before deciding to refuse a request (for example under overload).
//
// Lookup returns ErrInvalid for a bad key, ErrCorrupt for a corrupt key record and
// ErrClosed after Close.
func (s *Store) Lookup(k Key) (PutResult, error) {
	if err := validKey(k); err != nil {
		return PutResult{}, fmt.Errorf("store: lookup %s: %w", k, err)
	}
	now := s.opts.Now()
	var res PutResult
	kb := encodeKey(k)
	err := s.unlessUnknown(kb, func(tx *bolt.Tx) error {
		st, ok, err := s.stateOf(tx, kb)
		if err != nil || !ok {
			return err
		}
		switch {
		case st.state == stateOutbox:
			res = outboxDup(tx.Bucket(bucketOutbox), st)
		case st.state != stateDone:
			res = PutResult{Dup: DupPending, Seq: st.seq}
		case now.Sub(st.doneAt) < s.opts.Retention:
			res = PutResult{Dup: DupDone, Reply: bytes.Clone(st.reply)}
		}
		return nil
	})
	if err != nil {
		return PutResult{}, fmt.Errorf("store: lookup %s: %w", k, err)
	}
	return res, nil
}
