package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

func TestSharedGroupConfig(t *testing.T) {
	c := DefaultConfig()
	if got := c.MQTT.RequestFilter(); got != "sneakgate/req/+/+" {
		t.Errorf("no group: filter %q", got)
	}
	if got := c.MQTT.StatusTopic(); got != "sneakgate/status" {
		t.Errorf("no group: status topic %q", got)
	}
	if got := c.MQTT.StatsTopic(); got != "sneakgate/stats" {
		t.Errorf("no group: stats topic %q", got)
	}
	c.MQTT.SharedGroup, c.MQTT.ClientID, c.MQTT.TopicPrefix = "gws", "gw-a", "site-3/sneakgate"
	if got := c.MQTT.RequestFilter(); got != "$share/gws/site-3/sneakgate/req/+/+" {
		t.Errorf("group: filter %q", got)
	}
	if got := c.MQTT.StatusTopic(); got != "site-3/sneakgate/status/gw-a" {
		t.Errorf("group: status topic %q", got)
	}
	if got := c.MQTT.StatsTopic(); got != "site-3/sneakgate/stats/gw-a" {
		t.Errorf("group: stats topic %q", got)
	}

	bad := map[string]string{
		"mqtt:\n  shared_group: 'a/b'\n":                           "mqtt.shared_group",
		"mqtt:\n  shared_group: 'a+'\n":                            "mqtt.shared_group",
		"mqtt:\n  shared_group: '#'\n":                             "mqtt.shared_group",
		"mqtt:\n  shared_group: g\n  client_id: 'gw/1'\n":          "mqtt.client_id",
		"mqtt:\n  shared_group: g\n  client_id: 'gw+{hostname}'\n": "mqtt.client_id",
	}
	for body, field := range bad {
		_, err := LoadConfig(writeConfig(t, body+"apps:\n  - manifest: a\n"))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), field) {
			t.Errorf("%q: error %v, want one naming %s", body, err, field)
		}
	}
	// Without a group the client id is not a topic level: '/' stays allowed.
	if _, err := LoadConfig(writeConfig(t, "mqtt:\n  client_id: 'gw/1'\napps:\n  - manifest: a\n")); err != nil {
		t.Errorf("client id with '/' and no group: %v", err)
	}

	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	got, err := LoadConfig(writeConfig(t, "mqtt:\n  shared_group: g\n  client_id: 'sneakgate-{hostname}'\napps:\n  - manifest: a\n"))
	if err != nil {
		if strings.Contains(host, "/") || strings.ContainsAny(host, "+#") {
			t.Skipf("host name %q is not a topic level", host)
		}
		t.Fatal(err)
	}
	if want := "sneakgate-" + host; got.MQTT.ClientID != want {
		t.Errorf("client id %q, want %q", got.MQTT.ClientID, want)
	}
	if got := expandHostname("gw-{hostname}", func() (string, error) { return "", errors.New("no") }); got != "gw-localhost" {
		t.Errorf("without a host name: %q", got)
	}
}

// TestSharedGroupSpreadsRequests runs two gateways in one shared group against
// Mosquitto: every request is answered exactly once, both members answer some,
// and each member's retained status is on its own topic, none on the plain one.
func TestSharedGroupSpreadsRequests(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	status := make(chan mqtt.Message, 100)
	op := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("operator"))
	if tok := op.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer op.Disconnect(100)
	for _, f := range []string{"sneakgate/status", "sneakgate/status/#"} {
		if tok := op.Subscribe(f, 1, func(_ mqtt.Client, m mqtt.Message) { status <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}

	profiles := filepath.Join(t.TempDir(), "profiles")
	var gws []*running
	for _, id := range []string{"gw-a", "gw-b"} {
		cfg := testConfig(t, b.URL(), t.TempDir())
		cfg.MQTT.ClientID, cfg.MQTT.SharedGroup = id, "sneakgates"
		cfg.Engine.ProfileCache = profiles
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		gws = append(gws, startGateway(t, cfg, Options{}))
	}

	online := map[string]bool{}
	timeout := time.After(30 * time.Second)
	for len(online) < 2 {
		select {
		case m := <-status:
			var s protocol.GatewayStatus
			if err := json.Unmarshal(m.Payload(), &s); err != nil {
				t.Fatalf("%s: %v", m.Topic(), err)
			}
			if m.Topic() == "sneakgate/status" {
				t.Errorf("a member published on the group-wide status topic: %s", m.Payload())
			}
			if s.State == protocol.StateOnline {
				online[m.Topic()] = true
			}
		case <-timeout:
			t.Fatalf("online statuses seen: %v", online)
		}
	}
	if !online["sneakgate/status/gw-a"] || !online["sneakgate/status/gw-b"] {
		t.Errorf("online statuses on %v, want sneakgate/status/gw-a and sneakgate/status/gw-b", online)
	}

	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-group")
	var ids []string
	for i := range 40 {
		id := fmt.Sprintf("g%02d", i)
		ids = append(ids, id)
		dev.request("fashion", "cam-group", id, samples.Row(i), 5000)
	}
	dev.await(ids, 60*time.Second)
	received := 0
	for i, gw := range gws {
		n := int(testutil.ToFloat64(gw.g.m.received.WithLabelValues("fashion")))
		if n == 0 {
			t.Errorf("member %d received no request: the broker did not share the subscription", i)
		}
		received += n
	}
	if received != len(ids) {
		t.Errorf("the members received %d requests in all, want %d (each exactly once)", received, len(ids))
	}
	for _, id := range ids {
		if n := dev.count(id); n != 1 {
			t.Errorf("%s answered %d times", id, n)
		}
	}

	// A clean stop of one member sets its own status offline; the other stays online.
	gws[0].stop(t)
	timeout = time.After(30 * time.Second)
	for {
		select {
		case m := <-status:
			var s protocol.GatewayStatus
			_ = json.Unmarshal(m.Payload(), &s)
			if m.Topic() == "sneakgate/status/gw-b" && s.State != protocol.StateOnline {
				t.Fatalf("gw-b went %s when gw-a stopped", s.State)
			}
			if m.Topic() == "sneakgate/status/gw-a" && s.State == protocol.StateOffline {
				if s.Reason != "shutdown" {
					t.Errorf("gw-a offline status %+v", s)
				}
				return
			}
		case <-timeout:
			t.Fatal("no offline status for gw-a after its shutdown")
		}
	}
}
