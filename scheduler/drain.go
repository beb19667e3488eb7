package scheduler

import "time"

// DrainMeter measures how fast a gateway's loop empties its queue while it has
// work (the gateway's loop and the simulator keep one; admission reads it): the
// requests it answered (by a model or a verdict) per second of busy time, over the
// last 2 s (drainBins of drainBinWidth). Unlike a profile it includes everything that slows the gateway
// down under load (ingress, the broker and the engine sharing the CPU); unlike a
// plain rate it is not diluted by idle time, so it does not under-estimate at the
// start of a burst.
//
// It also measures the fastest drain: the busy time outside forward passes (the
// loop's own work per request, and whatever else held it up) plus, for every
// answered request, its application's cheapest variant's per-request time, in
// place of the passes that ran. The rate a policy reaches depends on the variants
// it chooses (one that runs a heavy variant drains slowly but could switch), so
// admission asks whether the queue could be drained in time at all.
type DrainMeter struct {
	// Answered counts the requests answered (by a model or a verdict), Engine
	// the forward passes' time and Cheapest the answered requests' cheapest
	// variant time, since the last Observe; the owner adds to them.
	Answered         int
	Engine, Cheapest time.Duration
	last             time.Time
	wasBusy          bool
	bins             [drainBins]drainBin
}

type drainBin struct {
	slot             int64 // time slot (now / drainBinWidth) the bin holds
	answered         int
	busy             time.Duration
	engine, cheapest time.Duration
}

// DrainRates are the measured drain rate and the fastest one (requests per
// second of busy time).
type DrainRates struct{ Now, Fastest float64 }

const (
	drainBinWidth = 250 * time.Millisecond
	drainBins     = 8 // a 2 s window
)

// Observe accounts the time since the last call as busy or idle (as the loop was
// then), and the requests answered and passes run since, and returns the drain
// rates (0 when the window holds less than 10 ms of busy time).
func (d *DrainMeter) Observe(now time.Time, busy bool) DrainRates {
	slot := now.UnixNano() / int64(drainBinWidth)
	b := &d.bins[slot%drainBins]
	if b.slot != slot {
		*b = drainBin{slot: slot}
	}
	if d.wasBusy && !d.last.IsZero() && now.After(d.last) {
		b.busy += now.Sub(d.last)
	}
	b.answered += d.Answered
	b.engine += d.Engine
	b.cheapest += d.Cheapest
	d.Answered, d.Engine, d.Cheapest, d.last, d.wasBusy = 0, 0, 0, now, busy
	var n int
	var t, eng, cheap time.Duration
	for _, x := range d.bins {
		if slot-x.slot < drainBins {
			n += x.answered
			t += x.busy
			eng += x.engine
			cheap += x.cheapest
		}
	}
	if t < 10*time.Millisecond {
		return DrainRates{}
	}
	r := DrainRates{Now: float64(n) / t.Seconds()}
	// A pass can straddle the window's start: its time may exceed the busy time.
	r.Fastest = r.Now
	if fast := max(t-eng, 0) + cheap; fast < t && fast > 0 {
		r.Fastest = float64(n) / fast.Seconds()
	}
	return r
}
