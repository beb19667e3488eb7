//go:build soak

package soak

import (
	mrand "math/rand/v2"
	"testing"
	"time"
)

// TestKill9Soak SIGKILLs the gateway at random moments under steady load and
// restarts it after a random 0.2-2 s outage. Every request the broker
// acknowledged must get a terminal reply, and the replies to an id answered more
// than once (at-least-once delivery) must agree on status, class and model,
// unless the first was a refusal, which is not journaled: a kill between that
// reply and its acknowledgement makes the broker deliver the request again, and
// it is answered anew (counted apart). An answer from the estimate at admission
// is recorded in the journal before it goes out, so it is not excused.
//
// Knobs: SOAK_KILLS (short 5, full 20), SOAK_KILL_RATE requests/s (300, full 800),
// SOAK_KILL_DURATION (8 s per kill), SOAK_KILL_DEADLINE (1s, deadline_ms with
// sent_at), SOAK_DEVICES (16), SOAK_SEED, SOAK_STRICT_REPEATS=1 also asserts that
// repeats are byte-identical (but for those answered anew).
func TestKill9Soak(t *testing.T) {
	kills, rate, dur, deadline, ndev, seed := killKnobs(t, time.Second)
	strict := envBool("SOAK_STRICT_REPEATS")
	t.Logf("kill -9 soak: %d kills over %s at %.0f requests/s from %d devices, deadline_ms %d with sent_at, seed %d",
		kills, dur, rate, ndev, deadline.Milliseconds(), seed)
	rng := mrand.New(mrand.NewPCG(seed, 9))

	b := startBroker(t)
	gw := newGateway(t, b.URL(), gwOptions{})
	first := gw.start()
	t.Logf("gateway ready in %s", first.Round(time.Millisecond))
	f := newFleet(t, b.URL(), "k9", ndev)
	mon := startMonitor(t, f, gw)
	mon.setPhase("load")

	stop := make(chan struct{})
	t0 := time.Now()
	wg := f.load(rate, deadline, stop)
	events := killRestart(t, gw, mon, rng, t0, dur, kills)
	time.Sleep(time.Until(t0.Add(dur)))
	close(stop)
	wg.Wait()
	loadTime := time.Since(t0)
	mon.setPhase("drain")
	waited := f.waitReplies(drainWait(t))
	mon.close()
	tl := analyse(f)
	loss := explainLost(t, f, b, gw)
	recheck := recheckLost(t, f, b, gw, "fashion")
	t.Logf("load ran %s; all replies in %s after the load stopped", loadTime.Round(time.Millisecond), waited.Round(time.Millisecond))
	tl.log(t)
	t.Logf("REPEATS: %d of %d repeated ids were byte-identical, %d answered anew after a reply that was not journaled (strict check %v)",
		tl.RepeatsIdentical, tl.RepeatedIDs, tl.Reanswered, strict)

	writeSummary(t, map[string]any{
		"test": t.Name(), "kills": kills, "rate": rate, "duration_s": dur.Seconds(), "deadline_ms": deadline.Milliseconds(),
		"devices": ndev, "seed": seed, "events": events, "tally": tl, "wait_after_load_s": waited.Seconds(),
		"strict_repeats": strict, "loss": loss, "recheck": recheck, "seconds": mon.seconds(),
	})

	if tl.Lost > 0 {
		t.Errorf("%d acknowledged requests got no terminal reply within %s after the load stopped (first: %v); the broker dropped %d messages, the gateway at least %.0f replies (LOSS above)",
			tl.Lost, drainWait(t), tl.LostIDs, loss.BrokerDropped, loss.GatewayDropped)
	}
	if tl.RepeatsDisagree > 0 {
		t.Errorf("%d ids got repeated replies that disagree on status, class or model (first: %v)", tl.RepeatsDisagree, tl.Disagreements)
	}
	if strict && tl.RepeatsIdentical+tl.Reanswered != tl.RepeatedIDs {
		t.Errorf("SOAK_STRICT_REPEATS: %d of %d repeated ids had replies that were not byte-identical (besides %d answered anew after a reply that was not journaled)",
			tl.RepeatedIDs-tl.RepeatsIdentical-tl.Reanswered, tl.RepeatedIDs, tl.Reanswered)
	}
	if tl.Malformed > 0 {
		t.Errorf("%d malformed replies", tl.Malformed)
	}
	if tl.Acknowledged == 0 {
		t.Errorf("no request was acknowledged: the harness did not run")
	}
}

