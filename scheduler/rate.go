package scheduler

import "time"

// RateWindow measures how often something happens, per second, over a sliding
// window of time. The zero value measures over rateHorizon.
type RateWindow struct {
	// Window is how far back the rate is measured (0: rateHorizon).
	Window time.Duration
	total  float64
	ring   []rateSample
}

type rateSample struct {
	t     time.Time
	total float64
}

// rateHorizon is how far back the policies measure arrival rates.
const rateHorizon = 250 * time.Millisecond

// Add counts n events at now and returns the rate over the window: the events
// counted since the oldest sample still inside it, divided by the time since
// that sample; 0 until there is a time span. Calls must not go back in time.
func (m *RateWindow) Add(now time.Time, n float64) float64 {
	window := m.Window
	if window <= 0 {
		window = rateHorizon
	}
	m.total += n
	m.ring = append(m.ring, rateSample{now, m.total})
	drop := 0
	for drop < len(m.ring)-2 && now.Sub(m.ring[drop+1].t) >= window {
		drop++
	}
	if drop > 0 {
		m.ring = append(m.ring[:0], m.ring[drop:]...)
	}
	first := m.ring[0]
	span := now.Sub(first.t).Seconds()
	if span <= 0 {
		return 0
	}
	return (m.total - first.total) / span
}
