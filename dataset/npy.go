package dataset

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The .npy format (numpy's np.save): the magic "\x93NUMPY", a major and a minor
// version byte, the header length (uint16 little-endian for version 1, uint32
// for versions 2 and 3), then the header, a Python dict literal such as
//
//	{'descr': '<f4', 'fortran_order': False, 'shape': (100, 36), }
//
// padded with spaces and ending in a newline, then the array's elements.

// npyMagic opens every .npy file.
const npyMagic = "\x93NUMPY"

// maxNPYHeader bounds a .npy header (numpy itself refuses headers over 10,000
// bytes unless told otherwise).
const maxNPYHeader = 1 << 16

// maxNPYDepth bounds the nesting of the header literal.
const maxNPYDepth = 8

// Errors returned by the array readers; each is wrapped with the file and detail.
var (
	// ErrNPY is returned for a malformed .npy file or .npz member: bad magic,
	// version or header, or a data section of the wrong size.
	ErrNPY = errors.New("dataset: malformed .npy data")
	// ErrUnsupported is returned for a well-formed array this package does not
	// read: Fortran order, an unsupported dtype (float16, complex, strings,
	// objects, structured dtypes).
	ErrUnsupported = errors.New("dataset: unsupported array")
	// ErrCSV is returned for a CSV file that is not a numeric table.
	ErrCSV = errors.New("dataset: malformed CSV")
	// ErrArray is returned when an array's values cannot be read as asked
	// (labels that are not integers, a missing .npz member).
	ErrArray = errors.New("dataset: unusable array")
)

// Array is an n-dimensional array of numbers in C (row-major) order, read from a
// .npy or CSV file or an .npz member.
type Array struct {
	// Source names where the array came from (a path, or path:member for .npz).
	Source string
	// Shape is the array's shape; a scalar has none.
	Shape []int
	// DType is the element type as numpy spells it without the byte order:
	// "f4", "f8" (floats), "i1", "i2", "i4", "i8" (signed), "u1", "u2", "u4",
	// "u8" (unsigned), "b1" (bool). CSV values are "f8".
	DType string
	// data holds the elements, little-endian.
	data []byte
}

// Len is the number of elements (the product of Shape).
func (a *Array) Len() int {
	n := 1
	for _, d := range a.Shape {
		n *= d
	}
	return n
}

// IsFloat reports whether the elements are floating point.
func (a *Array) IsFloat() bool { return a.DType[0] == 'f' }

func (a *Array) itemSize() int { return int(a.DType[1] - '0') }

// float64At returns element i as a float64.
func (a *Array) float64At(i int) float64 {
	switch a.DType {
	case "f4":
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(a.data[4*i:])))
	case "f8":
		return math.Float64frombits(binary.LittleEndian.Uint64(a.data[8*i:]))
	case "u8":
		return float64(binary.LittleEndian.Uint64(a.data[8*i:]))
	}
	return float64(a.int64At(i))
}

// int64At returns element i of an integer or bool array as an int64 (a uint64
// above MaxInt64 saturates).
func (a *Array) int64At(i int) int64 {
	switch a.DType {
	case "i1":
		return int64(int8(a.data[i]))
	case "u1", "b1":
		return int64(a.data[i])
	case "i2":
		return int64(int16(binary.LittleEndian.Uint16(a.data[2*i:])))
	case "u2":
		return int64(binary.LittleEndian.Uint16(a.data[2*i:]))
	case "i4":
		return int64(int32(binary.LittleEndian.Uint32(a.data[4*i:])))
	case "u4":
		return int64(binary.LittleEndian.Uint32(a.data[4*i:]))
	case "i8":
		return int64(binary.LittleEndian.Uint64(a.data[8*i:]))
	case "u8":
		v := binary.LittleEndian.Uint64(a.data[8*i:])
		if v > math.MaxInt64 {
			return math.MaxInt64
		}
		return int64(v)
	}
	return 0
}

// Float32s returns the elements converted to float32 (integers and bools by
// value: a uint8 255 becomes 255, not 1). float64 values are rounded to the
// nearest float32; a value beyond float32's range becomes an infinity.
func (a *Array) Float32s() []float32 {
	n := a.Len()
	out := make([]float32, n)
	switch a.DType {
	case "f4":
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(a.data[4*i:]))
		}
	case "u1", "b1":
		for i := range out {
			out[i] = float32(a.data[i])
		}
	default:
		for i := range out {
			out[i] = float32(a.float64At(i))
		}
	}
	return out
}

