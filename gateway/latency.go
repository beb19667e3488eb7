package gateway

import (
	"math"
	"slices"
	"time"

	"github.com/sneakgate/sneakgate/scheduler"
)

// latencyModel keeps the scheduler's latency tables true to what forward passes
// take now. Profiles are measured at start-up on an otherwise idle machine; under
// load, ingress, the broker and the engine share the CPU and the same batch takes
// longer (on 2 cores, several times the profile), so plans made from the profile
// run late. After every batch, the ratio of the observed duration to the profiled
// one for that batch size updates a per-variant correction factor (an
// exponentially weighted mean of log ratios, so one slow outlier moves it little),
// and the variant's whole table becomes profile x factor. The loop goroutine owns
// it, like the tables it corrects.
type latencyModel struct {
	vs map[*scheduler.Variant]*latencyCorrection
	// frozen measures the factor (for the metric) but leaves the tables as
	// profiled (scheduler.latency_correction: false).
	frozen bool
}

type latencyCorrection struct {
	profile []time.Duration // the table as profiled
	logF    float64         // log of the correction factor
}

const (
	// latencyAlpha is the weight of one observation: about the last 20 batches count.
	latencyAlpha = 0.1
	// The factor stays within [1/latencyClamp, latencyClamp].
	latencyClamp = 20.0
)

func newLatencyModel() *latencyModel {
	return &latencyModel{vs: map[*scheduler.Variant]*latencyCorrection{}}
}

// observe accounts one forward pass of v over b requests that took took, rewrites
// v.Latency and returns the new correction factor and the start-up profile's
// duration of that pass (0 when the profile has none for it).
func (m *latencyModel) observe(v *scheduler.Variant, b int, took time.Duration) (float64, time.Duration) {
	c := m.vs[v]
	if c == nil {
		c = &latencyCorrection{profile: slices.Clone(v.Latency)}
		m.vs[v] = c
	}
	if len(c.profile) < 2 || b < 1 {
		return math.Exp(c.logF), 0
	}
	p := profileAt(c.profile, b)
	if p <= 0 || took <= 0 {
		return math.Exp(c.logF), p
	}
	r := math.Log(float64(took) / float64(p))
	c.logF += latencyAlpha * (r - c.logF)
	lim := math.Log(latencyClamp)
	c.logF = max(-lim, min(lim, c.logF))
	f := math.Exp(c.logF)
	if m.frozen {
		return f, p
	}
	for i := 1; i < len(c.profile); i++ {
		v.Latency[i] = time.Duration(float64(c.profile[i]) * f)
	}
	return f, p
}

// forget drops the corrections of an application's variants (a retired version).
func (m *latencyModel) forget(a *scheduler.App) {
	for _, v := range a.Variants {
		delete(m.vs, v)
	}
}

// profileAt is the profiled duration of a batch of b (beyond the table: whole
// batches of the largest size plus the remainder, as scheduler.Variant.LatencyAt).
func profileAt(t []time.Duration, b int) time.Duration {
	v := scheduler.Variant{Latency: t}
	return v.LatencyAt(b)
}
