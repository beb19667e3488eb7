package store

import (
	"errors"
	"fmt"
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

// schemaVersion is the bucket layout this code reads and writes.
const schemaVersion = 1

// Bucket names. The layout:
//
//	meta     "schema" -> schemaVersion; "counts" -> pending, outbox, done (uvarints)
//	keys     encodeKey(k) -> keyState: where each known key is (the dedup index)
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
	// MaxBatchDelay is how long the first write of a group commit waits for more
	// writes before committing, when the group is not full. Zero commits as soon
	// as the previous commit is done: writes that arrive during a commit's fsync
	// form the next group, so groups grow with load at no latency cost.
	MaxBatchDelay time.Duration
	// MaxBatchSize is the most writes (Put, Outbox, Complete) in one commit.
	MaxBatchSize int
	// Retention is how long completed keys, and their replies, are remembered to
	// answer redelivered duplicates. Put treats an older completed key as new,
	// whether or not GC has dropped it yet.
	Retention time.Duration
	// LockTimeout is how long Open waits for another process to release the file
	// before it fails with ErrLocked.
	LockTimeout time.Duration
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

// DefaultOptions returns the defaults Open applies to zero fields.
func DefaultOptions() Options {
	return Options{
		MaxBatchDelay: 0,
		MaxBatchSize:  256,
		Retention:     time.Hour,
		LockTimeout:   time.Second,
		Now:           time.Now,
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	if o.MaxBatchDelay < 0 || o.MaxBatchSize < 0 || o.Retention < 0 || o.LockTimeout < 0 {
		return o, fmt.Errorf("store: negative option: max batch delay %s, max batch size %d, retention %s, lock timeout %s",
			o.MaxBatchDelay, o.MaxBatchSize, o.Retention, o.LockTimeout)
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
	return o, nil
}

// Store is the pending-request journal. Its methods are safe for concurrent use.
type Store struct {
	db   *bolt.DB
	path string
	opts Options
	log  zerolog.Logger

	// mu guards closed. Writers hold it shared while they queue, readers for
	// their whole transaction; Close takes it exclusively.
	mu     sync.RWMutex
	closed bool

	ops     chan *op      // to the committer
	stopped chan struct{} // closed when the committer exits
	queued  atomic.Int64  // writes queued or being committed

	statsMu sync.Mutex
	stats   Stats
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
	// FileSize is the database file size after the last commit.
	FileSize int64
	// Corrupt counts corrupt records skipped by Pending and OutboxEntries (a
	// record is counted each time it is read).
	Corrupt uint64
}

// Open opens (creating if needed) the journal at path and starts its committer.
// It fails with ErrLocked when another process holds the file for longer than
// Options.LockTimeout, and with ErrSchema when a newer version wrote it.
func Open(path string, opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        opts.LockTimeout,
		NoSync:         opts.NoSync,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("store: open %s: %w (waited %s; is another gateway using this file?)", path, ErrLocked, opts.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Store{
		db:      db,
		path:    path,
		opts:    opts,
		log:     opts.Logger,
		ops:     make(chan *op, opts.MaxBatchSize),
		stopped: make(chan struct{}),
	}
	if err := db.Update(s.init); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s.log.Info().Str("path", path).Int("pending", s.stats.Pending).Int("outbox", s.stats.Outbox).
		Int("done", s.stats.Done).Msg("journal opened")
	go s.commitLoop()
	return s, nil
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
	case v == nil:
		if err := meta.Put(keySchema, []byte{schemaVersion}); err != nil {
			return err
		}
	case len(v) != 1 || v[0] != schemaVersion:
		return fmt.Errorf("%w: file has schema %v, this build reads %d", ErrSchema, v, schemaVersion)
	}
	c, err := readCounts(meta)
	if err != nil {
		return err
	}
	s.stats.Pending, s.stats.Outbox, s.stats.Done = c.pending, c.outbox, c.done
	s.stats.FileSize = tx.Size()
	return nil
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
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", s.path, err)
	}
	s.log.Info().Str("path", s.path).Msg("journal closed")
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

// view runs fn in a read transaction unless the store is closed.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	return s.db.View(fn)
}

func (s *Store) countCorrupt(err error, bucket string, key []byte) {
	s.statsMu.Lock()
	s.stats.Corrupt++
	s.statsMu.Unlock()
	s.log.Error().Err(err).Str("bucket", bucket).Hex("key", key).Msg("skipping corrupt journal record")
}
