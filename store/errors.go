package store

import "errors"

// These errors can be returned by Open, OpenOrRecover, Inspect and Salvage.
var (
	// ErrLocked is returned when another process (usually a gateway) holds the
	// database file: by Open and OpenOrRecover when it did not release it within
	// Options.LockTimeout, by Inspect and Salvage at once.
	ErrLocked = errors.New("database file is locked by another process")

	// ErrSchema is returned when the file was written by a newer, incompatible
	// version of the store. The schema byte has no checksum: OpenOrRecover,
	// Inspect and Salvage take a value that no plausible newer version has (0, or
	// above 16) for damage instead.
	ErrSchema = errors.New("unsupported journal schema")

	// ErrDamaged is wrapped by the error about a journal file that cannot be
	// trusted: bbolt refused it (not a database, both meta pages invalid), or
	// panicked or faulted reading it. Open and the read methods return it instead
	// of panicking. OpenOrRecover does not return it for damage: it verifies the
	// file first, moves a damaged one aside and reports a Recovery (Inspect
	// reports damage in its Report). After a panic inside a commit every later
	// method returns it: restart, and let OpenOrRecover verify the file. ErrLocked
	// and ErrSchema are not damage. Salvage returns it for a file in which no meta
	// page can be read (nothing to salvage).
	ErrDamaged = errors.New("journal file damaged")
)

// These errors can be returned by the journal operations.
var (
	// ErrClosed is returned by every method called once Close has begun. Writes
	// already queued for a commit when Close begins are committed, not failed.
	ErrClosed = errors.New("journal closed")

	// ErrInvalid is returned by Put, Outbox and Complete when a key part is
	// empty or longer than MaxKeyPart bytes, or Put is given a nil entry.
	ErrInvalid = errors.New("invalid key or entry")

	// ErrTooLarge is returned by Put and Outbox when the record would exceed
	// MaxRecordSize bytes.
	ErrTooLarge = errors.New("record too large")

	// ErrFull is returned by Put for a new key when the journal holds more than
	// Options.MaxBytes of live data (pages in use, not the file size: bbolt
	// files never shrink). Duplicates are still answered, and Outbox, Complete and
	// GC still work, so the journal drains as replies go out. Nothing was stored:
	// refuse the request (for example with an overload reply) and acknowledge it.
	ErrFull = errors.New("journal full")

	// ErrNoSpace is wrapped, with the file system's error, by the error of a
	// write whose commit failed because the journal file could not grow: the
	// disk is full (ENOSPC), a quota is reached (EDQUOT) or a file size limit
	// (EFBIG: RLIMIT_FSIZE, the file system's largest file). Nothing of that
	// commit was stored, and the file stays usable: bbolt rolled it back. A
	// failed commit's Puts of new keys fail with it and its other writes
	// (duplicates, Outbox, Complete, GC) are committed again without them, into
	// the file's free pages; after that, Put of a new key fails with it at once,
	// without trying, for a second after each failure, and the first Put after
	// that tries again. Duplicates are still answered. Refuse the request (for
	// example with an overload reply) and acknowledge it; free disk space, and
	// the journal takes new keys again by itself.
	ErrNoSpace = errors.New("no space for the journal file to grow")

	// ErrNotPending is returned by Outbox when the key is neither pending nor in
	// the outbox (it was never put, or it was completed).
	ErrNotPending = errors.New("key is not pending")

	// ErrCorrupt is wrapped by the error about a record that fails to decode
	// (unknown format version, checksum mismatch, truncated or overlong field).
	// Outbox returns it for a corrupt pending record; Pending and OutboxEntries
	// do not return it: they skip the record, and log it and count it in
	// Stats.Corrupt the first time the open Store meets it.
	ErrCorrupt = errors.New("corrupt record")
)
