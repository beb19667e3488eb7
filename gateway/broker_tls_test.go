package gateway

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/internal/mosquitto"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

// probe connects one client to url with tc (nil: no TLS) and returns it, or the
// connection's error.
func probe(t *testing.T, url, id string, tc *tls.Config) (mqtt.Client, error) {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(3 * time.Second)
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("no answer")
	}
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, nil
}

// TestEmbeddedBrokerTLS: with mqtt.embedded.tls the gateway's own broker
// listens with TLS and requires client certificates; the gateway connects to
// it over mqtts:// with its client certificate, subscribes and announces
// itself; a client with a certificate reads that status; a client without a
// certificate, and one without TLS, are refused.
func TestEmbeddedBrokerTLS(t *testing.T) {
	dir := t.TempDir()
	pki := mqtttest.NewPKI(t, dir, "sneakgate-test")
	port, err := mosquitto.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := testConfig(t, "mqtts://"+addr, dir)
	cfg.MQTT.TLS = MQTTTLS{CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	cfg.MQTT.Embedded = EmbeddedBroker{Enabled: true, Listen: addr,
		TLS: EmbeddedTLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientCAFile: pki.CA}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	gw := startGateway(t, cfg, Options{})
	if !gw.g.subscribed.Load() {
		t.Fatalf("not subscribed to its embedded broker over TLS after New: %s", gw.g.readiness())
	}

	c, err := probe(t, "ssl://"+addr, "operator", pki.Client)
	if err != nil {
		t.Fatalf("a client with a certificate: %v", err)
	}
	status := make(chan []byte, 1)
	if tok := c.Subscribe(protocol.StatusTopic("sneakgate"), 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case status <- m.Payload():
		default:
		}
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	select {
	case p := <-status:
		var s protocol.GatewayStatus
		if err := json.Unmarshal(p, &s); err != nil || s.State != protocol.StateOnline {
			t.Errorf("status %s (%v), want online", p, err)
		}
	case <-time.After(10 * time.Second):
		t.Error("no retained status from the gateway on its TLS broker")
	}

	noCert := pki.Client.Clone()
	noCert.Certificates = nil
	if _, err := probe(t, "ssl://"+addr, "no-cert", noCert); err == nil {
		t.Error("a client without a certificate was let in")
	}
	if _, err := probe(t, "tcp://"+addr, "plain", nil); err == nil {
		t.Error("a client without TLS was let in")
	}
}

// TestEmbeddedTLSConfig: mqtt.embedded.tls is checked when the configuration
// is loaded, errors naming the setting; client certificates authenticate
// clients, so a non-loopback listen address may do without a users file.
func TestEmbeddedTLSConfig(t *testing.T) {
	dir := t.TempDir()
	pki := mqtttest.NewPKI(t, dir, "gw")
	load := func(listen, tlsYAML string) error {
		_, err := LoadConfig(writeConfig(t, "apps:\n  - manifest: a\nmqtt:\n  embedded:\n    enabled: true\n"+
			"    listen: '"+listen+"'\n    tls: "+tlsYAML+"\n"))
		return err
	}
	full := fmt.Sprintf("{cert_file: %s, key_file: %s, client_ca_file: %s}", pki.ServerCert, pki.ServerKey, pki.CA)
	serverOnly := fmt.Sprintf("{cert_file: %s, key_file: %s}", pki.ServerCert, pki.ServerKey)
	for _, c := range []struct{ listen, tls, want string }{
		{"127.0.0.1:8883", full, ""},
		{"127.0.0.1:8883", serverOnly, ""},
		{"0.0.0.0:8883", full, ""},
		{"0.0.0.0:8883", serverOnly, "mqtt.embedded.listen"}, // TLS alone authenticates no one
		{"127.0.0.1:8883", fmt.Sprintf("{key_file: %s}", pki.ServerKey), "mqtt.embedded.tls.cert_file"},
		{"127.0.0.1:8883", fmt.Sprintf("{cert_file: %s}", pki.ServerCert), "mqtt.embedded.tls.key_file"},
		{"127.0.0.1:8883", fmt.Sprintf("{client_ca_file: %s}", pki.CA), "mqtt.embedded.tls.cert_file"},
		{"127.0.0.1:8883", fmt.Sprintf("{cert_file: %s, key_file: %s}", pki.ServerCert, pki.ClientKey), "mqtt.embedded.tls.cert_file"},
		{"127.0.0.1:8883", fmt.Sprintf("{cert_file: %s, key_file: %s, client_ca_file: %s}", pki.ServerCert, pki.ServerKey, dir+"/missing.pem"), "mqtt.embedded.tls.client_ca_file"},
		{"127.0.0.1:8883", fmt.Sprintf("{cert_file: %s, key_file: %s, client_ca_file: %s}", pki.ServerCert, pki.ServerKey, pki.ServerKey), "mqtt.embedded.tls.client_ca_file"},
	} {
		err := load(c.listen, c.tls)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("listen %s tls %s: %v", c.listen, c.tls, err)
		case c.want != "" && (err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("listen %s tls %s: error %v, want one naming %s", c.listen, c.tls, err, c.want)
		}
	}
}
