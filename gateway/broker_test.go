package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
)

// TestShippedMosquittoPacketLimitMatchesAdmission: configs/mosquitto.conf lets
// through what the gateway accepts by default, with the same room for the topic
// as the embedded broker.
func TestShippedMosquittoPacketLimitMatchesAdmission(t *testing.T) {
	want := MaxPacketSize(DefaultConfig().Admission.MaxPayloadBytes)
	if got := mqtttest.ShippedSetting(t, "max_packet_size"); got != strconv.FormatUint(uint64(want), 10) {
		t.Fatalf("%s: max_packet_size %s, want admission.max_payload_bytes + PacketOverhead = %d",
			mqtttest.ShippedConfig, got, want)
	}
}

func TestMaxPacketSize(t *testing.T) {
	if got := MaxPacketSize(256 << 10); got != 256<<10+64<<10 {
		t.Errorf("MaxPacketSize(256 KiB) = %d", got)
	}
	if got := MaxPacketSize(1 << 30); got != 268_435_456 {
		t.Errorf("MaxPacketSize(1 GiB) = %d, want MQTT's largest packet", got)
	}
}

func startTestBroker(t *testing.T, maxPayload int) *Broker {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	b, err := StartBroker(addr, maxPayload, nil, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// TestEmbeddedBrokerPacketLimit: a payload a little over admission.max_payload_bytes
// reaches the gateway (which answers payload_too_large); a packet over
// MaxPacketSize costs its sender the connection and reaches no one.
func TestEmbeddedBrokerPacketLimit(t *testing.T) {
	const maxPayload = 1024
	b := startTestBroker(t, maxPayload)
	url := "tcp://" + b.Addr()
	var mu sync.Mutex
	got := map[string]int{}
	arrived := make(chan struct{}, 16)
	connect := func(id string, lost chan<- error) mqtt.Client {
		o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetAutoReconnect(false).
			SetConnectTimeout(2 * time.Second)
		if lost != nil {
			o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
		}
		c := mqtt.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(50) })
		return c
	}
	gw := connect("sneakgate", nil)
	if tok := gw.Subscribe("sneakgate/req/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		key, _, _ := strings.Cut(string(m.Payload()), "|")
		mu.Lock()
		got[key] = len(m.Payload())
		mu.Unlock()
		arrived <- struct{}{}
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	await := func(key string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			mu.Lock()
			_, ok := got[key]
			mu.Unlock()
			if ok {
				return
			}
			select {
			case <-arrived:
			case <-deadline:
				t.Fatalf("%q not delivered", key)
			}
		}
	}
	payload := func(key string, n int) []byte {
		p := bytes.Repeat([]byte("x"), n)
		copy(p, key+"|")
		return p
	}

	dev := connect("cam-1", nil)
	if tok := dev.Publish("sneakgate/req/fashion/cam-1", 1, false, payload("over", maxPayload+100)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	await("over")

	lost := make(chan error, 1)
	big := connect("cam-2", lost)
	big.Publish("sneakgate/req/fashion/cam-2", 1, false, payload("huge", int(MaxPacketSize(maxPayload))))
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("a packet over the limit did not cost its sender the connection")
	}
	if tok := dev.Publish("sneakgate/req/fashion/cam-1", 1, false, payload("after", 10)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	await("after")
	mu.Lock()
	defer mu.Unlock()
	if _, ok := got["huge"]; ok {
		t.Fatal("a packet over the limit was delivered")
	}
}

// TestEmbeddedBrokerRefusesBeforeReading: a PUBLISH announcing 200 MB is refused
// from its header alone: the broker closes the connection although the client
// has sent none of the payload.
func TestEmbeddedBrokerRefusesBeforeReading(t *testing.T) {
	b := startTestBroker(t, DefaultConfig().Admission.MaxPayloadBytes)
	c := dialRaw(t, b.Addr())
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	// MQTT 3.1.1 CONNECT, clean session, keepalive 60 s, client id "raw".
	connect := []byte{0x10, 15, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 3, 'r', 'a', 'w'}
	if _, err := c.Write(connect); err != nil {
		t.Fatal(err)
	}
	connack := make([]byte, 4)
	if _, err := io.ReadFull(c, connack); err != nil || connack[0] != 0x20 || connack[3] != 0 {
		t.Fatalf("CONNACK % x, %v", connack, err)
	}
	// PUBLISH QoS 1 whose remaining length says 200,000,000 bytes, then a topic.
	hdr := []byte{0x32}
	for n := 200_000_000; ; {
		d := byte(n % 128)
		if n /= 128; n > 0 {
			hdr = append(hdr, d|0x80)
			continue
		}
		hdr = append(hdr, d)
		break
	}
	hdr = append(hdr, 0, 5, 't', 'o', 'p', 'i', 'c', 0, 1)
	if _, err := c.Write(hdr); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(make([]byte, 64))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the broker is still waiting for the 200 MB payload")
	}
	if err == nil {
		t.Fatalf("the broker answered %d bytes instead of closing the connection", n)
	}
}

// TestEmbeddedBrokerDropsAreExported: a gateway running its embedded broker
// serves a request through it and exports how many messages the broker dropped
// after acknowledging them (sneakgate_embedded_broker_dropped_total) and how
// many it held instead (sneakgate_embedded_broker_held_total), 0 here; the
// broker guards the gateway's request filter. broker_hold_test.go makes mochi
// drop (without the hold) and hold.
func TestEmbeddedBrokerDropsAreExported(t *testing.T) {
	addr := freeAddr(t)
	cfg := testConfig(t, "tcp://"+addr, t.TempDir())
	cfg.MQTT.Embedded.Enabled, cfg.MQTT.Embedded.Listen = true, addr
	gw := startGateway(t, cfg, Options{})
	_, samples := fashionSamples(t)
	dev := newDevice(t, "tcp://"+addr, "cam-embedded")
	dev.request("fashion", "cam-embedded", "a", samples.Row(0), 60000)
	dev.await([]string{"a"}, 30*time.Second)
	if v := metricValue(t, gw.g.reg, "sneakgate_embedded_broker_dropped_total"); v != 0 {
		t.Errorf("sneakgate_embedded_broker_dropped_total = %v, want 0", v)
	}
	if d := gw.g.broker.Dropped(); d != 0 {
		t.Errorf("Dropped() = %d, want 0", d)
	}
	if v := metricValue(t, gw.g.reg, "sneakgate_embedded_broker_held_total"); v != 0 {
		t.Errorf("sneakgate_embedded_broker_held_total = %v, want 0", v)
	}
	if _, ok := gw.g.broker.hold.guard[cfg.MQTT.RequestFilter()]; !ok || !gw.g.broker.hold.owners[cfg.MQTT.ClientID] {
		t.Errorf("the broker guards %v for %v, not the request filter %s for %s", gw.g.broker.hold.guard, gw.g.broker.hold.owners,
			cfg.MQTT.RequestFilter(), cfg.MQTT.ClientID)
	}
}