// Ints returns the elements as integers. Integer and bool arrays convert
// exactly; a float array (e.g. a CSV column) is accepted when every value is a
// whole number of magnitude below 2^53. It returns an error wrapping ErrArray
// naming the first element that is not an integer.
func (a *Array) Ints() ([]int64, error) {
	n := a.Len()
	out := make([]int64, n)
	if !a.IsFloat() {
		for i := range out {
			out[i] = a.int64At(i)
		}
		return out, nil
	}
	for i := range out {
		v := a.float64At(i)
		if v != math.Trunc(v) || math.Abs(v) >= 1<<53 {
			return nil, fmt.Errorf("%w: %s: element %d is %v, not an integer (labels must be whole numbers)",
				ErrArray, a.Source, i, v)
		}
		out[i] = int64(v)
	}
	return out, nil
}

// ShapeString formats Shape as numpy does, e.g. "(100, 36)" or "(5,)".
func (a *Array) ShapeString() string { return shapeString(a.Shape) }

func shapeString(s []int) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = strconv.Itoa(d)
	}
	if len(s) == 1 {
		return "(" + parts[0] + ",)"
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// DTypeName returns the numpy name of the element type, e.g. "float32".
func (a *Array) DTypeName() string { return dtypeName(a.DType) }

func dtypeName(code string) string {
	switch code {
	case "b1":
		return "bool"
	case "f4":
		return "float32"
	case "f8":
		return "float64"
	}
	bits := strconv.Itoa(8 * int(code[1]-'0'))
	if code[0] == 'u' {
		return "uint" + bits
	}
	return "int" + bits
}

// ReadNPY reads a .npy file written by numpy's np.save. It returns an error
// wrapping ErrNPY for a malformed file, ErrUnsupported for Fortran order or an
// unsupported dtype, or the I/O error; every error names the file.
func ReadNPY(path string) (*Array, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("dataset: %s is not a regular file", path)
	}
	a, err := decodeNPY(bufio.NewReaderSize(f, 1<<16), st.Size(), path, true)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// DecodeNPY reads .npy data of size bytes from r; source names it in errors and
// becomes the array's Source. Errors are as ReadNPY's. size (negative if not
// known) is taken as a claim, as a .npz member's uncompressed size is: the data
// is allocated as it arrives, so a size and a shape that promise more bytes
// than r holds cost no more memory than the bytes there are.
func DecodeNPY(r io.Reader, size int64, source string) (*Array, error) {
	return decodeNPY(r, size, source, false)
}

// npyChunk is how much of a data section decodeNPY allocates ahead of the
// bytes read when the size is only a claim.
const npyChunk = 16 << 20

// decodeNPY is DecodeNPY; sized says that size is the true number of bytes in
// r (a regular file's size), so the data section can be allocated at once.
func decodeNPY(r io.Reader, size int64, source string, sized bool) (*Array, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: "+format, append([]any{ErrNPY, source}, args...)...)
	}
	var pre [8]byte
	if n, err := io.ReadFull(r, pre[:]); err != nil {
		if string(pre[:min(n, 6)]) != npyMagic[:min(n, 6)] || n == 0 {
			return nil, bad("not a .npy file (it does not start with \\x93NUMPY)")
		}
		return nil, bad("truncated: the file ends inside the .npy preamble (%d bytes)", n)
	}
	if string(pre[:6]) != npyMagic {
		return nil, bad("not a .npy file (it does not start with \\x93NUMPY)")
	}
	major, minor := pre[6], pre[7]
	var hlen, pos int64
	switch major {
	case 1:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, bad("truncated: the file ends before the header length")
		}
		hlen, pos = int64(binary.LittleEndian.Uint16(b[:])), 10
	case 2, 3:
		var b [4]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, bad("truncated: the file ends before the header length")
		}
		hlen, pos = int64(binary.LittleEndian.Uint32(b[:])), 12
	default:
		return nil, bad("format version %d.%d is not one of 1.0, 2.0, 3.0", major, minor)
	}
	if minor != 0 {
		return nil, bad("format version %d.%d is not one of 1.0, 2.0, 3.0", major, minor)
	}
	if hlen > maxNPYHeader {
		return nil, bad("header of %d bytes is too large (at most %d)", hlen, maxNPYHeader)
	}
	if size >= 0 && pos+hlen > size {
		return nil, bad("truncated: the header needs %d bytes, the file has %d after the preamble", hlen, size-pos)
	}
	hdr := make([]byte, hlen)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, bad("truncated: the file ends inside the %d-byte header", hlen)
	}
	pos += hlen
	h, err := parseNPYHeader(string(hdr), major == 3)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: header %q: %v", errorKind(err), source, strings.TrimSpace(string(hdr)), err)
	}
	a := &Array{Source: source, Shape: h.shape, DType: h.dtype}
	n := uint64(1)
	for _, d := range h.shape {
		if d != 0 && n > math.MaxInt64/uint64(d)/8 {
			return nil, bad("shape %s is too large", shapeString(h.shape))
		}
		n *= uint64(d)
	}
	nbytes := n * uint64(a.itemSize())
	if size >= 0 {
		switch rest := uint64(size - pos); {
		case rest < nbytes:
			return nil, bad("truncated: shape %s of %s needs %d data bytes, the file has %d",
				shapeString(h.shape), dtypeName(h.dtype), nbytes, rest)
		case rest > nbytes:
			return nil, bad("%d bytes after the data of shape %s of %s", rest-nbytes, shapeString(h.shape), dtypeName(h.dtype))
		}
	}
	if nbytes > 1<<40 {
		return nil, bad("shape %s is too large", shapeString(h.shape))
	}
	if a.data, err = readData(r, nbytes, sized); err != nil {
		return nil, bad("truncated: shape %s of %s needs %d data bytes: %v", shapeString(h.shape), dtypeName(h.dtype), nbytes, err)
	}
	if size < 0 {
		var one [1]byte
		if k, _ := r.Read(one[:]); k > 0 {
			return nil, bad("bytes after the data of shape %s of %s", shapeString(h.shape), dtypeName(h.dtype))
		}
	}
	if h.bigEndian {
		swapBytes(a.data, a.itemSize())
	}
	return a, nil
}

