package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

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
// aside and replaced by a new journal holding every readable pending entry,
// outbox reply and completed key (as Salvage copies them), and the returned
// Recovery says what was found, kept and lost. The caller should report it
// loudly: requests may be lost, and the damaged file stays on disk for
// inspection until someone deletes it.
//
// The salvage is crash-safe: it writes the new journal into path.salvage and
// fsyncs it, gives the damaged file its second name path.corrupt-<UTC time> (a
// hard link, or a copy), and only then renames path.salvage over path and
// fsyncs the directory (Options.NoSync skips these fsyncs). Killed at any
// instant, it leaves at path either the damaged journal, which the next start
// salvages again (removing the leftover path.salvage), or the complete salvaged
// journal; a kill between the link and the rename leaves the damaged file under
// one more .corrupt- name.
//
// OpenOrRecover fails with ErrLocked when another process holds the file for
// longer than Options.LockTimeout, with ErrSchema when a newer version wrote it,
// and with an error when the file cannot be created, read, renamed, or the new
// journal cannot be written (a failed salvage leaves the damaged file at path,
// so the next attempt starts over). Damage does not make it panic: bbolt reads
// only a file that passed the verification, and the panics bbolt raises in the
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
		// Another opener may have created the file, written a journal into it
		// and released it while this one waited for its lock: only a file still
		// empty under the lock is new. (An empty file that was there before is
		// damage: a journal that lost its contents.)
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("store: open %s: %w", path, err)
		}
		fresh = fi.Size() == 0
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
// the writer's lock on it, waiting up to Options.LockTimeout for another process
// to release it (then ErrLocked).
//
// Having the lock, it checks that the file is still the one at path: the
// process that held the lock may have renamed another file over path meanwhile
// (a compaction or a salvage at start-up does) and then closed the old one,
// which hands its lock to whoever waited for it. That file is no longer the
// journal, and opening it would let a second gateway run beside the first. So
// lockPath then opens path again and waits for the new file's lock, within the
// same LockTimeout in all. It fails when path no longer exists.
func lockPath(path string, flag int, opts Options) (*os.File, error) {
	return lockAt(path, os.O_RDWR|flag, true, opts.LockTimeout)
}

// lockShared opens path read-only and takes a reader's lock on it without
// waiting (ErrLocked while a gateway has it open), checking as lockPath does
// that the file it locked is still the one at path: Inspect and Salvage must not
// read a journal that a gateway's start-up compaction or salvage has just
// replaced, while that gateway runs on the new file.
func lockShared(path string) (*os.File, error) {
	return lockAt(path, os.O_RDONLY, false, 0)
}

// lockAt is lockPath and lockShared: open path with flag, lock it (exclusive or
// shared) within timeout, and start over while the file locked is not the one
// at path.
func lockAt(path string, flag int, exclusive bool, timeout time.Duration) (*os.File, error) {
	deadline := time.Now().Add(timeout)
	for replaced := 0; ; replaced++ {
		f, err := os.OpenFile(path, flag, 0o600)
		if err != nil {
			return nil, err
		}
		lockOpened(path)
		if err := lockFile(f, exclusive, time.Until(deadline)); err != nil {
			f.Close()
			if replaced > 0 && errors.Is(err, ErrLocked) {
				err = lockedErr(timeout)
			}
			return nil, err
		}
		same, err := isFileAt(f, path)
		if err == nil && same {
			return f, nil
		}
		f.Close()
		if err != nil {
			return nil, err
		}
		// Past the deadline, a few more tries (without waiting: lockFile's
		// timeout is then <= 0), for a reader that never waits.
		if replaced >= 2 && !time.Now().Before(deadline) {
			return nil, lockedErr(timeout)
		}
	}
}

// lockedErr is lockPath's ErrLocked after the file at the path was replaced
// while it waited.
func lockedErr(timeout time.Duration) error {
	return fmt.Errorf("%w (waited %s, in which another process replaced the file at the path; is a gateway using it?)", ErrLocked, timeout)
}

// lockOpened is called by lockPath between opening path and waiting for its
// lock (tests make a second opener wait there).
var lockOpened = func(path string) {}

// openLocked opens the journal in f, a file at path the caller has locked.
// bbolt takes f over: it is closed on error.
func openLocked(path string, f *os.File, opts Options) (*Store, error) {
	db, file, err := openDB(path, f, opts)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return newStore(db, file, path, opts)
}

