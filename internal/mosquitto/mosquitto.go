// Package mosquitto runs a private Mosquitto broker process on a free loopback
// port, with its own configuration file, log and persistence directory. The test
// helper internal/mqtttest wraps it for tests; the end-to-end benchmark (package
// bench) uses it directly.
//
// # Basics
//
// New prepares a broker in a directory on a free 127.0.0.1 port with the
// configuration a render function returns (Config renders the usual one); Start
// starts it and waits until it accepts TCP connections; Stop and Kill end it, and
// Start restarts it on the same port. Pid is the process's id, for reading its CPU
// time from /proc.
//
// # Caveats
//
//   - The mosquitto binary is looked up on PATH, then in /usr/sbin and
//     /usr/local/sbin (Find); New returns ErrNotFound without one.
//   - The free port is found by binding :0 and closing it, so another process can
//     take it in between; Start retries on "address in use" for a few seconds.
//   - On Linux a broker dies with the process that started it, if that process
//     dies without stopping it (killed, or a test binary's timeout); elsewhere it
//     runs on.
package mosquitto

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNotFound is returned by New when no mosquitto binary is installed.
var ErrNotFound = errors.New("mosquitto not found on PATH or in /usr/sbin")

// Setting is one "key value" line of a Mosquitto configuration file.
type Setting struct{ Key, Value string }

// Options configure the configuration Config renders.
type Options struct {
	// Persistence keeps retained messages, persistent sessions and their queued
	// QoS 1 messages across Stop/Start (not across Kill: Mosquitto saves on exit).
	Persistence bool
	// MaxInflight is max_inflight_messages per client (default 1000).
	MaxInflight int
	// Delivery settings replace the defaults of the same key (or are added), in
	// order, before Persistence and MaxInflight apply.
	Delivery []Setting
	// Config is appended to the generated configuration.
	Config string
}

// Config renders a mosquitto.conf for a broker listening on 127.0.0.1:port with
// its persistence in dir: anonymous clients, no persistence (unless
// o.Persistence), up to 1,000,000 queued messages per client, 1,000 QoS 1
// messages in flight per client, Nagle's algorithm off, logging to stderr; then
// o.Delivery over those defaults, then o.Config.
func Config(port int, dir string, o Options) string {
	delivery := []Setting{
		{"persistence", fmt.Sprint(o.Persistence)},
		{"max_queued_messages", "1000000"},
		{"max_queued_bytes", "0"},
		{"max_inflight_messages", "1000"},
		{"set_tcp_nodelay", "true"},
	}
	set := func(key, value string) {
		for i := range delivery {
			if delivery[i].Key == key {
				delivery[i].Value = value
				return
			}
		}
		delivery = append(delivery, Setting{key, value})
	}
	for _, s := range o.Delivery {
		set(s.Key, s.Value)
	}
	if o.Persistence {
		set("persistence", "true")
	}
	if o.MaxInflight > 0 {
		set("max_inflight_messages", fmt.Sprint(o.MaxInflight))
	}
	var c strings.Builder
	fmt.Fprintf(&c, "listener %d 127.0.0.1\n", port)
	c.WriteString("allow_anonymous true\n")
	fmt.Fprintf(&c, "persistence_location %s/\n", dir)
	for _, s := range delivery {
		fmt.Fprintf(&c, "%s %s\n", s.Key, s.Value)
	}
	c.WriteString("log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n")
	c.WriteString("connection_messages true\nlog_timestamp_format %H:%M:%S\n")
	if os.Geteuid() == 0 {
		// Run as root, Mosquitto would switch to user "mosquitto", which cannot
		// write to a private directory.
		c.WriteString("user root\n")
	}
	if o.Config != "" {
		c.WriteString(o.Config)
		c.WriteString("\n")
	}
	return c.String()
}

// Broker is one Mosquitto process at a time, restartable on the same port. Its
// methods are safe for concurrent use.
type Broker struct {
	bin  string
	dir  string
	port int
	conf string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exits
}

// New prepares a broker with its files (mosquitto.conf, mosquitto.log) in dir,
// which must exist, on a free loopback port. The configuration is what render
// returns for that port. It does not start the broker.
func New(dir string, render func(port int) string) (*Broker, error) {
	bin := Find()
	if bin == "" {
		return nil, ErrNotFound
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	b := &Broker{bin: bin, dir: dir, port: port,
		conf: filepath.Join(dir, "mosquitto.conf"), log: filepath.Join(dir, "mosquitto.log")}
	if err := os.WriteFile(b.conf, []byte(render(port)), 0o600); err != nil {
		return nil, fmt.Errorf("mosquitto: %w", err)
	}
	return b, nil
}

// Find returns the path of the mosquitto binary, or "".
func Find() string {
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

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr returns "127.0.0.1:port"; the port stays the same across restarts.
func (b *Broker) Addr() string { return fmt.Sprintf("127.0.0.1:%d", b.port) }

// URL returns the broker's URL for paho, "tcp://127.0.0.1:port".
func (b *Broker) URL() string { return "tcp://" + b.Addr() }

// Port returns the broker's port.
func (b *Broker) Port() int { return b.port }

// Dir returns the broker's directory.
func (b *Broker) Dir() string { return b.dir }

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

// Pid returns the process id of the running broker, or 0.
func (b *Broker) Pid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.runningLocked() {
		return 0
	}
	return b.cmd.Process.Pid
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

// StartTimeout bounds how long Start waits for the broker to accept connections.
const StartTimeout = 10 * time.Second

// Start (re)starts a stopped broker on the same port and waits until it accepts
// TCP connections. It does nothing if the broker is running. It returns an error
// if the broker does not come up within StartTimeout (Log says why).
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.runningLocked() {
		return nil
	}
	deadline := time.Now().Add(StartTimeout)
	for attempt := 1; ; attempt++ {
		err := b.startOnce(deadline)
		if err == nil {
			return nil
		}
		// The port may still be held by the previous process's socket or have been
		// taken meanwhile; retry while time remains.
		if !strings.Contains(b.Log(), "Address already in use") || time.Now().After(deadline) {
			return fmt.Errorf("mosquitto on %s (attempt %d): %w", b.Addr(), attempt, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *Broker) startOnce(deadline time.Time) error {
	logf, err := os.OpenFile(b.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "--- mosquitto: starting %s -c %s\n", b.bin, b.conf)
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	dieWithParent(cmd)
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
			return fmt.Errorf("not accepting connections after %s: %v", StartTimeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stop stops the broker gracefully (SIGTERM; SIGKILL after 5 seconds) and waits for
// it to exit. Clients see their connections drop.
func (b *Broker) Stop() { b.signal(syscall.SIGTERM) }

// Kill kills the broker (SIGKILL), as a crash would, and waits for it to exit.
func (b *Broker) Kill() { b.signal(syscall.SIGKILL) }

func (b *Broker) signal(sig syscall.Signal) {
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
