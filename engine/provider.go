package engine

import (
	"errors"
	"fmt"

	ort "github.com/yalue/onnxruntime_go"
)

// ProviderStatus says which execution provider an engine's sessions run on.
type ProviderStatus struct {
	// Requested is the normalised Options.Provider: "cpu", "cuda" or "tensorrt".
	Requested string
	// Active is the provider every session of the engine uses: Requested, or
	// "cpu" after a fallback.
	Active string
	// Fallback is why Active is not Requested (the probe's error); nil when
	// they are the same.
	Fallback error
}

// FellBack reports whether the engine runs on the CPU although a GPU provider
// was asked for.
func (s ProviderStatus) FellBack() bool { return s.Fallback != nil }

// Provider returns which execution provider the engine's sessions use, and why
// it is not the one asked for when New fell back to the CPU.
func (e *Engine) Provider() ProviderStatus { return e.provStatus }

// ProviderOf returns the execution provider variant id's sessions use: the
// engine's, or the CPU for an application registered OnCPU. It returns an
// error wrapping ErrUnknownVariant or ErrClosed.
func (e *Engine) ProviderOf(id VariantID) (string, error) {
	v, err := e.lookup(id)
	if err != nil {
		return "", err
	}
	return e.providerOf(v).Name, nil
}

// guard calls Options.Guard for v, if set, and returns its release (a no-op
// otherwise).
func (e *Engine) guard(v *variant) func() {
	if e.opts.Guard == nil {
		return func() {}
	}
	if r := e.opts.Guard(v.id, e.providerOf(v).Name); r != nil {
		return r
	}
	return func() {}
}

// padded reports whether v's batches are padded (Options.PadBatches): not
// those of an application registered OnCPU beside a GPU provider.
func (e *Engine) padded(v *variant) bool { return e.opts.PadBatches && !v.onCPU }

func (e *Engine) providerOf(v *variant) providerConfig {
	if v.onCPU {
		return providerConfig{Name: ProviderCPU}
	}
	return e.prov
}

// decideProvider is New's choice of provider once req was probed: req when the
// probe succeeded (probeErr nil); otherwise the CPU provider when fallback is
// allowed, or an error wrapping ErrProvider. It is pure, so the decision is
// tested without a GPU.
func decideProvider(req providerConfig, probeErr error, fallback bool) (providerConfig, ProviderStatus, error) {
	st := ProviderStatus{Requested: req.Name, Active: req.Name}
	switch {
	case probeErr == nil:
		return req, st, nil
	case req.Name == ProviderCPU:
		// The CPU provider is never probed; an error here is not a provider's.
		return providerConfig{}, st, probeErr
	case !fallback:
		if errors.Is(probeErr, ErrProvider) {
			return providerConfig{}, st, probeErr
		}
		return providerConfig{}, st, fmt.Errorf("%w: %s: %v", ErrProvider, req.Name, probeErr)
	}
	st.Active, st.Fallback = ProviderCPU, probeErr
	return providerConfig{Name: ProviderCPU}, st, nil
}

// probeProvider checks that sessions can use p: it appends p to fresh session
// options, creates a session of a one-node model (y = x + x) and runs it once.
// Appending finds out whether the library has the provider and can load its
// libraries (libonnxruntime_providers_cuda.so and CUDA's); creating the session
// whether a device answers (no GPU, no driver, a wrong device_id); the run
// whether its kernels work. The CPU provider is not probed.
func probeProvider(p providerConfig) error {
	if p.Name == ProviderCPU {
		return nil
	}
	so, err := ort.NewSessionOptions()
	if err != nil {
		return fmt.Errorf("%w: %s: session options: %v", ErrProvider, p.Name, err)
	}
	defer so.Destroy()
	if err := appendProvider(so, p); err != nil {
		return err
	}
	return runProbe(so, p.Name)
}

// runProbe creates a session of the probe model with so and runs it once.
func runProbe(so *ort.SessionOptions, name string) error {
	s, err := ort.NewDynamicAdvancedSessionWithONNXData(probeModel(), []string{"x"}, []string{"y"}, so)
	if err != nil {
		return fmt.Errorf("%w: %s: creating a session: %v", ErrProvider, name, err)
	}
	defer s.Destroy()
	x, err := ort.NewTensor(ort.NewShape(1, 2), []float32{1, 2.5})
	if err != nil {
		return fmt.Errorf("%w: %s: probe input: %v", ErrProvider, name, err)
	}
	defer x.Destroy()
	y, err := ort.NewEmptyTensor[float32](ort.NewShape(1, 2))
	if err != nil {
		return fmt.Errorf("%w: %s: probe output: %v", ErrProvider, name, err)
	}
	defer y.Destroy()
	if err := s.Run([]ort.Value{x}, []ort.Value{y}); err != nil {
		return fmt.Errorf("%w: %s: running a session: %v", ErrProvider, name, err)
	}
	if d := y.GetData(); d[0] != 2 || d[1] != 5 {
		return fmt.Errorf("%w: %s: the probe model computed %v + itself as %v", ErrProvider, name, []float32{1, 2.5}, d)
	}
	return nil
}

// probeModel is an ONNX model of one Add node, y = x + x, float32 [1, 2]: the
// protobuf written out by hand (onnx.proto's field numbers), so the engine needs
// no model file and no protobuf library to probe a provider.
func probeModel() []byte {
	dim := msg(1, varint(1, 1))                      // TensorShapeProto.Dimension{dim_value: 1}
	dim2 := msg(1, varint(1, 2))                     // {dim_value: 2}
	shape := msg(2, append(dim, dim2...))            // TypeProto.Tensor.shape
	tensor := msg(1, append(varint(1, 1), shape...)) // TypeProto.tensor_type{elem_type: FLOAT}
	value := func(field int, name string) []byte {   // GraphProto.input/output: ValueInfoProto
		return msg(field, append(str(1, name), msg(2, tensor)...))
	}
	node := msg(1, concat(str(1, "x"), str(1, "x"), str(2, "y"), str(4, "Add"))) // GraphProto.node
	graph := concat(node, str(2, "probe"), value(11, "x"), value(12, "y"))
	return concat(
		varint(1, 8), // ir_version
		str(2, "sneakgate"),
		msg(7, graph),
		msg(8, varint(2, 13)), // opset_import{domain: "", version: 13}
	)
}

// varint, str and msg encode one protobuf field: a varint, a string and an
// embedded message.
func varint(field int, v uint64) []byte { return appendUvarint(tag(field, 0), v) }
func str(field int, s string) []byte    { return msg(field, []byte(s)) }
func msg(field int, b []byte) []byte {
	return append(appendUvarint(tag(field, 2), uint64(len(b))), b...)
}
func tag(field, wire int) []byte { return appendUvarint(nil, uint64(field<<3|wire)) }

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func concat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}
