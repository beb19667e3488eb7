package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// Stranded publishes. paho (1.5.1, client.go line 830) waits at most its write
// timeout (mqtt.publish_timeout) for its writer to take a QoS 1 publish; past
// it the token fails with "publish was broken by timeout", but the packet keeps
// its id and its place in the store, unsent, until a later connection resends
// it: MQTT 3.1.1 resends only when a session resumes, and paho has no other way
// to send it. On a connection that stays up (a broker, or a link, that reads
// slowly without stopping) such a packet would hold its place at the gate and
// its packet id for as long as the connection lasts, and its reply would not
// reach the device: an answer to a journaled request is republished from the
// outbox under a new id (the stored copy follows, the same bytes, at the next
// connection), but the reply to a request that is not journaled is sent by no
// one, and its request stays unacknowledged, holding a place in the broker's
// in-flight window. Repeated, the places leak until the gate closes.
//
// The gateway therefore renews the connection when packets are stranded
// (pubGate.strand) and the broker has acknowledged nothing for
// mqtt.publish_timeout since the oldest was stranded, or, while it keeps
// acknowledging others, strandedLimit publish timeouts after it: the new
// connection resends them and their PUBACKs free the ids
// (sneakgate_mqtt_stranded_reconnects_total). A connection is renewed by
// failing its reads (brokerConns.fail): paho then handles it as any lost
// connection (auto-reconnect, the session resumed, what it stores resent).

// strandedLimit bounds, in publish timeouts, how long a stranded packet waits
// for the broker to go quiet before the connection is renewed anyway: a
// minute by default, so that while the broker keeps acknowledging other
// publishes through a congested link the gateway renews it at most once a
// minute (each renewal resends up to mqtt.max_inflight_publishes packets).
const strandedLimit = 12

// watchStranded renews the connection when stranded packets call for it
// (pubGate.strandedDue), until Close.
func (e *egress) watchStranded() {
	defer e.late.Done()
	quiet, limit := e.timeout, strandedLimit*e.timeout
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		var wake <-chan time.Time
		if due, n := e.gate.strandedDue(quiet, limit); n > 0 {
			d := time.Until(due)
			if d <= 0 {
				e.renewForStranded(n)
				d = quiet // until the connection is lost (which clears them), or to try again
			}
			t.Reset(d)
			wake = t.C
		}
		select {
		case <-e.gate.strandKick:
		case <-wake:
		case <-e.stop:
			return
		}
		t.Stop()
	}
}

// renewForStranded has the connection renewed, if it is up (otherwise the next
// connection resends the stranded packets anyway).
func (e *egress) renewForStranded(n int) {
	if e.reconnect == nil || !e.client.IsConnectionOpen() {
		return
	}
	err := fmt.Errorf("%d publishes failed unsent (the MQTT client's write timeout) and hold their packet ids: renewing the connection so that they are resent", n)
	if !e.reconnect(err) {
		return
	}
	e.m.strandedReconnects.Inc()
	e.log.Warn().Int("publishes", n).Dur("publish_timeout", e.timeout).
		Msg("publishes the MQTT client failed without sending them (its write timeout) hold their packet ids; closing the connection so that the next one resends them")
}

// brokerConns keeps the broker connection paho is using, so that the gateway
// can fail it (fail).
type brokerConns struct {
	mu  sync.Mutex
	cur *breakableConn
}

// opener wraps open so that each connection it opens becomes the current one.
func (b *brokerConns) opener(open mqtt.OpenConnectionFunc) mqtt.OpenConnectionFunc {
	return func(u *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
		c, err := open(u, o)
		if err != nil {
			return nil, err
		}
		bc := &breakableConn{Conn: c}
		b.mu.Lock()
		b.cur = bc
		b.mu.Unlock()
		return bc, nil
	}
}

// fail makes the current connection's reads fail with err, so that paho drops
// it and reconnects. It reports whether there was a connection not failed yet.
func (b *brokerConns) fail(err error) bool {
	b.mu.Lock()
	c := b.cur
	b.mu.Unlock()
	return c != nil && c.fail(err)
}

// breakableConn is a connection whose reads can be made to fail. paho ignores
// a read error that says the connection was closed (net.go line 128: it takes
// it for its own Close), so closing it would leave paho believing it
// connected; a read error of any other kind makes it drop the connection and
// reconnect.
type breakableConn struct {
	net.Conn
	failed atomic.Pointer[error]
}

func (c *breakableConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if f := c.failed.Load(); f != nil {
		return 0, *f
	}
	return n, err
}

// fail fails the read in progress, if any, and every later one, with err; it
// reports whether the connection was not failed already.
func (c *breakableConn) fail(err error) bool {
	if !c.failed.CompareAndSwap(nil, &err) {
		return false
	}
	_ = c.Conn.SetReadDeadline(time.Now()) // ends a read in progress
	return true
}

// dialBroker opens the network connection to a broker as paho's own opener does
// (paho 1.5.1 netconn.go openConnection, which is not exported): WebSockets,
// TCP (through ALL_PROXY if set), Unix sockets and TLS. The gateway uses it for
// every URL bufferedOpener does not take, so that brokerConns sees every
// connection.
func dialBroker(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
	dialer := o.Dialer
	if dialer == nil { // paho's default
		dialer = &net.Dialer{Timeout: 30 * time.Second}
	}
	switch uri.Scheme {
	case "ws", "wss":
		u := *uri // paho #623: gorilla/websocket refuses a URL with user info
		u.User = nil
		var tlsc *tls.Config
		if uri.Scheme == "wss" {
			tlsc = o.TLSConfig
		}
		return mqtt.NewWebsocket(u.String(), tlsc, o.ConnectTimeout, o.HTTPHeaders, o.WebsocketOptions)
	case "mqtt", "tcp":
		return proxy.FromEnvironmentUsing(dialer).Dial("tcp", uri.Host)
	case "unix":
		if uri.Host != "" {
			return dialer.Dial("unix", uri.Host)
		}
		return dialer.Dial("unix", uri.Path)
	case "ssl", "tls", "mqtts", "mqtt+ssl", "tcps":
		if os.Getenv("all_proxy") == "" {
			return tls.DialWithDialer(dialer, "tcp", uri.Host, o.TLSConfig)
		}
		conn, err := proxy.FromEnvironment().Dial("tcp", uri.Host)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(conn, o.TLSConfig)
		if err := tc.Handshake(); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return tc, nil
	}
	return nil, errors.New("unknown protocol")
}