// killEvent is one kill of killRestart, as the soak summaries record it.
type killEvent struct {
	AtS      float64 `json:"at_s"`
	OutageMS int64   `json:"outage_ms"`
	ReadyMS  int64   `json:"restart_to_ready_ms"`
	// SuspectsAlone and SuspectsAnswered are what the restart's crash guard
	// found (sneakgate_crash_suspects): the pending requests of the forward
	// pass the kill interrupted, if it interrupted one.
	SuspectsAlone    float64 `json:"suspects_alone"`
	SuspectsAnswered float64 `json:"suspects_answered"`
}

// killRestart SIGKILLs gw kills times over dur from t0 (spread evenly, each
// jittered by up to ±40% of the interval), restarting it after a random 0.2-2 s
// outage, and moves mon's phase along.
func killRestart(t *testing.T, gw *gatewayProc, mon *monitor, rng *mrand.Rand, t0 time.Time, dur time.Duration, kills int) []killEvent {
	t.Helper()
	var events []killEvent
	interval := dur / time.Duration(kills+1)
	for i := range kills {
		at := t0.Add(interval*time.Duration(i+1) + time.Duration((rng.Float64()-0.5)*0.8*float64(interval)))
		time.Sleep(time.Until(at))
		outage := 200*time.Millisecond + time.Duration(rng.Float64()*float64(1800*time.Millisecond))
		mon.setPhase("killed")
		killedAt := time.Now()
		gw.kill()
		time.Sleep(outage)
		mon.setPhase("starting")
		ready := gw.start()
		mon.setPhase("load")
		sus := scrape(gw.metrics).Suspects
		events = append(events, killEvent{AtS: killedAt.Sub(t0).Seconds(), OutageMS: outage.Milliseconds(), ReadyMS: ready.Milliseconds(),
			SuspectsAlone: sus["alone"], SuspectsAnswered: sus["answered"]})
		t.Logf("kill %d/%d at t=%.1fs: down %s, then ready %s after restart; crash guard: %.0f requests of an interrupted pass run alone, %.0f answered engine_crashed",
			i+1, kills, killedAt.Sub(t0).Seconds(), outage.Round(time.Millisecond), ready.Round(time.Millisecond), sus["alone"], sus["answered"])
	}
	return events
}

// killKnobs reads the kill soaks' knobs (SOAK_KILLS, SOAK_KILL_RATE,
// SOAK_KILL_DURATION, SOAK_KILL_DEADLINE with the given default, SOAK_DEVICES,
// SOAK_SEED), as TestKill9Soak and TestKill9EmbeddedSoak document them.
func killKnobs(t *testing.T, deadline time.Duration) (kills int, rate float64, dur, dl time.Duration, ndev int, seed uint64) {
	kills = envInt(t, "SOAK_KILLS", 5, 20)
	rate = envFloat(t, "SOAK_KILL_RATE", 300, 800)
	dur = envDur(t, "SOAK_KILL_DURATION", time.Duration(kills)*8*time.Second, time.Duration(kills)*8*time.Second)
	dl = envDur(t, "SOAK_KILL_DEADLINE", deadline, deadline)
	ndev = envInt(t, "SOAK_DEVICES", 16, 16)
	seed = uint64(envInt(t, "SOAK_SEED", int(time.Now().UnixNano()%1e9), int(time.Now().UnixNano()%1e9)))
	return kills, rate, dur, dl, ndev, seed
}
