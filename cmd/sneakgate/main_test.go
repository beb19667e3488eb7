package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/internal/testenv"
)

// Whole-binary tests: build the real sneakgate and check flags, exit codes and
// the SIGTERM drain.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sneakgate-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "sneakgate")
	if out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runBinary(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("run %v: %v", args, err)
	return "", -1
}

func TestExitCodes(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	traceRefused := filepath.Join(t.TempDir(), "refused.trace")
	os.WriteFile(bad, []byte("apps:\n  - manifest: x\nscheduler:\n  policy: magic\n"), 0o600)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"version"}, 0, "sneakgate"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"serve", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"serve", "-config", "/nonexistent.yaml"}, 1, "/nonexistent.yaml"},
		{[]string{"serve", "-config", bad}, 1, "scheduler.policy"},
		{[]string{"bench", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"bench", "-encoding", "xml"}, 1, "encoding must be b64 or json"},
		{[]string{"tail", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"tail", "-status", "maybe"}, 2, `-status "maybe"`},
		{[]string{"tail", "extra"}, 2, "unexpected arguments"},
		{[]string{"tail", "-config", "/nonexistent.yaml"}, 1, "/nonexistent.yaml"},
		{[]string{"tail", "-broker", "tcp://127.0.0.1:1"}, 1, "tcp://127.0.0.1:1"},
		{[]string{"-h"}, 2, "follow the gateway's replies"},
		{[]string{"help"}, 0, "journal check|salvage FILE"},
		{[]string{"version", "x"}, 2, "version takes no arguments"},
		{[]string{"serve", "extra"}, 2, "unexpected arguments"},
		{[]string{"devsim", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"devsim", "extra"}, 2, "unexpected arguments"},
		{[]string{"devsim", "-devices", "0"}, 2, "-devices 0"},
		{[]string{"devsim", "-app", "nosuch", "-models", "../../models"}, 1, "give -manifest DIR/manifest.yaml"},
		{[]string{"devsim", "-trace", traceRefused, "-rate", "-1"}, 1, "rate"},
		{[]string{"eval", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"eval", "extra"}, 2, "unexpected arguments"},
		{[]string{"bench", "extra"}, 2, "unexpected arguments"},
		{[]string{"app"}, 2, "want build or check"},
		{[]string{"app", "frob"}, 2, "unknown app command"},
		{[]string{"app", "build", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"app", "check"}, 2, "no DIR"},
		{[]string{"journal"}, 2, "want check or salvage"},
		{[]string{"journal", "check"}, 2, "no FILE"},
		{[]string{"journal", "salvage", "x.db"}, 2, "-out is required"},
	}
	for _, c := range cases {
		out, code := runBinary(t, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, output %q; want exit %d containing %q", c.args, code, out, c.code, c.want)
		}
	}
	if _, err := os.Stat(traceRefused); !os.IsNotExist(err) {
		t.Errorf("devsim -trace with a refused configuration left %s (%v)", traceRefused, err)
	}
}

// Every command's -h begins with its one-line description and exits 2.
func TestHelpDescribesEachCommand(t *testing.T) {
	for _, c := range commands {
		if c.name == "help" {
			continue
		}
		out, code := runBinary(t, c.name, "-h")
		if want := "sneakgate " + c.name + ": " + c.about + "\n"; code != 2 || !strings.HasPrefix(out, want) {
			t.Errorf("%s -h: exit %d, output starting %.80q; want exit 2 starting %q", c.name, code, out, want)
		}
	}
}

// devsim's -models defaults to ./models, or where it does not exist to
// PREFIX/share/sneakgate/models of the binary's PREFIX (make install's layout).
func TestModelsFallback(t *testing.T) {
	prefix := t.TempDir()
	installed := filepath.Join(prefix, "share", "sneakgate", "models")
	bin := filepath.Join(prefix, "bin", "sneakgate")
	if err := os.MkdirAll(installed, 0o755); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(bin), 0o755)
	if err := os.Link(binary, bin); err != nil {
		t.Skipf("hard link of the test binary: %v", err)
	}
	for _, c := range []struct {
		localModels bool
		want        string
	}{{false, installed}, {true, "models"}} {
		cwd := t.TempDir()
		if c.localModels {
			os.Mkdir(filepath.Join(cwd, "models"), 0o755)
		}
		cmd := exec.Command(bin, "devsim", "-h")
		cmd.Dir = cwd
		out, _ := cmd.CombinedOutput()
		if want := fmt.Sprintf("(default %q)", c.want); !strings.Contains(string(out), want) {
			t.Errorf("./models present: %v: devsim -h does not say %s:\n%s", c.localModels, want, out)
		}
	}
}

// TestServeDrainsOnSIGTERM starts the real binary against a real broker, waits
// until it is ready, sends SIGTERM, and expects a clean exit.
// served is the real binary serving a configuration file, with its log.
type served struct {
	t      *testing.T
	cmd    *exec.Cmd
	path   string // the configuration file
	config string // its first content
	lines  <-chan string
	logs   strings.Builder
}

