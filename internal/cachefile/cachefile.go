// Package cachefile holds what the engine's profile cache (engine/cache.go)
// and the gateway's curve cache (gateway/curvecache.go) share: a file's
// SHA-256 for their keys, a file name and a comparison from a key's JSON, and
// the atomic store of one JSON entry that replaces the entries it supersedes.
package cachefile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
)

// Name is the file name {prefix}.{hash}.json of an entry stored under key,
// hash being the first 16 hex digits of the SHA-256 of key's JSON. key must
// marshal (a struct of plain fields).
func Name(prefix string, key any) string {
	b, _ := json.Marshal(key)
	h := sha256.Sum256(b)
	return prefix + "." + hex.EncodeToString(h[:8]) + ".json"
}

// SameKey reports whether a and b marshal to the same JSON: whether an entry
// read back was stored under the key the caller wants.
func SameKey(a, b any) bool {
	x, errX := json.Marshal(a)
	y, errY := json.Marshal(b)
	return errX == nil && errY == nil && bytes.Equal(x, y)
}

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
