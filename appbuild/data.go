package appbuild

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/sneakgate/sneakgate/dataset"
)

// ErrData wraps every error about the data: unreadable files, shapes,
// non-finite values, labels.
var ErrData = errors.New("bad data")

// split is one labelled split as read: rows of features and int64 labels
// (range-checked later, once the number of classes is known).
type split struct {
	name   string // "train", "validation", "test"
	xsrc   string // where X came from (for errors)
	ysrc   string
	n, d   int
	x      []float32
	y      []int64
	labels []int32 // y once checked
}

func (s *split) set() *dataset.Set {
	return &dataset.Set{N: s.n, D: s.d, Values: s.x, Labels: s.labels}
}

func (s *split) row(i int) []float32 { return s.x[i*s.d : (i+1)*s.d] }

// SplitSpec documents the forms a -train, -validation or -test value takes:
//
//   - "X.npy,y.npy": features and labels in two files; each may also be a
//     member of a .npz archive ("data.npz:X_train") or a CSV/TSV table
//     ("X.csv"); the forms mix.
//   - "data.npz": one archive holding the features as "X" (or "x") and the
//     labels as "y" (or "Y", "labels"); failing those names, an archive of
//     exactly two arrays gives X first and y second in archive order (what
//     np.savez(f, X, y) writes).
//   - "split.sgs": a sneakgate sample file (package dataset), features and
//     labels together.
//
// X has one row per sample: shape (N, D), or (N, ...) flattened in C order (an
// image (N, 28, 28) becomes 784 values per row). y has shape (N,) or (N, 1) and
// integer values (whole-number floats, as CSV gives, are accepted). Features may
// be any float or integer type; integers are taken by value (uint8 pixels stay
// 0..255: scale them in the model graph or before saving).
const SplitSpec = "X.npy,y.npy | data.npz | data.npz:X,data.npz:y | X.csv,y.csv | split.sgs"

// readSplit reads one split.
func readSplit(name, spec string) (*split, error) {
	s := &split{name: name}
	fail := func(err error) (*split, error) {
		return nil, fmt.Errorf("%w: -%s %s: %w", ErrData, name, spec, err)
	}
	done := func(err error) (*split, error) {
		if err != nil {
			return nil, fmt.Errorf("%w: -%s: %w", ErrData, name, err)
		}
		return s, nil
	}
	parts := strings.Split(spec, ",")
	switch {
	case len(parts) == 1 && strings.HasSuffix(strings.ToLower(spec), ".sgs"):
		set, err := dataset.Read(spec)
		if err != nil {
			return fail(err)
		}
		s.xsrc, s.ysrc = spec, spec
		s.n, s.d, s.x = set.N, set.D, set.Values
		s.y = make([]int64, set.N)
		for i, v := range set.Labels {
			s.y[i] = int64(v)
		}
		return done(s.checkFinite())
	case len(parts) == 1:
		path, member, ok := dataset.SplitNPZ(spec)
		if !ok || member != "" {
			return fail(fmt.Errorf("want %s", SplitSpec))
		}
		x, y, err := npzPair(path)
		if err != nil {
			return fail(err)
		}
		return done(s.fill(x, y))
	case len(parts) == 2:
		if parts[0] == "" || parts[1] == "" {
			return fail(fmt.Errorf("want %s", SplitSpec))
		}
		x, err := dataset.ReadArray(parts[0])
		if err != nil {
			return fail(err)
		}
		y, err := dataset.ReadArray(parts[1])
		if err != nil {
			return fail(err)
		}
		return done(s.fill(x, y))
	}
	return fail(fmt.Errorf("want %s", SplitSpec))
}

// npzPair picks X and y from a bare .npz archive (see SplitSpec).
func npzPair(path string) (x, y *dataset.Array, err error) {
	z, err := dataset.OpenNPZ(path)
	if err != nil {
		return nil, nil, err
	}
	defer z.Close()
	names := z.Names()
	pick := func(cands ...string) string {
		for _, c := range cands {
			if slices.Contains(names, c) {
				return c
			}
		}
		return ""
	}
	xn, yn := pick("X", "x"), pick("y", "Y", "labels")
	if xn == "" || yn == "" {
		if len(names) != 2 {
			return nil, nil, fmt.Errorf("%s holds %d arrays (%s): name them, e.g. %s:X,%s:y",
				path, len(names), strings.Join(names, ", "), path, path)
		}
		xn, yn = names[0], names[1]
	}
	if x, err = z.Array(xn); err != nil {
		return nil, nil, err
	}
	if y, err = z.Array(yn); err != nil {
		return nil, nil, err
	}
	return x, y, nil
}

