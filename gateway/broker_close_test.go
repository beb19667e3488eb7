package gateway

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

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
	for _, withTLS := range []bool{false, true} {
		name := "tcp"
		if withTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			var tc *tls.Config
			if withTLS {
				pki := mqtttest.NewPKI(t, t.TempDir(), "sneakgate-test")
				var err error
				if tc, err = (EmbeddedTLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientCAFile: pki.CA}).tlsConfig(); err != nil {
					t.Fatal(err)
				}
			}
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
}
