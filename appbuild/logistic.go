package appbuild

import (
	"errors"
	"math"
	"runtime"
	"sync"

	"github.com/sneakgate/sneakgate/sneakpeek"
)

// logisticFit configures FitLogistic.
type logisticFit struct {
	// C is the inverse L2 strength, as scikit-learn's LogisticRegression(C=...):
	// the objective is sum_i CE_i + ||W||^2 / (2C); the bias is not penalised.
	C float64
	// MaxIter bounds L-BFGS iterations; Tol stops when the largest gradient
	// component of the mean objective falls below it.
	MaxIter int
	Tol     float64
}

// fitChunk is the number of rows per unit of parallel work. The chunking (and
// the order in which the chunks' gradients are summed) does not depend on the
// number of workers, so the fit is bit-for-bit deterministic.
const fitChunk = 2048

// FitLogistic fits the multinomial logistic regression of sneakpeek's
// "logistic" estimator on n rows of d features (f, row-major) with labels y in
// [0, k): features are standardised (mean, population standard deviation; a
// constant feature gets scale 1), then W and b minimise the mean cross-entropy
// plus ||W||^2 / (2 C n) with L-BFGS. With k = 2 class 0's row is fixed at zero,
// as scikit-learn's binary model. The result loads with sneakpeek.NewLogistic.
func FitLogistic(f []float32, n, d int, y []int32, k int, o logisticFit) (*sneakpeek.LogisticParams, error) {
	if n == 0 || d == 0 || len(f) != n*d || len(y) != n || k < 2 {
		return nil, errors.New("logistic fit: empty or inconsistent training data")
	}
	if o.C <= 0 {
		o.C = 1
	}
	if o.MaxIter <= 0 {
		o.MaxIter = 1000
	}
	if o.Tol <= 0 {
		o.Tol = 1e-6
	}
	mean, scale := make([]float64, d), make([]float64, d)
	for i := 0; i < n; i++ {
		for j, v := range f[i*d : (i+1)*d] {
			mean[j] += float64(v)
		}
	}
	for j := range mean {
		mean[j] /= float64(n)
	}
	for i := 0; i < n; i++ {
		for j, v := range f[i*d : (i+1)*d] {
			dv := float64(v) - mean[j]
			scale[j] += dv * dv
		}
	}
	for j := range scale {
		scale[j] = math.Sqrt(scale[j] / float64(n))
		if scale[j] < 1e-8 {
			scale[j] = 1
		}
	}
	// The estimator computes z = (float32(f) - float32(mean)) * float32(1/scale)
	// in float32; train on the same values.
	z := make([]float32, n*d)
	for i := 0; i < n; i++ {
		for j, v := range f[i*d : (i+1)*d] {
			z[i*d+j] = (v - float32(mean[j])) * float32(1/scale[j])
		}
	}
	obj := &logObjective{z: z, y: y, n: n, d: d, k: k, lambda: 1 / (o.C * float64(n))}
	theta := make([]float64, k*d+k)
	theta = lbfgs(obj.eval, theta, o.MaxIter, o.Tol)
	p := &sneakpeek.LogisticParams{Classes: k, Dim: d, Mean: mean, Scale: scale,
		Weights: make([][]float64, k), Bias: make([]float64, k)}
	for c := 0; c < k; c++ {
		p.Weights[c] = append([]float64(nil), theta[c*d:(c+1)*d]...)
		p.Bias[c] = theta[k*d+c]
	}
	return p, nil
}

// logObjective is the mean cross-entropy of softmax(W z + b) plus lambda/2 ||W||^2.
type logObjective struct {
	z      []float32
	y      []int32
	n, d   int
	k      int
	lambda float64
}

