package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

const (
	// recoverChildPath is the journal TestRecoverChild opens with OpenOrRecover.
	recoverChildPath = "SNEAKGATE_TEST_RECOVER_PATH"
	// recoverChildCrash, when set, is the salvage step (store.SetCrashPoint) at
	// which TestRecoverChild kills itself.
	recoverChildCrash = "SNEAKGATE_TEST_RECOVER_CRASH"
	// recoverChildTxBytes, when not 0, is the size of TestRecoverChild's salvage
	// transactions (store.SetSalvageTxBytes).
	recoverChildTxBytes = "SNEAKGATE_TEST_RECOVER_TX_BYTES"
)

// TestRecoverChild is the process the crash tests kill: it runs OpenOrRecover
// on a damaged journal.
func TestRecoverChild(t *testing.T) {
	path := os.Getenv(recoverChildPath)
	if path == "" {
		t.Skip("helper process for TestCrashDuringSalvage and TestCrashAtEachSalvageStep")
	}
	if want := os.Getenv(recoverChildCrash); want != "" {
		store.SetCrashPoint(t, func(step string) {
			if step == want {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				time.Sleep(time.Minute) // the signal is on its way
			}
		})
	}
	if n, _ := strconv.Atoi(os.Getenv(recoverChildTxBytes)); n > 0 {
		store.SetSalvageTxBytes(t, n)
	}
	s, rec, err := store.OpenOrRecover(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("recovered", rec != nil)
	s.Close()
}

// damagedJournal writes a closed journal of done completed keys with replies
// of size bytes (key(1000) to key(1000+done-1)), and pending requests (key(0)
// to key(pending-1)), the first of them damaged, and returns the file's bytes.
func damagedJournal(t *testing.T, path string, done, size, pending int) []byte {
	t.Helper()
	s, err := store.Open(path, storetest.Options(t))
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), size)
	for i := range done {
		mustPut(t, s, entry(1000+i), store.New)
		if err := s.Complete(key(1000+i), big); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []uint64
	for i := range pending {
		e := entry(i)
		mustPut(t, s, e, store.New)
		seqs = append(seqs, e.Seq)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		p := tx.Bucket([]byte("pending"))
		rec := bytes.Clone(p.Get(seqKey(seqs[0])))
		rec[len(rec)-2] ^= 0x40
		return p.Put(seqKey(seqs[0]), rec)
	})
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// startRecoverChild starts TestRecoverChild on path, to die at step crash
// (none when empty), with salvage transactions of txBytes (0: the default).
func startRecoverChild(t *testing.T, path, crash string, txBytes int) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRecoverChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), recoverChildPath+"="+path, recoverChildCrash+"="+crash,
		fmt.Sprintf("%s=%d", recoverChildTxBytes, txBytes))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &out
}

// killedBySIGKILL reports whether err, from cmd.Wait, says the process died of
// SIGKILL.
func killedBySIGKILL(err error) bool {
	var exit *exec.ExitError
	return errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
}

