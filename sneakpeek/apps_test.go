package sneakpeek

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
)

// The bundled applications under models/: every manifest must load and validate,
// its sample file must fit it, and each estimator must reproduce on the validation
// split (the manifest's `validation`) the accuracy its manifest records.

func bundledApps(t testing.TB) []*manifest.App {
	t.Helper()
	paths, err := filepath.Glob("../models/*/manifest.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no models/*/manifest.yaml found")
	}
	var apps []*manifest.App
	for _, p := range paths {
		a, err := manifest.Load(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		apps = append(apps, a)
	}
	return apps
}

func validation(t testing.TB, a *manifest.App) *dataset.Set {
	t.Helper()
	if a.Validation == nil {
		t.Fatalf("%s: manifest names no validation split", a.Name)
	}
	s, err := dataset.Read(a.Path(a.Validation.File))
	if err != nil {
		t.Fatal(err)
	}
	if s.D != a.InputSize {
		t.Fatalf("%s: validation rows have %d values, input_size %d", a.Name, s.D, a.InputSize)
	}
	return s
}

func TestBundledManifests(t *testing.T) {
	for _, a := range bundledApps(t) {
		t.Run(a.Name, func(t *testing.T) {
			for _, v := range a.Variants {
				if _, err := os.Stat(a.Path(v.File)); err != nil {
					t.Errorf("variant %s: %v", v.Name, err)
				}
			}
			if a.Samples == nil {
				t.Fatal("no samples")
			}
			s, err := dataset.Read(a.Path(a.Samples.File))
			if err != nil {
				t.Fatal(err)
			}
			if s.N != a.Samples.Count || s.D != a.InputSize || s.Classes() > a.K() {
				t.Errorf("samples: N=%d D=%d classes=%d; manifest count %d input_size %d K %d",
					s.N, s.D, s.Classes(), a.Samples.Count, a.InputSize, a.K())
			}
			if a.InputRange != nil {
				for i, v := range s.Values {
					if float64(v) < a.InputRange[0] || float64(v) > a.InputRange[1] {
						t.Fatalf("samples value %d = %v outside input_range %v", i, v, *a.InputRange)
					}
				}
			}
			if len(a.Estimators) < 2 {
				t.Errorf("want at least 2 estimators, have %d", len(a.Estimators))
			}
		})
	}
}

func TestBundledEstimatorAccuracy(t *testing.T) {
	for _, a := range bundledApps(t) {
		val := validation(t, a)
		for _, e := range a.Estimators {
			t.Run(a.Name+"/"+e.Name, func(t *testing.T) {
				est, err := Load(a, e)
				if err != nil {
					t.Fatal(err)
				}
				p := make([]float64, a.K())
				correct := 0
				for i := 0; i < val.N; i++ {
					est.Estimate(val.Row(i), p)
					best, sum := 0, 0.0
					for y, v := range p {
						if !(v >= 0) || math.IsInf(v, 0) {
							t.Fatalf("row %d: p = %v", i, p)
						}
						sum += v
						if v > p[best] {
							best = y
						}
					}
					if math.Abs(sum-1) > 1e-6 {
						t.Fatalf("row %d: p sums to %v", i, sum)
					}
					if int32(best) == val.Labels[i] {
						correct++
					}
				}
				acc := float64(correct) / float64(val.N)
				if math.Abs(acc-e.Accuracy) > 0.005 {
					t.Errorf("accuracy %.4f on %d validation rows, manifest says %.4f", acc, val.N, e.Accuracy)
				}
				t.Logf("accuracy %.4f (manifest %.4f)", acc, e.Accuracy)
			})
		}
	}
}

func BenchmarkBundledEstimators(b *testing.B) {
	for _, a := range bundledApps(b) {
		val := validation(b, a)
		for _, e := range a.Estimators {
			est, err := Load(a, e)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(a.Name+"/"+e.Name, func(b *testing.B) {
				p := make([]float64, a.K())
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					est.Estimate(val.Row(i), p)
					if i++; i == val.N {
						i = 0
					}
				}
			})
		}
	}
}

// An estimator or difficulty model made for another input size, or features
// that cannot take the input, are refused with an error naming the
// application, the estimator (or the difficulty model), its file and both
// sizes: satellite's files (36 values, identity features) under an
// input_size of 32, and avgpool:28:28:4 features (784 values) under 36.
func TestLoadSizeMismatchMessages(t *testing.T) {
	sat, err := manifest.Load("../models/satellite/manifest.yaml")
	if err != nil {
		t.Skip(err)
	}
	est := func(name string) manifest.Estimator {
		for _, e := range sat.Estimators {
			if e.Name == name {
				return e
			}
		}
		t.Fatalf("satellite has no estimator %s", name)
		return manifest.Estimator{}
	}
	small := *sat
	small.InputSize = 32
	pooled := est("logistic")
	pooled.Features = "avgpool:28:28:4"
	for _, c := range []struct {
		name string
		load func() error
		want []string
	}{
		{"logistic", func() error { _, err := Load(&small, est("logistic")); return err },
			[]string{"estimator logistic of satellite", sat.Path(est("logistic").File), "dim 36, want 32", `features "identity" of an input of 32 values`}},
		{"knn", func() error { _, err := Load(&small, est("knn")); return err },
			[]string{"estimator knn of satellite", sat.Path(est("knn").File), "reference rows have 36 values, want 32", `features "identity" of an input of 32 values`}},
		{"features", func() error { _, err := Load(sat, pooled); return err },
			[]string{"estimator logistic of satellite", sat.Path(pooled.File), `"avgpool:28:28:4": H*W = 784, want the input size 36`}},
		{"difficulty", func() error { _, err := LoadDifficulty(&small); return err },
			[]string{"difficulty model of satellite", sat.Path(sat.Difficulty.File), "mean and scale have 48 and 48 values, want 44", `features "identity" of an input of 32 values give 32`}},
	} {
		err := c.load()
		if err == nil {
			t.Errorf("%s: loaded", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error does not say %q:\n%v", c.name, w, err)
			}
		}
	}
}
