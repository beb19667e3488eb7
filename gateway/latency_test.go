package gateway

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/sneakgate/sneakgate/scheduler"
)

func TestLatencyModelFollowsObservedTimes(t *testing.T) {
	v := loopApp().Variants[0]
	prof := append([]time.Duration(nil), v.Latency...)
	m := newLatencyModel()
	// Batches of varying size all take 3x their profile: the factor converges
	// to 3 and the whole table follows.
	var f float64
	for i := range 100 {
		b := 1 + i%32
		var p time.Duration
		if f, p = m.observe(v, b, 3*prof[b]); p != prof[b] {
			t.Fatalf("batch of %d: observe reports a profiled pass of %v, want the start-up profile's %v", b, p, prof[b])
		}
	}
	if math.Abs(f-3) > 0.01 {
		t.Fatalf("factor %.3f after 100 batches at 3x, want 3", f)
	}
	for b := 1; b <= 32; b++ {
		if got, want := v.Latency[b], 3*prof[b]; math.Abs(float64(got-want)) > 0.01*float64(want) {
			t.Fatalf("Latency[%d] = %v, want about %v", b, got, want)
		}
	}
	// One outlier (a GC pause, a page fault) moves it little.
	if f, _ := m.observe(v, 8, 100*prof[8]); f > 5 {
		t.Fatalf("one 100x outlier moved the factor to %.2f", f)
	}
	// Back on an idle machine, it returns towards the profile.
	for range 100 {
		f, _ = m.observe(v, 4, prof[4])
	}
	if math.Abs(f-1) > 0.01 {
		t.Fatalf("factor %.3f after 100 batches at the profile, want 1", f)
	}
	// It is bounded.
	for range 200 {
		f, _ = m.observe(v, 1, 1000*prof[1])
	}
	if f > latencyClamp+1e-9 {
		t.Fatalf("factor %.1f beyond the clamp %.0f", f, latencyClamp)
	}
}

// In the loop: an engine slower than its profile makes the tables the policy
// plans with slower too, and the metric shows by how much.
func TestLoopCorrectsLatencyTables(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prof := loopApp().Variants[0].Latency
		f := &fakeRunner{lat: func(b int) time.Duration { return 2 * prof[min(b, 32)] },
			resident: map[scheduler.VariantID]bool{}}
		l, ans, cancel := startLoop(t, f, "edf")
		defer cancel()
		for i := range 40 {
			submit(t, l, string(rune('a'+i%26))+string(rune('0'+i/26)), time.Second, nil)
			time.Sleep(3 * time.Millisecond)
			synctest.Wait()
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if len(ans.got) != 40 {
			t.Fatalf("answered %d of 40", len(ans.got))
		}
		v := l.apps["app"].Variants[0]
		if r := float64(v.Latency[1]) / float64(prof[1]); r < 1.5 || r > 2.05 {
			t.Fatalf("Latency[1] is %.2fx the profile after batches at 2x, want about 2", r)
		}
		// Over all batches, whatever their sizes: the time of the forward passes
		// over their profiled time (sneakgate_infer_profiled_seconds_total).
		var h dto.Metric
		if err := l.m.inferTime.WithLabelValues("app", "m").(prometheus.Metric).Write(&h); err != nil {
			t.Fatal(err)
		}
		profiled := testutil.ToFloat64(l.m.inferProfiled.WithLabelValues("app", "m"))
		if r := h.GetHistogram().GetSampleSum() / profiled; math.Abs(r-2) > 1e-9 {
			t.Fatalf("forward passes took %.3fx their profiled time (%v s profiled), want 2", r, profiled)
		}
	})
}

// scheduler.latency_correction: false measures the factor (for the metric) but
// leaves the table as profiled.
func TestLatencyModelFrozen(t *testing.T) {
	v := loopApp().Variants[0]
	prof := append([]time.Duration(nil), v.Latency...)
	m := newLatencyModel()
	m.frozen = true
	var f float64
	for range 100 {
		f, _ = m.observe(v, 4, 3*prof[4])
	}
	if math.Abs(f-3) > 0.01 {
		t.Fatalf("factor %.3f after 100 batches at 3x, want 3", f)
	}
	if !slices.Equal(v.Latency, prof) {
		t.Fatalf("frozen tables changed: %v, profiled %v", v.Latency, prof)
	}
}

func TestOfferedMeterCountsRefusals(t *testing.T) {
	m := offeredMeter{w: scheduler.RateWindow{Window: offeredWindow}} // as newLoop sets it
	t0 := time.Unix(1_700_000_000, 0)
	m.rate(t0, 0)
	// 100 admitted and 300 refused in half a second: 800 offered per second.
	m.admitted = 100
	if r := m.rate(t0.Add(500*time.Millisecond), 300); math.Abs(r-800) > 1e-9 {
		t.Fatalf("offered rate %v, want 800", r)
	}
}

