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
// The process itself (configuration, start, restart, stop) is package
// internal/mosquitto's; this package ties it to a test.
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
	"errors"
	"testing"

	"github.com/sneakgate/sneakgate/internal/mosquitto"
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
	p    *mosquitto.Broker
	dir  string
	port int
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
	mo := mosquitto.Options{Persistence: opts.Persistence, MaxInflight: opts.MaxInflight, Config: opts.Config}
	if opts.Shipped {
		var err error
		if mo.Delivery, err = shippedDelivery(); err != nil {
			t.Fatalf("mqtttest: Shipped: %v", err)
		}
	}
	return start(t, func(b *Broker) string { return mosquitto.Config(b.port, b.dir, mo) })
}

// start starts a broker for t whose mosquitto.conf render returns; render sees
// the broker's port and directory.
func start(t testing.TB, render func(*Broker) string) *Broker {
	t.Helper()
	b := &Broker{t: t, dir: t.TempDir()}
	p, err := mosquitto.New(b.dir, func(port int) string { b.port = port; return render(b) })
	if errors.Is(err, mosquitto.ErrNotFound) {
		t.Fatalf("mqtttest: %v: install mosquitto (make test does)", err)
	}
	if err != nil {
		t.Fatalf("mqtttest: %v", err)
	}
	b.p = p
	t.Cleanup(func() {
		b.p.Stop()
		if t.Failed() {
			t.Logf("mqtttest: mosquitto log (%s):\n%s", b.Addr(), b.Log())
		}
	})
	b.Start()
	return b
}

// startTimeout bounds how long Start waits for the broker to accept connections.
const startTimeout = mosquitto.StartTimeout

func freePort(t testing.TB) int {
	t.Helper()
	port, err := mosquitto.FreePort()
	if err != nil {
		t.Fatalf("mqtttest: %v", err)
	}
	return port
}

// Addr returns "127.0.0.1:port"; the port stays the same across restarts.
func (b *Broker) Addr() string { return b.p.Addr() }

// URL returns the broker's URL for paho, "tcp://127.0.0.1:port".
func (b *Broker) URL() string { return b.p.URL() }

// Log returns the broker's log so far.
func (b *Broker) Log() string { return b.p.Log() }

// Running reports whether the broker process is running.
func (b *Broker) Running() bool { return b.p.Running() }

// Start (re)starts a stopped broker on the same port and waits until it accepts
// TCP connections. It does nothing if the broker is running. It calls t.Fatal,
// with the broker's log, if the broker does not come up within 10 seconds.
func (b *Broker) Start() {
	b.t.Helper()
	if err := b.p.Start(); err != nil {
		b.t.Fatalf("mqtttest: %v\nlog:\n%s", err, b.Log())
	}
}

// Stop stops the broker gracefully (SIGTERM; SIGKILL after 5 seconds) and waits for
// it to exit. Clients see their connections drop.
func (b *Broker) Stop() { b.p.Stop() }

// Kill kills the broker (SIGKILL), as a crash would, and waits for it to exit.
func (b *Broker) Kill() { b.p.Kill() }
