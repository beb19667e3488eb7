package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

// fakeRunner is an engine that takes virtual time (inside synctest) and answers
// class 1 with probability 0.9 for every input.
type fakeRunner struct {
	mu       sync.Mutex
	lat      func(b int) time.Duration
	load     time.Duration
	resident map[scheduler.VariantID]bool
	runs     []int // batch sizes
	failRun  error
	// failRuns, when positive, limits failRun to that many runs.
	failRuns int
	nan      bool // answer NaN, like a broken model
}

func (f *fakeRunner) Load(id scheduler.VariantID) (time.Duration, error) {
	time.Sleep(f.load)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resident[id] = true
	return f.load, nil
}

func (f *fakeRunner) Unload(id scheduler.VariantID) (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.resident, id)
	return 0, nil
}

func (f *fakeRunner) Run(id scheduler.VariantID, in [][]float32) ([][]float64, error) {
	time.Sleep(f.lat(len(in)))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs = append(f.runs, len(in))
	if f.failRun != nil {
		if f.failRuns > 0 {
			f.failRuns--
			if f.failRuns == 0 {
				defer func() { f.failRun = nil }()
			}
		}
		return nil, f.failRun
	}
	out := make([][]float64, len(in))
	for i := range out {
		out[i] = []float64{0.1, 0.9}
		if f.nan {
			out[i] = []float64{math.NaN(), math.NaN()}
		}
	}
	return out, nil
}

func (f *fakeRunner) Resident() []scheduler.VariantID {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []scheduler.VariantID
	for id := range f.resident {
		ids = append(ids, id)
	}
	return ids
}

func loopApp() *scheduler.App {
	a := &scheduler.App{Name: "app", K: 2, Prior: []float64{0.5, 0.5}, Utility: [][]float64{{1, 0}, {0, 1}}}
	v := &scheduler.Variant{ID: scheduler.VariantID{App: "app", Variant: "m"}, Accuracy: 0.9,
		Recall: []float64{0.9, 0.9}, Cond: [][]float64{{0.9, 0.1}, {0.1, 0.9}}}
	v.Latency = make([]time.Duration, 33)
	for b := 1; b <= 32; b++ {
		v.Latency[b] = 2*time.Millisecond + time.Duration(b)*100*time.Microsecond
	}
	v.ProfiledUtility = 0.9
	a.Variants = []*scheduler.Variant{v}
	return a
}

type answers struct {
	mu  sync.Mutex
	got map[string]result
}

func (a *answers) record(j *job, r result) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got[j.ID] = r
}

func startLoop(t *testing.T, f *fakeRunner, policy string) (*loop, *answers, context.CancelFunc) {
	t.Helper()
	l, ans := newTestLoop(t, loopApp(), f, policy)
	ctx, cancel := context.WithCancel(context.Background())
	go l.Run(ctx)
	return l, ans, cancel
}

