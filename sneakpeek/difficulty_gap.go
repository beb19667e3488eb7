package sneakpeek

import (
	"fmt"
	"math"
	"slices"
)

// Gap scales (DifficultyParams.GapScale): how far the per-variant form's
// estimates are trusted to tell two variants apart on one input.
//
// A per-variant model (FormPerVariant) estimates each variant's correctness
// c_m(x) by its own regression, so the gap c_m(x) - c_ref(x) to the most
// accurate variant is the difference of two noisy estimates, and where two
// variants are near equal much of its variation from input to input is
// noise that does not hold out of sample (docs/evaluation-log.md, "2026-12-02,
// fifth session"). The gap scale replaces what the model says a variant gains
// or loses on inputs of each estimated class by the centre g_my (the mean
// realised gap over them, shrunk toward the variant's mean gap as far as the
// rows leave it uncertain), and shrinks the rest by kappa in [0, 1], fitted
// on cross-fitted estimates by regressing the realised gap correct_m -
// correct_ref on the predicted one within each class (FitGapScale):
//
//	c'_m(x) = c_ref(x) + g_my + kappa (c_m(x) - c_ref(x) - g_my)   (clamped to [0, 1])
//
// y the class the estimator finds most likely for x. A variant whose
// per-input gaps are noise (kappa 0) is valued at the reference's estimate
// plus its class's mean gap on every input; one whose gaps hold (kappa 1) is
// left as it is.
const (
	// GapNone leaves the estimates as they are (no gap scale).
	GapNone = "none"
	// GapPerVariant fits one scale per variant.
	GapPerVariant = "variant"
	// GapPerClass fits one scale per variant and class of the estimate,
	// shrunk toward the variant's own scale where the class has few rows.
	GapPerClass = "class"
)

// gapScales checks p's gap scale and returns its reference variant and the
// scales and centres laid out per variant and class (len variants x k); -1,
// nil, nil when p has none.
func gapScales(p *DifficultyParams, k int) (int, []float64, []float64, error) {
	if p.GapRef == "" && len(p.GapScale) == 0 && len(p.GapCenter) == 0 {
		return -1, nil, nil, nil
	}
	ref := slices.Index(p.Variants, p.GapRef)
	nv := len(p.Variants)
	if ref < 0 || len(p.GapScale) != nv || len(p.GapCenter) != nv {
		return -1, nil, nil, fmt.Errorf("%w: difficulty gap scale: reference %q, %d rows of scales and %d of centres for %d variants",
			ErrParams, p.GapRef, len(p.GapScale), len(p.GapCenter), nv)
	}
	scale, center := make([]float64, 0, nv*k), make([]float64, 0, nv*k)
	for m := range nv {
		s, c := p.GapScale[m], p.GapCenter[m]
		if (len(s) != 1 && len(s) != k) || (len(c) != 1 && len(c) != k) {
			return -1, nil, nil, fmt.Errorf("%w: difficulty gap scale of variant %d: %d scales and %d centres, want 1 or %d each",
				ErrParams, m, len(s), len(c), k)
		}
		for y := range k {
			v, g := s[min(y, len(s)-1)], c[min(y, len(c)-1)]
			if !(v >= 0 && v <= 1) || !(g >= -1 && g <= 1) {
				return -1, nil, nil, fmt.Errorf("%w: difficulty gap scale [%d][%d] = %v (want [0, 1]), centre %v (want [-1, 1])",
					ErrParams, m, y, v, g)
			}
			scale, center = append(scale, v), append(center, g)
		}
	}
	return ref, scale, center, nil
}

// scaleGaps applies the gap scale to the estimates dst of a request whose
// class estimate is p (Correctness).
func (m *Difficulty) scaleGaps(p []float64, dst []float64) {
	y := max(Argmax(p[:m.k]), 0)
	cr := dst[m.gref]
	for v := range m.variants {
		i := v*m.k + y
		dst[v] = scaleGap(dst[v], cr, m.gscale[i], m.gcenter[i])
	}
}

// scaleGap is the gap scale's c'_m (the comment on GapNone) for an estimate c
// whose reference variant's is cr, at scale kappa and centre g.
func scaleGap(c, cr, kappa, g float64) float64 {
	return min(max(cr+g+kappa*(c-cr-g), 0), 1)
}

