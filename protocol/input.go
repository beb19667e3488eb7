package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"strconv"
	"unsafe"
)

type inputError struct {
	reason Reason
	msg    string
}

func inputErr(r Reason, format string, args ...any) *inputError {
	return &inputError{reason: r, msg: fmt.Sprintf(format, args...)}
}

// parseArray reads a flat JSON array of exactly size numbers. raw has already been
// validated as JSON by encoding/json, so only the value's shape is checked here.
// Runs of "0," are taken four at a time and 0.ddd by word operations
// (digits.go); each other number is converted by parseFloat32's fast path when
// it can, else by strconv.ParseFloat: the values, and what is refused and why,
// are those of strconv.ParseFloat(text, 32) on every number (FuzzParseArray
// checks it against the reference parser, parseArrayRef in the tests, and
// encoding/json, on any bytes).
func parseArray(raw []byte, size int) ([]float32, *inputError) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '[' {
		return nil, inputErr(ReasonBadInput, "input must be an array of numbers")
	}
	out := make([]float32, 0, size)
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == ']' {
		return nil, inputErr(ReasonBadInputSize, "input has 0 values, want %d", size)
	}
	for n := 0; ; n++ {
		i = skipSpace(raw, i)
		if n+4 <= size && i+8 <= len(raw) && binary.LittleEndian.Uint64(raw[i:]) == fourZeros {
			// "0,0,0,0,": four zeros at once (the background of an image).
			out = append(out, 0, 0, 0, 0)
			i += 8
			n += 3
			continue
		}
		var (
			v  float32
			j  int
			ok bool
		)
		if i+18 <= len(raw) && raw[i] == '0' && raw[i+1] == '.' {
			// 0.ddd, the usual input value, without a branch on its length:
			// as in parseFloat32, a mantissa below 10^15 divided by an exact
			// power of ten is correctly rounded to float64, and rounding that
			// to float32 is exact unless it is a float32 midpoint.
			d, w1, w2 := digits16(raw, i+2)
			j = i + 2 + d
			if uint(d-1) < 15 && !isNumberByte(raw[j]) {
				f := float64(digitsValue(d, w1, w2)) / float64pow10[d]
				v, ok = float32(f), math.Float64bits(f)&(1<<29-1) != 1<<28
			}
		}
		if !ok {
			v, j, ok = parseFloat32(raw, i)
		}
		if !ok { // not a number the fast path converts: the run of number bytes
			for j = i; j < len(raw) && isNumberByte(raw[j]); j++ {
			}
		}
		if j == i {
			return nil, inputErr(ReasonBadInput, "input[%d] is not a number", n)
		}
		if n >= size {
			return nil, inputErr(ReasonBadInputSize, "input has more than %d values, want %d", size, size)
		}
		if !ok {
			// ParseFloat keeps the text only in its error, which is dropped.
			f, err := strconv.ParseFloat(unsafe.String(&raw[i], j-i), 32)
			if err != nil {
				// JSON is valid, so the only failure left is a value beyond float32.
				return nil, inputErr(ReasonNonFiniteInput, "input[%d] = %s overflows float32", n, truncate(string(raw[i:j]), 32))
			}
			v = float32(f)
		}
		out = append(out, v)
		i = skipSpace(raw, j)
		if i >= len(raw) {
			return nil, inputErr(ReasonBadInput, "input must be an array of numbers")
		}
		if raw[i] == ']' {
			break
		}
		if raw[i] != ',' {
			return nil, inputErr(ReasonBadInput, "input[%d] is not a number", n)
		}
		i++
	}
	if len(out) != size {
		return nil, inputErr(ReasonBadInputSize, "input has %d values, want %d", len(out), size)
	}
	return out, nil
}

// fourZeros is "0,0,0,0," read as a little-endian word.
const fourZeros = 0x2c302c302c302c30

// appendDigits reads the decimal digits at b[j:] onto mant (mant*10 + digit
// each, wrapping around past 19 digits) and returns it with the end of the
// digits.
func appendDigits(b []byte, j int, mant uint64) (uint64, int) {
	for ; j < len(b) && b[j] >= '0' && b[j] <= '9'; j++ {
		mant = mant*10 + uint64(b[j]-'0')
	}
	return mant, j
}

