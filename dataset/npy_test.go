package dataset

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// npyBytes builds a .npy file by hand from a header dict, as numpy writes it:
// version 1.0, the dict padded with spaces to align the data at align bytes,
// then a newline.
func npyBytes(dict string, align int, data []byte) []byte {
	total := (10 + len(dict) + 1 + align - 1) / align * align
	hdr := dict + strings.Repeat(" ", total-10-len(dict)-1) + "\n"
	b := []byte("\x93NUMPY\x01\x00")
	b = binary.LittleEndian.AppendUint16(b, uint16(len(hdr)))
	b = append(b, hdr...)
	return append(b, data...)
}

func f32bytes(v ...float32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestReadNPYNumpyLayout reads files laid out byte for byte as numpy's np.save
// writes them (64-byte alignment since numpy 1.14ish, 16 before).
func TestReadNPYNumpyLayout(t *testing.T) {
	for _, align := range []int{16, 64} {
		p := writeFile(t, "x.npy", npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", align,
			f32bytes(0, 1, 2, 3.5, -4, 5)))
		a, err := ReadNPY(p)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(a.Shape, []int{2, 3}) || a.DType != "f4" || a.ShapeString() != "(2, 3)" || a.DTypeName() != "float32" {
			t.Fatalf("shape %v dtype %s", a.Shape, a.DType)
		}
		if got := a.Float32s(); !slices.Equal(got, []float32{0, 1, 2, 3.5, -4, 5}) {
			t.Fatalf("values %v", got)
		}
	}
	// 1-D int64 labels, uint8 features, a bool, an int8 and big-endian int32.
	cases := []struct {
		dict string
		data []byte
		want []int64
	}{
		{"{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", binary.LittleEndian.AppendUint64(
			binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 2), 0), 5), []int64{2, 0, 5}},
		{"{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }", []byte{0, 255, 7, 128}, []int64{0, 255, 7, 128}},
		{"{'descr': '|i1', 'fortran_order': False, 'shape': (2,), }", []byte{0xff, 3}, []int64{-1, 3}},
		{"{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }", []byte{1, 0}, []int64{1, 0}},
		{"{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }", []byte{0, 0, 1, 0, 0xff, 0xff, 0xff, 0xfe}, []int64{256, -2}},
		{"{'descr': '<u2', 'fortran_order': False, 'shape': (1,), }", []byte{0x34, 0x12}, []int64{0x1234}},
		{"{'descr': '<i2', 'fortran_order': False, 'shape': (1, 1), }", []byte{0xfe, 0xff}, []int64{-2}},
		{"{'descr': '<u4', 'fortran_order': False, 'shape': (1,), }", []byte{1, 0, 0, 0x80}, []int64{0x80000001}},
		// Key order is free; Python 2 longs; a scalar.
		{"{'shape': (1L,), 'fortran_order': False, 'descr': '<i8'}", binary.LittleEndian.AppendUint64(nil, 9), []int64{9}},
		{"{'descr': '<i8', 'fortran_order': False, 'shape': (), }", binary.LittleEndian.AppendUint64(nil, 4), []int64{4}},
	}
	for _, c := range cases {
		p := writeFile(t, "y.npy", npyBytes(c.dict, 64, c.data))
		a, err := ReadNPY(p)
		if err != nil {
			t.Fatalf("%s: %v", c.dict, err)
		}
		got, err := a.Ints()
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v, %v; want %v", c.dict, got, err, c.want)
		}
		f := a.Float32s()
		for i, w := range c.want {
			if f[i] != float32(w) {
				t.Errorf("%s: Float32s[%d] = %v, want %v", c.dict, i, f[i], w)
			}
		}
	}
}

func TestNPYRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, data := range []any{
		[]float32{1.5, -2, float32(math.Inf(1)), 0, 1, 2},
		[]float64{1e300, -2.25, 0, 1, 2, 3},
		[]int64{-1, 1 << 40, 0, 1, 2, 3},
		[]int32{-7, 7, 0, 1, 2, 3},
		[]uint8{0, 255, 1, 2, 3, 4},
	} {
		a, err := NewArray([]int{3, 2}, data)
		if err != nil {
			t.Fatal(err)
		}
		enc := a.EncodeNPY()
		if len(enc)-len(a.data) != 128 || enc[len(enc)-len(a.data)-1] != '\n' {
			t.Errorf("%s: header is %d bytes, numpy writes 128 for this shape", a.DType, len(enc)-len(a.data))
		}
		p := filepath.Join(dir, "a.npy")
		if err := WriteNPY(p, a); err != nil {
			t.Fatal(err)
		}
		b, err := ReadNPY(p)
		if err != nil {
			t.Fatal(err)
		}
		if b.DType != a.DType || !slices.Equal(b.Shape, a.Shape) || !bytes.Equal(b.data, a.data) {
			t.Errorf("%s: round trip changed the array: %v %v", a.DType, b.DType, b.Shape)
		}
	}
	if _, err := NewArray([]int{2, 2}, []float32{1}); !errors.Is(err, ErrArray) {
		t.Errorf("NewArray with the wrong count: %v", err)
	}
	if _, err := NewArray([]int{1}, []string{"a"}); !errors.Is(err, ErrArray) {
		t.Errorf("NewArray of strings: %v", err)
	}
}

