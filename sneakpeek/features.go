package sneakpeek

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Features is a named feature transform (see the package doc).
type Features interface {
	// Spec returns the transform's name as written in the manifest.
	Spec() string
	// InputSize is the request input length the transform accepts.
	InputSize() int
	// Dim is the number of features produced.
	Dim() int
	// Apply writes Dim features of x (len InputSize) into dst.
	Apply(x []float32, dst []float32)
}

// ParseFeatures returns the transform named spec for inputs of inputSize values.
// It returns an error wrapping ErrFeatures for an unknown name, bad parameters or
// an input size the transform cannot take.
func ParseFeatures(spec string, inputSize int) (Features, error) {
	parts := strings.Split(spec, ":")
	ints := func(n int) ([]int, error) {
		if len(parts) != n+1 {
			return nil, fmt.Errorf("%w: %q: want %d parameters", ErrFeatures, spec, n)
		}
		out := make([]int, n)
		for i, p := range parts[1:] {
			v, err := strconv.Atoi(p)
			if err != nil || v <= 0 {
				return nil, fmt.Errorf("%w: %q: parameter %q is not a positive integer", ErrFeatures, spec, p)
			}
			out[i] = v
		}
		return out, nil
	}
	switch parts[0] {
	case "identity":
		if len(parts) != 1 {
			return nil, fmt.Errorf("%w: %q: identity takes no parameters", ErrFeatures, spec)
		}
		return identity{n: inputSize}, nil
	case "avgpool":
		p, err := ints(3)
		if err != nil {
			return nil, err
		}
		h, w, s := p[0], p[1], p[2]
		// H*W may overflow an int, to the input size itself (and Apply then
		// read past the input).
		if h > math.MaxInt/w {
			return nil, fmt.Errorf("%w: %q: H*W overflows, want the input size %d", ErrFeatures, spec, inputSize)
		}
		if h*w != inputSize {
			return nil, fmt.Errorf("%w: %q: H*W = %d, want the input size %d", ErrFeatures, spec, h*w, inputSize)
		}
		if h%s != 0 || w%s != 0 {
			return nil, fmt.Errorf("%w: %q: S = %d must divide H = %d and W = %d", ErrFeatures, spec, s, h, w)
		}
		return avgpool{spec: spec, h: h, w: w, s: s}, nil
	case "audio-frames":
		p, err := ints(1)
		if err != nil {
			return nil, err
		}
		if p[0] > inputSize/2 {
			return nil, fmt.Errorf("%w: %q: frames of fewer than 2 samples (%d frames of an input of %d values)", ErrFeatures, spec, p[0], inputSize)
		}
		return audioFrames{spec: spec, n: inputSize, frames: p[0]}, nil
	}
	return nil, fmt.Errorf("%w: unknown transform %q", ErrFeatures, spec)
}

type identity struct{ n int }

func (f identity) Spec() string                     { return "identity" }
func (f identity) InputSize() int                   { return f.n }
func (f identity) Dim() int                         { return f.n }
func (f identity) Apply(x []float32, dst []float32) { copy(dst[:f.n], x[:f.n]) }

type avgpool struct {
	spec    string
	h, w, s int
}

func (f avgpool) Spec() string   { return f.spec }
func (f avgpool) InputSize() int { return f.h * f.w }
func (f avgpool) Dim() int       { return (f.h / f.s) * (f.w / f.s) }

func (f avgpool) Apply(x []float32, dst []float32) {
	ow := f.w / f.s
	inv := 1 / float64(f.s*f.s)
	x = x[:f.h*f.w]
	for by := 0; by < f.h/f.s; by++ {
		for bx := 0; bx < ow; bx++ {
			sum := 0.0
			for y := by * f.s; y < (by+1)*f.s; y++ {
				row := x[y*f.w+bx*f.s : y*f.w+(bx+1)*f.s]
				for _, v := range row {
					sum += float64(v)
				}
			}
			dst[by*ow+bx] = float32(sum * inv)
		}
	}
}

type audioFrames struct {
	spec      string
	n, frames int
}

func (f audioFrames) Spec() string   { return f.spec }
func (f audioFrames) InputSize() int { return f.n }
func (f audioFrames) Dim() int       { return 2*f.frames + 2 }

func (f audioFrames) Apply(x []float32, dst []float32) {
	fl := f.n / f.frames
	x = x[f.n-fl*f.frames : f.n]
	maxE, sumE := math.Inf(-1), 0.0
	for i := 0; i < f.frames; i++ {
		fr := x[i*fl : (i+1)*fl]
		energy, crossings := 0.0, 0
		prevNeg := fr[0] < 0
		for j, v := range fr {
			energy += float64(v) * float64(v)
			neg := v < 0
			if j > 0 && neg != prevNeg {
				crossings++
			}
			prevNeg = neg
		}
		e := math.Log10(energy/float64(fl) + 1e-10)
		dst[i] = float32(e)
		dst[f.frames+i] = float32(float64(crossings) / float64(fl))
		maxE = max(maxE, e)
		sumE += e
	}
	dst[2*f.frames] = float32(maxE)
	dst[2*f.frames+1] = float32(sumE / float64(f.frames))
}