// newTestLoop is a loop serving a alone with the policy named, not yet running.
func newTestLoop(t *testing.T, a *scheduler.App, f *fakeRunner, policy string) (*loop, *answers) {
	t.Helper()
	p, err := scheduler.New(policy, scheduler.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ans := &answers{got: map[string]result{}}
	l := newLoop(p, map[string]*scheduler.App{a.Name: a}, f, scheduler.Engine{}, 100, time.Now, ans.record, zerolog.Nop(), newMetrics(nil))
	return l, ans
}

// cheapVariant is loopApp's second variant: 0.6 accurate, lat(b) per batch of b.
func cheapVariant(lat func(b int) time.Duration) *scheduler.Variant {
	v := &scheduler.Variant{ID: scheduler.VariantID{App: "app", Variant: "cheap"}, Index: 1, Accuracy: 0.6,
		Recall: []float64{0.6, 0.6}, Cond: [][]float64{{0.6, 0.4}, {0.4, 0.6}}, ProfiledUtility: 0.6,
		Latency: make([]time.Duration, 33)}
	for b := 1; b <= 32; b++ {
		v.Latency[b] = lat(b)
	}
	return v
}

func submit(t *testing.T, l *loop, id string, budget time.Duration, est []float64) {
	t.Helper()
	now := time.Now()
	if !l.Reserve(100) {
		t.Fatalf("no place for %s", id)
	}
	if !l.Submit(&job{App: "app", Device: "d", ID: id, Received: now, Deadline: now.Add(budget),
		Input: []float32{1}, Estimate: est}) {
		t.Fatalf("submit %s refused", id)
	}
}

func TestLoopBatchesAndAnswers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(b int) time.Duration { return 2*time.Millisecond + time.Duration(b)*100*time.Microsecond },
			load: 10 * time.Millisecond, resident: map[scheduler.VariantID]bool{}}
		l, ans, cancel := startLoop(t, f, "edf")
		defer cancel()
		// The first request alone triggers a decision; the next four queue behind it
		// while the variant loads and runs, and go as one batch.
		submit(t, l, "a", 100*time.Millisecond, nil)
		synctest.Wait()
		for _, id := range []string{"b", "c", "d", "e"} {
			submit(t, l, id, 100*time.Millisecond, nil)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if len(ans.got) != 5 {
			t.Fatalf("answered %d of 5", len(ans.got))
		}
		for id, r := range ans.got {
			if r.Status != protocol.StatusOK || r.Variant != "m" || r.Probs[1] != 0.9 {
				t.Errorf("%s: %+v", id, r)
			}
		}
		if got := f.runs; len(got) != 2 || got[0] != 1 || got[1] != 4 {
			t.Errorf("batch sizes %v, want [1 4]", got)
		}
		if ans.got["a"].Batch != 1 || ans.got["e"].Batch != 4 {
			t.Errorf("reported batch sizes: a=%d e=%d", ans.got["a"].Batch, ans.got["e"].Batch)
		}
		if l.Queued() != 0 {
			t.Errorf("queued = %d after all answered", l.Queued())
		}
	})
}

func TestLoopExpiresAndDegrades(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return 50 * time.Millisecond },
			resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}}
		l, ans, cancel := startLoop(t, f, "edf")
		defer cancel()
		submit(t, l, "blocker", time.Second, nil) // occupies the engine for 50ms
		synctest.Wait()
		submit(t, l, "short", 10*time.Millisecond, nil)               // hard stop at 20ms: expires
		submit(t, l, "est", 40*time.Millisecond, []float64{0.2, 0.8}) // misses, has an estimate: degraded
		time.Sleep(time.Second)
		synctest.Wait()
		if r := ans.got["short"]; r.Status != protocol.StatusExpired {
			t.Errorf("short: %+v", r)
		}
		if r := ans.got["est"]; r.Status != protocol.StatusDegraded || r.EstAccuracy != 0.8 {
			t.Errorf("est: %+v", r)
		}
		if r := ans.got["blocker"]; r.Status != protocol.StatusOK {
			t.Errorf("blocker: %+v", r)
		}
	})
}

func TestLoopEngineFailureAnswersError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return time.Millisecond },
			resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}, failRun: errors.New("boom")}
		l, ans, cancel := startLoop(t, f, "fifo")
		defer cancel()
		submit(t, l, "x", time.Second, nil)
		time.Sleep(time.Second)
		synctest.Wait()
		if r := ans.got["x"]; r.Status != protocol.StatusError || !errors.Is(r.Err, errBatch) {
			t.Errorf("x: %+v", r)
		}
	})
}

// idlePolicy never runs anything and asks to be woken immediately.
type idlePolicy struct{ calls int }

func (p *idlePolicy) Name() string { return "idle" }
func (p *idlePolicy) Decide(s *scheduler.Snapshot) scheduler.Decision {
	p.calls++
	return scheduler.Decision{WakeAt: s.Now}
}

