package gateway

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"
)

// stuckWriteTimeout is the write timeout of the tests' brokers (short, so
// that the tests are quick; long enough for clients that read on a loaded
// machine).
const stuckWriteTimeout = 2 * time.Second

// stuckPayload is the size of a message the broker cannot finish writing to a
// client that does not read: more than the socket buffers between them can
// hold (the client's receive buffer is made small, stuckClient; the broker's
// send buffer grows to at most net.ipv4.tcp_wmem's maximum, 4 MiB by default).
func stuckPayload(t *testing.T) int {
	n := 16 << 20
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 3 {
			if max, err := strconv.Atoi(f[2]); err == nil && 2*max+(1<<20) > n {
				n = 2*max + (1 << 20)
			}
		}
	}
	t.Logf("stuck payload: %d bytes", n)
	return n
}

// stuckBroker starts an embedded broker (over TLS with tc) that takes messages
// of stuckPayload's size, with tune and guards, closed at the test's end; it
// returns the broker and that size.
func stuckBroker(t *testing.T, tc *tls.Config, tune brokerTuning, guards ...Guard) (*Broker, int) {
	t.Helper()
	n := stuckPayload(t)
	b, err := startBroker(freeAddr(t), n, nil, tc, zerolog.Nop(), guards, tune)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, n
}

// stuckClient connects a raw MQTT 3.1.1 client (over TLS with tc: the broker's) with keepalive 0 (no deadline
// at all at the broker) and a small receive buffer, subscribed at QoS 1 to
// topic; it reads the CONNACK and SUBACK and then only what the test reads.
func stuckClient(t *testing.T, b *Broker, tc *tls.Config, id, topic string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if tc != nil {
		c = tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	connectSubscribe(t, c, c, id, topic)
	return c
}

// connectSubscribe writes c an MQTT 3.1.1 CONNECT (client id, clean session,
// keepalive 0) and a SUBSCRIBE to topic at QoS 1, and reads the CONNACK and the
// SUBACK from r (c, or a reader over it).
func connectSubscribe(t *testing.T, c net.Conn, r io.Reader, id, topic string) {
	t.Helper()
	str := func(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }
	connect := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0}, str(id)...)
	subscribe := append(append([]byte{0, 1}, str(topic)...), 1)
	var out []byte
	out = append(append(out, 0x10, byte(len(connect))), connect...)
	out = append(append(out, 0x82, byte(len(subscribe))), subscribe...)
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	want := []byte{0x20, 2, 0, 0, 0x90, 3, 0, 1, 1} // CONNACK accepted, SUBACK QoS 1
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("%s: connect and subscribe: got % x, %v; want % x", id, got, err, want)
	}
}

// stopReadingMidPublish reads from c (stuckClient) the first byte of the
// PUBLISH the broker is writing to it, and then nothing more: from then on the
// broker's write of that message is under way and cannot finish.
func stopReadingMidPublish(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0]>>4 != 3 {
		t.Fatalf("want the start of a PUBLISH: got % x, %v", b, err)
	}
}

// pahoClient connects a paho client (MQTT 3.1.1, keepalive 0) to b (over TLS
// with tc: the broker's); with
// topic, subscribed to it at QoS 1, each message going to the channel.
func pahoClient(t *testing.T, b *Broker, tc *tls.Config, id, topic string) (mqtt.Client, <-chan mqtt.Message) {
	t.Helper()
	c, got, err := connectPaho(b, tc, id, topic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, got
}

// published waits (30 s) for a QoS 1 publish to be acknowledged.
func published(t *testing.T, c mqtt.Client, topic string, payload []byte) {
	t.Helper()
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("publish to %s: not acknowledged within 30 s (%v)", topic, tok.Error())
	}
}

