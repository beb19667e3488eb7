package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

const pythonExample = "../examples/python/sneakgate_client.py"

// pythonWithPaho returns a Python 3 interpreter that can import paho-mqtt
// ($SNEAKGATE_PYTHON, else python3 on PATH, else Debian's /usr/bin/python3, which
// sees python3-paho-mqtt when a python3 earlier on PATH does not), or skips the
// test saying what is missing.
func pythonWithPaho(t *testing.T) string {
	t.Helper()
	var candidates []string
	if p := os.Getenv("SNEAKGATE_PYTHON"); p != "" {
		candidates = append(candidates, p)
	}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/python3")
	found := false
	for _, p := range candidates {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		found = true
		if exec.Command(p, "-c", "import paho.mqtt.client").Run() == nil {
			return p
		}
	}
	if !found {
		t.Skip("python3 not found: the Python example is not tested")
	}
	t.Skipf("paho-mqtt is not importable by %v: apt install python3-paho-mqtt to test the Python example", candidates)
	return ""
}

// writeF32 writes inputs as raw little-endian float32 values.
func writeF32(t *testing.T, inputs ...[]float32) string {
	t.Helper()
	var b []byte
	for _, in := range inputs {
		for _, v := range in {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
	}
	p := filepath.Join(t.TempDir(), "input.f32")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runPython runs the example with args against broker addr and returns its
// stdout lines (the replies, as received), its stderr and its exit status.
func runPython(t *testing.T, python, addr string, args ...string) ([]string, string, int) {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, append([]string{pythonExample, "--host", host, "--port", port}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	var lines []string
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, stderr.String(), code
}

// TestPythonExample runs examples/python/sneakgate_client.py against a real
// Mosquitto and gateway: real Fashion-MNIST samples sent as input_b64 with
// sent_at, replies matched by id and checked against the labels and the reply
// schema, TCP_NODELAY on; then a wrong-size input is rejected.
func TestPythonExample(t *testing.T) {
	python := pythonWithPaho(t)
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	startGateway(t, cfg, Options{})
	m, samples := fashionSamples(t)
	schema := replySchema(t)

	const n = 16
	inputs := make([][]float32, n)
	for i := range inputs {
		inputs[i] = samples.Row(i)
	}
	lines, stderr, code := runPython(t, python, b.Addr(), "--app", "fashion", "--device", "py-cam",
		"--input-f32", writeF32(t, inputs...), "--deadline-ms", "5000", "--sent-at", "--id-prefix", "py",
		"--timeout", "60")
	t.Logf("python stderr:\n%s", stderr)
	if code != 0 || len(lines) != n {
		t.Fatalf("python exited %d with %d replies, want 0 and %d:\n%s", code, len(lines), n, strings.Join(lines, "\n"))
	}
	if !strings.Contains(stderr, "tcp_nodelay=1") {
		t.Errorf("TCP_NODELAY was not set on the example's socket")
	}
	correct := 0
	for i, line := range lines {
		checkReplySchema(t, schema, []byte(line))
		r, err := protocol.ParseReply([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if want := "py-" + strconv.Itoa(i); r.ID != want || r.App != "fashion" || r.Device != "py-cam" {
			t.Errorf("reply %d is for %s %s/%s, want %s fashion/py-cam", i, r.ID, r.App, r.Device, want)
		}
		if r.Status != protocol.StatusOK || r.Class == nil || r.Label != m.Labels[*r.Class] {
			t.Fatalf("reply %d: %s", i, line)
		}
		if int32(*r.Class) == samples.Labels[i] {
			correct++
		}
	}
	// Every variant is above 80% on Fashion-MNIST: half right is a loose floor
	// that a mix-up of inputs (byte order, scaling, order of replies) would not meet.
	if correct < n/2 {
		t.Errorf("%d of %d replies name the sample's label", correct, n)
	}

	// A wrong-size input: rejected, printed, exit status 1.
	lines, stderr, code = runPython(t, python, b.Addr(), "--app", "fashion", "--device", "py-cam",
		"--input-f32", writeF32(t, samples.Row(0)[:783]), "--size", "783", "--id-prefix", "py-bad", "--timeout", "60")
	if code != 1 || len(lines) != 1 {
		t.Fatalf("wrong size: python exited %d with %d replies, want 1 and 1:\n%s\n%s", code, len(lines), strings.Join(lines, "\n"), stderr)
	}
	checkReplySchema(t, schema, []byte(lines[0]))
	r, err := protocol.ParseReply([]byte(lines[0]))
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "py-bad-0" || r.Status != protocol.StatusRejected || r.Reason != protocol.ReasonBadInputSize {
		t.Errorf("wrong size: got %s", lines[0])
	}
	if !strings.Contains(stderr, fmt.Sprint(protocol.ReasonBadInputSize)) {
		t.Errorf("wrong size: stderr does not say why:\n%s", stderr)
	}
}
