// Package cachefile holds what the engine's profile cache (engine/cache.go)
// and the gateway's curve cache (gateway/curvecache.go) share: a file's
// SHA-256 for their keys, and the atomic store of one JSON entry that replaces
// the entries it supersedes.
package cachefile

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
)

// SHA256 is the hex SHA-256 of the file's content.
func SHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Store writes v as indented JSON to file atomically (a temporary file in the
// same folder, named ".{tmp}-*", renamed over it; the folder is made if
// missing), then removes every other file of the folder that matches the glob
// pattern stale (the entries stored under other keys). A failure leaves no
// temporary file behind.
func Store(file string, v any, tmp, stale string) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(file)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+tmp+"-*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), file)
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	old, _ := filepath.Glob(filepath.Join(dir, stale))
	for _, o := range old {
		if o != file {
			if err := os.Remove(o); err != nil {
				return err
			}
		}
	}
	return nil
}
