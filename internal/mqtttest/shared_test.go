package mqtttest

import (
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// sharedMember is one member of a shared subscription: a persistent session
// (clean session off) that acknowledges by hand, as the gateway does.
type sharedMember struct {
	name string
	c    mqtt.Client
	conn net.Conn // the TCP connection, to drop it without a DISCONNECT
	ack  bool     // acknowledge what arrives

	mu   sync.Mutex
	got  map[string]int // payload -> deliveries
	dups int            // deliveries with the DUP flag
}

func (m *sharedMember) handle(_ mqtt.Client, msg mqtt.Message) {
	m.mu.Lock()
	m.got[string(msg.Payload())]++
	if msg.Duplicate() {
		m.dups++
	}
	m.mu.Unlock()
	if m.ack {
		msg.Ack()
	}
}

func (m *sharedMember) has(p string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.got[p] > 0
}

// hasOf counts the payloads of ps the member got.
func (m *sharedMember) hasOf(ps []string) int {
	n := 0
	for _, p := range ps {
		if m.has(p) {
			n++
		}
	}
	return n
}

func (m *sharedMember) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.got)
}

// joinShared connects a member with client id name and subscribes it to filter.
func joinShared(t *testing.T, b *Broker, name, filter string, ack bool, will string) *sharedMember {
	t.Helper()
	m := &sharedMember{name: name, ack: ack, got: map[string]int{}}
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(name).SetCleanSession(false).
		SetAutoAckDisabled(true).SetAutoReconnect(false).SetOrderMatters(false).
		SetDefaultPublishHandler(m.handle).
		SetCustomOpenConnectionFn(func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
			c, err := net.Dial("tcp", u.Host)
			m.conn = c
			return c, err
		})
	if will != "" {
		o.SetWill(will, "gone", 1, false)
	}
	m.c = mqtt.NewClient(o)
	if tok := m.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: connect: %v", name, tok.Error())
	}
	if tok := m.c.Subscribe(filter, 1, m.handle); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: subscribe: %v", name, tok.Error())
	}
	t.Cleanup(func() { m.c.Disconnect(0) })
	return m
}

func waitUntil(within time.Duration, cond func() bool) bool {
	end := time.Now().Add(within)
	for !cond() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// TestSharedSubscriptionMemberDies records what Mosquitto does with a shared
// subscription (MQTT 3.1.1, persistent sessions, manual acknowledgement, the
// shipped delivery settings) when one member's connection dies without a
// DISCONNECT, as a SIGKILLed gateway's does: where the messages it had
// received but not acknowledged go, and where messages published while it is
// away go. docs/deployment.md ("Several gateways") reports the answer. The
// test asserts only that nothing is lost once the dead member's session
// resumes; it logs where each message went.
func TestSharedSubscriptionMemberDies(t *testing.T) {
	b := Start(t, Options{Shipped: true, Persistence: true})
	const filter = "$share/g/site/req/+/+"
	const n = 20
	obs := joinShared(t, b, "observer", "will/#", true, "")
	a := joinShared(t, b, "member-a", filter, false, "will/member-a") // never acknowledges
	bm := joinShared(t, b, "member-b", filter, true, "")
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("publisher"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(0)
	publish := func(phase string) []string {
		var ps []string
		for i := range n {
			p := fmt.Sprintf("%s-%02d", phase, i)
			ps = append(ps, p)
			if tok := pub.Publish("site/req/app/dev", 1, false, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
		}
		return ps
	}

	// Phase 1: both members up; member-a holds its share unacknowledged.
	before := publish("before")
	if !waitUntil(10*time.Second, func() bool { return a.count()+bm.count() == n }) {
		t.Fatalf("phase 1: members got %d + %d of %d", a.count(), bm.count(), n)
	}
	var held []string
	for _, p := range before {
		if a.has(p) {
			held = append(held, p)
		}
	}
	t.Logf("phase 1: member-a got %d (unacknowledged), member-b %d", len(held), bm.count())
	if len(held) == 0 {
		t.Fatal("member-a got nothing: the broker did not share the subscription")
	}

	// member-a dies: its TCP connection closes without a DISCONNECT. The will
	// tells when the broker has noticed.
	a.conn.Close()
	if !waitUntil(10*time.Second, func() bool { return obs.count() > 0 }) {
		t.Fatal("the broker did not publish member-a's will")
	}

	// Phase 2: published while member-a is away. Watch for 2 s where they, and
	// member-a's unacknowledged messages, go.
	during := publish("during")
	waitUntil(2*time.Second, func() bool { return bm.hasOf(held) == len(held) && bm.hasOf(during) == len(during) })
	heldToB, duringToB := bm.hasOf(held), bm.hasOf(during)
	t.Logf("member-a away for 2 s: member-b got %d of member-a's %d unacknowledged messages and %d of the %d published meanwhile",
		heldToB, len(held), duringToB, n)

	// member-a's session resumes (same client id, clean session off).
	a2 := joinShared(t, b, "member-a", filter, true, "")
	var missing []string
	waitUntil(10*time.Second, func() bool {
		missing = missing[:0]
		for _, p := range append(append([]string(nil), before...), during...) {
			if !bm.has(p) && !a2.has(p) {
				missing = append(missing, p)
			}
		}
		return len(missing) == 0
	})
	heldToA2, duringToA2 := a2.hasOf(held), a2.hasOf(during)
	a2.mu.Lock()
	dups := a2.dups
	a2.mu.Unlock()
	t.Logf("member-a back: it got %d of its %d unacknowledged messages again (%d deliveries flagged DUP) and %d of the %d published while it was away",
		heldToA2, len(held), dups, duringToA2, n)
	if len(missing) > 0 {
		t.Errorf("%d messages reached no member after member-a's session resumed: %v", len(missing), missing)
	}
}
