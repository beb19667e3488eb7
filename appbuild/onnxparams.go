package appbuild

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// countParams returns the number of float parameters of the ONNX model at path,
// counted as models/train/common.py (onnx_params) counts them: float
// initializers and Constant node tensors with more than one element,
// tree-ensemble thresholds and leaf weights (nodes_values, class_weights), and
// for a node with subgraphs (If, Loop) the largest subgraph. It reads the
// protobuf wire format directly (ONNX's onnx.proto field numbers).
func countParams(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var graph []byte
	err = pbWalk(b, func(num, typ int, _ uint64, data []byte) error {
		if num == 7 && typ == 2 { // ModelProto.graph
			graph = data
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("%s: not an ONNX model: %w", path, err)
	}
	if graph == nil {
		return 0, fmt.Errorf("%s: not an ONNX model: no graph", path)
	}
	n, err := graphParams(graph, 0)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

var errProto = errors.New("malformed protobuf")

func graphParams(g []byte, depth int) (int64, error) {
	if depth > 16 {
		return 0, fmt.Errorf("%w: subgraphs nested too deeply", errProto)
	}
	var n int64
	err := pbWalk(g, func(num, typ int, _ uint64, data []byte) error {
		if typ != 2 {
			return nil
		}
		switch num {
		case 5: // GraphProto.initializer
			size, float, err := tensorInfo(data)
			if err != nil {
				return err
			}
			if float && size > 1 {
				n += size
			}
		case 1: // GraphProto.node
			c, err := nodeParams(data, depth)
			if err != nil {
				return err
			}
			n += c
		}
		return nil
	})
	return n, err
}

// tensorInfo returns a TensorProto's element count and whether it is a float
// type (FLOAT, FLOAT16, DOUBLE).
func tensorInfo(t []byte) (size int64, float bool, err error) {
	size = 1
	err = pbWalk(t, func(num, typ int, v uint64, data []byte) error {
		switch {
		case num == 1 && typ == 0: // dims, unpacked
			size *= int64(v)
		case num == 1 && typ == 2: // dims, packed
			for len(data) > 0 {
				d, k := uvarint(data)
				if k <= 0 {
					return errProto
				}
				size *= int64(d)
				data = data[k:]
			}
		case num == 2 && typ == 0: // data_type
			float = v == 1 || v == 10 || v == 11
		}
		return nil
	})
	return size, float, err
}

func nodeParams(node []byte, depth int) (int64, error) {
	var op string
	var attrs [][]byte
	err := pbWalk(node, func(num, typ int, _ uint64, data []byte) error {
		switch {
		case num == 4 && typ == 2:
			op = string(data)
		case num == 5 && typ == 2:
			attrs = append(attrs, data)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	var n, best int64
	for _, a := range attrs {
		var name string
		var floats int64
		var tensor, graph []byte
		err := pbWalk(a, func(num, typ int, _ uint64, data []byte) error {
			switch {
			case num == 1 && typ == 2:
				name = string(data)
			case num == 5 && typ == 2:
				tensor = data
			case num == 6 && typ == 2:
				graph = data
			case num == 7 && typ == 2: // floats, packed
				floats += int64(len(data) / 4)
			case num == 7 && typ == 5:
				floats++
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		switch {
		case strings.HasPrefix(op, "TreeEnsemble"):
			if name == "nodes_values" || name == "class_weights" {
				n += floats
			}
		case op == "Constant":
			if name == "value" && tensor != nil {
				size, float, err := tensorInfo(tensor)
				if err != nil {
					return 0, err
				}
				if float && size > 1 {
					n += size
				}
			}
		case graph != nil:
			c, err := graphParams(graph, depth+1)
			if err != nil {
				return 0, err
			}
			best = max(best, c)
		}
	}
	return n + best, nil
}

// pbWalk calls fn for every field of the protobuf message b: its number, wire
// type, value (varint and fixed types) and bytes (length-delimited).
func pbWalk(b []byte, fn func(num, typ int, v uint64, data []byte) error) error {
	for len(b) > 0 {
		key, k := uvarint(b)
		if k <= 0 {
			return errProto
		}
		b = b[k:]
		num, typ := int(key>>3), int(key&7)
		if num == 0 {
			return errProto
		}
		var v uint64
		var data []byte
		switch typ {
		case 0:
			v, k = uvarint(b)
			if k <= 0 {
				return errProto
			}
			b = b[k:]
		case 1:
			if len(b) < 8 {
				return errProto
			}
			b = b[8:]
		case 5:
			if len(b) < 4 {
				return errProto
			}
			b = b[4:]
		case 2:
			l, k := uvarint(b)
			if k <= 0 || l > uint64(len(b)-k) {
				return errProto
			}
			data = b[k : k+int(l)]
			b = b[k+int(l):]
		default:
			return errProto
		}
		if err := fn(num, typ, v, data); err != nil {
			return err
		}
	}
	return nil
}

// uvarint decodes a varint; k <= 0 on error.
func uvarint(b []byte) (uint64, int) {
	var x uint64
	for i := 0; i < len(b) && i < 10; i++ {
		c := b[i]
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return x, i + 1
		}
	}
	return 0, -1
}
