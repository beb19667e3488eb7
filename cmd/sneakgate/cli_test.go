package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/sneakgate/sneakgate/gateway"
)

func TestDefaultModels(t *testing.T) {
	t.Chdir(t.TempDir())
	installed := filepath.Join(t.TempDir(), "models")
	if got := defaultModels([]string{"/nonexistent", installed}); got != "models" {
		t.Errorf("nothing exists: %q, want models", got)
	}
	os.Mkdir(installed, 0o755)
	if got := defaultModels([]string{"/nonexistent", installed}); got != installed {
		t.Errorf("no ./models: %q, want %q", got, installed)
	}
	os.Mkdir("models", 0o755)
	if got := defaultModels([]string{installed}); got != "models" {
		t.Errorf("./models exists: %q, want models", got)
	}
}

// Console logs carry no colours when the output is not a terminal.
func TestConsoleLogWithoutColorsOffTerminal(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(gateway.LogConfig{Level: "info", Format: "console"}, &buf)
	log.Warn().Str("k", "v").Msg("hello")
	if bytes.Contains(buf.Bytes(), []byte("\x1b[")) || !bytes.Contains(buf.Bytes(), []byte("WRN hello k=v")) {
		t.Errorf("log line %q", buf.String())
	}
}
