//go:build unix

package gateway

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The in-flight file's blocks are allocated before it is mapped: a store into
// a mapped hole that the file system cannot back (a full disk, a full tmpfs)
// is a SIGBUS, which kills the process at every start while the disk is full,
// where the gateway otherwise keeps running (the journal refuses requests
// with overload). Written, the file takes its space when it opens, and a full
// disk is an error there: the gateway runs without the guard.
func TestCrashGuardFileIsAllocated(t *testing.T) {
	dir := t.TempDir()
	size := crashHeader + 8*32
	// The same bytes written as a plain file: where even that reports no
	// blocks (a file system that stores zeros as holes, or does not count
	// them), the test cannot tell.
	probe := filepath.Join(dir, "probe")
	if err := os.WriteFile(probe, append([]byte(crashMagic), make([]byte, size-len(crashMagic))...), 0o600); err != nil {
		t.Fatal(err)
	}
	blocks := func(f *os.File) int64 {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Blocks)
	}
	pf, err := os.Open(probe)
	if err != nil {
		t.Fatal(err)
	}
	want := blocks(pf)
	pf.Close()
	if want == 0 {
		t.Skip("this file system reports no blocks for a written file")
	}
	var atMap int64 = -1
	defer func(m func(*os.File, int) ([]byte, error)) { mapInflight = m }(mapInflight)
	mapInflight = func(f *os.File, size int) ([]byte, error) {
		atMap = blocks(f) // before any store into the mapping
		return mapFile(f, size)
	}
	g, err := openCrashGuard(filepath.Join(dir, "j.db.inflight"), 32)
	if err != nil {
		t.Fatal(err)
	}
	defer g.close()
	if atMap < want {
		t.Errorf("the in-flight file had %d blocks allocated when mapped, a written one %d: the first store into its mapping allocates (SIGBUS on a full disk)", atMap, want)
	}
	if keys, err := readInflight(g.f.Name()); err != nil || len(keys) != 0 {
		t.Errorf("a new guard records %v (%v), want no batch", keys, err)
	}
}
