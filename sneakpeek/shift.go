package sneakpeek

import (
	"math"
	"sync"
	"sync/atomic"
)

// Defaults of ShiftOptions.
const (
	// DefaultShiftWindow is the effective memory of the online prior estimate,
	// in requests: each request moves it by 1/DefaultShiftWindow.
	DefaultShiftWindow = 300
	// DefaultShiftFloor is the smallest probability a class keeps in the live
	// prior estimate, so that a class absent for a while can come back (its
	// estimates are never multiplied by 0) and EM cannot collapse onto one class.
	DefaultShiftFloor = 1e-3
)

// ShiftOptions configure a PriorShift. The zero value of a field means its default.
type ShiftOptions struct {
	// Window is the effective number of recent requests the live prior is
	// estimated from: the update step is a = 1/Window (DefaultShiftWindow).
	Window int
	// Floor is the minimum of each class's live prior estimate (DefaultShiftFloor);
	// the estimate is renormalised after flooring.
	Floor float64
	// Answers, if not nil, values the corrected estimate's answers in the
	// live mix (Mix.Answer); nil leaves Mix.Answer NaN.
	Answers *AnswerValue
}

// PriorShift corrects SneakPeek estimates for label shift: the estimators are
// calibrated on the validation split's class mix pi_train (the manifest's prior),
// so when the live mix pi_live differs their posteriors are biased toward
// pi_train. Under label shift (p(x|y) unchanged) Bayes' rule gives the live
// posterior
//
//	p_live(y|x) ∝ p(y|x) * pi_live(y) / pi_train(y)
//
// pi_live is unknown; it is estimated from the estimates themselves by the EM of
// Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs of a classifier to
// new a priori probabilities", in online form: keep pi_hat (initially pi_train)
// and for each request
//
//	q      = normalise(p * pi_hat / pi_train)      (E-step: the corrected estimate)
//	pi_hat = (1 - a) pi_hat + a q                 (M-step: running mean, a = 1/Window)
//
// then floor pi_hat at Floor and renormalise. The fixed point is the EM fixed
// point pi = E[q]. On an unshifted stream pi_hat stays near pi_train (within its
// noise, of order sqrt(a)) and the estimates are nearly unchanged.
//
// Keep one per application and call Correct once per request, in arrival order,
// before the estimate is used; a caller that may see a request more than once
// (a redelivered copy) corrects every copy with CorrectOnly and counts the
// request once, with Observe. It is safe for concurrent use (a mutex around
// O(K) work), does not allocate except for a Mix every MixRefresh corrections
// (whose answer value, with ShiftOptions.Answers, is a pass over the labelled
// rows on the goroutine of that correction), and is deterministic for a given
// call order.
type PriorShift struct {
	k      int
	a      float64
	floor  float64
	mu     sync.Mutex
	train  []float64 // pi_train, floored and normalised
	prior  []float64 // pi_hat
	ratio  []float64 // pi_hat / pi_train
	n      int64
	frozen bool
	// answers values Mixes; mix is the latest published (never nil).
	answers *AnswerValue
	mix     atomic.Pointer[Mix]
	mixes   int64 // snapshots taken (newMix)
}

// NewPriorShift returns a PriorShift for estimates over len(trainPrior) classes,
// trainPrior being the class mix the estimator was calibrated on (it need not be
// normalised; zero, negative or non-finite entries are raised to the floor).
func NewPriorShift(trainPrior []float64, o ShiftOptions) *PriorShift {
	if o.Window <= 0 {
		o.Window = DefaultShiftWindow
	}
	if !(o.Floor > 0) || o.Floor >= 1 {
		o.Floor = DefaultShiftFloor
	}
	k := len(trainPrior)
	if k > 0 && o.Floor*float64(k) >= 1 {
		o.Floor = 0.5 / float64(k)
	}
	s := &PriorShift{
		k:     k,
		a:     1 / float64(o.Window),
		floor: o.Floor,
		train: make([]float64, k),
		prior: make([]float64, k),
		ratio: make([]float64, k),
	}
	copy(s.train, trainPrior)
	for i, v := range s.train {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			s.train[i] = 0
		}
	}
	shiftNormalise(s.train)
	shiftFloorNormalise(s.train, s.floor)
	copy(s.prior, s.train)
	for i := range s.ratio {
		s.ratio[i] = 1
	}
	s.answers = o.Answers
	s.publish(s.newMix())
	return s
}

