package store

import (
	"fmt"
	"time"
)

// Key identifies a request: the application, the device that sent it and the
// device's request id. Two requests with the same Key are the same request (an
// MQTT redelivery), and the store runs only the first.
type Key struct {
	App, Device, ID string
}

// String returns app/device/id, with the id quoted because it may hold any UTF-8.
func (k Key) String() string { return fmt.Sprintf("%s/%s/%q", k.App, k.Device, k.ID) }

// Entry is a pending request: everything the gateway needs to run it again after a
// restart. The store never interprets Input, ReplyTo or Attrs.
type Entry struct {
	Key
	// Seq is the arrival order, assigned by Put. It grows across restarts.
	Seq uint64
	// Received is when the gateway received the request; Put sets it to
	// Options.Now() when it is zero.
	Received time.Time
	// Deadline is the request's absolute deadline (zero: none).
	Deadline time.Time
	// ReplyTo is the topic the reply goes to.
	ReplyTo string
	// Input is the model input. An empty Input is read back as nil.
	Input []float32
	// Attrs holds small extras the gateway needs to answer (for example MQTT v5
	// correlation data). An empty map is read back as nil.
	Attrs map[string]string
}

// OutboxEntry is a reply that was decided but whose delivery the broker has not yet
// acknowledged, with the request it answers (without its Input, which is not kept
// once a reply exists).
type OutboxEntry struct {
	Entry
	// Reply is the reply as given to Outbox or OutboxUnsent.
	Reply []byte
	// FlushBy is the deadline given to Outbox; the outbox is ordered by it.
	FlushBy time.Time
	// Unsent is true when the reply was kept with OutboxUnsent: it was never
	// handed to the broker, so no device can have seen it and the caller may
	// rewrite it (for example to say it is now too late). When false the reply may
	// already have been delivered, and must be published again unchanged.
	Unsent bool
}

// Dup tells Put's caller whether the request is new.
type Dup uint8

const (
	// New means the entry was stored: run the request.
	New Dup = iota
	// DupPending means the same key is pending, or its reply waits in the outbox
	// unsent: do not run it again; its reply will come from the first copy.
	DupPending
	// DupDone means the same key was completed within Options.Retention, or its
	// reply is in the outbox and may have been delivered (Outbox): do not run it;
	// PutResult.Reply holds the reply to publish again.
	DupDone
)

// String returns new, dup-pending or dup-done.
func (d Dup) String() string {
	switch d {
	case New:
		return "new"
	case DupPending:
		return "dup-pending"
	case DupDone:
		return "dup-done"
	}
	return fmt.Sprintf("dup(%d)", uint8(d))
}

// PutResult is the outcome of a successful Put.
type PutResult struct {
	// Dup tells whether the entry was new.
	Dup Dup
	// Seq is the stored entry's Seq: the one just assigned for New, the first
	// copy's for DupPending, zero for DupDone.
	Seq uint64
	// Reply is the reply given to Complete (or Outbox), for DupDone; nil
	// otherwise. It is a copy the caller owns.
	Reply []byte
}

// OpKind names a journal write, for Options.BeforeCommit. All writes go through
// the group commit.
type OpKind uint8

// The journal writes.
const (
	OpPut OpKind = iota + 1
	OpOutbox
	OpComplete
	OpGC // Key is zero
	// OpAnswered is Answered: an answer recorded for a key never put.
	OpAnswered
)

// String returns put, outbox, complete, gc or answered.
func (k OpKind) String() string {
	switch k {
	case OpPut:
		return "put"
	case OpOutbox:
		return "outbox"
	case OpComplete:
		return "complete"
	case OpGC:
		return "gc"
	case OpAnswered:
		return "answered"
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// Op is one write in a group commit, as shown to Options.BeforeCommit.
type Op struct {
	Kind OpKind
	Key  Key
}
