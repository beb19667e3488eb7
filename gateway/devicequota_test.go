package gateway

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sneakgate/sneakgate/protocol"
)

// With admission.max_queue_per_device, a device with that many requests queued
// is refused overload (with retry_after_ms, not answered from the estimate)
// while another device's requests are still admitted; once one of its requests
// is answered it is admitted again. Every device's count goes back to zero.
func TestMaxQueuePerDevice(t *testing.T) {
	c := &fakeClient{}
	g := handlerGateway(t, c, true) // degrade_refused on: the device's refusals must not use it
	g.cfg.Admission.MaxQueue = 100  // the loop's channel (4) is the other limit; the loop does not run
	g.cfg.Admission.MaxQueuePerDevice = 2
	g.cfg.Admission.MaxWait = 0
	send := func(device, id string) {
		p := protocol.Payload{ID: id, DeadlineMS: 60000, Input: make([]float32, 784), B64: true}
		g.handle(arrival{msg: newFakeMessage("sneakgate/req/fashion/"+device, p.Marshal()), at: time.Now()})
	}
	for i := range 3 {
		send("hog", fmt.Sprint("h", i))
	}
	send("cam", "c0")
	send("cam", "c1")
	if n := g.loop.DeviceQueued("hog"); n != 2 {
		t.Errorf("hog has %d queued, want 2", n)
	}
	if n := g.loop.DeviceQueued("cam"); n != 2 {
		t.Errorf("cam has %d queued, want 2 (admitted beside the hog)", n)
	}
	if n := testutil.ToFloat64(g.m.deviceRefused.WithLabelValues("fashion")); n != 1 {
		t.Errorf("device_limit_refused_total = %v, want 1", n)
	}
	if n := testutil.ToFloat64(g.m.refusedDeg.WithLabelValues("fashion")); n != 0 {
		t.Errorf("admission_degraded_total = %v, want 0: a device's refusal is not answered from the estimate", n)
	}
	if n := g.loop.refused.Load(); n != 0 {
		t.Errorf("refused (the offered rate's count) = %d, want 0", n)
	}

	// The loop answers one of the hog's requests: the hog is admitted again.
	for range 4 {
		j := <-g.loop.admit
		g.loop.reply(j, result{Status: protocol.StatusOK})
		if j.Device == "hog" {
			break
		}
	}
	send("hog", "h3")
	if n := g.loop.DeviceQueued("hog"); n != 2 {
		t.Errorf("after one answer and one more request, hog has %d queued, want 2", n)
	}
	for len(g.loop.admit) > 0 {
		g.loop.reply(<-g.loop.admit, result{Status: protocol.StatusOK})
	}
	if len(g.loop.devices.n) != 0 || g.loop.Queued() != 0 {
		t.Errorf("all answered: device counts %v, queued %d; want none", g.loop.devices.n, g.loop.Queued())
	}

	g.egress.Stop(t.Context())
	refused := 0
	for _, s := range c.sent() {
		rep, err := protocol.ParseReply([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		if rep.Status == protocol.StatusOK {
			continue
		}
		refused++
		if rep.ID != "h2" || rep.Status != protocol.StatusRejected || rep.Reason != protocol.ReasonOverload ||
			rep.RetryAfterMS == nil || !strings.Contains(rep.Error, "max_queue_per_device") {
			t.Errorf("reply %s: %s %s %q retry %v; want only h2 rejected overload naming max_queue_per_device, with retry_after_ms",
				rep.ID, rep.Status, rep.Reason, rep.Error, rep.RetryAfterMS)
		}
	}
	if refused != 1 {
		t.Errorf("%d requests refused, want 1 (h2)", refused)
	}
}
