package engine

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/manifest"
)

// realManifests returns the manifests under ../models, skipping the test with a
// clear message when the models are not there (they are built by `make models`).
func realManifests(t testing.TB) []*manifest.App {
	t.Helper()
	if _, err := os.Stat("../models"); err != nil {
		t.Skip("skipping: ../models is absent (the real models come from `make models`)")
	}
	paths, _ := filepath.Glob("../models/*/manifest.yaml")
	if len(paths) == 0 {
		t.Skip("skipping: no ../models/*/manifest.yaml yet")
	}
	var apps []*manifest.App
	for _, p := range paths {
		a, err := manifest.Load(p)
		if err != nil {
			t.Fatal(err)
		}
		apps = append(apps, a)
	}
	return apps
}

func inputRange(a *manifest.App) (lo, hi float64) {
	if r := a.InputRange; r != nil {
		return r[0], r[1]
	}
	return 0, 1
}

// rss is the process's resident set size in bytes (0 if unknown).
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// TestRealModels loads every variant of every application under ../models: the
// manifest must match the model, batched answers must equal one-by-one answers,
// every answer must be a distribution over K classes; then every variant is
// profiled. The log shows each variant's file size, MemBytes, the RSS growth
// across its load, and its profile.
func TestRealModels(t *testing.T) {
	for _, app := range realManifests(t) {
		t.Run(app.Name, func(t *testing.T) {
			e := newEngine(t, Options{IntraOpThreads: 1, InterOpThreads: 1,
				BatchSizes: []int{1, 8, 32}, WarmupRuns: 2, ProfileRuns: 5})
			if err := e.Register(app); err != nil {
				t.Fatal(err)
			}
			lo, hi := inputRange(app)
			in := randomInputs(32, app.InputSize, lo, hi, 11)
			for _, v := range app.Variants {
				id := VariantID{app.Name, v.Name}
				before := rss()
				d, err := e.Load(id)
				if err != nil {
					t.Fatal(err)
				}
				after := rss()
				batched, err := e.Run(id, in)
				if err != nil {
					t.Fatal(err)
				}
				for i, x := range in {
					one, err := e.Run(id, [][]float32{x})
					if err != nil {
						t.Fatal(err)
					}
					if !closeTo(batched[i], one[0], 1e-4) {
						t.Fatalf("%s request %d: batched %v, alone %v", id, i, batched[i], one[0])
					}
					checkDistribution(t, id, batched[i], app.K())
				}
				if _, err := e.Unload(id); err != nil {
					t.Fatal(err)
				}
				fi, _ := os.Stat(app.Path(v.File))
				mem, _ := e.MemBytes(id)
				t.Logf("%-22s file %8d B  MemBytes %8d B  RSS +%8d B across load (%v)",
					id, fi.Size(), mem, after-before, d)
			}
			if err := e.Profile(context.Background()); err != nil {
				t.Fatal(err)
			}
			for _, v := range app.Variants {
				id := VariantID{app.Name, v.Name}
				p, _ := e.ProfileOf(id)
				t.Logf("%-22s load %-10v unload %-10v latency %v at %v", id, p.Load, p.Unload, p.Latency, p.Batch)
			}
		})
	}
}

func checkDistribution(t *testing.T, id VariantID, p []float64, k int) {
	t.Helper()
	if len(p) != k {
		t.Fatalf("%s: %d values, want %d", id, len(p), k)
	}
	var s float64
	for _, x := range p {
		if x < -1e-6 || x > 1+1e-6 || math.IsNaN(x) {
			t.Fatalf("%s: %v is not a distribution", id, p)
		}
		s += x
	}
	if math.Abs(s-1) > 1e-4 {
		t.Fatalf("%s: %v sums to %v", id, p, s)
	}
}

// BenchmarkRealRun is BenchmarkRun for the variants under ../models.
func BenchmarkRealRun(b *testing.B) {
	for _, app := range realManifests(b) {
		e := newEngine(b, Options{IntraOpThreads: 1, InterOpThreads: 1})
		if err := e.Register(app); err != nil {
			b.Fatal(err)
		}
		lo, hi := inputRange(app)
		for _, v := range app.Variants {
			benchVariant(b, e, VariantID{app.Name, v.Name}, app.InputSize, lo, hi)
		}
	}
}
