package protocol

import (
	"encoding/binary"
	"math/bits"
)

// A JSON input is hundreds of numbers, read twice: scanFields validates them,
// parseArray converts them. Both find and convert runs of decimal digits eight
// bytes at a time (SWAR: SIMD within a register) for the usual shape of an
// input value, 0.ddd with up to 15 digits, and take runs of "0," four at a
// time; everything else goes the byte-at-a-time way. A word is eight bytes of
// the text read little-endian, so its lowest byte is the first character.

// swarOnes and swarHighs are a word with one, and with the top bit, set in
// every byte (hasControl uses them too).
const (
	swarOnes  = 0x0101010101010101
	swarHighs = 0x8080808080808080
)

// nonDigits returns x with the top bit set in every byte that is not an ASCII
// digit and clear in every byte that is. No byte carries or borrows into the
// next: below computes (c|0x80) - '0', at least 0x50, whose top bit is clear
// exactly when c&0x7f < '0'; above computes c&0x7f + 0x46, at most 0xc5, whose
// top bit is set exactly when c&0x7f > '9'; bytes of 0x80 and above are never
// digits.
func nonDigits(x uint64) uint64 {
	below := ^((x | swarHighs) - '0'*swarOnes) & swarHighs
	above := ((x &^ swarHighs) + 0x46*swarOnes) & swarHighs
	return below | above | x&swarHighs
}

// eightDigits is the value of the eight ASCII digits of the word x, the first
// in its lowest byte; bytes of zero count as leading zeros. Pairs, then fours,
// then all eight are combined by one multiplication each (10<<8 + 1 adds ten
// times each byte to the next one up, and so on).
func eightDigits(x uint64) uint64 {
	x = (x & 0x0f0f0f0f0f0f0f0f) * (10<<8 + 1) >> 8
	x = (x & 0x00ff00ff00ff00ff) * (100<<16 + 1) >> 16
	return (x & 0x0000ffff0000ffff) * (10000<<32 + 1) >> 32 & 0xffffffff
}

// uint64pow10 holds the powers of ten that fit in 64 bits.
var uint64pow10 = [...]uint64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
	1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19}

// digitEnd returns the end of the run of ASCII digits at b[j:] (j when there
// is none), looking at eight bytes at once when there are eight.
func digitEnd(b []byte, j int) int {
	for j+8 <= len(b) {
		if m := nonDigits(binary.LittleEndian.Uint64(b[j:])); m != 0 {
			return j + bits.TrailingZeros64(m)>>3
		}
		j += 8
	}
	for j < len(b) && b[j]-'0' < 10 {
		j++
	}
	return j
}

// digits16 looks at the 16 bytes at b[k:], which must exist: it returns how
// many ASCII digits they start with (16 when all are) and the two words, for
// digitsValue, without a loop.
func digits16(b []byte, k int) (d int, w1, w2 uint64) {
	w1 = binary.LittleEndian.Uint64(b[k:])
	w2 = binary.LittleEndian.Uint64(b[k+8:])
	d1 := bits.TrailingZeros64(nonDigits(w1)) >> 3 // 8 when all eight are digits
	d2 := bits.TrailingZeros64(nonDigits(w2)) >> 3
	return d1 + d2&-(d1>>3), w1, w2 // d2 counts only when d1 is 8
}

// digitsValue is the value of the first d (at most 15) digits of the words
// from digits16 (a shift by 64 gives zero).
func digitsValue(d int, w1, w2 uint64) uint64 {
	da := min(d, 8)
	db := d - da
	return eightDigits(w1<<(64-8*da))*uint64pow10[db] + eightDigits(w2<<(64-8*db))
}

// shortFractionLen returns the length of the JSON number 0.ddd at b[j:] when it
// has 1 to 15 digits after the point and no exponent, and b has 18 bytes from
// j on to look at; else 0 (the caller checks what follows it).
func shortFractionLen(b []byte, j int) int {
	if j+18 > len(b) || b[j] != '0' || b[j+1] != '.' {
		return 0
	}
	d, _, _ := digits16(b, j+2)
	if uint(d-1) >= 15 || b[j+2+d]|0x20 == 'e' {
		return 0
	}
	return 2 + d
}
