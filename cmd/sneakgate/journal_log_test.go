package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"
)

// Under systemd each log line starts with its syslog priority, which journald
// files it at; JSON and console lines alike.
func TestJournalWriterPrefixesPriorities(t *testing.T) {
	var buf bytes.Buffer
	log := zerolog.New(journalWriter{out: &buf})
	log.Error().Msg("e")
	log.Warn().Msg("w")
	log.Info().Msg("i")
	log.Debug().Msg("d")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{`<3>{"level":"error"`, `<4>{"level":"warn"`, `<6>{"level":"info"`, `<7>{"level":"debug"`}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d: %q", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
	buf.Reset()
	cw := zerolog.ConsoleWriter{Out: &buf, NoColor: true, PartsExclude: []string{zerolog.TimestampFieldName}}
	clog := zerolog.New(journalWriter{out: &buf, console: &cw})
	clog.Warn().Str("k", "v").Msg("careful")
	if got := buf.String(); !strings.HasPrefix(got, "<4>WRN careful") || strings.Count(got, "\n") != 1 {
		t.Errorf("console line %q, want one line starting <4>WRN careful", got)
	}
}

func TestToJournalComparesTheStream(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JOURNAL_STREAM", "")
	if toJournal(f) {
		t.Error("journal without JOURNAL_STREAM")
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1))
	if toJournal(f) {
		t.Error("journal for another stream")
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	if !toJournal(f) {
		t.Error("not the journal although JOURNAL_STREAM names this stream")
	}
	if toJournal(&bytes.Buffer{}) {
		t.Error("a buffer taken for the journal")
	}
}
