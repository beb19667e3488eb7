package dataset

import (
	"errors"
	"os"
	"path/filepath"
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