// The loop's own time per request (here 200 µs of fake time per reply, spent
// in the loop while the engine waits) enters the tables the policy plans with,
// b times over for a batch of b, and the metric shows it; frozen tables
// (scheduler.latency_correction: false) keep the profile but the metric still
// measures it. Before, a plan counted only the engine's time.
func TestLoopPlansWithItsOwnTime(t *testing.T) {
	const perReply = 200 * time.Microsecond
	for _, frozen := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			prof := slices.Clone(loopApp().Variants[0].Latency)
			f := &fakeRunner{lat: func(b int) time.Duration { return prof[min(b, 32)] }, resident: map[scheduler.VariantID]bool{}}
			l, ans := newTestLoop(t, loopApp(), f, "edf")
			l.latency.frozen = frozen
			record := l.answer
			l.answer = func(j *job, r result) {
				time.Sleep(perReply) // the loop's work on this reply
				record(j, r)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go l.Run(ctx)
			// 4 every 2 ms, as fast as the engine and the loop serve them
			// (a batch of about 10 every 5 ms): every batch's end finds
			// requests queued, and the engine waits while the loop answers the
			// batch and decides the next; the queue stays far below its 100.
			for i := range 30 {
				for k := range 4 {
					submit(t, l, fmt.Sprintf("r%d-%d", i, k), time.Second, nil)
				}
				time.Sleep(2 * time.Millisecond)
				synctest.Wait()
			}
			time.Sleep(time.Second)
			synctest.Wait()
			if len(ans.got) != 120 {
				t.Fatalf("answered %d of 120", len(ans.got))
			}
			own := time.Duration(testutil.ToFloat64(l.m.loopTime) * float64(time.Second))
			f.mu.Lock()
			t.Logf("frozen %v: the loop's time %v a request, %d batches", frozen, own, len(f.runs))
			f.mu.Unlock()
			if own < perReply/4 || own > 2*perReply {
				t.Fatalf("sneakgate_loop_seconds_per_request %v, want about %v", own, perReply)
			}
			v := l.apps["app"].Variants[0]
			if frozen {
				if !slices.Equal(v.Latency, prof) {
					t.Fatalf("frozen: tables changed to %v (profile %v)", v.Latency, prof)
				}
				return
			}
			perBatch := time.Duration(testutil.ToFloat64(l.m.loopBatchTime) * float64(time.Second))
			for _, b := range []int{1, 8, 32} {
				if got, want := v.Latency[b]-prof[b], perBatch+time.Duration(b)*own; got != want {
					t.Errorf("Latency[%d] is the profile + %v, want + %v + %d x %v", b, got, perBatch, b, own)
				}
			}
		})
	}
}

// The loop's decisions are a cost per batch, the rest of its time a cost per
// request: a wait of 1 ms, 600 µs of it deciding, before a batch of 8 plans
// every batch 600 µs + b x 50 µs longer. (Counted per request, a decision's
// cost grew as the batches shrank, and the plans then made smaller batches
// still: in the simulator's overloaded satellite runs, 30 -> 3-4 requests.)
func TestLoopTimeSplitsDecisionsPerBatch(t *testing.T) {
	a := loopApp()
	prof := slices.Clone(a.Variants[0].Latency)
	m := newLatencyModel()
	var per, batch time.Duration
	for range 300 {
		per, batch = m.loopTime(map[string]*scheduler.App{"app": a}, time.Millisecond, 600*time.Microsecond, 8)
	}
	near := func(got, want time.Duration) bool { return math.Abs(float64(got-want)) <= 0.01*float64(want) }
	if !near(per, 50*time.Microsecond) || !near(batch, 600*time.Microsecond) {
		t.Fatalf("per request %v, per batch %v; want 50µs and 600µs", per, batch)
	}
	for _, b := range []int{1, 8, 32} {
		if got, want := a.Variants[0].Latency[b], prof[b]+batch+time.Duration(b)*per; got != want {
			t.Errorf("Latency[%d] = %v, want %v", b, got, want)
		}
	}
	// Decisions never count for more than the wait they were part of.
	m = newLatencyModel()
	for range 300 {
		per, batch = m.loopTime(map[string]*scheduler.App{"app": a}, time.Millisecond, 5*time.Millisecond, 8)
	}
	if per != 0 || !near(batch, time.Millisecond) {
		t.Errorf("decisions of 5 ms in a wait of 1 ms: per request %v, per batch %v; want 0 and 1ms", per, batch)
	}
}

// The fastest drain admission compares deadlines with counts the loop's time
// apart (the busy time outside forward passes): the cheapest variant's time it
// adds per request is the engine's alone, not the tables' that include the
// loop's time (a review found it counted twice: 284 µs a request at the
// fastest rate against 213).
func TestEngineCheapestLeavesTheLoopOut(t *testing.T) {
	a := loopApp()
	want := scheduler.CheapestAmortised(a)
	m := newLatencyModel()
	for range 100 {
		m.loopTime(map[string]*scheduler.App{"app": a}, time.Millisecond, 600*time.Microsecond, 8)
	}
	if got := scheduler.CheapestAmortised(a); got <= want {
		t.Fatalf("the tables do not include the loop's time: cheapest %v, profile's %v", got, want)
	}
	if got := m.engineCheapest(a); got != want {
		t.Errorf("engineCheapest %v, want the profile's %v", got, want)
	}
	m.frozen = true // tables as profiled
	b := loopApp()
	if got := m.engineCheapest(b); got != want {
		t.Errorf("frozen: engineCheapest %v, want %v", got, want)
	}
}
