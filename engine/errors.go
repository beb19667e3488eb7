package engine

import (
	"errors"
	"fmt"
)

// Errors returned by New.
var (
	// ErrNoLibrary is returned by New when neither Options.LibraryPath nor the
	// SNEAKGATE_ORT_LIB environment variable names the ONNX Runtime library, or
	// when the named file cannot be loaded.
	ErrNoLibrary = errors.New("engine: ONNX Runtime library not available")
	// ErrLibraryMismatch is returned by New when the process's ONNX Runtime
	// environment was already initialised from a different library file.
	ErrLibraryMismatch = errors.New("engine: ONNX Runtime already initialised from another library")
	// ErrProvider is returned by New when the execution provider is unknown or
	// cannot be appended to the session options (for example "cuda" with a
	// CPU-only library).
	ErrProvider = errors.New("engine: execution provider unavailable")
	// ErrOptions is returned by New when an option is out of range.
	ErrOptions = errors.New("engine: invalid options")
)

// Errors returned by Register.
var (
	// ErrAlreadyRegistered is returned by Register when an application of the same
	// name is already registered.
	ErrAlreadyRegistered = errors.New("engine: application already registered")
	// ErrModelFile is returned by Register when a variant's ONNX file is missing or
	// is not a regular file.
	ErrModelFile = errors.New("engine: model file unusable")
	// ErrBatchMemory is returned by Register when a variant's batch buffers at
	// the largest batch size would take more than BatchBytesLimit, or
	// Options.MemoryBudgetBytes when that is larger (see batchBytes).
	ErrBatchMemory = errors.New("engine: batch buffers over the memory limit")
)

// Errors returned by Load, Unload, Run and Profile.
var (
	// ErrUnknownVariant is returned when the VariantID names no registered variant.
	ErrUnknownVariant = errors.New("engine: unknown variant")
	// ErrOverBudget is returned by Load when making the variant resident would
	// exceed the memory or count budget. The engine never evicts on its own: the
	// caller unloads other variants first.
	ErrOverBudget = errors.New("engine: over residency budget")
	// ErrModelMismatch is returned by Load when the model's real inputs or output
	// do not match the manifest (names, dtypes, shapes, dynamic batch axis) or
	// when a forward pass returns an output of an unexpected shape.
	ErrModelMismatch = errors.New("engine: model does not match manifest")
	// ErrNotLoaded is returned by Run when the variant is not resident (also when
	// it is unloaded while Run waits for it).
	ErrNotLoaded = errors.New("engine: variant not loaded")
	// ErrBadInput is returned by Run when there are no inputs or an input does not
	// have the application's input_size values.
	ErrBadInput = errors.New("engine: bad input")
	// ErrClosed is returned by Register, Load, Unload, Run, Profile and MemBytes
	// after Close.
	ErrClosed = errors.New("engine: closed")
)

// ErrPanic is wrapped, as a *PanicError, by the error of a Load, Run, Warm,
// RunAll, Profile or ProfileBeside that panicked while loading a variant or in
// a forward pass of it.
var ErrPanic = errors.New("engine: panic")

// PanicError is a panic the engine recovered from while loading a variant (its
// I/O check, its session and tensors) or in a forward pass of it, and returned
// as an error instead: a variant the engine cannot run (a manifest that slipped
// past validation, a bug) then fails its own load, profile, warm-up or batch,
// not the process. The variant is left as after any failed call: a load or
// profile releases what it reserved and unloads what it loaded; a resident
// variant stays resident and may panic again on its next pass.
type PanicError struct {
	// App is the application's name; Variant the variant's id (its App is the
	// key the application was registered under: RegisterAs).
	App     string
	Variant VariantID
	// Op is "load" (Load, or the load of RunAll, Profile or ProfileBeside) or
	// "run" (a forward pass of Run, Warm, RunAll, Profile or ProfileBeside).
	Op string
	// Value is what was passed to panic; Stack is the panicking goroutine's
	// stack where the engine recovered.
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	what := "a forward pass"
	if e.Op == "load" {
		what = "loading it"
	}
	return fmt.Sprintf("engine: application %s, variant %s: %s panicked: %v", e.App, e.Variant.Variant, what, e.Value)
}

// Is reports whether target is ErrPanic.
func (e *PanicError) Is(target error) bool { return target == ErrPanic }

// Unwrap returns Value when it is an error (a runtime.Error, say), else nil.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
