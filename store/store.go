package store

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Limits on what the store accepts.
const (
	// MaxKeyPart is the largest App, Device or ID, in bytes.
	MaxKeyPart = 1024
	// MaxRecordSize is the largest encoded entry or outbox record, in bytes.
	MaxRecordSize = 16 << 20
)

// schemaVersion is the bucket layout this code writes. It reads schema 1 too
// (the key index keyed by the keys themselves) and rewrites it as schema 2 at
// open (migrateKeys).
const schemaVersion = 2

// schemaKeysByKey is the first layout: keys encodeKey(k) -> keyState.
const schemaKeysByKey = 1

// Bucket names. The layout:
//
//	meta     "schema" -> schemaVersion; "counts" -> pending, outbox, done (uvarints)
//	keys     slotKey(slot) -> encodeKey(k) and keyState: where each known key is (the
//	         dedup index, in arrival order, found through keyIndex: keyindex.go)
//	pending  seqKey(seq) -> entry record; the bucket sequence assigns Seq
//	outbox   outboxKey(flushBy, seq) -> outbox record
//	expiry   expiryKey(doneAt, n) -> encodeKey(k), for GC of completed keys
var (
	bucketMeta    = []byte("meta")
	bucketKeys    = []byte("keys")
	bucketPending = []byte("pending")
	bucketOutbox  = []byte("outbox")
	bucketExpiry  = []byte("expiry")
	keySchema     = []byte("schema")
	keyCounts     = []byte("counts")
)

// Options configures a Store. The zero value of a field means its default
// (DefaultOptions).
type Options struct {
	// MaxBatchDelay is how long the committer, back from the previous commit,
	// waits for more writes before committing the next group, when it is not
	// full: a write queued during that commit waits for it to end and then for
	// the delay (counting the delay from the write's queueing instead gave
	// more, smaller commits and no more throughput: docs/benchmarks.md, "A
	// quiet box"). Zero commits as soon as the previous commit is done: writes
	// that arrive during a commit's fsync form the next group, so groups grow
	// with load at no latency cost.
	MaxBatchDelay time.Duration
	// DelayUnderLoad applies MaxBatchDelay only while the journal is busy: when
	// the previous commit grouped at least BusyGroupSize writes. An idle journal
	// commits a lone write at once, so the delay costs no latency at low load and
	// buys fewer, larger commits under load.
	DelayUnderLoad bool
	// BusyGroupSize is the smallest group commit after which DelayUnderLoad
	// counts the journal as busy. Zero means 2: any company. A larger value
	// keeps the delay for journals whose writes arrive faster than their commits
	// complete by a wide margin, where commits (two fdatasyncs each) are most of
	// the journal's cost, and spares moderately loaded ones the latency.
	BusyGroupSize int
	// MaxBatchSize is the most writes (Put, Outbox, Complete) in one commit.
	MaxBatchSize int
	// Retention is how long completed keys, and their replies, are remembered to
	// answer redelivered duplicates. Put treats an older completed key as new,
	// whether or not GC has dropped it yet.
	Retention time.Duration
	// LockTimeout is how long Open waits for another process to release the file
	// before it fails with ErrLocked.
	LockTimeout time.Duration
	// MaxBytes caps the journal's live data (pages in use, not the file size,
	// which bbolt never shrinks): while more than MaxBytes are in use, Put of a
	// new key fails with ErrFull (Answered: already beyond half of it);
	// duplicates, Outbox, Complete and GC go on. The
	// check uses the size after the previous commit, so a journal can exceed
	// MaxBytes by one group commit's writes, and by the completions of its
	// pending requests. Zero means no cap.
	MaxBytes int64
	// CompactMinBytes is the smallest file OpenOrRecover compacts: a healthy
	// journal file of at least this size that is more than half free space is
	// rewritten compactly before it is opened (bbolt files never shrink on their
	// own). Zero means DefaultCompactMinBytes; a negative value turns compaction
	// off.
	CompactMinBytes int64
	// PageSize is the bbolt page size of a new journal file, a power of two
	// from 1 KiB to 16 MiB; zero means DefaultPageSize. An existing file keeps
	// the page size it was created with.
	PageSize int
	// NoSync skips fsync on commit. A commit then survives a process crash but
	// not a power loss. For tests and benchmarks only.
	NoSync bool
	// Now is the clock for Received defaults, completion times and Retention.
	Now func() time.Time
	// Logger receives open/close and corrupt-record reports. The zero Logger
	// discards.
	Logger zerolog.Logger
	// BeforeCommit, if set, is called with the writes of each group commit just
	// before it commits. A non-nil error rolls the commit back and every write in
	// it fails with an error wrapping that one. A fault-injection seam for tests.
	BeforeCommit func(ops []Op) error
}

