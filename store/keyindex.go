package store

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The key index (schema 2). Each key the journal knows has one record in the
// keys bucket, under a slot in arrival order:
//
//	keys   slotKey(slot) -> appendBytes(encodeKey(k)) + state record (appendState)
//
// A request's slot is its seq (Put), so the records a group commit writes (the
// new requests' keys, and the state changes of requests that arrived a few
// milliseconds earlier) sit on the bucket's last pages, whichever devices they
// come from. Keyed by application, device and id instead (schema 1), every
// commit rewrote a page of the index per device it touched: with 64 devices
// about 50 pages per commit against 20 with 8 (docs/benchmarks.md, "The key
// index in arrival order"). A key never put (Answered, or Complete of an
// unknown key) takes a slot of its own, slotAnswered plus the bucket's
// sequence, at the end of the upper half.
//
// A key is found through a hash table in memory (keyIndex): the hash of its
// encoding to its slots, the record's own copy of the key deciding between
// slots that share a hash. The table holds every key in the bucket, so its
// size follows the keys remembered (store.retention's worth of requests, about
// 38 bytes each); Open builds it from the bucket.

// slotAnswered is the first slot of the keys that were never put.
const slotAnswered = 1 << 63

// slotKey is a slot's key in the keys bucket.
func slotKey(b []byte, slot uint64) []byte { return binary.BigEndian.AppendUint64(b, slot) }

// appendKeyRecord appends a keys bucket record: the key, then its state record.
func appendKeyRecord(b, kb, state []byte) []byte { return append(appendBytes(b, kb), state...) }

// splitKeyRecord returns a keys bucket record's key and state record; ok is
// false for a record too short for the length it gives.
func splitKeyRecord(v []byte) (kb, state []byte, ok bool) {
	n, w := binary.Uvarint(v)
	if w <= 0 || n > uint64(len(v)-w) {
		return nil, nil, false
	}
	return v[w : w+int(n)], v[w+int(n):], true
}

// keyIndex finds keys in the keys bucket: the hash of a key's encoding to its
// slot (m, or old while the table shrinks), and to further slots when keys
// share a hash (more). The committer stages its changes while a transaction
// runs (staged) and applies them once the transaction is committed; readers
// see only applied changes, under mu.
type keyIndex struct {
	seed maphash.Seed
	mu   sync.RWMutex
	m    map[uint64]uint64
	// old, while the table shrinks, is the map m was when it began to: Go's
	// maps do not give memory back, so once m holds less than a quarter of the
	// most hashes it has held (peak; after a burst of keys has expired) a new
	// map takes its place, growing as every apply moves shrinkStep hashes from
	// old to it until old is empty (then nil). A hash is in m or in old, never
	// in both.
	old  map[uint64]uint64
	more map[uint64][]uint64
	// hash is keyHash, with seed.
	hash func(maphash.Seed, []byte) uint64

	staged []stagedSlot // the committer's only
	peak   int
}

// shrinkBelow is the size under which the index is never shrunk; shrinkStep
// how many hashes each apply moves from the old map to the new one while it
// shrinks (a fraction of a millisecond of the committer's time, and of the
// readers' wait, per commit).
const (
	shrinkBelow = 1 << 16
	shrinkStep  = 2048
)

// shrinkIdleStep is how long the committer waits for a write before it moves a
// step of a shrinking table by itself (drainStep): a journal whose traffic has
// stopped, with GC's commit once a minute its only one, gives the memory back
// within a second or two instead of a step a minute, and a write that comes
// meanwhile waits for one step at most.
const shrinkIdleStep = 10 * time.Millisecond

// stagedSlot is a change to the index made by the transaction in progress.
type stagedSlot struct {
	h, slot uint64
	add     bool // else removed
}

func newKeyIndex() *keyIndex {
	return &keyIndex{seed: maphash.MakeSeed(), m: map[uint64]uint64{}, more: map[uint64][]uint64{}, hash: keyHash}
}

// keyHash is the key index's hash (tests replace it to make keys collide).
var keyHash = maphash.Bytes

// len is the number of slots in the index.
func (x *keyIndex) len() int {
	n := len(x.m) + len(x.old)
	for _, s := range x.more {
		n += len(s)
	}
	return n
}

// first returns the map that holds hash h's first slot (m or old), or nil.
func (x *keyIndex) first(h uint64) map[uint64]uint64 {
	if _, ok := x.m[h]; ok {
		return x.m
	}
	if _, ok := x.old[h]; ok {
		return x.old
	}
	return nil
}

// has reports whether the applied index has a slot for the encoded key kb's
// hash (kb's or another key's sharing it), taking mu.
func (x *keyIndex) has(kb []byte) bool {
	h := x.hash(x.seed, kb)
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.first(h) != nil
}

// slots appends the applied slots of hash h to dst.
func (x *keyIndex) slots(dst []uint64, h uint64) []uint64 {
	if m := x.first(h); m != nil {
		dst = append(dst, m[h])
		dst = append(dst, x.more[h]...)
	}
	return dst
}

func (x *keyIndex) insert(h, slot uint64) {
	if x.first(h) == nil {
		x.m[h] = slot
		return
	}
	x.more[h] = append(x.more[h], slot)
}

func (x *keyIndex) remove(h, slot uint64) {
	rest := x.more[h]
	if m := x.first(h); m != nil && m[h] == slot {
		if len(rest) == 0 {
			delete(m, h)
			return
		}
		m[h], rest = rest[0], rest[1:]
	} else if i := slices.Index(rest, slot); i >= 0 {
		rest = append(rest[:i], rest[i+1:]...)
	}
	if len(rest) == 0 {
		delete(x.more, h)
	} else {
		x.more[h] = rest
	}
}