// readData reads n bytes from r. With sized (the caller knows the bytes are
// there) the buffer is allocated at once; otherwise it grows, at most doubling,
// as the bytes arrive.
func readData(r io.Reader, n uint64, sized bool) ([]byte, error) {
	if sized || n <= npyChunk {
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		return b, err
	}
	b := make([]byte, 0, npyChunk)
	for uint64(len(b)) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, int(min(n-uint64(len(b)), uint64(len(b)))))
		}
		k, err := io.ReadFull(r, b[len(b):min(cap(b), int(n))]) // n <= 1<<40 (decodeNPY)
		b = b[:len(b)+k]
		if err != nil {
			return nil, err
		}
	}
	return b, nil
}

// errorKind is ErrUnsupported for header errors that say so, else ErrNPY.
func errorKind(err error) error {
	if errors.Is(err, ErrUnsupported) {
		return ErrUnsupported
	}
	return ErrNPY
}

func swapBytes(b []byte, size int) {
	if size == 1 {
		return
	}
	for i := 0; i+size <= len(b); i += size {
		for l, r := i, i+size-1; l < r; l, r = l+1, r-1 {
			b[l], b[r] = b[r], b[l]
		}
	}
}

type npyHeader struct {
	dtype     string
	bigEndian bool
	shape     []int
}

