package engine

import (
	"fmt"
	"math"
)

// outputKind is how a variant's output row becomes class probabilities.
type outputKind uint8

const (
	// logits: softmax over the row (K values).
	kindLogits outputKind = iota + 1
	// probabilities: the row (K values) as it is.
	kindProbabilities
	// score: one value p, the probability of class 1 of 2, returned as [1-p, p].
	kindScore
)

func parseKind(s string) (outputKind, error) {
	switch s {
	case "logits":
		return kindLogits, nil
	case "probabilities":
		return kindProbabilities, nil
	case "score":
		return kindScore, nil
	}
	return 0, fmt.Errorf("output kind %q: want logits, probabilities or score", s)
}

// rowLen is the number of output values per sample for k classes.
func (k outputKind) rowLen(classes int) int {
	if k == kindScore {
		return 1
	}
	return classes
}

// convert writes the class distribution for one output row src into dst
// (len(dst) is the number of classes).
func (k outputKind) convert(src []float32, dst []float64) {
	switch k {
	case kindLogits:
		softmax(src, dst)
	case kindProbabilities:
		for i, x := range src {
			dst[i] = float64(x)
		}
	case kindScore:
		p := float64(src[0])
		dst[0], dst[1] = 1-p, p
	}
}

// softmax writes softmax(src) into dst, computed in float64 after subtracting the
// maximum so that large logits do not overflow.
func softmax(src []float32, dst []float64) {
	m := math.Inf(-1)
	for _, x := range src {
		m = max(m, float64(x))
	}
	var sum float64
	for i, x := range src {
		e := math.Exp(float64(x) - m)
		dst[i] = e
		sum += e
	}
	for i := range dst {
		dst[i] /= sum
	}
}
