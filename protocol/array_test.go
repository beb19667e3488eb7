package protocol

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

// parseArrayRef is parseArray as it was before parseFloat32: every number
// through strconv.ParseFloat. FuzzParseArray holds parseArray to it.
func parseArrayRef(raw []byte, size int) ([]float32, *inputError) {
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
		j := i
		for j < len(raw) && isNumberByte(raw[j]) {
			j++
		}
		if j == i {
			return nil, inputErr(ReasonBadInput, "input[%d] is not a number", n)
		}
		if n >= size {
			return nil, inputErr(ReasonBadInputSize, "input has more than %d values, want %d", size, size)
		}
		f, err := strconv.ParseFloat(string(raw[i:j]), 32)
		if err != nil {
			return nil, inputErr(ReasonNonFiniteInput, "input[%d] = %s overflows float32", n, truncate(string(raw[i:j]), 32))
		}
		out = append(out, float32(f))
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

// arraySeeds are inputs for FuzzParseArray and TestParseArrayNumbers: the
// shapes parseArray refuses, and numbers on both sides of each of its fast
// path's limits (digits, mantissa 2^53, exponent ±22, float32 midpoints,
// overflow, underflow, negative zero).
var arraySeeds = []string{
	`[0.14509805,0.5019608,1,0,-0,0.0,-0.0,1e-05,3.5E+2,1E2,1e+2]`,
	`[ 1 , 2 ,3 ]`, "[\t1\n,\r2]", `[]`, `[ ]`, `[1,2,3,4]`, `"AAAA"`, `{}`, `null`, `[null]`, `[1,null]`,
	`[[1]]`, `[1,"a"]`, `[true]`, `[1 2]`, `[1,]`, `[-]`, `[1.]`, `[.5]`, `[01]`, `[+1]`, `[1e]`, `[1e+]`, `[--1]`,
	`[1x]`, `[0x10]`, `[1_0]`, `[Inf]`, `[NaN]`, `[1e39]`, `[-1e39]`, `[3.4028235e38]`, `[3.4028236e38]`,
	`[3.40282356779733661637539395458142568448e38]`, `[1e-46]`, `[1e-45]`, `[-1e-46]`, `[0e999999999]`,
	`[16777216]`, `[16777217]`, `[16777218]`, `[16777219]`, `[-16777217]`, `[1677721.7]`, `[0.16777217e8]`,
	`[1.000000059604644775390625]`, `[1.0000000596046448]`, `[1.000000059604645]`, `[1.00000005960464477]`,
	`[9007199254740992]`, `[9007199254740993]`, `[9007199254740991]`, `[900719925474099.3]`,
	`[1234567890123456789]`, `[12345678901234567890]`, `[123456789012345678901234567890]`,
	`[0.0000000000000000000001]`, `[0.00000000000000000000001]`, `[1e22]`, `[1e23]`, `[1e-22]`, `[1e-23]`,
	`[12345e-26]`, `[9e22]`, `[0.1e23]`, `[100000000000000000000000e-2]`, `[1e00000000000000000001]`,
	`[0.000000000000000000000000000000000000000000001]`, `[1.401298464324817e-45]`, `[7e-46]`,
	`[0.1,0.2,0.3,0.7,0.9999999,0.99999994,0.99999997,1.0000001]`,
	// Not a float32 midpoint, but float64 rounds it to one, and rounding that on
	// to float32 would give 0x3bc8d046 where strconv gives 0x3bc8d047.
	`[0.006128343986347318]`,
	// The word-at-a-time paths (digits.go): runs of "0," against the size and
	// the end, 0.ddd with 1 to 16 digits, near the end of the bytes (fewer than
	// 18 left), followed by what only the reference reads on, and bytes whose
	// low seven bits are digits.
	`[0,0,0,0]`, `[0,0,0,0,0]`, `[0,0,0,0,0,0,0,0,1]`, `[0,0,0,0, 1]`, `[0,0,0,0,]`, `[0,0,0,0,0,0,0,0`,
	`[0,0,0,0,0.5,0,0,0,0,0.25,0,0,0,0]`, `[0.1234567,0.12345678,0.123456789,0.1234567890,0.12345678901,0]`,
	`[0.123456789012345,0.1234567890123456,0.12345678901234567,0]`, `[0.5.3,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]`,
	`[0.5-1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]`, `[0.5e3,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]`, `[0.5E+3,00000000000000000]`,
	"[0.5\xb9,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]", "[0.5\xb0,0]", "[0.\xb12,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]",
	`[0.,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]`, `[0.5 ,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]`, `[-0.5,-0,0.0000000000000001]`,
	`[0.99999997,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]`, `[0.006128343986347318,0,0,0,0,0,0,0,0,0,0,0,0,0]`,
	`[0.000000000000001,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]`, `[0.999999999999999,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]`,
}

// FuzzParseArray: parseArray, with its fast path, returns exactly what the
// reference parser (every number through strconv.ParseFloat) returns: the same
// values to the bit, or the same reason and message. On valid JSON it also
// agrees with encoding/json decoding into []float32 (strconv.ParseFloat(s, 32)
// too): an array of size numbers decodes to the same values, or fails on a
// number beyond float32 (non_finite_input); anything else is refused.
func FuzzParseArray(f *testing.F) {
	for _, s := range arraySeeds {
		f.Add([]byte(s), uint16(0))
	}
	f.Fuzz(func(t *testing.T, raw []byte, size uint16) {
		n := int(size % 1024)
		if n == 0 { // the size the input has, if it is an array
			var vals []json.RawMessage
			if json.Unmarshal(raw, &vals) == nil {
				n = len(vals)
			}
		}
		got, gerr := parseArray(raw, n)
		want, werr := parseArrayRef(raw, n)
		switch {
		case (gerr == nil) != (werr == nil):
			t.Fatalf("%q (size %d): error %v, reference %v", raw, n, gerr, werr)
		case gerr != nil && *gerr != *werr:
			t.Fatalf("%q (size %d): error %+v, reference %+v", raw, n, *gerr, *werr)
		case gerr == nil && !sameBits(got, want):
			t.Fatalf("%q (size %d): %v, reference %v", raw, n, got, want)
		}
		if !json.Valid(raw) {
			return // parseArray's callers hand it valid JSON only
		}
		var elems []json.RawMessage
		numbers := json.Unmarshal(raw, &elems) == nil && len(elems) == n && n > 0
		for _, e := range elems {
			numbers = numbers && (e[0] == '-' || e[0] >= '0' && e[0] <= '9')
		}
		var dec []float32
		jerr := json.Unmarshal(raw, &dec)
		switch {
		case !numbers && gerr == nil:
			t.Fatalf("%q (size %d): accepted %v, not an array of %d numbers", raw, n, got, n)
		case !numbers:
		case jerr == nil && gerr != nil:
			t.Fatalf("%q: refused (%s), encoding/json decodes %v", raw, gerr.msg, dec)
		case jerr == nil && !sameBits(got, dec):
			t.Fatalf("%q: %v, encoding/json %v", raw, got, dec)
		case jerr != nil && (gerr == nil || gerr.reason != ReasonNonFiniteInput):
			t.Fatalf("%q: %v, encoding/json refuses it: %v", raw, gerr, jerr)
		}
	})
}

func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// TestParseFloat32FastPath: the fast path takes the numbers devices send (the
// shortest float32 text, as Payload writes it) and leaves to strconv what it
// cannot do exactly, with the value strconv gives.
func TestParseFloat32FastPath(t *testing.T) {
	for _, c := range []struct {
		text string
		fast bool
	}{
		{"0.14509805", true}, {"1", true}, {"0", true}, {"-0", true}, {"1e-05", true}, {"3.4028235e+38", false},
		{"16777216", true}, {"16777217", false}, {"1.000000059604644775390625", false}, {"1e23", false},
		{"1e-23", false}, {"12345678901234567890", false}, {"9007199254740993", false}, {"1.", false}, {"01", false},
		{"0.006128343986347318", false}, // rounds to a float32 midpoint in float64
	} {
		v, end, ok := parseFloat32([]byte(c.text+","), 0)
		if ok != c.fast {
			t.Errorf("%s: fast path %v, want %v", c.text, ok, c.fast)
		}
		if !ok {
			continue
		}
		want, err := strconv.ParseFloat(c.text, 32)
		if err != nil || math.Float32bits(v) != math.Float32bits(float32(want)) || end != len(c.text) {
			t.Errorf("%s: %v (end %d), strconv %v (%v)", c.text, v, end, float32(want), err)
		}
	}
	// Every float32 Payload writes for pixel values takes the fast path.
	for b := range 256 {
		s := strconv.FormatFloat(float64(float32(b)/255), 'g', -1, 32)
		if v, _, ok := parseFloat32([]byte(s), 0); !ok || v != float32(b)/255 {
			t.Errorf("%s: %v, fast path %v", s, v, ok)
		}
	}
}

// TestParseFloat32AgainstStrconv compares the fast path with strconv on numbers
// a byte fuzzer rarely makes: random float32 values written with 1 to 17
// significant digits, and the points halfway between two float32 values
// (where rounding to float64 first could round differently), written exactly
// and cut to 1 to 17 digits, plus random mantissas and exponents at the fast
// path's limits.
func TestParseFloat32AgainstStrconv(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	fast, n := 0, 0
	check := func(s string) {
		t.Helper()
		n++
		v, end, ok := parseFloat32([]byte(s), 0)
		if !ok {
			return
		}
		fast++
		want, err := strconv.ParseFloat(s, 32)
		if err != nil || end != len(s) || math.Float32bits(v) != math.Float32bits(float32(want)) {
			t.Fatalf("%s: fast path %v (%#x, end %d), strconv %v (%#x, %v)", s, v, math.Float32bits(v), end,
				float32(want), math.Float32bits(float32(want)), err)
		}
	}
	for range 20000 {
		x := math.Float32frombits(r.Uint32())
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			continue
		}
		// Values of the size of inputs: scale into [1e-6, 1e7] half the time.
		if r.IntN(2) == 0 {
			x = float32(math.Ldexp(float64(r.Uint32()), -r.IntN(50)))
		}
		next := math.Nextafter32(x, float32(math.Inf(1)))
		mid := (float64(x) + float64(next)) / 2 // exact in float64
		for _, f := range []float64{float64(x), mid} {
			for prec := 0; prec <= 17; prec++ {
				check(strconv.FormatFloat(f, 'e', prec, 64))
				check(strconv.FormatFloat(f, 'f', -1, 64))
			}
		}
		check(strconv.FormatFloat(float64(x), 'g', -1, 32))
		mant := r.Uint64N(1 << 54)
		check(strconv.FormatUint(mant, 10) + "e" + strconv.Itoa(r.IntN(50)-25))
	}
	if fast < n/4 {
		t.Errorf("only %d of %d numbers on the fast path", fast, n)
	}
}

// BenchmarkParseArray: the inputs of BenchmarkParseRequest/json784 and
// json784_image alone, parseArray against the reference parser, side by side.
func BenchmarkParseArray(b *testing.B) {
	in := make([]float32, 784)
	for i := range in {
		in[i] = float32((i*37)%256) / 255
	}
	raw, err := json.Marshal(in)
	if err != nil {
		b.Fatal(err)
	}
	image, err := json.Marshal(imageInput())
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range []struct {
		name  string
		raw   []byte
		parse func([]byte, int) ([]float32, *inputError)
	}{{"fast", raw, parseArray}, {"strconv", raw, parseArrayRef}, {"fast_image", image, parseArray}, {"strconv_image", image, parseArrayRef}} {
		raw := p.raw
		b.Run(p.name, func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, ierr := p.parse(raw, len(in)); ierr != nil {
					b.Fatal(ierr.msg)
				}
			}
		})
	}
}