// DefaultCompactMinBytes is the default Options.CompactMinBytes.
const DefaultCompactMinBytes = 64 << 20

// DefaultPageSize is the default Options.PageSize: 16 KiB rather than bbolt's
// default of the memory page size (4 KiB). A group commit writes every B-tree
// node it changed, one write and one block request per node, and two
// fdatasyncs; with larger pages it changes fewer nodes (a pending record of a
// 784-value input takes a 4 KiB page of its own, four of them share a 16 KiB
// one), and the journal's CPU per request falls (docs/benchmarks.md).
const DefaultPageSize = 16 << 10

// DefaultOptions returns the defaults Open applies to zero fields.
func DefaultOptions() Options {
	return Options{
		MaxBatchDelay:   0,
		MaxBatchSize:    256,
		Retention:       time.Hour,
		LockTimeout:     time.Second,
		CompactMinBytes: DefaultCompactMinBytes,
		PageSize:        DefaultPageSize,
		Now:             time.Now,
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	if o.MaxBatchDelay < 0 || o.MaxBatchSize < 0 || o.Retention < 0 || o.LockTimeout < 0 || o.MaxBytes < 0 || o.BusyGroupSize < 0 {
		return o, fmt.Errorf("store: negative option: max batch delay %s, max batch size %d, retention %s, lock timeout %s, max bytes %d, busy group size %d",
			o.MaxBatchDelay, o.MaxBatchSize, o.Retention, o.LockTimeout, o.MaxBytes, o.BusyGroupSize)
	}
	if o.BusyGroupSize == 0 {
		o.BusyGroupSize = 2
	}
	if o.PageSize == 0 {
		o.PageSize = d.PageSize
	}
	if o.PageSize < minPageSize || o.PageSize > maxPageSize || o.PageSize&(o.PageSize-1) != 0 {
		return o, fmt.Errorf("store: page size %d is not a power of two from %d to %d", o.PageSize, minPageSize, maxPageSize)
	}
	if o.MaxBatchSize == 0 {
		o.MaxBatchSize = d.MaxBatchSize
	}
	if o.Retention == 0 {
		o.Retention = d.Retention
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = d.LockTimeout
	}
	if o.Now == nil {
		o.Now = d.Now
	}
	if o.CompactMinBytes == 0 {
		o.CompactMinBytes = d.CompactMinBytes
	}
	return o, nil
}

// Store is the pending-request journal. Its methods are safe for concurrent use.
type Store struct {
	db   *bolt.DB
	file *os.File // the file bbolt reads and writes (see broken)
	path string
	opts Options
	log  zerolog.Logger
	// pageSize is bbolt's page size; used is the live data after the last
	// commit, in bytes (see Options.MaxBytes).
	pageSize int64
	used     atomic.Int64
	// broken holds the error of a panic in a commit: the database's state is then
	// unknown, every later operation fails with it, and Close closes the file
	// without bbolt (see commit).
	broken atomic.Pointer[error]
	// noSpace is set while commits fail for want of space (nospace.go); only
	// the committer writes it.
	noSpace atomic.Pointer[noSpaceState]
	// noSpaceLogged is when the committer last logged the start of the state.
	noSpaceLogged time.Time

	// mu guards closed. Writers hold it shared while they queue, readers for
	// their whole transaction; Close takes it exclusively.
	mu     sync.RWMutex
	closed bool

	// txMu is held by the committer across each write transaction and by
	// Check across its read: bbolt's Tx.Check reads the freelist, which a
	// committing writer changes (a data race, not a lock, in bbolt), and the
	// committer's group commits are the only writes while the store is open.
	txMu sync.Mutex

	ops     chan *op      // to the committer
	stopped chan struct{} // closed when the committer exits
	queued  atomic.Int64  // writes queued or being committed
	keys    *keyIndex     // the key index in memory (keyindex.go)

	statsMu sync.Mutex
	stats   Stats
	// corruptSeen holds the corrupt records skipCorrupt has reported, by a hash
	// of bucket and key; corruptFull is set once it could not remember one more.
	// Guarded by statsMu.
	corruptSeen map[uint64]struct{}
	corruptFull bool
}

// Stats are the store's counters. Pending, Outbox and Done are current counts;
// the others count since Open.
type Stats struct {
	// Pending is the number of entries without a reply.
	Pending int
	// Outbox is the number of replies waiting to be handed to the broker.
	Outbox int
	// Done is the number of completed keys remembered for duplicate suppression.
	Done int
	// Queued is the number of writes waiting for, or in, a commit.
	Queued int

	// Commits counts group commits (every write goes through one).
	Commits uint64
	// CommitErrors counts group commits that failed; every write in one fails.
	CommitErrors uint64
	// Ops counts committed writes (Put, Outbox, Complete, and GC in chunks).
	Ops uint64
	// Batched counts writes that shared their commit with at least one other.
	Batched uint64
	// MaxBatch is the largest group commit so far.
	MaxBatch int
	// Puts counts Puts that stored a new entry; Duplicates those that did not.
	Puts, Duplicates uint64
	// BytesWritten counts key and value bytes put by committed transactions.
	BytesWritten uint64
	// FileSize is the size of the database's pages after the last commit
	// (bbolt's high-water mark; the file may be longer, preallocated).
	FileSize int64
	// UsedBytes is the live data after the last commit: FileSize less the free
	// pages bbolt will reuse. Options.MaxBytes caps it.
	UsedBytes int64
	// Corrupt counts corrupt records skipped by Pending and OutboxEntries, each
	// once however often it is read, and those GC dropped. Past 1024 skipped
	// records it stops counting new ones (a lower bound; see skipCorrupt).
	Corrupt uint64
	// NoSpaceErrors counts commits that failed because the file could not grow
	// (ErrNoSpace; they are counted in CommitErrors too).
	NoSpaceErrors uint64
	// NoSpaceSince is when commits began failing for want of space, zero while
	// they do not: from then, new keys are refused (ErrNoSpace) until a commit
	// of new keys makes the file grow, leaves it with free pages to spare, or
	// finds the file system with room (newKeysFitted).
	NoSpaceSince time.Time
}

// Open opens (creating if needed) the journal at path and starts its committer.
// It fails with ErrLocked when another process holds the file for longer than
// Options.LockTimeout, and with ErrSchema when a newer version wrote it, or when
// it has records but no schema version (OpenOrRecover reads such a file by its
// records' form).
//
// Open trusts the file: it does not verify it first, and bbolt panics on some
// damage in goroutines of its own, which no caller can recover. It turns the
// damage bbolt reports, and the panics it can catch, into errors wrapping
// ErrDamaged. A service should use OpenOrRecover, which verifies the file
// first and survives damage.
func Open(path string, opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	f, err := lockPath(path, os.O_CREATE, opts)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return openLocked(path, f, opts)
}

// openDB opens the bbolt file at path with the store's bbolt options, through f
// when f is not nil (a file the caller opened and locked; bbolt then owns it,
// and closes it on error). It returns the file bbolt uses. ErrTimeout becomes
// ErrLocked; bbolt's refusals of a damaged file, and its panics and faults while
// opening, become errors wrapping ErrDamaged.
func openDB(path string, f *os.File, opts Options) (db *bolt.DB, file *os.File, err error) {
	var opened *os.File
	defer func() {
		if p := recover(); p != nil {
			if opened != nil {
				closeFile(opened) // bbolt's memory map of it stays: it cannot be reached
			}
			db, file, err = nil, nil, fmt.Errorf("%w: bbolt panicked opening it: %v", ErrDamaged, p)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        opts.LockTimeout,
		NoSync:         opts.NoSync,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
		PageSize:       cmp.Or(opts.PageSize, DefaultPageSize),
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			if f != nil {
				opened = f
				return f, nil
			}
			g, err := os.OpenFile(name, flag, mode)
			opened = g
			return g, err
		},
	})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, nil, fmt.Errorf("%w (waited %s; is another gateway using this file?)", ErrLocked, opts.LockTimeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, nil, fmt.Errorf("%w: %w", ErrDamaged, err)
	case err != nil:
		return nil, nil, err
	}
	return db, opened, nil
}

