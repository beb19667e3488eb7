//go:build soak

package soak

import (
	"math"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/protocol"
)

// TestOverload5x measures the gateway's capacity on this box, restarts it, records
// its idle memory, then offers five times that capacity (or what the load
// generator can publish, whichever is less: the achieved rate is reported) with
// 200 ms deadlines counted from sent_at. It asserts that memory and goroutines stay
// bounded, that every acknowledged request gets a terminal reply, that a probe
// sent 5 s after the load stops is answered within its deadline, and that the
// median retry_after_ms of overload rejections in the last 5 s of load is within
// 2x of the time the queue actually took to drain after the load stopped.
//
// Knobs: SOAK_OVERLOAD_DURATION (short 15s, full 60s), SOAK_OVERLOAD_FACTOR (5),
// SOAK_OVERLOAD_DEADLINE (200ms), SOAK_OVERLOAD_POLICY (edf), SOAK_CAL_RATE
// (offered rate of the capacity burst, 4000/s), SOAK_CAL_DURATION (6s, full 10s),
// SOAK_MAX_QUEUE (admission.max_queue; default the gateway's, 10000),
// SOAK_PRICE_SHED (admission.price_shed, true/false; default the gateway's),
// SOAK_MAX_GOROUTINES (5000), SOAK_DEVICES (16), SOAK_GATEWAY_CPU (0.25: the
// gateway process is capped at a quarter of a core with a CPU cgroup; 0 runs it
// uncapped).
//
// Why the cap: on one 2-core machine the single-threaded broker saturates before
// the gateway does (each request is two broker messages), so five times the
// uncapped gateway's capacity measures Mosquitto drowning, not the gateway. The
// cap makes the gateway the bottleneck, as on an edge box whose inference
// gateway has less CPU than the broker and the devices can push through it.
func TestOverload5x(t *testing.T) {
	factor := envFloat(t, "SOAK_OVERLOAD_FACTOR", 5, 5)
	dur := envDur(t, "SOAK_OVERLOAD_DURATION", 15*time.Second, 60*time.Second)
	deadline := envDur(t, "SOAK_OVERLOAD_DEADLINE", 200*time.Millisecond, 200*time.Millisecond)
	calRate := envFloat(t, "SOAK_CAL_RATE", 4000, 4000)
	calDur := envDur(t, "SOAK_CAL_DURATION", 6*time.Second, 10*time.Second)
	maxQueue := envInt(t, "SOAK_MAX_QUEUE", 0, 0)
	maxGoroutines := envInt(t, "SOAK_MAX_GOROUTINES", 5000, 5000)
	cpu := envFloat(t, "SOAK_GATEWAY_CPU", 0.25, 0.25)
	ndev := envInt(t, "SOAK_DEVICES", 16, 16)
	policy := os.Getenv("SOAK_OVERLOAD_POLICY")
	if policy == "" {
		policy = "edf"
	}
	if calDur < 3*time.Second {
		t.Fatalf("SOAK_CAL_DURATION %s: at least 3s", calDur)
	}

	b := startBroker(t)
	gw := newGateway(t, b.URL(), gwOptions{Policy: policy, MaxQueue: maxQueue, CPU: cpu})
	t.Logf("gateway (policy %s) ready in %s", policy, gw.start().Round(time.Millisecond))

	// 1. Capacity: a saturating burst with deadlines long enough that nothing
	// expires; the model answers per second over the burst (after its first
	// second) are the capacity.
	cal := newFleet(t, b.URL(), "cal", ndev)
	calMon := startMonitor(t, cal, gw)
	calMon.setPhase("calibrate")
	// burst offers rate from f for calDur (30 s deadlines) and samples /metrics
	// after its first second and at its end.
	burst := func(f *fleet, rate float64) (metricSample, metricSample) {
		stop := make(chan struct{})
		wg := f.load(rate, 30*time.Second, stop)
		time.Sleep(time.Second)
		first := scrape(gw.metrics)
		time.Sleep(calDur - time.Second)
		last := scrape(gw.metrics)
		close(stop)
		wg.Wait()
		return first, last
	}
	models := func(s metricSample) float64 {
		return s.Replies[string(protocol.StatusOK)] + s.Replies[string(protocol.StatusLate)]
	}
	modelRate := func(a, b metricSample) float64 { return (models(b) - models(a)) / b.At.Sub(a.At).Seconds() }
	sA, sB := burst(cal, calRate)
	if !sA.OK || !sB.OK {
		t.Fatal("could not read /metrics during the capacity burst")
	}
	capacity := modelRate(sA, sB)
	calOffered := float64(len(cal.snapshot())) / calDur.Seconds()
	limited := sB.Queue < 50
	t.Logf("CAPACITY: %.0f model answers/s (policy %s), offered %.0f/s during the burst, queue at its end %.0f%s",
		capacity, policy, calOffered, sB.Queue,
		map[bool]string{true: " (the queue stayed empty: the generator, not the gateway, was the limit; capacity is at least this)", false: ""}[limited])
	calMon.setPhase("cal-drain")
	var sC metricSample
	if !waitFor(2*time.Minute, 250*time.Millisecond, func() bool { sC = scrape(gw.metrics); return sC.OK && sC.Queue == 0 }) {
		t.Fatal("the calibration queue did not drain within 2 minutes")
	}
	// The rate at which the queue drained once no request arrived any more (the
	// engine alone, without ingress competing for the CPUs): when it is well above
	// the burst's rate, that rate understated the capacity (below).
	drainRate := -1.0 // -1: too short to measure
	if d := sC.At.Sub(sB.At).Seconds(); d > 0.5 {
		drainRate = modelRate(sB, sC)
		t.Logf("the calibration queue (%.0f) drained in %.1f s at %.0f model answers/s with no arrivals (the engine alone); capacity under arrivals was %.0f/s",
			sB.Queue, d, drainRate, capacity)
	} else {
		t.Logf("for comparison: the calibration queue (%.0f) was empty %.0f ms after the burst (too short to measure a drain rate)", sB.Queue, d*1000)
	}
	cal.waitReplies(30 * time.Second)
	calMon.close()
	calTally := analyse(cal)
	for _, d := range cal.devs {
		d.c.Disconnect(100)
	}
	if drainRate > 1.25*capacity {
		// Refusing the burst's excess took most of the gateway's CPU (it is far
		// beyond 5x), so the rate under that burst understates the capacity. A
		// user would measure it at a mild overload: offer 1.25x the engine-alone
		// rate and count the model answers per second.
		cal2 := newFleet(t, b.URL(), "cal2", ndev)
		if s1, s2 := burst(cal2, 1.25*drainRate); s1.OK && s2.OK {
			c2 := modelRate(s1, s2)
			t.Logf("CAPACITY: %.0f model answers/s at a mild overload (offered 1.25 x %.0f/s); the first burst's %.0f/s understated it", c2, drainRate, capacity)
			capacity = max(capacity, c2)
		}
		waitFor(2*time.Minute, 250*time.Millisecond, func() bool { s := scrape(gw.metrics); return s.OK && s.Queue == 0 })
		cal2.waitReplies(30 * time.Second)
		for _, d := range cal2.devs {
			d.c.Disconnect(100)
		}
	}
	if capacity < 1 {
		t.Fatalf("capacity %.1f/s: the gateway answered nothing during the burst", capacity)
	}

	// 2. A fresh gateway (same journal), idle.
	gw.term()
	t.Logf("gateway restarted for the overload, ready in %s", gw.start().Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	idle := scrape(gw.metrics)
	if !idle.OK {
		t.Fatal("could not read /metrics from the idle gateway")
	}
	rssBound := 2*idle.RSS + 64<<20
	t.Logf("IDLE: rss %.1f MiB, goroutines %.0f; bound on max rss: 2 x idle + 64 MiB = %.1f MiB", idle.RSS/(1<<20), idle.Goroutines, rssBound/(1<<20))

	// 3. Overload.
	f := newFleet(t, b.URL(), "ov", ndev)
	probeDev := f.connect("ov-probe")
	mon := startMonitor(t, f, gw)
	mon.setPhase("overload")
	target := factor * capacity
	t.Logf("OVERLOAD: offering %.1f x %.0f = %.0f requests/s for %s, deadline_ms %d with sent_at", factor, capacity, target, dur, deadline.Milliseconds())
	stop := make(chan struct{})
	t0 := time.Now()
	wg := f.load(target, deadline, stop)
	time.Sleep(dur)
	stopAt := time.Now()
	close(stop)
	wg.Wait()
	mon.setPhase("after")

	// Drain: poll the queue every 100 ms until it is empty.
	maxRSS, maxG := 0.0, 0.0
	var drain time.Duration
	drained := false
	var drainSamples []metricSample
	for time.Since(stopAt) < 2*time.Minute {
		s := scrape(gw.metrics)
		if s.OK {
			drainSamples = append(drainSamples, s)
			maxRSS, maxG = math.Max(maxRSS, s.RSS), math.Max(maxG, s.Goroutines)
			if s.Queue == 0 {
				drain, drained = s.At.Sub(stopAt), true
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	queueAtStop := -1.0
	if len(drainSamples) > 0 {
		queueAtStop = drainSamples[0].Queue
	}
	t.Logf("DRAIN: queue %.0f at the first sample after the load stopped; empty %s after it stopped (drained %v, 100 ms polling)",
		queueAtStop, drain.Round(time.Millisecond), drained)

	// The probe, 5 s after the load stopped.
	time.Sleep(time.Until(stopAt.Add(5 * time.Second)))
	pr, prec, answered := f.probe(probeDev, deadline, 10*time.Second)
	probeOK := answered && pr.DeadlineMet != nil && *pr.DeadlineMet
	probeLatency := -1.0 // ms from sent_at to the reply; -1 when none came
	if answered {
		probeLatency = pr.At.Sub(prec.SentAt).Seconds() * 1000
	}
	if answered {
		t.Logf("PROBE: %s (reason %q) deadline_met=%v, %s after sent_at (deadline %s)", pr.Status, pr.Reason,
			pr.DeadlineMet != nil && *pr.DeadlineMet, pr.At.Sub(prec.SentAt).Round(time.Microsecond), deadline)
	} else {
		t.Logf("PROBE: no reply within 10 s")
	}

	mon.setPhase("drain")
	waited := f.waitReplies(drainWait(t))
	mon.close()
	tl := analyse(f)
	loss := explainLost(t, f, b, gw)
	tl.log(t)

	// Offered and acknowledged rates over the load, from the request records.
	snaps := f.snapshot()
	var sent, acked int
	var retry []int64
	var overloadLast5 int
	last5 := stopAt.Add(-5 * time.Second)
	for _, s := range snaps {
		if s.SentAt.Before(t0) || s.SentAt.After(stopAt) {
			continue
		}
		sent++
		if s.State == pubAcked {
			acked++
		}
		if s.SentAt.Before(last5) || len(s.Replies) == 0 {
			continue
		}
		if r := s.Replies[0]; r.Status == protocol.StatusRejected && r.Reason == protocol.ReasonOverload {
			overloadLast5++
			if r.RetryAfter >= 0 {
				retry = append(retry, r.RetryAfter)
			}
		}
	}
	// The gateway's queue is not the whole backlog: the broker may still hold
	// requests for it. The last reply the devices got says when the work really
	// ended (the probe excluded).
	var lastReply time.Time
	for _, s := range snaps {
		if s.ID == prec.ID {
			continue
		}
		for _, r := range s.Replies {
			if r.At.After(lastReply) {
				lastReply = r.At
			}
		}
	}
	t.Logf("the last reply (probe excluded) reached its device %s after the load stopped", lastReply.Sub(stopAt).Round(time.Millisecond))
	loadSecs := stopAt.Sub(t0).Seconds()
	offered, ackRate := float64(sent)/loadSecs, float64(acked)/loadSecs
	for _, s := range mon.seconds() {
		maxRSS = math.Max(maxRSS, s.RSSMiB*(1<<20))
		maxG = math.Max(maxG, s.Goroutines)
	}
	t.Logf("OFFERED: target %.0f/s, achieved %.0f/s published (%.2f x capacity), %.0f/s acknowledged by the broker", target, offered, offered/capacity, ackRate)
	if offered < 0.9*target {
		t.Logf("NOTE: the load generator reached only %.0f%% of the target rate on this box", 100*offered/target)
	}
	t.Logf("MEMORY: idle rss %.1f MiB, max rss %.1f MiB (bound %.1f MiB); goroutines idle %.0f, max %.0f (bound %d)",
		idle.RSS/(1<<20), maxRSS/(1<<20), rssBound/(1<<20), idle.Goroutines, maxG, maxGoroutines)
	var medRetry int64 = -1
	if len(retry) > 0 {
		sort.Slice(retry, func(i, j int) bool { return retry[i] < retry[j] })
		medRetry = retry[len(retry)/2]
	}
	t.Logf("RETRY-AFTER: %d overload rejections for requests sent in the last 5 s of load (%d with retry_after_ms), median retry_after_ms %d; observed drain %d ms",
		overloadLast5, len(retry), medRetry, drain.Milliseconds())

	writeSummary(t, map[string]any{
		"test":                        t.Name(),
		"policy":                      policy,
		"factor":                      factor,
		"duration_s":                  dur.Seconds(),
		"deadline_ms":                 deadline.Milliseconds(),
		"devices":                     ndev,
		"max_queue":                   maxQueue,
		"capacity_per_s":              capacity,
		"capacity_generator_limited":  limited,
		"calibration_offered_per_s":   calOffered,
		"calibration_queue_at_end":    sB.Queue,
		"calibration_drain_per_s":     drainRate,
		"calibration_tally":           calTally,
		"target_per_s":                target,
		"offered_per_s":               offered,
		"acknowledged_per_s":          ackRate,
		"idle_rss_bytes":              idle.RSS,
		"max_rss_bytes":               maxRSS,
		"rss_bound_bytes":             rssBound,
		"idle_goroutines":             idle.Goroutines,
		"max_goroutines":              maxG,
		"goroutine_bound":             maxGoroutines,
		"queue_at_stop":               queueAtStop,
		"drain_ms":                    drain.Milliseconds(),
		"drained":                     drained,
		"last_reply_after_stop_ms":    lastReply.Sub(stopAt).Milliseconds(),
		"overload_rejections_last_5s": overloadLast5,
		"median_retry_after_ms":       medRetry,
		"probe_answered":              answered,
		"probe_status":                pr.Status,
		"probe_deadline_met":          probeOK,
		"probe_latency_ms":            probeLatency,
		"tally":                       tl,
		"loss":                        loss,
		"wait_after_load_s":           waited.Seconds(),
		"seconds":                     mon.seconds(),
		"drain_samples":               drainSamples,
	})

	if maxRSS > rssBound {
		t.Errorf("max rss %.1f MiB exceeds 2 x idle (%.1f MiB) + 64 MiB = %.1f MiB", maxRSS/(1<<20), idle.RSS/(1<<20), rssBound/(1<<20))
	}
	if maxG > float64(maxGoroutines) {
		t.Errorf("max goroutines %.0f exceeds %d", maxG, maxGoroutines)
	}
	// Every acknowledged request gets a terminal reply, refusals included: the
	// gateway acknowledges a request it does not journal only once the broker
	// has its reply, and reads no faster than it can answer (docs/protocol.md,
	// "Overload"). What it drops (sneakgate_replies_dropped_total) are copies of
	// replies republished to duplicates.
	final := scrape(gw.metrics)
	t.Logf("REFUSALS: %d acknowledged requests without a reply; %.0f request messages waited for a handler (flow control); %.0f republished replies dropped by the gateway, %d messages by the broker",
		tl.Lost, final.IngressWaits, loss.GatewayDropped, loss.BrokerDropped)
	if tl.Lost > 0 {
		t.Errorf("%d acknowledged requests got no terminal reply within %s after the load stopped (first: %v); the broker dropped %d messages, the gateway at least %.0f replies (LOSS above)",
			tl.Lost, drainWait(t), tl.LostIDs, loss.BrokerDropped, loss.GatewayDropped)
	}
	if !drained {
		t.Errorf("the queue did not drain within 2 minutes after the load stopped")
	}
	if !probeOK {
		t.Errorf("the probe sent 5 s after the load stopped was not answered within its deadline (answered %v, status %q, reason %q)", answered, pr.Status, pr.Reason)
	}
	switch {
	case len(retry) == 0:
		eff := maxQueue
		if eff == 0 {
			eff = 10000 // the gateway's default
		}
		t.Logf("RETRY-AFTER check not exercised: no overload rejection with retry_after_ms in the last 5 s of load (the queue never reached admission.max_queue %d; SOAK_MAX_QUEUE lowers it)", eff)
	default:
		// The drain is measured at 100 ms resolution; give it that much slack.
		lo, hi := (drain-100*time.Millisecond)/2, 2*(drain+100*time.Millisecond)
		got := time.Duration(medRetry) * time.Millisecond
		if got < lo || got > hi {
			t.Errorf("median retry_after_ms %d of the overload rejections in the last 5 s of load is not within 2x of the observed drain time %d ms (allowed %d..%d ms)",
				medRetry, drain.Milliseconds(), lo.Milliseconds(), hi.Milliseconds())
		}
	}
	if tl.Malformed > 0 {
		t.Errorf("%d malformed replies", tl.Malformed)
	}
}
