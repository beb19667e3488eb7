package tail

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/internal/mqttsub"
)

// SubscribeOptions configure Subscribe.
type SubscribeOptions struct {
	// Broker is the broker URL, e.g. tcp://127.0.0.1:1883.
	Broker string
	// Filter is the MQTT topic filter, e.g. sneakgate/res/#; Also are more
	// filters subscribed alike (each checked as Filter is).
	Filter             string
	Also               []string
	Username, Password string
	// TLS configures the connection to a broker URL with TLS (ssl://, tls://,
	// mqtts://, wss://); nil: paho's default (the system's roots, no client
	// certificate).
	TLS *tls.Config
	// Buffer is the capacity of the message channel (default 4096); a message
	// that finds it full is dropped and counted in Dropped.
	Buffer int
	// Dropped counts the dropped messages (optional).
	Dropped *atomic.Int64
	// Log receives connection losses and reconnections (default: discarded).
	Log io.Writer
	// Now is the clock stamping messages (default time.Now).
	Now func() time.Time
	// ConnectTimeout bounds the first connection and subscription (default 10 s).
	ConnectTimeout time.Duration
}

// subscribe subscribes c to filter at QoS 0 and checks the broker's answer.
func subscribe(c mqtt.Client, filter string, handle mqtt.MessageHandler, o SubscribeOptions) error {
	tok := c.Subscribe(filter, 0, handle)
	switch {
	case !tok.WaitTimeout(o.ConnectTimeout):
		return fmt.Errorf("subscribe %s: timed out", filter)
	case tok.Error() != nil:
		return fmt.Errorf("subscribe %s: %w", filter, tok.Error())
	}
	// mqttsub reads a $share/{group}/ filter's result too, which paho keys by
	// the filter without the prefix.
	code, err := mqttsub.Code(tok, filter)
	switch {
	case err != nil:
		return fmt.Errorf("subscribe %s: %w", filter, err)
	case mqttsub.Refused(code):
		who := "anonymous clients"
		if o.Username != "" {
			who = fmt.Sprintf("user %q", o.Username)
		}
		return fmt.Errorf("the broker refused the subscription to %s (SUBACK %#x): check its ACL for %s", filter, code, who)
	}
	return nil
}

// Subscribe connects to the broker with a clean session and a random client id,
// subscribes to o.Filter at QoS 0 (an observer needs no more: it should cost the
// broker as little as possible) and returns the messages that arrive. The client
// reconnects and resubscribes by itself. It returns an error when the first
// connection or subscription fails, including a subscription the broker refuses
// (an ACL). stop disconnects; the channel is never closed.
func Subscribe(ctx context.Context, o SubscribeOptions) (msgs <-chan Message, stop func(), err error) {
	if o.Buffer <= 0 {
		o.Buffer = 4096
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Dropped == nil {
		o.Dropped = new(atomic.Int64)
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	ch := make(chan Message, o.Buffer)
	handle := func(_ mqtt.Client, m mqtt.Message) {
		// paho's router goroutine: never block it.
		select {
		case ch <- Message{Topic: m.Topic(), Payload: m.Payload(), At: o.Now()}:
		default:
			o.Dropped.Add(1)
		}
	}
	var r [4]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails
	subscribed := make(chan error, 1)
	var connects atomic.Int64
	po := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID("sneakgate-tail-" + hex.EncodeToString(r[:])).
		SetUsername(o.Username).SetPassword(o.Password).SetCleanSession(true).
		SetAutoReconnect(true).SetMaxReconnectInterval(2 * time.Second).
		SetConnectTimeout(o.ConnectTimeout).SetKeepAlive(30 * time.Second)
	if o.TLS != nil {
		po.SetTLSConfig(o.TLS)
	}
	po.SetOnConnectHandler(func(c mqtt.Client) {
		// On its own goroutine, at every (re)connect: waiting is fine here.
		var err error
		for _, filter := range append([]string{o.Filter}, o.Also...) {
			if err = subscribe(c, filter, handle, o); err != nil {
				break
			}
		}
		if connects.Add(1) > 1 {
			if err != nil {
				fmt.Fprintf(o.Log, "sneakgate tail: reconnected to %s, but: %v\n", o.Broker, err)
			} else {
				fmt.Fprintf(o.Log, "sneakgate tail: reconnected to %s\n", o.Broker)
			}
		}
		select {
		case subscribed <- err:
		default:
		}
	})
	po.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		fmt.Fprintf(o.Log, "sneakgate tail: connection to %s lost (%v); reconnecting\n", o.Broker, err)
	})
	c := mqtt.NewClient(po)
	tok := c.Connect()
	select {
	case <-tok.Done():
		err = tok.Error()
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil {
		select {
		case err = <-subscribed:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		c.Disconnect(0)
		return nil, nil, fmt.Errorf("tail: %s: %w", o.Broker, err)
	}
	return ch, func() { c.Disconnect(250) }, nil
}
