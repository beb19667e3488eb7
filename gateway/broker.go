package gateway

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/rs/zerolog"
)

// Broker is the embedded MQTT broker (mochi-mqtt), for a gateway that runs alone on
// an edge box. Without users it accepts every client, so the config allows that
// only on a loopback address; with users (mqtt.embedded.users_file) it accepts
// only those, by user name and password.
type Broker struct {
	srv  *mqtt.Server
	addr string
}

// PacketOverhead is the room an MQTT packet gets beyond the largest payload the
// gateway accepts: a topic (MQTT allows up to 65,535 bytes), the packet id and MQTT
// 5 properties. configs/mosquitto.conf's max_packet_size is the default
// admission.max_payload_bytes plus this (a test checks it).
const PacketOverhead = 64 << 10

// MaxPacketSize is the largest MQTT packet a broker should read for the gateway
// with the given admission.max_payload_bytes. A payload a little over that limit
// still reaches the gateway, which answers it rejected/payload_too_large; a larger
// packet is refused by the broker before it reads it.
func MaxPacketSize(maxPayloadBytes int) uint32 {
	// MQTT's largest packet: one header byte and a remaining length of up to
	// 268,435,455 bytes; a limit at least this large limits nothing.
	const mqttMax = 1 + 268_435_455
	return uint32(min(int64(maxPayloadBytes)+PacketOverhead, mqttMax))
}

// loopbackAddr reports whether the host of the listen address addr is a
// loopback address or "localhost". An empty host (":1883") listens on every
// interface, and any other host name may resolve to one that is not loopback.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LoadUsersFile reads an embedded broker users file: one "user:password" a
// line (the password is everything after the first ':'); blank lines and lines
// starting with '#' are skipped. It refuses an empty user name or password, a
// user listed twice, and a file that lists no one.
func LoadUsersFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		user, pass, ok := strings.Cut(line, ":")
		switch {
		case !ok || user == "" || pass == "":
			return nil, fmt.Errorf("%s:%d: want user:password", path, n)
		case users[user] != "":
			return nil, fmt.Errorf("%s:%d: user %q listed twice", path, n, user)
		}
		users[user] = pass
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(users) == 0 {
		return nil, errors.New(path + ": lists no user")
	}
	return users, nil
}

// StartBroker listens on addr and serves MQTT until Close. A client that sends a
// packet larger than MaxPacketSize(maxPayloadBytes) is disconnected as soon as
// the packet's length is read, so a huge payload is never read into memory.
// (mochi-mqtt does not announce the limit to MQTT 5 clients at connect.)
// With users (name to password; LoadUsersFile) the broker accepts only those
// clients, each to every topic; with none, it accepts every client. With tc
// (EmbeddedTLS), the listener speaks TLS only, and with tc.ClientAuth set
// refuses a client without a certificate it verifies.
func StartBroker(addr string, maxPayloadBytes int, users map[string]string, tc *tls.Config, log zerolog.Logger) (*Broker, error) {
	// Fail early, with the address in the error, when the port is taken.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	ln.Close()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = MaxPacketSize(maxPayloadBytes)
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: false,
		Logger:       slog.New(zerologHandler{log}),
	})
	if len(users) == 0 {
		if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
	} else {
		// Listed users are checked first (name and password must match); with
		// no Auth rules, everyone else (anonymous included) is refused. The
		// one ACL rule without filters lets an accepted client use any topic.
		ledger := &auth.Ledger{Users: auth.Users{}, Auth: auth.AuthRules{}, ACL: auth.ACLRules{{}}}
		for u, p := range users {
			ledger.Users[u] = auth.UserRule{Username: auth.RString(u), Password: auth.RString(p)}
		}
		if err := srv.AddHook(new(auth.Hook), &auth.Options{Ledger: ledger}); err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr, TLSConfig: tc})); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	log.Info().Str("listen", addr).Int("users", len(users)).Bool("tls", tc != nil).
		Bool("client_certificates", tc != nil && tc.ClientAuth == tls.RequireAndVerifyClientCert).
		Uint32("max_packet_bytes", caps.MaximumPacketSize).Msg("embedded MQTT broker started")
	return &Broker{srv: srv, addr: addr}, nil
}

// Dropped is how many messages the broker has dropped instead of delivering
// them to a subscriber, after acknowledging them to their publisher: beyond a
// client's in-flight store or its pending writes (mochi-mqtt's defaults, 8,192
// each; docs/deployment.md, "The embedded broker").
func (b *Broker) Dropped() int64 {
	return atomic.LoadInt64(&b.srv.Info.InflightDropped) + atomic.LoadInt64(&b.srv.Info.MessagesDropped)
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.addr }

// Close stops the broker and disconnects its clients.
func (b *Broker) Close() error { return b.srv.Close() }
