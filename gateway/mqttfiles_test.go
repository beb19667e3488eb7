package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
)

// TestMQTTFilesReadOnce: LoadConfig reads the TLS files and the embedded
// broker's users file, and what New asks for afterwards (brokerTLS,
// embeddedUsers) comes from that read, not from the files again: with the
// files gone, the same settings still give the same result, and changed
// settings are read afresh (here: and fail, the files being gone).
func TestMQTTFilesReadOnce(t *testing.T) {
	dir := t.TempDir()
	pki := mqtttest.NewPKI(t, dir, "gw")
	users := filepath.Join(dir, "users")
	if err := os.WriteFile(users, []byte("sneakgate:s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(writeConfig(t, "mqtt:\n  broker: mqtts://127.0.0.1:8883\n  tls:\n"+
		"    ca_file: "+pki.CA+"\n    cert_file: "+pki.ClientCert+"\n    key_file: "+pki.ClientKey+"\n"+
		"  embedded:\n    enabled: true\n    listen: 127.0.0.1:0\n    users_file: "+users+"\n"+
		"apps:\n  - manifest: a\n"))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := cfg.brokerTLS()
	if err != nil || tc == nil || tc.RootCAs == nil || len(tc.Certificates) != 1 {
		t.Fatalf("brokerTLS after LoadConfig: %v, %v", tc, err)
	}
	u, err := cfg.embeddedUsers()
	if err != nil || u["sneakgate"] != "s3cret" {
		t.Fatalf("embeddedUsers after LoadConfig: %v, %v", u, err)
	}
	for _, f := range []string{pki.CA, pki.ClientCert, pki.ClientKey, users} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := cfg.Validate(); err != nil { // -log-level and Reload validate again
		t.Errorf("Validate again, the files gone: %v", err)
	}
	if again, err := cfg.brokerTLS(); err != nil || again != tc {
		t.Errorf("brokerTLS read the files again: %v, %v", again, err)
	}
	if again, err := cfg.embeddedUsers(); err != nil || again["sneakgate"] != "s3cret" {
		t.Errorf("embeddedUsers read the file again: %v, %v", again, err)
	}
	copied := *cfg // a copy of the configuration shares what was read
	if again, err := copied.brokerTLS(); err != nil || again != tc {
		t.Errorf("brokerTLS of a copy: %v, %v", again, err)
	}

	cfg.MQTT.TLS.ServerName = "broker.example"
	if _, err := cfg.brokerTLS(); err == nil || !strings.Contains(err.Error(), "mqtt.tls.ca_file") {
		t.Errorf("brokerTLS after a settings change: %v, want the ca_file read again (and fail)", err)
	}
	cfg.MQTT.Embedded.UsersFile = users + ".new"
	if _, err := cfg.embeddedUsers(); err == nil || !strings.Contains(err.Error(), "mqtt.embedded.users_file") {
		t.Errorf("embeddedUsers after a path change: %v, want the new file read (and fail)", err)
	}
}

// TestReloadSameConfigChangesNothingWithTLS: what Validate keeps of the TLS
// files is not configuration: reloading the same configuration lists no
// changed section (changedSections compares the sections only).
func TestReloadSameConfigChangesNothingWithTLS(t *testing.T) {
	dir := t.TempDir()
	pki := mqtttest.NewPKI(t, dir, "gw")
	p := writeConfig(t, "mqtt:\n  broker: mqtts://127.0.0.1:8883\n  tls:\n    ca_file: "+pki.CA+"\n"+
		"apps:\n  - manifest: a\n")
	a, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := changedSections(a, b); len(got) != 0 {
		t.Errorf("changedSections of the same configuration read twice: %v", got)
	}
}
