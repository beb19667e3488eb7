package engine

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/sneakgate/sneakgate/internal/cachefile"
	"github.com/sneakgate/sneakgate/manifest"
)

// cacheFormat changes whenever the meaning of a cached profile changes: 2 since
// measured runs follow a pause (Options.ProfileGap); 1 measured them back to back.
const cacheFormat = 2

// cacheKey is everything a measured profile depends on.
type cacheKey struct {
	Format          int               `json:"format"`
	ModelSHA256     string            `json:"model_sha256"`
	Runtime         string            `json:"onnxruntime"`
	Provider        string            `json:"provider"`
	ProviderOptions map[string]string `json:"provider_options,omitempty"`
	SessionConfig   map[string]string `json:"session_config,omitempty"`
	IntraOpThreads  int               `json:"intra_op_threads"`
	InterOpThreads  int               `json:"inter_op_threads"`
	CPUs            int               `json:"cpus"`
	Arch            string            `json:"arch"`
	BatchSizes      []int             `json:"batch_sizes"`
	ProfileGap      time.Duration     `json:"profile_gap_ns"`
	InputSize       int               `json:"input_size"`
	InputRange      *[2]float64       `json:"input_range,omitempty"`
	Inputs          []manifest.Input  `json:"inputs"`
	Output          manifest.Output   `json:"output"`
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
	sum, err := cachefile.SHA256(v.path)
	if err != nil {
		e.log.Warn().Err(err).Str("variant", v.id.String()).Msg("profile cache: cannot hash model; measuring")
		return nil, ""
	}
	k := &cacheKey{
		Format: cacheFormat, ModelSHA256: sum, Runtime: runtimeVersion(),
		Provider: e.prov.Name, ProviderOptions: e.prov.Options, SessionConfig: e.opts.SessionConfig,
		IntraOpThreads: e.opts.IntraOpThreads, InterOpThreads: e.opts.InterOpThreads,
		CPUs: runtime.NumCPU(), Arch: runtime.GOARCH, BatchSizes: e.opts.BatchSizes, ProfileGap: e.opts.ProfileGap,
		InputSize: v.app.InputSize, InputRange: v.app.InputRange, Inputs: v.spec.Inputs, Output: v.spec.Output,
	}
	b, _ := json.Marshal(k) // a struct of plain fields: cannot fail
	h := sha256.Sum256(b)
	// App and variant names cannot contain '.', so the prefix is unambiguous.
	name := fmt.Sprintf("%s.%s.%s.json", v.app.Name, v.id.Variant, hex.EncodeToString(h[:8]))
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
	want, _ := json.Marshal(key)
	got, _ := json.Marshal(&c.Key)
	p := c.Profile
	if !bytes.Equal(want, got) || len(p.Batch) != len(p.Latency) || len(p.Batch) == 0 {
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
