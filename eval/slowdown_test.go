package eval

import (
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMeasuredSlowdownWeighsByForwardPasses(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sneakgate_latency_correction_ratio"}, []string{"app", "variant"})
	b := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sneakgate_batch_size"}, []string{"app", "variant"})
	reg.MustRegister(f, b)
	if got := measuredSlowdown(reg, "fashion"); got != 0 {
		t.Fatalf("slowdown %v with nothing run, want 0", got)
	}
	f.WithLabelValues("fashion", "cnn").Set(2)
	f.WithLabelValues("fashion", "resnet-s").Set(1.5)
	f.WithLabelValues("fashion", "resnet-m").Set(9) // loaded, never ran
	f.WithLabelValues("vad", "half").Set(5)         // another application
	for range 30 {
		b.WithLabelValues("fashion", "cnn").Observe(4)
	}
	for range 10 {
		b.WithLabelValues("fashion", "resnet-s").Observe(8)
	}
	b.WithLabelValues("vad", "half").Observe(1)
	if got, want := measuredSlowdown(reg, "fashion"), (30*2+10*1.5)/40.0; math.Abs(got-want) > 1e-12 {
		t.Fatalf("slowdown %v, want %v", got, want)
	}
}
