// Package engine runs the model variants that application manifests describe, on
// ONNX Runtime, and keeps track of which are resident under a memory budget.
//
// # Basics
//
// New initialises ONNX Runtime (once per process, from Options.LibraryPath or
// $SNEAKGATE_ORT_LIB; scripts/install-ort.sh installs the library). Register
// adds an application's variants without loading them. Load creates a
// variant's session and Unload destroys it; both return the measured duration,
// which is what a model swap costs. Run is one real batched forward pass over
// any number of requests and returns one class distribution per request:
//
//	e, err := engine.New(engine.Options{MemoryBudgetBytes: 64 << 20})
//	err = e.Register(app)                       // app from manifest.Load
//	id := engine.VariantID{App: "fashion", Variant: "mlp"}
//	err = e.Profile(ctx)                        // every variant: load, latency per batch size, unload
//	p, _ := e.ProfileOf(id)                     // p.LatencyAt(12), p.Load, p.MemBytes
//	_, err = e.Load(id)                         // ErrOverBudget: unload something first
//	probs, err := e.Run(id, [][]float32{x1, x2}) // probs[i] has K values
//
// A session's first passes are slower than its steady ones; Warm runs the
// unmeasured passes (at the batch size it is given and at 1) that make the next
// ones steady, as the gateway does at scheduler.max_batch for every variant it
// loads at start (and for a reload's new versions).
//
// Inputs are fed as the manifest says: the data input takes the request's
// offset/length slice, a zeros input (a recurrent state, whose batch axis may be
// in the middle, e.g. [2, -1, 128]) gets zeros, a const input (e.g. Silero's int64
// sample rate) gets its value. Every request of a batch starts from a zero state.
// Outputs are read as the manifest says: logits get a softmax (in float64),
// probabilities are used as they are, and a score p becomes [1-p, p].
//
// On its first Load a variant's real inputs and output (names, dtypes, shapes,
// a dynamic batch axis) are checked against the manifest; a mismatch is an
// error wrapping ErrModelMismatch that names the variant and every difference.
//
// A panic while loading a variant or in a forward pass of it (a manifest that
// slipped past validation, a bug) does not reach the caller's goroutine: the
// call returns a *PanicError (wrapping ErrPanic) naming the application, the
// variant and the panic's value, so that a variant the engine cannot run fails
// its own load, profile, warm-up or batch and the engine serves the others.
//
// # Memory budget
//
// MemBytes, what a variant counts against Options.MemoryBudgetBytes, is the ONNX
// file's size plus the input and output buffers the engine keeps for the
// largest profiled batch. It is known before loading, so Load refuses with
// ErrOverBudget before allocating anything, and it is deterministic, so the
// scheduler can plan evictions from it and a restart gives the same plan. The
// process's RSS growth across a load was rejected as the measure: glibc reuses
// memory a previous Unload freed, so the same model measures anything from 0
// to several megabytes depending on what ran before.
//
// Register refuses, with ErrBatchMemory, a variant whose batch buffers would
// take more than BatchBytesLimit (1 GiB), or Options.MemoryBudgetBytes when
// that is larger: the input and output buffers for the largest batch and the
// inputs Profile measures it on (at least two of the largest batches), about
// 12 bytes per input value per sample of the largest batch. They are allocated
// without the budget's say when the budget is 0, so a large input_size at a
// large batch size was a fatal out of memory at the first profile, not an
// error. ONNX Runtime's own memory for a batch is not counted.
//
// MemBytes is a lower bound, not the whole footprint. With ONNX Runtime 1.30 on
// the CPU (one intra-op thread), the RSS growth across a load and one batch of 32,
// over repeated trials of the models under models/, was up to 2.5 times the file
// size for the MLPs, 3-7 MB for the Fashion-MNIST LeNet and CNN (their activation
// arena), up to 24 MB for the 1.8 MB random forest (ONNX Runtime expands the tree
// ensemble) and up to 18 MB for Silero VAD v5 (a 2.3 MB file). Leave headroom: a
// budget of a quarter to a tenth of the memory set aside for models is a safe
// start. With glibc's default settings an Unload makes its memory reusable by
// later loads but the RSS hardly shrinks; starting the process with
// MALLOC_MMAP_THRESHOLD_=131072 makes large frees go back to the system. The
// engine never evicts by itself: the caller (the scheduler) decides what to
// unload.
//
// # Concurrency
//
// All methods are safe for concurrent use. The intended use is one worker
// goroutine calling Run while another calls Load, Unload, Resident or Profile.
// Run holds only its variant's lock for the forward pass: loading or unloading
// other variants proceeds meanwhile. Unload of a variant waits for a running
// batch of that variant to finish, and a Run that starts after Unload began
// returns ErrNotLoaded. Two Runs of the same variant are serialised (they
// share buffers); Runs of different variants may run in parallel. Load,
// Unload and Profile of one variant are serialised. Budget reservations are
// made before the session is created, so concurrent Loads never overshoot.
//
// # Caveats
//
//   - The ONNX Runtime environment lives until the process exits; Close releases
//     the engine's sessions only. All engines of a process use the same library.
//   - The first Load of a variant also opens a temporary session for the I/O
//     check; its time is not part of the returned duration. Profile loads every
//     variant once, so later loads are checked already.
//   - Run keeps no reference to its inputs; its result is freshly allocated. Input
//     and output tensors are reused per variant and batch size up to the largest
//     profiled batch size; larger batches work but allocate.
//   - Values are not range-checked: the gateway validates requests.
//   - Profile timings include the input copy and the output conversion, i.e. what
//     a Run costs the gateway. They are measured on an idle engine; a busy machine
//     runs slower.
//   - CUDA and TensorRT are passed through to ONNX Runtime. New probes a GPU
//     provider with a one-node model before it returns; when that fails (a
//     CPU-only library, CUDA's libraries missing, no device) New fails with
//     ErrProvider, or with Options.FallbackToCPU runs on the CPU, logs a
//     warning and says so in Engine.Provider. The CUDA library that
//     scripts/install-ort-gpu.sh installs has only ONNX Runtime's V1 CUDA API,
//     which onnxruntime_go does not wrap: cudalegacy.go calls it (its options
//     are device_id, gpu_mem_limit, arena_extend_strategy,
//     cudnn_conv_algo_search, do_copy_in_default_stream). Profiles are cached
//     per provider (the cache key names the provider that runs).
package engine
