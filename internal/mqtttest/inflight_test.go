package mqtttest

import (
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestResumedSessionInflightWindow records how many messages the broker, with
// the shipped delivery settings (max_inflight_messages 1000), sends a persistent
// session that acknowledges by hand, as the gateway does, when it comes back to
// a backlog: the in-flight window before it acknowledges anything, and what
// follows its first 100 acknowledgements. A broker that keeps its window sends
// 100 more; Mosquitto 2.0.11 sends the whole backlog: its db__message_delete_
// outgoing counts the messages in flight only up to the one acknowledged, so an
// early PUBACK frees almost the whole window again (fixed in 2.0.13, upstream
// 330bf6ef, "Various fixes around inflight quota management"). The gateway must
// not count on the window: it reads no faster than its request handlers take
// messages (docs/reliability.md, "Kill -9 at ten times the rate").
// docs/deployment.md reports the figures. The test asserts only what any broker
// must do: the window before the first acknowledgement, and at least one
// message for each acknowledgement after it.
func TestResumedSessionInflightWindow(t *testing.T) {
	const backlog, window, acks = 5000, 1000, 100
	b := Start(t, Options{Shipped: true, Persistence: true})
	if w := ShippedSetting(t, "max_inflight_messages"); w != strconv.Itoa(window) {
		t.Fatalf("shipped max_inflight_messages %s, the test expects %d", w, window)
	}
	var mu sync.Mutex
	var held []mqtt.Message
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(held) }
	connectGateway := func() mqtt.Client {
		o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("sneakgate").SetCleanSession(false).
			SetAutoAckDisabled(true).SetOrderMatters(false).SetAutoReconnect(false).
			SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
				mu.Lock()
				held = append(held, m)
				mu.Unlock()
			})
		c := mqtt.NewClient(o)
		wait(t, c.Connect(), "connect sneakgate")
		t.Cleanup(func() { c.Disconnect(50) })
		return c
	}
	gw := connectGateway()
	wait(t, gw.Subscribe("sneakgate/req/+/+", 1, nil), "subscribe")
	gw.Disconnect(50) // the gateway restarts; requests queue meanwhile

	dev := connect(t, b.URL(), "cam-1", true)
	toks := make([]mqtt.Token, backlog)
	for i := range toks {
		toks[i] = dev.Publish("sneakgate/req/fashion/cam-1", 1, false, payload(strconv.Itoa(i), 100))
	}
	for _, tok := range toks {
		wait(t, tok, "publish")
	}

	connectGateway() // back, acknowledging nothing yet
	if !waitUntil(10*time.Second, func() bool { return count() >= window }) {
		t.Fatalf("got %d of the %d-message window before acknowledging anything", count(), window)
	}
	waitUntil(time.Second, func() bool { return count() > window }) // watch for 1 s
	before := count()
	if before > window {
		t.Errorf("got %d messages before acknowledging any, more than the in-flight window of %d", before, window)
	}

	mu.Lock()
	for _, m := range held[:acks] {
		m.Ack()
	}
	mu.Unlock()
	if !waitUntil(10*time.Second, func() bool { return count() >= before+acks }) {
		t.Fatalf("after %d acknowledgements got %d more messages, want at least %d", acks, count()-before, acks)
	}
	waitUntil(2*time.Second, func() bool { return count() == backlog }) // watch for 2 s
	after := count() - before
	t.Logf("backlog %d, window %d: %d messages before any acknowledgement; %d more within 2 s of the first %d acknowledgements (a broker keeping its window sends %d; %d unacknowledged in the client now)",
		backlog, window, before, after, acks, acks, count()-acks)
}
