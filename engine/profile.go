package engine

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"time"
)

// Profile is a variant's measured costs.
type Profile struct {
	// Load and Unload are the measured durations of making the variant resident
	// and of releasing it.
	Load   time.Duration `json:"load_ns"`
	Unload time.Duration `json:"unload_ns"`
	// MemBytes is what the variant counts against the memory budget.
	MemBytes int64 `json:"mem_bytes"`
	// Batch lists the profiled batch sizes, increasing; Latency[i] is the median
	// duration of one forward pass (Run, conversions included) at Batch[i].
	// Latency never decreases with the batch size (see Engine.Profile).
	Batch   []int           `json:"batch"`
	Latency []time.Duration `json:"latency_ns"`
	// Padded: the engine pads every batch up to the next profiled size
	// (Options.PadBatches), so a batch costs what that size costs.
	Padded bool `json:"padded,omitempty"`
}

// LatencyAt returns the forward-pass duration at batch size b: Latency[0] at or
// below the smallest profiled size, piecewise-linear interpolation between
// profiled sizes (for a Padded profile, the next profiled size's latency), and
// linear extrapolation beyond the largest, along the last segment's slope (or
// the per-sample mean of the largest point when that slope is zero). It
// returns 0 for an empty profile.
func (p Profile) LatencyAt(b int) time.Duration {
	n := len(p.Batch)
	if n == 0 || len(p.Latency) != n {
		return 0
	}
	if b <= p.Batch[0] {
		return p.Latency[0]
	}
	for i := 1; i < n; i++ {
		if b <= p.Batch[i] {
			if p.Padded {
				return p.Latency[i]
			}
			b0, b1 := p.Batch[i-1], p.Batch[i]
			l0, l1 := p.Latency[i-1], p.Latency[i]
			return l0 + time.Duration(float64(l1-l0)*float64(b-b0)/float64(b1-b0))
		}
	}
	last, lastL := p.Batch[n-1], p.Latency[n-1]
	slope := float64(lastL) / float64(last)
	if n > 1 {
		if s := float64(lastL-p.Latency[n-2]) / float64(last-p.Batch[n-2]); s > 0 {
			slope = s
		}
	}
	return lastL + time.Duration(slope*float64(b-last))
}

func (p Profile) clone() Profile {
	p.Batch = slices.Clone(p.Batch)
	p.Latency = slices.Clone(p.Latency)
	return p
}

// Profile measures each variant in ids (every registered variant when ids is
// empty), one after the other: it loads the variant (timing the load), runs
// WarmupRuns unmeasured forward passes per batch size back to back, then
// ProfileRuns measured ones, each after the engine has been idle for
// Options.ProfileGap and on inputs no run before it has just read, as a serving
// engine's passes are (in rounds over the batch sizes; see measure), and keeps
// each size's median, and unloads the variant again (timing the unload) unless it was
// resident before. Inputs are random values within the
// application's input_range ([0, 1] when it has none), the same on every start.
// Latencies are made non-decreasing in the batch size (each is at least the one
// before it), so noise never makes a bigger batch look cheaper.
//
// A resident variant stays resident; its Load and Unload come from the last
// measured Load and Unload of the variant (0 when there was none, and the
// profile is then not cached). With Options.ProfileCache set, a profile stored
// under the same key (model file hash, runtime version, provider and its
// options, thread counts, batch sizes, warm-up and measured runs, input
// layout) is used instead of measuring, and a new measurement is stored.
//
// Profile loads variants under the residency budget like Load does, so a
// variant that does not fit next to the resident ones fails with ErrOverBudget.
// Profile stops at the first error, which names the variant; profiles measured
// before it are kept. A load or forward pass that panics is such an error
// (ErrPanic, a *PanicError), and the variant is unloaded again as after any
// failed measurement. It returns ctx's error when ctx is done.
func (e *Engine) Profile(ctx context.Context, ids ...VariantID) error {
	return e.profileAll(ctx, true, ids)
}

// ProfileBeside is Profile for variants registered while others serve (a
// reload): a variant it has to load to measure is loaded outside the residency
// budgets, so neither the measurement nor the serving variants' loads fail for
// want of room. The budgets are exceeded by one variant's memory at most while
// it measures. Measured next to serving work, the latencies are pessimistic.
func (e *Engine) ProfileBeside(ctx context.Context, ids ...VariantID) error {
	return e.profileAll(ctx, false, ids)
}

func (e *Engine) profileAll(ctx context.Context, budgeted bool, ids []VariantID) error {
	if len(ids) == 0 {
		ids = e.Variants("")
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		v, err := e.lookup(id)
		if err != nil {
			return err
		}
		if err := e.profile(ctx, v, budgeted); err != nil {
			return fmt.Errorf("engine: profile %s: %w", id, err)
		}
	}
	return nil
}

