package engine

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
)

// outOfRange is in the value of a panic from slicing out of range.
const outOfRange = "slice bounds out of range"

// breakOffset gives a registered variant a data offset whose end overflows,
// as a manifest that slipped past validation did (offset math.MaxInt-2,
// length 4): every forward pass of it then slices a request input out of
// range. The manifest is not involved, so the test does not depend on what
// manifest.Validate refuses.
func breakOffset(t *testing.T, e *Engine, id VariantID) {
	t.Helper()
	v, err := e.lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	v.dataOffset = math.MaxInt - 2
}

// wantPanicError checks that err is a recovered panic of id while op whose
// text names the application and the variant and gives the panic's value
// (containing value).
func wantPanicError(t *testing.T, what string, err error, id VariantID, op, value string) {
	t.Helper()
	var pe *PanicError
	if !errors.Is(err, ErrPanic) || !errors.As(err, &pe) {
		t.Fatalf("%s: %v, want an error wrapping ErrPanic and a *PanicError", what, err)
	}
	if pe.Variant != id || pe.App != "lin" || pe.Op != op || pe.Value == nil {
		t.Errorf("%s: PanicError{App %q, Variant %s, Op %q, Value %v}, want app lin, variant %s, op %q and the panic's value",
			what, pe.App, pe.Variant, pe.Op, pe.Value, id, op)
	}
	for _, s := range []string{"application lin", "variant " + id.Variant, value} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: %q does not say %q", what, err, s)
		}
	}
}

// A panic while profiling, warming or running a variant (a forward pass that
// slices a request input out of range) is returned as an error naming the
// application, the variant and the panic; the variant is left as it was
// (profiled variants unloaded again, the budgets released), and the engine
// goes on serving its other variants.
func TestPanicsAreErrors(t *testing.T) {
	opts := Options{BatchSizes: []int{1, 2}, WarmupRuns: 1, ProfileRuns: 1, MaxResident: 2}
	e := newEngine(t, opts)
	if err := e.Register(linApp(t)); err != nil {
		t.Fatal(err)
	}
	breakOffset(t, e, idLogits)
	ctx := context.Background()
	x := [][]float32{{0.1, 0.2, 0.3, 0.4}}

	for name, profile := range map[string]func(context.Context, ...VariantID) error{"Profile": e.Profile, "ProfileBeside": e.ProfileBeside} {
		err := profile(ctx, idLogits)
		wantPanicError(t, name, err, idLogits, "run", outOfRange)
		if !strings.HasPrefix(err.Error(), "engine: profile lin/logits: ") {
			t.Errorf("%s: %q does not start with what failed", name, err)
		}
		if r := e.Resident(); len(r) != 0 {
			t.Errorf("resident after the failed %s: %v", name, r)
		}
		if b, n := e.Usage(); b != 0 || n != 0 {
			t.Errorf("usage after the failed %s: %d bytes, %d variants, want none", name, b, n)
		}
		if _, ok := e.ProfileOf(idLogits); ok {
			t.Errorf("%s of a panicking variant kept a profile", name)
		}
	}

	if _, err := e.Load(idLogits); err != nil {
		t.Fatal(err)
	}
	wantPanicError(t, "Warm", e.Warm(idLogits, 2), idLogits, "run", outOfRange)
	_, err := e.Run(idLogits, x)
	wantPanicError(t, "Run", err, idLogits, "run", outOfRange)
	// The session is not held by the failed pass: it unloads.
	if _, err := e.Unload(idLogits); err != nil {
		t.Fatal(err)
	}
	_, err = e.RunAll(ctx, idLogits, append(x, x...), 1)
	wantPanicError(t, "RunAll", err, idLogits, "run", outOfRange)
	if r := e.Resident(); len(r) != 0 {
		t.Errorf("resident after the failed RunAll: %v", r)
	}

	// The other variants of the application are unaffected.
	if err := e.Profile(ctx, idProbs, idTrees); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Load(idProbs); err != nil {
		t.Fatal(err)
	}
	if err := e.Warm(idProbs, 2); err != nil {
		t.Fatal(err)
	}
	if got, err := e.Run(idProbs, x); err != nil || len(got) != 1 {
		t.Fatalf("Run(%s) after the panics: %v, %v", idProbs, got, err)
	}
}

// A panic while a variant's session is being made (the I/O check, the session,
// its tensors) is returned by Load as an error, and the budget it reserved is
// released: a later Load of it succeeds.
func TestLoadPanicIsAnError(t *testing.T) {
	e := newEngine(t, Options{MaxResident: 1})
	if err := e.Register(linApp(t)); err != nil {
		t.Fatal(err)
	}
	e.creating = func(VariantID) {
		var s []int
		_ = s[len(s)-1] // index out of range
	}
	_, err := e.Load(idLogits)
	wantPanicError(t, "Load", err, idLogits, "load", "index out of range")
	if b, n := e.Usage(); b != 0 || n != 0 {
		t.Errorf("usage after the failed Load: %d bytes, %d variants, want none", b, n)
	}
	e.creating = nil
	if _, err := e.Load(idLogits); err != nil {
		t.Fatalf("Load after the panic: %v", err)
	}
}
