// Command vadscores runs a pretrained Silero VAD model through ONNX Runtime on
// every window of a sample file and writes the raw speech probabilities as JSON.
// models/train/vad.py uses them to fit the calibration head it appends to each
// model (Python has no ONNX Runtime here).
//
// Each window is 576 samples at 16 kHz (64 context + 512 new), run independently
// with a zero state, exactly as the gateway runs the vad application:
//
//	-kind v5      inputs input [B,576], state [2,B,128] zeros, sr int64 scalar 16000
//	-kind nosr    inputs input [B,576], state [2,B,128] zeros
//	-kind legacy  inputs input [B,512] (the 512 new samples), sr, h and c [2,B,64] zeros
//
// Usage: go run ./models/tools/vadscores -kind v5 -model m.onnx -data w.sgs -out s.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/sneakgate/sneakgate/dataset"
)

const defaultLib = "/tmp/ort/package/bin/napi-v6/linux/x64/libonnxruntime.so.1"

func main() {
	kind := flag.String("kind", "v5", "input scheme: v5, nosr or legacy")
	model := flag.String("model", "", "ONNX file")
	data := flag.String("data", "", "sample file of 576-sample windows")
	out := flag.String("out", "", "output JSON file")
	flag.Parse()
	if err := run(*kind, *model, *data, *out); err != nil {
		fmt.Fprintln(os.Stderr, "vadscores:", err)
		os.Exit(1)
	}
}

func run(kind, model, data, out string) error {
	lib := os.Getenv("SNEAKGATE_ORT_LIB")
	if lib == "" {
		lib = defaultLib
	}
	ort.SetSharedLibraryPath(lib)
	if err := ort.InitializeEnvironment(); err != nil {
		return err
	}
	defer ort.DestroyEnvironment()
	set, err := dataset.Read(data)
	if err != nil {
		return err
	}
	if set.D != 576 {
		return fmt.Errorf("%s: rows have %d values, want 576", data, set.D)
	}
	var ins, outs []string
	switch kind {
	case "v5":
		ins, outs = []string{"input", "state", "sr"}, []string{"output"}
	case "nosr":
		ins, outs = []string{"input", "state"}, []string{"output"}
	case "legacy":
		ins, outs = []string{"input", "sr", "h", "c"}, []string{"output"}
	default:
		return fmt.Errorf("unknown -kind %q", kind)
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return err
	}
	defer opts.Destroy()
	if err := opts.SetIntraOpNumThreads(2); err != nil {
		return err
	}
	s, err := ort.NewDynamicAdvancedSession(model, ins, outs, opts)
	if err != nil {
		return err
	}
	defer s.Destroy()
	scores := make([]float32, 0, set.N)
	const bs = 64
	for start := 0; start < set.N; start += bs {
		b := min(bs, set.N-start)
		var x []float32
		for i := start; i < start+b; i++ {
			row := set.Row(i)
			if kind == "legacy" {
				row = row[64:]
			}
			x = append(x, row...)
		}
		vals, err := inputs(kind, b, x)
		if err != nil {
			return err
		}
		o := []ort.Value{nil}
		err = s.Run(vals, o)
		for _, v := range vals {
			v.Destroy()
		}
		if err != nil {
			return err
		}
		scores = append(scores, o[0].(*ort.Tensor[float32]).GetData()...)
		o[0].Destroy()
	}
	if len(scores) != set.N {
		return fmt.Errorf("%d scores for %d windows", len(scores), set.N)
	}
	buf, _ := json.Marshal(scores)
	return os.WriteFile(out, buf, 0o644)
}

func inputs(kind string, b int, x []float32) ([]ort.Value, error) {
	n := int64(len(x) / b)
	in, err := ort.NewTensor(ort.NewShape(int64(b), n), x)
	if err != nil {
		return nil, err
	}
	sr, err := ort.NewScalar(int64(16000))
	if err != nil {
		return nil, err
	}
	switch kind {
	case "v5":
		st, err := ort.NewEmptyTensor[float32](ort.NewShape(2, int64(b), 128))
		return []ort.Value{in, st, sr}, err
	case "nosr":
		sr.Destroy()
		st, err := ort.NewEmptyTensor[float32](ort.NewShape(2, int64(b), 128))
		return []ort.Value{in, st}, err
	default:
		h, err := ort.NewEmptyTensor[float32](ort.NewShape(2, int64(b), 64))
		if err != nil {
			return nil, err
		}
		c, err := ort.NewEmptyTensor[float32](ort.NewShape(2, int64(b), 64))
		return []ort.Value{in, sr, h, c}, err
	}
}
