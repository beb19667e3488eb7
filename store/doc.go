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
durable. The duplicate check runs in the same transaction as the insert. A
failed commit fails every write in it; a write that fails on its own (for
example Outbox of an unknown key) is taken out and the others are retried, as in
bbolt's DB.Batch.

Records are versioned binary with a CRC-32C; keys are length-prefixed, so any
bytes are safe in a Key. A corrupt record is logged, counted in Stats.Corrupt and
skipped by Pending and OutboxEntries; it never stops recovery of the others.

Package storetest opens journals for tests, with a consistency check at cleanup;
Options.BeforeCommit injects commit failures.

# Caveats

Only one process may open the file: a second Open fails with ErrLocked after
Options.LockTimeout. Within a process, open a path once and share the Store.

A Put that returns an error must not be acknowledged, but it may still reach
the disk (when the fsync itself fails) and appear in Pending after a restart.
The broker redelivers the unacknowledged request, so it runs once either way.

Duplicate suppression lasts Options.Retention after Complete. Completed keys hold
their reply bytes, so the file grows by roughly (key + reply + 60 bytes) times
completions per Retention; bbolt does not shrink the file when GC frees pages
(they are reused).

Entries are returned as copies; times come back in UTC with nanosecond precision
and no monotonic clock reading. Empty Input and Attrs come back nil. A corrupt
pending record stays in the file (for inspection with the bbolt tool) and its key
stays known, so its redeliveries are DupPending: the request is lost, loudly.

Options.NoSync trades durability for speed and is for tests only.
*/
package store