// startServe starts `sneakgate serve` on a configuration for broker b with the given
// applications (manifest paths relative to this directory), and waits until it
// is ready.
func startServe(t *testing.T, b *mqtttest.Broker, clientID string, manifests ...string) *served {
	t.Helper()
	dir := t.TempDir()
	lib := testenv.ORTLib(t)
	cfg := fmt.Sprintf(`log: {level: info, format: json}
mqtt: {broker: %q, client_id: %s}
store: {path: %q}
engine: {library: %q, warmup_runs: 1, profile_runs: 2, profile_cache: %q}
apps:
`, b.URL(), clientID, filepath.Join(dir, "j.db"), lib, filepath.Join(dir, "profiles"))
	for _, m := range manifests {
		abs, _ := filepath.Abs(m)
		cfg += fmt.Sprintf("  - manifest: %q\n", abs)
	}
	s := &served{t: t, path: filepath.Join(dir, "c.yaml"), config: cfg}
	if err := os.WriteFile(s.path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(binary, "serve", "-config", s.path)
	_, s.lines = startBinary(t, s.cmd)
	s.waitFor("gateway ready")
	return s
}

// startBinary starts cmd (killed when the test ends) and returns the lines of
// its stdout and of its stderr, each on a channel closed at its end.
func startBinary(t *testing.T, cmd *exec.Cmd) (stdout, stderr <-chan string) {
	t.Helper()
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return lineChan(outPipe), lineChan(errPipe)
}

// lineChan sends the lines read from r on a channel closed at r's end.
func lineChan(r io.Reader) <-chan string {
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return lines
}

// waitFor reads the log until a line contains want (bounded) and returns it.
func (s *served) waitFor(want string) string {
	s.t.Helper()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("exited before logging %q:\n%s", want, s.logs.String())
			}
			s.logs.WriteString(l + "\n")
			if strings.Contains(l, want) {
				return l
			}
		case <-timeout:
			s.t.Fatalf("no %q in time:\n%s", want, s.logs.String())
		}
	}
}

// reload writes config to the configuration file and sends SIGHUP.
func (s *served) reload(config string) {
	s.t.Helper()
	if err := os.WriteFile(s.path, []byte(config), 0o600); err != nil {
		s.t.Fatal(err)
	}
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		s.t.Fatal(err)
	}
}

// The real binary reloads on SIGHUP and drains on SIGTERM.
func TestServeReloadsOnSIGHUPAndDrainsOnSIGTERM(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	s := startServe(t, b, "sigterm-test", "../../models/fashion/manifest.yaml")
	cmd, cfg, waitFor := s.cmd, s.config, s.waitFor
	var logs strings.Builder
	// SIGHUP reloads: an added application is served...
	sat, _ := filepath.Abs("../../models/satellite/manifest.yaml")
	s.reload(cfg + fmt.Sprintf("  - manifest: %q\n", sat))
	if l := waitFor(`"reloaded"`); !strings.Contains(l, `"added":["satellite"]`) {
		t.Fatalf("reload log: %s", l)
	}
	// ...and a broken configuration is refused, naming the problem.
	s.reload(cfg + "bogus_key: 1\n")
	if l := waitFor("reload refused"); !strings.Contains(l, "bogus_key") {
		t.Fatalf("refused reload log: %s", l)
	}
	lines := s.lines
	go func() {
		for range lines { // keep draining: a full pipe would block the gateway
		}
	}()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("no exit within a minute of SIGTERM")
	}
}

// A reload cut short by the shutdown is logged as abandoned, not refused; one
// that failed on its own is refused, whether or not the gateway is stopping.
func TestReloadAbandoned(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	load := errors.New("apps[1]: missing.yaml: no such file")
	stopped := fmt.Errorf("gateway: engine: %w", context.Canceled)
	if abandoned(ctx, stopped) || abandoned(ctx, load) {
		t.Error("abandoned while the gateway runs")
	}
	cancel()
	if !abandoned(ctx, stopped) {
		t.Error("a reload ended by the shutdown's cancellation is not abandoned")
	}
	if abandoned(ctx, load) {
		t.Error("a configuration error during the shutdown reads as abandoned")
	}
}

// SIGTERM during start-up (here while the engine profiles the variants) is a
// requested, clean stop: logged as abandoned, exit status 0, as a SIGTERM a
// moment later would be. It exited 1, and systemd marked the unit failed.
func TestSIGTERMDuringStartup(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	dir := t.TempDir()
	lib := testenv.ORTLib(t)
	abs, _ := filepath.Abs("../../models/fashion/manifest.yaml")
	cfg := fmt.Sprintf(`log: {level: info, format: json}
mqtt: {broker: %q, client_id: startup-stop}
store: {path: %q}
engine: {library: %q, warmup_runs: 2, profile_runs: 5, profile_cache: %q}
apps:
  - manifest: %q
`, b.URL(), filepath.Join(dir, "j.db"), lib, filepath.Join(dir, "profiles"), abs)
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &served{t: t, path: path, config: cfg}
	s.cmd = exec.Command(binary, "serve", "-config", path)
	_, s.lines = startBinary(t, s.cmd)
	// The first of fashion's seven variants: the six others (resnet-m's alone
	// takes hundreds of milliseconds at these run counts) and the warm-up are
	// still ahead when the signal lands.
	s.waitFor(`"profiled"`)
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for l := range s.lines {
		s.logs.WriteString(l + "\n")
	}
	err := s.cmd.Wait()
	if !strings.Contains(s.logs.String(), "start-up abandoned") {
		t.Fatalf("no 'start-up abandoned' line (the SIGTERM did not land during start-up?):\n%s", s.logs.String())
	}
	if err != nil {
		t.Errorf("exit after a SIGTERM during start-up: %v, want status 0\n%s", err, s.logs.String())
	}
}
