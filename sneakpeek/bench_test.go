package sneakpeek

import "testing"

var sink float64

func BenchmarkExpectedAccuracy10(b *testing.B) {
	p, r := make([]float64, 10), make([]float64, 10)
	for i := range p {
		p[i], r[i] = 0.1, 0.8
	}
	for b.Loop() {
		sink += ExpectedAccuracy(p, r)
	}
}

func BenchmarkExpectedUtility10(b *testing.B) {
	p := make([]float64, 10)
	conf, w := make([][]float64, 10), make([][]float64, 10)
	for i := range conf {
		p[i] = 0.1
		conf[i], w[i] = make([]float64, 10), make([]float64, 10)
		for j := range conf[i] {
			conf[i][j] = float64(1 + i + j)
		}
		w[i][i] = 1
	}
	for b.Loop() {
		sink += ExpectedUtility(p, conf, w)
	}
}
