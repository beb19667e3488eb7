package engine

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	ort "github.com/yalue/onnxruntime_go"
)

// LibraryEnv is the environment variable that names the ONNX Runtime shared
// library when Options.LibraryPath is empty.
const LibraryEnv = "SNEAKGATE_ORT_LIB"

// DefaultProfileRuns is used by New when Options.ProfileRuns is 0.
const DefaultProfileRuns = 7

// DefaultProfileGap is used by New when Options.ProfileGap is 0.
const DefaultProfileGap = time.Millisecond

// DefaultBatchSizes returns the batch sizes profiled when Options.BatchSizes is empty.
func DefaultBatchSizes() []int { return []int{1, 2, 4, 8, 16, 32} }

// Providers: the execution providers Options.Provider accepts.
const (
	ProviderCPU      = "cpu"
	ProviderCUDA     = "cuda"
	ProviderTensorRT = "tensorrt"
)

// Options configures an Engine. The zero value is usable when SNEAKGATE_ORT_LIB
// names the library: CPU provider, ONNX Runtime's default thread counts, no
// residency budget, DefaultBatchSizes, no warm-up, DefaultProfileRuns,
// DefaultProfileGap.
type Options struct {
	// LibraryPath is the libonnxruntime.so file; empty means $SNEAKGATE_ORT_LIB.
	// Only the first Engine of a process loads the library; later ones must name
	// the same file (or nothing).
	LibraryPath string
	// IntraOpThreads and InterOpThreads size ONNX Runtime's thread pools per
	// session; 0 leaves ONNX Runtime's default (one intra-op thread per core).
	IntraOpThreads, InterOpThreads int
	// Provider is the execution provider: "cpu" (default), "cuda" or "tensorrt".
	Provider string
	// ProviderOptions are passed as they are to the CUDA or TensorRT provider
	// (e.g. "device_id": "0"); they must be empty for "cpu".
	ProviderOptions map[string]string
	// FallbackToCPU makes New run on the CPU provider, with a warning in the
	// log and Engine.Provider saying why, when the CUDA or TensorRT provider
	// cannot be used: the library has no such provider, its libraries or
	// CUDA's do not load, there is no device. Without it New fails with
	// ErrProvider. Either way New probes a GPU provider with a one-node model
	// before it returns, so the failure shows at start-up, not at the first Load.
	FallbackToCPU bool
	// SessionConfig entries are added to the session options as they are, e.g.
	// "session.intra_op.allow_spinning": "0" to stop idle threads spinning.
	SessionConfig map[string]string
	// MemoryBudgetBytes bounds the summed MemBytes of resident variants; 0 = unlimited.
	MemoryBudgetBytes int64
	// MaxResident bounds the number of resident variants; 0 = unlimited.
	MaxResident int
	// BatchSizes are the profiled batch sizes, increasing; empty = DefaultBatchSizes.
	// The largest is also the largest batch whose buffers are kept between runs;
	// Register refuses a variant whose buffers for it, with its profile inputs,
	// exceed BatchBytesLimit or MemoryBudgetBytes, whichever is larger
	// (ErrBatchMemory).
	BatchSizes []int
	// PadBatches runs every batch at the next size of BatchSizes, the rows
	// beyond its own zeroed (a batch larger than the largest runs as it is), so
	// that a session only ever sees those input shapes. On the CPU it only costs
	// the padding; on CUDA a session whose input shape changes between passes
	// pays cuDNN's per-shape set-up again at each change (on an H200, 4 to 68 ms
	// against 0.65 ms for a pass of resnet-m at a steady batch of 32,
	// docs/benchmarks.md, "GPU"): with one batch size and PadBatches, every
	// pass has one shape. Models must treat the samples of a batch
	// independently (every model here does). Applications registered OnCPU
	// beside a GPU provider are not padded: padding is for the GPU's shapes,
	// and on the CPU a padded pass costs what the larger batch costs
	// (vad/silero-legacy: 0.42 ms at 1, 3.66 ms at 32).
	PadBatches bool
	// WarmupRuns are unmeasured runs per batch size before profiling; 0 = none.
	WarmupRuns int
	// ProfileRuns are measured runs per batch size (the median is kept); 0 =
	// DefaultProfileRuns.
	ProfileRuns int
	// ProfileGap is how long Profile leaves the engine idle before each
	// measured run, so that a pass is measured as a serving engine runs one:
	// after its thread has waited for the batch, asleep, with the caches, the
	// TLB and the branch predictors no longer holding the model's path through
	// ONNX Runtime. Passes measured back to back cost the cheap models a sixth
	// to a half of what they cost after a wait (docs/benchmarks.md, "The
	// start-up profile measured after a pause"). 0 means DefaultProfileGap; a
	// negative value measures back to back (warm-up runs always are).
	ProfileGap time.Duration
	// ProfileCache is a directory where profiles are kept as JSON across
	// restarts; empty disables the cache.
	ProfileCache string
	// Logger receives load, unload and profile events (the caller tags the
	// component); the zero value discards them.
	Logger zerolog.Logger
	// Now is the clock used for every measured duration; nil means time.Now.
	Now func() time.Time
	// Guard, when set, is called before ONNX Runtime creates a variant's
	// session, before Profile's runs of it and before Warm's passes (a
	// session's first runs when the profile came from the cache), with the
	// provider they use; the
	// function it returns is called when they are over (also when they fail).
	// A process that dies in between (a crash inside a provider) never calls
	// it: the gateway keeps a marker on disk from one to the other to learn, at
	// its next start, which variant on which provider it died with
	// (gateway/loadguard.go).
	Guard func(id VariantID, provider string) (release func())
}