// A policy that asks to be woken "now" without doing anything must not make the
// loop spin.
func TestLoopDoesNotSpinOnIdleWake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return time.Millisecond }, resident: map[scheduler.VariantID]bool{}}
		p := &idlePolicy{}
		ans := &answers{got: map[string]result{}}
		l := newLoop(p, map[string]*scheduler.App{"app": loopApp()}, f, scheduler.Engine{}, 10, time.Now,
			ans.record, zerolog.Nop(), newMetrics(nil))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { l.Run(ctx); close(done) }()
		submit(t, l, "x", time.Second, nil)
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		cancel()
		<-done
		if p.calls < 2 || p.calls > 110 {
			t.Errorf("%d decisions in 100ms of an idle policy: want about one per %v", p.calls, minIdleWake)
		}
	})
}

// A model that answers NaN gets the request an error reply, not a crash.
func TestLoopInvalidModelOutputAnswersError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return time.Millisecond },
			resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}, nan: true}
		l, ans, cancel := startLoop(t, f, "edf")
		defer cancel()
		submit(t, l, "x", time.Second, nil)
		time.Sleep(time.Second)
		synctest.Wait()
		if r := ans.got["x"]; r.Status != protocol.StatusError || !errors.Is(r.Err, errBatch) {
			t.Errorf("x: %+v", r)
		}
		rep := buildReply(&job{ID: "x", Deadline: time.Now().Add(time.Second)}, ans.got["x"], nil, "", time.Now())
		if rep.Class != nil || rep.Reason != protocol.ReasonInternal {
			t.Errorf("reply %+v", rep)
		}
	})
}

// Reserve never hands out more places than the limit, and every place comes back
// (by Release or by the answer).
func TestLoopReserve(t *testing.T) {
	l := newLoop(nil, nil, &fakeRunner{resident: map[scheduler.VariantID]bool{}}, scheduler.Engine{}, 4,
		time.Now, nil, zerolog.Nop(), newMetrics(nil))
	for i := range 3 {
		if !l.Reserve(3) {
			t.Fatalf("Reserve %d refused", i)
		}
	}
	if l.Reserve(3) || l.Queued() != 3 {
		t.Fatalf("Reserve past the limit: queued %d", l.Queued())
	}
	l.Release()
	if !l.Reserve(3) {
		t.Fatal("a released place was not given back")
	}
}

// A policy that runs a heavy variant drains slowly, but the loop reports how fast
// the queue could drain on the cheapest variant: admission refuses by that, so
// that requests a cheaper plan could still answer in time are not refused.
func TestLoopFastestDrainRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := loopApp() // variant "m": 2 ms + 0.1 ms per sample
		a.Variants = append(a.Variants, cheapVariant(func(b int) time.Duration { return time.Duration(b) * 10 * time.Microsecond }))
		// The engine takes 5 ms per sample whatever the variant: edf keeps the
		// default (heavy) variant with this much slack.
		f := &fakeRunner{lat: func(b int) time.Duration { return time.Duration(b) * 5 * time.Millisecond },
			resident: map[scheduler.VariantID]bool{}}
		l, ans := newTestLoop(t, a, f, "edf")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go l.Run(ctx)
		for i := range 40 {
			submit(t, l, string(rune('a'+i%26))+string(rune('0'+i/26)), 10*time.Second, nil)
			time.Sleep(2 * time.Millisecond)
			synctest.Wait()
		}
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		submit(t, l, "last", 10*time.Second, nil) // the loop observes its meter again
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if len(ans.got) != 41 {
			t.Fatalf("answered %d of 41", len(ans.got))
		}
		for id, r := range ans.got {
			if r.Variant != "m" {
				t.Fatalf("%s ran on %q, want the heavy variant m", id, r.Variant)
			}
		}
		now, fast := l.DrainRate(), l.FastestDrainRate()
		// 5 ms per request on the heavy variant: about 200/s. On the cheap one the
		// passes would take 10 us per request and the loop itself takes no virtual
		// time, so the fastest drain is far above.
		if now < 150 || now > 250 {
			t.Fatalf("drain rate %.0f/s, want about 200", now)
		}
		if fast < 100*now {
			t.Fatalf("fastest drain %.0f/s, want far above the measured %.0f/s", fast, now)
		}
	})
}

