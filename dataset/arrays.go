package dataset

import (
	"archive/zip"
	"bufio"
	"encoding/binary"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// NPZ is an open .npz archive (numpy's np.savez or np.savez_compressed): a zip
// file of .npy members. Member names are given without their ".npy" suffix, as
// numpy's np.load does: np.savez(f, X=a, y=b) holds "X" and "y", np.savez(f, a, b)
// holds "arr_0" and "arr_1".
type NPZ struct {
	path  string
	zr    *zip.ReadCloser
	names []string
	files map[string]*zip.File
}

// OpenNPZ opens the .npz archive at path. It returns an error wrapping ErrNPY
// when the file is not a zip archive, or the I/O error; both name the file.
func OpenNPZ(path string) (*NPZ, error) {
	zr, err := zip.OpenReader(path)
	if err != nil {
		if errors.Is(err, zip.ErrFormat) || errors.Is(err, zip.ErrAlgorithm) || errors.Is(err, zip.ErrChecksum) {
			return nil, fmt.Errorf("%w: %s: not a .npz (zip) archive: %v", ErrNPY, path, err)
		}
		return nil, fmt.Errorf("dataset: %w", err)
	}
	z := &NPZ{path: path, zr: zr, files: map[string]*zip.File{}}
	for _, f := range zr.File {
		if strings.HasSuffix(f.Name, "/") {
			continue
		}
		name := strings.TrimSuffix(f.Name, ".npy")
		if _, dup := z.files[name]; dup {
			continue
		}
		z.names = append(z.names, name)
		z.files[name] = f
	}
	return z, nil
}

// Names lists the members in archive order (np.savez keeps argument order).
func (z *NPZ) Names() []string { return append([]string(nil), z.names...) }

// Array reads member name. It returns an error wrapping ErrArray when there is
// no such member, else as DecodeNPY.
func (z *NPZ) Array(name string) (*Array, error) {
	src := z.path + ":" + name
	f, ok := z.files[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no array %q (it has %s)", ErrArray, z.path, name, strings.Join(z.names, ", "))
	}
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNPY, src, err)
	}
	defer rc.Close()
	size := int64(-1)
	if f.UncompressedSize64 <= math.MaxInt64 {
		size = int64(f.UncompressedSize64)
	}
	a, err := DecodeNPY(rc, size, src)
	if err != nil {
		if errors.Is(err, zip.ErrChecksum) || errors.Is(err, zip.ErrFormat) {
			return nil, fmt.Errorf("%w: %s: %v", ErrNPY, src, err)
		}
		return nil, err
	}
	return a, nil
}

// Close closes the archive.
func (z *NPZ) Close() error { return z.zr.Close() }

// ReadCSV reads a numeric CSV file (comma-separated, or tab-separated when the
// name ends in .tsv) as a 2-D float64 array of shape (rows, columns). A first
// row that is not all numbers is taken as a header and skipped; a UTF-8
// byte-order mark at the start is ignored; blank lines and lines starting with
// '#' are skipped; fields may be padded with spaces; "nan" and "inf" parse as
// such. It returns an error wrapping ErrCSV that names the
// line, or the I/O error.
func ReadCSV(path string) (*Array, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	// A UTF-8 byte-order mark (Excel's "CSV UTF-8") is not part of the first
	// field: left there, it made a first row of numbers look like a header.
	if bom, _ := br.Peek(3); string(bom) == "\ufeff" {
		br.Discard(3)
	}
	r := csv.NewReader(br)
	if strings.EqualFold(filepath.Ext(path), ".tsv") {
		r.Comma = '\t'
	}
	r.Comment = '#'
	r.FieldsPerRecord = -1
	r.TrimLeadingSpace = true
	r.ReuseRecord = true
	var vals []byte
	rows, cols := 0, 0
	first := true
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrCSV, path, err)
		}
		line, _ := r.FieldPos(0)
		nums := make([]float64, len(rec))
		bad := -1
		for i, s := range rec {
			v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
			if errors.Is(err, strconv.ErrRange) {
				return nil, fmt.Errorf("%w: %s: line %d, field %d: %q is beyond float64's range", ErrCSV, path, line, i+1, rec[i])
			}
			if err != nil {
				bad = i
				break
			}
			nums[i] = v
		}
		if first {
			first = false
			cols = len(rec)
			if bad >= 0 {
				continue // a header
			}
		}
		if bad >= 0 {
			return nil, fmt.Errorf("%w: %s: line %d, field %d: %q is not a number", ErrCSV, path, line, bad+1, rec[bad])
		}
		if len(rec) != cols {
			return nil, fmt.Errorf("%w: %s: line %d has %d fields, the first row has %d", ErrCSV, path, line, len(rec), cols)
		}
		for _, v := range nums {
			vals = binary.LittleEndian.AppendUint64(vals, math.Float64bits(v))
		}
		rows++
		if uint64(len(vals)) > 1<<34 {
			return nil, fmt.Errorf("%w: %s: too large", ErrCSV, path)
		}
	}
	if rows == 0 {
		return nil, fmt.Errorf("%w: %s: no rows of numbers", ErrCSV, path)
	}
	return &Array{Source: path, Shape: []int{rows, cols}, DType: "f8", data: vals}, nil
}

// ReadArray reads one array named by spec:
//
//   - "file.npy": a .npy file;
//   - "file.npz:NAME": member NAME of a .npz archive;
//   - "file.csv" or "file.tsv": a numeric table (see ReadCSV).
//
// Errors name the file: see ReadNPY, NPZ.Array and ReadCSV. A bare .npz (no
// member) or another extension is an error wrapping ErrArray.
func ReadArray(spec string) (*Array, error) {
	if path, member, ok := SplitNPZ(spec); ok {
		if member == "" {
			return nil, fmt.Errorf("%w: %s: name the array in the archive, e.g. %s:X", ErrArray, path, path)
		}
		z, err := OpenNPZ(path)
		if err != nil {
			return nil, err
		}
		defer z.Close()
		return z.Array(member)
	}
	switch strings.ToLower(filepath.Ext(spec)) {
	case ".npy":
		return ReadNPY(spec)
	case ".csv", ".tsv":
		return ReadCSV(spec)
	}
	return nil, fmt.Errorf("%w: %s: unknown file type (want .npy, .npz:NAME, .csv or .tsv)", ErrArray, spec)
}

// SplitNPZ splits "file.npz:NAME" into the archive path and the member name
// (empty for a bare "file.npz"); ok is false when spec names no .npz archive.
func SplitNPZ(spec string) (path, member string, ok bool) {
	if i := strings.LastIndex(strings.ToLower(spec), ".npz:"); i >= 0 {
		return spec[:i+4], spec[i+5:], true
	}
	if strings.EqualFold(filepath.Ext(spec), ".npz") {
		return spec, "", true
	}
	return "", "", false
}
