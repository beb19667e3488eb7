package gateway

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/sneakpeek"
	"github.com/sneakgate/sneakgate/store"
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
		g.observe(a, answer) // as the gateway does once it takes the request
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
// set false; by default an application whose manifest names a validation split
// that cannot be read serves without it (a package without the split,
// THIRD_PARTY.md), while an explicit true makes that an error. One whose
// manifest names no split serves with it, from the manifest's prior, whether
// label_shift is true or unset (README, apps[].label_shift).
func TestLabelShiftDefault(t *testing.T) {
	// A copy of fashion without its validation split.
	noVal := copyFashion(t)
	if err := os.Remove(filepath.Join(filepath.Dir(noVal), "data", "validation.sgs")); err != nil {
		t.Fatal(err)
	}
	// A copy whose manifest names none.
	unnamed := copyFashion(t)
	text, err := os.ReadFile(unnamed)
	if err != nil {
		t.Fatal(err)
	}
	const block = "validation:\n  file: \"data/validation.sgs\"\n  count: 10000\n"
	if !strings.Contains(string(text), block) {
		t.Fatalf("%s has no validation block %q to remove", fashionManifest, block)
	}
	if err := os.WriteFile(unnamed, []byte(strings.Replace(string(text), block, "", 1)), 0o644); err != nil {
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
		// No split named: on from the manifest's prior, true or not.
		{"default with no split named", unnamed, nil, true, false},
		{"true with no split named", unnamed, &on, true, false},
		{"false with no split named", unnamed, &off, false, false},
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
			if c.manifest == unnamed && a.shift != nil {
				// It starts from the manifest's prior (normalised: fashion's
				// sums to 1, and none is below the floor), not from the
				// estimator's mean output on a split (fashion's are up to 0.005 apart).
				for y, p := range a.shift.TrainPrior() {
					if math.Abs(p-a.m.Prior[y]) > 1e-9 {
						t.Errorf("starting prior %v, want the manifest's %v", a.shift.TrainPrior(), a.m.Prior)
						break
					}
				}
			}
		})
	}
}

// Loading an application whose estimator file or validation split does not
// fit its input size fails with an error naming the application, the
// estimator, the file and both sizes: the estimator's (from sneakpeek.Load,
// named once), the label-shift correction's (label_shift: true) and the
// cascade's or the peek's curve, which reads the split before running a model
// on it (before, the engine's 'input 0 has 5 values, want 784' named neither
// the split nor its file).
func TestSizeMismatchMessages(t *testing.T) {
	load := func(path string, ac AppConfig) error {
		cfg := DefaultConfig()
		ac.Manifest = path
		cfg.Apps = []AppConfig{ac}
		g := &Gateway{cfg: &cfg, log: zerolog.Nop(), m: newMetrics(nil), now: time.Now, reg: prometheus.NewRegistry()}
		return g.loadApps()
	}
	says := func(what string, err error, want ...string) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: no error", what)
			return
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error does not say %q:\n%v", what, w, err)
			}
		}
	}

	// fashion's logistic estimator with one feature too few.
	app := copyFashion(t)
	estFile := filepath.Join(filepath.Dir(app), "est", "logistic.json")
	b, err := os.ReadFile(estFile)
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	p["dim"] = 48
	p["mean"], p["scale"] = p["mean"].([]any)[:48], p["scale"].([]any)[:48]
	for i, row := range p["weights"].([]any) {
		p["weights"].([]any)[i] = row.([]any)[:48]
	}
	if b, err = json.Marshal(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(estFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	err = load(app, AppConfig{})
	says("estimator", err, "estimator logistic of fashion", estFile, "dim 48, want 49")
	if err != nil && strings.Count(err.Error(), "estimator logistic") != 1 {
		t.Errorf("estimator: named more than once: %v", err)
	}

	// fashion's validation split with rows of 5 values.
	app = copyFashion(t)
	valFile := filepath.Join(filepath.Dir(app), "data", "validation.sgs")
	rows := &dataset.Set{N: 10, D: 5, Values: make([]float32, 50), Labels: make([]int32, 10)}
	if err := dataset.Write(valFile, rows, false); err != nil {
		t.Fatal(err)
	}
	on := true
	says("label_shift: true", load(app, AppConfig{LabelShift: &on}), "label_shift", "fashion", valFile, "rows of 5 values, want 784")
	r := newCurveRig(t, app, "", nil)
	_, err = r.g.measureCurveWith(context.Background(), r.a, 0, 1, "peek", r.run)
	says("peek curve", err, "peek for fashion", valFile, "rows of 5 values, want 784")
	if r.runs != 0 {
		t.Errorf("peek curve: %d model runs on rows that do not fit", r.runs)
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

// The live label mix counts each request once: a copy of a request the journal
// knows (a QoS 1 redelivery, or the same id sent again, pending or answered)
// is answered as a duplicate and does not move the mix again, whether
// admission had a queue place for it or not. Before, every copy's estimate
// updated the mix (its correction observed the estimate before the journal
// said it was a duplicate), so a redelivery storm skewed the mix towards the
// redelivered requests' classes.
func TestDuplicatesDoNotMoveTheLiveMix(t *testing.T) {
	g := handlerGateway(t, &fakeClient{}, false)
	g.cfg.Admission.MaxQueue = 100 // admitted, with a queue place
	g.cfg.Admission.MaxWait = 0
	a, _ := g.app("fashion")
	if a.shift == nil {
		t.Fatal("label shift not enabled")
	}
	_, samples := fashionSamples(t)
	const topic = "sneakgate/req/fashion/cam-1"
	send := func(id string, row int, dup bool) {
		t.Helper()
		p := protocol.Payload{ID: id, DeadlineMS: 60000, Input: samples.Row(row), B64: true}
		msg := newFakeMessage(topic, p.Marshal())
		msg.dup = dup
		g.handle(arrival{msg: msg, at: time.Now()})
		if !msg.isAcked() {
			t.Fatalf("%s not acknowledged", id)
		}
	}
	counted := func(what string, want int64) {
		t.Helper()
		if n := a.shift.Observed(); n != want {
			t.Errorf("%s: the live mix counted %d requests, want %d", what, n, want)
		}
	}
	send("r1", 0, false)
	counted("the first copy", 1)
	prior := a.shift.Prior()
	send("r1", 0, true) // redelivered while pending
	counted("a redelivery of a pending request", 1)
	key := store.Key{App: "fashion", Device: "cam-1", ID: "r1"}
	if err := g.journal.Complete(key, []byte(`{"v":1,"id":"r1","app":"fashion","device":"cam-1","status":"ok","class":1}`)); err != nil {
		t.Fatal(err)
	}
	send("r1", 0, false) // the same id sent again, answered
	counted("the id sent again once answered", 1)
	g.cfg.Admission.MaxQueue = 0 // no queue place: looked up, then answered as a duplicate
	send("r1", 0, true)
	counted("a copy without a queue place", 1)
	if got := a.shift.Prior(); !slices.Equal(got, prior) {
		t.Errorf("live mix moved by the copies: %v, was %v", got, prior)
	}
	g.cfg.Admission.MaxQueue = 100
	send("r2", 1, false)
	counted("a new request", 2)
}