// badPolicy returns an invalid decision every time, and counts the loop's
// calls to Resync (scheduler.Resyncer).
type badPolicy struct {
	decide         func(s *scheduler.Snapshot) scheduler.Decision
	calls, resyncs int
}

func (p *badPolicy) Name() string { return "bad" }
func (p *badPolicy) Resync()      { p.resyncs++ }
func (p *badPolicy) Decide(s *scheduler.Snapshot) scheduler.Decision {
	p.calls++
	return p.decide(s)
}

// A policy whose decisions are invalid neither crashes the loop nor loses a
// request: each decision is refused and counted, nothing of it is applied,
// and edf decides instead, so every request is run and answered.
func TestLoopFallsBackOnInvalidDecisions(t *testing.T) {
	m := loopApp().Variants[0]
	cases := map[string]func(s *scheduler.Snapshot) scheduler.Decision{
		"answers a request twice": func(s *scheduler.Snapshot) scheduler.Decision {
			r := s.Queue[0]
			return scheduler.Decision{Verdicts: []scheduler.Verdict{{Request: r, Outcome: scheduler.Expired},
				{Request: r, Outcome: scheduler.Expired}}}
		},
		"batches a request that is not queued": func(s *scheduler.Snapshot) scheduler.Decision {
			stray := scheduler.Prepare(s.Queue[0].App, 1<<40, s.Now, s.Now.Add(time.Second), nil, &job{App: "app", ID: "stray"})
			return scheduler.Decision{Verdicts: []scheduler.Verdict{{Request: s.Queue[0], Outcome: scheduler.Expired}},
				Batch: &scheduler.Batch{Variant: s.Apps["app"].Variants[0], Requests: append([]*scheduler.Request{stray}, s.Queue...)}}
		},
		"runs an unknown variant": func(s *scheduler.Snapshot) scheduler.Decision {
			v := *m
			v.ID.Variant = "ghost"
			return scheduler.Decision{Batch: &scheduler.Batch{Variant: &v, Requests: s.Queue, Load: []scheduler.VariantID{v.ID}}}
		},
		"evicts a variant that is not resident": func(s *scheduler.Snapshot) scheduler.Decision {
			return scheduler.Decision{Batch: &scheduler.Batch{Variant: s.Apps["app"].Variants[0], Requests: s.Queue,
				Evict: []scheduler.VariantID{{App: "app", Variant: "other"}}, Load: []scheduler.VariantID{m.ID}}}
		},
		"panics": func(s *scheduler.Snapshot) scheduler.Decision { panic("policy bug") },
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := &fakeRunner{lat: func(int) time.Duration { return time.Millisecond }, resident: map[scheduler.VariantID]bool{}}
				p := &badPolicy{decide: bad}
				ans := &answers{got: map[string]result{}}
				l := newLoop(p, map[string]*scheduler.App{"app": loopApp()}, f, scheduler.Engine{}, 10, time.Now,
					ans.record, zerolog.Nop(), newMetrics(nil))
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { l.Run(ctx); close(done) }()
				for _, id := range []string{"a", "b", "c"} {
					submit(t, l, id, time.Second, nil)
					time.Sleep(5 * time.Millisecond)
					synctest.Wait()
				}
				time.Sleep(100 * time.Millisecond)
				synctest.Wait()
				cancel()
				<-done
				if len(ans.got) != 3 {
					t.Fatalf("answered %d of 3: %v", len(ans.got), ans.got)
				}
				for id, r := range ans.got {
					if r.Status != protocol.StatusOK || r.Variant != "m" {
						t.Errorf("%s: %+v, want a model's answer", id, r)
					}
				}
				if l.Queued() != 0 || l.exec.Len() != 0 {
					t.Errorf("queued %d, in the queue %d after every answer", l.Queued(), l.exec.Len())
				}
				got := testutil.ToFloat64(l.m.invalidDecisions)
				if got < 1 || got != float64(p.calls) {
					t.Errorf("invalid decisions counted %v, the policy decided %d times", got, p.calls)
				}
				if p.resyncs != p.calls {
					t.Errorf("the policy was told to resync %d times after %d unapplied decisions", p.resyncs, p.calls)
				}
			})
		})
	}
}