// newMix snapshots the live prior and ratio (s.mu held, or s not yet shared)
// into a Mix whose Answer is still to be computed.
func (s *PriorShift) newMix() *mixAt {
	s.mixes++
	return &mixAt{n: s.mixes, prior: append([]float64(nil), s.prior...), ratio: append([]float64(nil), s.ratio...)}
}

// mixAt is a Mix in the making: the n-th snapshot.
type mixAt struct {
	n            int64
	prior, ratio []float64
}

// publish computes m's Answer and makes it the latest Mix unless a later
// snapshot was published meanwhile (concurrent Corrects).
func (s *PriorShift) publish(m *mixAt) {
	mx := &Mix{Prior: m.prior, Answer: math.NaN(), n: m.n}
	if s.answers != nil {
		mx.Answer = s.answers.Value(m.prior, m.ratio)
	}
	for {
		old := s.mix.Load()
		if old != nil && old.n > mx.n {
			return
		}
		if s.mix.CompareAndSwap(old, mx) {
			return
		}
	}
}

// Mix returns the latest published Mix: the live prior as of the last
// multiple of MixRefresh corrections (or the last Reset), and, with
// ShiftOptions.Answers, the corrected estimate's value in it.
func (s *PriorShift) Mix() *Mix { return s.mix.Load() }

// Correct writes the label-shift corrected estimate of p into dst (len(dst) >=
// len(p); dst may be p itself) and updates the live prior estimate with it. If p
// does not have the expected number of classes or carries no mass (all zero or
// not finite), p is copied to dst unchanged and the prior is not updated.
func (s *PriorShift) Correct(p, dst []float64) { s.correct(p, dst, true) }

// CorrectOnly writes the corrected estimate of p into dst, as Correct does,
// without updating the live prior, and reports whether Correct would have
// updated it (false: p copied unchanged): Observe(dst) does that, once per
// request.
func (s *PriorShift) CorrectOnly(p, dst []float64) bool { return s.correct(p, dst, false) }

// Observe updates the live prior estimate with q, a request's estimate as
// CorrectOnly corrected it: the update Correct makes. A q without the expected
// number of classes, with an entry negative or not finite, or without mass is
// ignored.
func (s *PriorShift) Observe(q []float64) {
	if len(q) != s.k {
		return
	}
	sum := 0.0
	for _, v := range q {
		if !(v >= 0) || math.IsInf(v, 0) {
			return
		}
		sum += v
	}
	if !(sum > 0) || math.IsInf(sum, 0) {
		return
	}
	s.mu.Lock()
	m := s.observe(q)
	s.mu.Unlock()
	if m != nil {
		s.publish(m)
	}
}

// ObserveAnswer updates the live prior estimate, in place of Observe, with a
// request that a model answered: like[y] is the probability that the model
// gives the answer it gave when the true class is y (the column of that answer
// in the model's confusion matrix on the validation split, rows normalised).
// The request counts with the posterior of its class given the model's answer
// alone,
//
//	q(y) ∝ pi_hat(y) * like(y)
//
// the EM step of Saerens et al. with the model as the classifier: under label
// shift a model's confusion does not change with the mix, so this needs no
// calibration of the estimator on the live inputs. The estimate is left out
// of q: where the live inputs are not the validation split's (vad's test
// speakers), the estimator's posteriors lean to a class, and an EM fed them
// settles on a mix that leans the same way whatever else it is told
// (docs/evaluation-log.md, "The label-shift correction learns from the
// models' answers"). A like without the expected number of classes, with an
// entry negative or not finite, or without mass under pi_hat is ignored.
func (s *PriorShift) ObserveAnswer(like []float64) {
	if len(like) != s.k {
		return
	}
	for _, l := range like {
		if !(l >= 0) || math.IsInf(l, 0) {
			return
		}
	}
	q := make([]float64, s.k)
	s.mu.Lock()
	sum := 0.0
	for i, l := range like {
		q[i] = s.prior[i] * l
		sum += q[i]
	}
	if !(sum > 0) || math.IsInf(sum, 0) {
		s.mu.Unlock()
		return
	}
	for i := range q {
		q[i] /= sum
	}
	m := s.observe(q)
	s.mu.Unlock()
	if m != nil {
		s.publish(m)
	}
}

