package appbuild

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/sneakgate/sneakgate/manifest"
)

// ErrModel wraps every error about a variant's ONNX model: unreadable, inputs
// that do not fit the data, outputs that are neither logits nor probabilities.
var ErrModel = errors.New("bad model")

// plan is one variant as the build will write it: the manifest entry (file
// still the source path) and what is known of its output before running it.
type plan struct {
	spec manifest.Variant
	src  string
	// width is the output's values per sample when the model declares them
	// (0: only known after a run).
	width int
	// kind is the output kind the base spec declares ("" = detect).
	kind string
	// notes are said in the report (choices made).
	notes []string
}

func (p *plan) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: variant %s (%s): "+format, append([]any{ErrModel, p.spec.Name, p.src}, args...)...)
}

// preferredOutputs are output names taken first when a model has several float
// outputs.
var preferredOutputs = []string{"logits", "probabilities", "probs", "output", "scores", "score"}

// planVariant reads the model's inputs and outputs and completes the manifest
// entry: base (may be nil) gives inputs, output, family and params; what it
// leaves out is inferred for a model with one input, whose rows are d values.
func planVariant(name, src string, base *manifest.Variant, d int, so *ort.SessionOptions) (*plan, error) {
	p := &plan{src: src}
	if base != nil {
		p.spec = *base
		p.spec.Inputs = slices.Clone(base.Inputs)
	}
	p.spec.Name, p.spec.File = name, src
	p.kind = p.spec.Output.Kind
	fi, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("%w: variant %s: %w", ErrModel, name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, p.errorf("not a regular file")
	}
	ins, outs, err := ort.GetInputOutputInfoWithOptions(src, so)
	if err != nil {
		return nil, p.errorf("ONNX Runtime cannot read it: %v", err)
	}
	if len(p.spec.Inputs) == 0 {
		if err := p.inferInput(ins, d); err != nil {
			return nil, err
		}
	} else if err := p.checkDataInput(ins, d); err != nil {
		return nil, err
	}
	if err := p.pickOutput(outs); err != nil {
		return nil, err
	}
	if p.spec.Params == 0 {
		if n, err := countParams(src); err == nil {
			p.spec.Params = n
		} else {
			p.notes = append(p.notes, fmt.Sprintf("parameters not counted: %v", err))
		}
	}
	if p.spec.Family == "" {
		p.spec.Family = "onnx"
	}
	return p, nil
}

func dimsString(s ort.Shape) string { return fmt.Sprint([]int64(s)) }

// inferInput describes the model's only input as the data input.
func (p *plan) inferInput(ins []ort.InputOutputInfo, d int) error {
	if len(ins) != 1 {
		var names []string
		for _, in := range ins {
			names = append(names, fmt.Sprintf("%q %s", in.Name, dimsString(in.Dimensions)))
		}
		return p.errorf("the model has %d inputs (%s); say how to feed each in a -base spec "+
			"(variants[].inputs with kind data, zeros or const; see models/README.md)", len(ins), strings.Join(names, ", "))
	}
	in := ins[0]
	if in.OrtValueType != ort.ONNXTypeTensor {
		return p.errorf("input %q is a %s, not a tensor", in.Name, in.OrtValueType)
	}
	dtype := ""
	switch in.DataType {
	case ort.TensorElementDataTypeFloat:
	case ort.TensorElementDataTypeInt64:
		dtype = "int64"
	default:
		return p.errorf("input %q is %s; the gateway feeds float32 (or int64): export the model with a float32 input", in.Name, in.DataType)
	}
	dims := in.Dimensions
	if len(dims) < 2 || dims[0] != -1 {
		return p.errorf("input %q has shape %s: the first axis must be a dynamic batch axis "+
			"(torch.onnx.export(..., dynamic_axes={%q: {0: \"batch\"}}))", in.Name, dimsString(dims), in.Name)
	}
	shape := []int64{-1}
	known, unknown := int64(1), 0
	for _, x := range dims[1:] {
		if x > 0 {
			known *= x
		} else {
			unknown++
		}
		shape = append(shape, x)
	}
	switch {
	case unknown == 0 && known != int64(d):
		return p.errorf("input %q has shape %s: %d values per sample, but the rows of X have %d",
			in.Name, dimsString(dims), known, d)
	case unknown == 1:
		if int64(d)%known != 0 {
			return p.errorf("input %q has shape %s: no size of its dynamic axis gives the %d values per row of X",
				in.Name, dimsString(dims), d)
		}
		for i := 1; i < len(shape); i++ {
			if shape[i] <= 0 {
				shape[i] = int64(d) / known
			}
		}
		p.notes = append(p.notes, fmt.Sprintf("input %q declared %s, fed as %v", in.Name, dimsString(dims), shape))
	case unknown > 1:
		return p.errorf("input %q has shape %s with %d dynamic axes besides the batch; give its shape in a -base spec",
			in.Name, dimsString(dims), unknown)
	}
	p.spec.Inputs = []manifest.Input{{Name: in.Name, Kind: "data", DType: dtype, Shape: shape}}
	return nil
}