// GapScale is what FitGapScale fitted.
type GapScale struct {
	// Ref is the reference variant: the most accurate on the rows.
	Ref int
	// Scale[m] is variant m's scale: one value (GapPerVariant) or one per
	// class of the estimate (GapPerClass); Center[m] its centres, one per
	// class of the estimate. Scale[Ref] is 1 and Center[Ref] 0.
	Scale, Center [][]float64
}

// SetOn writes the gap scale into p, whose variants are those it was fitted on.
func (g GapScale) SetOn(p *DifficultyParams) {
	p.GapRef, p.GapScale, p.GapCenter = p.Variants[g.Ref], g.Scale, g.Center
}

// FitGapScale fits the gap scale of kind (GapPerVariant or GapPerClass) on
// cross-fitted estimates: scores[m][i] is variant m's estimated correctness on
// row i from a model not trained on it, correct[m][i] whether m answered it
// correctly, pred[i] the class the estimator finds most likely (0 <= pred[i]
// < k). The reference is variant ref, or the most accurate one (the first
// of the most rows answered correctly) when ref < 0. A variant whose accuracy
// differs from the reference's beyond chance (NearEqual false) keeps its
// estimates (scale 1, centre 0): a scheduler serves with it only to save
// engine time, where its own estimate against answering without a model is
// what counts, not its noisy gap to the reference. For each near-equal
// variant m and class y, the centre is the mean realised gap correct_m - correct_ref
// over the rows of y, shrunk toward the variant's mean over all rows
// (shrinkMeans: what m gains or loses on such rows as far as the rows tell);
// the scale is the least-squares
// slope of the realised gap correct_m - correct_ref on x, both taken from
// their means within the class, pooled over the classes, clamped to [0, 1]
// (0 where x never varies within a class). Per class, the slope of the rows
// of the class is shrunk toward the variant's: sum(dx dr) + tau kappa_m over
// sum(dx^2) + tau, tau the variant's sum(dx^2) over k (a class with an
// average share of the evidence weighs half).
func FitGapScale(kind string, scores [][]float64, correct [][]bool, pred []int, k, ref int) GapScale {
	nv := len(correct)
	if ref < 0 {
		ref, _ = mostAccurate(correct)
	}
	g := GapScale{Ref: ref, Scale: make([][]float64, nv), Center: make([][]float64, nv)}
	for v := range nv {
		if v == ref || !NearEqual(correct[v], correct[ref]) {
			g.Scale[v], g.Center[v] = []float64{1}, make([]float64, k)
			continue
		}
		n := make([]float64, k)
		mx, mr := make([]float64, k), make([]float64, k)
		gap := func(i int) (float64, float64) {
			return scores[v][i] - scores[ref][i], b01(correct[v][i]) - b01(correct[ref][i])
		}
		for i, y := range pred {
			x, r := gap(i)
			n[y]++
			mx[y] += x
			mr[y] += r
		}
		for y := range k {
			if n[y] > 0 {
				mx[y] /= n[y]
				mr[y] /= n[y]
			}
		}
		sxy, sxx, srr := make([]float64, k), make([]float64, k), make([]float64, k)
		var txy, txx float64
		for i, y := range pred {
			x, r := gap(i)
			dx, dr := x-mx[y], r-mr[y]
			sxy[y] += dx * dr
			sxx[y] += dx * dx
			srr[y] += dr * dr
			txy += dx * dr
			txx += dx * dx
		}
		g.Center[v] = shrinkMeans(mr, srr, n)
		kv := slope(txy, txx)
		if kind != GapPerClass {
			g.Scale[v] = []float64{kv}
			continue
		}
		tau := txx / float64(k)
		s := make([]float64, k)
		for y := range k {
			s[y] = slope(sxy[y]+tau*kv, sxx[y]+tau)
		}
		g.Scale[v] = s
	}
	return g
}

// shrinkMeans shrinks per-class means m[y] (of n[y] rows, their squared
// deviations summing to ss[y]) toward their row-weighted mean, each by the
// empirical-Bayes factor v_y / (v_y + t2): v_y = ss[y] / n[y]^2 the sampling
// variance of m[y], t2 the spread of the true means (their rows-weighted
// variance less the mean sampling variance, at least 0, by moments). A class
// with few rows or a spread within the noise takes the overall mean.
func shrinkMeans(m, ss, n []float64) []float64 {
	k := len(m)
	var tot, all float64
	for y := range k {
		tot += n[y]
		all += n[y] * m[y]
	}
	out := make([]float64, k)
	if tot == 0 {
		return out
	}
	all /= tot
	var between, noise float64
	for y := range k {
		if n[y] > 0 {
			between += n[y] * (m[y] - all) * (m[y] - all)
			noise += n[y] * ss[y] / (n[y] * n[y])
		}
	}
	t2 := max(between/tot-noise/tot, 0)
	for y := range k {
		out[y] = all
		if n[y] > 0 {
			if v := ss[y] / (n[y] * n[y]); v+t2 > 0 {
				out[y] = all + t2/(v+t2)*(m[y]-all)
			}
		}
	}
	return out
}

