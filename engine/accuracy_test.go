package engine

import (
	"math"
	"testing"

	"github.com/sneakgate/sneakgate/dataset"
)

// TestRealModelsReproduceManifestAccuracy runs every committed variant through the
// engine, in batches of 32, over its application's held-out validation split
// (the manifest's `validation`, never used for training) and checks the
// accuracy and the confusion matrix the manifest records: accuracy within 0.5
// percentage points, and each confusion row's total equal (same split).
func TestRealModelsReproduceManifestAccuracy(t *testing.T) {
	for _, app := range realManifests(t) {
		if app.Validation == nil {
			t.Fatalf("%s: manifest names no validation split", app.Name)
		}
		val, err := dataset.Read(app.Path(app.Validation.File))
		if err != nil {
			t.Fatalf("%s: validation split: %v", app.Name, err)
		}
		e := newEngine(t, Options{IntraOpThreads: 2, InterOpThreads: 1, BatchSizes: []int{1, 32}, ProfileRuns: 1})
		if err := e.Register(app); err != nil {
			t.Fatal(err)
		}
		for _, v := range app.Variants {
			t.Run(app.Name+"/"+v.Name, func(t *testing.T) {
				id := VariantID{app.Name, v.Name}
				if _, err := e.Load(id); err != nil {
					t.Fatal(err)
				}
				defer e.Unload(id)
				k := app.K()
				conf := make([][]int, k)
				for y := range conf {
					conf[y] = make([]int, k)
				}
				correct := 0
				batch := make([][]float32, 0, 32)
				flush := func(first int) {
					out, err := e.Run(id, batch)
					if err != nil {
						t.Fatal(err)
					}
					for i, p := range out {
						best := 0
						for c := range p {
							if p[c] > p[best] {
								best = c
							}
						}
						y := int(val.Labels[first+i])
						conf[y][best]++
						if best == y {
							correct++
						}
					}
					batch = batch[:0]
				}
				first := 0
				for i := range val.N {
					batch = append(batch, val.Row(i))
					if len(batch) == cap(batch) {
						flush(first)
						first = i + 1
					}
				}
				if len(batch) > 0 {
					flush(first)
				}
				acc := float64(correct) / float64(val.N)
				t.Logf("accuracy %.4f on %d validation rows (manifest %.4f)", acc, val.N, v.Accuracy)
				if math.Abs(acc-v.Accuracy) > 0.005 {
					t.Errorf("accuracy %.4f, manifest says %.4f", acc, v.Accuracy)
				}
				for y := range k {
					want, got := 0.0, 0
					for c := range k {
						want += v.Confusion[y][c]
						got += conf[y][c]
					}
					if float64(got) != want {
						t.Errorf("class %d: %d validation rows, manifest confusion row has %v", y, got, want)
					}
				}
			})
		}
	}
}