// fill takes features and labels from arrays and checks their shapes and values.
func (s *split) fill(x, y *dataset.Array) error {
	s.xsrc, s.ysrc = x.Source, y.Source
	if len(x.Shape) < 2 {
		return fmt.Errorf("%s: X has shape %s; it needs one row per sample: shape (N, D) (reshape a single feature with x.reshape(-1, 1))",
			x.Source, x.ShapeString())
	}
	switch {
	case len(y.Shape) == 1, len(y.Shape) == 2 && y.Shape[1] == 1:
	default:
		return fmt.Errorf("%s: labels have shape %s, want (N,) or (N, 1) with integer class indices (one-hot labels: y.argmax(axis=1))",
			y.Source, y.ShapeString())
	}
	s.n = x.Shape[0]
	s.d = x.Len() / max(s.n, 1)
	if s.n == 0 || s.d == 0 {
		return fmt.Errorf("%s: X has shape %s: no samples", x.Source, x.ShapeString())
	}
	if y.Shape[0] != s.n {
		return fmt.Errorf("%s has %d rows but %s has %d labels", x.Source, s.n, y.Source, y.Shape[0])
	}
	if s.n*s.d >= 1<<31 {
		return fmt.Errorf("%s: %d values is too many", x.Source, s.n*s.d)
	}
	var err error
	if s.y, err = y.Ints(); err != nil {
		return err
	}
	s.x = x.Float32s()
	return s.checkFinite()
}

// checkFinite refuses NaN and infinite features, naming the first (rows and
// values counted from 0). The values are float32: a float64 feature beyond
// float32's range has become an infinity, which the message says.
func (s *split) checkFinite() error {
	for i, v := range s.x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("%s (-%s features): row %d, value %d is %v in float32; features must be finite float32 values "+
				"(a float64 beyond ±3.4e38 reads as an infinity; impute, rescale or drop such rows)",
				s.xsrc, s.name, i/s.d, i%s.d, v)
		}
	}
	return nil
}

// checkLabels checks that every label is in [0, k) and, when all is set, that
// every class has rows; it fills s.labels.
func (s *split) checkLabels(k int, labels []string, all bool) error {
	counts := make([]int, k)
	s.labels = make([]int32, s.n)
	for i, y := range s.y {
		if y < 0 || y >= int64(k) {
			return fmt.Errorf("%w: %s (-%s labels): row %d has label %d, outside [0, %d) (%d classes: %s)",
				ErrData, s.ysrc, s.name, i, y, k, k, strings.Join(labels, ", "))
		}
		counts[y]++
		s.labels[i] = int32(y)
	}
	if all {
		var missing []string
		for c, n := range counts {
			if n == 0 {
				missing = append(missing, fmt.Sprintf("%d (%s)", c, labels[c]))
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%w: %s (-%s labels): no rows of class %s; every class needs %s rows",
				ErrData, s.ysrc, s.name, strings.Join(missing, ", "), s.name)
		}
	}
	return nil
}

// checkRange refuses values outside r.
func (s *split) checkRange(r [2]float64) error {
	for i, v := range s.x {
		if float64(v) < r[0] || float64(v) > r[1] {
			return fmt.Errorf("%w: %s (-%s features): row %d, value %d is %v, outside input_range [%v, %v]",
				ErrData, s.xsrc, s.name, i/s.d, i%s.d, v, r[0], r[1])
		}
	}
	return nil
}

// classMix returns the class fractions of labels.
func classMix(labels []int32, k int) []float64 {
	m := make([]float64, k)
	for _, y := range labels {
		m[y]++
	}
	for c := range m {
		m[c] /= float64(max(len(labels), 1))
	}
	return m
}

// stratified returns a sorted subset of about n row indices of labels, the same
// fraction of every class (rounded per class), drawn with seed, and the sorted
// remaining indices.
func stratified(labels []int32, k, n int, seed uint64) (pick, rest []int) {
	if n >= len(labels) {
		all := make([]int, len(labels))
		for i := range all {
			all[i] = i
		}
		return all, nil
	}
	frac := float64(n) / float64(len(labels))
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	byClass := make([][]int, k)
	for i, y := range labels {
		byClass[y] = append(byClass[y], i)
	}
	chosen := make([]bool, len(labels))
	for _, idx := range byClass {
		rng.Shuffle(len(idx), func(a, b int) { idx[a], idx[b] = idx[b], idx[a] })
		take := int(math.Round(frac * float64(len(idx))))
		for _, i := range idx[:take] {
			chosen[i] = true
		}
	}
	for i, c := range chosen {
		if c {
			pick = append(pick, i)
		} else {
			rest = append(rest, i)
		}
	}
	return pick, rest
}

// subset returns the rows idx of s as a dataset.Set.
func (s *split) subset(idx []int) *dataset.Set {
	out := &dataset.Set{N: len(idx), D: s.d, Values: make([]float32, 0, len(idx)*s.d), Labels: make([]int32, len(idx))}
	for j, i := range idx {
		out.Values = append(out.Values, s.row(i)...)
		out.Labels[j] = s.labels[i]
	}
	return out
}

// exactUint8 reports whether every value of set is k/255 for an integer k in
// [0, 255], as read back from a uint8 sample file, so it can be stored as one.
func exactUint8(values []float32) bool {
	for _, v := range values {
		if !(v >= 0 && v <= 1) {
			return false
		}
		if float32(math.Round(float64(v)*255))/255 != v {
			return false
		}
	}
	return len(values) > 0
}