// parseNPYHeader parses the header dict. Errors that are about an unsupported
// (but valid) array wrap ErrUnsupported; the others are plain.
func parseNPYHeader(s string, utf8 bool) (npyHeader, error) {
	var h npyHeader
	if !utf8 {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return h, fmt.Errorf("non-ASCII byte %#x at %d (only format 3.0 headers are UTF-8)", s[i], i)
			}
		}
	}
	p := &litParser{s: s}
	v, err := p.value(0)
	if err != nil {
		return h, err
	}
	p.skipSpace()
	if p.i != len(p.s) {
		return h, fmt.Errorf("unexpected %q after the dict", truncate(p.s[p.i:], 20))
	}
	d, ok := v.(map[string]any)
	if !ok {
		return h, errors.New("not a dict")
	}
	for k := range d {
		if k != "descr" && k != "fortran_order" && k != "shape" {
			return h, fmt.Errorf("unknown key %q (want descr, fortran_order, shape)", k)
		}
	}
	descr, ok := d["descr"]
	if !ok {
		return h, errors.New("no 'descr' key")
	}
	fo, ok := d["fortran_order"]
	if !ok {
		return h, errors.New("no 'fortran_order' key")
	}
	shape, ok := d["shape"]
	if !ok {
		return h, errors.New("no 'shape' key")
	}
	ds, ok := descr.(string)
	if !ok {
		return h, fmt.Errorf("%w: structured dtype %v (save a plain numeric array)", ErrUnsupported, descr)
	}
	if h.dtype, h.bigEndian, err = parseDescr(ds); err != nil {
		return h, err
	}
	switch fo {
	case false:
	case true:
		return h, fmt.Errorf("%w: Fortran (column-major) order; save a C-ordered copy: np.save(f, np.ascontiguousarray(a))", ErrUnsupported)
	default:
		return h, fmt.Errorf("fortran_order is %v, want True or False", fo)
	}
	tup, ok := shape.([]any)
	if !ok {
		return h, fmt.Errorf("shape %v is not a tuple", shape)
	}
	h.shape = make([]int, len(tup))
	for i, x := range tup {
		n, ok := x.(int64)
		if !ok || n < 0 || n > math.MaxInt32*int64(1024) {
			return h, fmt.Errorf("shape %v: dimension %d is not a non-negative integer", shape, i)
		}
		h.shape[i] = int(n)
	}
	return h, nil
}

// parseDescr maps a numpy type string such as "<f4" to a DType code.
func parseDescr(s string) (code string, big bool, err error) {
	if len(s) < 2 {
		return "", false, fmt.Errorf("descr %q is not a numpy type string", s)
	}
	order, t := s[0], s[1:]
	switch order {
	case '<', '=', '|':
	case '>':
		big = true
	default:
		order, t = '=', s
	}
	switch t {
	case "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1":
		if order == '|' && t[1] != '1' {
			return "", false, fmt.Errorf("descr %q: a multi-byte type needs a byte order", s)
		}
		return t, big, nil
	case "f2":
		return "", false, fmt.Errorf("%w: dtype float16 (%q); save as float32: a.astype(np.float32)", ErrUnsupported, s)
	}
	return "", false, fmt.Errorf("%w: dtype %q (want float32, float64, an integer type or bool)", ErrUnsupported, s)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// litParser parses the subset of Python literals numpy writes in headers:
// dicts with string keys, strings, integers, True, False, None, tuples and lists.
type litParser struct {
	s string
	i int
}

func (p *litParser) skipSpace() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\n' || p.s[p.i] == '\t' || p.s[p.i] == '\r') {
		p.i++
	}
}

func (p *litParser) errorf(format string, args ...any) error {
	return fmt.Errorf("at byte %d: "+format, append([]any{p.i}, args...)...)
}

func (p *litParser) value(depth int) (any, error) {
	if depth > maxNPYDepth {
		return nil, p.errorf("nested too deeply")
	}
	p.skipSpace()
	if p.i >= len(p.s) {
		return nil, p.errorf("unexpected end of header")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		p.i++
		d := map[string]any{}
		for {
			p.skipSpace()
			if p.i < len(p.s) && p.s[p.i] == '}' {
				p.i++
				return d, nil
			}
			k, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, p.errorf("dict key %v is not a string", k)
			}
			if _, dup := d[ks]; dup {
				return nil, p.errorf("duplicate key %q", ks)
			}
			p.skipSpace()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return nil, p.errorf("want ':' after key %q", ks)
			}
			p.i++
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			d[ks] = v
			if err := p.sep('}'); err != nil {
				return nil, err
			}
		}
	case c == '(' || c == '[':
		end := byte(')')
		if c == '[' {
			end = ']'
		}
		p.i++
		var items []any
		for {
			p.skipSpace()
			if p.i < len(p.s) && p.s[p.i] == end {
				p.i++
				if items == nil {
					items = []any{}
				}
				return items, nil
			}
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			items = append(items, v)
			if len(items) > 64 {
				return nil, p.errorf("more than 64 items")
			}
			if err := p.sep(end); err != nil {
				return nil, err
			}
		}
	case c == '\'' || c == '"':
		j := strings.IndexByte(p.s[p.i+1:], c)
		if j < 0 {
			return nil, p.errorf("unterminated string")
		}
		str := p.s[p.i+1 : p.i+1+j]
		if strings.ContainsRune(str, '\\') {
			return nil, p.errorf("escapes in strings are not supported")
		}
		p.i += j + 2
		return str, nil
	case c == '-' || (c >= '0' && c <= '9'):
		j := p.i + 1
		for j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
			j++
		}
		// Python 2 headers may write longs as 10L.
		tok := p.s[p.i:j]
		if j < len(p.s) && p.s[j] == 'L' {
			j++
		}
		n, err := strconv.ParseInt(tok, 10, 64)
		if err != nil {
			return nil, p.errorf("bad integer %q", tok)
		}
		p.i = j
		return n, nil
	default:
		for _, w := range []struct {
			word string
			v    any
		}{{"True", true}, {"False", false}, {"None", nil}} {
			if strings.HasPrefix(p.s[p.i:], w.word) {
				p.i += len(w.word)
				return w.v, nil
			}
		}
		return nil, p.errorf("unexpected %q", truncate(p.s[p.i:], 12))
	}
}