// TestPrepareTakesOverAdmissionsRequest: a job that admission prepared for its
// price gate is not prepared again for the queue (same values, its place and
// its job set); one whose application changed since is.
func TestPrepareTakesOverAdmissionsRequest(t *testing.T) {
	a := loopApp()
	apps := map[string]*scheduler.App{"app": a}
	now := time.Unix(1_700_000_000, 0)
	est := []float64{0.8, 0.2}
	j := &job{App: "app", Received: now, Deadline: now.Add(time.Second), Estimate: est}
	j.pre = scheduler.Prepare(a, 0, j.Received, j.Deadline, est, nil)
	pre := j.pre
	j.prepare(apps, 7, 0)
	want := scheduler.Prepare(a, 7, j.Received, j.Deadline, est, j)
	if j.req != pre || j.pre != nil {
		t.Fatalf("the prepared request was not taken over: %p, want %p", j.req, pre)
	}
	if !reflect.DeepEqual(j.req, want) {
		t.Errorf("taken over: %+v\nwant %+v", j.req, want)
	}

	j.pre = scheduler.Prepare(loopApp(), 0, j.Received, j.Deadline, est, nil) // another version
	j.prepare(apps, 8, 0)
	if !reflect.DeepEqual(j.req, scheduler.Prepare(a, 8, j.Received, j.Deadline, est, j)) || j.req.App != a {
		t.Errorf("a request prepared for another version was taken over: %+v", j.req)
	}
}

// slowPolicy is edf taking cost of (virtual) time per decision, as a searching
// policy does on a real machine.
type slowPolicy struct {
	scheduler.Policy
	cost time.Duration
}

func (p slowPolicy) Decide(s *scheduler.Snapshot) scheduler.Decision {
	time.Sleep(p.cost)
	return p.Policy.Decide(s)
}

// With the pipeline on, the loop decides the next batch while the engine runs
// the current one, so the engine does not wait for decisions; every request is
// still answered once. Without it the engine waits for each decision.
func TestLoopPipelineKeepsTheEngineBusy(t *testing.T) {
	run := func(t *testing.T, pipeline bool) (wait, ahead float64, runs []int) {
		synctest.Test(t, func(t *testing.T) {
			f := &fakeRunner{lat: func(b int) time.Duration { return 2*time.Millisecond + time.Duration(b)*100*time.Microsecond },
				resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}}
			edf, err := scheduler.New("edf", scheduler.Options{})
			if err != nil {
				t.Fatal(err)
			}
			ans := &answers{got: map[string]result{}}
			m := newMetrics(nil)
			l := newLoop(slowPolicy{edf, time.Millisecond}, map[string]*scheduler.App{"app": loopApp()}, f,
				scheduler.Engine{}, 200, time.Now, ans.record, zerolog.Nop(), m)
			l.pipeline = pipeline
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go l.Run(ctx)
			// 150 requests, one every 300 µs (the engine alone drains one in
			// about 250 µs at batch 16): the queue never empties.
			for i := range 150 {
				submit(t, l, fmt.Sprint(i), time.Second, nil)
				time.Sleep(300 * time.Microsecond)
			}
			time.Sleep(time.Second)
			synctest.Wait()
			if len(ans.got) != 150 {
				t.Fatalf("answered %d of 150", len(ans.got))
			}
			for id, r := range ans.got {
				if r.Status != protocol.StatusOK {
					t.Errorf("%s: %+v", id, r)
				}
			}
			if l.Queued() != 0 || l.exec.Len() != 0 {
				t.Errorf("queued %d, in the queue %d after every answer", l.Queued(), l.exec.Len())
			}
			wait, ahead, runs = testutil.ToFloat64(m.engineWait), testutil.ToFloat64(m.decidedAhead), f.runs
		})
		return wait, ahead, runs
	}
	waitOff, aheadOff, runsOff := run(t, false)
	waitOn, aheadOn, runsOn := run(t, true)
	t.Logf("engine waited %.1f ms in %d batches without the pipeline, %.1f ms in %d batches (%v ahead) with it",
		waitOff*1e3, len(runsOff), waitOn*1e3, len(runsOn), aheadOn)
	if aheadOff != 0 {
		t.Errorf("%v batches decided ahead without the pipeline", aheadOff)
	}
	if aheadOn < float64(len(runsOn))/2 {
		t.Errorf("%v of %d batches decided ahead with the pipeline", aheadOn, len(runsOn))
	}
	// Without the pipeline every batch after the first waits a whole decision.
	if want := float64(len(runsOff)-1) * 1e-3; waitOff < want*0.99 {
		t.Errorf("engine waited %v s without the pipeline, want at least %v", waitOff, want)
	}
	if waitOn > waitOff/4 {
		t.Errorf("engine waited %v s with the pipeline, %v without", waitOn, waitOff)
	}
}

