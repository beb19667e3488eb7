package protocol

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
)

// decodeB64Floats gives the same values decoding in place (a little-endian
// machine) and through its buffer (any other), and refuses the same payloads.
func TestDecodeB64FloatsInPlace(t *testing.T) {
	defer func(le bool) { littleEndian = le }(littleEndian)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{1, 2, 3, 767, 768, 769, 784, 1536, 3000} {
		want := make([]float32, size)
		raw := make([]byte, 0, 4*size)
		for i := range want {
			want[i] = math.Float32frombits(rng.Uint32())
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(want[i]))
		}
		s := []byte(base64.StdEncoding.EncodeToString(raw))
		for _, le := range []bool{true, false} {
			littleEndian = le
			got, ok := decodeB64Floats(s, size)
			if !ok || len(got) != size {
				t.Fatalf("size %d, in place %v: ok %v, %d values", size, le, ok, len(got))
			}
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("size %d, in place %v: value %d is %x, want %x", size, le, i, math.Float32bits(got[i]), math.Float32bits(want[i]))
				}
			}
			for _, bad := range [][]byte{s[:len(s)-4], append([]byte("!!!!"), s[4:]...), append(append([]byte(nil), s...), "AAAA"...)} {
				if _, ok := decodeB64Floats(bad, size); ok {
					t.Errorf("size %d, in place %v: accepted a bad payload", size, le)
				}
			}
		}
	}
}
