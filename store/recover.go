package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// compactTxBytes is how many bytes a compaction copies per transaction.
const compactTxBytes = 64 << 20

// Recovery reports what OpenOrRecover did about a damaged journal: the damaged
// file was moved to MovedTo and a new journal created at the original path, with
// everything that could be read from the damaged one.
type Recovery struct {
	// MovedTo is where the damaged file now is: the original path with
	// ".corrupt-" and the UTC time appended (for example
	// journal.db.corrupt-20261130T071500Z). Nothing deletes it.
	MovedTo string
	// Report is what the verification found wrong (Problems), what was copied
	// into the new journal (Pending, Outbox, Done) and what was lost (Lost,
	// LostKeys, UnreadablePages). The keys of lost entries are released: a
	// redelivery of one of those requests runs as new.
	Report
}

// OpenOrRecover opens the journal at path like Open, but never trusts the file:
// it first verifies it with bounds-checked reads (bbolt's page structure, then
// every record and the key index; see Inspect), so damage that would make bbolt
// panic or fault, or that would silently hide records, is found before bbolt
// reads the file.
//
// A healthy file is opened, after compacting it when it is at least
// Options.CompactMinBytes long and more than half of it is free space (the
// compact copy replaces the file by an atomic rename; a failed compaction is
// logged and the file opened as it is). OpenOrRecover then returns a nil
// Recovery.
//
// A damaged file (or an empty one, or one bbolt refuses or panics on) is moved
// aside, a new journal is created at path, every readable pending entry,
// outbox reply and completed key is copied into it (as Salvage does), and the
// returned Recovery says what was found, kept and lost. The caller should report
// it loudly: requests may be lost, and the damaged file stays on disk for
// inspection until someone deletes it.
//
// OpenOrRecover fails with ErrLocked when another process holds the file for
// longer than Options.LockTimeout, with ErrSchema when a newer version wrote it,
// and with an error when the file cannot be created, read, renamed, or the new
// journal cannot be written (a failed salvage puts the damaged file back, so the
// next attempt starts over). Damage does not make it panic: bbolt reads only a
// file that passed the verification, and the panics bbolt raises in the
// caller's goroutine are caught as well.
func OpenOrRecover(path string, opts Options) (*Store, *Recovery, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, nil, err
	}
	_, statErr := os.Lstat(path)
	fresh := errors.Is(statErr, fs.ErrNotExist)
	f, err := lockPath(path, os.O_CREATE, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if fresh {
		s, err := openLocked(path, f, opts)
		return s, nil, err
	}
	rep, err := verifyFile(f, path, nil)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	var extra []string
	if !rep.Damaged() {
		if opts.CompactMinBytes > 0 && rep.FileSize >= opts.CompactMinBytes && rep.FreeBytes() > rep.FileSize/2 {
			f = compactFile(path, f, rep, opts)
			if f == nil {
				return nil, nil, fmt.Errorf("store: open %s: the file could not be opened again after a failed compaction", path)
			}
		}
		s, err := openLocked(path, f, opts)
		if err == nil || !errors.Is(err, ErrDamaged) {
			return s, nil, err
		}
		// bbolt disagrees with the verification: believe bbolt.
		extra = append(extra, err.Error())
		if f, err = lockPath(path, 0, opts); err != nil {
			return nil, nil, fmt.Errorf("store: open %s: %w", path, err)
		}
	}
	s, rec, err := recoverDamaged(path, f, opts)
	if err != nil {
		return nil, nil, err
	}
	rec.Problems = append(extra, rec.Problems...)
	return s, rec, nil
}

// lockPath opens path for reading and writing (flag adds to os.O_RDWR) and takes
// the writer's lock on it.
func lockPath(path string, flag int, opts Options) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|flag, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f, true, opts.LockTimeout); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// openLocked opens the journal in f, a file at path the caller has locked.
// bbolt takes f over: it is closed on error.
func openLocked(path string, f *os.File, opts Options) (*Store, error) {
	db, file, err := openDB(path, f, opts)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return newStore(db, file, path, opts)
}

