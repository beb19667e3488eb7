package gateway

import (
	"bufio"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

// TestOwedReplyRepeatedAcrossReconnect, with a real Mosquitto: a request refused
// and answered from its estimate (not journaled) whose reply reached the device
// but whose PUBACK the gateway never saw (the connection failed first) comes
// back from the broker when the session resumes, and gets the same bytes, not a
// second, different answer.
func TestOwedReplyRepeatedAcrossReconnect(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	proxy := cutProxy(t, b.Addr())
	cfg := testConfig(t, "tcp://"+proxy.addr, t.TempDir())
	cfg.Admission.MaxQueue = 1 // "hold" fills it; "r" is refused and answered from its estimate
	cfg.Scheduler.Policy = "fixed-batch"
	cfg.Scheduler.MaxQueueDelay = 500 * time.Millisecond
	clock := &testClock{}
	gw := startGateway(t, cfg, Options{Now: clock.Now})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-owed")
	clock.Stop() // "hold" stays queued
	dev.request("fashion", "cam-owed", "hold", samples.Row(1), 60000)
	waitUntil(t, "the first request queued", func() bool { return gw.g.loop.Queued() == 1 })

	proxy.dropPubacks.Store(true)
	dev.request("fashion", "cam-owed", "r", samples.Row(2), 60000)
	if r := dev.await([]string{"r"}, 30*time.Second)["r"]; r.Status != protocol.StatusDegraded || r.Reason != protocol.ReasonOverloadShed {
		t.Fatalf("r: %+v, want degraded (overload_shed)", r)
	}
	// The reply reached the device; its PUBACK did not reach the gateway, so r
	// is not acknowledged. The connection fails; the gateway reconnects and
	// resumes its session, and the broker delivers r again.
	proxy.dropPubacks.Store(false)
	proxy.cut()
	waitUntil(t, "the copy of r handled", func() bool {
		return testutil.ToFloat64(gw.g.m.duplicates.WithLabelValues("unjournaled")) > 0 || gw.g.loop.refused.Load() > 1
	})
	waitUntil(t, "every reply to a request not journaled acknowledged", func() bool {
		return testutil.ToFloat64(gw.g.m.owed) == 0
	})
	// "hold"'s answer is published after every reply to r: when it arrives,
	// they have.
	clock.Start()
	dev.await([]string{"hold"}, 30*time.Second)
	dev.mu.Lock()
	raw := dev.raw["r"]
	dev.mu.Unlock()
	for i, p := range raw[1:] {
		if p != raw[0] {
			t.Errorf("reply %d to r differs from the first:\n%s\n%s", i+2, p, raw[0])
		}
	}
	if n := testutil.ToFloat64(gw.g.m.duplicates.WithLabelValues("unjournaled")); n != 1 {
		t.Errorf("sneakgate_duplicates_total{state=unjournaled} = %v, want 1 (the copy of r)", n)
	}
}

// puback is the MQTT control packet type of a PUBACK.
const puback = 4

// packets copies MQTT packets from the broker (src) to the client (dst),
// leaving out PUBACKs while p.dropPubacks is set.
func (p *tcpProxy) packets(dst io.Writer, src io.Reader) {
	r := bufio.NewReader(src)
	for {
		head, err := r.ReadByte()
		if err != nil {
			return
		}
		pkt := []byte{head}
		n, shift := 0, 0
		for {
			c, err := r.ReadByte()
			if err != nil {
				return
			}
			pkt = append(pkt, c)
			n |= int(c&0x7f) << shift
			shift += 7
			if c&0x80 == 0 {
				break
			}
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		if head>>4 == puback && p.dropPubacks.Load() {
			continue
		}
		if _, err := dst.Write(append(pkt, body...)); err != nil {
			return
		}
	}
}
