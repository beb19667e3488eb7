package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxIDLen is the longest request id, in characters (Unicode code points).
const MaxIDLen = 128

// Limits bound what ParseRequest admits. A zero field takes its default from
// DefaultLimits.
type Limits struct {
	// MaxPayloadBytes is the largest payload parsed; larger ones are rejected
	// unparsed (payload_too_large).
	MaxPayloadBytes int
	// MinDeadline and MaxDeadline bound the budget (deadline minus receipt).
	MinDeadline, MaxDeadline time.Duration
}

// DefaultLimits returns the default limits: 256 KiB payloads, budgets from 1 ms to
// 10 minutes.
func DefaultLimits() Limits {
	return Limits{MaxPayloadBytes: 256 << 10, MinDeadline: time.Millisecond, MaxDeadline: 10 * time.Minute}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxPayloadBytes <= 0 {
		l.MaxPayloadBytes = d.MaxPayloadBytes
	}
	if l.MinDeadline <= 0 {
		l.MinDeadline = d.MinDeadline
	}
	if l.MaxDeadline <= 0 {
		l.MaxDeadline = d.MaxDeadline
	}
	return l
}

// AppSpec is what the protocol needs to know about an application.
type AppSpec struct {
	// InputSize is the exact number of input values.
	InputSize int
	// DefaultDeadline is the budget of a request that names no deadline.
	DefaultDeadline time.Duration
	// Range, if not nil, is the closed interval every input value must lie in.
	Range *[2]float64
}

// Env is everything ParseRequest needs besides the message.
type Env struct {
	// Prefix is the topic prefix; "" means DefaultPrefix.
	Prefix string
	Limits Limits
	// ReplyAllow is the reply_to allow-list; nil allows only the device's own
	// reply topic.
	ReplyAllow *AllowList
	// App looks an application up by name. Required.
	App func(app string) (AppSpec, bool)
}

// ReplyTo is the topic a request payload for app and device asks its reply on,
// as ParseRequest resolves it: its allowed reply_to, or the device's own reply
// topic when it names none. ok is false when its reply_to is not a string or not
// allowed, or the payload does not parse. It is for a request rejected before
// its reply_to was read (unknown_app, whose rejection goes to the own reply
// topic), whose copy of an answered request is given the stored reply where the
// first copy's went.
func (env Env) ReplyTo(payload []byte, app, device string) (string, bool) {
	fields, err := parseFields(payload)
	if err != nil {
		return "", false
	}
	rt, bad := env.replyTopic(fields, app, device)
	return rt, bad == ""
}

// JournaledReplyTo is where a reply to a journaled request of app and device
// goes whose journaled reply topic is topic: topic itself, or the device's own
// reply topic when topic is not Publishable. A journal written by a version
// that allowed a reply_to a broker refuses (and closes the publisher's
// connection for) would otherwise cut the gateway off at every start.
func (env Env) JournaledReplyTo(topic, app, device string) string {
	if Publishable(topic, env.prefix()) {
		return topic
	}
	return ReplyTopic(env.prefix(), app, device)
}

// prefix is the topic prefix, DefaultPrefix for "".
func (env Env) prefix() string {
	if env.Prefix == "" {
		return DefaultPrefix
	}
	return env.Prefix
}

// replyTopic resolves the reply topic of a request of app and device whose
// fields are fields: its reply_to, or the device's own reply topic when it
// names none. bad, when not "", says why its reply_to is refused
// (ReasonReplyToNotAllowed).
func (env Env) replyTopic(fields rawFields, app, device string) (topic, bad string) {
	raw, ok := present(fields.replyTo)
	if !ok {
		return ReplyTopic(env.prefix(), app, device), ""
	}
	rt, ok := jsonString(raw)
	if !ok {
		return "", "reply_to must be a string"
	}
	if !env.ReplyAllow.Allows(rt, env.prefix(), app, device) {
		return "", fmt.Sprintf("reply_to %q is not allowed", truncate(rt, 128))
	}
	return rt, ""
}

// Request is a valid, admitted-looking request.
type Request struct {
	ID     string
	App    string
	Device string
	// ReplyTo is the resolved reply topic: the allowed reply_to or
	// {prefix}/res/{app}/{device}.
	ReplyTo string
	// Received is the time of receipt passed to ParseRequest.
	Received time.Time
	// SentAt is the device's sent_at (zero when absent).
	SentAt time.Time
	// Deadline is absolute: deadline_ms (or the application's default) after
	// sent_at when given and not ahead of Received, else after Received; or the
	// given absolute deadline. With sent_at it may lie at or before Received
	// (ExpiredOnArrival).
	Deadline time.Time
	// Input has exactly the application's InputSize finite values, within its
	// Range; nil when the request is ExpiredOnArrival, and from ParseHeader until
	// DecodeInput.
	Input []float32

	// The raw input fields and the application, for DecodeInput.
	rawInput, rawB64, rawU8 []byte
	spec                    AppSpec
	decode                  bool // DecodeInput has work to do
}

