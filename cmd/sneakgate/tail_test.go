package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/internal/mosquitto"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

// tailing is the real binary running `sneakgate tail`.
type tailing struct {
	cmd            *exec.Cmd
	stdout, stderr <-chan string
}

// startTail starts `sneakgate tail args...` and waits until it has subscribed.
func startTail(t *testing.T, args ...string) *tailing {
	t.Helper()
	tl := &tailing{cmd: exec.Command(binary, append([]string{"tail"}, args...)...)}
	tl.stdout, tl.stderr = startBinary(t, tl.cmd)
	var seen strings.Builder
	for l := range tl.stderr {
		seen.WriteString(l + "\n")
		if strings.Contains(l, "subscribed to") {
			return tl
		}
	}
	t.Fatalf("tail %v exited before subscribing:\n%s", args, seen.String())
	return nil
}

// line returns the next line of stdout ("" once it is closed).
func (tl *tailing) line(t *testing.T) string {
	t.Helper()
	select {
	case l := <-tl.stdout:
		return l
	case <-time.After(time.Minute):
		t.Fatal("no line from tail within a minute")
	}
	return ""
}

// wait waits for the process to exit and returns its exit code.
func (tl *tailing) wait(t *testing.T) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- tl.cmd.Wait() }()
	select {
	case <-done:
		return tl.cmd.ProcessState.ExitCode()
	case <-time.After(time.Minute):
		t.Fatal("tail did not exit within a minute")
	}
	return -1
}

