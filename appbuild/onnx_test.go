package appbuild

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// A minimal ONNX writer for the error-case tests: models that no real export
// would produce on purpose (NaN outputs, a fixed batch axis, batch-mixing
// graphs, a class count other variants disagree with). Field numbers are
// onnx.proto's.

type pb []byte

func (b pb) key(num, typ int) pb { return binary.AppendUvarint(b, uint64(num<<3|typ)) }
func (b pb) varint(num int, v int64) pb {
	return binary.AppendUvarint(b.key(num, 0), uint64(v))
}
func (b pb) bytes(num int, v []byte) pb {
	b = binary.AppendUvarint(b.key(num, 2), uint64(len(v)))
	return append(b, v...)
}
func (b pb) str(num int, s string) pb { return b.bytes(num, []byte(s)) }

// valueInfo is a float tensor with dims (-1 = a symbolic "N" batch dim).
func valueInfo(name string, dims ...int64) []byte {
	var shape pb
	for _, d := range dims {
		var dim pb
		if d < 0 {
			dim = dim.str(2, "N")
		} else {
			dim = dim.varint(1, d)
		}
		shape = shape.bytes(1, dim)
	}
	tensor := pb(nil).varint(1, 1).bytes(2, shape)
	typ := pb(nil).bytes(1, tensor)
	return pb(nil).str(1, name).bytes(2, typ)
}

func floatTensor(name string, dims []int64, vals []float32) []byte {
	var t pb
	for _, d := range dims {
		t = t.varint(1, d)
	}
	t = t.varint(2, 1).str(8, name)
	raw := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return t.bytes(9, raw)
}

type node struct {
	op      string
	in, out []string
	ints    map[string]int64
}

func (n node) encode() []byte {
	var b pb
	for _, i := range n.in {
		b = b.str(1, i)
	}
	for _, o := range n.out {
		b = b.str(2, o)
	}
	b = b.str(4, n.op)
	for k, v := range n.ints {
		a := pb(nil).str(1, k).varint(3, v).varint(20, 2) // type INT
		if k == "axes" {
			a = pb(nil).str(1, k).varint(8, v).varint(20, 7) // type INTS, one value
		}
		b = b.bytes(5, a)
	}
	return b
}

// writeONNX writes a model (opset 13) to dir/name.onnx and returns its path.
func writeONNX(t *testing.T, dir, name string, inputs, outputs [][]byte, inits [][]byte, nodes []node) string {
	t.Helper()
	var g pb
	for _, n := range nodes {
		g = g.bytes(1, n.encode())
	}
	g = g.str(2, name)
	for _, i := range inits {
		g = g.bytes(5, i)
	}
	for _, i := range inputs {
		g = g.bytes(11, i)
	}
	for _, o := range outputs {
		g = g.bytes(12, o)
	}
	m := pb(nil).varint(1, 8).bytes(8, pb(nil).str(1, "").varint(2, 13)).bytes(7, g)
	p := filepath.Join(dir, name+".onnx")
	if err := os.WriteFile(p, m, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// linearModel writes x[N, d] @ W[d, k] (+ an optional op on the result) with
// deterministic weights scaled by 1/255; batchDim is the input's first dim
// (-1: dynamic).
func linearModel(t *testing.T, dir, name string, d, k int, post string, batchDim int64) string {
	t.Helper()
	w := make([]float32, d*k)
	for i := range w {
		w[i] = float32((i*7919)%23-11) / 255
	}
	nodes := []node{{op: "MatMul", in: []string{"x", "W"}, out: []string{"z"}}}
	switch post {
	case "":
	case "Softmax":
		nodes = append(nodes, node{op: "Softmax", in: []string{"z"}, out: []string{"y"}, ints: map[string]int64{"axis": -1}})
	case "MixBatch": // z - mean over the batch: depends on the other samples
		nodes = append(nodes, node{op: "ReduceMean", in: []string{"z"}, out: []string{"m"}, ints: map[string]int64{"axes": 0}},
			node{op: "Sub", in: []string{"z", "m"}, out: []string{"y"}})
	default: // a unary op: Log (NaN on negatives), Sigmoid...
		nodes = append(nodes, node{op: post, in: []string{"z"}, out: []string{"y"}})
	}
	nodes[len(nodes)-1].out = []string{"out"} // the last node writes the graph output
	return writeONNX(t, dir, name,
		[][]byte{valueInfo("x", batchDim, int64(d))},
		[][]byte{valueInfo("out", batchDim, int64(k))},
		[][]byte{floatTensor("W", []int64{int64(d), int64(k)}, w)}, nodes)
}
