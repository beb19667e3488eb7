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
// and answered from its estimate whose reply reached the device
// but whose PUBACK the gateway never saw (the connection failed first) comes
// back from the broker when the session resumes, and gets the same bytes, not a
// second, different answer.
func TestOwedReplyRepeatedAcrossReconnect(t *testing.T) {
	// With the reply recorded in the journal (the default) the copy is a
	// duplicate of a journaled key; without, the ledger's.
	for _, journaled := range []bool{true, false} {
		state := map[bool]string{true: "done", false: "unjournaled"}[journaled]
		t.Run(state, func(t *testing.T) { owedReplyRepeatedAcrossReconnect(t, journaled, state) })
	}
}

func owedReplyRepeatedAcrossReconnect(t *testing.T, journaled bool, state string) {
	b := mqtttest.Start(t, mqtttest.Options{})
	proxy := cutProxy(t, b.Addr())
	cfg := testConfig(t, "tcp://"+proxy.addr, t.TempDir())
	cfg.Scheduler.MaxQueueDelay = 500 * time.Millisecond
	cfg.Admission.JournalEstimateAnswers = journaled
	gw, dev, clock := answerWithoutPuback(t, b, proxy, cfg, "cam-owed")
	// The reply reached the device; its PUBACK did not reach the gateway, so r
	// is not acknowledged. The connection fails; the gateway reconnects and
	// resumes its session, and the broker delivers r again.
	proxy.dropPubacks.Store(false)
	proxy.cut()
	waitUntil(t, "the copy of r handled", func() bool {
		return testutil.ToFloat64(gw.g.m.duplicates.WithLabelValues(state)) > 0 || gw.g.loop.refused.Load() > 1
	})
	waitUntil(t, "every reply to a request not journaled acknowledged", func() bool {
		return testutil.ToFloat64(gw.g.m.owed) == 0
	})
	// "hold"'s answer is published after every reply to r: when it arrives,
	// they have.
	clock.Start()
	dev.await([]string{"hold"}, 30*time.Second)
	dev.wantSameBytes("r")
	if n := testutil.ToFloat64(gw.g.m.duplicates.WithLabelValues(state)); n != 1 {
		t.Errorf("sneakgate_duplicates_total{state=%s} = %v, want 1 (the copy of r)", state, n)
	}
}

// answerWithoutPuback starts a gateway on cfg (through proxy to b; max_queue 1,
// fixed-batch) whose queue holds request "hold" (the clock stopped) from device
// name, so that request "r" is refused and answered from its estimate; the
// broker's PUBACKs are dropped from then on (proxy.dropPubacks), so r is not
// acknowledged when its reply reaches the device.
func answerWithoutPuback(t *testing.T, b *mqtttest.Broker, proxy *tcpProxy, cfg *Config, name string) (*running, *device, *testClock) {
	t.Helper()
	cfg.Admission.MaxQueue = 1 // "hold" fills it; "r" is refused and answered from its estimate
	cfg.Scheduler.Policy = "fixed-batch"
	clock := &testClock{}
	gw := startGateway(t, cfg, Options{Now: clock.Now})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), name)
	clock.Stop() // "hold" stays queued
	dev.request("fashion", name, "hold", samples.Row(1), 60000)
	waitUntil(t, "the first request queued", func() bool { return gw.g.loop.Queued() == 1 })
	proxy.dropPubacks.Store(true)
	dev.request("fashion", name, "r", samples.Row(2), 60000)
	if r := dev.await([]string{"r"}, 30*time.Second)["r"]; r.Status != protocol.StatusDegraded || r.Reason != protocol.ReasonOverloadShed {
		t.Fatalf("r: %+v, want degraded (overload_shed)", r)
	}
	return gw, dev, clock
}

// wantSameBytes fails the test when a reply to id differs from its first.
func (d *device) wantSameBytes(id string) {
	d.t.Helper()
	d.mu.Lock()
	raw := d.raw[id]
	d.mu.Unlock()
	for i, p := range raw[1:] {
		if p != raw[0] {
			d.t.Errorf("reply %d to %s differs from the first:\n%s\n%s", i+2, id, p, raw[0])
		}
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

// TestEstimateAnswerRepeatedAfterRestart, with a real Mosquitto: a request
// refused and answered from its estimate whose reply reached the device, but
// whose acknowledgement never did (the gateway stopped first), is delivered
// again to the next gateway on the same journal, which has no memory of it, and
// gets the same bytes from the journal (admission.journal_estimate_answers), not
// a second answer.
func TestEstimateAnswerRepeatedAfterRestart(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	proxy := cutProxy(t, b.Addr())
	cfg := testConfig(t, "tcp://"+proxy.addr, t.TempDir())
	cfg.MQTT.ShutdownTimeout = 500 * time.Millisecond
	gw, dev, _ := answerWithoutPuback(t, b, proxy, cfg, "cam-restart")
	// The reply's PUBACK never reaches the gateway, so r is not acknowledged
	// when it stops: the broker keeps r in the gateway's session.
	proxy.cut()
	gw.stop(t)

	cfg2 := *cfg
	cfg2.MQTT.Broker = b.URL()
	gw2 := startGateway(t, &cfg2, Options{})
	dev.await([]string{"hold"}, 30*time.Second)
	waitUntil(t, "the copy of r answered", func() bool {
		dev.mu.Lock()
		defer dev.mu.Unlock()
		return len(dev.raw["r"]) > 1
	})
	dev.wantSameBytes("r")
	if n := testutil.ToFloat64(gw2.g.m.duplicates.WithLabelValues("done")); n != 1 {
		t.Errorf("sneakgate_duplicates_total{state=done} after the restart = %v, want 1 (the copy of r)", n)
	}
}