func TestIntsOfFloats(t *testing.T) {
	a, _ := NewArray([]int{3}, []float64{0, 2, 5})
	if v, err := a.Ints(); err != nil || !slices.Equal(v, []int64{0, 2, 5}) {
		t.Errorf("whole floats: %v %v", v, err)
	}
	a, _ = NewArray([]int{2}, []float32{1, 2.5})
	a.Source = "y.npy"
	if _, err := a.Ints(); !errors.Is(err, ErrArray) || !strings.Contains(err.Error(), "y.npy") || !strings.Contains(err.Error(), "2.5") {
		t.Errorf("2.5 as a label: %v", err)
	}
	a, _ = NewArray([]int{1}, []float32{float32(math.NaN())})
	if _, err := a.Ints(); !errors.Is(err, ErrArray) {
		t.Errorf("NaN as a label: %v", err)
	}
}

// TestReadNPYMalformed feeds broken files; every one must fail with an error
// that names the file and says what is wrong, never panic.
func TestReadNPYMalformed(t *testing.T) {
	good := "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"
	data := f32bytes(1, 2)
	cases := []struct {
		name string
		file []byte
		is   error
		msg  string
	}{
		{"empty", nil, ErrNPY, "not a .npy file"},
		{"text", []byte("hello,world\n1,2\n"), ErrNPY, "not a .npy file"},
		{"short magic", []byte("\x93NUM"), ErrNPY, "truncated"},
		{"preamble only", []byte("\x93NUMPY\x01"), ErrNPY, "truncated"},
		{"no header length", []byte("\x93NUMPY\x01\x00\x10"), ErrNPY, "truncated"},
		{"version 4", []byte("\x93NUMPY\x04\x00\x00\x00"), ErrNPY, "version 4.0"},
		{"version 1.1", []byte("\x93NUMPY\x01\x01\x00\x00"), ErrNPY, "version 1.1"},
		{"header past end", append([]byte("\x93NUMPY\x01\x00\xff\x00"), "{}"...), ErrNPY, "truncated"},
		{"huge header", append([]byte("\x93NUMPY\x02\x00\xff\xff\xff\x7f"), "{}"...), ErrNPY, "too large"},
		{"fortran", npyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", 64, data), ErrUnsupported, "Fortran"},
		{"float16", npyBytes("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", 64, data[:4]), ErrUnsupported, "float16"},
		{"complex", npyBytes("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", 64, data), ErrUnsupported, "<c8"},
		{"object", npyBytes("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", 64, data), ErrUnsupported, "|O"},
		{"unicode", npyBytes("{'descr': '<U5', 'fortran_order': False, 'shape': (1,), }", 64, data), ErrUnsupported, "<U5"},
		{"structured", npyBytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 64, data), ErrUnsupported, "structured"},
		{"no descr", npyBytes("{'fortran_order': False, 'shape': (2,), }", 64, data), ErrNPY, "no 'descr'"},
		{"no shape", npyBytes("{'descr': '<f4', 'fortran_order': False, }", 64, data), ErrNPY, "no 'shape'"},
		{"no order", npyBytes("{'descr': '<f4', 'shape': (2,), }", 64, data), ErrNPY, "no 'fortran_order'"},
		{"extra key", npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 64, data), ErrNPY, "unknown key"},
		{"duplicate key", npyBytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 64, data), ErrNPY, "duplicate"},
		{"not a dict", npyBytes("[1, 2]", 64, data), ErrNPY, "not a dict"},
		{"unterminated dict", npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", 64, data), ErrNPY, "want ','"},
		{"unterminated string", npyBytes("{'descr': '<f4", 64, data), ErrNPY, "unterminated"},
		{"garbage after", npyBytes(good+" x", 64, data), ErrNPY, "after the dict"},
		{"negative dim", npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", 64, data), ErrNPY, "non-negative"},
		{"shape not tuple", npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': 2, }", 64, data), ErrNPY, "not a tuple"},
		{"order not bool", npyBytes("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", 64, data), ErrNPY, "fortran_order"},
		{"bad descr", npyBytes("{'descr': 'x', 'fortran_order': False, 'shape': (2,), }", 64, data), ErrNPY, "numpy type"},
		{"no byte order", npyBytes("{'descr': '|f4', 'fortran_order': False, 'shape': (2,), }", 64, data), ErrNPY, "byte order"},
		{"nested", npyBytes(strings.Repeat("(", 40)+strings.Repeat(")", 40), 64, data), ErrNPY, "nested"},
		{"short data", npyBytes(good, 64, data[:5]), ErrNPY, "truncated"},
		{"long data", npyBytes(good, 64, append(data, 0)), ErrNPY, "1 bytes after the data"},
		{"huge shape", npyBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", 64, data), ErrNPY, "too large"},
		{"non-ascii", npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), '\xff': 1}", 64, data), ErrNPY, "non-ASCII"},
		{"bad int", npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 64, data), ErrNPY, "bad integer"},
		{"word", npyBytes("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", 64, data), ErrNPY, "unexpected"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeFile(t, "bad.npy", c.file)
			_, err := ReadNPY(p)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q: want %v naming %s and saying %q", err, c.is, p, c.msg)
			}
		})
	}
	if _, err := ReadNPY(filepath.Join(t.TempDir(), "missing.npy")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := ReadNPY(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}

// FuzzDecodeNPY checks that no input makes the decoder panic or accept data of
// the wrong length.
func FuzzDecodeNPY(f *testing.F) {
	good := npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1), }", 64, f32bytes(1, 2))
	f.Add(good)
	f.Add(good[:20])
	f.Add([]byte("\x93NUMPY\x03\x00\x05\x00\x00\x00{():}"))
	f.Add(npyBytes("{'descr': '>u8', 'fortran_order': False, 'shape': (1,), }", 64, make([]byte, 8)))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, size := range []int64{int64(len(b)), -1} {
			a, err := DecodeNPY(bytes.NewReader(b), size, "fuzz.npy")
			if err != nil {
				if !strings.Contains(err.Error(), "fuzz.npy") {
					t.Fatalf("error does not name the source: %v", err)
				}
				continue
			}
			if len(a.data) != a.Len()*a.itemSize() {
				t.Fatalf("accepted %d data bytes for shape %v of %s", len(a.data), a.Shape, a.DType)
			}
			a.Float32s()
		}
	})
}

