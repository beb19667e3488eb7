package devices

import (
	"fmt"
	"math/rand/v2"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
)

// sampler draws (sample index, true label) pairs: a label from the workload's mix
// (interpolated from Mix to MixEnd by the run's progress), then a random sample of
// that label. Without a workload it draws samples uniformly.
type sampler struct {
	set        *dataset.Set
	byLabel    [][]int
	start, end []float64
	weights    []float64
}

// newSampler draws from set, read from the sample file src (named in errors).
func newSampler(set *dataset.Set, src string, k int, w *manifest.Workload) (*sampler, error) {
	if set.N == 0 {
		return nil, fmt.Errorf("devices: sample file %s has no samples", src)
	}
	s := &sampler{set: set, byLabel: make([][]int, k)}
	for i, y := range set.Labels {
		if y < 0 || int(y) >= k {
			return nil, fmt.Errorf("devices: %s: sample %d has label %d, but the application has %d classes", src, i, y, k)
		}
		s.byLabel[y] = append(s.byLabel[y], i)
	}
	if w == nil {
		return s, nil
	}
	s.start, s.end = w.Mix, w.MixEnd
	if s.end == nil {
		s.end = s.start
	}
	if len(s.start) != k || len(s.end) != k {
		return nil, fmt.Errorf("devices: workload %q: mix has %d/%d classes, want %d", w.Name, len(s.start), len(s.end), k)
	}
	for y := range k {
		if (s.start[y] > 0 || s.end[y] > 0) && len(s.byLabel[y]) == 0 {
			return nil, fmt.Errorf("devices: workload %q gives class %d weight, but sample file %s has no sample of it", w.Name, y, src)
		}
	}
	s.weights = make([]float64, k)
	return s, nil
}

// draw returns a sample index and its label; progress in [0,1] moves the mix.
func (s *sampler) draw(rng *rand.Rand, progress float64) (int, int) {
	if s.weights == nil {
		i := rng.IntN(s.set.N)
		return i, int(s.set.Labels[i])
	}
	progress = min(max(progress, 0), 1)
	total := 0.0
	for y := range s.weights {
		s.weights[y] = (1-progress)*s.start[y] + progress*s.end[y]
		total += s.weights[y]
	}
	u := rng.Float64() * total
	y := 0
	for ; y < len(s.weights)-1; y++ {
		if u < s.weights[y] {
			break
		}
		u -= s.weights[y]
	}
	for len(s.byLabel[y]) == 0 { // rounding landed on an empty class: take the next one with samples
		y = (y + 1) % len(s.byLabel)
	}
	idx := s.byLabel[y]
	return idx[rng.IntN(len(idx))], y
}
