package engine

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/manifest"
)

// bigApp is an application with a 3x224x224 image input (602,112 bytes a
// sample). Register only reads its manifest and the file's size, so the model
// file does not have to match it.
func bigApp(t *testing.T) *manifest.App {
	a := testApp(t, "big", 3*224*224, 10,
		manifest.Variant{Name: "resnet", File: "mlp.onnx", Inputs: []manifest.Input{data("image", -1, 3, 224, 224)},
			Output: manifest.Output{Name: "logits", Kind: "logits"}})
	a.InputRange = &[2]float64{0, 1}
	return a
}

// An application whose batch buffers at the largest batch size would take more
// memory than the limit is refused when it is registered, with an error naming
// the application, the variant, its input size, the batch size and the bytes;
// nothing is allocated. Before, it registered, and the first profile allocated
// the buffers and the profile's inputs (tens of GB at a batch of 8192, a fatal
// out of memory for the process).
func TestRegisterRefusesBatchBuffersOverLimit(t *testing.T) {
	sizes := []int{1, 32, 8192}
	e := newEngine(t, Options{BatchSizes: sizes})
	err := e.Register(bigApp(t))
	if !errors.Is(err, ErrBatchMemory) {
		t.Fatalf("Register at a largest batch of 8192: %v, want ErrBatchMemory", err)
	}
	// What it takes: the kept input and output buffers of a batch of 8192, and
	// the profile's inputs (two such batches).
	want := int64(4*3*224*224*8192+4*10*8192) + 4*3*224*224*int64(profilePool(3*224*224, sizes, DefaultProfileRuns))
	for _, s := range []string{"application big", "variant resnet", "input size 150528", "batch size 8192",
		fmt.Sprint(want), fmt.Sprint(int64(BatchBytesLimit))} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	if ids := e.Variants("big"); len(ids) != 0 {
		t.Errorf("refused application registered anyway: %v", ids)
	}

	// The default batch sizes fit.
	if err := newEngine(t, Options{}).Register(bigApp(t)); err != nil {
		t.Errorf("Register at the default batch sizes: %v", err)
	}
	// A memory budget above the limit raises it: the operator has said there is
	// room.
	if err := newEngine(t, Options{BatchSizes: sizes, MemoryBudgetBytes: 16 << 30}).Register(bigApp(t)); err != nil {
		t.Errorf("Register with a 16 GiB budget: %v", err)
	}
	// One beyond it does not.
	if err := newEngine(t, Options{BatchSizes: []int{1, 32, 65536}, MemoryBudgetBytes: 16 << 30}).Register(bigApp(t)); !errors.Is(err, ErrBatchMemory) {
		t.Errorf("Register at a largest batch of 65536 with a 16 GiB budget: %v, want ErrBatchMemory", err)
	}
}