// newStore initialises the journal in db (buckets, schema, counts) and starts
// the committer. file is the file bbolt uses. On error it closes db.
func newStore(db *bolt.DB, file *os.File, path string, opts Options) (*Store, error) {
	s := &Store{
		db:       db,
		file:     file,
		path:     path,
		opts:     opts,
		log:      opts.Logger,
		pageSize: int64(db.Info().PageSize),
		ops:      make(chan *op, opts.MaxBatchSize),
		stopped:  make(chan struct{}),
	}
	if err := s.update(s.init); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s.log.Info().Str("path", path).Int("pending", s.stats.Pending).Int("outbox", s.stats.Outbox).
		Int("done", s.stats.Done).Int64("used_bytes", s.stats.UsedBytes).Msg("journal opened")
	go s.commitLoop()
	return s, nil
}

// update runs fn in a write transaction outside the group commit (at open),
// turning a bbolt panic into an error wrapping ErrDamaged.
func (s *Store) update(fn func(*bolt.Tx) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: bbolt panicked: %v", ErrDamaged, p)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return s.db.Update(fn)
}

// init creates the buckets, checks the schema and loads the counts.
func (s *Store) init(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketMeta, bucketKeys, bucketPending, bucketOutbox, bucketExpiry} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	switch v := meta.Get(keySchema); {
	case v == nil && hasRecords(tx):
		// Schema 1 or 2 (or damage): which, only the records' form can say, as
		// Inspect and Salvage read it. Stamped schema 2, a schema 1 key index
		// would be read as slots and its keys forgotten.
		return fmt.Errorf("%w: the file has records but no schema version (damage): open it with OpenOrRecover, which verifies it and salvages it", ErrSchema)
	case v == nil:
		if err := meta.Put(keySchema, []byte{schemaVersion}); err != nil {
			return err
		}
	case len(v) == 1 && v[0] == schemaKeysByKey:
		n, err := migrateKeys(tx)
		if err != nil {
			return fmt.Errorf("rewriting the key index of schema %d as schema %d: %w", schemaKeysByKey, schemaVersion, err)
		}
		s.log.Info().Str("path", s.path).Int("keys", n).Msg("journal: key index rewritten in arrival order (schema 1 to 2)")
	case len(v) != 1 || v[0] != schemaVersion:
		return fmt.Errorf("%w: file has schema %v, this build reads %d", ErrSchema, v, schemaVersion)
	}
	s.keys = newKeyIndex()
	keys := tx.Bucket(bucketKeys)
	lastSeq, lastAnswered, err := s.keys.rebuild(keys)
	if err != nil {
		return err
	}
	// Put takes a new request's seq for its key's slot, and Answered the keys
	// bucket's next sequence number, without looking: a sequence behind the
	// slots in use (a damaged bucket header; the verification does not compare
	// them) would let a new key's record overwrite another's. Set each past
	// them (the pending sequence past the pending records too, and past the
	// outbox records, keyed by flush time and seq: one whose key record is lost
	// would otherwise share its seq with a new request's).
	pending := tx.Bucket(bucketPending)
	if k, _ := pending.Cursor().Last(); len(k) == 8 {
		lastSeq = max(lastSeq, binary.BigEndian.Uint64(k))
	}
	oc := tx.Bucket(bucketOutbox).Cursor()
	for k, _ := oc.First(); k != nil; k, _ = oc.Next() {
		if len(k) == 16 {
			lastSeq = max(lastSeq, binary.BigEndian.Uint64(k[8:]))
		}
	}
	for _, b := range []struct {
		name   string
		bucket *bolt.Bucket
		last   uint64
	}{{"pending", pending, lastSeq}, {"keys", keys, lastAnswered}} {
		if seq := b.bucket.Sequence(); seq < b.last {
			s.log.Warn().Str("path", s.path).Str("bucket", b.name).Uint64("sequence", seq).Uint64("last", b.last).
				Msg("journal: a sequence is behind the numbers in use (a damaged file): set past them")
			if err := b.bucket.SetSequence(b.last); err != nil {
				return err
			}
		}
	}
	c, err := readCounts(meta)
	if err != nil {
		return err
	}
	s.stats.Pending, s.stats.Outbox, s.stats.Done = c.pending, c.outbox, c.done
	s.stats.FileSize = tx.Size()
	s.stats.UsedBytes = s.usedBytes(tx.Size())
	s.used.Store(s.stats.UsedBytes)
	return nil
}

