package engine

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	ort "github.com/yalue/onnxruntime_go"
)

// session is a resident variant: the ONNX Runtime session and the tensors reused
// between runs. Buffers are sized for maxBatch samples; a batch of b <= maxBatch
// samples uses tensors viewing the first b samples of them, created on first use
// and kept until the session closes. Larger batches get temporary buffers. With
// padTo set, a batch runs at the size padTo gives (Options.PadBatches).
type session struct {
	// mu is held by run for the whole forward pass and by close, so a session is
	// never destroyed under a running batch.
	mu     sync.Mutex
	closed bool

	v        *variant
	sess     *ort.DynamicAdvancedSession
	maxBatch int
	bufs     buffers
	consts   []ort.Value // by input index; nil for non-const inputs
	batches  []*batchIO  // batches[b-1] serves batch size b
	padTo    []int       // the sizes batches are padded up to (increasing); nil: none
}

// buffers back the data, zeros and output tensors of a batch.
type buffers struct {
	dataF  []float32
	dataI  []int64
	zerosF []float32 // shared by every float32 zeros input (never written)
	zerosI []int64
	out    []float32 // nil when the output row shape is only known after a run
}

// batchIO holds the ONNX values of one batch size.
type batchIO struct {
	b       int
	inputs  []ort.Value
	outputs []ort.Value // one; nil until the first run when out is nil
	owned   []ort.Value // destroyed with the batch (consts are the session's)
}

func newBuffers(v *variant, b int, outKnown bool) buffers {
	var bf buffers
	zf, zi := 0, 0
	for _, in := range v.inputs {
		n := in.per * b
		switch {
		case in.kind == kindData && in.int64:
			bf.dataI = make([]int64, n)
		case in.kind == kindData:
			bf.dataF = make([]float32, n)
		case in.kind == kindZeros && in.int64:
			zi = max(zi, n)
		case in.kind == kindZeros:
			zf = max(zf, n)
		}
	}
	if zf > 0 {
		bf.zerosF = make([]float32, zf)
	}
	if zi > 0 {
		bf.zerosI = make([]int64, zi)
	}
	if outKnown {
		bf.out = make([]float32, v.row*b)
	}
	return bf
}

// newSession creates the ONNX Runtime session of v, whose I/O check has passed.
func newSession(v *variant, so *ort.SessionOptions, maxBatch int) (*session, error) {
	names := make([]string, len(v.inputs))
	for i, in := range v.inputs {
		names[i] = in.name
	}
	ds, err := ort.NewDynamicAdvancedSession(v.path, names, []string{v.spec.Output.Name}, so)
	if err != nil {
		return nil, fmt.Errorf("engine: load %s: %w", v.id, err)
	}
	_, outKnown := rowSize(v.outDims)
	s := &session{v: v, sess: ds, maxBatch: maxBatch, consts: make([]ort.Value, len(v.inputs)),
		batches: make([]*batchIO, maxBatch), bufs: newBuffers(v, maxBatch, outKnown)}
	for i, in := range v.inputs {
		if in.kind != kindConst {
			continue
		}
		c, err := newConst(&in)
		if err != nil {
			s.destroy()
			return nil, fmt.Errorf("engine: load %s: const input %q: %w", v.id, in.name, err)
		}
		s.consts[i] = c
	}
	return s, nil
}

// newConst makes the tensor of a const input: a scalar when its shape is empty.
func newConst(in *inputLayout) (ort.Value, error) {
	if len(in.shape) == 0 {
		if in.int64 {
			return ort.NewScalar(int64(math.Round(in.value)))
		}
		return ort.NewScalar(float32(in.value))
	}
	if in.int64 {
		d := make([]int64, in.per)
		for i := range d {
			d[i] = int64(math.Round(in.value))
		}
		return ort.NewTensor(ort.Shape(in.shape), d)
	}
	d := make([]float32, in.per)
	for i := range d {
		d[i] = float32(in.value)
	}
	return ort.NewTensor(ort.Shape(in.shape), d)
}

// newBatch creates the values for a batch of b samples over bf.
func (s *session) newBatch(b int, bf *buffers) (*batchIO, error) {
	io := &batchIO{b: b, inputs: make([]ort.Value, len(s.v.inputs)), outputs: make([]ort.Value, 1)}
	for i := range s.v.inputs {
		in := &s.v.inputs[i]
		n := in.per * b
		var (
			t   ort.Value
			err error
		)
		switch {
		case in.kind == kindConst:
			io.inputs[i] = s.consts[i]
			continue
		case in.kind == kindData && in.int64:
			t, err = ort.NewTensor(in.shapeFor(b), bf.dataI[:n])
		case in.kind == kindData:
			t, err = ort.NewTensor(in.shapeFor(b), bf.dataF[:n])
		case in.int64:
			t, err = ort.NewTensor(in.shapeFor(b), bf.zerosI[:n])
		default:
			t, err = ort.NewTensor(in.shapeFor(b), bf.zerosF[:n])
		}
		if err != nil {
			io.destroy()
			return nil, fmt.Errorf("engine: %s: input %q for batch %d: %w", s.v.id, in.name, b, err)
		}
		io.inputs[i] = t
		io.owned = append(io.owned, t)
	}
	if bf.out != nil {
		shape := make(ort.Shape, len(s.v.outDims))
		copy(shape, s.v.outDims)
		shape[0] = int64(b)
		t, err := ort.NewTensor(shape, bf.out[:b*s.v.row])
		if err != nil {
			io.destroy()
			return nil, fmt.Errorf("engine: %s: output for batch %d: %w", s.v.id, b, err)
		}
		io.outputs[0] = t
		io.owned = append(io.owned, t)
	}
	return io, nil
}

