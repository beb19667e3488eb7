package tail

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

// lineWriter sends each complete line written to it on a channel.
type lineWriter struct {
	buf   bytes.Buffer
	lines chan string
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	for {
		l, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(l) // incomplete: keep it
			return len(b), nil
		}
		w.lines <- strings.TrimSuffix(l, "\n")
	}
}

// Replies published on a real Mosquitto's result topics reach the printer
// through Subscribe, filtered by app and status, with malformed payloads
// shown and counted.
func TestSubscribeMosquitto(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msgs, stop, err := Subscribe(ctx, SubscribeOptions{Broker: b.URL(), Filter: "sneakgate/res/#"})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	out := &lineWriter{lines: make(chan string, 64)}
	p := NewPrinter(out, Options{Location: time.UTC, Filter: Filter{Apps: []string{"fashion"},
		Statuses: []protocol.Status{protocol.StatusOK, protocol.StatusRejected}}}, t0)
	done := make(chan struct{})
	runCtx, stopRun := context.WithCancel(ctx)
	go func() { Run(runCtx, p, msgs, nil, 0, time.Now); close(done) }()

	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("tail-test-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer pub.Disconnect(0)
	late := okReply("r2", "fashion", "cam-2", 60, -10)
	late.Status = protocol.StatusLate
	// One publisher at QoS 1: the broker delivers in this order.
	for _, m := range []struct {
		topic   string
		payload []byte
	}{
		{"sneakgate/res/fashion/cam-1", reply(t, okReply("r1", "fashion", "cam-1", 2.66, 97.34))},
		{"sneakgate/res/fashion/cam-2", reply(t, late)},                                    // status filtered out
		{"sneakgate/res/vad/mic-1", reply(t, rejected("r3", "vad", "mic-1"))},              // app filtered out
		{"sneakgate/res/fashion/cam-3", []byte(`{"v":1,"status":"maybe"}`)},                // malformed
		{"sneakgate/req/fashion/cam-1", reply(t, okReply("r0", "fashion", "cam-1", 1, 1))}, // not a result topic
		{"sneakgate/res/fashion/cam-1", reply(t, rejected("r4", "fashion", "cam-1"))},
	} {
		if tok := pub.Publish(m.topic, 1, false, m.payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	want := []string{
		"fashion/cam-1 r1 ok sandal 0.96 resnet-s 2.66ms slack +97.3ms",
		`sneakgate/res/fashion/cam-3 MALFORMED bad reply: status "maybe"`,
		"fashion/cam-1 r4 rejected overload: queue full",
	}
	for _, w := range want {
		select {
		case l := <-out.lines:
			if !strings.Contains(strings.Join(strings.Fields(l), " "), w) {
				t.Errorf("line %q, want one containing %q", l, w)
			}
		case <-ctx.Done():
			t.Fatalf("no line containing %q", w)
		}
	}
	stopRun()
	<-done
	final := <-out.lines
	if !strings.Contains(final, "-- total ") || !strings.Contains(final, ": 2 replies") ||
		!strings.Contains(final, "ok 1 (50.0%) rejected 1 (50.0%)") || !strings.Contains(final, "malformed 1") {
		t.Errorf("final summary %q", final)
	}
}

// A subscription the broker refuses fails Subscribe, saying so, a shared one
// ($share/{group}/...) too: paho keys its SUBACK result by the filter without
// the prefix, and a lookup by the filter as given found nothing and passed.
// (Mosquitto's ACL file only filters deliveries; its dynamic security plugin
// refuses.)
func TestSubscribeRefused(t *testing.T) {
	plugin, _ := filepath.Glob("/usr/lib/*/mosquitto_dynamic_security.so")
	if len(plugin) == 0 {
		t.Fatal("mosquitto_dynamic_security.so not found (Debian's mosquitto package installs it)")
	}
	dynsec := filepath.Join(t.TempDir(), "dynamic-security.json")
	if err := os.WriteFile(dynsec, []byte(`{"defaultACLAccess":{"subscribe":false},"clients":[],"roles":[],
 "groups":[{"groupname":"anon","roles":[]}],"anonymousGroup":"anon"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	b := mqtttest.Start(t, mqtttest.Options{Config: "plugin " + plugin[0] + "\nplugin_opt_config_file " + dynsec})
	for _, filter := range []string{"sneakgate/res/#", "$share/ops/sneakgate/res/#"} {
		_, _, err := Subscribe(context.Background(), SubscribeOptions{Broker: b.URL(), Filter: filter})
		if err == nil || !strings.Contains(err.Error(), "refused the subscription to "+filter+" (SUBACK 0x80): check its ACL for anonymous clients") {
			t.Errorf("Subscribe %s: %v, want a refused subscription", filter, err)
		}
	}
}

// A shared subscription the broker grants works: Subscribe returns and the
// messages arrive.
func TestSubscribeShared(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, stop, err := Subscribe(ctx, SubscribeOptions{Broker: b.URL(), Filter: "$share/ops/sneakgate/res/#"})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("tail-test-shared-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer pub.Disconnect(0)
	if tok := pub.Publish("sneakgate/res/fashion/cam-1", 1, false, reply(t, okReply("s1", "fashion", "cam-1", 1, 1))); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case m := <-msgs:
		if m.Topic != "sneakgate/res/fashion/cam-1" {
			t.Errorf("message on %s", m.Topic)
		}
	case <-ctx.Done():
		t.Fatal("no message through the shared subscription")
	}
}
