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
// It also keeps the loop's own time: the scheduling loop's work while the
// engine waits for it with requests queued (loopTime), split into the
// decisions made then, a cost per batch, and the rest (answering the batch
// that ended, queueing what arrived), a cost per request the loop handled.
// Every batch of b waits for both, so the tables the policies plan with include
// them (profile x factor + per batch + b x per request), as the simulator's
// policies plan with its loop cost (eval's -gateway-known): a plan made from the
// engine's time alone runs late by the loop's, and prices engine time too low,
// where the models take microseconds a request. A batch's planned time so runs
// from its decision's start (the decision delays it) to its answers' hand-over
// (the loop answers its requests after the pass, and a reply is judged when it
// is handed over): the per-request part counts the answering of the batch
// itself, not of the batch before it, which is done when it is decided. The decisions are a cost per
// batch, not per request: counted per request, a decision's cost grows as the
// batches it makes shrink, which makes the plans prefer smaller batches still
// (the simulator's batches fell from about 30 to 3-4 that way overloaded).
type latencyModel struct {
	vs map[*scheduler.Variant]*latencyCorrection
	// own is the loop's own time per request and ownBatch its decisions' time
	// per batch (exponentially weighted means over the engine's waits,
	// latencyAlpha per wait).
	own, ownBatch time.Duration
	// engine is engineCheapest's scratch: a table without the loop's time.
	engine scheduler.Variant
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

// rewrite sets v's table to its profile x its factor + the loop's time per
// batch + b x its time per request (unless frozen).
func (m *latencyModel) rewrite(v *scheduler.Variant, c *latencyCorrection) {
	if m.frozen || len(c.profile) < 2 {
		return
	}
	f := math.Exp(c.logF)
	for i := 1; i < len(c.profile); i++ {
		v.Latency[i] = time.Duration(float64(c.profile[i])*f) + m.ownBatch + time.Duration(i)*m.own
	}
}

// maxOwn and maxOwnBatch bound the loop's own time per request and per batch
// the tables take in: a stall of the whole process (a swap to disk, a paused
// VM) is not the loop's cost.
const (
	maxOwn      = 2 * time.Millisecond
	maxOwnBatch = 20 * time.Millisecond
)

// engineCheapest is the per-request engine time of a's cheapest variant at its
// best batch size (scheduler.CheapestAmortised) from the tables without the
// loop's time: the fastest drain (scheduler.DrainMeter) counts the loop's time
// apart, as the busy time outside forward passes.
func (m *latencyModel) engineCheapest(a *scheduler.App) time.Duration {
	best := time.Duration(math.MaxInt64)
	for _, v := range a.Variants {
		if _, rewritten := m.vs[v]; rewritten && !m.frozen {
			e := &m.engine
			e.Latency = append(e.Latency[:0], v.Latency...)
			for b := 1; b < len(e.Latency); b++ {
				e.Latency[b] -= m.ownBatch + time.Duration(b)*m.own
			}
			v = e
		}
		best = min(best, scheduler.Amortised(v, v.MaxBatch()))
	}
	return best
}

// loopTime accounts work, the loop's time while the engine waited for it with
// requests queued, of which decisions in its decisions, over the n requests it
// handled meanwhile (the batch it then started and the requests it answered
// without one), updates the loop's own time per batch (the decisions) and per
// request (the rest), rewrites the tables of apps' variants and returns both.
func (m *latencyModel) loopTime(apps map[string]*scheduler.App, work, decisions time.Duration, n int) (perRequest, perBatch time.Duration) {
	if n < 1 || work < 0 {
		return m.own, m.ownBatch
	}
	decisions = min(max(decisions, 0), work)
	x := min((work-decisions)/time.Duration(n), maxOwn)
	m.own += time.Duration(latencyAlpha * float64(x-m.own))
	m.ownBatch += time.Duration(latencyAlpha * float64(min(decisions, maxOwnBatch)-m.ownBatch))
	for _, a := range apps {
		for _, v := range a.Variants {
			m.rewrite(v, m.correction(v))
		}
	}
	return m.own, m.ownBatch
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