func (e *Engine) profile(ctx context.Context, v *variant, budgeted bool) error {
	key, file := e.cacheKey(v)
	if p, ok := e.readCache(v, key, file); ok {
		e.setProfile(v, p)
		e.log.Info().Str("variant", v.id.String()).Str("cache", file).Msg("profile from cache")
		return nil
	}
	v.life.Lock()
	defer v.life.Unlock()

	e.mu.RLock()
	wasResident := v.sess != nil
	p := Profile{MemBytes: v.mem, Batch: slices.Clone(e.opts.BatchSizes), Load: v.lastLoad, Unload: v.lastUnload}
	// A resident variant's swap costs are its last measured ones, or 0 where
	// none was measured: such a profile is not cached, so that a later start
	// measures them rather than reading the 0 as free.
	swapsMeasured := !wasResident || (v.loaded && v.unloaded)
	e.mu.RUnlock()
	if !wasResident {
		d, err := e.load(v, budgeted)
		if err != nil {
			return err
		}
		p.Load = d
	}
	lat, err := func() ([]time.Duration, error) {
		defer e.guard(v)()
		return e.measure(ctx, v)
	}()
	if !wasResident {
		d, uerr := e.unload(v)
		if err == nil && uerr != nil {
			err = uerr
		}
		p.Unload = d
	}
	if err != nil {
		return err
	}
	p.Latency = lat
	e.setProfile(v, p)
	us := make([]float64, len(p.Latency))
	for i, d := range p.Latency {
		us[i] = float64(d.Microseconds())
	}
	e.log.Info().Str("variant", v.id.String()).Float64("load_ms", ms(p.Load)).Float64("unload_ms", ms(p.Unload)).
		Int64("mem_bytes", p.MemBytes).Ints("batch", p.Batch).Floats64("latency_us", us).Msg("profiled")
	if key != nil && swapsMeasured {
		e.writeCache(v, key, file, p)
	}
	return nil
}

// measure returns the non-decreasing median latencies of v at each batch size.
// The warm-up runs go first, back to back, size by size. The measured runs then
// go in rounds, each round one run of every batch size, so that a stretch of
// noise (another process's burst on the same cores) falls on every size alike
// instead of on the sizes measured while it lasted (and, through the
// non-decreasing clamp, on every size above them). Each measured run takes the
// next inputs of a pool (profilePool), as a serving pass takes requests it has
// not run before, instead of the inputs the run before it has just read.
func (e *Engine) measure(ctx context.Context, v *variant) ([]time.Duration, error) {
	sizes := e.opts.BatchSizes
	pool := sampleInputs(v, profilePool(v.app.InputSize, sizes, e.opts.ProfileRuns))
	for _, b := range sizes {
		for range e.opts.WarmupRuns {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if _, err := e.Run(v.id, pool[:b]); err != nil {
				return nil, err
			}
		}
	}
	runs := make([][]time.Duration, len(sizes))
	off := 0
	for range e.opts.ProfileRuns {
		for i, b := range sizes {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if off+b > len(pool) {
				off = 0
			}
			batch := pool[off : off+b]
			off += b
			if e.measured != nil {
				e.measured(batch)
			}
			if e.opts.ProfileGap > 0 {
				e.sleep(e.opts.ProfileGap)
			}
			t0 := e.opts.Now()
			if _, err := e.Run(v.id, batch); err != nil {
				return nil, err
			}
			runs[i] = append(runs[i], e.opts.Now().Sub(t0))
		}
	}
	lat := make([]time.Duration, len(sizes))
	for i := range sizes {
		lat[i] = median(runs[i])
		if i > 0 {
			lat[i] = max(lat[i], lat[i-1])
		}
	}
	return lat, nil
}

// profilePoolBytes bounds the inputs Profile generates for one variant.
const profilePoolBytes = 4 << 20

// profilePool is how many inputs of size values Profile generates: enough for
// every measured run to take inputs of its own (runs x the sum of the sizes),
// within profilePoolBytes, and never fewer than two of the largest batches,
// so that two consecutive runs never share an input.
func profilePool(size int, sizes []int, runs int) int {
	need := 0
	for _, b := range sizes {
		need += b * runs
	}
	if size > 0 {
		need = min(need, profilePoolBytes/(4*size))
	}
	return max(need, 2*sizes[len(sizes)-1])
}

// sampleInputs returns n random inputs for v's application, seeded by the
// variant's name so every start measures the same values.
func sampleInputs(v *variant, n int) [][]float32 {
	lo, hi := 0.0, 1.0
	if r := v.app.InputRange; r != nil {
		lo, hi = r[0], r[1]
	}
	h := fnv.New64a()
	h.Write([]byte(v.id.String()))
	rng := rand.New(rand.NewPCG(h.Sum64(), 1))
	size := v.app.InputSize
	flat := make([]float32, n*size)
	for i := range flat {
		flat[i] = float32(lo + (hi-lo)*rng.Float64())
	}
	out := make([][]float32, n)
	for i := range out {
		out[i] = flat[i*size : (i+1)*size : (i+1)*size]
	}
	return out
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

func (e *Engine) setProfile(v *variant, p Profile) {
	p.Padded = e.padded(v) // a cached profile is measured alike either way
	e.mu.Lock()
	v.prof = &p
	e.mu.Unlock()
}

// ProfileOf returns the variant's profile and true once Profile measured it (or
// read it from the cache), and false otherwise.
func (e *Engine) ProfileOf(id VariantID) (Profile, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	v := e.variants[id]
	if v == nil || v.prof == nil {
		return Profile{}, false
	}
	return v.prof.clone(), true
}

// ms is d in milliseconds, for logs.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