// float64pow10 holds the powers of ten that float64 represents exactly.
var float64pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
	1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// parseFloat32 is the fast path of parseArray: it converts the JSON number at
// b[i:] to the float32 that strconv.ParseFloat(text, 32) returns, and returns
// it with the number's end, when that is easy to do exactly. ok is false, and
// the caller uses strconv.ParseFloat, for anything else: text that is not a
// JSON number (RFC 8259: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)
// followed by a byte that cannot continue one (isNumberByte), more than 19
// digits (leading zeros included), a mantissa above 2^53, a decimal exponent
// beyond ±22, or a value that float64 rounds to a midpoint between two float32
// values.
//
// Within those bounds the mantissa and the power of ten are exact float64
// values, so one multiplication or division rounds the decimal value
// correctly to float64 (Clinger's fast path). Rounding that on to float32
// gives the correctly rounded float32, which is what ParseFloat returns, unless
// the float64 lies exactly halfway between two float32 values (rounding twice
// can then differ from rounding once): those are left to ParseFloat. Every
// value here but zero lies between 1e-22 and 2^53 * 1e22, inside float32's
// normal range, so neither overflow nor subnormals arise.
func parseFloat32(b []byte, i int) (v float32, end int, ok bool) {
	j := i
	neg := j < len(b) && b[j] == '-'
	if neg {
		j++
	}
	digits := j // where the digits start; leading zeros count as digits below
	var mant uint64
	switch {
	case j < len(b) && b[j] == '0':
		j++
	case j < len(b) && b[j] >= '1' && b[j] <= '9':
		mant, j = appendDigits(b, j, 0)
	default:
		return 0, i, false
	}
	nd := j - digits
	exp := 0
	if j < len(b) && b[j] == '.' {
		k := j + 1
		if k+8 <= len(b) {
			// The digits after the point eight bytes at a time: most inputs
			// have 7 to 9 of them.
			x := binary.LittleEndian.Uint64(b[k:])
			if m := nonDigits(x); m != 0 {
				d := bits.TrailingZeros64(m) >> 3 // digits before the first non-digit
				if d == 0 {
					return 0, i, false
				}
				mant = mant*uint64pow10[d] + eightDigits(x<<(64-8*d))
				j = k + d
			} else {
				mant, j = appendDigits(b, k+8, mant*1e8+eightDigits(x))
			}
		} else if mant, j = appendDigits(b, k, mant); j == k {
			return 0, i, false
		}
		nd += j - k
		exp = k - j
	}
	if nd > 19 {
		return 0, i, false // mant may have wrapped around
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		eneg := false
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			eneg = b[j] == '-'
			j++
		}
		k, e := j, 0
		for ; j < len(b) && b[j] >= '0' && b[j] <= '9'; j++ {
			if e < 10000 {
				e = e*10 + int(b[j]-'0')
			}
		}
		if j == k || e >= 10000 {
			return 0, i, false
		}
		if eneg {
			e = -e
		}
		exp += e
	}
	if j < len(b) && isNumberByte(b[j]) {
		return 0, i, false // the text goes on: not a number ParseFloat takes as is
	}
	if mant > 1<<53 || exp < -22 || exp > 22 {
		return 0, i, false
	}
	f := float64(mant)
	if exp >= 0 {
		f *= float64pow10[exp]
	} else {
		f /= float64pow10[-exp]
	}
	// Halfway between two float32 values: the 29 bits float32 drops are 1 then 0s.
	if math.Float64bits(f)&(1<<29-1) == 1<<28 {
		return 0, i, false
	}
	if neg {
		f = -f
	}
	return float32(f), j, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

func isNumberByte(c byte) bool {
	return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}

// base64Text returns the text of field's raw JSON string value: the bytes between
// the quotes, unquoted properly when the value holds JSON escapes (some encoders
// write "\/").
func base64Text(raw []byte, field string) ([]byte, *inputError) {
	if len(raw) < 2 || raw[0] != '"' {
		return nil, inputErr(ReasonBadInput, "%s must be a base64 string", field)
	}
	s := raw[1 : len(raw)-1]
	if bytes.IndexByte(s, '\\') >= 0 {
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return nil, inputErr(ReasonBadInput, "%s must be a base64 string", field)
		}
		s = []byte(str)
	}
	return s, nil
}

