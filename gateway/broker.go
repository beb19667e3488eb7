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

// StartBroker listens on addr and serves MQTT until Close.
func StartBroker(addr string, log zerolog.Logger) (*Broker, error) {
	// Fail early, with the address in the error, when the port is taken.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	ln.Close()
	srv := mqtt.New(&mqtt.Options{
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
	log.Info().Str("listen", addr).Msg("embedded MQTT broker started")
	return &Broker{srv: srv, addr: addr}, nil
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.addr }

// Close stops the broker and disconnects its clients.
func (b *Broker) Close() error { return b.srv.Close() }