// checkDataInput checks a base-described data input against the row width.
func (p *plan) checkDataInput(ins []ort.InputOutputInfo, d int) error {
	for _, in := range p.spec.Inputs {
		if in.Kind != "data" {
			continue
		}
		n := in.Length
		if n == 0 {
			n = d - in.Offset
		}
		if in.Offset < 0 || n <= 0 || in.Offset+n > d {
			return p.errorf("data input %q: offset %d length %d do not fit the %d values per row of X", in.Name, in.Offset, in.Length, d)
		}
		per := int64(1)
		for _, x := range in.Shape {
			if x > 0 {
				per *= x
			}
		}
		if per != int64(n) {
			return p.errorf("data input %q: shape %v takes %d values per sample, the slice of X has %d", in.Name, in.Shape, per, n)
		}
	}
	return nil
}

// pickOutput chooses the output (the base's, else the only float tensor, else
// a preferred name, else the first float tensor) and reads its width.
func (p *plan) pickOutput(outs []ort.InputOutputInfo) error {
	var cands []ort.InputOutputInfo
	for _, o := range outs {
		if o.OrtValueType == ort.ONNXTypeTensor && o.DataType == ort.TensorElementDataTypeFloat {
			cands = append(cands, o)
		}
	}
	var all []string
	for _, o := range outs {
		all = append(all, fmt.Sprintf("%q (%s %s)", o.Name, o.OrtValueType, o.DataType))
	}
	var out *ort.InputOutputInfo
	if name := p.spec.Output.Name; name != "" {
		for i := range outs {
			if outs[i].Name == name {
				out = &outs[i]
			}
		}
		if out == nil {
			return p.errorf("the model has no output %q (outputs: %s)", name, strings.Join(all, ", "))
		}
		if out.OrtValueType != ort.ONNXTypeTensor || out.DataType != ort.TensorElementDataTypeFloat {
			return p.errorf("output %q is not a float32 tensor: neither logits nor probabilities", name)
		}
	} else {
		switch {
		case len(cands) == 0:
			return p.errorf("no float32 tensor output (outputs: %s): neither logits nor probabilities "+
				"(a scikit-learn export needs options={'zipmap': False})", strings.Join(all, ", "))
		case len(cands) == 1:
			out = &cands[0]
		default:
			for _, pref := range preferredOutputs {
				for i := range cands {
					if out == nil && strings.EqualFold(cands[i].Name, pref) {
						out = &cands[i]
					}
				}
			}
			if out == nil {
				out = &cands[0]
			}
			p.notes = append(p.notes, fmt.Sprintf("output %q chosen of %d float outputs", out.Name, len(cands)))
		}
		p.spec.Output.Name = out.Name
	}
	dims := out.Dimensions
	if len(dims) == 0 || dims[0] != -1 {
		return p.errorf("output %q has shape %s: the first axis must be a dynamic batch axis", out.Name, dimsString(dims))
	}
	w := int64(1)
	for _, x := range dims[1:] {
		if x <= 0 {
			return nil // known after a run
		}
		w *= x
	}
	p.width = int(w)
	return nil
}
