package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
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
	}
	for _, c := range cases {
		out, code := runBinary(t, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, output %q; want exit %d containing %q", c.args, code, out, c.code, c.want)
		}
	}
}

// TestServeDrainsOnSIGTERM starts the real binary against a real broker, waits
// until it is ready, sends SIGTERM, and expects a clean exit.
// The real binary reloads on SIGHUP and drains on SIGTERM.
func TestServeReloadsOnSIGHUPAndDrainsOnSIGTERM(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	dir := t.TempDir()
	models, _ := filepath.Abs("../../models/fashion/manifest.yaml")
	lib := os.Getenv("SNEAKGATE_ORT_LIB")
	if lib == "" {
		lib, _ = filepath.Abs("../../.cache/onnxruntime/libonnxruntime.so.1.30.0")
	}
	cfg := fmt.Sprintf(`log: {level: info, format: json}
mqtt: {broker: %q, client_id: sigterm-test}
store: {path: %q}
engine: {library: %q, warmup_runs: 1, profile_runs: 2, profile_cache: %q}
apps:
  - manifest: %q
`, b.URL(), filepath.Join(dir, "j.db"), lib, filepath.Join(dir, "profiles"), models)
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "serve", "-config", path)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var logs strings.Builder
	// waitFor reads the log until a line contains want (bounded).
	waitFor := func(want string) string {
		t.Helper()
		timeout := time.After(2 * time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("exited before logging %q:\n%s", want, logs.String())
				}
				logs.WriteString(l + "\n")
				if strings.Contains(l, want) {
					return l
				}
			case <-timeout:
				t.Fatalf("no %q in time:\n%s", want, logs.String())
			}
		}
	}
	waitFor("gateway ready")

	// SIGHUP reloads: an added application is served...
	sat, _ := filepath.Abs("../../models/satellite/manifest.yaml")
	if err := os.WriteFile(path, []byte(cfg+fmt.Sprintf("  - manifest: %q\n", sat)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if l := waitFor(`"reloaded"`); !strings.Contains(l, `"added":["satellite"]`) {
		t.Fatalf("reload log: %s", l)
	}
	// ...and a broken configuration is refused, naming the problem.
	if err := os.WriteFile(path, []byte(cfg+"bogus_key: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if l := waitFor("reload refused"); !strings.Contains(l, "bogus_key") {
		t.Fatalf("refused reload log: %s", l)
	}
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
