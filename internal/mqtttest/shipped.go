package mqtttest

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/internal/mosquitto"
)

// ShippedConfig and ShippedACL are the production broker configuration and its
// ACL, relative to the module root.
const (
	ShippedConfig = "configs/mosquitto.conf"
	ShippedACL    = "configs/mosquitto.acl"
)

// shippedApplied are the settings of ShippedConfig that Options.Shipped applies as
// they are: those that decide what the broker keeps, for how long and how much.
var shippedApplied = map[string]bool{
	"persistence": true, "persistence_file": true, "autosave_interval": true, "autosave_on_changes": true,
	"persistent_client_expiration": true,
	"max_queued_messages":          true, "max_queued_bytes": true, "queue_qos0_messages": true,
	"max_inflight_messages": true, "max_inflight_bytes": true, "upgrade_outgoing_qos": true,
	"message_size_limit": true, "max_packet_size": true, "memory_limit": true,
	"set_tcp_nodelay": true, "max_keepalive": true, "retain_available": true,
}

// shippedReplaced are the settings of ShippedConfig that only make sense on a real
// box and that Options.Shipped replaces with the test's own: where to listen and
// store, how to log, who may connect.
var shippedReplaced = map[string]bool{
	"listener": true, "socket_domain": true, "bind_interface": true, "protocol": true,
	"persistence_location": true, "pid_file": true, "user": true, "include_dir": true,
	"log_dest": true, "log_type": true, "log_timestamp": true, "log_timestamp_format": true,
	"connection_messages": true, "log_facility": true,
	"per_listener_settings": true, "allow_anonymous": true, "password_file": true, "acl_file": true,
	"psk_file": true, "psk_hint": true, "use_identity_as_username": true, "use_subject_as_username": true,
	"cafile": true, "capath": true, "certfile": true, "keyfile": true, "require_certificate": true,
	"tls_version": true, "ciphers": true, "ciphers_tls1.3": true, "crlfile": true,
}

// moduleRoot returns the directory holding go.mod, found by walking up from the
// working directory (a test's working directory is its package's directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if fi, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && fi.Mode().IsRegular() {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod in the working directory or above it")
		}
		dir = parent
	}
}

// readConfig returns the settings of a Mosquitto configuration file in order.
// Mosquitto takes "#" as a comment only as a line's first character.
func readConfig(path string) ([]mosquitto.Setting, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mosquitto.Setting
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, _ := strings.Cut(line, " ")
		out = append(out, mosquitto.Setting{Key: key, Value: strings.TrimSpace(value)})
	}
	return out, sc.Err()
}

// readShipped returns the settings of ShippedConfig, failing on one the package
// has not classified as applied or replaced.
func readShipped() ([]mosquitto.Setting, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(root, ShippedConfig)
	all, err := readConfig(path)
	if err != nil {
		return nil, err
	}
	for _, s := range all {
		if !shippedApplied[s.Key] && !shippedReplaced[s.Key] {
			return nil, fmt.Errorf("%s: setting %q is neither applied nor replaced by Options.Shipped: add it to shippedApplied or shippedReplaced in internal/mqtttest", path, s.Key)
		}
	}
	return all, nil
}

// shippedDelivery returns the settings of ShippedConfig that Options.Shipped applies.
func shippedDelivery() ([]mosquitto.Setting, error) {
	all, err := readShipped()
	if err != nil {
		return nil, err
	}
	var out []mosquitto.Setting
	for _, s := range all {
		if shippedApplied[s.Key] {
			out = append(out, s)
		}
	}
	return out, nil
}

// ShippedSetting returns the value of key in configs/mosquitto.conf, for tests
// that check other configuration against it (the gateway's payload limit against
// the broker's packet limit). It calls t.Fatal unless key is set exactly once.
func ShippedSetting(t testing.TB, key string) string {
	t.Helper()
	all, err := readShipped()
	if err != nil {
		t.Fatalf("mqtttest: %v", err)
	}
	var values []string
	for _, s := range all {
		if s.Key == key {
			values = append(values, s.Value)
		}
	}
	if len(values) != 1 {
		t.Fatalf("mqtttest: %s sets %s %d times, want once", ShippedConfig, key, len(values))
	}
	return values[0]
}