func slope(xy, xx float64) float64 {
	if !(xx > 0) {
		return 0
	}
	return min(max(xy/xx, 0), 1)
}

func b01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// NearEqual reports whether two variants' accuracies on the same rows (a[i],
// b[i]: whether each answered row i correctly) do not differ beyond chance:
// McNemar's |z| = |right only by a - right only by b| / sqrt(their sum) below
// 1.96 (two-sided 5%).
func NearEqual(a, b []bool) bool {
	var ab, ba int
	for i, x := range a {
		switch {
		case x && !b[i]:
			ab++
		case !x && b[i]:
			ba++
		}
	}
	return math.Abs(McNemarZ(ab, ba)) < -NoisyZ
}

// Apply returns the estimates scores with the gap scale applied (the c'_m
// of the comment on GapNone), for rows whose estimated classes are pred.
func (g GapScale) Apply(scores [][]float64, pred []int) [][]float64 {
	out := make([][]float64, len(scores))
	for v := range scores {
		out[v] = make([]float64, len(scores[v]))
		for i, c := range scores[v] {
			y := pred[i]
			out[v][i] = scaleGap(c, scores[g.Ref][i], g.Scale[v][min(y, len(g.Scale[v])-1)], g.Center[v][min(y, len(g.Center[v])-1)])
		}
	}
	return out
}

// GapError is the mean squared difference, over rows and variants, between
// the realised gap correct_m - correct_ref and the predicted one scores_m -
// scores_ref (ref the variant given): the held-out measure that chooses the
// gap scale's kind (ChooseGapScale).
func GapError(scores [][]float64, correct [][]bool, ref int) float64 {
	sum, n := 0.0, 0
	for v := range scores {
		if v == ref {
			continue
		}
		for i, c := range scores[v] {
			d := (b01(correct[v][i]) - b01(correct[ref][i])) - (c - scores[ref][i])
			sum += d * d
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// GapChoice is ChooseGapScale's answer: the kind with the smallest held-out
// gap error, and each kind's.
type GapChoice struct {
	Kind  string
	Error map[string]float64
}

// Errors says each kind's held-out gap error, as the training tools report it.
func (c GapChoice) Errors() string {
	return fmt.Sprintf("none %.5f, per variant %.5f, per class %.5f", c.Error[GapNone], c.Error[GapPerVariant], c.Error[GapPerClass])
}

// ChooseGapScale chooses the gap scale's kind (GapNone, GapPerVariant or
// GapPerClass) on cross-fitted estimates (FitGapScale's arguments): the rows
// are cut into two contiguous halves; each kind is fitted on one half and its
// gap error (GapError) measured on the other, both ways; the kind of the
// smallest mean error wins (ties to the simpler kind).
func ChooseGapScale(scores [][]float64, correct [][]bool, pred []int, k int) GapChoice {
	n := len(pred)
	half := func(lo, hi int) ([][]float64, [][]bool, []int) {
		s, c := make([][]float64, len(scores)), make([][]bool, len(correct))
		for v := range scores {
			s[v], c[v] = scores[v][lo:hi], correct[v][lo:hi]
		}
		return s, c, pred[lo:hi]
	}
	ch := GapChoice{Kind: GapNone, Error: map[string]float64{}}
	ref, _ := mostAccurate(correct)
	for _, kind := range []string{GapNone, GapPerVariant, GapPerClass} {
		e := 0.0
		for _, h := range [][4]int{{0, n / 2, n / 2, n}, {n / 2, n, 0, n / 2}} {
			fs, fc, fp := half(h[0], h[1])
			es, ec, ep := half(h[2], h[3])
			if kind != GapNone {
				es = FitGapScale(kind, fs, fc, fp, k, ref).Apply(es, ep)
			}
			e += GapError(es, ec, ref) / 2
		}
		ch.Error[kind] = e
		if e < ch.Error[ch.Kind] {
			ch.Kind = kind
		}
	}
	return ch
}