// parseB64 reads standard, padded base64 of little-endian float32 values.
func parseB64(raw []byte, size int) ([]float32, *inputError) {
	s, ierr := base64Text(raw, fieldInputB64)
	if ierr != nil {
		return nil, ierr
	}
	if out, ok := decodeB64Floats(s, size); ok {
		return out, nil
	}
	// Not exactly size values of valid base64: decode it whole for the error.
	buf, ierr := decodeB64Whole(s, fieldInputB64)
	if ierr != nil {
		return nil, ierr
	}
	n := len(buf)
	if n%4 != 0 {
		return nil, inputErr(ReasonBadInput, "input_b64 decodes to %d bytes, not a whole number of float32 values", n)
	}
	if n/4 != size {
		return nil, inputErr(ReasonBadInputSize, "input_b64 has %d values, want %d", n/4, size)
	}
	out := make([]float32, size)
	for k := range out {
		out[k] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*k:]))
	}
	return out, nil
}

// decodeB64Whole decodes s, field's standard padded base64, into a new buffer:
// the slow path of parseB64 and parseU8B64, which also finds what is wrong.
func decodeB64Whole(s []byte, field string) ([]byte, *inputError) {
	buf := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(buf, s)
	if err != nil {
		return nil, inputErr(ReasonBadInput, "%s is not standard padded base64: %v", field, err)
	}
	return buf[:n], nil
}

// chunkableB64Len returns how many bytes s decodes to when it is standard padded
// base64 that decodeB64Floats and decodeB64Bytes may decode chunk by chunk: a
// non-empty whole number of quanta without line breaks (the decoder skips them,
// which would move the chunks off the quanta). It reports false otherwise.
func chunkableB64Len(s []byte) (int, bool) {
	if len(s)%4 != 0 || len(s) == 0 || bytes.IndexByte(s, '\n') >= 0 || bytes.IndexByte(s, '\r') >= 0 {
		return 0, false
	}
	n := len(s) / 4 * 3
	if s[len(s)-1] == '=' {
		n--
		if s[len(s)-2] == '=' {
			n--
		}
	}
	return n, true
}

// littleEndian reports whether this machine stores a float32 in input_b64's
// byte order (little-endian).
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// b64Chunk is how many base64 bytes decodeB64Floats decodes at a time: a
// multiple of 4 that decodes to whole float32 values (3072 bytes, 768 values).
const b64Chunk = 4096

// decodeB64Floats decodes s, standard padded base64, into size little-endian
// float32 values, so that the only allocation is the result: on a
// little-endian machine straight into the result's bytes, elsewhere through a
// buffer on the stack. It reports false when s is not exactly that (bad base64,
// another length), for parseB64 to find out why.
func decodeB64Floats(s []byte, size int) ([]float32, bool) {
	if n, ok := chunkableB64Len(s); !ok || n != 4*size {
		return nil, false
	}
	out := make([]float32, size)
	if littleEndian {
		// input_b64's byte order is the machine's: decode straight into out.
		dst := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(out))), 4*size)
		m, err := base64.StdEncoding.Decode(dst, s)
		return out, err == nil && m == len(dst)
	}
	var buf [b64Chunk / 4 * 3]byte
	k := 0
	for off := 0; off < len(s); off += b64Chunk {
		m, err := base64.StdEncoding.Decode(buf[:], s[off:min(off+b64Chunk, len(s))])
		if err != nil || m%4 != 0 || k+m/4 > size {
			return nil, false
		}
		for i := 0; i < m; i += 4 {
			out[k] = math.Float32frombits(binary.LittleEndian.Uint32(buf[i:]))
			k++
		}
	}
	return out, k == size
}

// UsableU8Range reports whether rng can scale input_u8_b64 bytes: declared,
// finite, and low below high (the gateway's check, and a device's).
func UsableU8Range(rng *[2]float64) bool {
	return rng != nil && rng[0] < rng[1] && !math.IsInf(rng[0], 0) && !math.IsInf(rng[1], 0)
}

// U8Value is the float32 that input_u8_b64's byte b stands for in an application
// whose input_range is [lo, hi]: lo + b*(hi-lo)/255, so 0 is lo and 255 is hi
// (with [0, 1], b/255 rounded to float32).
func U8Value(b byte, lo, hi float64) float32 {
	return float32(min(lo+(hi-lo)*float64(b)/255, hi))
}