func writeNPZ(t *testing.T, method uint16, members map[string][]byte, order []string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "d.npz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	for _, name := range order {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: method})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(members[name])
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func TestNPZ(t *testing.T) {
	x, _ := NewArray([]int{2, 2}, []float32{1, 2, 3, 4})
	y, _ := NewArray([]int{2}, []int64{1, 0})
	for _, method := range []uint16{zip.Store, zip.Deflate} {
		p := writeNPZ(t, method, map[string][]byte{"y.npy": y.EncodeNPY(), "X.npy": x.EncodeNPY()}, []string{"y.npy", "X.npy"})
		z, err := OpenNPZ(p)
		if err != nil {
			t.Fatal(err)
		}
		if n := z.Names(); !slices.Equal(n, []string{"y", "X"}) {
			t.Errorf("names %v", n)
		}
		a, err := z.Array("X")
		if err != nil || !slices.Equal(a.Float32s(), []float32{1, 2, 3, 4}) || a.Source != p+":X" {
			t.Errorf("X: %v %v", a, err)
		}
		if _, err := z.Array("Z"); !errors.Is(err, ErrArray) || !strings.Contains(err.Error(), "y, X") {
			t.Errorf("missing member: %v", err)
		}
		z.Close()
		a, err = ReadArray(p + ":y")
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := a.Ints(); !slices.Equal(v, []int64{1, 0}) {
			t.Errorf("y = %v", v)
		}
		if _, err := ReadArray(p); !errors.Is(err, ErrArray) || !strings.Contains(err.Error(), ":X") {
			t.Errorf("bare npz: %v", err)
		}
	}
	// A broken member names archive and member.
	p := writeNPZ(t, zip.Deflate, map[string][]byte{"X.npy": []byte("\x93NUMPY\x01\x00\x02\x00{}")}, []string{"X.npy"})
	if _, err := ReadArray(p + ":X"); !errors.Is(err, ErrNPY) || !strings.Contains(err.Error(), p+":X") {
		t.Errorf("broken member: %v", err)
	}
	// Not a zip.
	q := writeFile(t, "n.npz", []byte("not a zip file at all"))
	if _, err := ReadArray(q + ":X"); !errors.Is(err, ErrNPY) || !strings.Contains(err.Error(), q) {
		t.Errorf("not a zip: %v", err)
	}
}

func TestReadCSV(t *testing.T) {
	p := writeFile(t, "x.csv", []byte("a, b ,c\n1,2,3\n\n# comment\n4.5, -6,nan\n"))
	a, err := ReadArray(p)
	if err != nil {
		t.Fatal(err)
	}
	f := a.Float32s()
	if !slices.Equal(a.Shape, []int{2, 3}) || f[3] != 4.5 || f[4] != -6 || !math.IsNaN(float64(f[5])) {
		t.Errorf("shape %v values %v", a.Shape, f)
	}
	p = writeFile(t, "y.tsv", []byte("0\n2\n1\n"))
	a, err = ReadArray(p)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := a.Ints(); err != nil || !slices.Equal(v, []int64{0, 2, 1}) || !slices.Equal(a.Shape, []int{3, 1}) {
		t.Errorf("labels %v %v shape %v", v, err, a.Shape)
	}
	for _, c := range []struct{ text, msg string }{
		{"1,2\n3,x\n", "line 2, field 2"},
		{"1,2\n3\n", "line 2 has 1 fields"},
		{"a,b\n", "no rows"},
		{"", "no rows"},
		{"1,\"2\n", "quote"},
		// A number beyond float64's range is a number, not a header: it was
		// taken for one on the first line (the row dropped silently) and
		// called "not a number" on the others.
		{"1e400,2\n3,4\n", "line 1, field 1: \"1e400\" is beyond float64's range"},
		{"1,2\n3,-1e999\n", "line 2, field 2: \"-1e999\" is beyond float64's range"},
	} {
		p := writeFile(t, "bad.csv", []byte(c.text))
		_, err := ReadCSV(p)
		if !errors.Is(err, ErrCSV) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%q: error %v, want %q", c.text, err, c.msg)
		}
	}
	// A UTF-8 byte-order mark (Excel's "CSV UTF-8", PowerShell's Out-File)
	// made the first field "\ufeff1" a non-number, so the first data row of a
	// file without a header was taken for one and dropped, silently.
	for _, c := range []struct {
		text  string
		shape []int
		first float32
	}{
		{"\ufeff1,2\n3,4\n", []int{2, 2}, 1},
		{"\ufeffa,b\n1,2\n3,4\n", []int{2, 2}, 1},
		{"\ufeff7\r\n8\r\n", []int{2, 1}, 7},
	} {
		p := writeFile(t, "bom.csv", []byte(c.text))
		a, err := ReadCSV(p)
		if err != nil {
			t.Errorf("%q: %v", c.text, err)
			continue
		}
		if !slices.Equal(a.Shape, c.shape) || a.Float32s()[0] != c.first {
			t.Errorf("%q: shape %v values %v, want shape %v starting %v", c.text, a.Shape, a.Float32s(), c.shape, c.first)
		}
	}
	if _, err := ReadArray("x.parquet"); !errors.Is(err, ErrArray) {
		t.Errorf("unknown type: %v", err)
	}
}

