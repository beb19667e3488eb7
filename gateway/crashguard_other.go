//go:build !unix

package gateway

import "os"

// mapFile is a buffer where the file cannot be mapped: flush writes it.
func mapFile(_ *os.File, size int) ([]byte, error) { return make([]byte, size), nil }

func unmapFile([]byte) error { return nil }

// flush writes the record's first n bytes (a system call per write).
func (g *crashGuard) flush(n int) { g.f.WriteAt(g.mem[:n], 0) }
