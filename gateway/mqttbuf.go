package gateway

import (
	"bufio"
	"net"
	"net/url"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// brokerReadBuffer is the read buffer of a plain TCP connection to the broker:
// room for several request messages (about 4 KiB each for a 784-value input in
// base64) per read call.
const brokerReadBuffer = 64 << 10

// bufferedConn reads the broker connection through a buffer. paho reads each
// packet's fixed header one byte at a time and then its body, three or four read
// calls per packet on a bare socket; through the buffer, one call brings in
// whatever the broker has sent. Writes go to the socket as before.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// bufferedOpener returns a paho connection opener that dials a plain TCP broker
// as paho does and buffers its reads, or nil where paho's own opener should be
// kept: TLS (whose connection already reads whole records into a buffer),
// WebSockets, Unix sockets, and a proxy set in ALL_PROXY (which paho's opener
// honours for TCP).
func bufferedOpener(broker string) mqtt.OpenConnectionFunc {
	u, err := url.Parse(broker)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "mqtt") {
		return nil
	}
	if os.Getenv("ALL_PROXY") != "" || os.Getenv("all_proxy") != "" {
		return nil
	}
	return func(uri *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
		d := o.Dialer
		if d == nil { // paho's default
			d = &net.Dialer{Timeout: 30 * time.Second}
		}
		conn, err := d.Dial("tcp", uri.Host)
		if err != nil {
			return nil, err
		}
		return &bufferedConn{Conn: conn, r: bufio.NewReaderSize(conn, brokerReadBuffer)}, nil
	}
}
