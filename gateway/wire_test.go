package gateway

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// What a misbehaving device can make the gateway do through MQTT.

// A reply_to that a wildcard of mqtt.reply_allow admits but that names a topic
// Mosquitto refuses (a control character, a Unicode non-character, more than
// 200 '/') is rejected reply_to_not_allowed on the device's own reply topic,
// and the gateway stays connected. Before, the request was answered to that
// topic: Mosquitto closed the gateway's connection at the publish, and the
// journaled answer, resent from the outbox after each reconnect, closed it
// again, and again: one device's request cut every device off.
func TestReplyToTheBrokerRefusesIsRejected(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	// docs/protocol.md's example allow-list.
	cfg.MQTT.ReplyAllow = []string{"{prefix}/res/{app}/{device}", "{prefix}/res/{app}/{device}/+", "alerts/{app}/#"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	gw := startGateway(t, cfg, Options{})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-rt")
	input, _ := json.Marshal(samples.Row(0))
	poison := map[string]string{
		"control":      "sneakgate/res/fashion/cam-rt/\x01",
		"c1":           "sneakgate/res/fashion/cam-rt/\u0085",
		"noncharacter": "sneakgate/res/fashion/cam-rt/\ufffe",
		"deep":         "alerts/fashion" + strings.Repeat("/x", 201),
	}
	var ids []string
	for id, rt := range poison {
		p, _ := json.Marshal(map[string]any{"id": id, "reply_to": rt, "deadline_ms": 5000, "input": json.RawMessage(input)})
		dev.publish(protocol.RequestTopic("sneakgate", "fashion", "cam-rt"), p)
		ids = append(ids, id)
	}
	dev.request("fashion", "cam-rt", "good", samples.Row(0), 5000)
	replies := dev.await(append(ids, "good"), 20*time.Second)
	for _, id := range ids {
		if r := replies[id]; r.Status != protocol.StatusRejected || r.Reason != protocol.ReasonReplyToNotAllowed {
			t.Errorf("%s: %s/%s (%s), want rejected/reply_to_not_allowed", id, r.Status, r.Reason, r.Error)
		}
	}
	if r := replies["good"]; r.Status != protocol.StatusOK {
		t.Errorf("good: %s/%s (%s), want ok", r.Status, r.Reason, r.Error)
	}
	if n := testutil.ToFloat64(gw.g.link.takeovers); n != 0 {
		t.Errorf("sneakgate_mqtt_short_connections_total = %v: the broker closed the gateway's connection", n)
	}
	if !gw.g.client.IsConnectionOpen() {
		t.Error("the gateway is not connected")
	}
}

// However wide mqtt.reply_allow is, a device cannot have its reply published
// on the gateway's request tree, where it came back to the gateway as a request
// from the device the topic names: that device got a rejection (unknown_field,
// under the id the first device chose) for a request it never sent. Nor on the
// status topics devices read. Such a reply_to is rejected reply_to_not_allowed
// on the device's own topic. (The shipped ACL does not let the gateway write
// the request tree, but an embedded broker has no ACL; it does let it write the
// status topic.)
func TestReplyToOwnTopics(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.MQTT.ReplyAllow = []string{"{prefix}/#"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	startGateway(t, cfg, Options{})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-a")
	input, _ := json.Marshal(samples.Row(0))
	var ids []string
	for id, rt := range map[string]string{"to-req": "sneakgate/req/fashion/cam-b", "to-status": "sneakgate/status"} {
		p, _ := json.Marshal(map[string]any{"id": id, "reply_to": rt, "deadline_ms": 5000, "input": json.RawMessage(input)})
		dev.publish(protocol.RequestTopic("sneakgate", "fashion", "cam-a"), p)
		ids = append(ids, id)
	}
	replies := dev.await(ids, 20*time.Second)
	for _, id := range ids {
		if r := replies[id]; r.Device != "cam-a" || r.Status != protocol.StatusRejected || r.Reason != protocol.ReasonReplyToNotAllowed {
			t.Errorf("%s: %s/%s for %s (%s), want rejected/reply_to_not_allowed for cam-a", id, r.Status, r.Reason, r.Device, r.Error)
		}
	}
	// The replies arrive in order: after a request of cam-b's own is answered,
	// any reply the first two caused has arrived too.
	dev.request("fashion", "cam-b", "b-own", samples.Row(0), 5000)
	dev.await([]string{"b-own"}, 20*time.Second)
	dev.mu.Lock()
	defer dev.mu.Unlock()
	for _, id := range ids {
		if n := len(dev.replies[id]); n != 1 {
			t.Errorf("%s: %d replies, want 1 (to cam-a): %q", id, n, dev.raw[id])
		}
	}
}

// A request to an application the gateway does not serve whose name is longer
// than the journal's keys allow (store.MaxKeyPart, 1,024 bytes; a topic level
// may hold 65,535) is rejected unknown_app and acknowledged like any other.
// Before, the journal lookup that looks for an earlier copy of it failed
// (store.ErrInvalid) and the message was left unacknowledged "for
// redelivery", holding one of the broker's in-flight slots for the gateway
// until it reconnected, and again after: max_inflight_messages such messages
// from one device and the broker sent the gateway no other request.
func TestLongUnknownAppIsRejected(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{MaxInflight: 4})
	cfg := testConfig(t, b.URL(), t.TempDir())
	gw := startGateway(t, cfg, Options{})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-l")
	long := strings.Repeat("a", 2000)
	var ids []string
	for i := range 8 {
		id := "long-" + string(rune('0'+i))
		dev.publish(protocol.RequestTopic("sneakgate", long, "cam-l"), []byte(`{"id":"`+id+`","input":[1]}`))
		ids = append(ids, id)
	}
	dev.request("fashion", "cam-l", "good", samples.Row(0), 5000)
	replies := dev.await(append(ids, "good"), 20*time.Second)
	for _, id := range ids {
		if r := replies[id]; r.Status != protocol.StatusRejected || r.Reason != protocol.ReasonUnknownApp {
			t.Errorf("%s: %s/%s (%s), want rejected/unknown_app", id, r.Status, r.Reason, r.Error)
		}
	}
	if r := replies["good"]; r.Status != protocol.StatusOK {
		t.Errorf("good: %s/%s (%s), want ok", r.Status, r.Reason, r.Error)
	}
	if n := testutil.ToFloat64(gw.g.m.storeErrors.WithLabelValues("lookup")); n != 0 {
		t.Errorf("sneakgate_store_errors_total{op=\"lookup\"} = %v, want 0", n)
	}
}

// A journal written by a version that admitted a reply_to the broker refuses
// (TestReplyToTheBrokerRefusesIsRejected) held, pending or in the outbox,
// replies whose publish closed the gateway's connection, at every start and
// reconnect: upgrading did not end the loop, only moving the journal aside
// did. The next start sends them to the device's own reply topic instead
// (protocol.Env.JournaledReplyTo), and stays connected.
func TestJournaledReplyToTheBrokerRefusesGoesToOwnTopic(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	_, samples := fashionSamples(t)
	j, err := store.Open(cfg.Store.Path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	poison := "sneakgate/res/fashion/cam-j/\x01"
	key := func(id string) store.Key { return store.Key{App: "fashion", Device: "cam-j", ID: id} }
	// Pending, to be run; pending past its deadline, to be answered expired; in the outbox.
	if _, err := j.Put(&store.Entry{Key: key("pending"), Received: now, Deadline: now.Add(time.Minute), ReplyTo: poison, Input: samples.Row(0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Put(&store.Entry{Key: key("expired"), Received: now.Add(-time.Minute), Deadline: now.Add(-time.Second), ReplyTo: poison, Input: samples.Row(1)}); err != nil {
		t.Fatal(err)
	}
	leaveInOutbox(t, j, &store.Entry{Key: key("outbox"), Received: now, Deadline: now.Add(time.Minute), ReplyTo: poison, Input: samples.Row(2)},
		&protocol.Reply{V: 1, ID: "outbox", App: "fashion", Device: "cam-j", Status: protocol.StatusOK,
			Class: protocol.Ptr(3), Label: "dress", Model: "cnn"}, true)
	j.Close()
	dev := newDevice(t, b.URL(), "cam-j")
	gw := startGateway(t, cfg, Options{})
	got := dev.await([]string{"pending", "expired", "outbox"}, 20*time.Second)
	if r := got["expired"]; r.Status != protocol.StatusExpired {
		t.Errorf("expired: %s/%s, want expired", r.Status, r.Reason)
	}
	if n := testutil.ToFloat64(gw.g.link.takeovers); n != 0 {
		t.Errorf("sneakgate_mqtt_short_connections_total = %v: the broker closed the gateway's connection", n)
	}
}
