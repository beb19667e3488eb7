package gateway

import (
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/scheduler"
)

// burnRunner's forward pass runs on the CPU until its thread has used burn
// (by the thread's own clock), then answers as fakeRunner does.
type burnRunner struct {
	*fakeRunner
	burn time.Duration
}

func (r *burnRunner) Run(id scheduler.VariantID, in [][]float32) ([][]float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0, _ := threadCPU()
	for {
		if c, _ := threadCPU(); c-c0 >= r.burn {
			break
		}
	}
	return r.fakeRunner.Run(id, in)
}

func cpuTestBatch(l *loop, n int) *scheduler.Batch {
	v := l.apps["app"].Variants[0]
	b := &scheduler.Batch{Variant: v}
	now := time.Now()
	for i := range n {
		j := &job{App: "app", ID: string(rune('a' + i)), Received: now, Deadline: now.Add(time.Second), Input: []float32{1}}
		j.prepare(l.apps, uint64(i+1), 0)
		b.Requests = append(b.Requests, j.req)
	}
	return b
}

// The CPU a forward pass uses on the worker's thread is measured and summed
// per variant in sneakgate_infer_cpu_seconds_total, beside its wall time.
func TestLoopMeasuresTheForwardPassCPU(t *testing.T) {
	if _, ok := threadCPU(); !ok {
		t.Skip("skipping: no thread CPU clock on " + runtime.GOOS)
	}
	const burn = 5 * time.Millisecond
	f := &burnRunner{fakeRunner: &fakeRunner{lat: func(int) time.Duration { return 0 },
		resident: map[scheduler.VariantID]bool{}}, burn: burn}
	ans := &answers{got: map[string]result{}}
	l := newLoop(edfPolicy(t), map[string]*scheduler.App{"app": loopApp()}, f, scheduler.Engine{}, 10,
		time.Now, ans.record, zerolog.Nop(), newMetrics(nil))
	l.timeCPU = true // metrics.pprof
	var sum float64
	for i := range 3 {
		d := l.execute(cpuTestBatch(l, 1+i))
		if d.err != nil {
			t.Fatal(d.err)
		}
		if d.cpu < burn {
			t.Fatalf("pass %d: cpu %v, want at least the %v the runner burnt", i, d.cpu, burn)
		}
		sum += d.cpu.Seconds()
		l.finish(d)
	}
	if got := testutil.ToFloat64(l.m.inferCPU.WithLabelValues("app", "m")); got != sum {
		t.Errorf("sneakgate_infer_cpu_seconds_total = %v, want the passes' %v", got, sum)
	}
	// Off (metrics.pprof false, the default), a pass is not timed.
	l.timeCPU = false
	if d := l.execute(cpuTestBatch(l, 1)); d.err != nil || d.cpu != 0 {
		t.Errorf("untimed pass: cpu %v, err %v; want 0 and no error", d.cpu, d.err)
	}
}

// A pass that waits instead of running (the fake runner sleeps, on a fake
// clock) takes wall time and next to no CPU time: the two are measured apart.
func TestLoopForwardPassCPUExcludesWaiting(t *testing.T) {
	if _, ok := threadCPU(); !ok {
		t.Skip("skipping: no thread CPU clock on " + runtime.GOOS)
	}
	synctest.Test(t, func(t *testing.T) {
		f := &fakeRunner{lat: func(int) time.Duration { return time.Second }, resident: map[scheduler.VariantID]bool{}}
		ans := &answers{got: map[string]result{}}
		l := newLoop(edfPolicy(t), map[string]*scheduler.App{"app": loopApp()}, f, scheduler.Engine{}, 10,
			time.Now, ans.record, zerolog.Nop(), newMetrics(nil))
		l.timeCPU = true
		d := l.execute(cpuTestBatch(l, 2))
		if d.err != nil {
			t.Fatal(d.err)
		}
		if d.infer != time.Second || d.cpu >= d.infer/2 {
			t.Fatalf("a pass that slept 1s: wall %v, cpu %v; want 1s of wall and little cpu", d.infer, d.cpu)
		}
	})
}

func edfPolicy(t *testing.T) scheduler.Policy {
	t.Helper()
	p, err := scheduler.New("edf", scheduler.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
