package protocol

import "fmt"

// Reason is a machine-readable rejection code, sent as the reply's "reason". A
// Reason is an error, so errors.Is(err, ReasonOverload) works on a *Rejection.
type Reason string

// Reasons found by ParseRequest: the request is invalid and retrying it unchanged
// will fail again.
const (
	// ReasonBadTopic: the topic is not {prefix}/req/{app}/{device}. Never sent: no
	// reply topic can be derived.
	ReasonBadTopic Reason = "bad_topic"
	// ReasonBadDevice: the device level is not 1-64 of [A-Za-z0-9_.-].
	ReasonBadDevice Reason = "bad_device"
	// ReasonUnknownApp: no application of that name is served.
	ReasonUnknownApp Reason = "unknown_app"
	// ReasonPayloadTooLarge: the payload exceeds the configured maximum; it is
	// refused before it is parsed.
	ReasonPayloadTooLarge Reason = "payload_too_large"
	// ReasonBadJSON: the payload is not a JSON object.
	ReasonBadJSON Reason = "bad_json"
	// ReasonUnknownField: the object has a field this protocol version does not define.
	ReasonUnknownField Reason = "unknown_field"
	// ReasonUnsupportedVersion: "v" is present and is not 1.
	ReasonUnsupportedVersion Reason = "unsupported_version"
	// ReasonBadID: "id" is missing, not a string, empty, longer than 128 characters
	// or contains control characters.
	ReasonBadID Reason = "bad_id"
	// ReasonReplyToNotAllowed: "reply_to" is not a string, contains a wildcard or is
	// not matched by the allow-list. The rejection goes to the device's own topic.
	ReasonReplyToNotAllowed Reason = "reply_to_not_allowed"
	// ReasonDeadlineConflict: both "deadline_ms" and "deadline" are given.
	ReasonDeadlineConflict Reason = "deadline_conflict"
	// ReasonBadDeadline: "deadline_ms" is not a positive integer, or "deadline" is
	// not an integer.
	ReasonBadDeadline Reason = "bad_deadline"
	// ReasonDeadlinePast: the absolute deadline is at or before the time of receipt.
	ReasonDeadlinePast Reason = "deadline_past"
	// ReasonDeadlineTooSoon: the budget is positive but below the configured minimum.
	ReasonDeadlineTooSoon Reason = "deadline_too_soon"
	// ReasonDeadlineTooFar: the budget exceeds the configured maximum.
	ReasonDeadlineTooFar Reason = "deadline_too_far"
	// ReasonInputConflict: more than one of "input", "input_b64" and
	// "input_u8_b64" is given.
	ReasonInputConflict Reason = "input_conflict"
	// ReasonBadInput: no input is given, "input" is not a flat array of numbers,
	// "input_b64" is not standard padded base64 of a whole number of float32
	// values, or "input_u8_b64" is not standard padded base64 or is sent to an
	// application without a finite input_range.
	ReasonBadInput Reason = "bad_input"
	// ReasonBadInputSize: the input does not have exactly the application's size.
	ReasonBadInputSize Reason = "bad_input_size"
	// ReasonNonFiniteInput: a value is NaN or infinite, or overflows float32.
	ReasonNonFiniteInput Reason = "non_finite_input"
	// ReasonInputOutOfRange: a value lies outside the application's input range.
	ReasonInputOutOfRange Reason = "input_out_of_range"
	// ReasonBadSentAt: "sent_at" is not a positive integer.
	ReasonBadSentAt Reason = "bad_sent_at"
)

// Reasons decided by the gateway after a request parsed.
const (
	// ReasonOverload: the queue is full; retry_after_ms says when to retry.
	ReasonOverload Reason = "overload"
	// ReasonShuttingDown: the gateway is stopping; retry against it later.
	ReasonShuttingDown Reason = "shutting_down"
	// ReasonInternal: the gateway failed to admit the request (for example a store
	// write failed); retrying may help.
	ReasonInternal Reason = "internal"
	// ReasonEngineCrashed: the gateway process died twice while a model ran on
	// this request, the second time with it alone in its batch; it is answered
	// error instead of being run again. Sending the same input again will
	// most likely crash it again.
	ReasonEngineCrashed Reason = "engine_crashed"
)

