package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"hash/maphash"
	"maps"
	"math"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// maxLostKeys bounds Report.LostKeys.
const maxLostKeys = 20

// Report is what a verification of a journal file found (Inspect, and
// OpenOrRecover before it trusts a file), and what a salvage kept from it
// (Salvage, and OpenOrRecover after damage). The counts of kept entries are the
// same in both cases: what is readable and consistent is exactly what a salvage
// copies.
type Report struct {
	// Path is the file inspected.
	Path string
	// FileSize is its size in bytes.
	FileSize int64
	// PageSize is bbolt's page size for the file (0 when no meta page is valid).
	PageSize int
	// TxID is the transaction of the meta page in use.
	TxID uint64
	// HighWaterBytes is the size of the pages below bbolt's high-water mark: the
	// file's extent as bbolt sees it (the file itself may be longer, preallocated).
	HighWaterBytes int64
	// UsedBytes is the size of the pages reached from the meta page in use: live
	// data. FileSize - UsedBytes is free space that bbolt reuses but never gives
	// back to the file system; compaction does.
	UsedBytes int64

	// Buckets counts, for each of the journal's buckets (meta, keys, pending,
	// outbox, expiry), the records read and those that fail to decode.
	Buckets []BucketReport

	// Pending, Outbox and Done count the readable, consistent entries: pending
	// requests, replies in the outbox, and completed keys remembered for duplicate
	// suppression. A salvage keeps exactly these.
	Pending, Outbox, Done int
	// Lost counts the pending requests and outbox replies known to have existed
	// (from the key index or a record's page) that cannot be read. A salvage
	// drops them and releases their keys, so a redelivery runs as new. A request
	// of which one readable record is kept is not lost (a stale copy of it
	// dropped, or its record the key index names unreadable while another is
	// readable: the problems say which).
	Lost int
	// LostKeys names up to 20 of the lost entries, when the key index still
	// names them.
	LostKeys []Key
	// UnreadablePages counts pages (with everything below them) that could not be
	// read. When it is not zero, Lost is a lower bound: what those pages held is
	// unknown.
	UnreadablePages int

	// Problems describes the damage found, at most 50 items; MoreProblems counts
	// the rest. A file is healthy when there are none.
	Problems     []string
	MoreProblems int
}

// BucketReport counts one bucket's records.
type BucketReport struct {
	Name string
	// Records is the number of key/value pairs read; Corrupt those among them
	// that fail to decode or do not belong (a record under the wrong key, a
	// nested bucket, a stale second record of a request: see keptRecord). A
	// salvage drops them.
	Records, Corrupt int
	// Missing is set when the bucket itself is absent or unreadable.
	Missing bool
}

// Damaged reports whether the verification found any problem.
func (r *Report) Damaged() bool { return len(r.Problems) > 0 || r.MoreProblems > 0 }

// FreeBytes is the part of the file not in use by live data.
func (r *Report) FreeBytes() int64 { return max(0, r.FileSize-r.UsedBytes) }

// Summary is a one-line description: counts kept and lost, and the first problem.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d pending, %d outbox, %d done readable; %d lost", r.Pending, r.Outbox, r.Done, r.Lost)
	if r.UnreadablePages > 0 {
		fmt.Fprintf(&b, " (at least: %d unreadable pages)", r.UnreadablePages)
	}
	if n := len(r.Problems) + r.MoreProblems; n > 0 {
		fmt.Fprintf(&b, "; %d problems, first: %s", n, r.Problems[0])
	}
	return b.String()
}

func (r *Report) bucket(name []byte) *BucketReport {
	for i := range r.Buckets {
		if r.Buckets[i].Name == string(name) {
			return &r.Buckets[i]
		}
	}
	panic("store: no report for bucket " + string(name))
}

// Inspect verifies the journal file at path without changing it: bbolt's page
// structure (read without bbolt, so damage cannot crash the caller), then every
// record (format, checksum, key, consistency with the key index and the stored
// counts), then, if all that passes, bbolt's own Tx.Check. It never panics.
//
// It takes a shared lock on the file, so it fails with ErrLocked while a gateway
// has the journal open (the gateway verifies the journal itself at start-up;
// stop it, or inspect a copy). It returns ErrSchema for a journal of a newer
// format, and an error when the file cannot be opened or read. Damage is not an
// error: it is in the Report (Damaged).
func Inspect(path string) (*Report, error) {
	f, err := lockShared(path)
	if err != nil {
		return nil, fmt.Errorf("store: inspect %s: %w", path, err)
	}
	defer f.Close()
	rep, err := verifyFile(f, path, nil)
	if err != nil {
		return nil, fmt.Errorf("store: inspect %s: %w", path, err)
	}
	if !rep.Damaged() {
		p := problems{list: rep.Problems}
		boltCheck(path, &p)
		rep.Problems, rep.MoreProblems = p.list, p.more
	}
	return rep, nil
}

