package engine

import "errors"

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
