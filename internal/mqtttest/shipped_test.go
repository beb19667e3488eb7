package mqtttest

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// collector counts the distinct messages a client receives, by payload prefix.
type collector struct {
	mu   sync.Mutex
	seen map[string]int // key -> payload length
	more chan struct{}  // signalled (non-blocking) on every message
}

func newCollector() *collector {
	return &collector{seen: map[string]int{}, more: make(chan struct{}, 1)}
}

func (c *collector) handle(_ mqtt.Client, m mqtt.Message) {
	key, _, _ := strings.Cut(string(m.Payload()[:min(len(m.Payload()), 32)]), "|")
	c.mu.Lock()
	c.seen[m.Topic()+" "+key] = len(m.Payload())
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

func (c *collector) has(topic, key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.seen[topic+" "+key]
	return ok
}

// waitFor waits until ok holds, re-checking on every message, or fails after d.
func (c *collector) waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.After(d)
	for !ok() {
		select {
		case <-c.more:
		case <-deadline:
			t.Fatalf("%s: not after %s (%d messages seen)", what, d, c.count())
		}
	}
}

// payload is n bytes starting with "key|".
func payload(key string, n int) []byte {
	p := []byte(strings.Repeat("x", n))
	copy(p, key+"|")
	return p
}

func wait(t *testing.T, tok mqtt.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v", what, tok.Error())
	}
}

// session connects a persistent session (clean session off) that routes every
// message to c, including those queued while it was away.
func session(t *testing.T, url, id string, c *collector) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(false).
		SetAutoReconnect(false).SetConnectTimeout(2 * time.Second).SetDefaultPublishHandler(c.handle)
	cl := mqtt.NewClient(o)
	wait(t, cl.Connect(), "connect "+id)
	t.Cleanup(func() { cl.Disconnect(50) })
	return cl
}

// TestShippedKeepsQueueBeyondDefault is the regression test for "the broker drops
// requests it has acknowledged": while the gateway's persistent session is away,
// 3,000 QoS 1 requests arrive; with the shipped configuration every one is
// delivered when the gateway comes back. The control runs the same with
// Mosquitto's default max_queued_messages (1000) and must see the loss, so the
// test is known to detect it.
func TestShippedKeepsQueueBeyondDefault(t *testing.T) {
	const n = 3000
	run := func(t *testing.T, b *Broker) (got int) {
		gw := newCollector()
		sub := session(t, b.URL(), "sneakgate", gw)
		wait(t, sub.Subscribe("sneakgate/req/+/+", 1, nil), "subscribe")
		sub.Disconnect(50) // the gateway restarts

		dev := connect(t, b.URL(), "cam-1", true)
		toks := make([]mqtt.Token, n)
		for i := range toks {
			toks[i] = dev.Publish("sneakgate/req/fashion/cam-1", 1, false, payload(strconv.Itoa(i), 4300))
		}
		for i, tok := range toks {
			wait(t, tok, fmt.Sprintf("publish %d", i)) // acknowledged by the broker
		}
		session(t, b.URL(), "sneakgate", gw)
		// The sentinel, published once the gateway is back, queues behind what the
		// broker kept: once it is in, everything kept has been delivered.
		wait(t, dev.Publish("sneakgate/req/fashion/cam-1", 1, false, payload("end", 10)), "publish end")
		gw.waitFor(t, 10*time.Second, "sentinel", func() bool { return gw.has("sneakgate/req/fashion/cam-1", "end") })
		return gw.count() - 1
	}

	b := Start(t, Options{Shipped: true})
	if got := run(t, b); got != n {
		t.Fatalf("shipped config: %d of %d acknowledged requests delivered", got, n)
	}
	if strings.Contains(b.Log(), "Outgoing messages are being dropped") {
		t.Fatalf("shipped config dropped messages:\n%s", b.Log())
	}

	t.Run("control with the default limit", func(t *testing.T) {
		b := Start(t, Options{Config: "max_queued_messages 1000"})
		if got := run(t, b); got >= n {
			t.Fatalf("default limit: all %d delivered; the test no longer detects the loss", got)
		}
		if !strings.Contains(b.Log(), "Outgoing messages are being dropped for client sneakgate") {
			t.Fatalf("default limit: no drop in the log:\n%s", b.Log())
		}
	})
}

