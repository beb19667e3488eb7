package protocol

import (
	"encoding/base64"
	"math"
	"strings"
	"testing"
	"time"
)

// TestInputU8RoundTrip sends every byte value to applications with several
// ranges and checks the values the gateway sees: lo + b*(hi-lo)/255, exact at
// both ends, and for [0, 1] exactly float32(b)/255, as the fashion samples are.
func TestInputU8RoundTrip(t *testing.T) {
	env := testEnv(t)
	all := make([]byte, 784)
	for i := range all {
		all[i] = byte(i * 7) // every value, in no particular order
	}
	for _, rng := range [][2]float64{{0, 1}, {-1, 1}, {0, 255}, {-0.5, 2.75}} {
		spec := AppSpec{InputSize: len(all), DefaultDeadline: time.Second, Range: &rng}
		env.App = func(string) (AppSpec, bool) { return spec, true }
		for _, p := range []Payload{
			{ID: "u8", InputU8: all},
			{ID: "u8 header", InputU8: all, DeadlineMS: 30, ReplyTo: "ops/u8"},
		} {
			req, rej := ParseHeader("sg/req/img/d", p.Marshal(), testNow, env)
			if rej != nil {
				t.Fatalf("%v: %v", rng, rej)
			}
			if req.Input != nil {
				t.Fatalf("ParseHeader decoded the input")
			}
			if rej := req.DecodeInput(); rej != nil {
				t.Fatalf("%v: %v", rng, rej)
			}
			for i, b := range all {
				want := float32(rng[0] + (rng[1]-rng[0])*float64(b)/255)
				if got := req.Input[i]; got != want || float64(got) < float64(float32(rng[0])) || float64(got) > rng[1] {
					t.Fatalf("%v: byte %d -> %v, want %v", rng, b, got, want)
				}
			}
		}
		if U8Value(0, rng[0], rng[1]) != float32(rng[0]) || U8Value(255, rng[0], rng[1]) != float32(rng[1]) {
			t.Errorf("%v: ends %v %v", rng, U8Value(0, rng[0], rng[1]), U8Value(255, rng[0], rng[1]))
		}
		// QuantizeU8 inverts U8Value, and clamps.
		vals := make([]float32, 256)
		for b := range vals {
			vals[b] = U8Value(byte(b), rng[0], rng[1])
		}
		q := QuantizeU8(vals, rng[0], rng[1])
		for b := range q {
			if q[b] != byte(b) {
				t.Fatalf("%v: QuantizeU8(U8Value(%d)) = %d", rng, b, q[b])
			}
		}
		if q := QuantizeU8([]float32{float32(rng[0]) - 10, float32(rng[1]) + 10, float32(math.NaN())}, rng[0], rng[1]); q[0] != 0 || q[1] != 255 || q[2] != 0 {
			t.Errorf("%v: clamping %v", rng, q)
		}
	}
	for b := range 256 {
		if got, want := U8Value(byte(b), 0, 1), float32(b)/255; got != want {
			t.Errorf("[0, 1]: byte %d -> %v, want float32(b)/255 = %v", b, got, want)
		}
	}
	if QuantizeU8([]float32{1}, 1, 1) != nil || QuantizeU8([]float32{1}, 0, math.Inf(1)) != nil {
		t.Error("QuantizeU8 with an unusable range")
	}
}

// TestInputU8Encodings: JSON escapes, line breaks (tolerated, as in input_b64)
// and payloads longer than one decoding chunk.
func TestInputU8Encodings(t *testing.T) {
	env := testEnv(t)
	for _, size := range []int{1, 2, 3, 4, 3071, 3072, 3073, 9000} {
		raw := make([]byte, size)
		for i := range raw {
			raw[i] = byte(i*31 + 5)
		}
		enc := base64.StdEncoding.EncodeToString(raw)
		spec := AppSpec{InputSize: size, DefaultDeadline: time.Second, Range: &[2]float64{0, 1}}
		env.App = func(string) (AppSpec, bool) { return spec, true }
		env.Limits.MaxPayloadBytes = 1 << 20
		for name, s := range map[string]string{
			"plain":          enc,
			"escaped slash":  strings.ReplaceAll(enc, "/", `\/`),
			"line breaks":    insertEvery(enc, 76, `\r\n`),
			"escaped letter": `\u0041` + enc[1:],
		} {
			if name == "escaped letter" && enc[0] != 'A' {
				continue
			}
			req, rej := ParseRequest("sg/req/img/d", []byte(`{"id":"a","input_u8_b64":"`+s+`"}`), testNow, env)
			if rej != nil {
				t.Fatalf("size %d, %s: %v", size, name, rej)
			}
			for i, b := range raw {
				if req.Input[i] != float32(b)/255 {
					t.Fatalf("size %d, %s: input[%d] = %v, want %v", size, name, i, req.Input[i], float32(b)/255)
				}
			}
		}
		// One value too many or too few.
		for _, n := range []int{size - 1, size + 1} {
			p := Payload{ID: "a", InputU8: make([]byte, n)}
			_, rej := ParseRequest("sg/req/img/d", p.Marshal(), testNow, env)
			if rej == nil || rej.Reason != ReasonBadInputSize {
				t.Fatalf("size %d, sent %d: %v", size, n, rej)
			}
		}
	}
}

func insertEvery(s string, n int, sep string) string {
	var b strings.Builder
	for i := 0; i < len(s); i += n {
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(s[i:min(i+n, len(s))])
	}
	return b.String()
}

// TestInputU8Allocations: decoding input_u8_b64 allocates only the result, as
// input_b64 does.
func TestInputU8Allocations(t *testing.T) {
	raw := make([]byte, 784)
	for i := range raw {
		raw[i] = byte(i)
	}
	q := []byte(`"` + base64.StdEncoding.EncodeToString(raw) + `"`)
	allocs := testing.AllocsPerRun(100, func() {
		if _, ierr := parseU8B64(q, 784, 0, 1); ierr != nil {
			t.Fatal(ierr.msg)
		}
	})
	if allocs != 1 {
		t.Errorf("parseU8B64 allocates %v times per call, want 1 (the result)", allocs)
	}
}

// TestNumericIDEchoed: a numeric id is refused, but the rejection carries its
// text so the device can match it, and says ids are strings.
func TestNumericIDEchoed(t *testing.T) {
	env := testEnv(t)
	_, rej := ParseRequest("sg/req/tiny/d", []byte(`{"id":42,"input":[1,2,3]}`), testNow, env)
	if rej == nil || rej.Reason != ReasonBadID || rej.ID != "42" {
		t.Fatalf("got %+v", rej)
	}
	if !strings.Contains(rej.Message, `send "42", not 42`) {
		t.Errorf("message %q does not say ids are strings", rej.Message)
	}
	b, err := rej.Reply().Marshal()
	if err != nil || !strings.Contains(string(b), `"id":"42"`) {
		t.Errorf("reply %s %v: want the id as a string", b, err)
	}
	// PeekID, which the gateway uses for requests it refuses unread, reads
	// string ids only.
	if id := PeekID([]byte(`{"id":42}`)); id != "" {
		t.Errorf("PeekID = %q", id)
	}
}