// TestEmbeddedBrokerCloseWithStuckClient: Close returns while a client (keepalive
// 0) has stopped reading in the middle of a message the broker is writing to
// it, and closes that client's connection; another client, connected and
// reading, was served until then. mochi writes to a client without a deadline
// of its own (the keepalive's, none for 0), under the client's lock, and at
// Close writes each client a DISCONNECT under that lock: Close waited for good
// behind the stuck write (and a stop with it, until systemd killed the gateway).
func TestEmbeddedBrokerCloseWithStuckClient(t *testing.T) {
	overTCPAndTLS(t, false, func(t *testing.T, tc *tls.Config) {
		// No write timeout to speak of: Close's own deadline is under test.
		b, n := stuckBroker(t, tc, brokerTuning{writeTimeout: time.Hour})
		stuck := stuckClient(t, b, tc, "stuck", "sg/resp/stuck")
		pub, _ := pahoClient(t, b, tc, "pub", "")
		_, got := pahoClient(t, b, tc, "cam-2", "sg/resp/cam-2")

		published(t, pub, "sg/resp/stuck", make([]byte, n))
		stopReadingMidPublish(t, stuck)
		published(t, pub, "sg/resp/cam-2", []byte("before close"))
		if m := receive(t, got, "message to the client that reads"); string(m.Payload()) != "before close" {
			t.Fatalf("cam-2 got %q", m.Payload())
		}

		closed := make(chan error, 1)
		go func() { closed <- b.Close() }()
		within(t, closed, "Close did not return while a client had stopped reading")
		closedByPeer(t, stuck, "the stuck client's connection")
	})
}

// TestEmbeddedBrokerStuckClientHoldsNoOne: a client (keepalive 0) that stops
// reading in the middle of a message the broker writes to it is disconnected
// once its write has made no progress for the write timeout, and meanwhile
// holds up no other client: the publisher of its messages (the gateway, with
// its replies) goes on being read and served, and the other subscribers get
// their messages. mochi's writer to a client holds the client's lock while it
// writes, without a deadline for keepalive 0, and a QoS 1 message to that
// client takes the same lock (a packet id) in the publisher's read loop: that
// loop waited behind the stuck write for good, so one device that stopped
// reading stopped every reply of the gateway's.
func TestEmbeddedBrokerStuckClientHoldsNoOne(t *testing.T) {
	overTCPAndTLS(t, false, func(t *testing.T, tc *tls.Config) {
		b, n := stuckBroker(t, tc, brokerTuning{writeTimeout: stuckWriteTimeout}, Guard{Client: "sneakgate", Filter: "sg/req/+/+"})
		stuck := stuckClient(t, b, tc, "stuck", "sg/resp/stuck")
		gw, _ := pahoClient(t, b, tc, "sneakgate", "sg/req/+/+")
		_, got := pahoClient(t, b, tc, "cam-2", "sg/resp/cam-2")

		published(t, gw, "sg/resp/stuck", make([]byte, n))
		stopReadingMidPublish(t, stuck)
		// A second message to the stuck client: its packet id waits for the
		// stuck write's lock, in the publisher's read loop.
		published(t, gw, "sg/resp/stuck", []byte("second"))
		published(t, gw, "sg/resp/cam-2", []byte("after"))
		if m := receive(t, got, "message to the client that reads"); string(m.Payload()) != "after" {
			t.Fatalf("cam-2 got %q", m.Payload())
		}
		closedByPeer(t, stuck, "the stuck client's connection")
	})
}

// TestEmbeddedBrokerWaitsForTheGateway: the gateway's own client (a guarded
// subscriber) is not disconnected when it stops reading for longer than the
// write timeout (its handlers busy): the message under way reaches it whole
// once it reads again, on the same connection.
func TestEmbeddedBrokerWaitsForTheGateway(t *testing.T) {
	overTCPAndTLS(t, false, func(t *testing.T, tc *tls.Config) {
		const filter = "sg/req/+/+"
		b, n := stuckBroker(t, tc, brokerTuning{writeTimeout: stuckWriteTimeout}, Guard{Client: "sneakgate", Filter: filter})
		gw := stuckClient(t, b, tc, "sneakgate", filter)
		dev, _ := pahoClient(t, b, tc, "cam-1", "")

		// The device's requests are acknowledged only once the gateway has
		// (broker_ack.go), which this raw gateway never does: not waited for.
		dev.Publish("sg/req/fashion/cam-1", 1, false, make([]byte, n))
		stopReadingMidPublish(t, gw)
		// Past the write timeout (this wait is the condition under test).
		time.Sleep(2 * stuckWriteTimeout)
		dev.Publish("sg/req/fashion/cam-1", 1, false, []byte("second"))

		_ = gw.SetReadDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReader(gw)
		for i, want := range []int{n, len("second")} {
			if i > 0 { // the first's header byte is read
				if h, err := r.ReadByte(); err != nil || h>>4 != 3 {
					t.Fatalf("message %d: want a PUBLISH, got %x, %v", i+1, h, err)
				}
			}
			size, err := remainingLength(r)
			if err != nil {
				t.Fatalf("message %d: %v", i+1, err)
			}
			// topic (2 + 20 bytes), packet id, payload
			if got := size - 2 - len("sg/req/fashion/cam-1") - 2; got != want {
				t.Fatalf("message %d: payload of %d bytes, want %d", i+1, got, want)
			}
			if _, err := io.CopyN(io.Discard, r, int64(size)); err != nil {
				t.Fatalf("message %d: %v (the connection closed while the gateway did not read?)", i+1, err)
			}
		}
	})
}

