package engine

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestLatencyAt(t *testing.T) {
	ms := time.Millisecond
	p := Profile{Batch: []int{1, 2, 4, 8}, Latency: []time.Duration{1 * ms, 2 * ms, 2 * ms, 6 * ms}}
	for b, want := range map[int]time.Duration{
		0: 1 * ms, 1: 1 * ms, 2: 2 * ms, 3: 2 * ms, 4: 2 * ms,
		5: 3 * ms, 6: 4 * ms, 8: 6 * ms, // between points
		10: 8 * ms, 16: 14 * ms, // beyond: the last segment's slope, 1ms per sample
	} {
		if got := p.LatencyAt(b); got != want {
			t.Errorf("LatencyAt(%d) = %v, want %v", b, got, want)
		}
	}
	flat := Profile{Batch: []int{1, 4}, Latency: []time.Duration{4 * ms, 4 * ms}}
	if got := flat.LatencyAt(8); got != 8*ms { // zero slope: 1ms per sample at 4
		t.Errorf("flat LatencyAt(8) = %v, want 8ms", got)
	}
	one := Profile{Batch: []int{2}, Latency: []time.Duration{4 * ms}}
	if got := one.LatencyAt(6); got != 12*ms {
		t.Errorf("single point LatencyAt(6) = %v, want 12ms", got)
	}
	if got := (Profile{}).LatencyAt(3); got != 0 {
		t.Errorf("empty LatencyAt = %v", got)
	}
	// Non-decreasing profiles give non-decreasing answers.
	for b := 1; b < 64; b++ {
		if p.LatencyAt(b+1) < p.LatencyAt(b) {
			t.Fatalf("LatencyAt(%d) < LatencyAt(%d)", b+1, b)
		}
	}
}

func TestMedian(t *testing.T) {
	if m := median([]time.Duration{5, 1, 3}); m != 3 {
		t.Errorf("median odd = %v", m)
	}
	if m := median([]time.Duration{4, 1, 3, 2}); m != 2 {
		t.Errorf("median even = %v", m) // (2+3)/2 in integer nanoseconds
	}
}

// TestProfile profiles every test variant. Timings are not asserted beyond sanity:
// positive, one per batch size, non-decreasing, and the residency restored.
func TestProfile(t *testing.T) {
	e := newEngine(t, Options{IntraOpThreads: 1, BatchSizes: []int{1, 4, 16}, WarmupRuns: 1, ProfileRuns: 3})
	registerAll(t, e)
	if _, err := e.Load(idProbs); err != nil { // resident before: stays resident
		t.Fatal(err)
	}
	if _, ok := e.ProfileOf(idMLP); ok {
		t.Fatal("profile before Profile")
	}
	if err := e.Profile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e.Resident(); !slices.Equal(got, []VariantID{idProbs}) {
		t.Errorf("resident after Profile: %v, want only %v", got, idProbs)
	}
	for _, id := range allTestIDs {
		p, ok := e.ProfileOf(id)
		if !ok {
			t.Fatalf("%s: no profile", id)
		}
		mem, _ := e.MemBytes(id)
		if !slices.Equal(p.Batch, []int{1, 4, 16}) || len(p.Latency) != 3 || p.MemBytes != mem {
			t.Fatalf("%s: profile %+v", id, p)
		}
		if p.Load <= 0 || p.Unload < 0 {
			t.Errorf("%s: load %v, unload %v", id, p.Load, p.Unload)
		}
		for i, l := range p.Latency {
			if l <= 0 || (i > 0 && l < p.Latency[i-1]) {
				t.Errorf("%s: latencies %v are not positive and non-decreasing", id, p.Latency)
			}
		}
		if p.LatencyAt(32) < p.LatencyAt(16) {
			t.Errorf("%s: extrapolation decreases", id)
		}
		t.Logf("%-14s load %-9v unload %-9v mem %7d B  latency %v", id, p.Load, p.Unload, p.MemBytes, p.Latency)
	}
	// The profile is a copy.
	p, _ := e.ProfileOf(idMLP)
	p.Latency[0] = -1
	if q, _ := e.ProfileOf(idMLP); q.Latency[0] == -1 {
		t.Error("ProfileOf returned the engine's own slice")
	}
}

