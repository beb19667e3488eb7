package engine

import (
	"fmt"
	"strings"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/sneakgate/sneakgate/manifest"
)

// dynamic is how ONNX Runtime reports a symbolic or unknown dimension.
const dynamic = -1

// checkIO compares the model's real inputs and outputs with the variant's
// manifest entry: every model input is declared and every declared input exists,
// with the same dtype and rank; the manifest's batch axis (-1) is dynamic in the
// model and every other declared dimension equals the model's unless the model
// leaves it dynamic; the output exists, is a float32 tensor with a dynamic first
// (batch) axis and, when its other dimensions are known, holds row values per
// sample. It returns an error wrapping ErrModelMismatch that names the variant
// and its model file (path) and lists every mismatch.
func checkIO(id VariantID, v *manifest.Variant, path string, row int, ins, outs []ort.InputOutputInfo) error {
	var bad []string
	add := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }

	model := map[string]ort.InputOutputInfo{}
	for _, in := range ins {
		model[in.Name] = in
	}
	declared := map[string]bool{}
	for _, in := range v.Inputs {
		declared[in.Name] = true
		mi, ok := model[in.Name]
		if !ok {
			add("input %q is not a model input (model inputs: %s)", in.Name, names(ins))
			continue
		}
		if mi.OrtValueType != ort.ONNXTypeTensor {
			add("input %q is a %s, not a tensor", in.Name, mi.OrtValueType)
			continue
		}
		if want := elemType(in.DType); mi.DataType != want {
			add("input %q: manifest dtype %s, model %s", in.Name, dtypeName(in.DType), mi.DataType)
		}
		if !shapeFits(in.Shape, mi.Dimensions) {
			add("input %q: manifest shape %v does not fit model shape %v (-1 = dynamic; the manifest's -1 must be dynamic in the model)",
				in.Name, in.Shape, []int64(mi.Dimensions))
		}
	}
	for _, mi := range ins {
		if !declared[mi.Name] {
			add("model input %q (%s) is not in the manifest", mi.Name, &mi)
		}
	}

	var out *ort.InputOutputInfo
	for i := range outs {
		if outs[i].Name == v.Output.Name {
			out = &outs[i]
		}
	}
	switch {
	case out == nil:
		add("output %q is not a model output (model outputs: %s)", v.Output.Name, names(outs))
	case out.OrtValueType != ort.ONNXTypeTensor:
		add("output %q is a %s, not a tensor (export without ZipMap)", out.Name, out.OrtValueType)
	case out.DataType != ort.TensorElementDataTypeFloat:
		add("output %q: want float32, model has %s", out.Name, out.DataType)
	case len(out.Dimensions) == 0 || out.Dimensions[0] != dynamic:
		add("output %q: shape %v has no dynamic first (batch) axis", out.Name, []int64(out.Dimensions))
	default:
		if n, known := rowSize(out.Dimensions); known && n != int64(row) {
			add("output %q: shape %v gives %d values per sample, %s output needs %d",
				out.Name, []int64(out.Dimensions), n, v.Output.Kind, row)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s (%s): %s", ErrModelMismatch, id, path, strings.Join(bad, "; "))
}

// shapeFits reports whether the manifest shape m fits the model shape d.
func shapeFits(m []int64, d ort.Shape) bool {
	if len(m) != len(d) {
		return false
	}
	for i := range m {
		switch {
		case m[i] == dynamic && d[i] != dynamic:
			return false
		case m[i] != dynamic && d[i] != dynamic && d[i] != m[i]:
			return false
		}
	}
	return true
}

// rowSize is the product of the dimensions after the first, and whether all of
// them are known.
func rowSize(d ort.Shape) (int64, bool) {
	n := int64(1)
	for _, x := range d[1:] {
		if x <= 0 {
			return 0, false
		}
		n *= x
	}
	return n, true
}

func names(infos []ort.InputOutputInfo) string {
	s := make([]string, len(infos))
	for i, in := range infos {
		s[i] = fmt.Sprintf("%q", in.Name)
	}
	return strings.Join(s, ", ")
}

// elemType maps a manifest dtype to ONNX Runtime's element type.
func elemType(dtype string) ort.TensorElementDataType {
	if dtype == "int64" {
		return ort.TensorElementDataTypeInt64
	}
	return ort.TensorElementDataTypeFloat
}

func dtypeName(dtype string) string {
	if dtype == "" {
		return "float32"
	}
	return dtype
}
