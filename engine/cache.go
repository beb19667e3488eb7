package engine

import (
	"encoding/json"
	"os"
	"path/filepath"
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
	if !cachefile.SameKey(key, &c.Key) || len(p.Batch) != len(p.Latency) || len(p.Batch) == 0 {
		e.log.Warn().Str("file", file).Msg("profile cache: entry does not match its key; measuring")
		return Profile{}, false
	}
	p.MemBytes = v.mem // computed, not measured: always current
	return p, true
}

// writeCache stores p under key, atomically, and removes v's entries stored
// under other keys. Failures are logged: the cache only saves start-up time.
func (e *Engine) writeCache(v *variant, key *cacheKey, file string, p Profile) {
	entry := cacheEntry{Key: *key, Measured: e.opts.Now().UTC(), Profile: p}
	if err := cachefile.Store(file, entry, "profile", v.app.Name+"."+v.id.Variant+".*.json"); err != nil {
		e.log.Warn().Err(err).Str("variant", v.id.String()).Str("file", file).Msg("profile cache: cannot store")
	}
}