// Salvage copies every readable pending entry, outbox reply and completed key
// of the journal at src into a new journal at dst, rebuilding its key index,
// expiry records and counts, and returns what it kept and lost (see Report). It
// reads src without bbolt, so it works on files bbolt refuses or panics on; on
// a healthy file it amounts to a compaction. It never panics.
//
// dst must not exist. Salvage takes a shared lock on src (ErrLocked while a
// gateway uses it), returns ErrSchema for a journal of a newer format, and
// ErrDamaged when no meta page of src can be read (an empty file, not a bbolt
// file, or its header destroyed): nothing in it can be salvaged. On error it
// removes dst.
func Salvage(src, dst string) (*Report, error) {
	f, err := lockShared(src)
	if err != nil {
		return nil, fmt.Errorf("store: salvage %s: %w", src, err)
	}
	defer f.Close()
	if _, err := os.Lstat(dst); err == nil {
		return nil, fmt.Errorf("store: salvage: %s already exists", dst)
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: salvage: %w", err)
	}
	db, _, err := openDB(dst, out, Options{})
	if err != nil {
		os.Remove(dst)
		return nil, fmt.Errorf("store: salvage: %w", err)
	}
	rep, err := salvageInto(db, f, src)
	if err == nil && rep.PageSize == 0 {
		// No meta page (verifyFile reports why): an empty journal at dst would
		// pass for a salvage that lost nothing. (OpenOrRecover starts afresh from
		// such a file, keeping it aside.)
		err = fmt.Errorf("%w: %s: nothing to salvage", ErrDamaged, rep.Problems[0])
	}
	err = errors.Join(err, db.Close())
	if err != nil {
		os.Remove(dst)
		return nil, fmt.Errorf("store: salvage %s: %w", src, err)
	}
	return rep, nil
}

// salvageInto copies what is readable in src (a file the caller has locked)
// into db, a new, empty database.
func salvageInto(db *bolt.DB, src *os.File, path string) (*Report, error) {
	w, err := newSalvageWriter(db)
	if err != nil {
		return nil, err
	}
	rep, err := verifyFile(src, path, w)
	if err == nil {
		err = w.finish(counts{rep.Pending, rep.Outbox, rep.Done})
	}
	if err != nil {
		w.abort()
		return nil, err
	}
	return rep, nil
}

// verifyFile verifies the journal in f, read through bounds-checked reads only,
// and copies what is readable into w when w is not nil. Damage goes into the
// report; the error is for ErrSchema, an unreadable file (stat), or a failed
// write to w. A panic (a bug: the reads are bounds-checked) is reported as a
// problem.
func verifyFile(f *os.File, path string, w *salvageWriter) (rep *Report, err error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	rep = &Report{Path: path, FileSize: st.Size()}
	for _, name := range journalBuckets {
		rep.Buckets = append(rep.Buckets, BucketReport{Name: string(name)})
	}
	var probs problems
	defer func() {
		if p := recover(); p != nil {
			probs.add("internal error verifying the file: %v\n%s", p, debug.Stack())
			err = nil
			if w != nil {
				err = fmt.Errorf("%w: %v", ErrDamaged, p)
			}
		}
		if err != nil {
			rep = nil
			return
		}
		rep.Problems, rep.MoreProblems = probs.list, probs.more
	}()
	bf, err := openBoltFile(f, rep.FileSize, &probs)
	if err != nil {
		probs.add("%v", err)
		for i := range rep.Buckets {
			rep.Buckets[i].Missing = true
		}
		return rep, nil
	}
	rep.PageSize, rep.TxID, rep.HighWaterBytes = bf.pageSize, bf.meta.txid, bf.highWater()
	a := &analysis{
		bf: bf, rep: rep, probs: &probs, w: w,
		pendIdx: map[uint64]indexed{}, outIdx: map[uint64]indexed{},
		byKey: map[string]uint64{}, expiries: map[uint64]struct{}{},
		lost: map[uint64]struct{}{}, kept: map[string]keptRecord{}, // sized once the key index is read
	}
	if err := a.run(); err != nil {
		return nil, err
	}
	bf.checkFreelist()
	rep.UsedBytes = bf.used * int64(bf.pageSize)
	rep.UnreadablePages = bf.unreadable
	return rep, nil
}

// journalBuckets are the store's buckets, in the order of Report.Buckets.
var journalBuckets = [][]byte{bucketMeta, bucketKeys, bucketPending, bucketOutbox, bucketExpiry}

