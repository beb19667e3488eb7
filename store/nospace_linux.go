package store

import "syscall"

// diskRoom reports whether the file system holding path has at least n bytes
// free for this process; true when it cannot tell.
func diskRoom(path string, n int64) bool {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return true
	}
	return st.Bavail*uint64(st.Bsize) >= uint64(n)
}