// eval returns the objective at theta and writes its gradient into g.
func (o *logObjective) eval(theta, g []float64) float64 {
	k, d := o.k, o.d
	chunks := (o.n + fitChunk - 1) / fitChunk
	losses := make([]float64, chunks)
	grads := make([][]float64, chunks)
	var wg sync.WaitGroup
	next := make(chan int, chunks)
	for c := 0; c < chunks; c++ {
		next <- c
	}
	close(next)
	workers := min(runtime.GOMAXPROCS(0), chunks)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			logits := make([]float64, k)
			for c := range next {
				gc := make([]float64, len(theta))
				loss := 0.0
				for i := c * fitChunk; i < min((c+1)*fitChunk, o.n); i++ {
					row := o.z[i*d : (i+1)*d]
					top := math.Inf(-1)
					for cl := 0; cl < k; cl++ {
						w := theta[cl*d : (cl+1)*d]
						s := theta[k*d+cl]
						for j, v := range row {
							s += w[j] * float64(v)
						}
						logits[cl] = s
						top = max(top, s)
					}
					sum := 0.0
					for cl := range logits {
						logits[cl] = math.Exp(logits[cl] - top)
						sum += logits[cl]
					}
					yi := int(o.y[i])
					loss += math.Log(sum) - math.Log(logits[yi])
					for cl := 0; cl < k; cl++ {
						r := logits[cl] / sum
						if cl == yi {
							r--
						}
						if r == 0 {
							continue
						}
						gw := gc[cl*d : (cl+1)*d]
						for j, v := range row {
							gw[j] += r * float64(v)
						}
						gc[k*d+cl] += r
					}
				}
				losses[c], grads[c] = loss, gc
			}
		}()
	}
	wg.Wait()
	for i := range g {
		g[i] = 0
	}
	loss := 0.0
	for c := 0; c < chunks; c++ {
		loss += losses[c]
		for i, v := range grads[c] {
			g[i] += v
		}
	}
	inv := 1 / float64(o.n)
	loss *= inv
	for i := range g {
		g[i] *= inv
	}
	for i := 0; i < k*d; i++ {
		loss += 0.5 * o.lambda * theta[i] * theta[i]
		g[i] += o.lambda * theta[i]
	}
	if k == 2 {
		// Class 0 is the reference: its weights and bias stay zero.
		for i := 0; i < d; i++ {
			g[i] = 0
		}
		g[k*d] = 0
	}
	return loss
}

// lbfgs minimises f from x0 with limited-memory BFGS (10 pairs, backtracking
// line search with the Armijo condition) and returns the minimiser. It stops
// after maxIter iterations, when the largest gradient component is below tol,
// or when the objective stops decreasing.
func lbfgs(f func(x, g []float64) float64, x0 []float64, maxIter int, tol float64) []float64 {
	const m = 10
	n := len(x0)
	x := append([]float64(nil), x0...)
	g := make([]float64, n)
	fx := f(x, g)
	var ss, ys [][]float64
	var rho []float64
	dir := make([]float64, n)
	alpha := make([]float64, m)
	xn, gn := make([]float64, n), make([]float64, n)
	stall := 0
	for iter := 0; iter < maxIter; iter++ {
		if infNorm(g) < tol {
			break
		}
		// Two-loop recursion: dir = -H g.
		copy(dir, g)
		for i := len(ss) - 1; i >= 0; i-- {
			alpha[i] = rho[i] * dot(ss[i], dir)
			axpy(-alpha[i], ys[i], dir)
		}
		if len(ss) > 0 {
			l := len(ss) - 1
			gamma := dot(ss[l], ys[l]) / dot(ys[l], ys[l])
			for i := range dir {
				dir[i] *= gamma
			}
		} else {
			s := 1 / math.Max(1, math.Sqrt(dot(g, g)))
			for i := range dir {
				dir[i] *= s
			}
		}
		for i := 0; i < len(ss); i++ {
			beta := rho[i] * dot(ys[i], dir)
			axpy(alpha[i]-beta, ss[i], dir)
		}
		for i := range dir {
			dir[i] = -dir[i]
		}
		slope := dot(g, dir)
		if slope >= 0 { // not a descent direction: restart from the gradient
			ss, ys, rho = nil, nil, nil
			for i := range dir {
				dir[i] = -g[i]
			}
			slope = dot(g, dir)
		}
		step, fn := 1.0, 0.0
		ok := false
		for try := 0; try < 40; try++ {
			for i := range xn {
				xn[i] = x[i] + step*dir[i]
			}
			fn = f(xn, gn)
			if fn <= fx+1e-4*step*slope {
				ok = true
				break
			}
			step /= 2
		}
		if !ok {
			break
		}
		s, yv := make([]float64, n), make([]float64, n)
		for i := range s {
			s[i] = xn[i] - x[i]
			yv[i] = gn[i] - g[i]
		}
		if sy := dot(s, yv); sy > 1e-12 {
			if len(ss) == m {
				ss, ys, rho = ss[1:], ys[1:], rho[1:]
			}
			ss, ys, rho = append(ss, s), append(ys, yv), append(rho, 1/sy)
		}
		if fx-fn <= 1e-12*math.Max(1, math.Abs(fx)) {
			stall++
		} else {
			stall = 0
		}
		x, xn = xn, x
		g, gn = gn, g
		fx = fn
		if stall >= 5 {
			break
		}
	}
	return x
}

func dot(a, b []float64) float64 {
	s := 0.0
	for i, v := range a {
		s += v * b[i]
	}
	return s
}

func axpy(a float64, x, y []float64) {
	for i, v := range x {
		y[i] += a * v
	}
}

func infNorm(v []float64) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, math.Abs(x))
	}
	return m
}
