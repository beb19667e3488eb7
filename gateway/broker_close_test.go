package gateway

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
)

// TestEmbeddedBrokerCloseEndsUnfinishedConnections: Close returns while a
// client has connected but sent no CONNECT yet (a device mid-connect; over TLS,
// a handshake not finished), and closes that connection. mochi's own TCP
// listener closes only the clients it has registered and then waits for every
// connection's goroutine, which reads the CONNECT without a deadline: Close
// waited as long as the client stayed silent (found reading the listener's
// Close ordering while looking for a test hang under CPU load).
func TestEmbeddedBrokerCloseEndsUnfinishedConnections(t *testing.T) {
	overTCPAndTLS(t, true, func(t *testing.T, tc *tls.Config) {
		accepted := make(chan struct{}, 16)
		b, err := startBroker(freeAddr(t), 1<<20, nil, tc, zerolog.Nop(), nil,
			brokerTuning{onAccept: func() { accepted <- struct{}{} }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		c := dialRaw(t, b.Addr())
		within(t, accepted, "the broker did not accept the connection")

		closed := make(chan error, 1)
		go func() { closed <- b.Close() }()
		within(t, closed, "Close did not return while a connection had sent no CONNECT")
		closedByPeer(t, c, "the connection closed by Close")
	})
}

// dialRaw opens a TCP connection to addr, closed with the test.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByPeer fails the test unless the other end closes c within 30 s
// (reading whatever it sends first).
func closedByPeer(t *testing.T, c net.Conn, what string) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: still open after 30 s", what)
	}
}

// overTCPAndTLS runs test as two subtests, "tcp" with no TLS configuration and
// "tls" with the embedded broker's TLS configuration for a fresh test PKI
// (clients must present a certificate when clientCerts).
func overTCPAndTLS(t *testing.T, clientCerts bool, test func(t *testing.T, tc *tls.Config)) {
	t.Run("tcp", func(t *testing.T) { test(t, nil) })
	t.Run("tls", func(t *testing.T) {
		pki := mqtttest.NewPKI(t, t.TempDir(), "sneakgate-test")
		e := EmbeddedTLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey}
		if clientCerts {
			e.ClientCAFile = pki.CA
		}
		tc, err := e.tlsConfig()
		if err != nil {
			t.Fatal(err)
		}
		test(t, tc)
	})
}

// TestEmbeddedBrokerClosesSilentConnections: a connection that sends no
// CONNECT (over TLS, does not finish its handshake) is closed once the connect
// timeout has passed, and a client that did connect keeps its connection past
// it, with a keepalive of 0 (no deadline at all) as with one. mochi reads the
// CONNECT without a deadline: before, a silent connection stayed open for as
// long as its client kept it.
func TestEmbeddedBrokerClosesSilentConnections(t *testing.T) {
	// Long enough for a real client's TLS handshake on a loaded machine (the
	// connected clients must not lose the race with it).
	const timeout = time.Second
	overTCPAndTLS(t, false, func(t *testing.T, tc *tls.Config) {
		b, err := startBroker(freeAddr(t), 1<<20, nil, tc, zerolog.Nop(), nil, brokerTuning{connectTimeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })

		closedByPeer(t, dialRaw(t, b.Addr()), "a connection that sent nothing")

		scheme := "tcp://"
		if tc != nil {
			scheme = "ssl://"
		}
		keepalives := []time.Duration{0, time.Minute}
		lost := make(chan error, len(keepalives))
		var clients []mqtt.Client
		for _, keepalive := range keepalives {
			o := mqtt.NewClientOptions().AddBroker(scheme + b.Addr()).SetClientID(fmt.Sprintf("cam-%v", keepalive)).
				SetAutoReconnect(false).SetKeepAlive(keepalive).
				SetTLSConfig(&tls.Config{InsecureSkipVerify: true}).
				SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- fmt.Errorf("keepalive %v: %w", keepalive, err) })
			c := mqtt.NewClient(o)
			if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("keepalive %v: connect: %v", keepalive, tok.Error())
			}
			t.Cleanup(func() { c.Disconnect(100) })
			clients = append(clients, c)
		}
		// Past the connect timeout (this wait is the condition under test).
		time.Sleep(timeout + timeout/2)
		select {
		case err := <-lost:
			t.Fatalf("a connected client lost its connection after the connect timeout: %v", err)
		default:
		}
		for i, c := range clients {
			if tok := c.Publish("sg/req/fashion/cam", 1, false, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("keepalive %v: publish after the connect timeout: %v", keepalives[i], tok.Error())
			}
		}
	})
}

// A device (or anything that reaches the port) can open connections that fail
// before they are clients (not MQTT, a wrong password, a TLS handshake
// failing) as fast as it likes, and mochi warns once for each: the embedded
// broker's log is sampled like rejections.
func TestEmbeddedBrokerFailedConnectionsLogSampled(t *testing.T) {
	var buf bytes.Buffer
	b, err := startBroker(freeAddr(t), 1<<20, nil, nil, zerolog.New(zerolog.SyncWriter(&buf)), nil, brokerTuning{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	const n = 300
	start := time.Now()
	for range n {
		c, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		closedByPeer(t, c, "a connection that sent no CONNECT") // after establish logged its error
		c.Close()
	}
	if err := b.Close(); err != nil { // waits for every connection's goroutine
		t.Fatal(err)
	}
	// The burst of 10 in each second the loop took, and 1 in 100 beyond.
	most := 10*(int(time.Since(start)/time.Second)+1) + n/100 + 1
	if lines := strings.Count(buf.String(), `"level":"warn"`); lines < 1 || lines > most {
		t.Errorf("%d warnings for %d failed connections, want them sampled: at most %d", lines, n, most)
	}
}
