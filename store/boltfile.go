package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
)

// This file reads a bbolt file (file format version 2, as written by
// go.etcd.io/bbolt v1.3 to v1.5) with ordinary bounds-checked reads, never
// through bbolt or mmap, so a damaged file yields errors instead of the panics
// and faults bbolt raises on corrupt pages (some in goroutines of its own, where
// no recover can reach them). OpenOrRecover and Inspect use it to verify a file
// before handing it to bbolt, and to salvage what is readable from one that
// fails.
//
// The layout it relies on: the file is a sequence of pages of the size recorded
// in the meta pages (0 and 1). Every page starts with a 16-byte header: id
// (uint64), flags (uint16), count (uint16), overflow (uint32, the number of
// further pages the page spans). A meta page's body holds magic, version, page
// size, flags (uint32 each), the root bucket (root page id, sequence: uint64
// each), the freelist page id, the high-water mark (pgid: pages in use below
// it), the transaction id and an FNV-64a checksum of the fields before it
// (uint64 each). A branch page holds count elements of {pos, ksize uint32; pgid
// uint64}, a leaf page count elements of {flags, pos, ksize, vsize uint32}; pos
// is the offset of the element's key from the element itself, and a leaf's value
// follows its key. A leaf element with flag 1 is a bucket: its value is {root
// page id, sequence uint64} followed, when the root is 0, by the bucket's own
// leaf page (an inline bucket). bbolt writes these fields in the machine's byte
// order.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	pgidNoFreelist   = ^uint64(0)
	pageHeaderSize   = 16
	pageElemSize     = 16 // branch and leaf elements alike
	metaBodySize     = 64
	metaSummedSize   = 56 // the meta fields the checksum covers
	bucketHeaderSize = 16

	flagBranch   = 0x01
	flagLeaf     = 0x02
	flagMeta     = 0x04
	flagFreelist = 0x10
	flagBucket   = 0x01 // leaf element flag

	minPageSize  = 1 << 10
	maxPageSize  = 1 << 24
	maxTreeDepth = 64
)

// ne is the byte order bbolt used to write the file: the machine's.
var ne = binary.NativeEndian

// boltMeta is a meta page's body.
type boltMeta struct {
	pageSize uint32
	root     uint64 // the root bucket's page
	rootSeq  uint64
	freelist uint64
	pgid     uint64 // high-water mark: pages [0, pgid) are in the file's data
	txid     uint64
}

// errMetaChecksum is parseMeta's error for a meta page that is plausible but
// fails its checksum.
var errMetaChecksum = errors.New("meta page checksum mismatch")