// analysis checks the journal's records in a boltFile, and copies the good ones.
type analysis struct {
	bf    *boltFile
	rep   *Report
	probs *problems
	w     *salvageWriter

	// From the key index: the key (encoded) and record of each pending and
	// outbox seq, each pending or outbox key's seq, and the completed keys. An
	// index entry leaves pendIdx or outIdx when the record it names is found.
	pendIdx, outIdx map[uint64]indexed
	byKey           map[string]uint64
	done            doneSet
	expiries        map[uint64]struct{} // expiryHash of each readable expiry record
	index           counts
	// lost holds the seqs of the entries that cannot be kept; kept, by key
	// (encoded), the pending or outbox record kept for it.
	lost   map[uint64]struct{}
	kept   map[string]keptRecord
	maxSeq uint64
	// From the meta bucket.
	schema []byte
	// bySlot is whether the key index is in arrival order, once decided
	// (keysBySlot).
	bySlot *bool
	// undecided holds the key records read before bySlot could be decided
	// (copies), read once it is.
	undecided []elem
	stored    *counts
}

// indexed is what the key index says of a pending or outbox seq: the key
// (encoded), and the key of the record in its bucket (seqKey, or outboxKey with
// the flush time the index holds).
type indexed struct{ kb, rec string }

// keptRecord is the record a verification keeps for one key. A request has one
// record (pending, or in the outbox) at a time, but a damaged branch can lead to
// an old page and with it a record the request no longer has: its pending
// record after Outbox moved it, or an outbox record a later Outbox replaced
// (under another flush time). Of two readable records of one request (same key,
// same seq) the one of higher rank is kept; between equals, the first one read
// (the outbox is read in its order: the earlier flush time).
type keptRecord struct {
	seq     uint64
	flush   uint64 // an outbox record's flush time as its key holds it (the first 8 bytes)
	rank    recordRank
	inIndex bool // the key index has an entry for the key (else a salvage re-indexes it)
}

// recordRank orders the records of one request by how surely they are its
// current one.
type recordRank int8

const (
	// rankPending: a pending record. Any outbox record of the request is newer:
	// Outbox writes one only when it moves the request out of pending, and
	// nothing moves a request back (so it outranks even a pending record the
	// key index names: that index entry is as old as the record).
	rankPending recordRank = iota + 1
	// rankUnsent, rankSent: an outbox record the key index does not name. A
	// reply marked sent may have reached the device, so every repeat must get
	// it; an unsent one was never handed out (it is stamped anew when it goes
	// out). Between two of a kind nothing says which is newer.
	rankUnsent
	rankSent
	// rankIndexed: the outbox record the key index names (its flush time and
	// seq), written in the same transaction as the index entry.
	rankIndexed
)

// bucket is the bucket the record is in.
func (r keptRecord) bucket() []byte {
	if r.rank == rankPending {
		return bucketPending
	}
	return bucketOutbox
}

// key is the record's key in its bucket.
func (r keptRecord) key() []byte {
	if r.rank == rankPending {
		return seqKey(r.seq)
	}
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(make([]byte, 0, 16), r.flush), r.seq)
}

func (r keptRecord) String() string {
	if r.rank == rankPending {
		return fmt.Sprintf("pending record %d", r.seq)
	}
	flush := "none"
	if n := int64(r.flush ^ 1<<63); n != math.MaxInt64 {
		flush = time.Unix(0, n).UTC().Format(time.RFC3339Nano)
	}
	how := map[recordRank]string{rankUnsent: "unsent", rankSent: "sent", rankIndexed: "the one the key index names"}[r.rank]
	return fmt.Sprintf("outbox record %d (flush time %s; %s)", r.seq, flush, how)
}

// doneSet holds the completed keys (encoded) a verification has read, to find
// one that appears twice, compared byte for byte: no two keys are ever taken
// for one (a hash of them alone would be, and device-chosen ids can be made to
// collide in a 64-bit hash). The keys are kept one after another in chunks of
// bytes (refs locate them: 12 bytes a key besides its own) and found through an
// open-addressing table of their refs (slots, 4 bytes each, at most half full)
// by a hash of their bytes under a seed of the set's own; a match in the table
// is confirmed on the bytes, so keys that collide cost time, never a wrong
// answer. In whatever order the keys come (a schema 1 index in key order,
// schema 2 in arrival order), a million keys of about 32 bytes hold 53 MB
// (BenchmarkDoneSet), where the sorted chunks this replaced held 45 MB for keys
// in order and a map 88 MB for keys in any other.
type doneSet struct {
	seed   maphash.Seed
	chunks [][]byte
	refs   []doneRef
	slots  []uint32 // 0: empty; else 1 + the key's index in refs
}

// doneRef locates one key of a doneSet in its chunks.
type doneRef struct{ chunk, off, n uint32 }