// fakeClock advances by step at every reading.
type fakeClock struct {
	mu   sync.Mutex
	now  time.Time
	step time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(c.step)
	return c.now
}

func TestProfileWithInjectedClock(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1e9, 0), step: time.Millisecond}
	e := newEngine(t, Options{BatchSizes: []int{1, 2}, ProfileRuns: 3, Now: clk.Now})
	registerAll(t, e)
	if err := e.Profile(context.Background(), idLogits); err != nil {
		t.Fatal(err)
	}
	p, _ := e.ProfileOf(idLogits)
	ms := time.Millisecond
	want := Profile{Load: ms, Unload: ms, MemBytes: p.MemBytes, Batch: []int{1, 2}, Latency: []time.Duration{ms, ms}}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("profile %+v, want %+v", p, want)
	}
}

func TestProfileCache(t *testing.T) {
	dir := t.TempDir()
	opts := Options{IntraOpThreads: 1, BatchSizes: []int{1, 2}, ProfileRuns: 2, ProfileCache: dir}
	e1 := newEngine(t, opts)
	registerAll(t, e1)
	if err := e1.Profile(context.Background(), idLogits, idMLP); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(files) != 2 {
		t.Fatalf("cache holds %v, want 2 files", files)
	}

	// A second engine with a clock that would measure 1h per step: a cached
	// profile is recognisable because it does not say 1h.
	clk := &fakeClock{now: time.Unix(1e9, 0), step: time.Hour}
	opts2 := opts
	opts2.Now = clk.Now
	e2 := newEngine(t, opts2)
	registerAll(t, e2)
	if err := e2.Profile(context.Background(), idLogits, idMLP); err != nil {
		t.Fatal(err)
	}
	for _, id := range []VariantID{idLogits, idMLP} {
		p1, _ := e1.ProfileOf(id)
		p2, _ := e2.ProfileOf(id)
		if !reflect.DeepEqual(p1, p2) {
			t.Errorf("%s: cached profile %+v differs from measured %+v", id, p2, p1)
		}
	}

	// Another thread count is another key: measured again (with the 1h clock),
	// and the stale entry is replaced.
	opts3 := opts2
	opts3.IntraOpThreads = 2
	e3 := newEngine(t, opts3)
	registerAll(t, e3)
	if err := e3.Profile(context.Background(), idLogits); err != nil {
		t.Fatal(err)
	}
	if p, _ := e3.ProfileOf(idLogits); p.Load != time.Hour {
		t.Errorf("different options used the cache: %+v", p)
	}
	files, _ = filepath.Glob(filepath.Join(dir, "lin.logits.*.json"))
	if len(files) != 1 {
		t.Errorf("cache entries for lin/logits: %v, want the newest only", files)
	}

	// A corrupt entry is measured again, not trusted.
	if err := os.WriteFile(files[0], []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	e4 := newEngine(t, opts3)
	registerAll(t, e4)
	if err := e4.Profile(context.Background(), idLogits); err != nil {
		t.Fatal(err)
	}
	if p, _ := e4.ProfileOf(idLogits); p.Load != time.Hour {
		t.Errorf("corrupt cache entry was used: %+v", p)
	}
}

func TestProfileErrors(t *testing.T) {
	e := newEngine(t, Options{BatchSizes: []int{1}, ProfileRuns: 1})
	registerAll(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Profile(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if err := e.Profile(context.Background(), VariantID{"x", "y"}); !errors.Is(err, ErrUnknownVariant) {
		t.Errorf("unknown: %v", err)
	}
	small := newEngine(t, Options{BatchSizes: []int{1}, ProfileRuns: 1, MaxResident: 1})
	registerAll(t, small)
	if _, err := small.Load(idTrees); err != nil {
		t.Fatal(err)
	}
	if err := small.Profile(context.Background(), idMLP); !errors.Is(err, ErrOverBudget) {
		t.Errorf("over budget: %v", err)
	}
	if r := small.Resident(); !slices.Equal(r, []VariantID{idTrees}) {
		t.Errorf("resident %v", r)
	}
}

// gapRecorder replaces the profiler's pause: it records each pause and how
// many clock readings (measured runs read the clock twice) came before it.
type gapRecorder struct {
	clk    *fakeClock
	pauses []time.Duration
	at     []time.Time
}

func (g *gapRecorder) sleep(d time.Duration) {
	g.pauses = append(g.pauses, d)
	g.clk.mu.Lock()
	g.at = append(g.at, g.clk.now)
	g.clk.mu.Unlock()
}

func TestProfileGapPrecedesEveryMeasuredRun(t *testing.T) {
	for _, tc := range []struct {
		gap, want time.Duration
	}{{0, DefaultProfileGap}, {3 * time.Millisecond, 3 * time.Millisecond}, {-1, 0}} {
		clk := &fakeClock{now: time.Unix(1e9, 0), step: time.Millisecond}
		e := newEngine(t, Options{BatchSizes: []int{1, 2}, WarmupRuns: 2, ProfileRuns: 3, ProfileGap: tc.gap, Now: clk.Now})
		g := &gapRecorder{clk: clk}
		e.sleep = g.sleep
		registerAll(t, e)
		if err := e.Profile(context.Background(), idLogits); err != nil {
			t.Fatal(err)
		}
		if tc.want == 0 {
			if len(g.pauses) != 0 {
				t.Errorf("ProfileGap %v: %d pauses, want none", tc.gap, len(g.pauses))
			}
			continue
		}
		// 2 batch sizes x 3 measured runs; none before the 2 x 2 warm-ups.
		if len(g.pauses) != 6 {
			t.Fatalf("ProfileGap %v: %d pauses, want 6 (one per measured run): %v", tc.gap, len(g.pauses), g.pauses)
		}
		for i, d := range g.pauses {
			if d != tc.want {
				t.Errorf("ProfileGap %v: pause %d is %v, want %v", tc.gap, i, d, tc.want)
			}
		}
		// The load reads the clock twice, then every measured run twice: the
		// pause before measured run i comes after 2+2i readings, so the pause
		// is never inside a timed interval.
		for i, at := range g.at {
			if want := time.Unix(1e9, 0).Add(time.Duration(2+2*i) * time.Millisecond); !at.Equal(want) {
				t.Errorf("ProfileGap %v: pause %d after the clock read %v, want %v", tc.gap, i, at, want)
			}
		}
	}
}

func TestProfileCacheKeyHasTheGap(t *testing.T) {
	dir := t.TempDir()
	opts := Options{IntraOpThreads: 1, BatchSizes: []int{1}, ProfileRuns: 1, ProfileCache: dir, ProfileGap: -1}
	e1 := newEngine(t, opts)
	registerAll(t, e1)
	if err := e1.Profile(context.Background(), idLogits); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		gap      time.Duration
		measured bool
	}{{-1, false}, {0, true}, {time.Millisecond, false}, {2 * time.Millisecond, true}} {
		o := opts
		o.ProfileGap = tc.gap
		e := newEngine(t, o)
		g := &gapRecorder{clk: &fakeClock{}}
		e.sleep = g.sleep
		registerAll(t, e)
		if err := e.Profile(context.Background(), idLogits); err != nil {
			t.Fatal(err)
		}
		if measured := len(g.pauses) > 0; measured != tc.measured {
			t.Errorf("ProfileGap %v after the one before it: measured %v, want %v (a cached profile is used only under the same gap)",
				tc.gap, measured, tc.measured)
		}
	}
}

// TestProfileMeasuresInRoundsOnFreshInputs checks the order and the inputs of
// the measured runs: one run of every batch size per round, each on inputs
// that the run before it did not read, and, with a pool large enough, no input
// read twice by the measured runs.
func TestProfileMeasuresInRoundsOnFreshInputs(t *testing.T) {
	e := newEngine(t, Options{BatchSizes: []int{1, 2, 4}, WarmupRuns: 2, ProfileRuns: 3, ProfileGap: -1})
	var sizes []int
	var batches [][][]float32
	e.measured = func(in [][]float32) {
		sizes = append(sizes, len(in))
		batches = append(batches, in)
	}
	registerAll(t, e)
	if err := e.Profile(context.Background(), idLogits); err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 2, 4, 1, 2, 4, 1, 2, 4}; !slices.Equal(sizes, want) {
		t.Fatalf("measured runs of sizes %v, want %v (rounds over the sizes)", sizes, want)
	}
	seen := map[*float32]int{}
	for i, in := range batches {
		for _, x := range in {
			if j, ok := seen[&x[0]]; ok {
				t.Errorf("measured run %d reads an input of run %d again", i, j)
			}
			seen[&x[0]] = i
		}
	}
}

func TestProfilePool(t *testing.T) {
	for _, tc := range []struct {
		size, runs int
		sizes      []int
		want       int
	}{
		{784, 7, []int{1, 2, 4, 8, 16, 32}, 7 * 63},       // every run its own inputs
		{3 * 224 * 224, 7, []int{1, 2, 4, 8, 16, 32}, 64}, // bounded: two of the largest batch
		{100_000, 3, []int{1, 2, 4}, 10},                  // 4 MiB of 400 kB inputs, more than 2 x 4
		{36, 1, []int{1}, 2},                              // two single-input runs
		{0, 2, []int{1, 8}, 18},                           // no size: unbounded
	} {
		if got := profilePool(tc.size, tc.sizes, tc.runs); got != tc.want {
			t.Errorf("profilePool(%d, %v, %d) = %d, want %d", tc.size, tc.sizes, tc.runs, got, tc.want)
		}
	}
}

// A profile measured with one run and no warm-up is not reused by an engine
// that asks for more (engine.warmup_runs, engine.profile_runs): the cache key
// names how the profile was measured.
func TestProfileCacheKeyHasTheRunCounts(t *testing.T) {
	dir := t.TempDir()
	cheap := Options{IntraOpThreads: 1, BatchSizes: []int{1, 2}, WarmupRuns: 0, ProfileRuns: 1, ProfileCache: dir}
	e1 := newEngine(t, cheap)
	registerAll(t, e1)
	if err := e1.Profile(context.Background(), idLogits); err != nil {
		t.Fatal(err)
	}
	// A clock that makes every measured step 1h: a measured profile says 1h.
	clk := &fakeClock{now: time.Unix(1e9, 0), step: time.Hour}
	careful := cheap
	careful.WarmupRuns, careful.ProfileRuns, careful.Now = 3, 9, clk.Now
	e2 := newEngine(t, careful)
	registerAll(t, e2)
	if err := e2.Profile(context.Background(), idLogits); err != nil {
		t.Fatal(err)
	}
	if p, _ := e2.ProfileOf(idLogits); p.Load != time.Hour {
		t.Errorf("warmup_runs 0->3, profile_runs 1->9: the 1-run profile came from the cache: %+v", p)
	}
}

// Profile of a resident variant takes Load and Unload from the last measured
// ones, 0 when there was none; such a profile is not cached, so that a later
// engine (where the variant is not resident) measures its swap costs instead
// of reading the 0 and planning evictions as free on every start.
func TestProfileCacheKeepsOnlyMeasuredSwapCosts(t *testing.T) {
	dir := t.TempDir()
	opts := Options{IntraOpThreads: 1, BatchSizes: []int{1, 2}, ProfileRuns: 1, ProfileCache: dir}
	e1 := newEngine(t, opts)
	registerAll(t, e1)
	if _, err := e1.Load(idLogits); err != nil { // resident, never unloaded
		t.Fatal(err)
	}
	if err := e1.Profile(context.Background(), idLogits); err != nil {
		t.Fatal(err)
	}
	if p, _ := e1.ProfileOf(idLogits); p.Unload != 0 {
		t.Fatalf("precondition: resident never-unloaded variant has Unload %v, the doc says 0", p.Unload)
	}

	// A fresh engine: idLogits is not resident, so Profile would measure both.
	clk := &fakeClock{now: time.Unix(1e9, 0), step: time.Hour}
	opts2 := opts
	opts2.Now = clk.Now
	e2 := newEngine(t, opts2)
	registerAll(t, e2)
	if err := e2.Profile(context.Background(), idLogits); err != nil {
		t.Fatal(err)
	}
	p, _ := e2.ProfileOf(idLogits)
	if p.Unload == 0 {
		t.Errorf("a fresh engine's profile has Unload 0 (the unmeasured value another engine cached), "+
			"measuring would give %v: %+v", time.Hour, p)
	}
}

// A cache entry stored under the right key whose profile is not one Profile
// could have measured (its batch sizes are not the key's, a latency is
// negative or falls with the batch size, a swap cost is negative, a duration
// is absurd) is measured again, not trusted: the gateway interpolates its
// latency tables from it, and a batch size listed twice made LatencyAt divide
// by zero (an infinite slope, converted to a negative duration).
func TestProfileCacheRefusesBadProfiles(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name string
		edit func(p *Profile)
	}{
		{"batch sizes not the key's", func(p *Profile) { p.Batch = []int{1, 1} }},
		{"huge batch size", func(p *Profile) { p.Batch = []int{1, 1 << 40} }},
		{"zero batch size", func(p *Profile) { p.Batch = []int{0, 2} }},
		{"unsorted batch sizes", func(p *Profile) { p.Batch = []int{2, 1} }},
		{"negative latency", func(p *Profile) { p.Latency = []time.Duration{-ms, ms} }},
		{"decreasing latency", func(p *Profile) { p.Latency = []time.Duration{2 * ms, ms} }},
		{"huge latency", func(p *Profile) { p.Latency = []time.Duration{ms, math.MaxInt64} }},
		{"negative load", func(p *Profile) { p.Load = -ms }},
		{"negative unload", func(p *Profile) { p.Unload = -ms }},
		{"fewer latencies", func(p *Profile) { p.Latency = p.Latency[:1] }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{IntraOpThreads: 1, BatchSizes: []int{1, 2}, ProfileRuns: 1, ProfileCache: dir,
				Now: (&fakeClock{now: time.Unix(1e9, 0), step: ms}).Now}
			e1 := newEngine(t, opts)
			registerAll(t, e1)
			if err := e1.Profile(context.Background(), idLogits); err != nil {
				t.Fatal(err)
			}
			files, _ := filepath.Glob(filepath.Join(dir, "lin.logits.*.json"))
			if len(files) != 1 {
				t.Fatalf("cache holds %v, want 1 file", files)
			}
			b, err := os.ReadFile(files[0])
			if err != nil {
				t.Fatal(err)
			}
			var c cacheEntry
			if err := json.Unmarshal(b, &c); err != nil {
				t.Fatal(err)
			}
			tc.edit(&c.Profile)
			if b, err = json.Marshal(c); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(files[0], b, 0o644); err != nil {
				t.Fatal(err)
			}

			opts2 := opts
			opts2.Now = (&fakeClock{now: time.Unix(1e9, 0), step: time.Hour}).Now
			e2 := newEngine(t, opts2)
			registerAll(t, e2)
			if err := e2.Profile(context.Background(), idLogits); err != nil {
				t.Fatal(err)
			}
			p, _ := e2.ProfileOf(idLogits)
			want := Profile{Load: time.Hour, Unload: time.Hour, MemBytes: p.MemBytes, Batch: []int{1, 2},
				Latency: []time.Duration{time.Hour, time.Hour}}
			if !reflect.DeepEqual(p, want) {
				t.Errorf("profile %+v, want it measured again: %+v", p, want)
			}
		})
	}
}
