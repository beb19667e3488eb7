package mqtttest

import (
	"net"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func connect(t *testing.T, url, id string, clean bool) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectTimeout(2 * time.Second)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func TestStartMosquitto(t *testing.T) {
	addr := StartMosquitto(t)
	c := connect(t, "tcp://"+addr, "t1", true)
	got := make(chan string, 1)
	if tok := c.Subscribe("x/#", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := c.Publish("x/y", 1, false, "hello"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case m := <-got:
		if m != "hello" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no message")
	}
}

func TestRestartKeepsPortAndPersistentSession(t *testing.T) {
	b := Start(t, Options{Persistence: true})
	sub := connect(t, b.URL(), "sub", false)
	if tok := sub.Subscribe("q", 1, func(mqtt.Client, mqtt.Message) {}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	sub.Disconnect(100)

	b.Stop()
	if b.Running() {
		t.Fatal("running after Stop")
	}
	if c, err := net.DialTimeout("tcp", b.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("broker still accepts connections after Stop")
	}
	b.Start()
	if !b.Running() {
		t.Fatal("not running after Start")
	}
	pub := connect(t, b.URL(), "pub", true)
	if tok := pub.Publish("q", 1, false, "queued"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	// The persistent session survived the restart: the message queued while "sub"
	// was away is delivered when it reconnects.
	got := make(chan string, 1)
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("sub").SetCleanSession(false).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) })
	o.SetResumeSubs(true)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer c.Disconnect(100)
	select {
	case m := <-got:
		if m != "queued" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("queued message not delivered after restart\n%s", b.Log())
	}

	b.Kill()
	if b.Running() {
		t.Fatal("running after Kill")
	}
	b.Start()
	connect(t, b.URL(), "after-kill", true)
}