// hasRecords reports whether any of the journal's data buckets in tx holds a
// record.
func hasRecords(tx *bolt.Tx) bool {
	for _, name := range [][]byte{bucketKeys, bucketPending, bucketOutbox, bucketExpiry} {
		if k, _ := tx.Bucket(name).Cursor().First(); k != nil {
			return true
		}
	}
	return false
}

// migrateKeys rewrites a schema 1 key index (keyed by the keys) in tx as
// schema 2 (keyed by slot: a pending or outbox key at its seq, a completed one
// at a new slot of its own) and sets the schema; it returns how many keys it
// moved. A record that is not a state, and a key claiming a seq another key
// has taken, move to a slot of their own, unchanged: they stay known as they
// were (a Lookup or Put of a key whose record is unreadable fails with
// ErrCorrupt, a Put of a key pending at a seq is a duplicate), and the
// verification of OpenOrRecover reports them, as it did before the migration.
func migrateKeys(tx *bolt.Tx) (int, error) {
	old := tx.Bucket(bucketKeys)
	type moved struct{ kb, state []byte }
	var all []moved
	err := old.ForEach(func(kb, v []byte) error {
		all = append(all, moved{bytes.Clone(kb), bytes.Clone(v)})
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := tx.DeleteBucket(bucketKeys); err != nil {
		return 0, err
	}
	keys, err := tx.CreateBucket(bucketKeys)
	if err != nil {
		return 0, err
	}
	keys.FillPercent = appendFill
	kx := keysTx{keys: keys}
	n := 0
	for _, m := range all {
		st, err := decodeState(m.state)
		slot, own := st.seq, err != nil || st.state == stateDone
		if !own && keys.Get(slotKey(nil, slot)) != nil {
			own = true // two keys claiming one seq
		}
		if own {
			if slot, err = kx.newSlot(); err != nil {
				return n, err
			}
		}
		if err := keys.Put(slotKey(nil, slot), appendKeyRecord(nil, m.kb, m.state)); err != nil {
			return n, err
		}
		n++
	}
	return n, tx.Bucket(bucketMeta).Put(keySchema, []byte{schemaVersion})
}

// usedBytes is the live data in a database whose pages take size bytes: size
// less the free pages (and those freed but not yet reusable) after the last
// transaction.
func (s *Store) usedBytes(size int64) int64 {
	st := s.db.Stats()
	return max(0, size-int64(st.FreePageN+st.PendingPageN)*s.pageSize)
}

// answeredShare sets how much of Options.MaxBytes answers recorded without a
// request may fill (1/answeredShare): Answered refuses new keys beyond it, so
// that these answers, which come at any rate under overload (every request
// shed at admission), leave the rest of the cap to Put's requests instead of
// having the journal refuse them all until Retention has passed.
const answeredShare = 2

// checkNewKey is what Put (share 1) and Answered (share answeredShare) check
// before storing a key the journal does not know: ErrFull when the journal
// holds more than Options.MaxBytes / share of live data, and ErrNoSpace
// (checkSpace) while its disk is full.
func (s *Store) checkNewKey(share int64) error {
	if s.opts.MaxBytes > 0 {
		limit := s.opts.MaxBytes / share
		if used := s.used.Load(); used > limit {
			return fmt.Errorf("%w: %d bytes in use, more than %d (1/%d of the cap, max bytes)", ErrFull, used, limit, share)
		}
	}
	return s.checkSpace()
}

// Close commits the writes already queued, then closes the file. Later calls
// return nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.ops)
	s.mu.Unlock()
	<-s.stopped
	if p := s.broken.Load(); p != nil {
		// bbolt's state after the panic is unknown (its locks may be held):
		// release the file without it.
		var err error
		if s.file != nil {
			err = closeFile(s.file)
		}
		s.log.Error().Err(*p).Str("path", s.path).Msg("journal closed after a panic in a commit")
		return errors.Join(fmt.Errorf("store: close %s: %w", s.path, *p), err)
	}
	// What the group commit did since Open: writes per commit and pages
	// written per commit are the journal's cost (docs/benchmarks.md).
	st := s.Stats()
	tx := s.db.Stats().TxStats
	pages := tx.GetWrite()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", s.path, err)
	}
	s.log.Info().Str("path", s.path).Uint64("commits", st.Commits).Uint64("ops", st.Ops).
		Int("max_batch", st.MaxBatch).Int64("pages_written", pages).Msg("journal closed")
	return nil
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Stats returns a snapshot of the counters.
func (s *Store) Stats() Stats {
	s.statsMu.Lock()
	st := s.stats
	s.statsMu.Unlock()
	st.Queued = int(s.queued.Load())
	return st
}

// view runs fn in a read transaction unless the store is closed or broken. A
// panic or memory fault in it (bbolt reading a damaged page, or an I/O error
// on the memory-mapped file) becomes an error wrapping ErrDamaged; bbolt's View
// has already rolled the transaction back.
func (s *Store) view(fn func(*bolt.Tx) error) (err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	if p := s.broken.Load(); p != nil {
		return *p
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: bbolt panicked reading it: %v", ErrDamaged, p)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return s.db.View(fn)
}

// countCorrupt logs and counts a corrupt record: one GC has just dropped (it
// cannot be met again), or one skipCorrupt reports for the first time.
func (s *Store) countCorrupt(err error, bucket string, key []byte) {
	s.statsMu.Lock()
	s.stats.Corrupt++
	s.statsMu.Unlock()
	s.log.Error().Err(err).Str("bucket", bucket).Hex("key", key).Msg("skipping corrupt journal record")
}

// corruptReportLimit is the most corrupt records a Store remembers having
// reported (skipCorrupt); a variable for tests.
var corruptReportLimit = 1024

// skipCorrupt reports a corrupt record that a read skips and leaves in the file
// (Pending, OutboxEntries): logged and counted the first time this Store meets
// it, not at every read (the gateway reads the outbox at every flush, every
// few seconds, and the record stays until the next start's verification
// salvages the journal). It remembers up to corruptReportLimit records, by a
// 64-bit FNV-1a hash of bucket and key (a collision would only leave a record
// unreported); past that, further corrupt records are skipped without a line
// or a count each, and one line says so: Stats.Corrupt is then a lower bound.
func (s *Store) skipCorrupt(err error, bucket string, key []byte) {
	h := fnv.New64a()
	h.Write([]byte(bucket))
	h.Write([]byte{0})
	h.Write(key)
	id := h.Sum64()
	s.statsMu.Lock()
	_, seen := s.corruptSeen[id]
	report, full := !seen && len(s.corruptSeen) < corruptReportLimit, false
	if report {
		if s.corruptSeen == nil {
			s.corruptSeen = make(map[uint64]struct{})
		}
		s.corruptSeen[id] = struct{}{}
	} else if !seen && !s.corruptFull {
		s.corruptFull, full = true, true
	}
	s.statsMu.Unlock()
	if report {
		s.countCorrupt(err, bucket, key)
	}
	if full {
		s.log.Error().Int("reported", corruptReportLimit).Str("bucket", bucket).Hex("key", key).
			Msg("too many corrupt journal records: the others are skipped without being logged or counted; restart, and the start-up check salvages the journal")
	}
}
