package sneakpeek

import (
	"math"
	"sync"
	"sync/atomic"

	"github.com/sneakgate/sneakgate/manifest"
)

// Defaults of GuardOptions.
const (
	// DefaultGuardWindow is the number of most recent observations the guard judges.
	DefaultGuardWindow = 500
	// DefaultGuardDistrust is the calibration gap (beyond the baseline) above which
	// a trusted estimator becomes distrusted. With 500 observations the gap's
	// standard error is at most 0.022 (0.02 at 70% agreement): 0.07 is 3.2 to
	// 3.5 standard errors, so a calibrated stream, judged after every observation
	// of a sliding window, almost never crosses it.
	DefaultGuardDistrust = 0.07
	// DefaultGuardRetrust is the gap below which a distrusted estimator is trusted
	// again (hysteresis: it must be well inside the threshold).
	DefaultGuardRetrust = 0.035
)

// GuardOptions configure a Guard. The zero value of a field means its default.
type GuardOptions struct {
	// Window is how many of the most recent observations are judged
	// (DefaultGuardWindow).
	Window int
	// MinObservations is how many observations the window must hold before any
	// verdict; until then the estimator is trusted (default: Window, a full window).
	MinObservations int
	// Reference is the reference variant's confusion matrix on the validation
	// split (counts or probabilities, rows = true class, K x K): how the reference
	// answers a request of class y. A row with no samples is taken as uniform.
	// nil means the reference is the true label.
	Reference [][]float64
	// Baseline is the signed gap (predicted minus observed agreement, see Guard)
	// the estimator showed against the same reference on data of the training
	// distribution (GuardBaseline computes it); the verdicts judge the live gap
	// minus Baseline. Default 0.
	Baseline float64
	// ClassBaseline, if not nil (length K), replaces Baseline by one baseline per
	// class of the estimate's argmax (GuardClassBaseline computes it): an
	// observation of argmax c contributes q - 1[ref == c] - ClassBaseline[c]. Use
	// it when the observed requests are picked by class, as the scheduler picks
	// the requests the reference serves: an estimator calibrated on the whole
	// mix is often over- and underconfident on different predicted classes, and
	// a scalar baseline would then read the scheduler's selection as drift.
	ClassBaseline []float64
	// Distrust and Retrust are the thresholds on |gap - Baseline|
	// (DefaultGuardDistrust, DefaultGuardRetrust); Retrust must not exceed Distrust.
	Distrust, Retrust float64
	// Every is how many observations pass between verdicts once MinObservations
	// are held (default Window/5). Judging the sliding window after every single
	// observation would test the same noise hundreds of times and multiply false
	// alarms; every Window/5 it is 5 tests per window.
	Every int
}

// Guard decides whether an application's SneakPeek estimates can be trusted on
// the live mix. Keep one per application; it is safe for concurrent use and does
// not allocate in Observe.
//
// # Observations
//
// Observe(p, ref) records the estimate p of one request and a reference class
// for the same request: the answer of the application's most accurate variant
// (ReferenceVariant) whenever that variant served the request, or the true label.
//
// # Criterion
//
// The scheduler values a variant m on a request as sum_y p(y) P_m(yhat|y) W[y][yhat]:
// it believes p and the variants' validation confusion matrices. Applied to the
// reference variant R, that belief predicts how often R's answer will equal the
// estimate's own argmax c:
//
//	q = sum_y p(y) R[y][c]     (R row-normalised; q = p(c) when the reference is the truth)
//
// so the reference's imperfection is accounted for by its known confusion matrix,
// not ignored. Over the window the guard compares the mean predicted agreement
// with the observed agreement (the fraction of observations with ref == c):
//
//	gap = mean(q) - mean(1[ref == c])
//
// A positive gap is overconfidence (the estimates promise more than they deliver,
// which is what label shift does to an estimator calibrated for the training
// prior), a negative one underconfidence. Even on the training distribution the
// gap is not exactly 0 (residual miscalibration, and the errors of the estimator
// and the reference are correlated: hard inputs are hard for both), so the guard
// judges gap - Baseline, Baseline being the same quantity measured offline
// (GuardBaseline on the validation split or any held-out data of the training
// distribution, with the same reference).
//
// Verdicts: trusted until MinObservations observations are held; then, when that
// many are first held and every Every observations after, a trusted estimator
// becomes distrusted when |gap - Baseline| > Distrust, and a distrusted one is
// trusted again when |gap - Baseline| < Retrust. The window slides, so after a
// shift starts or ends the verdict follows within about a window.
//
// Which requests are observed matters little: the reference serves requests the
// scheduler picked by looking at p (and at time), and calibration given p holds on
// any subset selected through p. Requests picked through something p does not see
// (e.g. only the inputs of one device) would bias it.
//
// # Consumer
//
// When Trusted is false the consumer values requests obliviously: it prepares
// them without the estimate (scheduler.Prepare with p == nil), which removes the
// degraded answer for them too (a request no variant can serve in time expires
// instead of getting an estimate whose value is unknown). It keeps computing p
// and observing, so that trust can come back.
type Guard struct {
	o   GuardOptions
	ref [][]float64 // row-normalised Reference, nil for the truth

	trusted atomic.Bool

	mu    sync.Mutex
	ring  []obs
	head  int // next slot to write
	n     int // observations held (<= len(ring))
	total int64
	flips int64
	// sinceVerdict counts observations since the last verdict.
	sinceVerdict int
	judged       bool
	// Running sums over the window.
	sumQ, sumAgree, sumConf, sumBase float64
	bad                              int64 // observations ignored (bad p or ref)
}