// doneChunk is the size of a doneSet's chunks (a longer key gets its own).
const doneChunk = 1 << 20

func (d *doneSet) key(r doneRef) []byte { return d.chunks[r.chunk][r.off : r.off+r.n] }

// has reports whether kb is in the set.
func (d *doneSet) has(kb []byte) bool {
	if len(d.slots) == 0 {
		return false
	}
	mask := uint64(len(d.slots) - 1)
	for i := maphash.Bytes(d.seed, kb) & mask; ; i = (i + 1) & mask {
		s := d.slots[i]
		if s == 0 {
			return false
		}
		if bytes.Equal(d.key(d.refs[s-1]), kb) {
			return true
		}
	}
}

// add adds kb, which the caller has checked is not in the set.
func (d *doneSet) add(kb []byte) {
	if 2*(len(d.refs)+1) > len(d.slots) {
		d.grow()
	}
	last := len(d.chunks) - 1
	if last < 0 || cap(d.chunks[last])-len(d.chunks[last]) < len(kb) {
		d.chunks = append(d.chunks, make([]byte, 0, max(doneChunk, len(kb))))
		last++
	}
	c := d.chunks[last]
	d.refs = append(d.refs, doneRef{chunk: uint32(last), off: uint32(len(c)), n: uint32(len(kb))})
	d.chunks[last] = append(c, kb...)
	d.place(uint32(len(d.refs)))
}

// place puts the key of slot value s (1 + its index in refs) in the table.
func (d *doneSet) place(s uint32) {
	mask := uint64(len(d.slots) - 1)
	i := maphash.Bytes(d.seed, d.key(d.refs[s-1])) & mask
	for d.slots[i] != 0 {
		i = (i + 1) & mask
	}
	d.slots[i] = s
}

// grow doubles the table (the first one has 1,024 slots) and places every key
// again.
func (d *doneSet) grow() {
	if len(d.slots) == 0 {
		d.seed = maphash.MakeSeed()
	}
	d.slots = make([]uint32, max(1024, 2*len(d.slots)))
	for i := range d.refs {
		d.place(uint32(i + 1))
	}
}

func (a *analysis) corrupt(bucket []byte, format string, args ...any) {
	a.rep.bucket(bucket).Corrupt++
	a.probs.add("%s: %s", bucket, fmt.Sprintf(format, args...))
}

func (a *analysis) run() error {
	roots := a.bf.rootBuckets()
	if len(roots) == 0 && a.bf.unreadable == 0 {
		return nil // a bbolt file the store never initialised: healthy, and empty
	}
	for name := range roots {
		if !slices.ContainsFunc(journalBuckets, func(b []byte) bool { return string(b) == name }) {
			a.probs.add("root: unknown bucket %q (a damaged bucket name?)", name)
			// Walk it anyway, so that no page is left unverified.
			a.bf.walkBucket(name, roots[name], func(elem) {})
		}
	}
	var seqs [5]uint64
	// The expiry records first, so the completed keys can be checked against them.
	for _, i := range [...]int{0, 4, 1, 2, 3} {
		name := journalBuckets[i]
		hdr, ok := roots[string(name)]
		if !ok {
			a.rep.Buckets[i].Missing = true
			a.probs.add("bucket %s is missing", name)
			continue
		}
		visit := [...]func(elem){a.meta, a.key, a.pending, a.outbox, a.expiry}[i]
		var err error
		seqs[i], _ = a.bf.walkBucket(string(name), hdr, func(e elem) {
			if err == nil {
				a.rep.Buckets[i].Records++
				if e.flags&flagBucket != 0 {
					// bbolt would open it as a bucket and follow its "root page".
					a.corrupt(name, "key %x is marked as a nested bucket", e.key)
				}
				visit(e)
				err = a.writeErr()
			}
		})
		if i == 1 && err == nil {
			a.settleKeys()
			err = a.writeErr()
		}
		if err != nil {
			return err
		}
		if i == 0 {
			if err := a.schemaErr(); err != nil {
				return err
			}
		}
		if i == 1 { // one kept record per indexed request, usually
			a.kept = make(map[string]keptRecord, a.index.pending+a.index.outbox)
		}
	}
	for _, seq := range slices.Sorted(maps.Keys(a.pendIdx)) {
		a.unfound(seq, a.pendIdx[seq], "pending")
	}
	for _, seq := range slices.Sorted(maps.Keys(a.outIdx)) {
		a.unfound(seq, a.outIdx[seq], "in the outbox")
	}
	// A request of which a record is kept is not lost, whatever else of it
	// could not be read.
	n := 0
	for _, r := range a.kept {
		delete(a.lost, r.seq)
		if !r.inIndex {
			n++
		}
	}
	a.rep.Lost = len(a.lost)
	if n > 0 {
		a.probs.add("%d pending or outbox records have no (readable) entry in the key index: kept, and re-indexed by a salvage", n)
	}
	if a.stored != nil && *a.stored != a.index {
		a.probs.add("meta: stored counts (pending %d, outbox %d, done %d) differ from the key index (%d, %d, %d)",
			a.stored.pending, a.stored.outbox, a.stored.done, a.index.pending, a.index.outbox, a.index.done)
	}
	if a.w != nil {
		a.w.pendSeq = max(seqs[2], a.maxSeq)
	}
	return nil
}

