package gateway

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"
)

// TestEmbeddedBrokerUsers: with a users file the embedded broker refuses
// anonymous clients and wrong passwords, and a listed user connects, subscribes
// and publishes.
func TestEmbeddedBrokerUsers(t *testing.T) {
	f := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(f, []byte("# gateway and one camera\nsneakgate:gw-s3cret\n\ncam-1:pa:ss\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := LoadUsersFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 2 || users["cam-1"] != "pa:ss" {
		t.Fatalf("users %v", users)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	b, err := StartBroker(addr, 1024, users, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	connect := func(id, user, pass string) (mqtt.Client, error) {
		o := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
			SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(2 * time.Second)
		if user != "" {
			o.SetUsername(user).SetPassword(pass)
		}
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(5 * time.Second) {
			t.Fatalf("connect %s: timed out", id)
		}
		if tok.Error() != nil {
			return nil, tok.Error()
		}
		t.Cleanup(func() { c.Disconnect(50) })
		return c, nil
	}
	if _, err := connect("anon", "", ""); err == nil {
		t.Error("anonymous client accepted")
	}
	if _, err := connect("cam-1", "cam-1", "wrong"); err == nil {
		t.Error("wrong password accepted")
	}
	if _, err := connect("stranger", "stranger", "pa:ss"); err == nil {
		t.Error("unlisted user accepted")
	}
	gw, err := connect("sneakgate", "sneakgate", "gw-s3cret")
	if err != nil {
		t.Fatalf("listed user refused: %v", err)
	}
	got := make(chan string, 1)
	if tok := gw.Subscribe("sneakgate/req/#", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	cam, err := connect("cam-1", "cam-1", "pa:ss")
	if err != nil {
		t.Fatalf("listed user refused: %v", err)
	}
	if tok := cam.Publish("sneakgate/req/fashion/cam-1", 1, false, "hello"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case p := <-got:
		if p != "hello" {
			t.Errorf("payload %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("publish of a listed user not delivered")
	}
}

// TestEmbeddedListenNeedsUsers: the config refuses a non-loopback listen
// address for the embedded broker without a users file, and takes it with one.
func TestEmbeddedListenNeedsUsers(t *testing.T) {
	for _, listen := range []string{"0.0.0.0:1883", ":1883", "192.168.1.10:1883", "[::]:1883", "edge.local:1883"} {
		_, err := LoadConfig(writeConfig(t, "apps:\n  - manifest: a\nmqtt:\n  embedded: {enabled: true, listen: '"+listen+"'}\n"))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "mqtt.embedded.listen") {
			t.Errorf("listen %s without users: error %v, want one naming mqtt.embedded.listen", listen, err)
		}
	}
	for _, listen := range []string{"127.0.0.1:1883", "127.0.0.2:1883", "[::1]:1883", "localhost:1883"} {
		if _, err := LoadConfig(writeConfig(t, "apps:\n  - manifest: a\nmqtt:\n  embedded: {enabled: true, listen: '"+listen+"'}\n")); err != nil {
			t.Errorf("listen %s: %v", listen, err)
		}
	}
	p := writeConfig(t, "apps:\n  - manifest: a\nmqtt:\n  embedded: {enabled: true, listen: '0.0.0.0:1883', users_file: users}\n")
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "mqtt.embedded.users_file") {
		t.Errorf("missing users file: error %v, want one naming mqtt.embedded.users_file", err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(p), "users"), []byte("sneakgate:s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatalf("non-loopback listen with users: %v", err)
	}
	if want := filepath.Join(filepath.Dir(p), "users"); c.MQTT.Embedded.UsersFile != want {
		t.Errorf("users_file %q, want %q", c.MQTT.Embedded.UsersFile, want)
	}
}

func TestLoadUsersFileErrors(t *testing.T) {
	for body, want := range map[string]string{
		"":                   "lists no user",
		"# only a comment\n": "lists no user",
		"sneakgate\n":        ":1: want user:password",
		"a:1\n:2\n":          ":2: want user:password",
		"a:\n":               ":1: want user:password",
		"a:1\nb:2\na:3\n":    `:3: user "a" listed twice`,
	} {
		f := filepath.Join(t.TempDir(), "users")
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadUsersFile(f); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", body, err, want)
		}
	}
}
