package gateway

import (
	"fmt"
	"log/slog"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/rs/zerolog"
)

// Broker is the embedded MQTT broker (mochi-mqtt), for a gateway that runs alone on
// an edge box. It accepts every client: bind it to loopback or put it behind a
// firewall.
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

// StartBroker listens on addr and serves MQTT until Close. A client that sends a
// packet larger than MaxPacketSize(maxPayloadBytes) is disconnected as soon as
// the packet's length is read, so a huge payload is never read into memory.
// (mochi-mqtt does not announce the limit to MQTT 5 clients at connect.)
func StartBroker(addr string, maxPayloadBytes int, log zerolog.Logger) (*Broker, error) {
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
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	log.Info().Str("listen", addr).Uint32("max_packet_bytes", caps.MaximumPacketSize).Msg("embedded MQTT broker started")
	return &Broker{srv: srv, addr: addr}, nil
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.addr }

// Close stops the broker and disconnects its clients.
func (b *Broker) Close() error { return b.srv.Close() }