// A batch that fails drops the batch decided while it ran (its residency may
// not hold): those requests go back to the queue and are served.
func TestLoopPipelineUnplansAfterAFailedBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return 10 * time.Millisecond },
			resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}, failRun: errors.New("boom")}
		f.failRuns = 1
		l, ans, cancel := startLoop(t, f, "edf")
		defer cancel()
		l.pipeline = true // before the first decision: Run reads it then
		submit(t, l, "x", time.Second, nil)
		synctest.Wait()
		submit(t, l, "y", time.Second, nil) // decided ahead while x runs (planned 2.1 ms)
		time.Sleep(5 * time.Millisecond)
		synctest.Wait()
		time.Sleep(time.Second)
		synctest.Wait()
		if r := ans.got["x"]; r.Status != protocol.StatusError {
			t.Errorf("x: %+v", r)
		}
		if r := ans.got["y"]; r.Status != protocol.StatusOK {
			t.Errorf("y: %+v, want ok on the next batch", r)
		}
		if got := testutil.ToFloat64(l.m.decidedAhead); got != 1 {
			t.Errorf("%v batches decided ahead, want 1 (y)", got)
		}
	})
}

// sneakgate_engine_wait_seconds_total counts only time with requests waiting:
// when verdicts empty the queue after a batch, the idle time after is not
// waiting (found by review: ten idle minutes counted as 600 s).
func TestLoopEngineWaitCountsOnlyWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return 10 * time.Millisecond },
			resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}}
		l, _, cancel := startLoop(t, f, "edf")
		defer cancel()
		submit(t, l, "x", time.Second, nil)
		synctest.Wait()
		time.Sleep(time.Millisecond)
		// y arrives while x runs, hopeless by x's end: expired, the queue empty.
		submit(t, l, "y", 3*time.Millisecond, nil)
		time.Sleep(time.Second)
		synctest.Wait()
		time.Sleep(10 * time.Minute)
		submit(t, l, "z", time.Second, nil)
		time.Sleep(time.Second)
		synctest.Wait()
		if w := testutil.ToFloat64(l.m.engineWait); w > 0.001 {
			t.Errorf("the engine waited %.3f s by the counter; nothing waited for it", w)
		}
	})
}

// nowAfterArrivals is edf that records a decision whose Now comes before a
// queued request's arrival.
type nowAfterArrivals struct {
	scheduler.Policy
	bad *[]string
}

