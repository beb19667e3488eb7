package gateway

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
)

// appPanicError is a panic the gateway recovered from while building an
// application (buildApp), registering and profiling its variants
// (prepareEngine) or measuring its cascade or peek curve: at start-up it fails
// the start, in a reload it refuses the reload, and the previous configuration
// keeps serving. The engine returns its own panics, in loading a variant or in a
// forward pass, as errors (engine.PanicError); this catches the rest.
type appPanicError struct {
	app   string // the application's name; empty before its manifest is read
	entry string // then its configuration entry: apps[i] (manifest)
	step  string // what panicked, for the message
	value any
	stack []byte
}

func (e *appPanicError) Error() string {
	where := e.entry
	if e.app != "" {
		where = "application " + e.app
	}
	return fmt.Sprintf("gateway: %s: %s panicked: %v", where, e.step, e.value)
}

// recoverApp, deferred by a step of preparing application app (or, before its
// name is known, configuration entry entry) with the address of the step's
// error result, returns a panic of the step as an *appPanicError in that
// result instead of letting it unwind to the process.
func recoverApp(err *error, app, entry, step string) {
	if p := recover(); p != nil {
		*err = &appPanicError{app: app, entry: entry, step: step, value: p, stack: debug.Stack()}
	}
}

// logPanic logs the panic err carries, if any (a refused reload, a failed
// start, as msg says): the application, the variant when the engine's, the
// panic's value (the configuration entry instead of the application when the
// manifest was not read yet), and with debug logging the stack where it was recovered.
func (g *Gateway) logPanic(err error, msg string) {
	var (
		ep    *engine.PanicError
		ap    *appPanicError
		ev    *zerolog.Event
		stack []byte
	)
	switch {
	case errors.As(err, &ep):
		ev = g.log.Error().Str("app", ep.App).Str("variant", ep.Variant.Variant).Str("key", ep.Variant.App).
			Str("op", ep.Op).Str("panic", fmt.Sprint(ep.Value))
		stack = ep.Stack
	case errors.As(err, &ap):
		ev = g.log.Error().Str("step", ap.step).Str("panic", fmt.Sprint(ap.value))
		if ap.app != "" {
			ev = ev.Str("app", ap.app)
		} else {
			ev = ev.Str("entry", ap.entry)
		}
		stack = ap.stack
	default:
		return
	}
	if g.log.GetLevel() <= zerolog.DebugLevel {
		ev = ev.Str("stack", string(stack))
	}
	ev.Msg(msg)
}