// withDefaults returns a copy of o with defaults applied, or an error wrapping
// ErrOptions.
func (o Options) withDefaults() (Options, error) {
	if o.LibraryPath == "" {
		o.LibraryPath = os.Getenv(LibraryEnv)
	}
	if o.IntraOpThreads < 0 || o.InterOpThreads < 0 {
		return o, fmt.Errorf("%w: thread counts must not be negative", ErrOptions)
	}
	if o.MemoryBudgetBytes < 0 || o.MaxResident < 0 {
		return o, fmt.Errorf("%w: budgets must not be negative", ErrOptions)
	}
	if len(o.BatchSizes) == 0 {
		o.BatchSizes = DefaultBatchSizes()
	} else {
		o.BatchSizes = slices.Clone(o.BatchSizes)
	}
	for i, b := range o.BatchSizes {
		if b < 1 || (i > 0 && b <= o.BatchSizes[i-1]) {
			return o, fmt.Errorf("%w: batch sizes %v must be positive and increasing", ErrOptions, o.BatchSizes)
		}
	}
	if o.WarmupRuns < 0 || o.ProfileRuns < 0 {
		return o, fmt.Errorf("%w: warm-up and profile runs must not be negative", ErrOptions)
	}
	if o.ProfileRuns == 0 {
		o.ProfileRuns = DefaultProfileRuns
	}
	switch {
	case o.ProfileGap == 0:
		o.ProfileGap = DefaultProfileGap
	case o.ProfileGap < 0:
		o.ProfileGap = 0
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.ProviderOptions = maps.Clone(o.ProviderOptions)
	o.SessionConfig = maps.Clone(o.SessionConfig)
	return o, nil
}

// maxBatch is the largest profiled batch size.
func (o *Options) maxBatch() int { return o.BatchSizes[len(o.BatchSizes)-1] }

// providerConfig is what New appends to the session options: the normalised
// provider name and its options.
type providerConfig struct {
	Name    string
	Options map[string]string
}

// providerFor maps Options.Provider and ProviderOptions to the provider to append.
// It is pure, so the mapping is tested without a GPU.
func providerFor(name string, opts map[string]string) (providerConfig, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	switch n {
	case "", ProviderCPU:
		if len(opts) > 0 {
			return providerConfig{}, fmt.Errorf("%w: the cpu provider takes no provider options, got %v",
				ErrProvider, slices.Sorted(maps.Keys(opts)))
		}
		return providerConfig{Name: ProviderCPU}, nil
	case ProviderCUDA, ProviderTensorRT:
		return providerConfig{Name: n, Options: maps.Clone(opts)}, nil
	}
	return providerConfig{}, fmt.Errorf("%w: %q is not one of cpu, cuda, tensorrt", ErrProvider, name)
}

// sessionOptions builds ONNX Runtime session options for o. The caller destroys
// them.
func sessionOptions(o *Options, p providerConfig) (*ort.SessionOptions, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("engine: session options: %w", err)
	}
	fail := func(err error) (*ort.SessionOptions, error) {
		so.Destroy()
		return nil, err
	}
	if o.IntraOpThreads > 0 {
		if err := so.SetIntraOpNumThreads(o.IntraOpThreads); err != nil {
			return fail(fmt.Errorf("%w: intra-op threads: %v", ErrOptions, err))
		}
	}
	if o.InterOpThreads > 0 {
		if err := so.SetInterOpNumThreads(o.InterOpThreads); err != nil {
			return fail(fmt.Errorf("%w: inter-op threads: %v", ErrOptions, err))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(o.SessionConfig)) {
		if err := so.AddSessionConfigEntry(k, o.SessionConfig[k]); err != nil {
			return fail(fmt.Errorf("%w: session config %q: %v", ErrOptions, k, err))
		}
	}
	if err := appendProvider(so, p); err != nil {
		return fail(err)
	}
	return so, nil
}

// appendProvider appends p to so; the CPU provider needs nothing.
func appendProvider(so *ort.SessionOptions, p providerConfig) error {
	switch p.Name {
	case ProviderCPU:
		return nil
	case ProviderCUDA:
		po, err := ort.NewCUDAProviderOptions()
		if err != nil {
			// A library built without CUDA but with the provider bridge (the one
			// scripts/install-ort-gpu.sh installs) refuses the V2 options ("CUDA
			// execution provider is not enabled in this build") but still loads
			// the CUDA provider through the V1 API.
			lerr := appendCUDALegacy(so, loadedLibrary(), p.Options)
			if lerr == nil {
				return nil
			}
			return fmt.Errorf("%w: cuda: creating provider options: %v; through the V1 API: %v",
				ErrProvider, err, strings.TrimPrefix(lerr.Error(), ErrProvider.Error()+": cuda: "))
		}
		defer po.Destroy()
		if err := po.Update(p.Options); err != nil {
			return fmt.Errorf("%w: cuda: provider options %v: %v", ErrProvider, p.Options, err)
		}
		if err := so.AppendExecutionProviderCUDA(po); err != nil {
			return fmt.Errorf("%w: cuda: %v (this ONNX Runtime library may be CPU-only)", ErrProvider, err)
		}
		return nil
	case ProviderTensorRT:
		po, err := ort.NewTensorRTProviderOptions()
		if err != nil {
			return fmt.Errorf("%w: tensorrt: creating provider options: %v", ErrProvider, err)
		}
		defer po.Destroy()
		if err := po.Update(p.Options); err != nil {
			return fmt.Errorf("%w: tensorrt: provider options %v: %v", ErrProvider, p.Options, err)
		}
		if err := so.AppendExecutionProviderTensorRT(po); err != nil {
			return fmt.Errorf("%w: tensorrt: %v (this ONNX Runtime library may be CPU-only)", ErrProvider, err)
		}
		return nil
	}
	return fmt.Errorf("%w: %q", ErrProvider, p.Name)
}
