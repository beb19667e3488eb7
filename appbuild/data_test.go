package appbuild

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/dataset"
)

// TestReadSplitForms reads the same split in every form SplitSpec names.
func TestReadSplitForms(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	xs := []float32{0, 1, 2, 3, 4, 5}
	ys := []int64{1, 0, 1}
	x, _ := dataset.NewArray([]int{3, 2}, xs)
	y, _ := dataset.NewArray([]int{3}, ys)
	y2, _ := dataset.NewArray([]int{3, 1}, ys)
	extra, _ := dataset.NewArray([]int{1}, []int64{9})
	dataset.WriteNPY(p("X.npy"), x)
	dataset.WriteNPY(p("y.npy"), y)
	dataset.WriteNPY(p("y2.npy"), y2)
	os.WriteFile(p("X.csv"), []byte("a,b\n0,1\n2,3\n4,5\n"), 0o644)
	os.WriteFile(p("y.csv"), []byte("label\n1\n0\n1\n"), 0o644)
	writeZip(t, p("named.npz"), map[string][]byte{"X.npy": x.EncodeNPY(), "y.npy": y.EncodeNPY()})
	writeZip(t, p("positional.npz"), map[string][]byte{"arr_0.npy": x.EncodeNPY(), "arr_1.npy": y.EncodeNPY()})
	writeZip(t, p("three.npz"), map[string][]byte{"a.npy": x.EncodeNPY(), "b.npy": y.EncodeNPY(), "c.npy": extra.EncodeNPY()})
	dataset.Write(p("s.sgs"), &dataset.Set{N: 3, D: 2, Values: xs, Labels: []int32{1, 0, 1}}, false)
	for _, spec := range []string{
		p("X.npy") + "," + p("y.npy"),
		p("X.npy") + "," + p("y2.npy"),
		p("X.csv") + "," + p("y.csv"),
		p("named.npz"),
		p("positional.npz"),
		p("three.npz:a") + "," + p("three.npz:b"),
		p("X.csv") + "," + p("named.npz:y"),
		p("s.sgs"),
	} {
		s, err := readSplit("train", spec)
		if err != nil {
			t.Errorf("%s: %v", spec, err)
			continue
		}
		if s.n != 3 || s.d != 2 || !slices.Equal(s.x, xs) || !slices.Equal(s.y, ys) {
			t.Errorf("%s: n %d d %d x %v y %v", spec, s.n, s.d, s.x, s.y)
		}
	}
	_, err := readSplit("train", p("three.npz"))
	if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), "holds 3 arrays (a, b, c)") {
		t.Errorf("three unnamed arrays: %v", err)
	}
	_, err = readSplit("train", p("X.npy"))
	if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), "want X.npy,y.npy") {
		t.Errorf("X alone: %v", err)
	}
}

func TestStratified(t *testing.T) {
	labels := make([]int32, 1000)
	for i := range labels {
		labels[i] = int32(i % 4)
		if i%10 == 0 {
			labels[i] = 3
		}
	}
	pick, rest := stratified(labels, 4, 200, 7)
	if len(pick)+len(rest) != 1000 || len(pick) < 196 || len(pick) > 204 {
		t.Fatalf("picked %d, rest %d", len(pick), len(rest))
	}
	if !slices.IsSorted(pick) || !slices.IsSorted(rest) {
		t.Error("not sorted")
	}
	whole, mix := classMix(labels, 4), make([]int32, len(pick))
	for j, i := range pick {
		mix[j] = labels[i]
	}
	for c, f := range classMix(mix, 4) {
		if d := f - whole[c]; d > 0.01 || d < -0.01 {
			t.Errorf("class %d: %.3f of the subset, %.3f of the whole", c, f, whole[c])
		}
	}
	again, _ := stratified(labels, 4, 200, 7)
	if !slices.Equal(pick, again) {
		t.Error("not deterministic")
	}
}

// TestReadSplitNonFinite: non-finite features and labels are refused naming
// the file and the row. A float64 feature beyond float32's range (1e39) becomes
// an infinity when read as float32, and was reported as "+Inf" with no hint
// that the file holds no infinity.
func TestReadSplitNonFinite(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	x, _ := dataset.NewArray([]int{2, 2}, []float64{0, 1e39, 2, 3})
	dataset.WriteNPY(p("big.npy"), x)
	os.WriteFile(p("nan.csv"), []byte("a,b\n0,1\nnan,3\n"), 0o644)
	os.WriteFile(p("y.csv"), []byte("1\n0\n"), 0o644)
	os.WriteFile(p("ynan.csv"), []byte("1\nnan\n"), 0o644)
	for _, c := range []struct{ spec, file, msg string }{
		{p("big.npy") + "," + p("y.csv"), p("big.npy"), "row 0, value 1 is +Inf in float32; features must be finite float32 values"},
		{p("nan.csv") + "," + p("y.csv"), p("nan.csv"), "row 1, value 0 is NaN"},
		{p("nan.csv") + "," + p("ynan.csv"), p("ynan.csv"), "element 1 is NaN, not an integer"},
	} {
		_, err := readSplit("train", c.spec)
		if !errors.Is(err, ErrData) || !strings.Contains(err.Error(), c.file) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %v, want one naming %s and saying %q", c.spec, err, c.file, c.msg)
		}
	}
}
