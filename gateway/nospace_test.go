package gateway

import (
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// TestJournalOutOfSpace: while the journal's disk is full (a commit of a new
// request fails with ENOSPC, injected here; store's TestFileCannotGrow makes a
// real file unable to grow), a new request is refused with reason overload and
// a retry_after_ms of at least 5 s, not internal; /readyz says why and
// sneakgate_journal_no_space is 1. Once writes succeed again, the next request
// a second later is served, and the gateway is ready again.
func TestJournalOutOfSpace(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	var full atomic.Bool
	full.Store(true)
	clk := &testClock{} // the journal's second of refusal passes when the test says
	gw := startGateway(t, cfg, Options{Now: clk.Now, BeforeCommit: func(ops []store.Op) error {
		for _, op := range ops {
			if op.Kind == store.OpPut && full.Load() {
				return fmt.Errorf("write journal.db: %w", syscall.ENOSPC)
			}
		}
		return nil
	}})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-full")
	dev.request("fashion", "cam-full", "r1", samples.Row(1), 60000)
	r := dev.await([]string{"r1"}, 30*time.Second)["r1"]
	if r.Status != protocol.StatusRejected || r.Reason != protocol.ReasonOverload || r.RetryAfterMS == nil || *r.RetryAfterMS < 5000 {
		t.Fatalf("request while the disk is full: %+v", r)
	}
	if why := gw.g.readiness(); !strings.Contains(why, "journal disk full") {
		t.Errorf("readiness while the disk is full: %q", why)
	}
	if v := metricValue(t, gw.g.reg, "sneakgate_journal_no_space"); v != 1 {
		t.Errorf("sneakgate_journal_no_space = %v while the disk is full", v)
	}
	full.Store(false)
	clk.Skip(time.Second) // the journal tries again a second after the failure
	dev.request("fashion", "cam-full", "r2", samples.Row(2), 60000)
	if r := dev.await([]string{"r2"}, 30*time.Second)["r2"]; r.Status != protocol.StatusOK {
		t.Fatalf("request once the disk has room: %+v", r)
	}
	if v := metricValue(t, gw.g.reg, "sneakgate_journal_no_space"); v != 0 {
		t.Errorf("sneakgate_journal_no_space = %v after a write succeeded", v)
	}
	if why := gw.g.readiness(); strings.Contains(why, "journal") {
		t.Errorf("readiness after a write succeeded: %q", why)
	}
}
