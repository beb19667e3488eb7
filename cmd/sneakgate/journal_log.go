package main

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/rs/zerolog"
)

// journalWriter prefixes every log line with its syslog priority ("<3>" for an
// error, "<4>" for a warning, ...). journald reads that prefix from a service's
// output (the unit's SyslogLevelPrefix=, on by default) and files the line at
// that priority, so `journalctl -u sneakgate -p warning` shows warnings and
// errors only. zerolog hands it each event's level (zerolog.LevelWriter); with
// the console format the line is rendered by console, a copy of the
// ConsoleWriter whose output is the prefixing writer.
type journalWriter struct {
	out     io.Writer
	console *zerolog.ConsoleWriter // nil: JSON lines
}

func (j journalWriter) Write(p []byte) (int, error) { return j.WriteLevel(zerolog.NoLevel, p) }

func (j journalWriter) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	pw := &prefixWriter{w: j.out, prefix: fmt.Sprintf("<%d>", syslogPriority(l))}
	if j.console != nil {
		cw := *j.console
		cw.Out = pw
		return cw.Write(p)
	}
	if _, err := pw.Write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// prefixWriter writes prefix and then p, in one write (one journal line).
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (pw *prefixWriter) Write(p []byte) (int, error) {
	b := make([]byte, 0, len(pw.prefix)+len(p))
	b = append(append(b, pw.prefix...), p...)
	if _, err := pw.w.Write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}

// syslogPriority maps a zerolog level to a syslog priority (sd-daemon(3)).
func syslogPriority(l zerolog.Level) int {
	switch l {
	case zerolog.PanicLevel:
		return 0 // emerg
	case zerolog.FatalLevel:
		return 2 // crit
	case zerolog.ErrorLevel:
		return 3 // err
	case zerolog.WarnLevel:
		return 4 // warning
	case zerolog.DebugLevel, zerolog.TraceLevel:
		return 7 // debug
	}
	return 6 // info, and lines without a level
}

// toJournal reports whether w is the stream systemd connected to the journal:
// $JOURNAL_STREAM holds that stream's device and inode (systemd.exec(5)).
func toJournal(w io.Writer) bool {
	f, ok := w.(*os.File)
	js := os.Getenv("JOURNAL_STREAM")
	if !ok || js == "" {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return js == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}
