package scheduler

import "testing"

// With kept plans and answers from the estimate, bounded decisions stay the
// whole queue's (the requests the estimate answers that admission did not
// test are answered beyond the prefix), also when decisions are not applied
// and the policy resyncs (boundedWithEstimateAnswers, bounded_test.go).
// (From a review of kept plans, 2026-12-03.)
func TestPlanAheadEstimateAnswers(t *testing.T) {
	for _, tc := range []struct {
		name                string
		every, share, unapp int
	}{{"sparse", 10, 4, 0}, {"dense", 1, 3, 0}, {"unapplied", 1, 3, 5}, {"unapplied2", 1, 3, 2}} {
		t.Run(tc.name, func(t *testing.T) { boundedWithEstimateAnswers(t, tc.every, tc.share, tc.unapp, 3) })
	}
}
