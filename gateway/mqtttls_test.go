package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mosquitto"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
)

// TestTLSConfigErrorsNameTheKeyAndFile: mqtt.tls is checked when the file is
// loaded, and each error names the setting and the file.
func TestTLSConfigErrorsNameTheKeyAndFile(t *testing.T) {
	dir := t.TempDir()
	pki := mqtttest.NewPKI(t, dir, "sneakgate")
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	const base = "apps:\n  - manifest: a\nmqtt:\n"
	cases := map[string][]string{
		base + "  broker: tcp://127.0.0.1:1883\n  tls: {ca_file: " + pki.CA + "}\n":            {"mqtt.tls", "does not use TLS"},
		base + "  broker: mqtts://b:8883\n  tls: {ca_file: /nonexistent/ca.crt}\n":             {"mqtt.tls.ca_file", "/nonexistent/ca.crt"},
		base + "  broker: mqtts://b:8883\n  tls: {ca_file: " + notPEM + "}\n":                  {"mqtt.tls.ca_file", notPEM, "no PEM"},
		base + "  broker: ssl://b:8883\n  tls: {cert_file: " + pki.ClientCert + "}\n":          {"mqtt.tls.key_file", "required", pki.ClientCert},
		base + "  broker: ssl://b:8883\n  tls: {key_file: " + pki.ClientKey + "}\n":            {"mqtt.tls.cert_file", "required", pki.ClientKey},
		base + "  broker: tls://b:8883\n  tls: {cert_file: /nonexistent/c.crt, key_file: k}\n": {"mqtt.tls.cert_file", "/nonexistent/c.crt"},
		base + "  broker: mqtts://b:8883\n  tls: {cert_file: " + pki.ClientCert + ", key_file: " + pki.ServerKey + "}\n": {
			"mqtt.tls.cert_file", pki.ClientCert, pki.ServerKey, "private key does not match"},
	}
	for body, want := range cases {
		_, err := LoadConfig(writeConfig(t, body))
		if err == nil || !errors.Is(err, ErrConfig) {
			t.Errorf("%q: error %v, want a config error", body, err)
			continue
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not name %q", body, err, w)
			}
		}
	}
	// Relative paths are relative to the config file, like every path.
	for _, f := range []string{"ca.crt", "client.crt", "client.key"} {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		p := filepath.Join(dir, "conf", "tls", f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "conf", "sneakgate.yaml")
	if err := os.WriteFile(p, []byte(base+"  broker: mqtts://b:8883\n  tls: {ca_file: tls/ca.crt, cert_file: tls/client.crt, key_file: tls/client.key, server_name: broker.lan}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := c.MQTT.tlsConfig()
	if err != nil || tc == nil || tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.ServerName != "broker.lan" {
		t.Errorf("tls config from relative paths: %+v, %v", tc, err)
	}
	// A broker URL without TLS and no TLS settings: no TLS; paho's bare host:port too.
	for _, broker := range []string{"tcp://127.0.0.1:1883", "127.0.0.1:1883"} {
		if tc, err := (&MQTTConfig{Broker: broker}).tlsConfig(); tc != nil || err != nil {
			t.Errorf("%s: %v, %v", broker, tc, err)
		}
	}
}

// TestPasswordFromSystemdCredentials: with $CREDENTIALS_DIRECTORY set (systemd's
// LoadCredential=), no password_file means the credential mqtt-password if the
// service has it, and a bare name names a credential; a path stays a path.
func TestPasswordFromSystemdCredentials(t *testing.T) {
	creds := t.TempDir()
	const base = "apps:\n  - manifest: a\n"
	load := func(body string) *Config {
		t.Helper()
		c, err := LoadConfig(writeConfig(t, body))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	if c := load(base); c.MQTT.PasswordFile != "" {
		t.Errorf("no credential: password_file %q", c.MQTT.PasswordFile)
	}
	if err := os.WriteFile(filepath.Join(creds, "mqtt-password"), []byte("s3cret\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	if c := load(base); c.MQTT.PasswordFile != filepath.Join(creds, "mqtt-password") {
		t.Errorf("unset password_file with the credential: %q", c.MQTT.PasswordFile)
	}
	if c := load(base + "mqtt:\n  password_file: broker-pw\n"); c.MQTT.PasswordFile != filepath.Join(creds, "broker-pw") {
		t.Errorf("bare name: %q", c.MQTT.PasswordFile)
	}
	if c := load(base + "mqtt:\n  password_file: /etc/pw\n"); c.MQTT.PasswordFile != "/etc/pw" {
		t.Errorf("absolute path: %q", c.MQTT.PasswordFile)
	}
	p := writeConfig(t, base+"mqtt:\n  password_file: secrets/pw\n")
	if c, err := LoadConfig(p); err != nil || c.MQTT.PasswordFile != filepath.Join(filepath.Dir(p), "secrets/pw") {
		t.Errorf("relative path: %v %v", c, err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	p = writeConfig(t, base+"mqtt:\n  password_file: broker-pw\n")
	if c, err := LoadConfig(p); err != nil || c.MQTT.PasswordFile != filepath.Join(filepath.Dir(p), "broker-pw") {
		t.Errorf("bare name without systemd credentials: %v %v", c, err)
	}
}

// TestBlankCredentialIsNoPassword: the shipped unit's SetCredential= default (a
// blank line, handed over when /etc/sneakgate/mqtt-password does not exist) means
// no password; a credential with a password is read without its newline.
func TestBlankCredentialIsNoPassword(t *testing.T) {
	creds := t.TempDir()
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	for _, c := range []struct{ content, want string }{{"\n", ""}, {"", ""}, {"s3cret\n", "s3cret"}} {
		if err := os.WriteFile(filepath.Join(creds, CredentialName), []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(writeConfig(t, "apps:\n  - manifest: a\n"))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.MQTT.PasswordFile != filepath.Join(creds, CredentialName) {
			t.Errorf("credential %q: password_file %q", c.content, cfg.MQTT.PasswordFile)
		}
		if pw, err := cfg.MQTT.password(); err != nil || pw != c.want {
			t.Errorf("credential %q: password %q, %v; want %q", c.content, pw, err, c.want)
		}
	}
	cfg := MQTTConfig{PasswordFile: filepath.Join(creds, "missing")}
	if _, err := cfg.password(); err == nil || !strings.Contains(err.Error(), "mqtt.password_file") {
		t.Errorf("missing password file: %v, want an error naming mqtt.password_file", err)
	}
}

// TestGatewayOverTLS: against a Mosquitto TLS listener that requires client
// certificates (made by the test), the gateway with the CA, a client
// certificate and key connects, subscribes and serves; without the CA its log
// says why it cannot connect; a client without a certificate is refused.
func TestGatewayOverTLS(t *testing.T) {
	dir := t.TempDir()
	pki := mqtttest.NewPKI(t, dir, "sneakgate-test")
	port, err := mosquitto.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	b := mqtttest.Start(t, mqtttest.Options{Config: fmt.Sprintf(
		"listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
		port, pki.CA, pki.ServerCert, pki.ServerKey)})
	cfg := testConfig(t, b.URL(), dir)
	cfg.MQTT.Broker = fmt.Sprintf("mqtts://127.0.0.1:%d", port)
	cfg.MQTT.TLS = MQTTTLS{CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	gw := startGateway(t, cfg, Options{})
	if !gw.g.subscribed.Load() {
		t.Fatalf("not subscribed over TLS after New: %s", gw.g.readiness())
	}
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-tls") // the device uses the plain listener
	dev.request("fashion", "cam-tls", "a", samples.Row(0), 60000)
	if r := dev.await([]string{"a"}, 30*time.Second)["a"]; r.Status != "ok" {
		t.Errorf("reply over TLS: %+v", r)
	}

	// One attempt with the gateway's TLS settings less some.
	attempt := func(mc MQTTConfig) error {
		t.Helper()
		tc, err := mc.tlsConfig()
		if err != nil {
			t.Fatal(err)
		}
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mc.Broker).SetClientID("probe").SetTLSConfig(tc).
			SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return errors.New("no answer")
		}
		if tok.Error() == nil {
			c.Disconnect(50)
		}
		return tok.Error()
	}
	noCert := cfg.MQTT
	noCert.TLS.CertFile, noCert.TLS.KeyFile = "", ""
	if err := attempt(noCert); err == nil {
		t.Error("a client without a certificate was let in")
	}

	// Without the CA, the gateway's log says the broker's certificate is not trusted.
	noCA := *cfg
	noCA.MQTT.TLS.CAFile = ""
	noCA.MQTT.ClientID = "sneakgate-noca"
	noCA.Store.Path = filepath.Join(t.TempDir(), "journal.db")
	tap := newLogTap(t)
	ctx, cancel := context.WithCancel(context.Background())
	newDone := make(chan error, 1)
	var g2 *Gateway
	go func() {
		var err error
		g2, err = New(ctx, Options{Config: &noCA, Logger: zerolog.New(tap).Level(zerolog.WarnLevel)})
		newDone <- err
	}()
	tap.wait("connecting to the broker failed", 60*time.Second)
	if !strings.Contains(tap.String(), "x509: certificate signed by unknown authority") {
		t.Errorf("the failed attempt's log line does not say why:\n%s", tap.String())
	}
	cancel()
	if err := <-newDone; err != nil {
		t.Fatal(err)
	}
	if err := g2.Run(ctx); err != nil {
		t.Error(err)
	}
}