// unfound handles an index entry whose record was not found (missing, or
// unreadable): the request is lost unless another of its records is kept.
func (a *analysis) unfound(seq uint64, ix indexed, where string) {
	if r, ok := a.kept[ix.kb]; ok && r.seq == seq {
		k, _ := decodeKey([]byte(ix.kb))
		then := ""
		if r.rank == rankPending && where != "pending" {
			then = ": the request runs again"
		}
		a.probs.add("keys: %s is %s at seq %d, but that record is missing or unreadable: its %s is kept instead%s", k, where, seq, r, then)
		return
	}
	a.lose(seq, ix.kb, where)
}

// lose records that the entry at seq, named by the index as kb, cannot be kept.
func (a *analysis) lose(seq uint64, kb, where string) {
	k, err := decodeKey([]byte(kb))
	if err == nil && len(a.rep.LostKeys) < maxLostKeys {
		a.rep.LostKeys = append(a.rep.LostKeys, k)
	}
	a.probs.add("keys: %s is %s at seq %d, but its record is missing or unreadable: the request is lost and its key released", k, where, seq)
	a.lost[seq] = struct{}{}
}

func (a *analysis) writeErr() error {
	if a.w == nil {
		return nil
	}
	return a.w.err
}

// meta reads the meta bucket: the schema version and the stored counts.
func (a *analysis) meta(e elem) {
	switch {
	case bytes.Equal(e.key, keySchema):
		a.schema = bytes.Clone(e.value)
	case bytes.Equal(e.key, keyCounts):
		c, err := readCountsValue(e.value)
		if err != nil {
			a.corrupt(bucketMeta, "%v", err)
			return
		}
		a.stored = &c
	}
}

// maxFutureSchema bounds the schema versions taken for a newer store's (the
// error ErrSchema) rather than for a damaged byte.
const maxFutureSchema = schemaVersion + 15

func (a *analysis) schemaErr() error {
	switch v := a.schema; {
	case v == nil:
		a.probs.add("meta: no schema version")
	case len(v) == 1 && v[0] > schemaVersion && v[0] <= maxFutureSchema:
		return fmt.Errorf("%w: file has schema %v, this build reads %d", ErrSchema, v, schemaVersion)
	case len(v) != 1 || (v[0] != schemaVersion && v[0] != schemaKeysByKey):
		a.corrupt(bucketMeta, "schema %v is neither %d, %d nor a plausible newer version: a damaged record", v, schemaKeysByKey, schemaVersion)
	}
	return nil
}

// keysBySlot decides whether the key index is in arrival order (schema 2;
// the meta bucket is read first), given e, an element of the index, and
// reports whether it could. A file without a readable schema record is judged
// by the form of its key records: schema 1's value is a state record, schema
// 2's a key and a state record, each told by its checksum (a schema 2 value
// never passes for a state record: it starts with the key's length, never
// recordVersion). A record readable in neither form (damaged) decides nothing:
// key holds it back until one does (a schema 1 file read as schema 2 would
// have every key counted corrupt, and its completed keys forgotten by a
// salvage).
func (a *analysis) keysBySlot(e elem) bool {
	var bySlot bool
	switch {
	case len(a.schema) == 1 && (a.schema[0] == schemaKeysByKey || a.schema[0] == schemaVersion):
		bySlot = a.schema[0] == schemaVersion
	default:
		if _, err := decodeState(e.value); err == nil {
			bySlot = false
		} else if _, state, ok := splitKeyRecord(e.value); ok && len(e.key) == 8 {
			if _, err := decodeState(state); err != nil {
				return false
			}
			bySlot = true
		} else {
			return false
		}
	}
	a.bySlot = &bySlot
	return true
}

// maxUndecided is how many key records key holds back, undecided, before
// settleKeys judges by their headers.
const maxUndecided = 64

