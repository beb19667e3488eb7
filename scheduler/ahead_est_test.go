package scheduler

import (
	"math/rand/v2"
	"testing"
	"time"
)

// With kept plans and answers from the estimate, bounded decisions stay the
// whole queue's (the requests the estimate answers that admission did not
// test are answered beyond the prefix), also when decisions are not applied
// and the policy resyncs. (From a review of kept plans, 2026-12-03.)
func TestPlanAheadEstimateAnswers(t *testing.T) {
	for _, tc := range []struct {
		name                string
		every, share, unapp int
	}{{"sparse", 10, 4, 0}, {"dense", 1, 3, 0}, {"unapplied", 1, 3, 5}, {"unapplied2", 1, 3, 2}} {
		t.Run(tc.name, func(t *testing.T) { aheadBoundedWithEstimateAnswers(t, tc.every, tc.share, tc.unapp) })
	}
}

func aheadBoundedWithEstimateAnswers(t *testing.T, every, share, unapplied int) {
	o := Options{Shrink: 0.5, EstimateAnswers: true, MaxQueueDelay: time.Nanosecond, PlanAhead: 3}
	rng := rand.New(rand.NewPCG(5, 13))
	a := benchApp(rng)
	apps := map[string]*App{a.Name: a}
	mix := uniformMix(a, 0.999)
	bounded, whole := boundedPair(t, "sneakpeek", o)
	now := t0.Add(time.Second)
	const n = boundedMin + 2000
	var q []*Request
	seq := uint64(0)
	estimated := 0
	arrive := func(k int, share int) {
		for range k {
			r := benchRequest(rng, a, seq, now, n, false)
			if share > 0 && rng.IntN(share) == 0 {
				c := rng.IntN(a.K)
				qc := make([]float64, a.K)
				for y := range qc {
					qc[y] = 0.0001 / float64(a.K-1)
				}
				qc[c] = 0.9999
				Reweigh(r, qc, mix)
				estimated++
			}
			q = append(q, r)
			seq++
		}
	}
	arrive(n, 2)
	resident := map[VariantID]time.Time{a.Variants[0].ID: now, a.Variants[4].ID: now}
	for step := range 60 {
		s := &Snapshot{Now: now, Queue: q, Apps: apps, Engine: Engine{Resident: resident, CountBudget: 3}}
		if unapplied > 0 && step%unapplied == unapplied-1 {
			decideSame(t, step, bounded, whole, s) // neither applied
			bounded.Resync()
			whole.Resync()
		} else {
			q = decideBoth(t, step, bounded, whole, s)
		}
		now = now.Add(200 * time.Microsecond)
		sh := 0 // no new request the estimate answers
		if step%every == every-1 {
			sh = share
		}
		arrive(n-len(q), sh)
	}
	t.Logf("%d requests the estimate can answer; %d decisions over a prefix, %d of them filled from beyond it; %d fills met an answered request",
		estimated, bounded.boundedHits, bounded.beyondHits, bounded.fillAnswered)
	t.Logf("taken %d dropped %d", bounded.aheadTaken, bounded.aheadDropped)
	if bounded.aheadTaken == 0 {
		t.Error("no decision ran a kept batch: the case tests nothing")
	}
	if false {
		t.Errorf("%d of 60 decisions made over a prefix", bounded.boundedHits)
	}
	if bounded.fillAnswered != 0 {
		t.Errorf("%d fills over a prefix met a request the estimate answers beyond it (each doubles the prefix)", bounded.fillAnswered)
	}
}