// QuantizeU8 is the inverse of U8Value for a device: each value, clamped to
// [lo, hi], becomes the nearest of the 256 steps. It returns nil if the range is
// not usable (not lo < hi, both finite).
func QuantizeU8(in []float32, lo, hi float64) []byte {
	rng := [2]float64{lo, hi}
	if !UsableU8Range(&rng) {
		return nil
	}
	out := make([]byte, len(in))
	for i, v := range in {
		x := math.Round((float64(v) - lo) / (hi - lo) * 255)
		if !(x > 0) { // NaN too
			x = 0
		}
		out[i] = byte(min(x, 255))
	}
	return out
}

// parseU8B64 reads standard, padded base64 of size bytes, each standing for
// U8Value(b, lo, hi).
func parseU8B64(raw []byte, size int, lo, hi float64) ([]float32, *inputError) {
	s, ierr := base64Text(raw, fieldInputU8B64)
	if ierr != nil {
		return nil, ierr
	}
	if out, ok := decodeB64Bytes(s, size, lo, hi); ok {
		return out, nil
	}
	buf, ierr := decodeB64Whole(s, fieldInputU8B64)
	if ierr != nil {
		return nil, ierr
	}
	if len(buf) != size {
		return nil, inputErr(ReasonBadInputSize, "input_u8_b64 has %d values, want %d", len(buf), size)
	}
	out := make([]float32, size)
	for k, b := range buf {
		out[k] = U8Value(b, lo, hi)
	}
	return out, nil
}

// decodeB64Bytes is decodeB64Floats for input_u8_b64: s decodes, through a
// buffer on the stack, to exactly size bytes, each mapped by U8Value; the only
// allocation is the result. It reports false for anything else.
func decodeB64Bytes(s []byte, size int, lo, hi float64) ([]float32, bool) {
	if n, ok := chunkableB64Len(s); !ok || n != size {
		return nil, false
	}
	out := make([]float32, size)
	var buf [b64Chunk / 4 * 3]byte
	k := 0
	for off := 0; off < len(s); off += b64Chunk {
		m, err := base64.StdEncoding.Decode(buf[:], s[off:min(off+b64Chunk, len(s))])
		if err != nil || k+m > size {
			return nil, false
		}
		for _, b := range buf[:m] {
			out[k] = U8Value(b, lo, hi)
			k++
		}
	}
	return out, k == size
}

// checkValues rejects NaN, infinities and values outside rng.
func checkValues(in []float32, rng *[2]float64) *inputError {
	lo, hi := math.Inf(-1), math.Inf(1)
	if rng != nil {
		lo, hi = rng[0], rng[1]
	}
	for k, v := range in {
		// A float32 is NaN or infinite when its exponent bits are all ones.
		if f := float64(v); math.Float32bits(v)&0x7f800000 == 0x7f800000 || f < lo || f > hi {
			return valueError(k, v, rng)
		}
	}
	return nil
}

// valueError says why checkValues refused in[k] = v.
func valueError(k int, v float32, rng *[2]float64) *inputError {
	if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) {
		return inputErr(ReasonNonFiniteInput, "input[%d] is %v", k, v)
	}
	return inputErr(ReasonInputOutOfRange, "input[%d] = %v is outside [%v, %v]", k, v, rng[0], rng[1])
}

// PeekID returns the top-level "id" of a payload that is not parsed whole
// (broken, oversized, or refused unread), if it is a valid id within the first
// peekLimit bytes, so the rejection can still be correlated; else "". Devices
// should send "id" first.
func PeekID(payload []byte) string { return peekID(payload, false) }

// peekID is PeekID; with numbers, a numeric id (a device's mistake, which
// ParseRequest rejects) is returned as its text too.
func peekID(payload []byte, numbers bool) string {
	if len(payload) > peekLimit {
		payload = payload[:peekLimit]
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := t.(string)
		if key == fieldID {
			t, err := dec.Token()
			if err != nil {
				return ""
			}
			switch v := t.(type) {
			case string:
				if validID(v) {
					return v
				}
			case json.Number:
				if numbers && numericID([]byte(v)) {
					return string(v)
				}
			}
			return ""
		}
		if err := skipValue(dec); err != nil {
			return ""
		}
	}
	return ""
}

// skipValue consumes one JSON value from dec.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		t, err := dec.Token()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}