type obs struct {
	q, conf, base float32
	agree         bool
}

// NewGuard returns a trusting guard with the options o (defaults filled in).
func NewGuard(o GuardOptions) *Guard {
	if o.Window <= 0 {
		o.Window = DefaultGuardWindow
	}
	if o.MinObservations <= 0 || o.MinObservations > o.Window {
		o.MinObservations = o.Window
	}
	if o.Distrust <= 0 {
		o.Distrust = DefaultGuardDistrust
	}
	if o.Retrust <= 0 {
		o.Retrust = DefaultGuardRetrust
	}
	if o.Retrust > o.Distrust {
		o.Retrust = o.Distrust
	}
	if o.Every <= 0 {
		o.Every = max(1, o.Window/5)
	}
	g := &Guard{o: o, ring: make([]obs, o.Window)}
	if o.Reference != nil {
		g.ref = RowNormalise(o.Reference, true)
	}
	g.o.Reference = nil // keep only the normalised copy
	g.trusted.Store(true)
	return g
}

// NewGuardFor returns a guard for app whose reference is its most accurate
// variant (ReferenceVariant), and that variant's index: the gateway observes the
// requests that variant serves. o.Reference is overwritten.
func NewGuardFor(app *manifest.App, o GuardOptions) (*Guard, int) {
	m := ReferenceVariant(app)
	if m >= 0 {
		o.Reference = app.Variants[m].Confusion
	}
	return NewGuard(o), m
}

// ReferenceVariant is the index of app's most accurate variant by validation
// accuracy (the first on ties, like scheduler.App.DefaultVariant), -1 if none.
func ReferenceVariant(app *manifest.App) int {
	best, bi := math.Inf(-1), -1
	for i, v := range app.Variants {
		if v.Accuracy > best {
			best, bi = v.Accuracy, i
		}
	}
	return bi
}

// Options returns the guard's options with defaults filled in (Reference is the
// row-normalised copy, nil for the truth).
func (g *Guard) Options() GuardOptions {
	o := g.o
	o.Reference = g.ref
	return o
}

// Trusted reports whether the estimates may be believed now. It is lock-free.
func (g *Guard) Trusted() bool { return g.trusted.Load() }

// predicted returns (q, confidence, argmax) of p against the reference; NaN
// for q and the confidence when p is all NaN (Argmax has no class).
func predicted(p []float64, ref [][]float64) (q, conf float64, c int) {
	c = Argmax(p)
	if c < 0 {
		return math.NaN(), math.NaN(), 0
	}
	conf = p[c]
	if ref == nil {
		return conf, conf, c
	}
	for y, py := range p {
		q += py * ref[y][c]
	}
	return q, conf, c
}

// Observe records one request's estimate p and reference class ref. An empty p, a
// p whose length does not match the reference's classes, or a ref out of range is
// ignored (counted in Stats.Ignored). p is not kept.
func (g *Guard) Observe(p []float64, ref int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := len(p)
	if k == 0 || ref < 0 || ref >= k || (g.ref != nil && len(g.ref) != k) ||
		(g.o.ClassBaseline != nil && len(g.o.ClassBaseline) != k) {
		g.bad++
		return
	}
	q, conf, c := predicted(p, g.ref)
	if math.IsNaN(q) || math.IsNaN(conf) {
		g.bad++
		return
	}
	base := g.o.Baseline
	if g.o.ClassBaseline != nil {
		base = g.o.ClassBaseline[c]
	}
	nw := obs{q: float32(q), conf: float32(conf), base: float32(base), agree: c == ref}
	if g.n == len(g.ring) {
		old := g.ring[g.head]
		g.sumQ -= float64(old.q)
		g.sumConf -= float64(old.conf)
		g.sumBase -= float64(old.base)
		if old.agree {
			g.sumAgree--
		}
	} else {
		g.n++
	}
	g.ring[g.head] = nw
	g.head = (g.head + 1) % len(g.ring)
	g.sumQ += float64(nw.q)
	g.sumConf += float64(nw.conf)
	g.sumBase += float64(nw.base)
	if nw.agree {
		g.sumAgree++
	}
	g.total++
	// Running float sums drift; recompute them exactly once per window.
	if g.total%int64(len(g.ring)) == 0 {
		g.resum()
	}
	if g.n < g.o.MinObservations {
		return
	}
	if g.sinceVerdict++; g.judged && g.sinceVerdict < g.o.Every {
		return
	}
	g.sinceVerdict, g.judged = 0, true
	d := math.Abs(g.excessLocked())
	switch t := g.trusted.Load(); {
	case t && d > g.o.Distrust:
		g.trusted.Store(false)
		g.flips++
	case !t && d < g.o.Retrust:
		g.trusted.Store(true)
		g.flips++
	}
}

