package gateway

import (
	"fmt"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
)

// estimatorMarginal is the estimator's mean output on the application's
// validation split: the prior the label-shift correction starts from, so that on
// the validation mix it corrects nothing (an estimator's mean output need not equal
// the split's label mix). Without a validation split it is the manifest's prior.
func estimatorMarginal(m *manifest.App, est estimator) ([]float64, error) {
	if m.Validation == nil {
		return append([]float64(nil), m.Prior...), nil
	}
	val, err := dataset.Read(m.Path(m.Validation.File))
	if err != nil {
		return nil, fmt.Errorf("validation split: %w", err)
	}
	if val.D != m.InputSize || val.N == 0 {
		return nil, fmt.Errorf("validation split %s: %d rows of %d values, want rows of %d", m.Validation.File, val.N, val.D, m.InputSize)
	}
	sum := make([]float64, m.K())
	p := make([]float64, m.K())
	for i := range val.N {
		est.Estimate(val.Row(i), p)
		for y, x := range p {
			sum[y] += x
		}
	}
	for y := range sum {
		sum[y] /= float64(val.N)
	}
	return sum, nil
}