// recoverDamaged moves the damaged journal in f (locked, at path) aside,
// creates a new one at path, salvages f into it and opens it.
func recoverDamaged(path string, f *os.File, opts Options) (*Store, *Recovery, error) {
	defer f.Close()
	aside, err := asideName(path, opts)
	if err == nil {
		err = os.Rename(path, aside)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("store: open %s: the journal is damaged and could not be moved aside: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := syncDir(dir); err != nil {
		opts.Logger.Warn().Err(err).Str("dir", dir).Msg("journal recovery: fsync of the directory failed")
	}
	created := false // whether path is now our new journal (not another process's)
	putBack := func(cause error) error {
		if created {
			os.Remove(path)
		}
		// Put the damaged file back, unless another process has created a
		// journal at path meanwhile (os.Rename would replace it).
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			cause = errors.Join(cause, fmt.Errorf("the damaged journal stays at %s", aside))
		} else if err := os.Rename(aside, path); err != nil {
			cause = errors.Join(cause, fmt.Errorf("the damaged journal stays at %s: %w", aside, err))
		}
		return fmt.Errorf("store: open %s: the journal is damaged and could not be salvaged: %w", path, cause)
	}
	nf, err := lockPath(path, os.O_CREATE|os.O_EXCL, opts)
	if err != nil {
		return nil, nil, putBack(err)
	}
	created = true
	db, file, err := openDB(path, nf, opts)
	if err != nil {
		return nil, nil, putBack(err)
	}
	rep, err := salvageInto(db, f, aside)
	if err != nil {
		db.Close()
		return nil, nil, putBack(err)
	}
	s, err := newStore(db, file, path, opts)
	if err != nil {
		return nil, nil, putBack(err)
	}
	return s, &Recovery{MovedTo: aside, Report: *rep}, nil
}

// asideName is where a damaged journal at path goes: path.corrupt-<UTC time>,
// with a counter appended if that exists.
func asideName(path string, opts Options) (string, error) {
	base := path + ".corrupt-" + opts.Now().UTC().Format("20060102T150405Z")
	name := base
	for i := 2; ; i++ {
		_, err := os.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			return name, nil
		}
		if err != nil {
			return "", err
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
}

// syncDir fsyncs a directory, making renames in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// compactFile rewrites the healthy journal in f (locked, at path) compactly and
// renames the copy over path. It returns the locked file now at path: the
// compact copy, or the original when compaction failed (logged). It returns nil
// only when, after a failure, the original could not be opened again.
func compactFile(path string, f *os.File, rep *Report, opts Options) *os.File {
	log := opts.Logger
	tmp := path + ".compact"
	next, err := compactTo(path, f, tmp, opts)
	if err != nil {
		os.Remove(tmp)
		log.Warn().Err(err).Str("path", path).Msg("journal compaction failed; opening the file as it is")
		if f, err = lockPath(path, 0, opts); err != nil {
			log.Error().Err(err).Str("path", path).Msg("journal: reopening after a failed compaction")
			return nil
		}
		return f
	}
	after := int64(-1)
	if st, err := next.Stat(); err == nil {
		after = st.Size()
	}
	log.Info().Str("path", path).Int64("bytes_before", rep.FileSize).Int64("bytes_after", after).
		Int64("used_bytes", rep.UsedBytes).Msg("journal compacted")
	return next
}

// compactTo copies the database in f (locked, at path) into a new file tmp with
// bolt.Compact, locks tmp, renames it over path and fsyncs the directory. f is
// closed whatever happens; on success the locked new file is returned.
func compactTo(path string, f *os.File, tmp string, opts Options) (next *os.File, err error) {
	os.Remove(tmp) // a leftover of an interrupted compaction
	src, _, err := openDB(path, f, opts)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	tf, err := lockPath(tmp, os.O_CREATE|os.O_EXCL, opts)
	if err != nil {
		return nil, err
	}
	dst, _, err := openDB(tmp, tf, opts)
	if err != nil {
		return nil, err
	}
	err = safeCompact(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	// Lock the copy before it takes the journal's name, so no other process can
	// open it between the rename and our open.
	if next, err = lockPath(tmp, 0, opts); err != nil {
		return nil, err
	}
	if !opts.NoSync {
		err = next.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		next.Close()
		return nil, err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		opts.Logger.Warn().Err(err).Msg("journal compaction: fsync of the directory failed")
	}
	return next, nil
}

// safeCompact runs bolt.Compact, turning a panic into an error.
func safeCompact(dst, src *bolt.DB) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: bbolt panicked compacting: %v", ErrDamaged, p)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return bolt.Compact(dst, src, compactTxBytes)
}
