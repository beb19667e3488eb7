package gateway

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
)

// Connections the broker closes soon after they open, several a minute, are
// reported as a client id conflict; a connection that lasts clears it.
func TestBrokerLinkDetectsTakeovers(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newBrokerLink(func() time.Time { return now })
	connectFor := func(d time.Duration) (bool, int) {
		l.begin()
		now = now.Add(d)
		c, n := l.lost()
		now = now.Add(time.Second) // paho's reconnect delay
		return c, n
	}
	if c, _ := connectFor(time.Hour); c {
		t.Fatal("a connection that lasted an hour reported as a conflict")
	}
	for i := 1; i <= 2; i++ {
		if c, n := connectFor(2 * time.Second); c || n != i {
			t.Fatalf("short connection %d: conflict %v with %d short, want none yet", i, c, n)
		}
	}
	if c, n := connectFor(2 * time.Second); !c || n != 3 {
		t.Fatalf("third short connection within a minute: conflict %v with %d short, want a conflict", c, n)
	}
	if !l.inConflict() {
		t.Error("not in conflict right after the third short connection")
	}
	// The next connection lasts: the conflict is over while it holds.
	l.begin()
	now = now.Add(shortConnection)
	if l.inConflict() {
		t.Error("still in conflict while a connection has held for 10 s")
	}
	if c, n := l.lost(); c || n != 0 {
		t.Errorf("a lasting connection lost: conflict %v with %d short, want the count reset", c, n)
	}
	// Short connections spread over more than a minute are not a conflict.
	for range 5 {
		now = now.Add(40 * time.Second)
		if c, _ := connectFor(time.Second); c {
			t.Fatal("short connections 40 s apart reported as a conflict")
		}
	}
}

// With a real Mosquitto: another client connecting with the gateway's client id
// takes its session over; after a few such takeovers within a minute the
// gateway reports the conflict (metric and gauge), and the log says why.
func TestClientIDConflictReported(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	gw := startGateway(t, cfg, Options{})
	short := func() float64 { return testutil.ToFloat64(gw.g.link.takeovers) }
	for round := 0; round < takeoverShort; round++ {
		before := short()
		kicked := make(chan struct{}, 1)
		opts := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(cfg.MQTT.ClientID).
			SetCleanSession(false).SetAutoReconnect(false).
			SetConnectionLostHandler(func(mqtt.Client, error) { kicked <- struct{}{} })
		c := mqtt.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("round %d: the impostor could not connect: %v", round, tok.Error())
		}
		// The gateway reconnects and takes the session back, which closes ours.
		select {
		case <-kicked:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: the gateway did not take its client id back", round)
		}
		// paho runs the lost-connection handler on a goroutine of its own: wait
		// for it to have counted (bounded).
		for deadline := time.Now().Add(10 * time.Second); short() < before+1; {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: short connections %v -> %v, want one more", round, before, short())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !gw.g.link.inConflict() {
		t.Fatal("no client id conflict reported after repeated takeovers")
	}
}
