package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// MQTTTLS configures TLS for a broker URL of scheme ssl://, tls://, mqtts:// or
// wss:// (paho's TLS schemes). Without ca_file the system's roots verify the
// broker; cert_file and key_file, together, are the gateway's client
// certificate for a broker that requires one.
type MQTTTLS struct {
	// CAFile holds the PEM certificates that verify the broker's certificate.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the client certificate and its key (PEM).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name checked in the broker's certificate (default: the
	// URL's host).
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any broker certificate (testing only).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// isSet reports whether any TLS setting is given.
func (t MQTTTLS) isSet() bool { return t != MQTTTLS{} }

// tlsSchemes are the broker URL schemes paho connects with TLS.
var tlsSchemes = map[string]bool{"ssl": true, "tls": true, "mqtts": true, "mqtt+ssl": true, "tcps": true, "wss": true}

// CredentialName is the systemd credential the broker password is read from
// when mqtt.password_file is not set and $CREDENTIALS_DIRECTORY is
// (LoadCredential=mqtt-password:FILE).
const CredentialName = "mqtt-password"

// passwordPath resolves mqtt.password_file. Under systemd with credentials
// ($CREDENTIALS_DIRECTORY set, credDir), a bare name (no slash) names a
// credential, and an unset one means the credential CredentialName if the
// service has it. Otherwise a relative path is relative to the config file's
// directory, dir.
func passwordPath(p, dir, credDir string) string {
	switch {
	case credDir != "" && p == "":
		c := filepath.Join(credDir, CredentialName)
		if _, err := os.Stat(c); err == nil {
			return c
		}
		return ""
	case credDir != "" && !strings.Contains(p, "/"):
		return filepath.Join(credDir, p)
	case p != "" && !filepath.IsAbs(p):
		return filepath.Join(dir, p)
	}
	return p
}

// password reads the broker password from PasswordFile: its content without
// surrounding white space, "" without a file. A blank file means no password:
// the shipped unit's SetCredential= default, which systemd hands over when
// /etc/sneakgate/mqtt-password does not exist, is a blank line.
func (c *MQTTConfig) password() (string, error) {
	if c.PasswordFile == "" {
		return "", nil
	}
	pw, err := os.ReadFile(c.PasswordFile)
	if err != nil {
		return "", configErr("mqtt.password_file", "%v", err)
	}
	return strings.TrimSpace(string(pw)), nil
}

// tlsConfig returns the TLS configuration for c's broker URL: nil for a URL
// without TLS. It reads the files, so it also validates them; errors name the
// setting and the file.
func (c *MQTTConfig) tlsConfig() (*tls.Config, error) {
	broker := c.Broker
	if !strings.Contains(broker, "://") {
		broker = "tcp://" + broker // as paho reads it
	}
	u, err := url.Parse(broker)
	if err != nil {
		return nil, configErr("mqtt.broker", "%q: want a URL such as tcp://127.0.0.1:1883 or mqtts://broker:8883", c.Broker)
	}
	t := c.TLS
	if !tlsSchemes[u.Scheme] {
		if t.isSet() {
			return nil, configErr("mqtt.tls", "set, but mqtt.broker %s does not use TLS: use ssl://, tls://, mqtts:// or wss://", c.Broker)
		}
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		var err error
		if cfg.RootCAs, err = certPool("mqtt.tls.ca_file", t.CAFile); err != nil {
			return nil, err
		}
	}
	switch {
	case t.CertFile == "" && t.KeyFile == "":
	case t.CertFile == "":
		return nil, configErr("mqtt.tls.cert_file", "required with mqtt.tls.key_file %s", t.KeyFile)
	case t.KeyFile == "":
		return nil, configErr("mqtt.tls.key_file", "required with mqtt.tls.cert_file %s", t.CertFile)
	default:
		pair, err := keyPair("mqtt.tls", t.CertFile, t.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// keyPair reads a certificate and its key (PEM), each once; errors name the
// setting (section.cert_file, section.key_file).
func keyPair(section, certFile, keyFile string) (tls.Certificate, error) {
	cert, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, configErr(section+".cert_file", "%v", err)
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, configErr(section+".key_file", "%v", err)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		return tls.Certificate{}, configErr(section+".cert_file", "%s with key_file %s: %v", certFile, keyFile, err)
	}
	return pair, nil
}

// certPool reads the PEM certificates of a CA file; errors name the setting.
func certPool(setting, file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, configErr(setting, "%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, configErr(setting, "%s: no PEM certificate in it", file)
	}
	return pool, nil
}

// EmbeddedTLS configures TLS for the embedded broker's listener
// (mqtt.embedded.tls). With cert_file and key_file the listener speaks only
// TLS: clients, the gateway itself among them, connect with mqtts:// (the
// gateway with mqtt.tls.ca_file naming the CA that signed cert_file). With
// client_ca_file as well, every client must present a certificate signed by
// one of its CAs, which authenticates it (with or without users_file).
type EmbeddedTLS struct {
	// CertFile and KeyFile are the broker's certificate (with its chain) and
	// key (PEM).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile holds the PEM certificates that verify client certificates.
	ClientCAFile string `yaml:"client_ca_file"`
}

// tlsConfig returns the listener's TLS configuration: nil without TLS. It
// reads the files, so it also validates them; errors name the setting.
func (t EmbeddedTLS) tlsConfig() (*tls.Config, error) {
	switch {
	case t == EmbeddedTLS{}:
		return nil, nil
	case t.CertFile == "":
		return nil, configErr("mqtt.embedded.tls.cert_file", "required with mqtt.embedded.tls.key_file or client_ca_file")
	case t.KeyFile == "":
		return nil, configErr("mqtt.embedded.tls.key_file", "required with mqtt.embedded.tls.cert_file %s", t.CertFile)
	}
	pair, err := keyPair("mqtt.embedded.tls", t.CertFile, t.KeyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if t.ClientCAFile != "" {
		if cfg.ClientCAs, err = certPool("mqtt.embedded.tls.client_ca_file", t.ClientCAFile); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