// parseMeta validates and decodes a meta page body (the bytes after the page
// header). For a page whose fields are plausible but whose checksum fails it
// returns the fields and errMetaChecksum.
func parseMeta(b []byte) (boltMeta, error) {
	if len(b) < metaBodySize {
		return boltMeta{}, errors.New("short meta page")
	}
	if m := ne.Uint32(b[0:]); m != boltMagic {
		return boltMeta{}, fmt.Errorf("not a bbolt meta page (magic %#x)", m)
	}
	if v := ne.Uint32(b[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("bbolt file format version %d, want %d", v, boltVersion)
	}
	m := boltMeta{
		pageSize: ne.Uint32(b[8:]),
		root:     ne.Uint64(b[16:]),
		rootSeq:  ne.Uint64(b[24:]),
		freelist: ne.Uint64(b[32:]),
		pgid:     ne.Uint64(b[40:]),
		txid:     ne.Uint64(b[48:]),
	}
	switch {
	case m.pageSize < minPageSize || m.pageSize > maxPageSize || m.pageSize&(m.pageSize-1) != 0:
		return m, fmt.Errorf("meta page records page size %d", m.pageSize)
	case m.pgid < 3 || m.root < 2 || m.root >= m.pgid:
		return m, fmt.Errorf("meta page records root page %d and high-water mark %d", m.root, m.pgid)
	case m.freelist != pgidNoFreelist && (m.freelist < 2 || m.freelist >= m.pgid):
		return m, fmt.Errorf("meta page records freelist page %d and high-water mark %d", m.freelist, m.pgid)
	}
	h := fnv.New64a()
	h.Write(b[:metaSummedSize])
	if sum := ne.Uint64(b[metaSummedSize:]); sum != h.Sum64() {
		return m, errMetaChecksum
	}
	return m, nil
}

// problems collects what a verification found, up to a bound.
type problems struct {
	list []string
	more int // problems beyond the bound, counted only
}

// maxProblems bounds problems.list.
const maxProblems = 50

func (p *problems) add(format string, args ...any) {
	if len(p.list) < maxProblems {
		p.list = append(p.list, fmt.Sprintf(format, args...))
	} else {
		p.more++
	}
}

func (p *problems) empty() bool { return len(p.list) == 0 && p.more == 0 }

// boltFile is a bbolt file opened for verification and salvage.
type boltFile struct {
	r        io.ReaderAt
	size     int64
	pageSize int
	meta     boltMeta
	metaPage int // 0 or 1: the meta page in use (the valid one with the higher txid)
	probs    *problems

	// reached marks the pages reached by the walks so far (a page reached twice
	// is damage); used counts them.
	reached []uint64
	used    int64
	// unreadable counts the pages that could not be read: whatever was below
	// them is unknown.
	unreadable int
	// bufs holds one page buffer per tree depth, reused between pages.
	bufs [][]byte
}

// openBoltFile reads the meta pages of the bbolt file in r (size bytes long).
// It returns an error when there is no tree to walk: an empty file, or no meta
// page that is valid, or at least plausible but for its checksum (the walk then
// starts from the plausible one, reported). Lesser damage is added to probs.
func openBoltFile(r io.ReaderAt, size int64, probs *problems) (*boltFile, error) {
	if size == 0 {
		return nil, errors.New("the file is empty (zero bytes)")
	}
	f := &boltFile{r: r, size: size, probs: probs}
	var metas [2]boltMeta
	var errs [2]error
	var hdrs [2][pageHeaderSize]byte
	metas[0], hdrs[0], errs[0] = f.readMeta(0)
	if errs[0] == nil || errors.Is(errs[0], errMetaChecksum) {
		metas[1], hdrs[1], errs[1] = f.readMeta(int64(metas[0].pageSize))
	} else {
		// Find page 1 by trying every page size, as bbolt does.
		errs[1] = errors.New("not found")
		for ps := int64(minPageSize); ps <= maxPageSize && ps+pageHeaderSize+metaBodySize <= size; ps <<= 1 {
			if m, h, err := f.readMeta(ps); (err == nil || errors.Is(err, errMetaChecksum)) && int64(m.pageSize) == ps {
				metas[1], hdrs[1], errs[1] = m, h, err
				break
			}
		}
	}
	// Use the valid meta page with the higher transaction id, as bbolt does; when
	// neither is valid, the plausible one with the higher id.
	usable := func(i int, strict bool) bool {
		return errs[i] == nil || (!strict && errors.Is(errs[i], errMetaChecksum))
	}
	strict := usable(0, true) || usable(1, true)
	switch {
	case !usable(0, strict) && !usable(1, strict):
		return nil, fmt.Errorf("no valid meta page (page 0: %v; page 1: %v): not a bbolt file, or its header is destroyed", errs[0], errs[1])
	case !usable(0, strict):
		f.metaPage = 1
	case usable(1, strict) && metas[1].txid > metas[0].txid:
		f.metaPage = 1
	}
	if !strict {
		probs.add("both meta pages fail their checksum; reading the tree of meta page %d (transaction %d) regardless", f.metaPage, metas[f.metaPage].txid)
	}
	for i, err := range errs {
		if err != nil && strict {
			probs.add("meta page %d is invalid (%v); using meta page %d (transaction %d)", i, err, f.metaPage, metas[f.metaPage].txid)
		}
		// The header is outside the checksum; bbolt's Check panics on a bad one.
		if id, flags := ne.Uint64(hdrs[i][0:]), ne.Uint16(hdrs[i][8:]); err == nil && (id != uint64(i) || flags != flagMeta) {
			probs.add("meta page %d has a damaged page header (id %d, flags %#x)", i, id, flags)
		}
	}
	f.meta = metas[f.metaPage]
	f.pageSize = int(f.meta.pageSize)
	if errs[0] == nil && errs[1] == nil && metas[0].pageSize != metas[1].pageSize {
		probs.add("meta pages disagree on the page size (%d, %d)", metas[0].pageSize, metas[1].pageSize)
	}
	if hw := f.highWater(); hw > size {
		probs.add("the file is %d bytes, shorter than its %d pages in use (%d bytes): truncated", size, f.meta.pgid, hw)
	}
	n := min(f.meta.pgid, uint64(size)/uint64(f.pageSize)+1)
	f.reached = make([]uint64, (n+63)/64)
	f.mark(0)
	f.mark(1)
	return f, nil
}

// highWater is the size of the pages below the high-water mark, in bytes.
func (f *boltFile) highWater() int64 {
	if f.meta.pgid > uint64(1<<62)/uint64(f.pageSize) {
		return 1 << 62
	}
	return int64(f.meta.pgid) * int64(f.pageSize)
}

// readMeta reads the meta page at off: its body, and its page header.
func (f *boltFile) readMeta(off int64) (boltMeta, [pageHeaderSize]byte, error) {
	var b [pageHeaderSize + metaBodySize]byte
	if n, err := f.r.ReadAt(b[:], off); n < len(b) {
		return boltMeta{}, [pageHeaderSize]byte{}, fmt.Errorf("reading at %d: %w", off, errOr(err, io.ErrUnexpectedEOF))
	}
	m, err := parseMeta(b[pageHeaderSize:])
	return m, [pageHeaderSize]byte(b[:pageHeaderSize]), err
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// mark records page id as reached and reports whether it was reached before.
// Pages beyond the bitmap (beyond the end of the file) are never marked.
func (f *boltFile) mark(id uint64) (again bool) {
	w := id / 64
	if w >= uint64(len(f.reached)) {
		return false
	}
	bit := uint64(1) << (id % 64)
	again = f.reached[w]&bit != 0
	if !again {
		f.reached[w] |= bit
		f.used++
	}
	return again
}

// readPage reads page id and its overflow pages into a buffer for depth. Bytes
// beyond the end of the file read as zeros, as bbolt would see them; the caller
// has been told (a problem) when that happens. The page is checked to be a
// branch or leaf page (flags) whose elements fit in it.
func (f *boltFile) readPage(id uint64, depth int) ([]byte, error) {
	if id < 2 || id >= f.meta.pgid {
		return nil, fmt.Errorf("page id %d is outside the pages in use [2, %d)", id, f.meta.pgid)
	}
	off := int64(id) * int64(f.pageSize)
	if off >= f.size {
		return nil, fmt.Errorf("page %d starts at byte %d, beyond the end of the file (%d bytes)", id, off, f.size)
	}
	// Read the first page in one go; the header says how many more follow.
	p, err := f.readAt(depth, 0, f.pageSize, id, off)
	if err != nil {
		return nil, err
	}
	hdr := p[:pageHeaderSize:pageHeaderSize]
	flags, count, overflow := ne.Uint16(hdr[8:]), int(ne.Uint16(hdr[10:])), uint64(ne.Uint32(hdr[12:]))
	badID, badFlags := ne.Uint64(hdr[0:]) != id, flags != flagBranch && flags != flagLeaf
	if badID && badFlags {
		return nil, fmt.Errorf("page %d has a damaged header (it names page %d, flags %#x)", id, ne.Uint64(hdr[0:]), flags)
	}
	if id+overflow >= f.meta.pgid {
		return nil, fmt.Errorf("page %d spans %d overflow pages, beyond the pages in use (%d)", id, overflow, f.meta.pgid)
	}
	n := (1 + int64(overflow)) * int64(f.pageSize)
	if off+n > f.size+int64(f.pageSize) {
		// More than a partial last page is missing: a damaged overflow count, or a
		// truncated file; either way the page cannot be read.
		return nil, fmt.Errorf("page %d spans %d bytes, beyond the end of the file", id, n)
	}
	if int64(pageHeaderSize+count*pageElemSize) > n {
		return nil, fmt.Errorf("page %d: %d elements do not fit in %d bytes", id, count, n)
	}
	if overflow > 0 {
		if p, err = f.readAt(depth, f.pageSize, int(n), id, off); err != nil {
			return nil, err
		}
		hdr = p[:pageHeaderSize:pageHeaderSize]
	}
	if badID {
		f.probs.add("page %d identifies itself as page %d (a damaged header, or a damaged reference to it)", id, ne.Uint64(hdr[0:]))
	}
	if badFlags {
		// A damaged header with a readable body: take the page type whose
		// elements all make sense, if exactly one does.
		leaf, branch := f.plausible(p, flagLeaf), f.plausible(p, flagBranch)
		if leaf == branch {
			return nil, fmt.Errorf("page %d has flags %#x, want a branch (%#x) or leaf (%#x) page", id, flags, flagBranch, flagLeaf)
		}
		flags = flagLeaf
		if branch {
			flags = flagBranch
		}
		f.probs.add("page %d has damaged flags %#x; its elements read as a %s page", id, ne.Uint16(hdr[8:]), map[uint16]string{flagLeaf: "leaf", flagBranch: "branch"}[flags])
		ne.PutUint16(p[8:], flags) // in the buffer only
	}
	for i := uint64(0); i <= overflow; i++ {
		if f.mark(id + i) {
			return nil, fmt.Errorf("page %d is reached twice (a cycle or a damaged page reference)", id+i)
		}
	}
	return p, nil
}

// readAt fills bytes [from, to) of the buffer for depth with the page at file
// offset off (page id), keeping bytes [0, from), and returns buffer[:to]. Bytes
// beyond the end of the file read as zeros (reported once).
func (f *boltFile) readAt(depth, from, to int, id uint64, off int64) ([]byte, error) {
	for len(f.bufs) <= depth {
		f.bufs = append(f.bufs, nil)
	}
	if cap(f.bufs[depth]) < to {
		b := make([]byte, to)
		copy(b, f.bufs[depth][:from])
		f.bufs[depth] = b
	}
	p := f.bufs[depth][:to]
	got, err := f.r.ReadAt(p[from:], off+int64(from))
	if got < to-from {
		if off+int64(from+got) < f.size {
			return nil, fmt.Errorf("page %d: %w", id, errOr(err, io.ErrUnexpectedEOF))
		}
		clear(p[from+got:]) // the file ends inside the page
		f.probs.add("page %d is cut short by the end of the file; its last %d bytes read as zeros", id, to-from-got)
	}
	return p, nil
}

// plausible reports whether every element of page p makes sense for a page of
// type flags: in bounds, keys in strictly ascending order, leaf flags known,
// child pages in range.
func (f *boltFile) plausible(p []byte, flags uint16) bool {
	count := int(ne.Uint16(p[10:]))
	if count == 0 {
		return false
	}
	var prev []byte
	for i := range count {
		off := pageHeaderSize + i*pageElemSize
		var start, end uint64
		if flags == flagLeaf {
			if ne.Uint32(p[off:])&^flagBucket != 0 {
				return false
			}
			start = uint64(off) + uint64(ne.Uint32(p[off+4:]))
			end = start + uint64(ne.Uint32(p[off+8:]))
			if end+uint64(ne.Uint32(p[off+12:])) > uint64(len(p)) {
				return false
			}
		} else {
			start = uint64(off) + uint64(ne.Uint32(p[off:]))
			end = start + uint64(ne.Uint32(p[off+4:]))
			if c := ne.Uint64(p[off+8:]); c < 2 || c >= f.meta.pgid {
				return false
			}
		}
		if end <= start || end > uint64(len(p)) || (i > 0 && bytes.Compare(p[start:end], prev) <= 0) {
			return false
		}
		prev = p[start:end]
	}
	return true
}

// elem is one leaf element.
type elem struct {
	flags uint32
	key   []byte
	value []byte
}

// leafElems decodes the elements of leaf page p (the bytes of page id, or an
// inline page when id is 0). Elements out of bounds are reported (where names
// the bucket) and skipped; elements out of key order or with unknown flags are
// reported and still returned (with the unknown flags cleared): the journal's
// records carry their own checksums. Keys and values alias p.
func (f *boltFile) leafElems(where string, id uint64, p []byte, lo, hi []byte, out []elem) []elem {
	count := int(ne.Uint16(p[10:]))
	var prev []byte
	for i := range count {
		off := pageHeaderSize + i*pageElemSize
		flags := ne.Uint32(p[off:])
		pos, ksize, vsize := uint64(ne.Uint32(p[off+4:])), uint64(ne.Uint32(p[off+8:])), uint64(ne.Uint32(p[off+12:]))
		start := uint64(off) + pos
		if ksize == 0 || start+ksize+vsize > uint64(len(p)) {
			f.probs.add("%s: %s element %d: key (%d bytes) and value (%d bytes) at offset %d overrun the page", where, pageName(id), i, ksize, vsize, start)
			continue
		}
		if flags&^flagBucket != 0 {
			f.probs.add("%s: %s element %d has unknown flags %#x", where, pageName(id), i, flags)
			flags &= flagBucket
		}
		k := p[start : start+ksize]
		v := p[start+ksize : start+ksize+vsize]
		switch {
		case i == 0 && lo != nil && bytes.Compare(k, lo) < 0,
			i > 0 && bytes.Compare(k, prev) <= 0,
			hi != nil && bytes.Compare(k, hi) >= 0:
			f.probs.add("%s: %s element %d: key %x is out of order", where, pageName(id), i, k)
		}
		prev = k
		out = append(out, elem{flags: flags, key: k, value: v})
	}
	return out
}

func pageName(id uint64) string {
	if id == 0 {
		return "inline page"
	}
	return fmt.Sprintf("leaf page %d", id)
}

// walkTree calls fn for each leaf element of the B+tree rooted at page id,
// whose keys must lie in [lo, hi) (nil: unbounded). An unreadable page is
// reported (where names the bucket) and skipped with everything below it. fn
// must copy what it keeps: keys and values alias a reused buffer.
func (f *boltFile) walkTree(where string, id uint64, lo, hi []byte, depth int, fn func(e elem)) {
	if depth > maxTreeDepth {
		f.probs.add("%s: the tree is deeper than %d pages at page %d (a cycle?)", where, maxTreeDepth, id)
		f.unreadable++
		return
	}
	p, err := f.readPage(id, depth)
	if err != nil {
		f.probs.add("%s: %v", where, err)
		f.unreadable++
		return
	}
	if ne.Uint16(p[8:]) == flagLeaf {
		for _, e := range f.leafElems(where, id, p, lo, hi, nil) {
			fn(e)
		}
		return
	}
	// A branch page: check every element before descending, since the buffer of
	// this depth must survive the children's reads (they use deeper buffers).
	type child struct {
		key []byte
		id  uint64
	}
	count := int(ne.Uint16(p[10:]))
	children := make([]child, 0, count)
	for i := range count {
		off := pageHeaderSize + i*pageElemSize
		pos, ksize, cid := uint64(ne.Uint32(p[off:])), uint64(ne.Uint32(p[off+4:])), ne.Uint64(p[off+8:])
		start := uint64(off) + pos
		if ksize == 0 || start+ksize > uint64(len(p)) {
			f.probs.add("%s: branch page %d element %d: key (%d bytes) at offset %d overruns the page", where, id, i, ksize, start)
			f.unreadable++
			continue
		}
		k := p[start : start+ksize]
		if n := len(children); (n == 0 && lo != nil && bytes.Compare(k, lo) < 0) ||
			(n > 0 && bytes.Compare(k, children[n-1].key) <= 0) || (hi != nil && bytes.Compare(k, hi) >= 0) {
			f.probs.add("%s: branch page %d element %d: key %x is out of order; skipping its child page %d", where, id, i, k, cid)
			f.unreadable++
			continue
		}
		children = append(children, child{key: k, id: cid})
	}
	for i, c := range children {
		next := hi
		if i+1 < len(children) {
			next = children[i+1].key
		}
		f.walkTree(where, c.id, c.key, next, depth+1, fn)
	}
}

// walkBucket calls fn for each element of the bucket whose header (the bucket's
// value in its parent) is hdr. It returns the bucket's sequence.
func (f *boltFile) walkBucket(name string, hdr []byte, fn func(e elem)) (seq uint64, ok bool) {
	if len(hdr) < bucketHeaderSize {
		f.probs.add("bucket %s: %d-byte bucket header", name, len(hdr))
		return 0, false
	}
	root, seq := ne.Uint64(hdr[0:]), ne.Uint64(hdr[8:])
	if root != 0 {
		f.walkTree(name, root, nil, nil, 1, fn)
		return seq, true
	}
	p := hdr[bucketHeaderSize:]
	switch {
	case len(p) < pageHeaderSize:
		f.probs.add("bucket %s: inline page of %d bytes", name, len(p))
		return seq, false
	case ne.Uint16(p[8:]) != flagLeaf:
		f.probs.add("bucket %s: inline page has flags %#x, want a leaf page", name, ne.Uint16(p[8:]))
		return seq, false
	case pageHeaderSize+int(ne.Uint16(p[10:]))*pageElemSize > len(p):
		f.probs.add("bucket %s: inline page: %d elements do not fit in %d bytes", name, ne.Uint16(p[10:]), len(p))
		return seq, false
	}
	for _, e := range f.leafElems(name, 0, p, nil, nil, nil) {
		fn(e)
	}
	return seq, true
}

// rootBuckets returns the top-level buckets: name to a copy of the bucket header.
func (f *boltFile) rootBuckets() map[string][]byte {
	out := map[string][]byte{}
	f.walkTree("root", f.meta.root, nil, nil, 0, func(e elem) {
		if e.flags&flagBucket == 0 {
			f.probs.add("root: key %q is not marked as a bucket", e.key)
		}
		out[string(e.key)] = bytes.Clone(e.value)
	})
	return out
}

// checkFreelist reads a persisted freelist page, if the meta page names one
// (the store does not persist it, but bbolt reads one when it is there): its
// header, its ids (in range, sorted, not reached from the tree), and marks its
// pages as in use.
func (f *boltFile) checkFreelist() {
	if f.meta.freelist == pgidNoFreelist {
		return
	}
	id := f.meta.freelist
	off := int64(id) * int64(f.pageSize)
	var hdr [pageHeaderSize]byte
	if n, _ := f.r.ReadAt(hdr[:], off); n < len(hdr) || ne.Uint64(hdr[0:]) != id || ne.Uint16(hdr[8:]) != flagFreelist {
		f.probs.add("freelist page %d is unreadable or not a freelist page", id)
		return
	}
	overflow := uint64(ne.Uint32(hdr[12:]))
	n := (1 + int64(overflow)) * int64(f.pageSize)
	if id+overflow >= f.meta.pgid || off+n > f.size {
		f.probs.add("freelist page %d spans %d overflow pages, beyond the pages in use or the file", id, overflow)
		return
	}
	p := make([]byte, n)
	if got, err := f.r.ReadAt(p, off); int64(got) < n {
		f.probs.add("freelist page %d: %v", id, errOr(err, io.ErrUnexpectedEOF))
		return
	}
	first, count := 0, uint64(ne.Uint16(hdr[10:]))
	if count == 0xFFFF { // the count is the first element
		first, count = 1, ne.Uint64(p[pageHeaderSize:])
	}
	if count > uint64(n-pageHeaderSize)/8-uint64(first) {
		f.probs.add("freelist page %d: %d ids do not fit in %d bytes", id, count, n)
		return
	}
	prev := uint64(1)
	for i := range count {
		pg := ne.Uint64(p[pageHeaderSize+8*(uint64(first)+i):])
		if pg <= prev || pg >= f.meta.pgid {
			f.probs.add("freelist page %d: free page id %d is out of order or out of range", id, pg)
			return
		}
		prev = pg
	}
	for i := uint64(0); i <= overflow; i++ {
		if f.mark(id + i) {
			f.probs.add("freelist page %d is also reached from the tree", id+i)
		}
	}
}
