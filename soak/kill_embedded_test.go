//go:build soak

package soak

import (
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/store"
)

// TestKill9EmbeddedSoak is TestKill9Soak with the gateway's embedded broker
// (mqtt.embedded.enabled, what `make run` uses) instead of Mosquitto: each
// SIGKILL takes the broker down with the gateway, with every session and every
// message it held, and the restarted gateway serves a new, empty broker on the
// same port. The devices (persistent sessions on their side) reconnect and
// send again every request the broker had not acknowledged.
//
// What must hold: every request acknowledged to a device is in the journal
// (the embedded broker acknowledges a request only once the gateway has, after
// its journal commit). Before that, mochi-mqtt acknowledged requests before
// the gateway had them, and a kill lost those in between. The test reads the
// journal after the run: each acknowledged request without a reply is either
// not in it (lost: the test fails) or answered there, its reply lost on the
// way to the device (the broker's queue to the device went with the process,
// or the device had not subscribed again yet when the restarted gateway sent
// it): counted and reported, not failed (docs/deployment.md, "The embedded
// broker").
//
// The deadline is 30 s by default (SOAK_KILL_DEADLINE), so that no request is
// answered without being journaled (expired on arrival after an outage): such
// an answer's loss would look like a lost request.
//
// Knobs: SOAK_KILLS (short 5, full 20), SOAK_KILL_RATE requests/s (300, full
// 800), SOAK_KILL_DURATION (8 s per kill), SOAK_KILL_DEADLINE (30s),
// SOAK_DEVICES (16), SOAK_SEED.
func TestKill9EmbeddedSoak(t *testing.T) {
	kills, rate, dur, deadline, ndev, seed := killKnobs(t, 30*time.Second)
	t.Logf("kill -9 soak, embedded broker: %d kills over %s at %.0f requests/s from %d devices, deadline_ms %d with sent_at, seed %d",
		kills, dur, rate, ndev, deadline.Milliseconds(), seed)
	rng := mrand.New(mrand.NewPCG(seed, 9))

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	url := "tcp://" + addr
	gw := newGateway(t, url, gwOptions{Embedded: addr})
	first := gw.start()
	t.Logf("gateway ready in %s", first.Round(time.Millisecond))
	f := newFleet(t, url, "ke", ndev)
	mon := startMonitor(t, f, gw)
	mon.setPhase("load")

	stop := make(chan struct{})
	t0 := time.Now()
	wg := f.load(rate, deadline, stop)
	events := killRestart(t, gw, mon, rng, t0, dur, kills)
	time.Sleep(time.Until(t0.Add(dur)))
	close(stop)
	wg.Wait()
	mon.setPhase("drain")
	waited := f.waitReplies(drainWait(t))
	mon.close()
	tl := analyse(f)
	tl.log(t)
	gw.term() // the journal's file is free to read

	// Each acknowledged request without a reply: in the journal or not?
	j, err := store.Open(filepath.Join(filepath.Dir(gw.cfgPath), "sneakgate.db"), store.Options{Retention: 24 * time.Hour})
	if err != nil {
		t.Fatalf("journal: %v", err)
	}
	defer j.Close()
	var notJournaled, answered, pending []string
	for _, s := range f.snapshot() {
		if s.State != pubAcked || len(s.Replies) > 0 {
			continue
		}
		rest := strings.TrimPrefix(s.ID, f.run+"-")
		device := rest[:strings.LastIndexByte(rest, '-')]
		res, err := j.Lookup(store.Key{App: "fashion", Device: device, ID: s.ID})
		if err != nil {
			t.Fatalf("journal lookup %s: %v", s.ID, err)
		}
		switch res.Dup {
		case store.New:
			notJournaled = append(notJournaled, s.ID)
		case store.DupPending:
			pending = append(pending, s.ID)
		default:
			answered = append(answered, s.ID)
		}
	}
	t.Logf("load ran %s; replies waited for %s after the load stopped", time.Since(t0).Round(time.Millisecond), waited.Round(time.Millisecond))
	t.Logf("EMBEDDED: %d requests acknowledged to devices, %d of them answered; of the %d without a reply, %d never reached the journal (lost requests), %d are answered in the journal (replies lost with the broker), %d are pending in it",
		tl.Acknowledged, tl.Answered, tl.Lost, len(notJournaled), len(answered), len(pending))
	writeSummary(t, map[string]any{
		"test": t.Name(), "kills": kills, "rate": rate, "duration_s": dur.Seconds(), "deadline_ms": deadline.Milliseconds(),
		"devices": ndev, "seed": seed, "events": events, "tally": tl, "wait_after_load_s": waited.Seconds(),
		"lost_not_journaled": len(notJournaled), "lost_replies_answered_in_journal": len(answered),
		"lost_pending_in_journal": len(pending), "seconds": mon.seconds(),
	})
	if len(notJournaled) > 0 {
		t.Errorf("%d requests acknowledged to their devices never reached the journal (first: %v)", len(notJournaled), notJournaled[:min(5, len(notJournaled))])
	}
	if len(pending) > 0 {
		t.Errorf("%d acknowledged requests are still pending in the journal, unanswered (first: %v)", len(pending), pending[:min(5, len(pending))])
	}
	if tl.Malformed > 0 {
		t.Errorf("%d malformed replies", tl.Malformed)
	}
	if tl.Acknowledged == 0 {
		t.Errorf("no request was acknowledged: the harness did not run")
	}
}
