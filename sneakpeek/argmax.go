package sneakpeek

import "math"

// Argmax returns the index of the largest value of p (the first on ties), -1 if
// p is empty or all NaN: the predicted class of a class distribution.
func Argmax(p []float64) int {
	best, bi := math.Inf(-1), -1
	for i, x := range p {
		if x > best {
			best, bi = x, i
		}
	}
	return bi
}
