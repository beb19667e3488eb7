/*
Package store is the gateway's crash-safe journal of pending requests and
undelivered replies, in one bbolt file.

# Basics

A request is journaled before it is acknowledged to the broker and leaves the
journal only after its reply has been handed to the broker:

	res, err := s.Put(&store.Entry{Key: k, Deadline: d, ReplyTo: topic, Input: x})
	if err != nil {
		return err // do not ack: the broker redelivers
	}
	ack()
	switch res.Dup {
	case store.New:        // run it
	case store.DupPending: // already queued, or its reply waits unsent: do nothing
	case store.DupDone:    // answered before: publish res.Reply again
	}
	...
	s.Outbox(k, reply, deadline) // before the first publish: every repeat gets this reply
	publish(reply)
	s.Complete(k, reply) // once the broker has acknowledged it

After a restart, Pending returns the requests that have no reply yet, in arrival
(Seq) order, and OutboxEntries the replies that wait for the broker, in deadline
order; Complete each once its reply is handed over. GC, called periodically,
forgets completed keys older than Options.Retention.

Put, Outbox, Complete and GC are group-committed: one goroutine commits the writes
that queued up while the previous commit was syncing (up to MaxBatchSize, waiting
at most MaxBatchDelay for more), and each call returns only when its commit is
durable. OutboxAll queues several replies (sent or unsent) and waits for them
together; CompleteAsync queues a completion without waiting for its commit and
reports the outcome through a callback. The duplicate check runs in the same
transaction as the insert. A failed commit fails every write in it; a write that
fails on its own (for example Outbox of an unknown key) is taken out and the
others are retried, as in bbolt's DB.Batch.

Records are versioned binary with a CRC-32C; keys are length-prefixed, so any
bytes are safe in a Key. A corrupt record is skipped by Pending and
OutboxEntries; it never stops recovery of the others. It stays in the file, and
the gateway reads the outbox every few seconds, so it is logged and counted in
Stats.Corrupt once per open Store, the first time a read meets it, not at every
read (up to 1024 records; past that, one line says that further ones go
unreported, and Stats.Corrupt is a lower bound). GC drops a corrupt key record
once its expiry record is past the retention, and counts it the same way.

# Damage

A service opens its journal with OpenOrRecover rather than Open:

	s, rec, err := store.OpenOrRecover(path, opts)
	if err != nil {
		return err // ErrLocked, ErrSchema, or the file could not be read or replaced
	}
	if rec != nil {
		log.Error()... // rec.MovedTo, rec.Pending/Outbox/Done kept, rec.Lost, rec.Problems
	}

OpenOrRecover verifies the file before bbolt reads it, with bounds-checked reads
of its own (bbolt panics on some corrupt pages, some of them in goroutines no
caller can recover): the meta pages, every page reachable from the root, every
record, the key index against the records, and the stored counts. A damaged file
is moved aside to path.corrupt-<UTC time> and everything readable in it (pending
entries, outbox replies and completed keys whose records pass their checksum) is
copied into a new journal at path; the keys of what could not be read are
released, so a redelivery runs as new. The new journal is written beside the old
one (path.salvage), synced, and renamed over path only once complete, so a crash
during the salvage leaves the damaged journal at path to be salvaged again. A healthy file of at least
Options.CompactMinBytes that is more than half free space is compacted first.

Inspect runs the same verification read-only and returns a Report; Salvage copies
what is readable into a new file. Both take a shared lock, so they fail with
ErrLocked while a gateway has the journal open.

After Open, a bbolt panic or memory fault in a read fails that call with an error
wrapping ErrDamaged. A panic in a commit breaks the store: every later call fails
with ErrDamaged and Close releases the file without bbolt; restart, and let
OpenOrRecover verify the file.

# Size

Options.MaxBytes caps the live data (pages in use, Stats.UsedBytes): beyond it Put
of a new key fails with ErrFull, while duplicates, Outbox, Complete and GC go on,
so the journal drains. Stats.FileSize is bbolt's high-water mark; the file on disk
only grows until OpenOrRecover compacts it.

When the file cannot grow (the disk is full, a quota or a file size limit), the
commit fails and bbolt rolls it back; the file stays usable. Its Puts of new keys
fail with ErrNoSpace, and its other writes are committed again without them, so
completions go on; new keys are then refused without a commit for a second after
each failure, and accepted again once a commit of new keys makes the file grow,
leaves it with free pages to spare, or finds the file system with room
(Stats.NoSpaceSince, NoSpaceErrors).

Package storetest opens journals for tests, with a consistency check at cleanup;
Options.BeforeCommit injects commit failures.

# Caveats

Only one process may open the file: a second Open or OpenOrRecover fails with
ErrLocked after Options.LockTimeout. That holds while the first replaces the
file (OpenOrRecover's compaction or salvage renames a new file over the path and
closes the old one, releasing its lock): having a file's lock, an opener checks
that it is still the file at the path, and otherwise waits for the lock of the
one that is. Within a process, open a path once and share the Store.

A Put that returns an error must not be acknowledged, but it may still reach
the disk (when the fsync itself fails) and appear in Pending after a restart.
The broker redelivers the unacknowledged request, so it runs once either way.

Duplicate suppression lasts Options.Retention after Complete. Completed keys hold
their reply bytes, so the file grows by roughly (key + reply + 60 bytes) times
completions per Retention; bbolt does not shrink the file when GC frees pages
(they are reused), OpenOrRecover's compaction does.

The key index keeps each key's record in arrival order (under the request's seq),
so that a group commit's key writes share the index's last pages whichever
devices they are from, and finds keys through a hash table in memory of about 38
bytes a key (every key the file remembers), built by Open from the file (0.4 s a
million keys). A journal of the first layout (schema 1, the index keyed by the
keys) is rewritten so when opened. A file with records but no schema version
(damage) is read by its records' form by OpenOrRecover, Inspect and Salvage;
Open, which does not verify, refuses it (ErrSchema). keyindex.go has the layout.

Entries are returned as copies; times come back in UTC with nanosecond precision
and no monotonic clock reading. Empty Input and Attrs come back nil. With Open, a
corrupt pending record stays in the file and its key stays known, so its
redeliveries are DupPending: the request is lost, loudly (one error line and one
count in Stats.Corrupt per open Store). So is a corrupt outbox reply: it cannot
be read, so it is never published, and its key's redeliveries are DupPending.
OpenOrRecover finds such a record, moves the file aside and releases the key.

OpenOrRecover's salvage reads the tree of the newest valid meta page: what is no
longer reachable from it (a destroyed root page, the pages of a truncated file's
lost tail) is lost, even where stale copies remain in free pages.

Options.NoSync trades durability for speed and is for tests only.
*/
package store