func (p nowAfterArrivals) Decide(s *scheduler.Snapshot) scheduler.Decision {
	for _, r := range s.Queue {
		if r.Arrival.After(s.Now) {
			*p.bad = append(*p.bad, fmt.Sprintf("Now %v before an arrival at %v", s.Now, r.Arrival))
		}
	}
	return p.Policy.Decide(s)
}

// A batch decided ahead while the running batch overruns its plan is decided
// for now, not for the planned end already past (found by review).
func TestLoopPipelineDecidesForNowAfterAnOverrun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return 50 * time.Millisecond },
			resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}}
		edf, err := scheduler.New("edf", scheduler.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var bad []string
		l := newLoop(nowAfterArrivals{edf, &bad}, map[string]*scheduler.App{"app": loopApp()}, f, scheduler.Engine{}, 100,
			time.Now, (&answers{got: map[string]result{}}).record, zerolog.Nop(), newMetrics(nil))
		l.pipeline = true
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go l.Run(ctx)
		submit(t, l, "x", time.Second, nil) // planned 2.1 ms, runs 50 ms
		time.Sleep(30 * time.Millisecond)
		submit(t, l, "y", time.Second, nil)
		time.Sleep(time.Second)
		synctest.Wait()
		for _, b := range bad {
			t.Error(b)
		}
		if got := testutil.ToFloat64(l.m.decidedAhead); got != 1 {
			t.Errorf("%v batches decided ahead, want 1 (y)", got)
		}
	})
}

// Requests are planned to leave the egress delay free before their deadlines
// (scheduler.PlanDeadline): with 6 ms of egress and a 10 ms budget, edf runs a
// request on the cheap variant, whose answer reaches the broker in time, rather
// than on the accurate one, whose 7 ms pass ends within the deadline but whose
// answer would reach the broker after it. The reply is still judged by the
// request's own deadline.
func TestLoopPlansForTheEgressDelay(t *testing.T) {
	for _, c := range []struct {
		name    string
		egress  time.Duration
		variant string
	}{
		{"no egress delay", 0, "m"},
		{"6 ms of egress", 6 * time.Millisecond, "cheap"},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a := loopApp()
				for b := 1; b <= 32; b++ {
					a.Variants[0].Latency[b] = 7 * time.Millisecond
				}
				a.Variants = append(a.Variants, cheapVariant(func(int) time.Duration { return time.Millisecond }))
				f := &fakeRunner{lat: func(int) time.Duration { return time.Millisecond }, resident: map[scheduler.VariantID]bool{}}
				l, ans := newTestLoop(t, a, f, "edf")
				l.egressDelay = func() time.Duration { return c.egress }
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go l.Run(ctx)
				submit(t, l, "r", 10*time.Millisecond, nil)
				time.Sleep(50 * time.Millisecond)
				synctest.Wait()
				r, ok := ans.got["r"]
				if !ok {
					t.Fatal("not answered")
				}
				if r.Variant != c.variant || r.Status != protocol.StatusOK {
					t.Errorf("answered %s on %q, want ok on %q", r.Status, r.Variant, c.variant)
				}
			})
		})
	}
}

// The loop runs the batches a decision kept from its plan
// (scheduler.plan_ahead), counts them, and answers every request once.
func TestLoopRunsKeptBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(b int) time.Duration { return 2*time.Millisecond + time.Duration(b)*100*time.Microsecond },
			resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}}
		p, err := scheduler.New("sneakpeek", scheduler.Options{MaxBatch: 8, PlanAhead: 3})
		if err != nil {
			t.Fatal(err)
		}
		ans := &answers{got: map[string]result{}}
		m := newMetrics(nil)
		l := newLoop(p, map[string]*scheduler.App{"app": loopApp()}, f, scheduler.Engine{}, 200, time.Now, ans.record, zerolog.Nop(), m)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go l.Run(ctx)
		const n = 64
		for i := range n {
			submit(t, l, fmt.Sprint(i), time.Second, []float64{0.1, 0.9})
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if len(ans.got) != n {
			t.Fatalf("answered %d of %d", len(ans.got), n)
		}
		for id, r := range ans.got {
			if r.Status != protocol.StatusOK {
				t.Errorf("%s: %+v", id, r)
			}
		}
		kept := testutil.ToFloat64(m.keptBatches)
		t.Logf("%d batches %v, %v of them kept", len(f.runs), f.runs, kept)
		if kept < 1 || kept >= float64(len(f.runs)) {
			t.Errorf("%v of %d batches from kept plans", kept, len(f.runs))
		}
	})
}

