package sneakpeek

import (
	"errors"
	"fmt"
	"sync"

	"github.com/sneakgate/sneakgate/manifest"
)

// Estimator returns a class distribution for one request input.
type Estimator interface {
	// Name is the estimator's name in the manifest.
	Name() string
	// Estimate writes p(y) for the request input (len = the app's input size) into
	// dst (len = the number of classes K): non-negative values summing to 1. It does
	// not allocate in steady state and is safe for concurrent use.
	Estimate(input []float32, dst []float64)
}

// Errors returned by Load and ParseFeatures; each is wrapped with detail.
var (
	// ErrUnknownKind is returned for an estimator kind this package does not know.
	ErrUnknownKind = errors.New("sneakpeek: unknown estimator kind")
	// ErrFeatures is returned for an unknown or malformed feature transform.
	ErrFeatures = errors.New("sneakpeek: bad feature transform")
	// ErrParams is returned when an estimator's file does not fit the manifest
	// (wrong feature dimension, class count, label out of range, malformed JSON).
	ErrParams = errors.New("sneakpeek: bad estimator parameters")
	// ErrNoEstimator is returned by LoadDefault for a manifest without estimators.
	ErrNoEstimator = errors.New("sneakpeek: manifest has no estimators")
)

// Factory builds an estimator of one kind.
type Factory func(app *manifest.App, e manifest.Estimator, f Features) (Estimator, error)

var kinds = map[string]Factory{
	"knn":      newKNN,
	"logistic": newLogistic,
}

// Kinds returns the estimator kinds Load understands.
func Kinds() []string {
	out := make([]string, 0, len(kinds))
	for k := range kinds {
		out = append(out, k)
	}
	return out
}

// Load builds the estimator e of app, reading its file relative to the manifest.
// It returns an error wrapping ErrUnknownKind, ErrFeatures or ErrParams, or the
// file's read error; each names the estimator, the application and the file.
func Load(app *manifest.App, e manifest.Estimator) (Estimator, error) {
	mk, ok := kinds[e.Kind]
	if !ok {
		return nil, fmt.Errorf("%w: %q (estimator %s of %s)", ErrUnknownKind, e.Kind, e.Name, app.Name)
	}
	f, err := ParseFeatures(e.Features, app.InputSize)
	if err == nil {
		var est Estimator
		if est, err = mk(app, e, f); err == nil {
			return est, nil
		}
	}
	return nil, fmt.Errorf("estimator %s of %s (%s): %w", e.Name, app.Name, app.Path(e.File), err)
}

// LoadDefault builds the app's first estimator. It returns ErrNoEstimator when the
// manifest lists none, else as Load.
func LoadDefault(app *manifest.App) (Estimator, error) {
	if len(app.Estimators) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoEstimator, app.Name)
	}
	return Load(app, app.Estimators[0])
}

// scratch is a pool of per-call feature buffers, so that Estimate neither
// allocates nor shares state between goroutines.
type scratch struct{ pool sync.Pool }

func newScratch(n int) *scratch {
	s := &scratch{}
	s.pool.New = func() any { b := make([]float32, n); return &b }
	return s
}

func (s *scratch) get() *[]float32  { return s.pool.Get().(*[]float32) }
func (s *scratch) put(b *[]float32) { s.pool.Put(b) }