// checkRestart opens path as the next start would and checks that the 49
// readable pending requests of damagedJournal are all there and its n completed
// keys too, that the salvage left no temporary file, and that a damaged copy
// stays aside.
func checkRestart(t *testing.T, path string, n int, wantRecovery bool) {
	t.Helper()
	s, rec, err := store.OpenOrRecover(path, storetest.Options(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if (rec != nil) != wantRecovery {
		t.Errorf("restart after the kill: Recovery %v, want %v", rec != nil, wantRecovery)
	}
	pending, err := s.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 49 {
		t.Errorf("after a crash during the salvage: %d pending requests recovered, want 49 (acknowledged requests lost)", len(pending))
	}
	if res, err := s.Lookup(key(5)); err != nil || res.Dup != store.DupPending {
		t.Errorf("Lookup of acknowledged pending request %s = %v, %v; want dup-pending", key(5), res.Dup, err)
	}
	if st := s.Stats(); st.Done != n {
		t.Errorf("after a crash during the salvage: %d completed keys, want %d", st.Done, n)
	}
	if res, err := s.Lookup(key(1000 + n - 1)); err != nil || res.Dup != store.DupDone {
		t.Errorf("Lookup of completed request %s = %v, %v; want dup-done", key(1000+n-1), res.Dup, err)
	}
	if _, err := os.Lstat(path + ".salvage"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.salvage is left after the restart (%v)", path, err)
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if len(aside) == 0 {
		t.Fatalf("no %s.corrupt-* after the restart", path)
	}
	if rep, err := store.Inspect(aside[0]); err != nil || !rep.Damaged() {
		t.Errorf("Inspect(%s) = %v, %v; want the damaged journal", aside[0], rep, err)
	}
}

// A gateway killed (kill -9, OOM, power loss, systemd's stop timeout) while
// OpenOrRecover salvages a damaged journal must lose nothing: the next start
// salvages it again. Before, the damaged file was renamed aside first and the
// new journal written at path, so the next start found nothing there (a fresh
// journal) or the half-written new journal, which verified as healthy, and
// every pending request was lost.
func TestCrashDuringSalvage(t *testing.T) {
	// 400 completed keys with 64 KiB replies (25 MiB): the child's salvage,
	// with its fsync, takes about 0.4 s (4 s with -race) on a busy 2-core box,
	// so the kill nearly always lands in it.
	const n = 400
	path := filepath.Join(t.TempDir(), "journal.db")
	damagedJournal(t, path, n, 64<<10, 50)

	// The gateway starts and is killed as soon as it begins writing the salvage.
	cmd, out := startRecoverChild(t, path, "", 0)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Lstat(path + ".salvage"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("the child never began the salvage:\n%s", out.Bytes())
		}
		time.Sleep(200 * time.Microsecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	if err := cmd.Wait(); !killedBySIGKILL(err) {
		t.Skipf("the child finished its salvage before the kill (%v): no crash to test\n%s", err, out.Bytes())
	}
	if rep, err := store.Inspect(path); err != nil || !rep.Damaged() {
		t.Errorf("after the kill, Inspect(%s) = %v, %v; want the damaged journal", path, rep, err)
	}
	// systemd restarts the gateway.
	checkRestart(t, path, n, true)
}

// The same, killed at each step of the salvage in turn: after a transaction of
// the salvage (they are made small here), once it is written, once the damaged
// file has its .corrupt- name, and once the new journal is renamed into place.
func TestCrashAtEachSalvageStep(t *testing.T) {
	const n = 100
	orig := filepath.Join(t.TempDir(), "journal.db")
	damagedJournal(t, orig, n, 16<<10, 50)
	for _, step := range []string{"salvage-commit", "salvaged", "linked", "renamed"} {
		t.Run(step, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "journal.db")
			copyFile(t, orig, path)
			cmd, out := startRecoverChild(t, path, step, 256<<10)
			if err := cmd.Wait(); !killedBySIGKILL(err) {
				t.Fatalf("the child did not die at step %s (%v):\n%s", step, err, out.Bytes())
			}
			renamed := step == "renamed"
			rep, err := store.Inspect(path)
			if err != nil || rep.Damaged() != !renamed {
				t.Errorf("after the kill, Inspect(%s) = %v, %v; want damaged %v", path, rep, err, !renamed)
			}
			checkRestart(t, path, n, !renamed)
		})
	}
}

// Where the file system refuses hard links, the damaged journal is copied to
// its .corrupt- name.
func TestSalvageCopiesWhenLinkFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	damaged := damagedJournal(t, path, 0, 0, 3)
	store.SetLinkFile(t, func(oldname, newname string) error {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: syscall.EPERM}
	})
	s, rec, err := store.OpenOrRecover(path, storetest.Options(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if rec == nil {
		t.Fatal("no Recovery for a damaged journal")
	}
	if rec.Pending != 2 || rec.Lost != 1 {
		t.Errorf("Recovery: %s; want 2 pending, 1 lost", rec.Summary())
	}
	if b, err := os.ReadFile(rec.MovedTo); err != nil || !bytes.Equal(b, damaged) {
		t.Errorf("%s is not a copy of the damaged journal (%v)", rec.MovedTo, err)
	}
	if _, err := os.Lstat(path + ".salvage"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.salvage is left (%v)", path, err)
	}
}

// A salvage that fails leaves the damaged journal at path, and nothing beside
// it: the next start salvages it.
func TestFailedSalvageLeavesTheJournal(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "journal.db")
	damaged := damagedJournal(t, path, 0, 0, 3)
	store.SetLinkFile(t, func(oldname, newname string) error {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: syscall.EEXIST}
	})
	if s, _, err := store.OpenOrRecover(path, storetest.Options(t)); err == nil {
		s.Close()
		t.Fatal("OpenOrRecover succeeded with a failing link")
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, damaged) {
		t.Errorf("%s is no longer the damaged journal (%v)", path, err)
	}
	if names, _ := filepath.Glob(filepath.Join(dir, "*")); len(names) != 1 {
		t.Errorf("after the failed salvage the directory holds %q, want only the journal", names)
	}
	store.SetLinkFile(t, os.Link)
	s, rec, err := store.OpenOrRecover(path, storetest.Options(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if rec == nil || rec.Pending != 2 {
		t.Errorf("the next start: Recovery %v, want 2 pending salvaged", rec)
	}
}
