// Package mqtttest runs a real Mosquitto broker for tests.
//
// # Basics
//
// StartMosquitto(t) starts a private broker on a free 127.0.0.1 port with its own
// config file and returns its address ("127.0.0.1:port"); the broker is stopped when
// the test ends. Start(t, Options{}) returns a *Broker handle that can also Stop,
// Kill and restart it on the same port, for tests of broker outages.
//
// The broker allows anonymous clients, keeps no persistence (unless
// Options.Persistence), queues up to 1,000,000 messages per client, allows 1,000
// QoS 1 messages in flight per client and disables Nagle's algorithm.
//
// # The shipped configuration
//
// Options.Shipped starts the broker with the delivery settings of the broker
// configuration sneakgate ships for production, configs/mosquitto.conf (read from
// the repository: the module root is found by walking up from the working
// directory to go.mod): persistence, autosave, queue and in-flight limits, the
// packet size limit. What only makes sense on a real box is replaced: the listener
// (a free loopback port), persistence_location (the test's directory), logging
// (stderr, into the log Broker.Log returns), authentication (anonymous clients are
// allowed, no ACL) and, as root, the user. Every setting in the file is either
// applied or replaced; one the package does not know fails the test, so a setting
// added to the file is classified here (shippedApplied, shippedReplaced) rather
// than silently ignored. Tests of outages use it, so that they run against the
// limits production runs with.
//
// # Caveats
//
//   - The mosquitto binary is looked up on PATH, then in /usr/sbin and
//     /usr/local/sbin; a missing binary fails the test ("install mosquitto (make
//     test does)").
//   - The free port is found by binding :0 and closing it, so another process can
//     take it in between; Start retries on "address in use" for a few seconds.
//   - The broker's log is printed when the test fails.
package mqtttest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options configure a test broker.
type Options struct {
	// Persistence keeps retained messages, persistent sessions and their queued
	// QoS 1 messages across Stop/Start (not across Kill: Mosquitto saves on exit,
	// and, with Shipped, every 2 seconds).
	Persistence bool
	// Shipped applies the delivery settings of configs/mosquitto.conf (persistence
	// with autosave, queue and in-flight limits, packet size limit) in place of
	// the test defaults; see the package documentation. Persistence and
	// MaxInflight, when set, still apply on top.
	Shipped bool
	// MaxInflight is the broker's max_inflight_messages per client (default 1000).
	MaxInflight int
	// Config is appended to the generated mosquitto.conf.
	Config string
}

// Broker is a Mosquitto process owned by one test. Its methods are safe for
// concurrent use; a failure calls t.Fatal and so must happen on the test's
// goroutine.
type Broker struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	conf string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exits
}

// StartMosquitto starts a broker for t and returns its address, "127.0.0.1:port".
// It is stopped when the test ends.
func StartMosquitto(t testing.TB) string {
	t.Helper()
	return Start(t, Options{}).Addr()
}

// Start starts a broker for t with opts. It is stopped when the test ends, and its
// log is printed if the test failed.
func Start(t testing.TB, opts Options) *Broker {
	t.Helper()
	var shipped []setting
	if opts.Shipped {
		var err error
		if shipped, err = shippedDelivery(); err != nil {
			t.Fatalf("mqtttest: Shipped: %v", err)
		}
	}
	return start(t, func(b *Broker) string { return b.config(opts, shipped) })
}

// start starts a broker for t whose mosquitto.conf render returns; render sees
// the broker's port and directory.
func start(t testing.TB, render func(*Broker) string) *Broker {
	t.Helper()
	bin := findMosquitto()
	if bin == "" {
		t.Fatal("mqtttest: mosquitto not found on PATH or in /usr/sbin: install mosquitto (make test does)")
	}
	b := &Broker{t: t, bin: bin, dir: t.TempDir()}
	b.port = freePort(t)
	b.conf = filepath.Join(b.dir, "mosquitto.conf")
	b.log = filepath.Join(b.dir, "mosquitto.log")
	if err := os.WriteFile(b.conf, []byte(render(b)), 0o600); err != nil {
		t.Fatalf("mqtttest: %v", err)
	}
	t.Cleanup(func() {
		b.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("mqtttest: mosquitto log (%s):\n%s", b.Addr(), b.Log())
		}
	})
	b.Start()
	return b
}

