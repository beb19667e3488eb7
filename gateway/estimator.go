package gateway

import (
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// estimator is what the gateway needs of a SneakPeek estimator.
type estimator interface {
	// Estimate writes the class distribution of input into dst (len K).
	Estimate(input []float32, dst []float64)
}

func loadEstimator(m *manifest.App, e manifest.Estimator) (estimator, error) {
	return sneakpeek.Load(m, e)
}
