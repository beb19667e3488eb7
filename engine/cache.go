package engine

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sneakgate/sneakgate/internal/cachefile"
)

// cacheFormat changes whenever the meaning of a cached profile changes: 3 since
// the measured runs go in rounds over the batch sizes, each on inputs of its own;
// 2 measured each size's runs together, on the same inputs, each after a pause
// (Options.ProfileGap); 1 measured them back to back.
const cacheFormat = 3

// cacheKey is everything a measured profile depends on: what the variant's
// outputs depend on (OutputKey) and how the profile is measured.
type cacheKey struct {
	Format int `json:"format"`
	OutputKey
	BatchSizes []int         `json:"batch_sizes"`
	ProfileGap time.Duration `json:"profile_gap_ns"`
	// WarmupRuns and ProfileRuns: an operator who raises them for a steadier
	// profile gets one measured with them, not the cached one.
	WarmupRuns  int         `json:"warmup_runs"`
	ProfileRuns int         `json:"profile_runs"`
	InputRange  *[2]float64 `json:"input_range,omitempty"`
}

// cacheEntry is one cache file.
type cacheEntry struct {
	Key      cacheKey  `json:"key"`
	Measured time.Time `json:"measured"`
	Profile  Profile   `json:"profile"`
}

// cacheKey returns v's key and cache file, or nil when the cache is off or the
// model cannot be hashed (logged).
func (e *Engine) cacheKey(v *variant) (*cacheKey, string) {
	dir := e.opts.ProfileCache
	if dir == "" {
		return nil, ""
	}
	ok, err := e.outputKey(v)
	if err != nil {
		e.log.Warn().Err(err).Str("variant", v.id.String()).Msg("profile cache: cannot hash model; measuring")
		return nil, ""
	}
	k := &cacheKey{Format: cacheFormat, OutputKey: ok, BatchSizes: e.opts.BatchSizes, ProfileGap: e.opts.ProfileGap,
		WarmupRuns: e.opts.WarmupRuns, ProfileRuns: e.opts.ProfileRuns, InputRange: v.app.InputRange}
	// App and variant names cannot contain '.', so the prefix is unambiguous.
	name := cachefile.Name(v.app.Name+"."+v.id.Variant, k)
	return k, filepath.Join(dir, name)
}

// readCache returns the cached profile of v when file holds one under key.
func (e *Engine) readCache(v *variant, key *cacheKey, file string) (Profile, bool) {
	if key == nil {
		return Profile{}, false
	}
	b, err := os.ReadFile(file)
	if err != nil {
		if !os.IsNotExist(err) {
			e.log.Warn().Err(err).Str("variant", v.id.String()).Msg("profile cache: unreadable; measuring")
		}
		return Profile{}, false
	}
	var c cacheEntry
	if err := json.Unmarshal(b, &c); err != nil {
		e.log.Warn().Err(err).Str("file", file).Msg("profile cache: corrupt entry; measuring")
		return Profile{}, false
	}
	p := c.Profile
	if !cachefile.SameKey(key, &c.Key) {
		e.log.Warn().Str("file", file).Msg("profile cache: entry does not match its key; measuring")
		return Profile{}, false
	}
	if err := checkCached(p, key.BatchSizes); err != nil {
		e.log.Warn().Err(err).Str("variant", v.id.String()).Str("file", file).Msg("profile cache: invalid profile in entry; measuring")
		return Profile{}, false
	}
	p.MemBytes = v.mem // computed, not measured: always current
	return p, true
}

// maxCachedDuration bounds every duration of a cached profile: a forward pass,
// load or unload of a day is no measurement, and the scheduler's sums of such
// durations over a window of requests stay far from overflowing.
const maxCachedDuration = 24 * time.Hour

// checkCached says why p, read from a cache entry stored under batch sizes
// batch, is not a profile Profile could have measured: its batch sizes must be
// the key's (LatencyAt interpolates between them: a size listed twice divided
// by zero), its latencies one per size, non-decreasing (measure makes them
// so), and every duration within [0, maxCachedDuration].
func checkCached(p Profile, batch []int) error {
	if !slices.Equal(p.Batch, batch) {
		return fmt.Errorf("profile batch sizes %v, the key's are %v", p.Batch, batch)
	}
	if len(p.Latency) != len(p.Batch) {
		return fmt.Errorf("profile has %d latencies for %d batch sizes", len(p.Latency), len(p.Batch))
	}
	for i, d := range p.Latency {
		if d < 0 || d > maxCachedDuration || (i > 0 && d < p.Latency[i-1]) {
			return fmt.Errorf("profile latency_ns %v: each must be in [0, %v] and at least the one before it", p.Latency, maxCachedDuration)
		}
	}
	if p.Load < 0 || p.Load > maxCachedDuration || p.Unload < 0 || p.Unload > maxCachedDuration {
		return fmt.Errorf("profile load_ns %d, unload_ns %d: each must be in [0, %v]", p.Load, p.Unload, maxCachedDuration)
	}
	return nil
}

// writeCache stores p under key, atomically, and removes v's entries stored
// under other keys. Failures are logged: the cache only saves start-up time.
func (e *Engine) writeCache(v *variant, key *cacheKey, file string, p Profile) {
	entry := cacheEntry{Key: *key, Measured: e.opts.Now().UTC(), Profile: p}
	if err := cachefile.Store(file, entry, "profile", v.app.Name+"."+v.id.Variant+".*.json"); err != nil {
		e.log.Warn().Err(err).Str("variant", v.id.String()).Str("file", file).Msg("profile cache: cannot store")
	}
}
