package gateway

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

// withoutEstimators copies the application directory of manifest and drops the
// estimators and the difficulty model (trained on one of them) from the copy's
// manifest, whose path it returns.
func withoutEstimators(t *testing.T, manifest string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "app")
	if err := os.CopyFS(dir, os.DirFS(filepath.Dir(manifest))); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "manifest.yaml")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	var kept []string
	drop := false
	for _, l := range lines {
		if l != "" && l[0] != ' ' && l[0] != '#' && l[0] != '\n' {
			drop = strings.HasPrefix(l, "estimators:") || strings.HasPrefix(l, "difficulty:")
		}
		if !drop {
			kept = append(kept, l)
		}
	}
	if len(kept) == len(lines) {
		t.Fatalf("%s has no estimators to drop", manifest)
	}
	if err := os.WriteFile(p, []byte(strings.Join(kept, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// An application whose manifest names no estimator is served (what sneakgate
// app check warns it loses: appbuild's noEstimator): no estimate, no
// label-shift correction, no monitor, and its requests answered by a model.
// label_shift: true on it is a configuration error.
func TestServesWithoutEstimator(t *testing.T) {
	const sat = "../models/satellite/manifest.yaml"
	app := withoutEstimators(t, sat)
	b := mqtttest.Start(t, mqtttest.Options{})

	on := true
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.Apps = []AppConfig{{Manifest: app, LabelShift: &on}}
	g, err := New(context.Background(), Options{Config: cfg, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err == nil {
		g.closeAll()
		t.Fatal("started with label_shift: true on an application without an estimator")
	}
	if !strings.Contains(err.Error(), "label_shift") || !strings.Contains(err.Error(), "no estimator") {
		t.Errorf("error %v, want one naming label_shift and the missing estimator", err)
	}

	cfg = testConfig(t, b.URL(), t.TempDir())
	cfg.Apps = []AppConfig{{Manifest: app}}
	r := startGateway(t, cfg, Options{})
	a, ok := r.g.app("satellite")
	if !ok || a.est != nil || a.shift != nil || a.monitor != nil || a.diff != nil {
		t.Fatalf("served %v: estimator %v, correction %v, monitor %v, difficulty %v; want it served with none",
			ok, a.est, a.shift, a.monitor, a.diff)
	}
	_, rows := appSamples(t, sat)
	dev := newDevice(t, b.URL(), "sensor-1")
	dev.request("satellite", "sensor-1", "x", rows.Row(0), 10000)
	if rep := dev.await([]string{"x"}, 30*time.Second)["x"]; rep.Status != protocol.StatusOK || rep.Model == "" {
		t.Errorf("reply %s (%s), model %q; want ok from a model", rep.Status, rep.Reason, rep.Model)
	}
}
