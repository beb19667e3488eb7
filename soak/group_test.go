//go:build soak

package soak

import (
	"testing"
	"time"
)

// TestSharedGroupKill9 runs two gateways (the real binary) in one shared group
// (mqtt.shared_group) against Mosquitto, under load from many devices, SIGKILLs
// one of them mid-run and restarts it. Every request the broker acknowledged
// must get a terminal reply; ids answered more than once are counted and
// reported (docs/protocol.md: a request redelivered to another member may be
// answered again, with the same id). It also reports where the requests went
// while the killed member was down: the survivor's received count, and the
// acknowledged requests published during the outage whose first reply came
// only after the restart (they waited in the broker for the killed member's
// session; docs/deployment.md, "Several gateways").
//
// Knobs: SOAK_GROUP_RATE requests/s (300), SOAK_GROUP_DURATION (10s),
// SOAK_GROUP_OUTAGE (2s), SOAK_GROUP_DEADLINE (1500ms), SOAK_GROUP_DEVICES (8).
func TestSharedGroupKill9(t *testing.T) {
	rate := envFloat(t, "SOAK_GROUP_RATE", 300, 300)
	dur := envDur(t, "SOAK_GROUP_DURATION", 10*time.Second, 10*time.Second)
	outage := envDur(t, "SOAK_GROUP_OUTAGE", 2*time.Second, 2*time.Second)
	deadline := envDur(t, "SOAK_GROUP_DEADLINE", 1500*time.Millisecond, 1500*time.Millisecond)
	ndev := envInt(t, "SOAK_GROUP_DEVICES", 8, 8)
	t.Logf("shared group: 2 gateways, %.0f requests/s from %d devices for %s, deadline_ms %d with sent_at; gateway b SIGKILLed at 40%% for %s",
		rate, ndev, dur, deadline.Milliseconds(), outage)

	b := startBroker(t)
	ga := newGateway(t, b.URL(), gwOptions{ClientID: "soak-gw-a", SharedGroup: "soak"})
	gb := newGateway(t, b.URL(), gwOptions{ClientID: "soak-gw-b", SharedGroup: "soak"})
	t.Logf("gateway a ready in %s", ga.start().Round(time.Millisecond))
	t.Logf("gateway b ready in %s", gb.start().Round(time.Millisecond))
	f := newFleet(t, b.URL(), "sg", ndev)
	mon := startMonitor(t, f, gb)
	mon.setPhase("load")

	stop := make(chan struct{})
	t0 := time.Now()
	wg := f.load(rate, deadline, stop)
	time.Sleep(time.Until(t0.Add(dur * 4 / 10)))
	aBefore := received(ga.metrics)
	mon.setPhase("killed")
	killedAt := time.Now()
	gb.kill()
	aAtKill := received(ga.metrics)
	time.Sleep(outage)
	aAtRestart := received(ga.metrics)
	mon.setPhase("starting")
	restartAt := time.Now()
	ready := gb.start()
	readyAt := time.Now()
	mon.setPhase("load")
	t.Logf("gateway b killed at t=%.1fs, down %s, ready %s after its restart", killedAt.Sub(t0).Seconds(),
		restartAt.Sub(killedAt).Round(time.Millisecond), ready.Round(time.Millisecond))
	time.Sleep(time.Until(t0.Add(dur)))
	close(stop)
	wg.Wait()
	mon.setPhase("drain")
	waited := f.waitReplies(drainWait(t))
	mon.close()
	aEnd, bEnd := received(ga.metrics), received(gb.metrics)

	tl := analyse(f)
	loss := explainLost(t, f, b, ga, gb)
	tl.log(t)

	// Requests published while b was down: answered during the outage (by a)
	// or only once b was back (they waited for b's session in the broker).
	var outageAcked, answeredDuring, answeredAfter int
	for _, s := range f.snapshot() {
		if s.State != pubAcked || s.SentAt.Before(killedAt) || !s.SentAt.Before(restartAt) || len(s.Replies) == 0 {
			continue
		}
		outageAcked++
		if s.Replies[0].At.Before(restartAt) {
			answeredDuring++
		} else {
			answeredAfter++
		}
	}
	outageS := restartAt.Sub(killedAt).Seconds()
	t.Logf("gateway a received %.0f requests/s before the kill and %.0f/s while b was down (offered %.0f/s); a %d and b %d (since its restart) requests in all",
		float64(aBefore)/killedAt.Sub(t0).Seconds(), float64(aAtRestart-aAtKill)/outageS, rate, aEnd, bEnd)
	t.Logf("REDELIVERY: of %d acknowledged requests published while b was down, %d were answered during the outage (by a) and %d only after b was back (ready %s after the kill): they waited in the broker for b's session",
		outageAcked, answeredDuring, answeredAfter, readyAt.Sub(killedAt).Round(time.Millisecond))
	t.Logf("DUPLICATES: %d ids answered more than once (%d extra replies), %d of them byte-identical, %d disagreeing on status/class/model; waited %s for the last replies",
		tl.RepeatedIDs, tl.RepeatReplies, tl.RepeatsIdentical, tl.RepeatsDisagree, waited.Round(time.Millisecond))

	writeSummary(t, map[string]any{
		"test": t.Name(), "rate": rate, "duration_s": dur.Seconds(), "outage_s": outageS, "deadline_ms": deadline.Milliseconds(),
		"devices": ndev, "tally": tl, "wait_after_load_s": waited.Seconds(),
		"a_received": aEnd, "b_received_since_restart": bEnd, "a_received_during_outage": aAtRestart - aAtKill,
		"outage_acknowledged": outageAcked, "outage_answered_during": answeredDuring, "outage_answered_after_restart": answeredAfter,
		"loss": loss, "seconds": mon.seconds(),
	})

	if tl.Lost > 0 {
		t.Errorf("%d acknowledged requests got no terminal reply within %s after the load stopped (first: %v); the broker dropped %d messages, the gateways at least %.0f replies (LOSS above)",
			tl.Lost, drainWait(t), tl.LostIDs, loss.BrokerDropped, loss.GatewayDropped)
	}
	if tl.Malformed > 0 {
		t.Errorf("%d malformed replies", tl.Malformed)
	}
	if tl.Acknowledged == 0 || aEnd == 0 || bEnd == 0 {
		t.Errorf("acknowledged %d; gateway a received %d, b %d since its restart: the group did not share the load", tl.Acknowledged, aEnd, bEnd)
	}
}

// received reads sneakgate_requests_received_total (all applications) from the
// gateway's /metrics; -1 when it cannot.
func received(addr string) int64 {
	s := scrape(addr)
	if !s.OK {
		return -1
	}
	return int64(s.Received)
}
