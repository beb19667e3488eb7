package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
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
		c, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		select {
		case <-accepted:
		case <-time.After(10 * time.Second):
			t.Fatal("the broker did not accept the connection within 10 s")
		}

		closed := make(chan error, 1)
		go func() { closed <- b.Close() }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not return while a connection had sent no CONNECT")
		}
		if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		_, err = c.Read(make([]byte, 64))
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the connection is still open after Close (read: %v)", err)
		}
	})
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

		silent, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		if err := silent.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
			t.Fatal(err)
		}
		_, err = silent.Read(make([]byte, 64))
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("a connection that sent nothing was not closed within 30 s (read: %v)", err)
		}

		scheme := "tcp://"
		if tc != nil {
			scheme = "ssl://"
		}
		for _, keepalive := range []time.Duration{0, time.Minute} {
			lost := make(chan error, 1)
			o := mqtt.NewClientOptions().AddBroker(scheme + b.Addr()).SetClientID(fmt.Sprintf("cam-%v", keepalive)).
				SetAutoReconnect(false).SetKeepAlive(keepalive).
				SetTLSConfig(&tls.Config{InsecureSkipVerify: true}).
				SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
			c := mqtt.NewClient(o)
			if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("keepalive %v: connect: %v", keepalive, tok.Error())
			}
			// Past the connect timeout (this wait is the condition under test).
			time.Sleep(timeout + timeout/2)
			select {
			case err := <-lost:
				t.Fatalf("keepalive %v: the connected client lost its connection after the connect timeout: %v", keepalive, err)
			default:
			}
			if tok := c.Publish("sg/req/fashion/cam", 1, false, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("keepalive %v: publish after the connect timeout: %v", keepalive, tok.Error())
			}
			c.Disconnect(100)
		}
	})
}