// remainingLength reads an MQTT fixed header's remaining length.
func remainingLength(r *bufio.Reader) (int, error) {
	n, shift := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		n |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			return n, nil
		}
		shift += 7
	}
}

// TestEmbeddedBrokerStuckClientReconnects: a device whose old connection has
// stopped reading (a dead NAT, keepalive 0) connects again under its client
// id, and gets its messages on the new connection. mochi takes a session over
// by writing the old connection a DISCONNECT, under the lock the stuck write
// holds, in the new connection's goroutine: the device could not connect again
// for as long as the old connection stayed.
func TestEmbeddedBrokerStuckClientReconnects(t *testing.T) {
	overTCPAndTLS(t, false, func(t *testing.T, tc *tls.Config) {
		b, n := stuckBroker(t, tc, brokerTuning{writeTimeout: stuckWriteTimeout})
		stuck := stuckClient(t, b, tc, "cam-1", "sg/resp/cam-1")
		pub, _ := pahoClient(t, b, tc, "sneakgate", "")
		published(t, pub, "sg/resp/cam-1", make([]byte, n))
		stopReadingMidPublish(t, stuck)

		_, got := pahoClient(t, b, tc, "cam-1", "sg/resp/cam-1")
		published(t, pub, "sg/resp/cam-1", []byte("again"))
		if m := receive(t, got, "message on the new connection"); string(m.Payload()) != "again" {
			t.Fatalf("cam-1 got %q", m.Payload())
		}
		closedByPeer(t, stuck, "the old connection")
	})
}

// TestEmbeddedBrokerKeepsSlowReader: a client that reads a large message
// slowly but steadily (16 KiB every 100 ms: 20 times a chunk per write
// timeout) keeps its connection and gets the whole message. Once the broker's
// send buffer is full, its socket takes nothing more until about a third of
// that buffer is acknowledged (MiBs on loopback), so a chunk that must be
// taken within the timeout cut this client as if it had stopped reading.
func TestEmbeddedBrokerKeepsSlowReader(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the send queue is read on Linux only")
	}
	overTCPAndTLS(t, false, func(t *testing.T, tc *tls.Config) {
		b, n := stuckBroker(t, tc, brokerTuning{writeTimeout: stuckWriteTimeout})
		var c net.Conn = dialRaw(t, b.Addr()) // the system's buffers
		if tc != nil {
			c = tls.Client(c, &tls.Config{InsecureSkipVerify: true})
		}
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		r := bufio.NewReaderSize(c, 16<<10)
		connectSubscribe(t, c, r, "slow", "sg/resp/slow")
		pub, _ := pahoClient(t, b, tc, "pub", "")
		published(t, pub, "sg/resp/slow", make([]byte, n))

		if h, err := r.ReadByte(); err != nil || h>>4 != 3 {
			t.Fatalf("want a PUBLISH, got %x, %v", h, err)
		}
		size, err := remainingLength(r)
		if err != nil {
			t.Fatal(err)
		}
		// Slowly for three write timeouts (the pace is the condition under
		// test), then the rest at once.
		left := int64(size)
		for start := time.Now(); time.Since(start) < 3*stuckWriteTimeout; time.Sleep(100 * time.Millisecond) {
			m, err := io.CopyN(io.Discard, r, 16<<10)
			left -= m
			if err != nil {
				t.Fatalf("reading slowly, %d bytes left: %v (the broker closed the connection?)", left, err)
			}
		}
		if m, err := io.CopyN(io.Discard, r, left); err != nil {
			t.Fatalf("%d of the message's last %d bytes: %v (the broker closed the connection while the client read?)", m, left, err)
		}
	})
}
