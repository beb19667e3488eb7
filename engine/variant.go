package engine

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/sneakgate/sneakgate/manifest"
)

// VariantID names one model variant of one registered application.
type VariantID struct {
	App, Variant string
}

// String returns "app/variant".
func (id VariantID) String() string { return id.App + "/" + id.Variant }

// Input kinds, as in manifest.Input.Kind.
const (
	kindData  = "data"
	kindZeros = "zeros"
	kindConst = "const"
)

// inputLayout is one ONNX input of a variant, resolved from the manifest.
type inputLayout struct {
	name  string
	kind  string
	int64 bool
	// shape is the manifest shape; batchAxis is the index of its -1 (-1 for const).
	shape     []int64
	batchAxis int
	// per is the number of elements per sample (data, zeros) or in total (const).
	per   int
	value float64
}

// shapeFor is the input's shape for a batch of b samples.
func (l *inputLayout) shapeFor(b int) ort.Shape {
	s := slices.Clone(l.shape)
	if l.batchAxis >= 0 {
		s[l.batchAxis] = int64(b)
	}
	return s
}

// variant is a registered model variant: its static layout, set by Register and
// never changed, and its residency state.
type variant struct {
	id   VariantID
	app  *manifest.App
	spec manifest.Variant
	path string
	// fileBytes is the ONNX file's size; mem is MemBytes (see the package doc).
	fileBytes, mem int64
	inputs         []inputLayout
	data           int // index of the data input in inputs
	dataOffset     int // slice of the request input fed to the data input
	dataLen        int
	kind           outputKind
	classes        int
	row            int  // output values per sample
	onCPU          bool // sessions on the CPU provider whatever the engine's (OnCPU)

	// life serialises Load, Unload and Profile of this variant. Fields below it
	// marked (life) are only touched with it held.
	life sync.Mutex
	// outDims is the model's output shape, known once the I/O check passed (life).
	outDims ort.Shape
	checked bool // (life)

	// Guarded by Engine.mu.
	sess       *session
	unbudgeted bool // sess does not count against the budgets (ProfileBeside)
	prof       *Profile
	lastLoad   time.Duration
	lastUnload time.Duration
	loaded     bool // lastLoad is a measurement
	unloaded   bool // lastUnload is a measurement
}

// newVariant resolves spec of app for an engine whose largest batch is maxBatch.
func newVariant(key string, app *manifest.App, spec *manifest.Variant, maxBatch int) (*variant, error) {
	id := VariantID{key, spec.Name}
	v := &variant{id: id, app: app, spec: *spec, path: app.Path(spec.File), classes: app.K(), data: -1}
	fi, err := os.Stat(v.path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrModelFile, id, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s: %s is not a regular file", ErrModelFile, id, v.path)
	}
	v.fileBytes = fi.Size()
	if v.kind, err = parseKind(spec.Output.Kind); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", manifest.ErrInvalid, id, err)
	}
	v.row = v.kind.rowLen(v.classes)

	var ioBytes int64
	for i, in := range spec.Inputs {
		l := inputLayout{name: in.Name, kind: in.Kind, int64: in.DType == "int64",
			shape: slices.Clone(in.Shape), batchAxis: -1, per: 1, value: in.Value}
		for ax, d := range in.Shape {
			if d == dynamic {
				l.batchAxis = ax
			} else {
				l.per *= int(d)
			}
		}
		elem := int64(4)
		if l.int64 {
			elem = 8
		}
		switch in.Kind {
		case kindData:
			v.data = i
			v.dataOffset, v.dataLen = in.Offset, in.Length
			if v.dataLen == 0 {
				v.dataLen = app.InputSize - in.Offset
			}
			// Samples are copied contiguously: every axis before the batch axis must be 1.
			for _, d := range in.Shape[:l.batchAxis] {
				if d != 1 {
					return nil, fmt.Errorf("%w: %s: data input %q shape %v: axes before the batch axis must be 1",
						manifest.ErrInvalid, id, in.Name, in.Shape)
				}
			}
			ioBytes += elem * int64(l.per) * int64(maxBatch)
		case kindZeros:
			ioBytes += elem * int64(l.per) * int64(maxBatch)
		case kindConst:
			ioBytes += elem * int64(l.per)
		default:
			return nil, fmt.Errorf("%w: %s: input %q kind %q", manifest.ErrInvalid, id, in.Name, in.Kind)
		}
		v.inputs = append(v.inputs, l)
	}
	if v.data < 0 {
		return nil, fmt.Errorf("%w: %s: no data input", manifest.ErrInvalid, id)
	}
	ioBytes += 4 * int64(v.row) * int64(maxBatch)
	v.mem = v.fileBytes + ioBytes
	return v, nil
}