// TestShippedPacketLimit: a request a little over the gateway's payload limit
// still reaches the gateway (which answers payload_too_large); a packet over the
// broker's max_packet_size is refused and its sender disconnected, and it never
// reaches the gateway.
func TestShippedPacketLimit(t *testing.T) {
	maxPacket, err := strconv.Atoi(ShippedSetting(t, "max_packet_size"))
	if err != nil {
		t.Fatal(err)
	}
	b := Start(t, Options{Shipped: true})
	gw := newCollector()
	sub := connect(t, b.URL(), "sneakgate", true)
	wait(t, sub.Subscribe("sneakgate/req/#", 1, gw.handle), "subscribe")

	dev := connect(t, b.URL(), "cam-1", true)
	topic := "sneakgate/req/fashion/cam-1"
	wait(t, dev.Publish(topic, 1, false, payload("over-admission", 256<<10+1000)), "publish over admission")
	gw.waitFor(t, 10*time.Second, "payload over admission.max_payload_bytes", func() bool { return gw.has(topic, "over-admission") })

	lost := make(chan error, 1)
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("cam-2").SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	big := mqtt.NewClient(o)
	wait(t, big.Connect(), "connect cam-2")
	defer big.Disconnect(50)
	big.Publish("sneakgate/req/fashion/cam-2", 1, false, payload("huge", maxPacket))
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatalf("a packet over max_packet_size %d did not cost the sender its connection", maxPacket)
	}
	wait(t, dev.Publish(topic, 1, false, payload("after", 10)), "publish after")
	gw.waitFor(t, 10*time.Second, "message after the refused one", func() bool { return gw.has(topic, "after") })
	if gw.has("sneakgate/req/fashion/cam-2", "huge") {
		t.Fatal("a packet over max_packet_size was delivered")
	}
}

// TestShippedSurvivesBrokerKillAfterSave: with the shipped autosave, messages
// queued before the broker's last save survive kill -9 (with Mosquitto's default
// they would survive only a clean stop).
func TestShippedSurvivesBrokerKillAfterSave(t *testing.T) {
	const n = 100
	b := Start(t, Options{Shipped: true})
	gw := newCollector()
	sub := session(t, b.URL(), "sneakgate", gw)
	wait(t, sub.Subscribe("sneakgate/req/+/+", 1, nil), "subscribe")
	sub.Disconnect(50)
	dev := connect(t, b.URL(), "cam-1", true)
	for i := range n {
		wait(t, dev.Publish("sneakgate/req/fashion/cam-1", 1, false, payload(strconv.Itoa(i), 100)), "publish")
	}
	// Every PUBACK is in: a save that ends after now holds all n. Mosquitto writes
	// the snapshot to a new file and renames it, so a mosquitto.db modified after
	// now is a complete later save (file times never run ahead of the clock).
	acked := time.Now()
	db := filepath.Join(b.dir, "mosquitto.db")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(db); err == nil && fi.ModTime().After(acked) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no save of %s within 10 s of the last PUBACK", db)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Kill()
	b.Start()
	session(t, b.URL(), "sneakgate", gw)
	gw.waitFor(t, 10*time.Second, fmt.Sprintf("%d messages after kill -9", n), func() bool { return gw.count() == n })
}

// replaceLine replaces the one line of conf that starts with prefix by line.
func replaceLine(t *testing.T, conf, prefix, line string) string {
	t.Helper()
	lines := strings.Split(conf, "\n")
	found := 0
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			lines[i] = line
			found++
		}
	}
	if found != 1 {
		t.Fatalf("%s: %d lines start with %q, want 1", ShippedConfig, found, prefix)
	}
	return strings.Join(lines, "\n")
}

