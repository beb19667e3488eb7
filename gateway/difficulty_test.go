package gateway

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/scheduler"
)

// An application whose manifest has a difficulty model gets per-sample expected
// accuracies (the model's correctness) unless configured class_based.
func TestDifficultyUsedUnlessClassBased(t *testing.T) {
	const sat = "../models/satellite/manifest.yaml"
	_, rows := appSamples(t, sat)
	for _, classBased := range []bool{false, true} {
		cfg := DefaultConfig()
		cfg.Apps = []AppConfig{{Manifest: sat, ClassBased: classBased}}
		g := &Gateway{cfg: &cfg, log: zerolog.Nop(), m: newMetrics(nil), now: time.Now, reg: prometheus.NewRegistry()}
		if err := g.loadApps(); err != nil {
			t.Fatal(err)
		}
		a, _ := g.app("satellite")
		if (a.diff == nil) != classBased {
			t.Fatalf("class_based %v: difficulty model loaded = %v", classBased, a.diff != nil)
		}
		differ := 0
		for i := range 50 {
			p, c, _, _ := g.estimate(a, rows.Row(i))
			if (c == nil) != classBased {
				t.Fatalf("class_based %v: correctness %v", classBased, c)
			}
			j := &job{App: "satellite", Received: time.Now(), Deadline: time.Now().Add(time.Second),
				Input: rows.Row(i), Estimate: p, Correct: c, rt: a}
			j.prepare(map[string]*scheduler.App{}, uint64(i), 0)
			base := scheduler.Prepare(a.sched, 0, j.Received, j.Deadline, p, nil)
			for m := range a.sched.Variants {
				if classBased {
					if j.req.ExpAccuracy[m] != base.ExpAccuracy[m] {
						t.Fatalf("class_based: accuracy %v, want the class-based %v", j.req.ExpAccuracy[m], base.ExpAccuracy[m])
					}
					continue
				}
				if math.Abs(j.req.ExpAccuracy[m]-c[m]) > 1e-9 {
					t.Fatalf("row %d variant %d: expected accuracy %v, want the correctness %v", i, m, j.req.ExpAccuracy[m], c[m])
				}
				if math.Abs(c[m]-base.ExpAccuracy[m]) > 0.05 {
					differ++
				}
			}
		}
		if !classBased && differ == 0 {
			t.Error("the difficulty model never moved an expected accuracy by more than 0.05")
		}
	}
}
