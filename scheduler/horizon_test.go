package scheduler

import (
	"testing"
	"time"
)

// At a low rate a decision sees one request. A rare request that gains much
// from the expensive variant must get it when the stream can afford it: with a
// price horizon the price is solved over the recent arrivals (mostly requests the
// cheap variant serves as well), so the rare one runs on the big variant; priced
// over its window alone it is treated as if every request wanted the big one.
// (The rare request's estimate is unsure, so its degraded answer is worth less
// than the cheap variant: otherwise the price would leave it on big either way,
// see TestPriceCountsTheAlternative.)
func TestPriceHorizonSendsTheRareGainToTheBigVariant(t *testing.T) {
	for _, c := range []struct {
		horizon time.Duration
		want    string
	}{{0, "cheap"}, {time.Second, "big"}} {
		a := testApp()
		p := mustPolicy(t, "sneakpeek", Options{PriceHorizon: c.horizon})
		now := t0
		gap := time.Second / 1500 // 1,500 requests/s: the big variant alone cannot keep up
		var got string
		for i := range 600 {
			est := []float64{0.99, 0.01} // class 0: the cheap variant is as good
			if i == 599 {
				est = []float64{0.45, 0.55} // class 1: the cheap variant is right half the time
			}
			r := req(a, uint64(i+1), now, 50*time.Millisecond, est)
			d := p.Decide(snap(now, a, r))
			if d.Batch == nil {
				t.Fatalf("horizon %v: request %d not run", c.horizon, i)
			}
			if i == 599 {
				got = d.Batch.Variant.ID.Variant
			}
			now = now.Add(gap)
		}
		if got != c.want {
			t.Errorf("horizon %v: the rare request ran on %s, want %s", c.horizon, got, c.want)
		}
	}
}

// Requests refused at admission never reach the queue; the caller reports the
// offered rate, and the price follows it: a request that would run on the big
// variant at the queue's apparent rate runs on the cheap one when the offered
// load says engine time is scarce. Its estimate is unsure (the degraded answer
// is worth less than the cheap variant).
func TestOfferedRateRaisesThePrice(t *testing.T) {
	for _, c := range []struct {
		offered float64
		want    string
	}{{0, "big"}, {5000, "cheap"}} {
		a := testApp()
		p := mustPolicy(t, "sneakpeek", Options{})
		r := req(a, 1, t0, 50*time.Millisecond, []float64{0.45, 0.55})
		s := snap(t0, a, r)
		s.Offered = c.offered
		d := p.Decide(s)
		if d.Batch == nil || d.Batch.Variant.ID.Variant != c.want {
			t.Errorf("offered %v req/s: %+v, want a batch on %s", c.offered, d.Batch, c.want)
		}
	}
}

// The price of engine time counts the alternative of leaving a request to its
// degraded answer. When the estimate is believed as good as the cheap variant,
// the cheap variant buys nothing over it: under an offered load the big variant
// cannot carry, the engine's time is worth more on big (the excess is answered
// from the estimate, by the shedding walk) than on cheap for everyone. With an
// unsure estimate the cheap variant is worth its time and the price sends the
// request to it (TestOfferedRateRaisesThePrice).
func TestPriceCountsTheAlternative(t *testing.T) {
	for _, c := range []struct {
		est  []float64
		want string
	}{{[]float64{0.01, 0.99}, "big"}, {[]float64{0.45, 0.55}, "cheap"}} {
		a := testApp()
		p := mustPolicy(t, "sneakpeek", Options{})
		r := req(a, 1, t0, 50*time.Millisecond, c.est)
		s := snap(t0, a, r)
		s.Offered = 5000
		d := p.Decide(s)
		if d.Batch == nil || d.Batch.Variant.ID.Variant != c.want {
			t.Errorf("estimate %v at 5,000 req/s offered: %+v, want a batch on %s", c.est, d.Batch, c.want)
		}
	}
}
