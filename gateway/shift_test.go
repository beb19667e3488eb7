package gateway

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// With label_shift on, a stream of one class moves the gateway's estimate of the
// live mix towards that class and sharpens the estimates accordingly; the
// correction starts from the estimator's mean output on the validation split.
func TestLabelShiftFollowsTheLiveMix(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Apps = []AppConfig{{Manifest: fashionManifest, LabelShift: true}}
	g := &Gateway{cfg: &cfg, log: zerolog.Nop(), m: newMetrics(nil),
		now: time.Now, reg: prometheus.NewRegistry()}
	if err := g.loadApps(); err != nil {
		t.Fatal(err)
	}
	a, _ := g.app("fashion")
	if a.shift == nil {
		t.Fatal("label shift not enabled")
	}
	_, samples := fashionSamples(t)
	const cls = 8 // bag
	start := a.shift.Prior()[cls]
	var uncorrected, corrected float64
	n := 0
	for i := 0; i < samples.N && n < 400; i++ {
		if samples.Labels[i] != cls {
			continue
		}
		p := make([]float64, a.m.K())
		a.est.Estimate(samples.Row(i), p)
		uncorrected += p[cls]
		est, _ := g.estimate(a, samples.Row(i))
		corrected += est[cls]
		n++
	}
	if got := a.shift.Prior()[cls]; !(got > start+0.3) {
		t.Errorf("live prior of the only class seen: %.3f (started at %.3f)", got, start)
	}
	if !(corrected > uncorrected) {
		t.Errorf("corrected mean p(bag) %.3f not above uncorrected %.3f", corrected/float64(n), uncorrected/float64(n))
	}
	if s := g.stats().Apps["fashion"]; len(s.LivePrior) != 10 {
		t.Errorf("stats live prior %v", s.LivePrior)
	}
}