// Budget is Deadline minus Received.
func (r *Request) Budget() time.Duration { return r.Deadline.Sub(r.Received) }

// ExpiredOnArrival reports whether the deadline passed before the request was
// received (only possible with sent_at: it waited in the broker or on the
// network). ParseRequest returns such a request without decoding or checking its
// input (Input is nil); it is answered expired (ReasonExpiredBeforeReceipt).
func (r *Request) ExpiredOnArrival() bool { return !r.Deadline.After(r.Received) }

// Fields of the request object.
const (
	fieldV          = "v"
	fieldID         = "id"
	fieldDeadlineMS = "deadline_ms"
	fieldDeadline   = "deadline"
	fieldSentAt     = "sent_at"
	fieldInput      = "input"
	fieldInputB64   = "input_b64"
	fieldInputU8B64 = "input_u8_b64"
	fieldReplyTo    = "reply_to"
)

// peekLimit bounds how much of a broken or oversized payload is scanned for its id.
const peekLimit = 4096

// ParseRequest validates a request received on topic with payload at now. It
// returns exactly one of a *Request (every check passed) or a *Rejection. Checks
// run in this order, and the first failure decides the reason: topic shape,
// device name, application, payload size (before parsing), JSON object, id, unknown
// fields, v, reply_to, sent_at, deadline, input. From the id on, a rejection echoes the id;
// from reply_to on, it goes to the allowed reply_to.
func ParseRequest(topic string, payload []byte, now time.Time, env Env) (*Request, *Rejection) {
	return parseRequest(topic, payload, now, env, false)
}

// ParseHeader is ParseRequest without the input: it runs every check but those
// of the input and returns the request with Input nil. Call DecodeInput before
// using the input. It lets a caller refuse a request (for example under
// overload) without paying for decoding an input it will not use; the request's
// raw input aliases payload until then.
func ParseHeader(topic string, payload []byte, now time.Time, env Env) (*Request, *Rejection) {
	return parseRequest(topic, payload, now, env, true)
}

