package dataset

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sample() *Set {
	return &Set{N: 3, D: 2, Values: []float32{0, 1, 0.5, 0.25, 1.5, -2}, Labels: []int32{0, 2, 1}}
}

func TestRoundTripFloat32(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.sgs")
	in := sample()
	if err := Write(p, in, false); err != nil {
		t.Fatal(err)
	}
	out, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if out.N != 3 || out.D != 2 || out.Classes() != 3 {
		t.Fatalf("got N=%d D=%d K=%d", out.N, out.D, out.Classes())
	}
	for i, v := range in.Values {
		if out.Values[i] != v {
			t.Errorf("value %d: got %v want %v", i, out.Values[i], v)
		}
	}
	for i, y := range in.Labels {
		if out.Labels[i] != y {
			t.Errorf("label %d: got %v want %v", i, out.Labels[i], y)
		}
	}
	if r := out.Row(1); r[0] != 0.5 || r[1] != 0.25 {
		t.Errorf("Row(1) = %v", r)
	}
}

func TestRoundTripUint8(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.sgs")
	in := &Set{N: 2, D: 3, Values: []float32{0, 1, 128.0 / 255, 3.0 / 255, 0.5, 254.0 / 255}, Labels: []int32{1, 0}}
	if err := Write(p, in, true); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Size() != headerSize+6+8 {
		t.Fatalf("size %d, want %d", st.Size(), headerSize+6+8)
	}
	out, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []float32{0, 1, 128.0 / 255, 3.0 / 255, 128.0 / 255, 254.0 / 255} // 0.5 rounds to 128/255
	for i, v := range want {
		if out.Values[i] != v {
			t.Errorf("value %d: got %v want %v", i, out.Values[i], v)
		}
	}
}

func TestWriteRejects(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.sgs")
	if err := Write(p, sample(), true); !errors.Is(err, ErrInvalidSet) {
		t.Errorf("out-of-range uint8: got %v", err)
	}
	bad := sample()
	bad.Labels = bad.Labels[:2]
	if err := Write(p, bad, false); !errors.Is(err, ErrInvalidSet) {
		t.Errorf("short labels: got %v", err)
	}
	bad = sample()
	bad.D = 4
	if err := Write(p, bad, false); !errors.Is(err, ErrInvalidSet) {
		t.Errorf("wrong D: got %v", err)
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.sgs")
	if err := Write(good, sample(), false); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"magic-prefix", []byte("SGSA"), ErrTruncated},
		{"bad-magic", append([]byte("XXSAMP01"), b[8:]...), ErrBadMagic},
		{"short-header", b[:12], ErrTruncated},
		{"short-values", b[:headerSize+5], ErrTruncated},
		{"short-labels", b[:len(b)-1], ErrTruncated},
		{"trailing", append(append([]byte{}, b...), 0), ErrCorrupt},
		{"flags", func() []byte { c := append([]byte{}, b...); c[16] = 2; return c }(), ErrCorrupt},
		{"zero-d", func() []byte { c := append([]byte{}, b...); c[12] = 0; return c }(), ErrCorrupt},
		{"huge", func() []byte { c := append([]byte{}, b...); c[11], c[15] = 0xff, 0xff; return c }(), ErrCorrupt},
	}
	for _, c := range cases {
		p := filepath.Join(dir, c.name)
		if err := os.WriteFile(p, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Read(p)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := Read(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: got %v", err)
	}
}

func TestEmptySet(t *testing.T) {
	p := filepath.Join(t.TempDir(), "e.sgs")
	if err := Write(p, &Set{N: 0, D: 4}, false); err != nil {
		t.Fatal(err)
	}
	s, err := Read(p)
	if err != nil || s.N != 0 || s.D != 4 || s.Classes() != 0 {
		t.Fatalf("got %+v, %v", s, err)
	}
}

// A sample file holding a NaN or infinite value is refused, naming the row
// and the value: no request may carry one (protocol refuses them), and read
// as a kNN reference set such a row was silently never a neighbour, and in a
// validation split it made the label-shift correction's start (the mean
// estimate over the rows) NaN in every class.
func TestReadRefusesNonFiniteValues(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.sgs")
	if err := Write(good, sample(), false); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	for name, bits := range map[string]uint32{"nan": 0x7fc00000, "inf": 0x7f800000, "-inf": 0xff800000} {
		c := append([]byte{}, b...)
		binary.LittleEndian.PutUint32(c[headerSize+4*3:], bits) // row 1, value 1
		p := filepath.Join(dir, name+".sgs")
		if err := os.WriteFile(p, c, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Read(p)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "row 1, value 1") {
			t.Errorf("%s: got %v, want ErrCorrupt naming %s and row 1, value 1", name, err, p)
		}
	}
	bad := sample()
	bad.Values[3] = float32(math.NaN())
	if err := Write(filepath.Join(dir, "w.sgs"), bad, false); !errors.Is(err, ErrInvalidSet) {
		t.Errorf("Write of a NaN: got %v, want ErrInvalidSet", err)
	}
}
