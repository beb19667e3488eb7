package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/sneakpeek"
)

// With label_shift on, a stream of one class moves the gateway's estimate of the
// live mix towards that class and sharpens the estimates accordingly; the
// correction starts from the estimator's mean output on the validation split.
func TestLabelShiftFollowsTheLiveMix(t *testing.T) {
	cfg := DefaultConfig()
	on := true
	cfg.Apps = []AppConfig{{Manifest: fashionManifest, LabelShift: &on}}
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
	var mix *sneakpeek.Mix
	n := 0
	for i := 0; i < samples.N && n < 400; i++ {
		if samples.Labels[i] != cls {
			continue
		}
		p := make([]float64, a.m.K())
		a.est.Estimate(samples.Row(i), p)
		uncorrected += p[cls]
		var answer []float64
		_, _, answer, mix = g.estimate(a, samples.Row(i))
		corrected += answer[cls]
		n++
	}
	if got := a.shift.Prior()[cls]; !(got > start+0.3) {
		t.Errorf("live prior of the only class seen: %.3f (started at %.3f)", got, start)
	}
	if !(corrected > uncorrected) {
		t.Errorf("corrected mean p(bag) %.3f not above uncorrected %.3f", corrected/float64(n), uncorrected/float64(n))
	}
	// The live mix the estimate comes with (scheduler.Options.EstimateAnswers)
	// follows, and values the corrected estimate's answers on the validation
	// split.
	if mix == nil || !(mix.Prior[cls] > start+0.3) || !(mix.Answer > 0 && mix.Answer <= 1) {
		t.Errorf("the estimate's Mix %+v: want bags above %.3f and an answer value in (0, 1]", mix, start+0.3)
	}
	if s := g.stats().Apps["fashion"]; len(s.LivePrior) != 10 {
		t.Errorf("stats live prior %v", s.LivePrior)
	}
}

// label_shift is on by default for an application with an estimator, off when
// set false; by default an application whose validation split cannot be read
// serves without it (a package without the split, THIRD_PARTY.md), while an
// explicit true makes that an error.
func TestLabelShiftDefault(t *testing.T) {
	// A copy of fashion without its validation split.
	noVal := copyFashion(t)
	if err := os.Remove(filepath.Join(filepath.Dir(noVal), "data", "validation.sgs")); err != nil {
		t.Fatal(err)
	}
	on, off := true, false
	for _, c := range []struct {
		name     string
		manifest string
		set      *bool
		want     bool // correction on
		fails    bool
	}{
		{"default", fashionManifest, nil, true, false},
		{"false", fashionManifest, &off, false, false},
		{"true", fashionManifest, &on, true, false},
		{"default without the validation split", noVal, nil, false, false},
		{"true without the validation split", noVal, &on, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Apps = []AppConfig{{Manifest: c.manifest, LabelShift: c.set}}
			g := &Gateway{cfg: &cfg, log: zerolog.Nop(), m: newMetrics(nil),
				now: time.Now, reg: prometheus.NewRegistry()}
			err := g.loadApps()
			if c.fails {
				if err == nil {
					t.Fatal("loaded; want an error naming label_shift")
				}
				if !strings.Contains(err.Error(), "label_shift") {
					t.Errorf("error %q does not name label_shift", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a, _ := g.app("fashion")
			if got := a.shift != nil; got != c.want {
				t.Errorf("correction on: %v, want %v", got, c.want)
			}
		})
	}
}

// scheduler.estimate_answers is on by default and reaches the policy's options;
// false in the file turns it off.
func TestEstimateAnswersDefault(t *testing.T) {
	cfg := DefaultConfig()
	if !cfg.SchedulerOptions().EstimateAnswers {
		t.Error("default: EstimateAnswers off")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	man, err := filepath.Abs(fashionManifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("apps:\n  - manifest: "+man+"\nscheduler:\n  estimate_answers: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.SchedulerOptions().EstimateAnswers {
		t.Error("estimate_answers: false left it on")
	}
}
