package dataset

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// Magic opens every sample file.
const Magic = "SGSAMP01"

// FlagUint8 marks a file whose values are stored as uint8 scaled by 1/255.
const FlagUint8 = 1

const headerSize = 20

// maxValues bounds n*d so that a corrupt header cannot request a huge allocation.
const maxValues = 1 << 31

// Errors returned by Read and Write; each is wrapped with the file name and detail.
var (
	// ErrBadMagic is returned when a file does not start with Magic.
	ErrBadMagic = errors.New("dataset: not a sample file (bad magic)")
	// ErrTruncated is returned when a file ends before its header, values or labels.
	ErrTruncated = errors.New("dataset: truncated sample file")
	// ErrCorrupt is returned for a file whose header is inconsistent (reserved flag
	// bits set, an absurd size), that holds a NaN or infinite value, or that has
	// bytes after its labels.
	ErrCorrupt = errors.New("dataset: corrupt sample file")
	// ErrInvalidSet is returned by Write for a Set whose fields disagree, that
	// holds a NaN or infinite value, or whose values cannot be stored as uint8.
	ErrInvalidSet = errors.New("dataset: invalid set")
)

// Set is a labelled matrix of N rows of D float32 values.
type Set struct {
	N, D   int
	Values []float32 // N*D values, row-major
	Labels []int32   // N labels
}

// Row returns row i as a slice of Values (not a copy).
func (s *Set) Row(i int) []float32 { return s.Values[i*s.D : (i+1)*s.D] }

// Classes returns 1 + the largest label, or 0 for an empty set.
func (s *Set) Classes() int {
	k := int32(-1)
	for _, y := range s.Labels {
		k = max(k, y)
	}
	return int(k + 1)
}

func (s *Set) check() error {
	if s.N < 0 || s.D <= 0 {
		return fmt.Errorf("%w: N=%d D=%d", ErrInvalidSet, s.N, s.D)
	}
	if len(s.Values) != s.N*s.D {
		return fmt.Errorf("%w: %d values, want N*D = %d", ErrInvalidSet, len(s.Values), s.N*s.D)
	}
	if len(s.Labels) != s.N {
		return fmt.Errorf("%w: %d labels, want N = %d", ErrInvalidSet, len(s.Labels), s.N)
	}
	if uint64(s.N)*uint64(s.D) >= maxValues || s.N > math.MaxUint32 {
		return fmt.Errorf("%w: too large (N=%d D=%d)", ErrInvalidSet, s.N, s.D)
	}
	return nil
}

// Read loads the sample file at path. It returns an error wrapping ErrBadMagic,
// ErrTruncated or ErrCorrupt for a malformed file, or the underlying I/O error.
func Read(path string) (*Set, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	s, err := decode(bufio.NewReaderSize(f, 1<<16), st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// decode reads a sample file of size bytes from r.
func decode(r io.Reader, size int64) (*Set, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if string(h[:min(8, int(size))]) != Magic[:min(8, int(size))] {
			return nil, ErrBadMagic
		}
		return nil, fmt.Errorf("%w: header needs %d bytes, file has %d", ErrTruncated, headerSize, size)
	}
	if string(h[:8]) != Magic {
		return nil, ErrBadMagic
	}
	n := binary.LittleEndian.Uint32(h[8:])
	d := binary.LittleEndian.Uint32(h[12:])
	flags := binary.LittleEndian.Uint32(h[16:])
	if flags&^FlagUint8 != 0 {
		return nil, fmt.Errorf("%w: reserved flag bits set (flags %#x)", ErrCorrupt, flags)
	}
	if d == 0 {
		return nil, fmt.Errorf("%w: d is 0", ErrCorrupt)
	}
	nv := uint64(n) * uint64(d)
	if nv >= maxValues {
		return nil, fmt.Errorf("%w: n*d = %d values is too large", ErrCorrupt, nv)
	}
	vsize := uint64(4)
	if flags&FlagUint8 != 0 {
		vsize = 1
	}
	want := uint64(headerSize) + nv*vsize + uint64(n)*4
	switch {
	case uint64(size) < want:
		return nil, fmt.Errorf("%w: n=%d d=%d needs %d bytes, file has %d", ErrTruncated, n, d, want, size)
	case uint64(size) > want:
		return nil, fmt.Errorf("%w: %d bytes after the labels", ErrCorrupt, uint64(size)-want)
	}
	s := &Set{N: int(n), D: int(d), Values: make([]float32, nv), Labels: make([]int32, n)}
	raw := make([]byte, nv*vsize)
	if _, err := io.ReadFull(r, raw); err != nil {
		return nil, fmt.Errorf("%w: values: %v", ErrTruncated, err)
	}
	if vsize == 1 {
		for i, b := range raw {
			s.Values[i] = float32(b) / 255
		}
	} else {
		for i := range s.Values {
			v := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			// No request carries one (package protocol refuses them).
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("%w: row %d, value %d is %v", ErrCorrupt, i/int(d), i%int(d), v)
			}
			s.Values[i] = v
		}
	}
	lab := make([]byte, 4*int(n))
	if _, err := io.ReadFull(r, lab); err != nil {
		return nil, fmt.Errorf("%w: labels: %v", ErrTruncated, err)
	}
	for i := range s.Labels {
		s.Labels[i] = int32(binary.LittleEndian.Uint32(lab[4*i:]))
	}
	return s, nil
}

// Write stores s at path, replacing the file. With asUint8 each value v is stored
// as the byte round(v*255); values must lie in [0, 1]. It returns an error
// wrapping ErrInvalidSet for an inconsistent Set, or the I/O error.
func Write(path string, s *Set, asUint8 bool) error {
	if err := s.check(); err != nil {
		return err
	}
	flags := uint32(0)
	vsize := 4
	if asUint8 {
		flags = FlagUint8
		vsize = 1
	}
	buf := make([]byte, headerSize+len(s.Values)*vsize+4*s.N)
	copy(buf, Magic)
	binary.LittleEndian.PutUint32(buf[8:], uint32(s.N))
	binary.LittleEndian.PutUint32(buf[12:], uint32(s.D))
	binary.LittleEndian.PutUint32(buf[16:], flags)
	p := buf[headerSize:]
	for i, v := range s.Values {
		if asUint8 {
			if !(v >= 0 && v <= 1) {
				return fmt.Errorf("%w: value %d = %v outside [0, 1], cannot store as uint8", ErrInvalidSet, i, v)
			}
			p[i] = byte(math.Round(float64(v) * 255))
		} else {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%w: value %d = %v is not finite", ErrInvalidSet, i, v)
			}
			binary.LittleEndian.PutUint32(p[4*i:], math.Float32bits(v))
		}
	}
	p = p[len(s.Values)*vsize:]
	for i, y := range s.Labels {
		binary.LittleEndian.PutUint32(p[4*i:], uint32(y))
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf, 0o644); err != nil {
		return fmt.Errorf("dataset: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("dataset: %w", err)
	}
	return nil
}
