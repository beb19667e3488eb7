package scheduler

import (
	"os"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/sneakpeek"
)

// t0 is the fake clock's origin; tests pass explicit times, never sleep.
var t0 = time.Unix(1_700_000_000, 0)

func ms(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }

// linear builds a latency table fixed + per*b for b = 1..maxB.
func linear(fixed, per time.Duration, maxB int) []time.Duration {
	l := make([]time.Duration, maxB+1)
	for b := 1; b <= maxB; b++ {
		l[b] = fixed + time.Duration(b)*per
	}
	return l
}

// testApp is a two-class app with a cheap variant good on class 0 and an expensive
// one good on both.
func testApp() *App {
	a := &App{
		Name: "app", K: 2, Prior: []float64{0.9, 0.1},
		Utility: [][]float64{{1, 0}, {0, 1}},
	}
	cheap := &Variant{
		ID: VariantID{"app", "cheap"}, Index: 0, Recall: []float64{0.99, 0.5},
		Cond: [][]float64{{0.99, 0.01}, {0.5, 0.5}}, Latency: linear(ms(1), ms(0.1), 32),
		Load: ms(5), Unload: ms(1), MemBytes: 100,
	}
	big := &Variant{
		ID: VariantID{"app", "big"}, Index: 1, Recall: []float64{0.97, 0.97},
		Cond: [][]float64{{0.97, 0.03}, {0.03, 0.97}}, Latency: linear(ms(5), ms(1), 32),
		Load: ms(20), Unload: ms(2), MemBytes: 400,
	}
	for _, v := range []*Variant{cheap, big} {
		v.Accuracy = sneakpeek.ExpectedAccuracy(a.Prior, v.Recall)
		v.ProfiledUtility = ExpectedUtility(a.Prior, v.Cond, a.Utility)
	}
	a.Variants = []*Variant{cheap, big}
	a.DefaultVariant = 1
	return a
}

// snap builds a snapshot at now with the given queue and everything resident.
func snap(now time.Time, a *App, q ...*Request) *Snapshot {
	s := &Snapshot{Now: now, Queue: q, Apps: map[string]*App{a.Name: a},
		Engine: Engine{Resident: map[VariantID]time.Time{}}}
	for _, v := range a.Variants {
		s.Engine.Resident[v.ID] = t0
	}
	return s
}

// req makes a request arriving at arrival with the given budget and estimate.
func req(a *App, seq uint64, arrival time.Time, budget time.Duration, p []float64) *Request {
	return Prepare(a, seq, arrival, arrival.Add(budget), p, nil)
}

func mustPolicy(t *testing.T, name string, o Options) Policy {
	t.Helper()
	p, err := New(name, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// trials is how many of a test's full independent random cases to run: all of
// them without the race detector or with SNEAKGATE_TEST_FULL=1, a fifth under
// it (make test runs every package with -race, then
// TestBruteForceCutsChangeNothing once more without it, full size). The scheduler runs on one
// goroutine, the gateway's loop or the simulator's, so the race detector has
// nothing to find in these cases; it only makes them several times slower. The
// fifth are the first of the same seeded sequence. Full size under -race:
//
//	SNEAKGATE_TEST_FULL=1 go test -race -run TestBruteForceCutsChangeNothing ./scheduler/
func trials(full int) int {
	if !raceDetector || os.Getenv("SNEAKGATE_TEST_FULL") == "1" {
		return full
	}
	return max(1, full/5)
}

// Parallel tests: the long equivalence tests of bounded against whole-queue
// decisions (TestBoundedDecisionEqualsFull, ...TurnedOver,
// TestWorkHistBuiltInParts, TestCascadeBoundedEqualsFull,
// TestPeekBoundedEqualsFull) and their cases call t.Parallel: each builds its
// own applications, queue and policies, and the package's one variable
// (bruteNoCut) is set only by TestBruteForceCutsChangeNothing, which is not
// parallel and has therefore finished before any parallel test runs. Under
// -race on two cores this cut go test -race -count=1 ./scheduler/ from 361 s
// to 187 s together with trials (2026-12-01, one run each, idle machine).