func parseRequest(topic string, payload []byte, now time.Time, env Env, header bool) (*Request, *Rejection) {
	prefix := env.prefix()
	lim := env.Limits.withDefaults()
	app, device, err := ParseRequestTopic(prefix, topic)
	if errors.Is(err, ErrNotRequestTopic) {
		return nil, &Rejection{Reason: ReasonBadTopic, Message: fmt.Sprintf("topic is not %s/req/{app}/{device}", prefix)}
	}
	rej := &Rejection{App: app, Device: device}
	if rt := ReplyTopic(prefix, app, device); validTopicName(rt) {
		rej.ReplyTo = rt
	}
	reject := func(r Reason, format string, args ...any) (*Request, *Rejection) {
		rej.Reason, rej.Message = r, fmt.Sprintf(format, args...)
		return nil, rej
	}
	if err != nil {
		rej.ID = peekID(payload, true)
		return reject(ReasonBadDevice, "device name must be 1-%d of [A-Za-z0-9_.-]", MaxDeviceLen)
	}
	var spec AppSpec
	ok := false
	if env.App != nil {
		spec, ok = env.App(app)
	}
	if !ok {
		rej.ID = peekID(payload, true)
		return reject(ReasonUnknownApp, "no application %q", app)
	}
	if len(payload) > lim.MaxPayloadBytes {
		rej.ID = peekID(payload, true)
		return reject(ReasonPayloadTooLarge, "payload is %d bytes, limit %d", len(payload), lim.MaxPayloadBytes)
	}

	fields, err := parseFields(payload)
	if err != nil {
		rej.ID = peekID(payload, true)
		return reject(ReasonBadJSON, "%s", err)
	}

	// id
	raw, ok := present(fields.id)
	if !ok {
		return reject(ReasonBadID, "id is required")
	}
	id, ok := jsonString(raw)
	if !ok {
		if numericID(raw) {
			// A device that sent a number can still match the rejection: echo
			// the number's text as the id.
			rej.ID = string(raw)
			return reject(ReasonBadID, "id must be a string (ids are strings: send \"%s\", not %s)", raw, raw)
		}
		return reject(ReasonBadID, "id must be a string")
	}
	if !utf8.Valid(raw) || strings.ContainsRune(id, utf8.RuneError) {
		// Invalid UTF-8 (and lone surrogate escapes) would decode to U+FFFD, so two
		// different ids could become one: refuse rather than rewrite.
		return reject(ReasonBadID, "id must be valid UTF-8 without U+FFFD")
	}
	if n := utf8.RuneCountInString(id); n < 1 || n > MaxIDLen {
		return reject(ReasonBadID, "id must be 1-%d characters, got %d", MaxIDLen, n)
	}
	if strings.IndexFunc(id, isControl) >= 0 {
		return reject(ReasonBadID, "id must not contain control characters")
	}
	rej.ID = id

	// unknown fields and version
	if fields.unknown != nil {
		return reject(ReasonUnknownField, "unknown field %q (protocol v%d fields: id, deadline_ms, deadline, sent_at, input, input_b64, input_u8_b64, reply_to, v)", truncate(*fields.unknown, 64), Version)
	}
	if raw, ok := present(fields.v); ok {
		if v, err := strconv.ParseInt(string(raw), 10, 64); err != nil || v != Version {
			return reject(ReasonUnsupportedVersion, "v must be %d, got %s", Version, truncate(string(raw), 32))
		}
	}

	// reply_to
	replyTo, bad := env.replyTopic(fields, app, device)
	if bad != "" {
		return reject(ReasonReplyToNotAllowed, "%s", bad)
	}
	if _, named := present(fields.replyTo); named {
		rej.ReplyTo = replyTo
	}

	// sent_at: the device's clock when it published; deadline_ms then counts from
	// it, so time spent queued in the broker is inside the budget. A clock ahead of
	// the gateway's counts from receipt instead.
	origin := now
	var sentAt time.Time
	if raw, ok := present(fields.sentAt); ok {
		ms, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil || ms <= 0 {
			return reject(ReasonBadSentAt, "sent_at must be a positive integer (Unix time in ms), got %s", truncate(string(raw), 32))
		}
		sentAt = time.UnixMilli(ms)
		if sentAt.Before(now) {
			origin = sentAt
		}
	}

	// deadline
	rawMS, hasMS := present(fields.deadlineMS)
	rawAbs, hasAbs := present(fields.deadline)
	var deadline time.Time
	switch {
	case hasMS && hasAbs:
		return reject(ReasonDeadlineConflict, "give deadline_ms or deadline, not both")
	case hasMS:
		ms, err := strconv.ParseInt(string(rawMS), 10, 64)
		switch {
		case errors.Is(err, strconv.ErrRange) && rawMS[0] != '-':
			return reject(ReasonDeadlineTooFar, "deadline_ms %s exceeds the maximum %d", truncate(string(rawMS), 32), lim.MaxDeadline.Milliseconds())
		case err != nil || ms <= 0:
			return reject(ReasonBadDeadline, "deadline_ms must be a positive integer, got %s", truncate(string(rawMS), 32))
		case ms > lim.MaxDeadline.Milliseconds():
			return reject(ReasonDeadlineTooFar, "deadline_ms %d exceeds the maximum %d", ms, lim.MaxDeadline.Milliseconds())
		case time.Duration(ms)*time.Millisecond < lim.MinDeadline:
			return reject(ReasonDeadlineTooSoon, "deadline_ms %d is below the minimum %s", ms, lim.MinDeadline)
		}
		deadline = origin.Add(time.Duration(ms) * time.Millisecond)
	case hasAbs:
		ms, err := strconv.ParseInt(string(rawAbs), 10, 64)
		switch {
		case errors.Is(err, strconv.ErrRange) && rawAbs[0] != '-':
			return reject(ReasonDeadlineTooFar, "deadline %s is too far away", truncate(string(rawAbs), 32))
		case errors.Is(err, strconv.ErrRange):
			return reject(ReasonDeadlinePast, "deadline %s is in the past", truncate(string(rawAbs), 32))
		case err != nil:
			return reject(ReasonBadDeadline, "deadline must be an integer (Unix time in ms), got %s", truncate(string(rawAbs), 32))
		}
		deadline = time.UnixMilli(ms)
		switch budget := deadline.Sub(now); {
		case budget <= 0 && inSeconds(ms, now):
			return reject(ReasonDeadlinePast, "deadline %d is %s in the past: it looks like seconds; deadline is Unix milliseconds", ms, (-budget).Round(time.Millisecond))
		case budget <= 0:
			return reject(ReasonDeadlinePast, "deadline %d is %s in the past", ms, (-budget).Round(time.Millisecond))
		case budget > lim.MaxDeadline:
			return reject(ReasonDeadlineTooFar, "deadline %d is %s away, maximum %s", ms, budget.Round(time.Millisecond), lim.MaxDeadline)
		case budget < lim.MinDeadline:
			return reject(ReasonDeadlineTooSoon, "deadline %d is %s away, minimum %s", ms, budget, lim.MinDeadline)
		}
	default:
		deadline = origin.Add(spec.DefaultDeadline)
	}
	if !deadline.After(now) {
		// Expired on arrival: its answer is fixed whatever the input, and under a
		// backlog in the broker such requests come by the thousand, so the input
		// is not decoded (nor checked).
		return &Request{ID: id, App: app, Device: device, ReplyTo: replyTo,
			Received: now, SentAt: sentAt, Deadline: deadline}, nil
	}

	req := &Request{ID: id, App: app, Device: device, ReplyTo: replyTo,
		Received: now, SentAt: sentAt, Deadline: deadline,
		rawInput: fields.input, rawB64: fields.inputB64, rawU8: fields.inputU8B64, spec: spec, decode: true}
	if header {
		return req, nil
	}
	if rej := req.DecodeInput(); rej != nil {
		return nil, rej
	}
	return req, nil
}