func (g *Guard) resum() {
	g.sumQ, g.sumConf, g.sumAgree, g.sumBase = 0, 0, 0, 0
	for _, o := range g.ring[:g.n] {
		g.sumQ += float64(o.q)
		g.sumConf += float64(o.conf)
		g.sumBase += float64(o.base)
		if o.agree {
			g.sumAgree++
		}
	}
}

// excessLocked is the window's mean of q - 1[ref == c] - baseline.
func (g *Guard) excessLocked() float64 {
	if g.n == 0 {
		return 0
	}
	return (g.sumQ - g.sumAgree - g.sumBase) / float64(g.n)
}

// GuardStats describe the guard's window.
type GuardStats struct {
	// Observations held in the window; Total ever observed; Ignored malformed ones.
	Observations int   `json:"observations"`
	Total        int64 `json:"total"`
	Ignored      int64 `json:"ignored"`
	// Trusted is the current verdict; Flips counts verdict changes so far.
	Trusted bool  `json:"trusted"`
	Flips   int64 `json:"flips"`
	// Agreement is the fraction of observations whose estimate argmax equals the
	// reference; Predicted the mean predicted agreement q; Gap = Predicted -
	// Agreement, and Excess = Gap minus the (mean, per-class) baseline: what
	// the thresholds judge.
	Agreement float64 `json:"agreement"`
	Predicted float64 `json:"predicted"`
	Gap       float64 `json:"gap"`
	Excess    float64 `json:"excess"`
	// Confidence is the mean max p.
	Confidence float64 `json:"confidence"`
	// ECE is the expected calibration error of q against the reference, 10 equal
	// bins of q (sum over bins of |mean q - agreement| weighted by the bin's
	// share). On a few hundred observations it is biased upwards by noise
	// (about 0.03 at 500); the verdict uses Gap, not ECE.
	ECE float64 `json:"ece"`
}

// Stats returns the window's statistics. It costs O(Window).
func (g *Guard) Stats() GuardStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := GuardStats{Observations: g.n, Total: g.total, Ignored: g.bad, Trusted: g.trusted.Load(), Flips: g.flips}
	if g.n == 0 {
		return s
	}
	n := float64(g.n)
	s.Agreement = g.sumAgree / n
	s.Predicted = g.sumQ / n
	s.Confidence = g.sumConf / n
	s.Gap = s.Predicted - s.Agreement
	s.Excess = g.excessLocked()
	const bins = 10
	var cnt [bins]int
	var sq, sa [bins]float64
	for _, o := range g.ring[:g.n] {
		b := min(bins-1, max(0, int(float64(o.q)*bins)))
		cnt[b]++
		sq[b] += float64(o.q)
		if o.agree {
			sa[b]++
		}
	}
	for b := range bins {
		if cnt[b] > 0 {
			s.ECE += math.Abs(sq[b]-sa[b]) / n
		}
	}
	return s
}

// GuardBaseline returns the signed gap (mean predicted agreement minus observed
// agreement, as Guard computes it) of the estimates ps against the reference
// answers refs on a held-out set, for GuardOptions.Baseline. reference is as
// GuardOptions.Reference (nil = refs are true labels). Malformed pairs are
// skipped; it returns 0 for an empty set.
func GuardBaseline(ps [][]float64, refs []int, reference [][]float64) float64 {
	var ref [][]float64
	if reference != nil {
		ref = RowNormalise(reference, true)
	}
	sum, n := 0.0, 0
	for i, p := range ps {
		if i >= len(refs) || len(p) == 0 || refs[i] < 0 || refs[i] >= len(p) || (ref != nil && len(ref) != len(p)) {
			continue
		}
		q, _, c := predicted(p, ref)
		sum += q
		if c == refs[i] {
			sum--
		}
		n++
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// GuardClassBaseline returns GuardOptions.ClassBaseline for k classes: for each
// class c, the gap of the held-out pairs whose estimate's argmax is c. A class
// predicted fewer than minPerClass times (default 30 when <= 0) gets the gap
// over all pairs.
func GuardClassBaseline(ps [][]float64, refs []int, reference [][]float64, k, minPerClass int) []float64 {
	if minPerClass <= 0 {
		minPerClass = 30
	}
	var ref [][]float64
	if reference != nil {
		ref = RowNormalise(reference, true)
	}
	sum := make([]float64, k)
	cnt := make([]int, k)
	all, n := 0.0, 0
	for i, p := range ps {
		if i >= len(refs) || len(p) != k || refs[i] < 0 || refs[i] >= k || (ref != nil && len(ref) != k) {
			continue
		}
		q, _, c := predicted(p, ref)
		if c == refs[i] {
			q--
		}
		sum[c] += q
		cnt[c]++
		all += q
		n++
	}
	out := make([]float64, k)
	for c := range out {
		switch {
		case cnt[c] >= minPerClass:
			out[c] = sum[c] / float64(cnt[c])
		case n > 0:
			out[c] = all / float64(n)
		}
	}
	return out
}
