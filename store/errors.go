package store

import "errors"

// These errors can be returned by Open.
var (
	// ErrLocked is returned by Open when another process (usually a second
	// gateway) holds the database file and did not release it within
	// Options.LockTimeout.
	ErrLocked = errors.New("database file is locked by another process")

	// ErrSchema is returned by Open when the file was written by a newer,
	// incompatible version of the store.
	ErrSchema = errors.New("unsupported journal schema")
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

	// ErrFull is returned by Put for a new entry when the journal already holds
	// Options.MaxBytes of live data; duplicates are still answered. The gateway
	// refuses the request as overload.
	ErrFull = errors.New("journal full")

	// ErrNotPending is returned by Outbox when the key is neither pending nor in
	// the outbox (it was never put, or it was completed).
	ErrNotPending = errors.New("key is not pending")

	// ErrCorrupt is wrapped by the error about a record that fails to decode
	// (unknown format version, checksum mismatch, truncated or overlong field).
	// Outbox returns it for a corrupt pending record; Pending and OutboxEntries
	// do not return it: they log the record, count it in Stats.Corrupt and skip it.
	ErrCorrupt = errors.New("corrupt record")
)