// inSeconds reports whether an absolute deadline ms, read as Unix seconds, lies
// within a year of now: a device that sent seconds where milliseconds are due.
func inSeconds(ms int64, now time.Time) bool {
	const year = 366 * 24 * time.Hour
	if ms <= 0 || ms > math.MaxInt64/1000 {
		return false
	}
	d := time.UnixMilli(ms * 1000).Sub(now)
	return d > -year && d < year
}

// DecodeInput decodes and checks the input of a request from ParseHeader,
// setting Input, or returns the Rejection ParseRequest would have returned for
// it. It does nothing for a request whose input is decoded already (or that is
// ExpiredOnArrival).
func (req *Request) DecodeInput() *Rejection {
	if !req.decode {
		return nil
	}
	req.decode = false
	rawIn, hasIn := present(req.rawInput)
	rawB64, hasB64 := present(req.rawB64)
	rawU8, hasU8 := present(req.rawU8)
	req.rawInput, req.rawB64, req.rawU8 = nil, nil, nil
	reject := func(r Reason, format string, args ...any) *Rejection {
		return &Rejection{Reason: r, Message: fmt.Sprintf(format, args...), ID: req.ID,
			App: req.App, Device: req.Device, ReplyTo: req.ReplyTo}
	}
	var input []float32
	var ierr *inputError
	switch n := btoi(hasIn) + btoi(hasB64) + btoi(hasU8); {
	case n > 1:
		return reject(ReasonInputConflict, "give exactly one of input, input_b64 and input_u8_b64")
	case hasIn:
		input, ierr = parseArray(rawIn, req.spec.InputSize)
	case hasB64:
		input, ierr = parseB64(rawB64, req.spec.InputSize)
	case hasU8:
		rng := req.spec.Range
		if !UsableU8Range(rng) {
			return reject(ReasonBadInput, "input_u8_b64 needs a finite input_range, and application %q declares none: send input or input_b64", req.App)
		}
		// Every value lies in the range by construction: no checkValues.
		if input, ierr = parseU8B64(rawU8, req.spec.InputSize, rng[0], rng[1]); ierr != nil {
			return reject(ierr.reason, "%s", ierr.msg)
		}
		req.Input = input
		return nil
	default:
		return reject(ReasonBadInput, "one of input, input_b64 and input_u8_b64 is required")
	}
	if ierr != nil {
		return reject(ierr.reason, "%s", ierr.msg)
	}
	if ierr := checkValues(input, req.spec.Range); ierr != nil {
		return reject(ierr.reason, "%s", ierr.msg)
	}
	req.Input = input
	return nil
}

// numericID reports whether raw is a JSON number short enough to be echoed
// as an id.
func numericID(raw []byte) bool {
	return len(raw) <= MaxIDLen && scanNumber(raw, 0) == len(raw)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// present returns raw unless the field is absent or null.
func present(raw []byte) ([]byte, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, false
	}
	return raw, true
}

// jsonString decodes a raw JSON value that must be a string.
func jsonString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	if s := raw[1 : len(raw)-1]; !hasEscapeOrNonASCII(s) {
		return string(s), true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

func hasEscapeOrNonASCII(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c >= 0x80 || c < 0x20 {
			return true
		}
	}
	return false
}

func isControl(r rune) bool { return r < 0x20 || (r >= 0x7f && r < 0xa0) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

func validID(s string) bool {
	n := utf8.RuneCountInString(s)
	return n >= 1 && n <= MaxIDLen && strings.IndexFunc(s, isControl) < 0
}