// sep consumes a ',' or stops before end.
func (p *litParser) sep(end byte) error {
	p.skipSpace()
	if p.i < len(p.s) {
		switch p.s[p.i] {
		case ',':
			p.i++
			return nil
		case end:
			return nil
		}
	}
	return p.errorf("want ',' or %q", end)
}

// NewArray returns an array of the given shape holding data, which must be a
// []float32, []float64, []int64, []int32 or []uint8 of the shape's size. It
// returns an error wrapping ErrArray otherwise.
func NewArray(shape []int, data any) (*Array, error) {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return nil, fmt.Errorf("%w: negative dimension in %v", ErrArray, shape)
		}
		n *= d
	}
	a := &Array{Shape: append([]int(nil), shape...)}
	var count int
	switch v := data.(type) {
	case []float32:
		a.DType, count = "f4", len(v)
		a.data = make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(a.data[4*i:], math.Float32bits(x))
		}
	case []float64:
		a.DType, count = "f8", len(v)
		a.data = make([]byte, 8*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint64(a.data[8*i:], math.Float64bits(x))
		}
	case []int64:
		a.DType, count = "i8", len(v)
		a.data = make([]byte, 8*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint64(a.data[8*i:], uint64(x))
		}
	case []int32:
		a.DType, count = "i4", len(v)
		a.data = make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(a.data[4*i:], uint32(x))
		}
	case []uint8:
		a.DType, count = "u1", len(v)
		a.data = append([]byte(nil), v...)
	default:
		return nil, fmt.Errorf("%w: unsupported element type %T", ErrArray, data)
	}
	if count != n {
		return nil, fmt.Errorf("%w: %d values for shape %s (%d)", ErrArray, count, shapeString(shape), n)
	}
	return a, nil
}

// EncodeNPY returns a's .npy encoding as np.save writes it (format 1.0, or
// 2.0 for a header over 65,535 bytes; header padded so the data starts at a
// multiple of 64 bytes).
func (a *Array) EncodeNPY() []byte {
	order := "<"
	if a.itemSize() == 1 {
		order = "|"
	}
	dict := fmt.Sprintf("{'descr': '%s%s', 'fortran_order': False, 'shape': %s, }", order, a.DType, shapeString(a.Shape))
	pre := 10
	if len(dict)+1+pre > 65535 {
		pre = 12
	}
	total := (pre + len(dict) + 1 + 63) / 64 * 64
	hdr := dict + strings.Repeat(" ", total-pre-len(dict)-1) + "\n"
	out := make([]byte, 0, total+len(a.data))
	out = append(out, npyMagic...)
	if pre == 10 {
		out = append(out, 1, 0)
		out = binary.LittleEndian.AppendUint16(out, uint16(len(hdr)))
	} else {
		out = append(out, 2, 0)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(hdr)))
	}
	out = append(out, hdr...)
	return append(out, a.data...)
}

// WriteNPY writes a to path as a .npy file (see EncodeNPY), replacing the file.
func WriteNPY(path string, a *Array) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, a.EncodeNPY(), 0o644); err != nil {
		return fmt.Errorf("dataset: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("dataset: %w", err)
	}
	return nil
}