// settleKeys decides the key index's form from the records held back when
// none could (the bucket ended, or maxUndecided were read): by the most of
// them whose value starts as a state record does (schema 1) or not (schema
// 2, also on a tie), and reads them.
func (a *analysis) settleKeys() {
	if a.bySlot == nil {
		votes := 0
		for _, e := range a.undecided {
			if len(e.value) >= 2 && e.value[0] == recordVersion && e.value[1] == kindState {
				votes++
			} else {
				votes--
			}
		}
		bySlot := votes <= 0
		a.bySlot = &bySlot
	}
	held := a.undecided
	a.undecided = nil
	for _, e := range held {
		a.keyRecord(e)
	}
}

// key reads one key index entry: a slot and the key's record (schema 2), or
// the key and its state record (schema 1).
func (a *analysis) key(e elem) {
	if a.bySlot == nil {
		if !a.keysBySlot(e) {
			a.undecided = append(a.undecided, elem{flags: e.flags, key: bytes.Clone(e.key), value: bytes.Clone(e.value)})
			if len(a.undecided) >= maxUndecided {
				a.settleKeys()
			}
			return
		}
		a.settleKeys()
	}
	a.keyRecord(e)
}

// keyRecord reads one key index entry, the index's form decided.
func (a *analysis) keyRecord(e elem) {
	kb, state := e.key, e.value
	if *a.bySlot {
		var ok bool
		if kb, state, ok = splitKeyRecord(e.value); !ok || len(e.key) != 8 {
			a.corrupt(bucketKeys, "slot %x: not a slot and a key (its record, if readable, is kept and re-indexed)", e.key)
			return
		}
	}
	a.keyState(kb, state)
}

// keyState reads the key index entry of key kb with its state record.
func (a *analysis) keyState(key, state []byte) {
	e := elem{key: key, value: state}
	k, err := decodeKey(e.key)
	if err != nil {
		a.corrupt(bucketKeys, "key %x: %v", e.key, err)
		return
	}
	st, err := decodeState(e.value)
	if err != nil {
		a.corrupt(bucketKeys, "key %s: %v (its record, if readable, is kept and re-indexed)", k, err)
		return
	}
	kb := string(e.key)
	if _, dup := a.byKey[kb]; dup || a.done.has(e.key) {
		a.corrupt(bucketKeys, "key %s appears twice (a damaged element)", k)
		return
	}
	switch st.state {
	case statePending, stateOutbox:
		idx, other := a.pendIdx, a.outIdx
		if st.state == stateOutbox {
			idx, other = a.outIdx, a.pendIdx
			a.index.outbox++
		} else {
			a.index.pending++
		}
		claimed, ok := idx[st.seq]
		if !ok {
			claimed, ok = other[st.seq]
		}
		if ok {
			a.corrupt(bucketKeys, "key %s: seq %d is also claimed by key %x", k, st.seq, claimed.kb)
			return
		}
		rec := seqKey(st.seq)
		if st.state == stateOutbox {
			rec = outboxKey(st.flushBy, st.seq)
		}
		idx[st.seq] = indexed{kb, string(rec)}
		a.byKey[kb] = st.seq
		a.maxSeq = max(a.maxSeq, st.seq)
	case stateDone:
		if _, ok := a.expiries[expiryHash(expiryKey(st.doneAt, st.n), e.key)]; !ok && !a.rep.bucket(bucketExpiry).Missing {
			// GC would never forget it; a salvage writes it a new one.
			a.probs.add("keys: %s was completed at %s, but has no expiry record", k, st.doneAt)
		}
		a.index.done++
		a.done.add(e.key)
		a.rep.Done++
		if a.w != nil {
			a.w.putDone(e.key, st)
		}
	}
}

// known reports whether the index holds kb otherwise than at seq.
func (a *analysis) known(kb string, seq uint64) bool {
	if s, ok := a.byKey[kb]; ok && s != seq {
		return true
	}
	return a.done.has([]byte(kb))
}

