package gateway

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/manifest"
)

// An application whose batch buffers at the largest engine.batch_sizes entry
// would not fit in memory (here fashion's manifest with a 3x224x224 input) is
// refused at start with an error that names the application, the variant, the
// input size, the batch size, the bytes and the settings to change, before the
// engine allocates anything. Before, the first profile allocated 110 GiB of
// buffers and profile inputs and the kernel killed the process.
func TestBatchBuffersOverLimitRefusedAtStart(t *testing.T) {
	m, err := manifest.Load(fashionManifest)
	if err != nil {
		t.Fatal(err)
	}
	const size = 3 * 224 * 224
	m.InputSize, m.InputShape = size, nil
	for i := range m.Variants {
		m.Variants[i].Inputs = []manifest.Input{{Name: "input", Kind: "data", Shape: []int64{-1, size}}}
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Engine.BatchSizes = []int{1, 32, 65536}
	eng, err := engine.New(engine.Options{LibraryPath: testenv.ORTLib(t), BatchSizes: cfg.Engine.BatchSizes})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	g := &Gateway{cfg: &cfg, log: zerolog.Nop(), eng: eng}
	err = g.prepareEngine(context.Background(), &appRuntime{m: m, key: m.Name}, false)
	if !errors.Is(err, engine.ErrBatchMemory) {
		t.Fatalf("prepareEngine: %v, want engine.ErrBatchMemory", err)
	}
	for _, w := range []string{"application fashion", "variant logreg", "input size 150528", "batch size 65536",
		"118382", "engine.batch_sizes", "engine.memory_budget_mb"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not say %q:\n%v", w, err)
		}
	}
}
