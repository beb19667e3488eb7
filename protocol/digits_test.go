package protocol

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// TestNonDigits: every byte value, in every place of a word, is flagged
// exactly when it is not an ASCII digit, whatever its neighbours.
func TestNonDigits(t *testing.T) {
	for _, fill := range []byte{'0', '9', '/', ':', 0x00, 0xb0, 0xff} {
		for pos := range 8 {
			for c := range 256 {
				var w [8]byte
				for k := range w {
					w[k] = fill
				}
				w[pos] = byte(c)
				got := nonDigits(binary.LittleEndian.Uint64(w[:]))
				var want uint64
				for k, b := range w {
					if b < '0' || b > '9' {
						want |= 0x80 << (8 * k)
					}
				}
				if got != want {
					t.Fatalf("% x: flags %#x, want %#x", w, got, want)
				}
			}
		}
	}
}

// TestDigits16: digits16 counts the leading digits of 16 bytes and
// digitsValue gives their value, for every count and random digits, with
// random bytes after them.
func TestDigits16(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		for d := range 17 {
			var b [16]byte
			for k := range b {
				if k < d {
					b[k] = '0' + byte(r.IntN(10))
				} else {
					b[k] = byte(r.IntN(256))
				}
			}
			if d < 16 {
				for b[d] >= '0' && b[d] <= '9' {
					b[d] = byte(r.IntN(256))
				}
			}
			n, w1, w2 := digits16(b[:], 0)
			if n != d {
				t.Fatalf("%q: %d digits, want %d", b, n, d)
			}
			if d > 15 {
				continue
			}
			want, _ := strconv.ParseUint("0"+string(b[:d]), 10, 64)
			if got := digitsValue(d, w1, w2); got != want {
				t.Fatalf("%q (%d digits): %d, want %d", b, d, got, want)
			}
		}
	}
}

// scanNumberRef is scanNumber as it was before digitEnd: one byte at a time.
func scanNumberRef(b []byte, i int) int {
	digits := func(j int) int {
		k := j
		for k < len(b) && b[k] >= '0' && b[k] <= '9' {
			k++
		}
		if k == j {
			return -1
		}
		return k
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	if i >= len(b) {
		return -1
	}
	if b[i] == '0' {
		i++
	} else if i = digits(i); i < 0 {
		return -1
	}
	if i < len(b) && b[i] == '.' {
		if i = digits(i + 1); i < 0 {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i = digits(i); i < 0 {
			return -1
		}
	}
	return i
}

// scanArrayRef is scanValue's array case as it was before the word-at-a-time
// paths.
func scanArrayRef(b []byte, i int) int {
	j := skipSpace(b, i+1)
	if j < len(b) && b[j] == ']' {
		return j + 1
	}
	for {
		j = scanNumberRef(b, j)
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
}

// FuzzScanNumbers: scanNumber and scanValue's arrays of numbers end (or fail)
// exactly where the byte-at-a-time versions do, on any bytes.
func FuzzScanNumbers(f *testing.F) {
	for _, s := range arraySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for i := range min(len(b), 3) {
			if got, want := scanNumber(b, i), scanNumberRef(b, i); got != want {
				t.Fatalf("scanNumber(%q, %d) = %d, byte at a time %d", b, i, got, want)
			}
		}
		if len(b) > 0 && b[0] == '[' {
			if got, want := scanValue(b, 0), scanArrayRef(b, 0); got != want {
				t.Fatalf("scanValue(%q) = %d, byte at a time %d", b, got, want)
			}
		}
	})
}

// TestParseJSONImage: a JSON input of zeros and 0.ddd values (the word-at-a-time
// paths) decodes to the values sent, and a bad element anywhere in it is
// refused with the reason and message of its place.
func TestParseJSONImage(t *testing.T) {
	env := testEnv(t)
	in := imageInput()
	texts := make([]string, len(in))
	for i, v := range in {
		texts[i] = strconv.FormatFloat(float64(v), 'g', -1, 32)
	}
	body := func(texts []string) []byte {
		return []byte(`{"id":"a","input":[` + strings.Join(texts, ",") + `]}`)
	}
	req, rej := ParseRequest("sg/req/fashion/d", body(texts), testNow, env)
	if rej != nil {
		t.Fatal(rej)
	}
	if !sameBits(req.Input, in) {
		t.Fatalf("decoded %v, sent %v", req.Input, in)
	}
	with := func(k int, s string) []byte {
		c := append([]string(nil), texts...)
		c[k] = s
		return body(c)
	}
	for _, c := range []struct {
		name    string
		payload []byte
		reason  Reason
		msg     string
	}{
		{"overflow among zeros", with(3, "1e39"), ReasonNonFiniteInput, "input[3] = 1e39 overflows float32"},
		{"overflow among values", with(400, "-3.5e38"), ReasonNonFiniteInput, "input[400] = -3.5e38 overflows float32"},
		{"out of range", with(401, "1.5"), ReasonInputOutOfRange, "input[401] = 1.5 is outside [0, 1]"},
		{"negative zero fraction", with(402, "-0.25"), ReasonInputOutOfRange, "input[402] = -0.25 is outside [0, 1]"},
		{"one short", body(texts[:783]), ReasonBadInputSize, "input has 783 values, want 784"},
		{"one long", body(append(append([]string(nil), texts...), "0")), ReasonBadInputSize, "input has more than 784 values, want 784"},
		{"four zeros too many", body(append(append([]string(nil), texts...), "0", "0", "0", "0")), ReasonBadInputSize, "input has more than 784 values, want 784"},
	} {
		_, rej := ParseRequest("sg/req/fashion/d", c.payload, testNow, env)
		if rej == nil || rej.Reason != c.reason || rej.Message != c.msg {
			t.Errorf("%s: %+v, want %s %q", c.name, rej, c.reason, c.msg)
		}
	}
	// Not numbers: the payload is not JSON or not an array of numbers, so
	// encoding/json's decoder decides, before the id (bad_json) or at the input.
	for _, s := range []string{"NaN", "Infinity", "0.5.5", "0x1", `"0.5"`, "null", "[0]"} {
		_, rej := ParseRequest("sg/req/fashion/d", with(500, s), testNow, env)
		if rej == nil || (rej.Reason != ReasonBadJSON && rej.Reason != ReasonBadInput) {
			t.Errorf("input[500] = %s: %+v, want bad_json or bad_input", s, rej)
		}
	}
}

func ExampleParseRequest_jsonInput() {
	env := Env{App: func(string) (AppSpec, bool) { return AppSpec{InputSize: 6, DefaultDeadline: math.MaxInt64}, true }}
	req, _ := ParseRequest("sneakgate/req/app/dev", []byte(`{"id":"a","input":[0,0,0,0,0.14509805,-0.5]}`), testNow, env)
	fmt.Println(req.Input)
	// Output: [0 0 0 0 0.14509805 -0.5]
}
