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
//
// It also keeps the loop's own time per request: the scheduling loop's work
// (answering the last batch, deciding the next, queueing what arrived) while
// the engine waits for it with requests queued, per request the loop handled
// then (loopTime). Every batch of b waits that long b times over, so the
// tables the policies plan with include it (profile x factor + b x own), as the
// simulator's policies plan with its loop cost (eval's -gateway-known): a plan
// made from the engine's time alone runs late by it, and prices engine time
// too low, where the models take microseconds a request.
type latencyModel struct {
	vs map[*scheduler.Variant]*latencyCorrection
	// own is the loop's own time per request (an exponentially weighted mean
	// over the engine's waits, latencyAlpha per wait).
	own time.Duration
	// frozen measures the factor and the loop's time (for the metrics) but
	// leaves the tables as profiled (scheduler.latency_correction: false).
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
	c := m.correction(v)
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
	m.rewrite(v, c)
	return f, p
}

// correction is v's correction, made (from v's table as it is, the profile) the
// first time v is seen.
func (m *latencyModel) correction(v *scheduler.Variant) *latencyCorrection {
	c := m.vs[v]
	if c == nil {
		c = &latencyCorrection{profile: slices.Clone(v.Latency)}
		m.vs[v] = c
	}
	return c
}

// rewrite sets v's table to its profile x its factor + b x the loop's own time
// (unless frozen).
func (m *latencyModel) rewrite(v *scheduler.Variant, c *latencyCorrection) {
	if m.frozen || len(c.profile) < 2 {
		return
	}
	f := math.Exp(c.logF)
	for i := 1; i < len(c.profile); i++ {
		v.Latency[i] = time.Duration(float64(c.profile[i])*f) + time.Duration(i)*m.own
	}
}

// maxOwn bounds the loop's own time per request the tables take in: a stall of
// the whole process (a swap to disk, a paused VM) is not the loop's cost.
const maxOwn = 10 * time.Millisecond

// loopTime accounts work, the loop's time while the engine waited for it with
// requests queued, over the n requests it handled meanwhile (the batch it
// then started and the requests it answered without one), updates the loop's
// own time per request, rewrites the tables of apps' variants and returns the
// new per-request time.
func (m *latencyModel) loopTime(apps map[string]*scheduler.App, work time.Duration, n int) time.Duration {
	if n < 1 || work < 0 {
		return m.own
	}
	x := min(work/time.Duration(n), maxOwn)
	m.own += time.Duration(latencyAlpha * float64(x-m.own))
	for _, a := range apps {
		for _, v := range a.Variants {
			m.rewrite(v, m.correction(v))
		}
	}
	return m.own
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