// startLoggedLoop runs a loop serving loopApp with the policy named, its log
// written to the returned buffer.
func startLoggedLoop(t *testing.T, f *fakeRunner, policy string) (*loop, *answers, *bytes.Buffer, context.CancelFunc) {
	t.Helper()
	p, err := scheduler.New(policy, scheduler.Options{})
	if err != nil {
		t.Fatal(err)
	}
	buf := &bytes.Buffer{}
	a := loopApp()
	ans := &answers{got: map[string]result{}}
	l := newLoop(p, map[string]*scheduler.App{a.Name: a}, f, scheduler.Engine{}, 100, time.Now, ans.record,
		zerolog.New(zerolog.SyncWriter(buf)), newMetrics(nil))
	ctx, cancel := context.WithCancel(context.Background())
	go l.Run(ctx)
	return l, ans, buf, cancel
}

// A model that answers NaN for an input (one out of range of an application
// without input_range, or a broken model) does so for every such request: the
// error line is sampled like rejections, not one a request.
func TestLoopInvalidModelOutputLogSampled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return time.Millisecond },
			resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}, nan: true}
		l, ans, buf, cancel := startLoggedLoop(t, f, "edf")
		defer cancel()
		const n = 100
		for i := range n {
			submit(t, l, fmt.Sprint(i), time.Minute, nil)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if len(ans.got) != n {
			t.Fatalf("%d of %d requests answered", len(ans.got), n)
		}
		if lines := strings.Count(buf.String(), "no valid class distribution"); lines < 1 || lines >= n/2 {
			t.Errorf("%d lines logged for %d invalid answers, want them sampled", lines, n)
		}
	})
}

// A broken model fails every batch: the "batch failed" line is sampled like
// rejections, not one a batch, and sneakgate_batch_failures_total counts every
// failed batch.
func TestLoopBatchFailedLogSampled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return time.Millisecond },
			resident: map[scheduler.VariantID]bool{{App: "app", Variant: "m"}: true}, failRun: errors.New("broken model")}
		l, ans, buf, cancel := startLoggedLoop(t, f, "fifo")
		defer cancel()
		const n = 200
		for i := range n { // one batch each, within 0.6 s
			submit(t, l, fmt.Sprint(i), time.Minute, nil)
			time.Sleep(3 * time.Millisecond)
		}
		time.Sleep(10 * time.Millisecond)
		synctest.Wait()
		if len(ans.got) != n {
			t.Fatalf("%d of %d requests answered", len(ans.got), n)
		}
		for id, r := range ans.got {
			if r.Status != protocol.StatusError || !errors.Is(r.Err, errBatch) {
				t.Fatalf("%s: %+v, want a batch error", id, r)
			}
		}
		batches := len(f.runs)
		if batches < n/2 {
			t.Fatalf("%d batches for %d requests sent 3 ms apart, want about one each", batches, n)
		}
		if got := testutil.ToFloat64(l.m.batchFailures.WithLabelValues("app", "m")); got != float64(batches) {
			t.Errorf("batch_failures_total = %v, want %d (every failed batch)", got, batches)
		}
		// Within one second: the burst of 10, then 1 in 100.
		if lines := strings.Count(buf.String(), `"batch failed"`); lines < 1 || lines > 10+batches/100+1 {
			t.Errorf("%d \"batch failed\" lines for %d failed batches, want them sampled (at most %d)", lines, batches, 10+batches/100+1)
		}
	})
}