// The real binary follows a real Mosquitto: it takes the broker and prefix from a
// gateway configuration, prints a line per selected reply and, on SIGTERM, the
// final summary, and exits 0; with -json -n 1 it prints the first selected
// reply's JSON and exits.
func TestTailBinary(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := filepath.Join(t.TempDir(), "sneakgate.yaml")
	if err := os.WriteFile(cfg, []byte("mqtt: {broker: "+b.URL()+", topic_prefix: plant1}\napps:\n  - manifest: m.yaml\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("tail-binary-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer pub.Disconnect(0)
	publish := func(r protocol.Reply) string {
		r.V = protocol.Version
		p, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if tok := pub.Publish(protocol.ReplyTopic("plant1", r.App, r.Device), 1, false, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		return string(p)
	}
	ok := protocol.Reply{ID: "r1", App: "fashion", Device: "cam-1", Status: protocol.StatusOK, Class: protocol.Ptr(5),
		Label: "sandal", Confidence: protocol.Ptr(0.9633), Model: "cnn", TotalMS: protocol.Ptr(2.66),
		SlackMS: protocol.Ptr(47.34), DeadlineMet: protocol.Ptr(true)}
	vad := protocol.Reply{ID: "r2", App: "vad", Device: "mic-1", Status: protocol.StatusExpired, Reason: protocol.ReasonPastHardStop}

	tl := startTail(t, "-config", cfg, "-app", "fashion", "-every", "0")
	publish(vad) // filtered out
	publish(ok)
	if l := tl.line(t); !strings.Contains(l, "fashion/cam-1") || !strings.Contains(l, " r1 ") || !strings.Contains(l, "sandal 0.96") ||
		strings.Contains(l, "\x1b[") {
		t.Errorf("reply line %q (no colours into a pipe)", l)
	}
	if err := tl.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if l := tl.line(t); !strings.Contains(l, "-- total") || !strings.Contains(l, ": 1 replies") {
		t.Errorf("final summary %q", l)
	}
	if code := tl.wait(t); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}

	tl = startTail(t, "-broker", b.URL(), "-prefix", "plant1", "-json", "-n", "1", "-status", "ok")
	publish(vad)
	want := publish(ok)
	if l := tl.line(t); l != want {
		t.Errorf("-json line %q, want %q", l, want)
	}
	if code := tl.wait(t); code != 0 {
		t.Errorf("-n 1: exit %d, want 0", code)
	}
}

// A $share/ filter is a shared subscription: tail says what that means before
// it connects (here to a broker that is not there, which is an error).
func TestTailSharedSubscriptionWarns(t *testing.T) {
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := tailCmd(ctx, []string{"-broker", "tcp://127.0.0.1:1", "-topic", "$share/ops/sneakgate/res/#"}, &stdout, &stderr)
	if err == nil {
		t.Error("tail against no broker succeeded")
	}
	if want := `$share/ops/sneakgate/res/# is a shared subscription: the broker hands each message to one subscriber of group "ops"`; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q, want it to contain %q", stderr.String(), want)
	}
}

// With -config, tail connects to the broker with the gateway's mqtt.tls: here a
// Mosquitto TLS listener that requires client certificates from a private CA
// (certificates made by the test). It reads a reply through it; the same
// configuration less the client certificate is refused by the broker, and less
// the CA fails to verify the broker; -broker keeps the configuration's TLS.
func TestTailTLSFromConfig(t *testing.T) {
	dir := t.TempDir()
	pki := mqtttest.NewPKI(t, dir, "operator")
	port, err := mosquitto.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	b := mqtttest.Start(t, mqtttest.Options{Config: fmt.Sprintf(
		"listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
		port, pki.CA, pki.ServerCert, pki.ServerKey)})
	tlsURL := fmt.Sprintf("mqtts://127.0.0.1:%d", port)

	// A retained reply, published on the plain listener, for tail to find.
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("tail-tls-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer pub.Disconnect(0)
	rep := protocol.Reply{V: protocol.Version, ID: "r1", App: "fashion", Device: "cam-1", Status: protocol.StatusOK,
		Class: protocol.Ptr(5), Label: "sandal", Confidence: protocol.Ptr(0.9633), Model: "cnn"}
	payload, err := rep.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if tok := pub.Publish(protocol.ReplyTopic("plant1", "fashion", "cam-1"), 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}

	config := func(name, tlsYAML string) string {
		p := filepath.Join(dir, name)
		body := fmt.Sprintf("mqtt:\n  broker: %s\n  topic_prefix: plant1\n  tls: %s\napps:\n  - manifest: m.yaml\n", tlsURL, tlsYAML)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tailOnce := func(args ...string) (string, string, error) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := tailCmd(ctx, append(args, "-json", "-n", "1", "-every", "0"), &stdout, &stderr)
		return stdout.String(), stderr.String(), err
	}

	full := config("full.yaml", fmt.Sprintf("{ca_file: %s, cert_file: %s, key_file: %s}", pki.CA, pki.ClientCert, pki.ClientKey))
	out, errOut, err := tailOnce("-config", full)
	if err != nil || strings.TrimSpace(out) != string(payload) {
		t.Fatalf("tail -config with mqtt.tls: %v, stdout %q, want %q; stderr:\n%s", err, out, payload, errOut)
	}
	if !strings.Contains(errOut, "subscribed to plant1/res/# on "+tlsURL) {
		t.Errorf("stderr %q", errOut)
	}
	// -broker overrides the URL and keeps the configuration's TLS.
	if out, errOut, err := tailOnce("-config", full, "-broker", fmt.Sprintf("ssl://localhost:%d", port)); err == nil {
		// localhost is not in the server certificate (127.0.0.1 is): refused.
		t.Errorf("-broker ssl://localhost: tail connected, stdout %q stderr %q", out, errOut)
	}
	if out, _, err := tailOnce("-config", full, "-broker", fmt.Sprintf("ssl://127.0.0.1:%d", port)); err != nil || strings.TrimSpace(out) != string(payload) {
		t.Errorf("-broker ssl://127.0.0.1 with -config: %v, stdout %q", err, out)
	}

	noCert := config("nocert.yaml", fmt.Sprintf("{ca_file: %s}", pki.CA))
	if out, _, err := tailOnce("-config", noCert); err == nil {
		t.Errorf("tail without a client certificate got in: stdout %q", out)
	}
	noCA := config("noca.yaml", fmt.Sprintf("{cert_file: %s, key_file: %s}", pki.ClientCert, pki.ClientKey))
	if _, _, err := tailOnce("-config", noCA); err == nil || !strings.Contains(err.Error(), "x509") {
		t.Errorf("tail without the CA: %v, want an x509 error", err)
	}
}

// TestTailMembers: tail -members reads the group's retained statuses from a real
// Mosquitto (two members of a shared group, one offline, and a gateway outside
// a group) and prints them and the table of members.
func TestTailMembers(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("tail-members-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer pub.Disconnect(0)
	since := time.Now().Add(-time.Minute).UnixMilli()
	for topic, st := range map[string]protocol.GatewayStatus{
		"plant1/status/gw-a": {V: 1, State: "online", Version: "1.2.0", Policy: "sneakpeek", Apps: []string{"fashion"}, Since: since},
		"plant1/status/gw-b": {V: 1, State: "offline", Reason: "lost"},
		"plant1/status":      {V: 1, State: "online", Version: "1.2.0", Policy: "edf", Apps: []string{"vad"}, Since: since},
	} {
		payload, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if tok := pub.Publish(topic, 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := tailCmd(ctx, []string{"-broker", b.URL(), "-prefix", "plant1", "-members", "-n", "3", "-every", "0"}, &stdout, &stderr); err != nil {
		t.Fatalf("tail -members: %v; stderr:\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"-- members at exit: 2 of 3 online", "gw-a", "online  version=1.2.0 policy=sneakpeek apps=fashion up=1m",
		"gw-b                     offline reason=lost", "(no group)               online  version=1.2.0 policy=edf apps=vad"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr.String(), "subscribed to plant1/status and plant1/status/+ on "+b.URL()) {
		t.Errorf("stderr %q", stderr.String())
	}
	if err := tailCmd(ctx, []string{"-broker", b.URL(), "-members", "-app", "fashion"}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "-members takes no -app") {
		t.Errorf("-members -app: %v", err)
	}
}

// TestTailGatewayCredential: with -config naming a user and no password file, as
// the documented systemd setup has it (the gateway reads its password from the
// credential mqtt-password, which tail in an operator's shell has no
// $CREDENTIALS_DIRECTORY for), tail reads the file the shipped unit loads the
// credential from (gatewayCredential, here a temporary file) and connects as the
// gateway does. Where that file cannot be read (here a directory: the test may run
// as root), or does not exist, the broker's refusal comes with a hint; -username
// (another user) or -password-file do not take the gateway's password.
func TestTailGatewayCredential(t *testing.T) {
	passwd, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd not installed")
	}
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "passwd")
	for i, user := range []string{"sneakgate", "operator"} {
		args := []string{"-b", pwFile, user, "pw-" + user}
		if i == 0 {
			args = append([]string{"-c"}, args...)
		}
		if out, err := exec.Command(passwd, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v: %s", err, out)
		}
	}
	b := mqtttest.Start(t, mqtttest.Options{Config: "allow_anonymous false\npassword_file " + pwFile + "\n"})

	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("tail-cred-pub").
		SetUsername("operator").SetPassword("pw-operator"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer pub.Disconnect(0)
	rep := protocol.Reply{V: protocol.Version, ID: "r1", App: "fashion", Device: "cam-1", Status: protocol.StatusOK}
	payload, err := rep.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if tok := pub.Publish(protocol.ReplyTopic("plant1", "fashion", "cam-1"), 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}

	cfg := filepath.Join(dir, "sneakgate.yaml")
	if err := os.WriteFile(cfg, []byte("mqtt: {broker: "+b.URL()+", topic_prefix: plant1, username: sneakgate}\napps:\n  - manifest: m.yaml\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "") // an operator's shell
	cred := filepath.Join(dir, "mqtt-password")
	defer func(old string) { gatewayCredential = old }(gatewayCredential)
	gatewayCredential = cred
	tailOnce := func(args ...string) (string, string, error) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := tailCmd(ctx, append(args, "-json", "-n", "1", "-every", "0"), &stdout, &stderr)
		return stdout.String(), stderr.String(), err
	}

	// Readable: tail connects as the gateway, and says where the password came from.
	if err := os.WriteFile(cred, []byte("pw-sneakgate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := tailOnce("-config", cfg)
	if err != nil || strings.TrimSpace(out) != string(payload) {
		t.Fatalf("tail -config with the credential file readable: %v, stdout %q; stderr:\n%s", err, out, errOut)
	}
	if !strings.Contains(errOut, cred) {
		t.Errorf("stderr does not name the password's file %s:\n%s", cred, errOut)
	}
	// Another user, or an explicit password file, is not given the gateway's password.
	if _, _, err := tailOnce("-config", cfg, "-username", "operator"); err == nil || !strings.Contains(err.Error(), `no password was sent for user "operator"`) {
		t.Errorf("tail -username operator: %v, want a refusal saying no password was sent (the gateway's is not operator's)", err)
	}
	other := filepath.Join(dir, "operator-password")
	if err := os.WriteFile(other, []byte("pw-operator\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, err := tailOnce("-config", cfg, "-username", "operator", "-password-file", other); err != nil || strings.TrimSpace(out) != string(payload) {
		t.Errorf("tail -username operator -password-file: %v, stdout %q; stderr:\n%s", err, out, errOut)
	}
	if _, _, err := tailOnce("-config", cfg, "-password-file", other); err == nil {
		t.Error("tail -password-file with the wrong password connected: the credential file replaced it")
	}

	// Unreadable (a directory stands in for a root-only file): refused, with a hint.
	if err := os.Remove(cred); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(cred, 0o700); err != nil {
		t.Fatal(err)
	}
	_, _, err = tailOnce("-config", cfg)
	if err == nil || !strings.Contains(err.Error(), "not Authorized") || !strings.Contains(err.Error(), cred) ||
		!strings.Contains(err.Error(), "as root") || !strings.Contains(err.Error(), "-password-file") {
		t.Errorf("tail with the credential file unreadable: %v, want the refusal with a hint naming %s, root and -password-file", err, cred)
	}

	// Missing: no password, as the gateway has none then; the refusal says so.
	if err := os.Remove(cred); err != nil {
		t.Fatal(err)
	}
	_, _, err = tailOnce("-config", cfg)
	if err == nil || !strings.Contains(err.Error(), "not Authorized") || !strings.Contains(err.Error(), "no password") ||
		!strings.Contains(err.Error(), "-password-file") {
		t.Errorf("tail with no credential file: %v, want the refusal saying no password was sent and naming -password-file", err)
	}
}
