package store

import (
	"bytes"
	"fmt"
	"testing"
)

// doneSet compares keys byte for byte, in order or out of it (a damaged page),
// and keeps keys longer than its chunks.
func TestDoneSet(t *testing.T) {
	long := bytes.Repeat([]byte("k"), doneChunk+10)
	for _, tc := range []struct {
		name string
		keys [][]byte
	}{
		{"ascending", [][]byte{[]byte("a"), []byte("b"), long, []byte("m"), []byte("z")}},
		{"out of order", [][]byte{[]byte("b"), []byte("d"), []byte("a"), long, []byte("c")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d doneSet
			for i, k := range tc.keys {
				if d.has(k) {
					t.Fatalf("%q is in the set before it was added", k[:1])
				}
				d.add(k)
				for j, k2 := range tc.keys {
					if got, want := d.has(k2), j <= i; got != want {
						t.Fatalf("after adding %d keys, has(%q...) = %v, want %v", i+1, k2[:1], got, want)
					}
				}
			}
			for _, k := range [][]byte{[]byte(""), []byte("aa"), long[:len(long)-1], []byte("zz")} {
				if d.has(k) {
					t.Errorf("has(%q) for a key never added", fmt.Sprintf("%.4s", k))
				}
			}
		})
	}
}