// discard drops the staged changes (the transaction was rolled back, or is
// about to be retried).
func (x *keyIndex) discard() { x.staged = x.staged[:0] }

// apply makes the staged changes visible, in the order they were made; call
// it once their transaction is committed. It also moves the next shrinkStep
// hashes of a shrinking table, or begins to shrink it.
func (x *keyIndex) apply() {
	if len(x.staged) == 0 && x.old == nil {
		return
	}
	x.mu.Lock()
	for _, c := range x.staged {
		if c.add {
			x.insert(c.h, c.slot)
		} else {
			x.remove(c.h, c.slot)
		}
	}
	if x.old != nil {
		x.drain(shrinkStep)
	}
	x.peak = max(x.peak, len(x.m)+len(x.old))
	if x.old == nil && x.peak >= shrinkBelow && len(x.m) < x.peak/4 {
		// A burst's memory back: m's hashes move to a new map, a step per
		// apply (and per shrinkIdleStep while no write comes: drainStep), so
		// that no commit (and no reader) waits for the copy of a table that
		// held millions of keys (BenchmarkKeyIndexShrink); the new map grows as
		// they arrive.
		x.old, x.m = x.m, map[uint64]uint64{}
		x.peak = len(x.old)
	}
	x.mu.Unlock()
	x.discard()
}

// shrinking reports whether a move from old is under way.
func (x *keyIndex) shrinking() bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.old != nil
}

// drainStep moves the next shrinkStep hashes of a shrinking table: the
// committer's, between commits, while no write comes.
func (x *keyIndex) drainStep() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.old != nil {
		x.drain(shrinkStep)
	}
}

// drain moves up to n hashes from old to m (mu held), and drops old once it
// is empty.
func (x *keyIndex) drain(n int) {
	for h, slot := range x.old {
		if n == 0 {
			return
		}
		x.m[h] = slot
		delete(x.old, h)
		n--
	}
	x.old = nil
}

// find returns kb's state record and slot in keys, reading the applied index
// and, with staged, the committer's staged changes too (the committer's view
// inside its transaction). The state aliases the page.
func (x *keyIndex) find(keys *bolt.Bucket, kb []byte, staged bool) (state []byte, slot uint64, ok bool) {
	h := x.hash(x.seed, kb)
	var buf [4]uint64
	cands := x.slots(buf[:0], h)
	if staged {
		for _, c := range x.staged {
			switch {
			case c.h != h:
			case c.add:
				cands = append(cands, c.slot)
			default:
				if i := slices.Index(cands, c.slot); i >= 0 {
					cands = append(cands[:i], cands[i+1:]...)
				}
			}
		}
	}
	var sk [8]byte
	for _, c := range cands {
		k, st, good := splitKeyRecord(keys.Get(slotKey(sk[:0], c)))
		if good && bytes.Equal(k, kb) {
			return st, c, true
		}
	}
	return nil, 0, false
}

// rebuild fills the index from the keys bucket (at open), and returns the
// highest slot below slotAnswered (a seq) and the highest number n of a slot
// slotAnswered|n. A record too short for its key is left out (Inspect reports
// it).
func (x *keyIndex) rebuild(keys *bolt.Bucket) (lastSeq, lastAnswered uint64, err error) {
	err = keys.ForEach(func(k, v []byte) error {
		if kb, _, ok := splitKeyRecord(v); ok && len(k) == 8 {
			slot := binary.BigEndian.Uint64(k)
			x.insert(x.hash(x.seed, kb), slot)
			if slot < slotAnswered {
				lastSeq = max(lastSeq, slot)
			} else {
				lastAnswered = max(lastAnswered, slot&^slotAnswered)
			}
		}
		return nil
	})
	return lastSeq, lastAnswered, err
}

// keysTx is the key index inside the committer's write transaction.
type keysTx struct {
	x    *keyIndex
	keys *bolt.Bucket
	mem  *arena
}

// get returns kb's state record and slot; ok is false for an unknown key.
func (k keysTx) get(kb []byte) (state []byte, slot uint64, ok bool) {
	return k.x.find(k.keys, kb, true)
}

// put writes kb's state record at slot (adding the slot to the index when isNew).
func (k keysTx) put(o *op, kb []byte, slot uint64, state []byte, isNew bool) error {
	rec := appendKeyRecord(k.mem.buf(binary.MaxVarintLen64+len(kb)+len(state)), kb, state)
	if err := o.put(k.keys, slotKey(k.mem.buf(8), slot), rec); err != nil {
		return err
	}
	if isNew {
		k.x.staged = append(k.x.staged, stagedSlot{h: k.x.hash(k.x.seed, kb), slot: slot, add: true})
	}
	return nil
}

// del removes kb's record at slot.
func (k keysTx) del(kb []byte, slot uint64) error {
	if err := k.keys.Delete(slotKey(k.mem.buf(8), slot)); err != nil {
		return err
	}
	k.x.staged = append(k.x.staged, stagedSlot{h: k.x.hash(k.x.seed, kb), slot: slot})
	return nil
}

// newSlot is a free slot for a key that was never put: the bucket's next
// sequence number (Open sets the sequence past the slots in use, should a
// damaged file have set it back).
func (k keysTx) newSlot() (uint64, error) {
	n, err := k.keys.NextSequence()
	return slotAnswered | n, err
}
