package protocol

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
	"time"
)

// Payload is a request as a device builds it. Marshal writes "id" first, so even a
// rejected oversized or broken payload can be correlated by its id.
type Payload struct {
	ID string
	// DeadlineMS is the budget relative to receipt; Deadline an absolute deadline.
	// Set at most one; with neither the application's default applies.
	DeadlineMS int64
	Deadline   time.Time
	// SentAt, if not zero, is sent as sent_at: deadline_ms then counts from it
	// (end to end, including time queued in the broker).
	SentAt time.Time
	Input  []float32
	// B64 sends Input as input_b64 (exact and about half the size) instead of a
	// JSON array.
	B64 bool
	// InputU8, if not nil, is sent as input_u8_b64 instead of Input: one byte
	// per value, which the gateway maps onto the application's input_range
	// (U8Value; QuantizeU8 makes it from float values). A quarter of input_b64's
	// size, for images.
	InputU8 []byte
	// ReplyTo, if set, asks for the reply on that topic (subject to the gateway's
	// allow-list).
	ReplyTo string
}

// DeadlineMS converts a budget to the wire's whole milliseconds, rounding up so the
// gateway never gets less time than asked; 0 stays 0 (use the default).
func DeadlineMS(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// Marshal returns the JSON payload.
func (p *Payload) Marshal() []byte {
	n := 64 + len(p.ID) + len(p.ReplyTo)
	switch {
	case p.InputU8 != nil:
		n += base64.StdEncoding.EncodedLen(len(p.InputU8))
	case p.B64:
		n += base64.StdEncoding.EncodedLen(4 * len(p.Input))
	default:
		n += 12 * len(p.Input)
	}
	return p.Append(make([]byte, 0, n))
}

// Append appends the JSON payload to dst.
func (p *Payload) Append(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendJSONString(dst, p.ID)
	if p.DeadlineMS > 0 {
		dst = append(dst, `,"deadline_ms":`...)
		dst = strconv.AppendInt(dst, p.DeadlineMS, 10)
	} else if !p.Deadline.IsZero() {
		dst = append(dst, `,"deadline":`...)
		dst = strconv.AppendInt(dst, p.Deadline.UnixMilli(), 10)
	}
	if !p.SentAt.IsZero() {
		dst = append(dst, `,"sent_at":`...)
		dst = strconv.AppendInt(dst, p.SentAt.UnixMilli(), 10)
	}
	if p.ReplyTo != "" {
		dst = append(dst, `,"reply_to":`...)
		dst = appendJSONString(dst, p.ReplyTo)
	}
	switch {
	case p.InputU8 != nil:
		dst = append(dst, `,"input_u8_b64":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, p.InputU8)
		dst = append(dst, '"')
	case p.B64:
		dst = append(dst, `,"input_b64":"`...)
		raw := make([]byte, 4*len(p.Input))
		for i, v := range p.Input {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
		dst = base64.StdEncoding.AppendEncode(dst, raw)
		dst = append(dst, '"')
	default:
		dst = append(dst, `,"input":[`...)
		for i, v := range p.Input {
			if i > 0 {
				dst = append(dst, ',')
			}
			f := float64(v)
			if math.IsNaN(f) || math.IsInf(f, 0) {
				// Not representable in JSON; send null so the gateway rejects it
				// as bad_input rather than the payload being unparseable.
				dst = append(dst, "null"...)
				continue
			}
			dst = strconv.AppendFloat(dst, f, 'g', -1, 32)
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// appendJSONString appends s quoted as encoding/json quotes it (HTML-safe). A
// string with anything but plain printable ASCII other than '"', '\\', '<', '>'
// and '&' is left to encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