// keep decides whether the readable record rec of bucket (pendIdx or outIdx
// is its index), at seq, for key kb, is kept, and returns true when it is: the
// caller writes it. rank is what it is worth against another readable record of
// the same request (keptRecord); an outbox record the key index names ranks
// rankIndexed whatever the caller passes. The record's key is covered by its
// checksum and the index's is not, so when they differ the record wins.
//
// A record that another of the same request outranks (or equals, read before
// it) is a stale copy: dropped, counted corrupt in its bucket, and not lost.
// When the record kept until now is the stale copy, keep takes it out of the
// counts and of the salvage.
func (a *analysis) keep(bucket []byte, idx map[uint64]indexed, rec []byte, seq uint64, kb string, k Key, rank recordRank) bool {
	a.maxSeq = max(a.maxSeq, seq)
	if ix, ok := idx[seq]; ok {
		switch {
		case ix.kb != kb:
			delete(idx, seq)
			delete(a.byKey, ix.kb)
			a.probs.add("%s: record %d is for %s, but the index gives seq %d to key %x", bucket, seq, k, seq, ix.kb)
		case ix.rec == string(rec):
			delete(idx, seq)
			if bytes.Equal(bucket, bucketOutbox) {
				rank = rankIndexed
			}
		}
	}
	if a.known(kb, seq) {
		a.corrupt(bucket, "record %d is for %s, which the index holds elsewhere: dropped", seq, k)
		a.lost[seq] = struct{}{}
		return false
	}
	_, inIndex := a.byKey[kb]
	r := keptRecord{seq: seq, rank: rank, inIndex: inIndex}
	if len(rec) == 16 {
		r.flush = binary.BigEndian.Uint64(rec)
	}
	old, again := a.kept[kb]
	switch {
	case !again:
	case old.seq != seq:
		a.corrupt(bucket, "record %d is a second unindexed record for %s (the first is at seq %d): dropped", seq, k, old.seq)
		a.lost[seq] = struct{}{}
		return false
	case rank <= old.rank:
		a.corrupt(bucket, "%s for %s is a stale copy of the request's %s, which is kept: dropped (the request is not lost)", r, k, old)
		return false
	default:
		a.corrupt(old.bucket(), "%s for %s is a stale copy of the request's %s, which is kept: dropped (the request is not lost)", old, k, r)
		if old.rank == rankPending {
			a.rep.Pending--
		} else {
			a.rep.Outbox--
		}
		if a.w != nil {
			a.w.delete(old.bucket(), old.key())
		}
	}
	a.kept[kb] = r
	return true
}

// pending reads one pending record.
func (a *analysis) pending(e elem) {
	if len(e.key) != 8 {
		a.corrupt(bucketPending, "key %x is not a seq", e.key)
		return
	}
	seq := binary.BigEndian.Uint64(e.key)
	ent, err := decodeEntry(e.value, seq)
	if err != nil {
		a.corrupt(bucketPending, "record %d: %v", seq, err)
		a.lost[seq] = struct{}{}
		a.maxSeq = max(a.maxSeq, seq)
		return
	}
	kb := encodeKey(ent.Key)
	if !a.keep(bucketPending, a.pendIdx, e.key, seq, string(kb), ent.Key, rankPending) {
		return
	}
	a.rep.Pending++
	if a.w != nil {
		a.w.put(bucketPending, e.key, e.value)
		a.w.putKey(seq, kb, keyState{state: statePending, seq: seq})
	}
}

// outbox reads one outbox record.
func (a *analysis) outbox(e elem) {
	if len(e.key) != 16 {
		a.corrupt(bucketOutbox, "key %x is not a flush time and seq", e.key)
		return
	}
	seq := binary.BigEndian.Uint64(e.key[8:])
	o, err := decodeOutbox(e.value, seq)
	if err == nil && !bytes.Equal(outboxKey(o.FlushBy, seq), e.key) {
		err = fmt.Errorf("%w: flush time %s does not match its key", ErrCorrupt, o.FlushBy)
	}
	if err != nil {
		a.corrupt(bucketOutbox, "record %d: %v", seq, err)
		a.lost[seq] = struct{}{}
		a.maxSeq = max(a.maxSeq, seq)
		return
	}
	kb := encodeKey(o.Key)
	rank := rankSent
	if o.Unsent {
		rank = rankUnsent
	}
	if !a.keep(bucketOutbox, a.outIdx, e.key, seq, string(kb), o.Key, rank) {
		return
	}
	a.rep.Outbox++
	if a.w != nil {
		a.w.put(bucketOutbox, e.key, e.value)
		a.w.putKey(seq, kb, keyState{state: stateOutbox, seq: seq, flushBy: o.FlushBy})
	}
}

// expiry reads one expiry record. A salvage rebuilds them from the completed
// keys, so they are only checked.
func (a *analysis) expiry(e elem) {
	if len(e.key) != 16 {
		a.corrupt(bucketExpiry, "key %x is not a completion time and number", e.key)
		return
	}
	if _, err := decodeKey(e.value); err != nil {
		a.corrupt(bucketExpiry, "record %x: %v", e.key, err)
		return
	}
	a.expiries[expiryHash(e.key, e.value)] = struct{}{}
}

// expiryHash identifies an expiry record: its key and the key it expires.
func expiryHash(ek, kb []byte) uint64 {
	h := fnv.New64a()
	h.Write(ek)
	h.Write(kb)
	return h.Sum64()
}

// readCountsValue decodes the meta bucket's counts record.
func readCountsValue(v []byte) (counts, error) {
	r := reader{b: v}
	c := counts{int(r.uvarint()), int(r.uvarint()), int(r.uvarint())}
	r.end()
	return c, r.errf("counts")
}

// salvageTxBytes is how many bytes a salvage writes per bbolt transaction, so
// that salvaging a large journal does not hold it all in memory (a variable for
// tests).
var salvageTxBytes = 32 << 20

