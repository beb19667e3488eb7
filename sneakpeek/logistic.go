package sneakpeek

import (
	"encoding/json"
	"fmt"
	"math"
	"os"

	"github.com/sneakgate/sneakgate/manifest"
)

// LogisticParams is the JSON parameter file of a logistic estimator.
type LogisticParams struct {
	Classes int         `json:"classes"`
	Dim     int         `json:"dim"`
	Mean    []float64   `json:"mean"`
	Scale   []float64   `json:"scale"`
	Weights [][]float64 `json:"weights"`
	Bias    []float64   `json:"bias"`
}

// Logistic is a multinomial logistic regression on standardised features.
type Logistic struct {
	name string
	feat Features
	k, d int
	mean []float32
	inv  []float32 // 1/scale
	w    []float32 // k*d, row-major
	b    []float64
	buf  *scratch
}

func newLogistic(app *manifest.App, e manifest.Estimator, f Features) (Estimator, error) {
	raw, err := os.ReadFile(app.Path(e.File))
	if err != nil {
		return nil, err
	}
	var p LogisticParams
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrParams, e.File, err)
	}
	if p.Classes != app.K() {
		return nil, fmt.Errorf("%w: %d classes, the app has %d", ErrParams, p.Classes, app.K())
	}
	return NewLogistic(e.Name, f, &p)
}

// NewLogistic returns a logistic estimator with parameters p over features f. It
// returns an error wrapping ErrParams when the parameter shapes disagree with each
// other or with f, or a scale is not positive.
func NewLogistic(name string, f Features, p *LogisticParams) (*Logistic, error) {
	k, d := p.Classes, p.Dim
	if d != f.Dim() {
		return nil, fmt.Errorf("%w: dim %d, features %q give %d", ErrParams, d, f.Spec(), f.Dim())
	}
	if k < 2 || len(p.Mean) != d || len(p.Scale) != d || len(p.Weights) != k || len(p.Bias) != k {
		return nil, fmt.Errorf("%w: shapes: classes %d dim %d mean %d scale %d weights %d bias %d",
			ErrParams, k, d, len(p.Mean), len(p.Scale), len(p.Weights), len(p.Bias))
	}
	m := &Logistic{name: name, feat: f, k: k, d: d, mean: make([]float32, d), inv: make([]float32, d),
		w: make([]float32, 0, k*d), b: append([]float64(nil), p.Bias...), buf: newScratch(d)}
	for i := range d {
		if !(p.Scale[i] > 0) {
			return nil, fmt.Errorf("%w: scale[%d] = %v", ErrParams, i, p.Scale[i])
		}
		m.mean[i], m.inv[i] = float32(p.Mean[i]), float32(1/p.Scale[i])
	}
	for y, row := range p.Weights {
		if len(row) != d {
			return nil, fmt.Errorf("%w: weights[%d] has %d values, want %d", ErrParams, y, len(row), d)
		}
		for _, v := range row {
			m.w = append(m.w, float32(v))
		}
	}
	return m, nil
}

// Name implements Estimator.
func (m *Logistic) Name() string { return m.name }

// Estimate implements Estimator.
func (m *Logistic) Estimate(input []float32, dst []float64) {
	b := m.buf.get()
	z := *b
	m.feat.Apply(input, z)
	for i := range z {
		z[i] = (z[i] - m.mean[i]) * m.inv[i]
	}
	top := math.Inf(-1)
	for y := 0; y < m.k; y++ {
		w := m.w[y*m.d : (y+1)*m.d]
		w = w[:len(z)]
		var s float32
		for i, v := range z {
			s += w[i] * v
		}
		dst[y] = float64(s) + m.b[y]
		top = max(top, dst[y])
	}
	m.buf.put(b)
	sum := 0.0
	for y := range dst {
		dst[y] = math.Exp(dst[y] - top)
		sum += dst[y]
	}
	for y := range dst {
		dst[y] /= sum
	}
}
