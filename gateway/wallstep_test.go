package gateway

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"unsafe"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

// A wall-clock step (NTP setting the clock of a device without a real-time
// clock: it boots in the past, then jumps forward by years; or a correction
// back) moves what time.Now reads as the wall time, not its monotonic reading.
// The public time API cannot build such a reading: Add moves both, and Round(0)
// or UnixNano drop the monotonic one. stepWall does it by setting time.Time's
// fields; checkStepWall checks that the result reads as a step, so that a
// change of that layout fails these tests instead of passing them vacuously.

// timeFields mirrors time.Time. With a monotonic reading (the top bit of wall),
// wall holds that bit, 33 bits of seconds since 1885 and 30 bits of
// nanoseconds, and ext the monotonic reading.
type timeFields struct {
	wall uint64
	ext  int64
	loc  *time.Location
}

// stepWall returns t, a reading with a monotonic clock reading, as time.Now
// would have read it had the wall clock been stepped by step (whole seconds)
// before: the wall time moved, the monotonic reading kept.
func stepWall(t time.Time, step time.Duration) time.Time {
	f := (*timeFields)(unsafe.Pointer(&t))
	if f.wall&(1<<63) == 0 || step%time.Second != 0 {
		panic("stepWall: no monotonic reading, or a step of a fraction of a second")
	}
	f.wall += uint64(int64(step/time.Second)) << 30
	return t
}

func checkStepWall(t *testing.T) {
	t.Helper()
	now := time.Now()
	for _, step := range []time.Duration{-time.Hour, 5 * 365 * 24 * time.Hour} {
		s := stepWall(now, step)
		if s.Sub(now) != 0 || now.Sub(s) != 0 || s.UnixNano()-now.UnixNano() != int64(step) ||
			s.Round(0).Sub(now.Round(0)) != step || !strings.Contains(s.String(), " m=") {
			t.Fatalf("stepWall(%v, %v) = %v: time.Time's layout is not what stepWall assumes", now, step, s)
		}
	}
}

// years is a forward step such as a device without a real-time clock takes
// when NTP first sets it.
const years = 5 * 365 * 24 * time.Hour

// TestStampKeepsMonotonicReading: a stamp gives back the time stored with its
// monotonic reading, so the time since it is the monotonic clock's, whatever
// the wall clock did in between; the zero stamp reads as the zero Time.
func TestStampKeepsMonotonicReading(t *testing.T) {
	checkStepWall(t)
	var s stamp
	if !s.Load().IsZero() {
		t.Fatalf("zero stamp: %v", s.Load())
	}
	at := time.Now()
	s.Store(at)
	if got := s.Load(); got.Sub(at) != 0 || !got.Equal(at) {
		t.Fatalf("stored %v, loaded %v", at, got)
	}
	for _, step := range []time.Duration{-time.Hour, years} {
		if age := stepWall(at.Add(time.Second), step).Sub(s.Load()); age != time.Second {
			t.Errorf("a second later, after a wall-clock step of %v: %v since the stamp", step, age)
		}
	}
}

// TestReadinessIgnoresWallClockStep: /readyz says overloaded for one second of
// the monotonic clock after an overload, whatever the wall clock does: a step
// back by an hour does not keep it overloaded for the hour (as it did with the
// stamps in Unix nanoseconds), nor does a step forward by years end it at once.
func TestReadinessIgnoresWallClockStep(t *testing.T) {
	checkStepWall(t)
	input := make([]float32, 784)
	const topic = "sneakgate/req/fashion/cam-1"
	payload := func(id string) []byte {
		return (&protocol.Payload{ID: id, DeadlineMS: 60000, SentAt: time.Now(), Input: input, B64: true}).Marshal()
	}
	for _, ov := range []struct {
		name           string
		degradeRefused bool
		act            func(g *Gateway)
	}{
		{"refused", false, func(g *Gateway) {
			g.handle(arrival{msg: newFakeMessage(topic, payload("a")), at: g.now()})
		}},
		{"answered from the estimate", true, func(g *Gateway) {
			g.handle(arrival{msg: newFakeMessage(topic, payload("b")), at: g.now()})
		}},
		{"waiting for a handler", false, func(g *Gateway) {
			g.in <- arrival{} // the hand-off is full
			close(g.stopIngress)
			g.onMessage(nil, newFakeMessage(topic, payload("c"))) // waits, then gives up: stopping
		}},
	} {
		for _, tc := range []struct {
			name       string
			step       time.Duration
			after      time.Duration // on the monotonic clock
			overloaded bool
		}{
			{"clock stepped back an hour, 2 s later", -time.Hour, 2 * time.Second, false},
			{"clock stepped forward by years, 0.5 s later", years, 500 * time.Millisecond, true},
		} {
			t.Run(ov.name+"/"+tc.name, func(t *testing.T) {
				g := handlerGateway(t, &fakeClient{}, ov.degradeRefused)
				// A stopped clock, moved by the test: elapsed on the monotonic
				// clock, and the wall clock stepped by step on top.
				origin := time.Now()
				var elapsed, step atomic.Int64
				g.now = func() time.Time {
					return stepWall(origin.Add(time.Duration(elapsed.Load())), time.Duration(step.Load()))
				}
				g.in, g.stopIngress = make(chan arrival, 1), make(chan struct{})
				g.subscribed.Store(true)
				ov.act(g)
				if why := g.readiness(); !strings.HasPrefix(why, "overloaded: ") {
					t.Fatalf("readiness %q, want overloaded", why)
				}
				elapsed.Store(int64(tc.after))
				step.Store(int64(tc.step))
				why := g.readiness()
				if got := strings.HasPrefix(why, "overloaded: "); got != tc.overloaded {
					t.Errorf("readiness %q: overloaded %v, want %v", why, got, tc.overloaded)
				}
			})
		}
	}
}