// salvageWriter writes salvaged records into a new database in transactions of
// about salvageTxBytes. The first error sticks; later writes are skipped.
type salvageWriter struct {
	db              *bolt.DB
	tx              *bolt.Tx
	size            int
	err             error
	pendSeq, expSeq uint64
}

func newSalvageWriter(db *bolt.DB) (*salvageWriter, error) {
	w := &salvageWriter{db: db}
	if err := w.begin(); err != nil {
		return nil, err
	}
	for _, name := range journalBuckets {
		if _, err := w.tx.CreateBucketIfNotExists(name); err != nil {
			w.abort()
			return nil, err
		}
	}
	w.put(bucketMeta, keySchema, []byte{schemaVersion})
	return w, w.err
}

func (w *salvageWriter) begin() error {
	tx, err := w.db.Begin(true)
	if err != nil {
		return fmt.Errorf("salvage: begin: %w", err)
	}
	w.tx, w.size = tx, 0
	return nil
}

// put stores copies of k and v (bbolt keeps them until the commit; the
// salvage's slices alias reused read buffers).
func (w *salvageWriter) put(bucket, k, v []byte) {
	if w.err != nil {
		return
	}
	if err := w.tx.Bucket(bucket).Put(bytes.Clone(k), bytes.Clone(v)); err != nil {
		w.err = fmt.Errorf("salvage: %s: %w", bucket, err)
		return
	}
	if w.size += len(k) + len(v); w.size >= salvageTxBytes {
		if err := w.tx.Commit(); err != nil {
			w.tx, w.err = nil, fmt.Errorf("salvage: commit: %w", err)
			return
		}
		crashPoint("salvage-commit")
		w.err = w.begin()
	}
}

// delete removes a record put earlier (a stale copy of a request, found to be
// one after it was put).
func (w *salvageWriter) delete(bucket, k []byte) {
	if w.err != nil {
		return
	}
	if err := w.tx.Bucket(bucket).Delete(k); err != nil {
		w.err = fmt.Errorf("salvage: %s: %w", bucket, err)
	}
}

// putKey stores key kb's record at slot (schema 2, whatever the salvaged
// file's schema).
func (w *salvageWriter) putKey(slot uint64, kb []byte, st keyState) {
	w.put(bucketKeys, slotKey(nil, slot), appendKeyRecord(nil, kb, encodeState(st)))
}

// putDone stores a completed key, at a slot of its own, and its expiry
// record, numbered afresh: a damaged page can make two keys share one state
// record, and expiry records must be unique. The expiry number is the slot's
// too (slotAnswered|n): the salvage's only slots of that half.
func (w *salvageWriter) putDone(kb []byte, st keyState) {
	w.expSeq++
	st.n = w.expSeq
	w.putKey(slotAnswered|st.n, kb, st)
	w.put(bucketExpiry, expiryKey(st.doneAt, st.n), kb)
}

// finish writes the counts and bucket sequences and commits.
func (w *salvageWriter) finish(c counts) error {
	if w.err != nil {
		return w.err
	}
	if err := errors.Join(
		w.tx.Bucket(bucketPending).SetSequence(w.pendSeq),
		w.tx.Bucket(bucketExpiry).SetSequence(w.expSeq),
		w.tx.Bucket(bucketKeys).SetSequence(w.expSeq),
		writeCounts(w.tx.Bucket(bucketMeta), c),
	); err != nil {
		return fmt.Errorf("salvage: %w", err)
	}
	tx := w.tx
	w.tx = nil
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("salvage: commit: %w", err)
	}
	return nil
}

func (w *salvageWriter) abort() {
	if w.tx != nil {
		w.tx.Rollback()
		w.tx = nil
	}
}

// boltCheck runs bbolt's own Tx.Check on the file at path, read-only, adding
// what it finds to probs. Call it only on a file the bounds-checked
// verification passed: bbolt reads pages without checks (some of them in a
// goroutine of its own). Panics and faults are caught anyway.
func boltCheck(path string, probs *problems) {
	var file *os.File
	defer func() {
		if p := recover(); p != nil {
			probs.add("bbolt: panic checking the file: %v", p)
			if file != nil {
				closeFile(file)
			}
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	db, err := bolt.Open(path, 0o400, &bolt.Options{
		ReadOnly: true, Timeout: time.Second, FreelistType: bolt.FreelistMapType,
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, mode)
			file = f
			return f, err
		},
	})
	if err != nil {
		probs.add("bbolt: open: %v", err)
		return
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			probs.add("bbolt: %v", err)
		}
		return nil
	})
	if err != nil {
		probs.add("bbolt: %v", err)
	}
}
