package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"slices"
	"unicode/utf8"
)

// rawFields holds the raw JSON value of each request field (nil when absent) and
// the name of an unknown field, if any.
type rawFields struct {
	v, id, deadlineMS, deadline, sentAt, input, inputB64, inputU8B64, replyTo []byte
	unknown                                                                   *string
}

// slot returns where the raw value of field k goes, or nil for an unknown field.
func (f *rawFields) slot(k string) *[]byte {
	switch k {
	case fieldV:
		return &f.v
	case fieldID:
		return &f.id
	case fieldDeadlineMS:
		return &f.deadlineMS
	case fieldDeadline:
		return &f.deadline
	case fieldSentAt:
		return &f.sentAt
	case fieldInput:
		return &f.input
	case fieldInputB64:
		return &f.inputB64
	case fieldInputU8B64:
		return &f.inputU8B64
	case fieldReplyTo:
		return &f.replyTo
	}
	return nil
}

// parseFields reads payload's fields: scanFields, or decodeFields where it
// cannot decide.
func parseFields(payload []byte) (rawFields, error) {
	if f, ok := scanFields(payload); ok {
		return f, nil
	}
	return decodeFields(payload)
}

// decodeFields is the reference decoder: encoding/json into a map. Duplicate keys:
// the last one wins. It returns an error describing why payload is not a JSON
// object.
func decodeFields(payload []byte) (rawFields, error) {
	// A payload that does not even start as an object says so, rather than
	// with encoding/json's view of it ("invalid character 'o' in literal
	// null" for "nope").
	if t := bytes.TrimLeft(payload, " \t\r\n"); len(t) == 0 {
		return rawFields{}, errors.New("payload must be a JSON object; it is empty")
	} else if t[0] != '{' {
		return rawFields{}, fmt.Errorf("payload must be a JSON object, starting with '{'; it starts with %q", firstRunes(t, 8))
	}
	var m map[string]json.RawMessage
	err := json.Unmarshal(payload, &m)
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return rawFields{}, fmt.Errorf("invalid JSON at byte %d: %v", se.Offset, se)
	case err != nil || m == nil:
		return rawFields{}, errors.New("payload must be a JSON object")
	}
	var f rawFields
	for _, k := range slices.Sorted(maps.Keys(m)) { // the same unknown field every time
		if p := f.slot(k); p != nil {
			*p = m[k]
		} else if f.unknown == nil {
			f.unknown = &k
		}
	}
	return f, nil
}

// scanFields is the fast path for the common case: a JSON object whose keys are
// known field names without escapes, each given once, with scalar values or an
// array of numbers. It validates as strictly as encoding/json and returns the same
// raw values as decodeFields; for anything else (unknown or duplicate keys, nested
// objects, invalid JSON) it returns false and the caller uses decodeFields, which
// decides. It exists because encoding/json scans a 784-value input twice.
func scanFields(b []byte) (rawFields, bool) {
	var f rawFields
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return f, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return f, skipSpace(b, i+1) == len(b)
	}
	for {
		// key
		if i >= len(b) || b[i] != '"' {
			return f, false
		}
		j := i + 1
		for j < len(b) && b[j] != '"' && b[j] != '\\' && b[j] >= 0x20 {
			j++
		}
		if j >= len(b) || b[j] != '"' {
			return f, false
		}
		p := f.slot(string(b[i+1 : j]))
		if p == nil || *p != nil {
			return f, false // unknown or duplicate: let the reference decoder decide
		}
		i = skipSpace(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return f, false
		}
		i = skipSpace(b, i+1)
		// value
		end := scanValue(b, i)
		if end < 0 {
			return f, false
		}
		*p = b[i:end:end]
		i = skipSpace(b, end)
		if i >= len(b) {
			return f, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return f, skipSpace(b, i+1) == len(b)
		default:
			return f, false
		}
	}
}

// scanValue returns the end of the value at b[i:] if it is a string, a number,
// true, false, null or an array of numbers; else -1.
func scanValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		return scanString(b, i)
	case c == '-' || (c >= '0' && c <= '9'):
		return scanNumber(b, i)
	case c == '[':
		j := skipSpace(b, i+1)
		if j < len(b) && b[j] == ']' {
			return j + 1
		}
		for {
			if j+8 <= len(b) && binary.LittleEndian.Uint64(b[j:]) == fourZeros {
				j = skipSpace(b, j+8) // four valid numbers, each followed by a comma
				continue
			}
			if n := shortFractionLen(b, j); n > 0 {
				j += n
			} else {
				j = scanNumber(b, j)
			}
			if j < 0 {
				return -1
			}
			j = skipSpace(b, j)
			if j >= len(b) {
				return -1
			}
			if b[j] == ']' {
				return j + 1
			}
			if b[j] != ',' {
				return -1
			}
			j = skipSpace(b, j+1)
		}
	default:
		for _, lit := range [...]string{"null", "true", "false"} {
			if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
				return i + len(lit)
			}
		}
		return -1
	}
}

// hasControl reports whether b holds a byte below 0x20, eight bytes at a time:
// (x - 0x20 in every byte) &^ x has the top bit set in a byte that was below
// 0x20 (and in none when none was: a borrow starts only at such a byte).
func hasControl(b []byte) bool {
	for len(b) >= 8 {
		x := binary.LittleEndian.Uint64(b)
		if (x-0x20*swarOnes)&^x&swarHighs != 0 {
			return true
		}
		b = b[8:]
	}
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// scanString returns the end of the JSON string starting at b[i] == '"', or -1.
// Like encoding/json it accepts any byte >= 0x20 (invalid UTF-8 is replaced when
// the string is decoded).
func scanString(b []byte, i int) int {
	// Fast path for the common string without escapes (a 4 KB input_b64): find
	// the closing quote with bytes.IndexByte, then check the span in a tight loop.
	if k := bytes.IndexByte(b[i+1:], '"'); k >= 0 {
		span := b[i+1 : i+1+k]
		if bytes.IndexByte(span, '\\') < 0 {
			if hasControl(span) {
				return -1
			}
			return i + 1 + k + 1
		}
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1
		case c < 0x20:
			return -1
		case c == '\\':
			j++
			if j >= len(b) {
				return -1
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(b) {
					return -1
				}
				for _, h := range b[j+1 : j+5] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return -1
					}
				}
				j += 4
			default:
				return -1
			}
		}
	}
	return -1
}

// scanNumber returns the end of the JSON number at b[i:] (RFC 8259 grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?), or -1.
func scanNumber(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case b[i]-'1' < 9:
		for i++; i < len(b) && b[i]-'0' < 10; i++ {
		}
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		// The digits after the point: the first eight at once (digitEnd
		// inlined by hand).
		k := i + 1
		if k+8 <= len(b) {
			if m := nonDigits(binary.LittleEndian.Uint64(b[k:])); m != 0 {
				i = k + bits.TrailingZeros64(m)>>3
			} else {
				i = digitEnd(b, k+8)
			}
		} else {
			i = digitEnd(b, k)
		}
		if i == k {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		k := digitEnd(b, i)
		if k == i {
			return -1
		}
		i = k
	}
	return i
}

// firstRunes is the start of b, at most n bytes, cut back to whole UTF-8
// characters (invalid bytes are quoted as they are).
func firstRunes(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	b = b[:n]
	for len(b) > 0 && !utf8.Valid(b) && len(b) > n-3 {
		b = b[:len(b)-1]
	}
	return string(b) + "..."
}