// TestWatchdogIgnoresWallClockStep: the systemd watchdog times the scheduling
// loop's heartbeat on the monotonic clock, wired as Run wires it (the loop's
// heartbeat, the gateway's clock). With WatchdogSec=30s it pings every 10 s
// while the heartbeat is under 15 s old. A step forward by years while a batch
// runs no longer makes the heartbeat look years old (pings withheld, "no
// progress" logged at error for a healthy loop); a step back by an hour while a
// batch hangs no longer hides the hang for the hour.
func TestWatchdogIgnoresWallClockStep(t *testing.T) {
	checkStepWall(t)
	c := listenNotify(t)
	for _, tc := range []struct {
		name  string
		step  time.Duration
		batch time.Duration
		pings []bool // at 10, 20 and 30 s
	}{
		// The batch ends at 12 s: the heartbeat is 10 s old at the first tick.
		{"forward by years during a batch", years, 12 * time.Second, []bool{true, true, true}},
		// The batch hangs: the heartbeat is 20 and 30 s old at the later ticks.
		{"back an hour during a hung batch", -time.Hour, 5 * time.Minute, []bool{true, false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			received(t, c) // nothing left from before
			// Outside the bubble: synctest's time.Now has no monotonic reading.
			origin := time.Now()
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				var step atomic.Int64
				clock := func() time.Time {
					return stepWall(origin.Add(time.Since(start)), time.Duration(step.Load()))
				}
				p, err := scheduler.New("edf", scheduler.Options{})
				if err != nil {
					t.Fatal(err)
				}
				f := &fakeRunner{lat: func(int) time.Duration { return tc.batch }, resident: map[scheduler.VariantID]bool{}}
				ans := &answers{got: map[string]result{}}
				l := newLoop(p, map[string]*scheduler.App{"app": loopApp()}, f, scheduler.Engine{}, 100, clock,
					ans.record, zerolog.Nop(), newMetrics(nil))
				n := newNotifier(clock, zerolog.Nop())
				ctx, cancel := context.WithCancel(context.Background())
				loopDone, wdDone := make(chan struct{}), make(chan struct{})
				go func() { l.Run(ctx); close(loopDone) }()
				go func() { n.Watchdog(ctx, l.heartbeat.Load); close(wdDone) }()
				defer func() { cancel(); <-wdDone; <-loopDone }()

				now := clock()
				if !l.Reserve(100) || !l.Submit(&job{App: "app", Device: "d", ID: "batch", Received: now,
					Deadline: now.Add(10 * time.Minute), Input: []float32{1}}) {
					t.Fatal("submit refused")
				}
				synctest.Wait() // the batch runs
				time.Sleep(time.Second)
				step.Store(int64(tc.step))
				time.Sleep(9 * time.Second)
				for i, want := range tc.pings {
					if i > 0 {
						time.Sleep(10 * time.Second)
					}
					synctest.Wait()
					var exp []string
					if want {
						exp = []string{"WATCHDOG=1"}
					}
					expectNotified(t, c, (time.Duration(i+1)*10*time.Second).String()+" in", exp...)
				}
			})
		})
	}
}

// TestHoldLogRateLimit: the embedded broker's "publishers wait" warning is
// logged at the first hold and then at most once every 10 s, timed on the
// monotonic clock (since stampBase; a step of the wall clock back no longer
// silences it for the step). The first hold is logged however soon after the
// process started, when the time since stampBase is under 10 s.
func TestHoldLogRateLimit(t *testing.T) {
	var buf strings.Builder
	h := &holdHook{log: zerolog.New(&buf), limit: 1}
	count := func() int { return strings.Count(buf.String(), "publishers wait") }
	h.logHold("dev", "sneakgate/req/app/dev")
	h.logHold("dev", "sneakgate/req/app/dev")
	if n := count(); n != 1 {
		t.Fatalf("two holds in a row: %d lines, want 1", n)
	}
	h.logged.Store(int64(time.Since(stampBase) - 11*time.Second)) // the last one 11 s ago
	h.logHold("dev", "sneakgate/req/app/dev")
	if n := count(); n != 2 {
		t.Fatalf("a hold 11 s after the last line: %d lines, want 2", n)
	}
}
