package scheduler

import (
	"testing"
	"time"
)

// The drain meter reports answers per second of busy time: idle time does not
// dilute it, and it forgets what is older than its window.
func TestDrainMeter(t *testing.T) {
	var d DrainMeter
	t0 := time.Unix(1_700_000_000, 0)
	if r := d.Observe(t0, true); r != (DrainRates{}) {
		t.Fatalf("rates %v before any work", r)
	}
	// 100 ms busy answering 50, 80 ms of it in forward passes that the cheapest
	// variants would have done in 5 ms, then 900 ms idle.
	d.Answered, d.Engine, d.Cheapest = 50, 80*time.Millisecond, 5*time.Millisecond
	if r := d.Observe(t0.Add(100*time.Millisecond), false); r.Now < 499 || r.Now > 501 {
		t.Errorf("rate %v, want 500/s", r.Now)
	}
	// The fastest drain: 20 ms outside the passes + 5 ms on the cheapest = 25 ms
	// for 50 requests.
	if r := d.Observe(t0.Add(time.Second), false); r.Now < 499 || r.Now > 501 || r.Fastest < 1999 || r.Fastest > 2001 {
		t.Errorf("rates %+v after idle time, want still 500/s and fastest 2,000/s", r)
	}
	if r := d.Observe(t0.Add(10*time.Second), true); r != (DrainRates{}) {
		t.Errorf("rates %+v after the window passed, want 0", r)
	}
}

func TestDrainMeterFastestNeverBelowMeasured(t *testing.T) {
	var d DrainMeter
	t0 := time.Unix(1_700_000_000, 0)
	d.Observe(t0, true)
	// Already on the cheapest variants (their time equals the passes'), and a
	// pass that began before the window (more engine time than busy time).
	d.Answered, d.Engine, d.Cheapest = 10, 30*time.Millisecond, 30*time.Millisecond
	if r := d.Observe(t0.Add(20*time.Millisecond), true); r.Fastest != r.Now || r.Now < 499 || r.Now > 501 {
		t.Errorf("rates %+v, want fastest = now = 500/s", r)
	}
}
