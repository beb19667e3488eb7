package gateway

import (
	"context"
	"log/slog"
	"net"
	"strings"

	"github.com/rs/zerolog"
)

// zerologHandler routes a library's slog records (the embedded broker's) to zerolog,
// one level down: the broker's info is our debug.
type zerologHandler struct{ log zerolog.Logger }

func (h zerologHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.log.GetLevel() <= level(l)
}

func level(l slog.Level) zerolog.Level {
	switch {
	case l >= slog.LevelError:
		return zerolog.ErrorLevel
	case l >= slog.LevelWarn:
		return zerolog.WarnLevel
	case l >= slog.LevelInfo:
		return zerolog.DebugLevel
	}
	return zerolog.TraceLevel
}

func (h zerologHandler) Handle(_ context.Context, r slog.Record) error {
	lv := level(r.Level)
	if lv == zerolog.WarnLevel && closedConn(r) {
		// The embedded broker warns when a client's connection is closed under
		// its reader: every normal disconnect. Not an operator's concern.
		lv = zerolog.DebugLevel
	}
	e := h.log.WithLevel(lv)
	r.Attrs(func(a slog.Attr) bool {
		e = e.Str(a.Key, a.Value.String())
		return true
	})
	e.Msg(r.Message)
	return nil
}

func (h zerologHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := h.log.With()
	for _, a := range as {
		c = c.Str(a.Key, a.Value.String())
	}
	return zerologHandler{c.Logger()}
}

func (h zerologHandler) WithGroup(name string) slog.Handler {
	return zerologHandler{h.log.With().Str("group", name).Logger()}
}

// closedConn reports whether r carries an error saying the connection was closed
// (net.ErrClosed, read by a listener after its client went away).
func closedConn(r slog.Record) bool {
	closed := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" && strings.Contains(a.Value.String(), net.ErrClosed.Error()) {
			closed = true
			return false
		}
		return true
	})
	return closed
}
