package sneakpeek

import (
	"errors"
	"math"
	"testing"
)

func TestAvgpool(t *testing.T) {
	f, err := ParseFeatures("avgpool:4:4:2", 16)
	if err != nil {
		t.Fatal(err)
	}
	x := []float32{
		1, 2, 3, 4,
		5, 6, 7, 8,
		9, 10, 11, 12,
		13, 14, 15, 16,
	}
	dst := make([]float32, f.Dim())
	f.Apply(x, dst)
	want := []float32{3.5, 5.5, 11.5, 13.5}
	for i := range want {
		if dst[i] != want[i] {
			t.Fatalf("got %v want %v", dst, want)
		}
	}
}

func TestAudioFrames(t *testing.T) {
	f, err := ParseFeatures("audio-frames:2", 9)
	if err != nil {
		t.Fatal(err)
	}
	if f.Dim() != 6 {
		t.Fatalf("Dim %d", f.Dim())
	}
	// 9 values, 2 frames of 4: the first value is dropped.
	x := []float32{100, 0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0}
	dst := make([]float32, 6)
	f.Apply(x, dst)
	e0 := math.Log10(0.25 + 1e-10)
	e1 := math.Log10(1e-10)
	want := []float64{e0, e1, 3.0 / 4, 0, e0, (e0 + e1) / 2}
	for i := range want {
		if math.Abs(float64(dst[i])-want[i]) > 1e-5 {
			t.Fatalf("got %v want %v", dst, want)
		}
	}
}

func TestIdentity(t *testing.T) {
	f, err := ParseFeatures("identity", 3)
	if err != nil || f.Dim() != 3 {
		t.Fatal(f, err)
	}
	dst := make([]float32, 3)
	f.Apply([]float32{1, 2, 3}, dst)
	if dst[2] != 3 {
		t.Fatal(dst)
	}
}

func TestParseFeaturesErrors(t *testing.T) {
	for _, c := range []struct {
		spec string
		n    int
	}{
		{"pool4", 784}, {"identity:1", 3}, {"avgpool:28:28", 784}, {"avgpool:28:28:5", 784},
		{"avgpool:28:28:4", 700}, {"avgpool:28:28:x", 784}, {"avgpool:28:28:-4", 784},
		{"audio-frames:300", 576}, {"audio-frames", 576}, {"", 1},
	} {
		if _, err := ParseFeatures(c.spec, c.n); !errors.Is(err, ErrFeatures) {
			t.Errorf("%q/%d: got %v, want ErrFeatures", c.spec, c.n, err)
		}
	}
}

// An avgpool whose H*W overflows an int to the input size is refused: H =
// 2^62+49, W = 16 multiply to 2^66+784, which wraps to 784, and the transform
// was accepted with Dim 784; its Apply then read past the input and panicked
// on every request (the manifest's estimator, or the difficulty model's
// features, build it).
func TestParseFeaturesAvgpoolOverflow(t *testing.T) {
	spec := "avgpool:4611686018427387953:16:1"
	f, err := ParseFeatures(spec, 784)
	if errors.Is(err, ErrFeatures) {
		return
	}
	t.Errorf("%q/784: got %v, want ErrFeatures", spec, err)
	if f != nil {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%q: Apply panics: %v", spec, r)
				}
			}()
			f.Apply(make([]float32, 784), make([]float32, f.Dim()))
		}()
	}
}
