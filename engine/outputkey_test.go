package engine

import (
	"errors"
	"reflect"
	"testing"
)

// OutputKey names what a variant's outputs depend on: the same variant gives
// the same key, the same model file read another way (linear.onnx as logits and
// as probabilities) another key with the same model hash, and another thread
// count another key; a returned key is the caller's to modify.
func TestOutputKey(t *testing.T) {
	e1 := newEngine(t, Options{IntraOpThreads: 1, SessionConfig: map[string]string{"session.intra_op.allow_spinning": "0"}})
	registerAll(t, e1)
	k1, err := e1.OutputKey(idLogits)
	if err != nil {
		t.Fatal(err)
	}
	again, err := e1.OutputKey(idLogits)
	if err != nil || !reflect.DeepEqual(k1, again) {
		t.Fatalf("the same variant twice: %+v then %+v (%v)", k1, again, err)
	}
	if len(k1.ModelSHA256) != 64 || k1.Runtime == "" || k1.Provider != ProviderCPU || k1.IntraOpThreads != 1 ||
		k1.InputSize != 4 || k1.Classes != 3 || k1.Output.Kind != "logits" || len(k1.Inputs) != 1 {
		t.Errorf("key %+v", k1)
	}
	probs, err := e1.OutputKey(idProbs)
	if err != nil {
		t.Fatal(err)
	}
	if probs.ModelSHA256 != k1.ModelSHA256 || reflect.DeepEqual(probs, k1) {
		t.Errorf("linear.onnx as probabilities: %+v, as logits: %+v; want the same model hash, another key", probs, k1)
	}
	mlp, _ := e1.OutputKey(idMLP)
	if mlp.ModelSHA256 == k1.ModelSHA256 {
		t.Errorf("mlp.onnx and linear.onnx hash alike: %s", mlp.ModelSHA256)
	}
	k1.SessionConfig["session.intra_op.allow_spinning"] = "1"
	if k, _ := e1.OutputKey(idLogits); k.SessionConfig["session.intra_op.allow_spinning"] != "0" {
		t.Errorf("modifying a returned key changed the engine's: %+v", k)
	}

	e2 := newEngine(t, Options{IntraOpThreads: 2, SessionConfig: map[string]string{"session.intra_op.allow_spinning": "0"}})
	registerAll(t, e2)
	k2, err := e2.OutputKey(idLogits)
	if err != nil {
		t.Fatal(err)
	}
	if k2.IntraOpThreads != 2 || k2.ModelSHA256 != again.ModelSHA256 {
		t.Errorf("two intra-op threads: %+v", k2)
	}
	if _, err := e2.OutputKey(VariantID{"lin", "nope"}); !errors.Is(err, ErrUnknownVariant) {
		t.Errorf("unknown variant: %v, want ErrUnknownVariant", err)
	}
}