// TestNPZLyingSizeDoesNotAllocate: a .npz member's uncompressed size is a claim
// in the zip directory, not a measure of the data that is there. A 300-byte
// archive whose member claims 1 GiB (the header's shape agreeing) made the
// decoder allocate the whole gigabyte before reading a byte of it (a claim of
// 1 TiB took the process down with "fatal error: runtime: out of memory").
// The data must be allocated as it arrives.
func TestNPZLyingSizeDoesNotAllocate(t *testing.T) {
	const n = 1 << 27 // float64 values: 1 GiB
	b := npyBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (134217728,), }", 64, make([]byte, 16))
	hdrLen := len(b) - 16
	for _, claim := range []uint64{uint64(hdrLen) + 8*n, math.MaxUint64} {
		p := filepath.Join(t.TempDir(), "lie.npz")
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, err := zw.CreateRaw(&zip.FileHeader{Name: "X.npy", Method: zip.Store,
			CompressedSize64: uint64(len(b)), UncompressedSize64: claim})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(b)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err = ReadArray(p + ":X")
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrNPY) || !strings.Contains(err.Error(), p+":X") || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("claim %d: error %v, want a truncated member naming %s:X", claim, err, p)
		}
		if got := after.TotalAlloc - before.TotalAlloc; got > 64<<20 {
			t.Errorf("claim %d: allocated %d MiB for a %d-byte member", claim, got>>20, len(b))
		}
	}
}

// TestNPZLargeMemberReads checks that a member larger than the decoder's
// allocation chunk, read as it arrives, comes back whole.
func TestNPZLargeMemberReads(t *testing.T) {
	const n = 5<<20 + 3 // float32 values: 20 MiB and a bit
	v := make([]float32, n)
	for _, i := range []int{0, 1, npyChunk/4 - 1, npyChunk / 4, n - 1} {
		v[i] = float32(i + 1)
	}
	x, err := NewArray([]int{n}, v)
	if err != nil {
		t.Fatal(err)
	}
	p := writeNPZ(t, zip.Deflate, map[string][]byte{"X.npy": x.EncodeNPY()}, []string{"X.npy"})
	a, err := ReadArray(p + ":X")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Float32s(), v) {
		t.Error("values differ")
	}
}
