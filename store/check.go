package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// maxCheckErrors bounds the problems Check reports.
const maxCheckErrors = 20

// Check verifies the database file (bbolt's Tx.Check: page structure, freelist)
// and the journal's own invariants: every key in the index points at its pending,
// outbox or expiry record, the index in memory finds every key at its slot and
// holds no other, there are no records without a key, and the stored counts
// match. It does not decode pending or outbox record bodies (Pending and
// OutboxEntries report those). It reads the whole file, completed keys included:
// meant for tests and offline tools, not the request path. It returns nil, an
// error joining the problems found, or ErrClosed after Close.
func (s *Store) Check() error {
	var errs []error
	report := func(format string, args ...any) {
		if len(errs) < maxCheckErrors {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	s.txMu.Lock() // no commit while bbolt checks the freelist
	defer s.txMu.Unlock()
	err := s.view(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			report("bbolt: %w", err)
		}
		b := bucketsOf(tx)
		var c counts
		s.keys.mu.RLock()
		defer s.keys.mu.RUnlock()
		slots := 0
		err := b.keys.ForEach(func(sk, v []byte) error {
			slots++
			kb, v, ok := splitKeyRecord(v)
			if !ok || len(sk) != 8 {
				report("key index: slot %x: a record too short for its key", sk)
				return nil
			}
			k, err := decodeKey(kb)
			if err != nil {
				report("key index: %w", err)
			}
			if _, slot, found := s.keys.find(b.keys, kb, false); !found || slot != binary.BigEndian.Uint64(sk) {
				report("key %s: at slot %x, but the index in memory finds it at %x (found: %v)", k, sk, slot, found)
			}
			st, err := decodeState(v)
			if err != nil {
				report("key %s: %w", k, err)
				return nil
			}
			switch st.state {
			case statePending:
				c.pending++
				if b.pending.Get(seqKey(st.seq)) == nil {
					report("key %s: pending at seq %d, but no pending record", k, st.seq)
				}
			case stateOutbox:
				c.outbox++
				if b.outbox.Get(outboxKey(st.flushBy, st.seq)) == nil {
					report("key %s: in the outbox at seq %d, but no outbox record", k, st.seq)
				}
			case stateDone:
				c.done++
				if !bytes.Equal(b.expiry.Get(expiryKey(st.doneAt, st.n)), kb) {
					report("key %s: completed at %s, but no expiry record", k, st.doneAt)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n := s.keys.len(); n != slots {
			report("the index in memory holds %d slots, the keys bucket %d", n, slots)
		}
		if n := b.pending.Stats().KeyN; n != c.pending {
			report("%d pending records, %d pending keys", n, c.pending)
		}
		if n := b.outbox.Stats().KeyN; n != c.outbox {
			report("%d outbox records, %d keys in the outbox", n, c.outbox)
		}
		stored, err := readCounts(b.meta)
		if err != nil {
			report("meta: %w", err)
		} else if stored != c {
			report("stored counts %+v, index holds %+v", stored, c)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: check: %w", err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("store: check %s: %w", s.Path(), errors.Join(errs...))
	}
	return nil
}