// correct is Correct, and with observe false CorrectOnly.
func (s *PriorShift) correct(p, dst []float64, observe bool) bool {
	if len(p) != s.k {
		copy(dst, p)
		return false
	}
	dst = dst[:s.k]
	s.mu.Lock()
	sum := 0.0
	for i, v := range p {
		sum += reweighted(v, s.ratio[i])
	}
	if !(sum > 0) || math.IsInf(sum, 0) {
		// Checked before dst is written: dst may be p itself.
		s.mu.Unlock()
		copy(dst, p)
		return false
	}
	inv := 1 / sum
	for i, v := range p {
		dst[i] = reweighted(v, s.ratio[i]) * inv
	}
	var m *mixAt
	if observe {
		m = s.observe(dst)
	}
	s.mu.Unlock()
	if m != nil {
		s.publish(m)
	}
	return true
}

// observe updates the live prior with the corrected estimate q (s.mu held) and
// returns the Mix to publish, if it is time for one (nil otherwise).
func (s *PriorShift) observe(q []float64) *mixAt {
	if !s.frozen {
		b := 1 - s.a
		for i, x := range q {
			s.prior[i] = b*s.prior[i] + s.a*x
		}
		shiftFloorNormalise(s.prior, s.floor)
		for i := range s.ratio {
			s.ratio[i] = s.prior[i] / s.train[i]
		}
	}
	s.n++
	if s.n%MixRefresh == 0 && !s.frozen {
		return s.newMix()
	}
	return nil
}

// Prior returns a copy of the current live prior estimate pi_hat.
func (s *PriorShift) Prior() []float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]float64(nil), s.prior...)
}

// TrainPrior returns a copy of the (floored, normalised) training prior.
func (s *PriorShift) TrainPrior() []float64 {
	return append([]float64(nil), s.train...)
}

// Observed returns how many estimates Correct and Observe have counted
// (frozen or not).
func (s *PriorShift) Observed() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// SetFrozen stops (true) or resumes (false) the updates of the live prior;
// while frozen, Correct still corrects with the current estimate. Freezing
// publishes a Mix of the prior it freezes, so that Mix is the prior Correct
// uses while frozen.
func (s *PriorShift) SetFrozen(frozen bool) {
	s.mu.Lock()
	var m *mixAt
	if frozen && !s.frozen {
		m = s.newMix()
	}
	s.frozen = frozen
	s.mu.Unlock()
	if m != nil {
		s.publish(m)
	}
}

// Reset sets the live prior estimate back to the training prior.
func (s *PriorShift) Reset() {
	s.mu.Lock()
	copy(s.prior, s.train)
	for i := range s.ratio {
		s.ratio[i] = 1
	}
	s.n = 0
	m := s.newMix()
	s.mu.Unlock()
	s.publish(m)
}

// shiftNormalise scales v to sum 1; a vector without mass becomes uniform.
func shiftNormalise(v []float64) {
	sum := 0.0
	for _, x := range v {
		sum += x
	}
	if !(sum > 0) || math.IsInf(sum, 0) {
		for i := range v {
			v[i] = 1 / float64(len(v))
		}
		return
	}
	for i := range v {
		v[i] /= sum
	}
}

// shiftFloorNormalise raises every entry of the distribution v to at least floor and
// keeps the sum 1, taking the added mass proportionally from the entries above
// the floor (floor*len(v) < 1 is assumed). One pass of raising and scaling can
// push an entry back under the floor, so it iterates (at most len(v) times).
func shiftFloorNormalise(v []float64, floor float64) {
	for iter := 0; iter <= len(v); iter++ {
		low, highSum := 0, 0.0
		for _, x := range v {
			if x <= floor {
				low++
			} else {
				highSum += x
			}
		}
		if low == 0 {
			// only renormalise (drift of rounding)
			sum := highSum
			if sum != 1 && sum > 0 {
				for i := range v {
					v[i] /= sum
				}
			}
			return
		}
		rest := 1 - float64(low)*floor
		if !(highSum > 0) {
			for i := range v {
				v[i] = 1 / float64(len(v))
			}
			return
		}
		scale := rest / highSum
		ok := true
		for i, x := range v {
			if x <= floor {
				v[i] = floor
			} else {
				v[i] = x * scale
				if v[i] < floor {
					ok = false
				}
			}
		}
		if ok {
			return
		}
	}
}

// reweighted is p's mass v of a class under the prior ratio r, 0 for a
// negative or NaN product.
func reweighted(v, r float64) float64 {
	q := v * r
	if !(q >= 0) { // negative or NaN
		return 0
	}
	return q
}