// Reasons carried by degraded and expired replies: why the gateway answered without
// a model (degraded) or without any answer (expired). They are informational; the
// status says what happened.
const (
	// ReasonNoVariantInTime: no variant could finish before the deadline.
	ReasonNoVariantInTime Reason = "no_variant_meets_deadline"
	// ReasonOverloadShed: under overload the scheduler chose this request as the one
	// whose model answer was worth least per second of engine time.
	ReasonOverloadShed Reason = "overload_shed"
	// ReasonPastHardStop: even the fastest variant would finish after the hard stop
	// (deadline plus budget), where an answer is worth nothing.
	ReasonPastHardStop Reason = "past_hard_stop"
	// ReasonNotWorth: running a model was predicted to be worth nothing.
	ReasonNotWorth Reason = "not_worth_running"
	// ReasonEstimateWorthMore: the request's estimate (corrected for the live
	// class mix) was predicted to be worth at least as much as any model's
	// answer, so the gateway answered from it without running a model.
	ReasonEstimateWorthMore Reason = "estimate_worth_more"
	// ReasonNoVariantFits: no variant of the application fits the memory budget.
	ReasonNoVariantFits Reason = "no_variant_fits_budget"
	// ReasonExpiredWhileDown: the deadline passed while the gateway was down; found
	// in the journal at start-up.
	ReasonExpiredWhileDown Reason = "expired_while_down"
	// ReasonExpiredBeforeReceipt: sent_at plus the budget lay before the gateway
	// received the request (it waited in the broker or on the network).
	ReasonExpiredBeforeReceipt Reason = "expired_before_receipt"
	// ReasonBrokerUnavailable: the answer was ready in time but the broker could not
	// take it before the deadline; it waited in the gateway's outbox.
	ReasonBrokerUnavailable Reason = "broker_unavailable"
)

var reasons = map[Reason]bool{
	ReasonBadTopic: false, ReasonBadDevice: false, ReasonUnknownApp: false,
	ReasonPayloadTooLarge: false, ReasonBadJSON: false, ReasonUnknownField: false,
	ReasonUnsupportedVersion: false, ReasonBadID: false, ReasonReplyToNotAllowed: false,
	ReasonDeadlineConflict: false, ReasonBadDeadline: false, ReasonDeadlinePast: false,
	ReasonDeadlineTooSoon: false, ReasonDeadlineTooFar: false, ReasonInputConflict: false,
	ReasonBadInput: false, ReasonBadInputSize: false, ReasonNonFiniteInput: false,
	ReasonInputOutOfRange: false, ReasonBadSentAt: false,
	ReasonOverload: true, ReasonShuttingDown: true, ReasonInternal: true,
	ReasonEngineCrashed: false,
}

var answerReasons = map[Reason]bool{
	ReasonNoVariantInTime: true, ReasonOverloadShed: true, ReasonPastHardStop: true,
	ReasonNotWorth: true, ReasonNoVariantFits: true, ReasonExpiredWhileDown: true,
	ReasonExpiredBeforeReceipt: true, ReasonBrokerUnavailable: true, ReasonEstimateWorthMore: true,
}

// AnswerReasons returns the reasons degraded and expired replies carry.
func AnswerReasons() []Reason {
	out := make([]Reason, 0, len(answerReasons))
	for r := range answerReasons {
		out = append(out, r)
	}
	return out
}

// Reasons returns every rejection reason code (rejected and error replies) defined
// by this version, in no particular order.
func Reasons() []Reason {
	out := make([]Reason, 0, len(reasons))
	for r := range reasons {
		out = append(out, r)
	}
	return out
}

// Known reports whether r is a reason code defined by this protocol version.
func (r Reason) Known() bool { _, ok := reasons[r]; return ok || answerReasons[r] }

// Retryable reports whether the same request may succeed if sent again later
// (overload, shutting_down, internal).
func (r Reason) Retryable() bool { return reasons[r] }

// Error implements error.
func (r Reason) Error() string { return string(r) }

// Rejection is a request that is not admitted. It is an error whose Unwrap is its
// Reason.
type Rejection struct {
	Reason  Reason
	Message string
	// ID is the request id if it could be read, else "".
	ID string
	// App and Device are the topic's levels, possibly invalid ("" if the topic has
	// no such shape).
	App, Device string
	// ReplyTo is where the rejected reply goes: the allowed reply_to, else the
	// device's own reply topic; "" when none can be derived (do not reply).
	ReplyTo string
}

func (r *Rejection) Error() string {
	if r.ID != "" {
		return fmt.Sprintf("rejected %s/%s id %q: %s: %s", r.App, r.Device, r.ID, r.Reason, r.Message)
	}
	return fmt.Sprintf("rejected %s/%s: %s: %s", r.App, r.Device, r.Reason, r.Message)
}

// Unwrap returns the Reason.
func (r *Rejection) Unwrap() error { return r.Reason }

// Reply returns the rejected Reply to publish on r.ReplyTo. Call it only when
// r.ReplyTo is not empty.
func (r *Rejection) Reply() *Reply {
	return &Reply{V: Version, ID: r.ID, App: r.App, Device: r.Device,
		Status: StatusRejected, Reason: r.Reason, Error: r.Message}
}