// config renders the broker's mosquitto.conf: the test defaults, then the shipped
// delivery settings replacing them (opts.Shipped), then opts.
func (b *Broker) config(opts Options, shipped []setting) string {
	delivery := []setting{
		{"persistence", fmt.Sprint(opts.Persistence)},
		{"max_queued_messages", "1000000"},
		{"max_queued_bytes", "0"},
		{"max_inflight_messages", "1000"},
		{"set_tcp_nodelay", "true"},
	}
	set := func(key, value string) {
		for i := range delivery {
			if delivery[i].key == key {
				delivery[i].value = value
				return
			}
		}
		delivery = append(delivery, setting{key, value})
	}
	for _, s := range shipped {
		set(s.key, s.value)
	}
	if opts.Persistence {
		set("persistence", "true")
	}
	if opts.MaxInflight > 0 {
		set("max_inflight_messages", fmt.Sprint(opts.MaxInflight))
	}
	var c strings.Builder
	fmt.Fprintf(&c, "listener %d 127.0.0.1\n", b.port)
	c.WriteString("allow_anonymous true\n")
	fmt.Fprintf(&c, "persistence_location %s/\n", b.dir)
	for _, s := range delivery {
		fmt.Fprintf(&c, "%s %s\n", s.key, s.value)
	}
	c.WriteString("log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n")
	c.WriteString("connection_messages true\nlog_timestamp_format %H:%M:%S\n")
	if os.Geteuid() == 0 {
		// Run as root, Mosquitto would switch to user "mosquitto", which cannot
		// write to the test's private directory.
		c.WriteString("user root\n")
	}
	if opts.Config != "" {
		c.WriteString(opts.Config)
		c.WriteString("\n")
	}
	return c.String()
}

func findMosquitto() string {
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mqtttest: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Addr returns "127.0.0.1:port"; the port stays the same across restarts.
func (b *Broker) Addr() string { return fmt.Sprintf("127.0.0.1:%d", b.port) }

// URL returns the broker's URL for paho, "tcp://127.0.0.1:port".
func (b *Broker) URL() string { return "tcp://" + b.Addr() }

// Log returns the broker's log so far.
func (b *Broker) Log() string {
	out, err := os.ReadFile(b.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(out)
}

// Running reports whether the broker process is running.
func (b *Broker) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.runningLocked()
}

func (b *Broker) runningLocked() bool {
	if b.cmd == nil {
		return false
	}
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// startTimeout bounds how long Start waits for the broker to accept connections.
const startTimeout = 10 * time.Second

// Start (re)starts a stopped broker on the same port and waits until it accepts
// TCP connections. It does nothing if the broker is running. It calls t.Fatal,
// with the broker's log, if the broker does not come up within 10 seconds.
func (b *Broker) Start() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.runningLocked() {
		return
	}
	deadline := time.Now().Add(startTimeout)
	for attempt := 1; ; attempt++ {
		err := b.startOnce(deadline)
		if err == nil {
			return
		}
		// The port may still be held by the previous process's socket or have been
		// taken meanwhile; retry while time remains.
		if !strings.Contains(b.Log(), "Address already in use") || time.Now().After(deadline) {
			b.t.Fatalf("mqtttest: mosquitto on %s (attempt %d): %v\nlog:\n%s", b.Addr(), attempt, err, b.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *Broker) startOnce(deadline time.Time) error {
	logf, err := os.OpenFile(b.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "--- mqtttest: starting %s -c %s\n", b.bin, b.conf)
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status is in the log; Stop reports nothing
		logf.Close()
		close(done)
	}()
	b.cmd, b.done = cmd, done
	for {
		select {
		case <-done:
			return fmt.Errorf("exited during start-up: %v", cmd.ProcessState)
		default:
		}
		c, err := net.DialTimeout("tcp", b.Addr(), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			b.signalLocked(syscall.SIGKILL)
			return fmt.Errorf("not accepting connections after %s: %v", startTimeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stop stops the broker gracefully (SIGTERM; SIGKILL after 5 seconds) and waits for
// it to exit. Clients see their connections drop.
func (b *Broker) Stop() { b.stop(syscall.SIGTERM) }

// Kill kills the broker (SIGKILL), as a crash would, and waits for it to exit.
func (b *Broker) Kill() { b.stop(syscall.SIGKILL) }

func (b *Broker) stop(sig syscall.Signal) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.signalLocked(sig)
}

func (b *Broker) signalLocked(sig syscall.Signal) {
	if !b.runningLocked() {
		return
	}
	_ = b.cmd.Process.Signal(sig) // fails only if it already exited; done tells
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}
