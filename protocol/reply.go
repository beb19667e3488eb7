package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// Version is the protocol version, sent as every reply's "v".
const Version = 1

// Status is a reply's outcome.
type Status string

// Statuses. Exactly one reply is published per request that reaches the gateway
// (except requests whose Rejection has no ReplyTo).
const (
	// StatusOK: a model answered and the reply was published by the deadline.
	StatusOK Status = "ok"
	// StatusLate: a model answered after the deadline, while the answer was still
	// worth computing.
	StatusLate Status = "late"
	// StatusDegraded: the cheap estimate answered instead of a model: no model
	// could make the deadline, the request was shed under overload, or the
	// estimate was worth more than any model's answer ("reason" says which).
	StatusDegraded Status = "degraded"
	// StatusExpired: the deadline passed before the request could run; no answer.
	StatusExpired Status = "expired"
	// StatusRejected: not admitted; "reason" and "error" say why.
	StatusRejected Status = "rejected"
	// StatusError: an internal failure after admission.
	StatusError Status = "error"
)

// statuses is the one list of reply statuses, in the order docs/protocol.md's
// "Statuses" table lists them. Valid, the gateway's metrics and tail, and the
// schemas' enums follow it (tests check docs/schema and docs/protocol.md).
var statuses = [...]Status{StatusOK, StatusLate, StatusDegraded, StatusExpired, StatusRejected, StatusError}

// Statuses returns every reply status this version defines, in the documented
// order (ok, late, degraded, expired, rejected, error).
func Statuses() []Status { return slices.Clone(statuses[:]) }

// Valid reports whether s is one of the defined statuses.
func (s Status) Valid() bool { return slices.Contains(statuses[:], s) }

// Answered reports whether a reply with this status carries a class.
func (s Status) Answered() bool {
	return s == StatusOK || s == StatusLate || s == StatusDegraded
}

// Reply is the JSON object the gateway publishes (QoS 1, not retained). Optional
// fields are pointers or omitempty, so an absent value is absent on the wire, never
// a zero. Devices must ignore fields they do not know.
type Reply struct {
	// V is the protocol version (1).
	V int `json:"v"`
	// ID echoes the request id; absent only in rejections where it could not be read.
	ID     string `json:"id,omitempty"`
	App    string `json:"app"`
	Device string `json:"device"`
	Status Status `json:"status"`
	// Reason is the machine-readable code of a rejected (or error) reply.
	Reason Reason `json:"reason,omitempty"`

	// Class, Label and Confidence are the answer (ok, late, degraded).
	Class      *int     `json:"class,omitempty"`
	Label      string   `json:"label,omitempty"`
	Confidence *float64 `json:"confidence,omitempty"`
	// Probs is the full class distribution; off by default (gateway option).
	Probs []float64 `json:"probs,omitempty"`
	// Model is the variant that answered, or the estimator for degraded replies.
	Model string `json:"model,omitempty"`
	// Batch is the size of the batch the request ran in.
	Batch int `json:"batch,omitempty"`
	// EstAccuracy is the gateway's estimate of this answer's probability of being
	// right (SneakPeek estimate for the chosen variant, or profiled accuracy).
	EstAccuracy *float64 `json:"est_accuracy,omitempty"`

	// QueueMS is receipt to start of inference; InferMS the batch's forward pass;
	// TotalMS receipt to publication of the reply. Milliseconds, microsecond precision.
	QueueMS *float64 `json:"queue_ms,omitempty"`
	InferMS *float64 `json:"infer_ms,omitempty"`
	TotalMS *float64 `json:"total_ms,omitempty"`
	// SlackMS is deadline minus publication time (negative when late).
	SlackMS *float64 `json:"slack_ms,omitempty"`
	// DeadlineMet says whether the reply was published by the deadline.
	DeadlineMet *bool `json:"deadline_met,omitempty"`

	// Error is a human-readable message for rejected, expired and error replies.
	Error string `json:"error,omitempty"`
	// RetryAfterMS is set on rejections where retrying later helps.
	RetryAfterMS *int64 `json:"retry_after_ms,omitempty"`
}

// Millis returns d in milliseconds rounded to the microsecond, as a pointer for
// the Reply's *_ms fields.
func Millis(d time.Duration) *float64 {
	v := math.Round(float64(d)/float64(time.Microsecond)) / 1000
	return &v
}

// Ptr returns a pointer to v, for the Reply's optional fields.
func Ptr[T any](v T) *T { return &v }

// NewReply returns a reply to req with the given status and the identifying
// fields (v, id, app, device) filled.
func (req *Request) NewReply(status Status) *Reply {
	return &Reply{V: Version, ID: req.ID, App: req.App, Device: req.Device, Status: status}
}

// Reject returns a rejected reply to an admitted-looking request refused by the
// gateway (overload, shutting_down, internal). retryAfter > 0 sets retry_after_ms
// (rounded up to a whole millisecond).
func (req *Request) Reject(reason Reason, msg string, retryAfter time.Duration) *Reply {
	r := req.NewReply(StatusRejected)
	r.Reason, r.Error = reason, msg
	if retryAfter > 0 {
		ms := int64((retryAfter + time.Millisecond - 1) / time.Millisecond)
		r.RetryAfterMS = &ms
	}
	return r
}

// ErrBadReply is wrapped by ParseReply errors.
var ErrBadReply = errors.New("bad reply")

// ParseReply decodes a reply. Unknown fields are ignored (forward compatible). It
// returns an error wrapping ErrBadReply when b is not a JSON object, "v" is not 1
// or "status" is not a known status.
func ParseReply(b []byte) (*Reply, error) {
	var r Reply
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadReply, err)
	}
	if r.V != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadReply, r.V, Version)
	}
	if !r.Status.Valid() {
		return nil, fmt.Errorf("%w: status %q", ErrBadReply, r.Status)
	}
	return &r, nil
}