func (io *batchIO) destroy() {
	for _, t := range io.owned {
		t.Destroy()
	}
	if o := io.outputs[0]; o != nil && !contains(io.owned, o) {
		o.Destroy()
	}
	io.owned, io.outputs[0] = nil, nil
}

func contains(vs []ort.Value, x ort.Value) bool {
	for _, v := range vs {
		if v == x {
			return true
		}
	}
	return false
}

// run performs one forward pass over inputs (already validated) and writes one
// class distribution per input into dst.
func (s *session) run(inputs [][]float32, dst [][]float64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("%w: %s", ErrNotLoaded, s.v.id)
	}
	n := len(inputs) // the samples; the pass runs b >= n rows
	b := n
	if i, _ := slices.BinarySearch(s.padTo, n); i < len(s.padTo) {
		b = s.padTo[i]
	}
	bf := &s.bufs
	var io *batchIO
	if b <= s.maxBatch {
		io = s.batches[b-1]
	} else {
		tmp := newBuffers(s.v, b, bf.out != nil)
		bf = &tmp
	}
	if io == nil {
		var err error
		if io, err = s.newBatch(b, bf); err != nil {
			return err
		}
		if b <= s.maxBatch {
			s.batches[b-1] = io
		} else {
			defer io.destroy()
		}
	}

	off, w := s.v.dataOffset, s.v.dataLen
	if bf.dataF != nil {
		for i, x := range inputs {
			copy(bf.dataF[i*w:(i+1)*w], x[off:off+w])
		}
		clear(bf.dataF[n*w : b*w]) // padding: no earlier batch's samples
	} else {
		for i, x := range inputs {
			row := bf.dataI[i*w : (i+1)*w]
			for j, f := range x[off : off+w] {
				row[j] = int64(math.Round(float64(f)))
			}
		}
		clear(bf.dataI[n*w : b*w])
	}

	if err := s.sess.Run(io.inputs, io.outputs); err != nil {
		return fmt.Errorf("engine: run %s (batch %d): %w", s.v.id, b, err)
	}
	out := bf.out
	if out == nil {
		// The output row shape was unknown: ONNX Runtime allocated the output.
		// Check it once; keep it as this batch size's output buffer.
		var err error
		if out, err = s.adoptOutput(io); err != nil {
			return err
		}
	}
	r := s.v.row
	for i := range dst {
		s.v.kind.convert(out[i*r:(i+1)*r], dst[i])
	}
	return nil
}

// adoptOutput checks an output ONNX Runtime allocated and returns its data.
func (s *session) adoptOutput(io *batchIO) ([]float32, error) {
	o := io.outputs[0]
	if len(io.owned) > 0 && contains(io.owned, o) {
		return o.(*ort.Tensor[float32]).GetData(), nil
	}
	t, ok := o.(*ort.Tensor[float32])
	if !ok {
		o.Destroy()
		io.outputs[0] = nil
		return nil, fmt.Errorf("%w: %s: output %q is %T, want a float32 tensor",
			ErrModelMismatch, s.v.id, s.v.spec.Output.Name, o)
	}
	shape := t.GetShape()
	if n, known := rowSize(shape); len(shape) == 0 || shape[0] != int64(io.b) || !known || n != int64(s.v.row) {
		o.Destroy()
		io.outputs[0] = nil
		return nil, fmt.Errorf("%w: %s: output %q has shape %v for a batch of %d, want [%d, ...] with %d values per sample",
			ErrModelMismatch, s.v.id, s.v.spec.Output.Name, shape, io.b, io.b, s.v.row)
	}
	io.owned = append(io.owned, o)
	return t.GetData(), nil
}

// close waits for a running batch, then destroys the session. It returns how long
// the destruction itself took.
func (s *session) close(now func() time.Time) (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, nil
	}
	t0 := now()
	err := s.destroy()
	return now().Sub(t0), err
}

func (s *session) destroy() error {
	s.closed = true
	for i, io := range s.batches {
		if io != nil {
			io.destroy()
			s.batches[i] = nil
		}
	}
	for i, c := range s.consts {
		if c != nil {
			c.Destroy()
			s.consts[i] = nil
		}
	}
	var err error
	if s.sess != nil {
		err = s.sess.Destroy()
		s.sess = nil
	}
	s.bufs = buffers{}
	if err != nil {
		return errors.Join(fmt.Errorf("engine: unload %s", s.v.id), err)
	}
	return nil
}