// uncommentTLS uncomments the TLS listener example ("#listener 8883" and the
// settings up to the next blank line) and points it at port and the given files.
func uncommentTLS(t *testing.T, conf string, port int, ca, cert, key string) string {
	t.Helper()
	lines := strings.Split(conf, "\n")
	start := -1
	for i, l := range lines {
		if l == "#listener 8883" {
			start = i
		}
	}
	if start < 0 {
		t.Fatalf("%s: no \"#listener 8883\" example", ShippedConfig)
	}
	files := map[string]string{"cafile": ca, "certfile": cert, "keyfile": key}
	for i := start; i < len(lines) && strings.HasPrefix(lines[i], "#"); i++ {
		k, _, _ := strings.Cut(strings.TrimPrefix(lines[i], "#"), " ")
		switch {
		case k == "listener":
			lines[i] = fmt.Sprintf("listener %d 127.0.0.1", port)
		case files[k] != "":
			lines[i] = k + " " + files[k]
			delete(files, k)
		default:
			lines[i] = strings.TrimPrefix(lines[i], "#")
		}
	}
	if len(files) != 0 {
		t.Fatalf("%s: the TLS example lacks %v", ShippedConfig, files)
	}
	return strings.Join(lines, "\n")
}

// TestShippedConfigAsDebianDropIn starts Mosquitto the way Debian does, with the
// shipped file as a conf.d drop-in (its listener, password file and TLS files
// moved to the test's), and checks what the file and configs/mosquitto.acl
// promise: no anonymous clients; the gateway user reads every request and writes
// replies and its status; a device publishes requests only under its own name and
// reads only its own replies and the status; on the TLS listener a device is
// known by its certificate's CN.
func TestShippedConfigAsDebianDropIn(t *testing.T) {
	passwd, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd not installed")
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile(filepath.Join(root, ShippedConfig))
	if err != nil {
		t.Fatal(err)
	}
	tlsPort := freePort(t)
	var clientTLS *tls.Config
	b := start(t, func(b *Broker) string {
		pw := filepath.Join(b.dir, "sneakgate.passwd")
		for i, user := range []string{"sneakgate", "cam-1", "cam-2", "operator"} {
			args := []string{"-b", pw, user, "pw-" + user}
			if i == 0 {
				args = append([]string{"-c"}, args...)
			}
			if out, err := exec.Command(passwd, args...).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_passwd: %v: %s", err, out)
			}
		}
		dropIn := string(shipped)
		dropIn = replaceLine(t, dropIn, "listener 1883 ", fmt.Sprintf("listener %d 127.0.0.1", b.port))
		dropIn = replaceLine(t, dropIn, "password_file ", "password_file "+pw)
		dropIn = replaceLine(t, dropIn, "acl_file ", "acl_file "+filepath.Join(root, ShippedACL))
		var ca, cert, key string
		pki := NewPKI(t, b.dir, "cam-1")
		ca, cert, key, clientTLS = pki.CA, pki.ServerCert, pki.ServerKey, pki.Client
		dropIn = uncommentTLS(t, dropIn, tlsPort, ca, cert, key)
		confd := filepath.Join(b.dir, "conf.d")
		if err := os.Mkdir(confd, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(confd, "sneakgate.conf"), []byte(dropIn), 0o600); err != nil {
			t.Fatal(err)
		}
		// Debian's /etc/mosquitto/mosquitto.conf, with the test's paths.
		main := fmt.Sprintf("persistence true\npersistence_location %s/\nlog_dest stderr\ninclude_dir %s\n", b.dir, confd)
		if os.Geteuid() == 0 {
			main = "user root\n" + main
		}
		return main
	})
	if strings.Contains(b.Log(), "Error") {
		t.Fatalf("errors in the log:\n%s", b.Log())
	}

	login := func(user string) (mqtt.Client, error) {
		o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(user).SetUsername(user).
			SetPassword("pw-" + user).SetAutoReconnect(false).SetConnectTimeout(2 * time.Second)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			return nil, fmt.Errorf("connect %s: %v", user, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(50) })
		return c, nil
	}
	mustLogin := func(user string) mqtt.Client {
		c, err := login(user)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	anon := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("anon").SetAutoReconnect(false))
	if tok := anon.Connect(); tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		anon.Disconnect(50)
		t.Fatal("an anonymous client was let in")
	}
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("x").SetUsername("cam-1").SetPassword("wrong").SetAutoReconnect(false)
	if tok := mqtt.NewClient(o).Connect(); tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		t.Fatal("a wrong password was let in")
	}

	gw := newCollector()
	gwc := mustLogin("sneakgate")
	wait(t, gwc.Subscribe("sneakgate/req/+/+", 1, gw.handle), "gateway subscribes")
	cam1, cam2 := newCollector(), newCollector()
	c1, c2 := mustLogin("cam-1"), mustLogin("cam-2")
	// Mosquitto 2.0 does not check subscriptions against the ACL: a device may
	// subscribe to every reply and receives only its own.
	wait(t, c1.Subscribe("sneakgate/res/#", 1, cam1.handle), "cam-1 subscribes")
	wait(t, c1.Subscribe("sneakgate/status", 1, cam1.handle), "cam-1 subscribes to status")
	wait(t, c2.Subscribe("sneakgate/res/#", 1, cam2.handle), "cam-2 subscribes")

	// A device poses as another: acknowledged (MQTT 3.1.1) and dropped.
	wait(t, c1.Publish("sneakgate/req/fashion/cam-2", 1, false, payload("forged", 10)), "cam-1 publishes as cam-2")
	wait(t, c1.Publish("sneakgate/res/fashion/cam-2", 1, false, payload("forged-reply", 10)), "cam-1 publishes a reply")
	wait(t, c1.Publish("sneakgate/req/fashion/cam-1", 1, false, payload("r1", 10)), "cam-1 publishes")
	gw.waitFor(t, 10*time.Second, "cam-1's own request", func() bool { return gw.has("sneakgate/req/fashion/cam-1", "r1") })
	wait(t, c2.Publish("sneakgate/req/vad/cam-2", 1, false, payload("r2", 10)), "cam-2 publishes")
	gw.waitFor(t, 10*time.Second, "cam-2's own request", func() bool { return gw.has("sneakgate/req/vad/cam-2", "r2") })

	wait(t, gwc.Publish("sneakgate/res/fashion/cam-2", 1, false, payload("a2", 10)), "gateway replies to cam-2")
	wait(t, gwc.Publish("sneakgate/res/fashion/cam-1", 1, false, payload("a1", 10)), "gateway replies to cam-1")
	wait(t, gwc.Publish("sneakgate/status", 1, true, payload("online", 10)), "gateway status")
	cam1.waitFor(t, 10*time.Second, "cam-1's reply and the status", func() bool {
		return cam1.has("sneakgate/res/fashion/cam-1", "a1") && cam1.has("sneakgate/status", "online")
	})
	cam2.waitFor(t, 10*time.Second, "cam-2's reply", func() bool { return cam2.has("sneakgate/res/fashion/cam-2", "a2") })
	// Each device got its own reply, published after the forgeries: those are gone.
	if gw.has("sneakgate/req/fashion/cam-2", "forged") || cam2.has("sneakgate/res/fashion/cam-2", "forged-reply") {
		t.Error("a device published under another device's name")
	}
	if cam1.has("sneakgate/res/fashion/cam-2", "a2") || cam2.has("sneakgate/res/fashion/cam-1", "a1") {
		t.Error("a device read another device's reply")
	}

	// TLS: the client certificate (CN cam-1) is the login; no password.
	addr := fmt.Sprintf("127.0.0.1:%d", tlsPort)
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TLS listener %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	to := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID("cam-1-tls").SetTLSConfig(clientTLS).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	tc := mqtt.NewClient(to)
	wait(t, tc.Connect(), "TLS connect with a client certificate")
	defer tc.Disconnect(50)
	wait(t, tc.Publish("sneakgate/req/fashion/cam-2", 1, false, payload("tls-forged", 10)), "TLS publish as cam-2")
	wait(t, tc.Publish("sneakgate/req/fashion/cam-1", 1, false, payload("tls", 10)), "TLS publish")
	gw.waitFor(t, 10*time.Second, "the TLS device's request", func() bool { return gw.has("sneakgate/req/fashion/cam-1", "tls") })
	if gw.has("sneakgate/req/fashion/cam-2", "tls-forged") {
		t.Error("a TLS device published under another device's name")
	}
	noCert := clientTLS.Clone()
	noCert.Certificates = nil
	nc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID("nocert").SetTLSConfig(noCert).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := nc.Connect(); tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		nc.Disconnect(50)
		t.Error("a TLS client without a certificate was let in")
	}
}
