package gateway

import (
	"fmt"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// shiftStart reads what the label-shift correction starts from, on the
// application's validation split: the estimator's mean output (the prior the
// correction starts from, so that on the validation mix it corrects nothing: an
// estimator's mean output need not equal the split's label mix), and the
// split's labelled estimates, which value the corrected estimate's answers in
// the live mix (sneakpeek.AnswerValue under the utility matrix w;
// scheduler.Options.EstimateAnswers). Without a validation split the start is
// the manifest's prior and answers is nil. When the rows cannot value answers
// (a label outside the classes: dataset.Read does not check them) answers is
// nil and a warning says so; the correction itself still starts.
func (g *Gateway) shiftStart(m *manifest.App, est estimator, w [][]float64) (marginal []float64, answers *sneakpeek.AnswerValue, err error) {
	if m.Validation == nil {
		return append([]float64(nil), m.Prior...), nil, nil
	}
	val, err := dataset.Read(m.Path(m.Validation.File))
	if err != nil {
		return nil, nil, fmt.Errorf("validation split of %s: %w", m.Name, err)
	}
	if err := fitsInput(m, val); err != nil {
		return nil, nil, err
	}
	k := m.K()
	ests := make([][]float64, val.N)
	labels := make([]int, val.N)
	flat := make([]float64, val.N*k)
	for i := range val.N {
		p := flat[i*k : (i+1)*k : (i+1)*k]
		est.Estimate(val.Row(i), p)
		ests[i], labels[i] = p, int(val.Labels[i])
	}
	answers, aerr := sneakpeek.NewAnswerValue(labels, ests, w) // copies ests in its own order
	if aerr != nil {
		g.log.Warn().Err(aerr).Str("app", m.Name).Str("split", m.Validation.File).
			Msg("answers from the estimate off for this application (scheduler.estimate_answers): its validation split cannot value them")
	}
	return sneakpeek.MeanEstimate(ests, k), answers, nil
}

// fitsInput says, naming the application and the file, when the rows of its
// validation split val are not requests of its input size, or there are none.
func fitsInput(m *manifest.App, val *dataset.Set) error {
	switch {
	case val.D != m.InputSize:
		return fmt.Errorf("validation split of %s (%s): rows of %d values, want %d (input_size)", m.Name, m.Path(m.Validation.File), val.D, m.InputSize)
	case val.N == 0:
		return fmt.Errorf("validation split of %s (%s): no rows", m.Name, m.Path(m.Validation.File))
	}
	return nil
}
