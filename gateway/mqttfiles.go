package gateway

import "crypto/tls"

// mqttFiles caches what the files of the mqtt section hold, read once: Validate
// (LoadConfig) reads them, so that a missing or bad file stops start-up before
// anything else is done, and New uses what it read. Each part remembers the
// settings it was read for, and is read again if they change.
type mqttFiles struct {
	tlsRead   bool
	tlsBroker string  // mqtt.broker and
	tlsFor    MQTTTLS // mqtt.tls, as read
	tls       *tls.Config
	usersFor  string // mqtt.embedded.users_file, as read
	users     map[string]string
	embRead   bool
	embFor    EmbeddedTLS // mqtt.embedded.tls, as read
	emb       *tls.Config
}

// brokerTLS is c.MQTT.tlsConfig(), read once for the same settings.
func (c *Config) brokerTLS() (*tls.Config, error) {
	if c.files == nil {
		c.files = &mqttFiles{}
	}
	f := c.files
	if f.tlsRead && f.tlsBroker == c.MQTT.Broker && f.tlsFor == c.MQTT.TLS {
		return f.tls, nil
	}
	t, err := c.MQTT.tlsConfig()
	if err != nil {
		return nil, err
	}
	f.tlsRead, f.tlsBroker, f.tlsFor, f.tls = true, c.MQTT.Broker, c.MQTT.TLS, t
	return t, nil
}

// BrokerTLS returns the TLS configuration the gateway connects to mqtt.broker
// with, from mqtt.tls: nil for a broker URL without TLS, an error naming the
// setting for a bad one. Tools that connect to the gateway's broker with its
// configuration (sneakgate tail -config) use it, so that they connect as the
// gateway does; set MQTT.Broker first to connect elsewhere with the same
// settings.
func (c *Config) BrokerTLS() (*tls.Config, error) { return c.brokerTLS() }

// embeddedUsers is LoadUsersFile(mqtt.embedded.users_file), read once for the
// same path; nil without one.
func (c *Config) embeddedUsers() (map[string]string, error) {
	path := c.MQTT.Embedded.UsersFile
	if path == "" {
		return nil, nil
	}
	if c.files == nil {
		c.files = &mqttFiles{}
	}
	f := c.files
	if f.users != nil && f.usersFor == path {
		return f.users, nil
	}
	users, err := LoadUsersFile(path)
	if err != nil {
		return nil, configErr("mqtt.embedded.users_file", "%v", err)
	}
	f.usersFor, f.users = path, users
	return users, nil
}

// embeddedTLS is mqtt.embedded.tls's listener configuration (nil without TLS),
// read once for the same settings.
func (c *Config) embeddedTLS() (*tls.Config, error) {
	if c.files == nil {
		c.files = &mqttFiles{}
	}
	f, t := c.files, c.MQTT.Embedded.TLS
	if f.embRead && f.embFor == t {
		return f.emb, nil
	}
	cfg, err := t.tlsConfig()
	if err != nil {
		return nil, err
	}
	f.embRead, f.embFor, f.emb = true, t, cfg
	return cfg, nil
}