// recoverDamaged salvages the damaged journal in f (locked, at path) into a new
// journal, puts that at path, keeps the damaged file as path.corrupt-<UTC time>,
// and opens the new journal.
//
// A crash at any instant leaves at path either the damaged journal, which the
// next start verifies and salvages again, or the complete salvaged journal,
// synced before it takes the name:
//
//  1. the salvage is written into path.salvage (a leftover of an interrupted
//     salvage is removed first) and fsynced;
//  2. the damaged file gets a second name, path.corrupt-<UTC time>: a hard link
//     (a copy, fsynced, where the file system refuses hard links); the
//     directory is fsynced;
//  3. path.salvage is renamed over path, and the directory fsynced.
//
// A crash between 2 and 3 leaves an extra .corrupt- name for the damaged file
// (the next salvage adds another). When the salvage fails, the damaged journal
// stays at path and path.salvage is removed: the next start tries again.
func recoverDamaged(path string, f *os.File, opts Options) (*Store, *Recovery, error) {
	defer f.Close()
	fail := func(err error) error {
		return fmt.Errorf("store: open %s: the journal is damaged and could not be salvaged (it is left as it is): %w", path, err)
	}
	aside, err := asideName(path, opts)
	if err != nil {
		return nil, nil, fail(err)
	}
	tmp := path + ".salvage"
	next, rep, err := salvageTo(tmp, f, aside, opts)
	if err != nil {
		os.Remove(tmp)
		return nil, nil, fail(err)
	}
	crashPoint("salvaged")
	undo := func(err error) (*Store, *Recovery, error) {
		next.Close()
		os.Remove(tmp)
		return nil, nil, fail(err)
	}
	// The damaged file must still be the one at path: another process may have
	// replaced it while this one waited for its lock.
	if err := samePath(f, path); err != nil {
		return undo(err)
	}
	if err := keepAside(path, f, aside, opts); err != nil {
		return undo(fmt.Errorf("keeping it as %s: %w", aside, err))
	}
	dir := filepath.Dir(path)
	if err := syncDir(dir); err != nil {
		opts.Logger.Warn().Err(err).Str("dir", dir).Msg("journal recovery: fsync of the directory failed")
	}
	crashPoint("linked")
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(aside)
		return undo(err)
	}
	crashPoint("renamed")
	if err := syncDir(dir); err != nil {
		opts.Logger.Warn().Err(err).Str("dir", dir).Msg("journal recovery: fsync of the directory failed")
	}
	s, err := openLocked(path, next, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (the journal was salvaged; the damaged one is at %s)", err, aside)
	}
	return s, &Recovery{MovedTo: aside, Report: *rep}, nil
}

// crashPoint is called at each step of recoverDamaged, and after each commit
// but the last of a salvage (tests make the process die there).
var crashPoint = func(step string) {}

// salvageTo salvages the damaged journal in f into a new file tmp, as path (the
// report's Path). It returns tmp locked and, unless Options.NoSync, fsynced. The
// caller removes tmp on error.
func salvageTo(tmp string, f *os.File, path string, opts Options) (*os.File, *Report, error) {
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	tf, err := lockPath(tmp, os.O_CREATE|os.O_EXCL, opts)
	if err != nil {
		return nil, nil, err
	}
	// One fsync at the end instead of one per transaction: until it takes the
	// journal's name, the file is worth nothing.
	fast := opts
	fast.NoSync = true
	db, _, err := openDB(tmp, tf, fast)
	if err != nil {
		return nil, nil, err
	}
	rep, err := salvageInto(db, f, path)
	if err = errors.Join(err, db.Close()); err != nil {
		return nil, nil, err
	}
	next, err := lockPath(tmp, 0, opts)
	if err != nil {
		return nil, nil, err
	}
	if !opts.NoSync {
		if err := next.Sync(); err != nil {
			next.Close()
			return nil, nil, err
		}
	}
	return next, rep, nil
}

// samePath fails unless f is the file at path.
func samePath(f *os.File, path string) error {
	same, err := isFileAt(f, path)
	if err == nil && !same {
		err = fmt.Errorf("%s was replaced by another process meanwhile", path)
	}
	return err
}

// isFileAt reports whether f is the file at path (an error when either cannot
// be examined: path removed, for example).
func isFileAt(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

// linkFile is os.Link (tests replace it).
var linkFile = os.Link

// keepAside gives the damaged journal f, at path, the name aside as well: a hard
// link, or where the file system refuses one, a copy (fsynced unless
// Options.NoSync).
func keepAside(path string, f *os.File, aside string, opts Options) error {
	lerr := linkFile(path, aside)
	if lerr == nil || errors.Is(lerr, fs.ErrExist) {
		return lerr
	}
	if err := copyFile(f, aside, !opts.NoSync); err != nil {
		return errors.Join(lerr, err)
	}
	opts.Logger.Warn().Err(lerr).Str("path", path).Str("copy", aside).Msg("journal recovery: the damaged journal could not be hard-linked; copied it")
	return nil
}

// copyFile copies f's contents into a new file dst, and fsyncs it when sync is
// set. It removes dst on error.
func copyFile(f *os.File, dst string, sync bool) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, io.NewSectionReader(f, 0, st.Size()))
	if err == nil && sync {
		err = out.Sync()
	}
	if err = errors.Join(err, out.Close()); err != nil {
		os.Remove(dst)
	}
	return err
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
