package engine

import (
	"maps"
	"runtime"

	"github.com/sneakgate/sneakgate/internal/cachefile"
	"github.com/sneakgate/sneakgate/manifest"
)

// OutputKey is everything a variant's class distributions depend on besides
// its inputs: the model file's content, how its answer is read, and how ONNX
// Runtime runs it (its version, the provider and its options, the session
// settings and thread counts, which fix the order of floating-point
// reductions). A result computed from Run or RunAll outputs and kept across
// restarts (the gateway's cascade and peek curves, gateway/curvecache.go; the
// engine's profiles, cache.go) is keyed with it. It is a struct of plain
// fields, so it marshals to JSON.
type OutputKey struct {
	ModelSHA256     string            `json:"model_sha256"`
	Runtime         string            `json:"onnxruntime"`
	Provider        string            `json:"provider"`
	ProviderOptions map[string]string `json:"provider_options,omitempty"`
	SessionConfig   map[string]string `json:"session_config,omitempty"`
	IntraOpThreads  int               `json:"intra_op_threads"`
	InterOpThreads  int               `json:"inter_op_threads"`
	CPUs            int               `json:"cpus"`
	Arch            string            `json:"arch"`
	InputSize       int               `json:"input_size"`
	Classes         int               `json:"classes"`
	Inputs          []manifest.Input  `json:"inputs"`
	Output          manifest.Output   `json:"output"`
}

// OutputKey returns the key of variant id's outputs. It hashes the model file
// as it is now (the file a later Load reads). It returns an error wrapping
// ErrUnknownVariant or ErrClosed, or the error reading the file.
func (e *Engine) OutputKey(id VariantID) (OutputKey, error) {
	v, err := e.lookup(id)
	if err != nil {
		return OutputKey{}, err
	}
	return e.outputKey(v)
}

// outputKey is OutputKey of v (also the first part of its profile's cache key,
// cache.go).
func (e *Engine) outputKey(v *variant) (OutputKey, error) {
	sum, err := cachefile.SHA256(v.path)
	if err != nil {
		return OutputKey{}, err
	}
	prov := e.providerOf(v)
	return OutputKey{
		ModelSHA256: sum, Runtime: runtimeVersion(),
		Provider: prov.Name, ProviderOptions: maps.Clone(prov.Options), SessionConfig: maps.Clone(e.opts.SessionConfig),
		IntraOpThreads: e.opts.IntraOpThreads, InterOpThreads: e.opts.InterOpThreads,
		CPUs: runtime.NumCPU(), Arch: runtime.GOARCH,
		InputSize: v.app.InputSize, Classes: v.classes, Inputs: v.spec.Inputs, Output: v.spec.Output,
	}, nil
}
