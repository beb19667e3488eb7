package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"maps"
	"math"
	"slices"
	"time"
)

// Record framing (all records, format version 1):
//
//	[0]     format version (recordVersion)
//	[1]     record kind (kindEntry, kindOutbox, kindState)
//	[2:6]   CRC-32C, little-endian, of [0:2] and of everything after the header
//	[6:14]  seq, big-endian (entry and outbox records only; not covered by the CRC
//	        because the commit patches it in, and checked against the bucket key instead)
//	[...]   body: uvarint lengths, zig-zag varint times, float32 little-endian
//
//	Entry body:  received, deadline, app, device, id, replyTo, n, n×float32, nattrs, (k, v)×nattrs
//	Outbox body: the entry body with n = 0, then flushBy, reply, and an optional
//	             flags byte (bit 0: unsent, never handed to the broker; absent: 0)
//	State body:  state byte, then pending: seq | outbox: seq, flushBy | done: doneAt, n, reply
const (
	recordVersion = 1

	kindEntry  = 1
	kindOutbox = 2
	kindState  = 3

	crcOff     = 2
	seqOff     = 6
	headerSize = 6  // version, kind, crc
	seqHeader  = 14 // headerSize + seq
)

// Key states in the keys bucket.
const (
	statePending = 1
	stateOutbox  = 2
	stateDone    = 3
)

// zeroTime is how the zero time.Time is stored.
const zeroTime = math.MinInt64

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encodeKey is the keys bucket key: three length-prefixed parts, so no two Keys
// share an encoding whatever bytes they hold.
func encodeKey(k Key) []byte {
	b := make([]byte, 0, 3*binary.MaxVarintLen16+len(k.App)+len(k.Device)+len(k.ID))
	b = appendString(b, k.App)
	b = appendString(b, k.Device)
	return appendString(b, k.ID)
}

func decodeKey(b []byte) (Key, error) {
	r := reader{b: b}
	k := Key{App: r.str(), Device: r.str(), ID: r.str()}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	return k, r.errf("key")
}

func validKey(k Key) error {
	for _, p := range [...]struct{ name, v string }{{"app", k.App}, {"device", k.Device}, {"id", k.ID}} {
		if len(p.v) == 0 || len(p.v) > MaxKeyPart {
			return fmt.Errorf("%w: %s is %d bytes (want 1 to %d)", ErrInvalid, p.name, len(p.v), MaxKeyPart)
		}
	}
	return nil
}

// seqKey is the pending bucket key.
func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq) }

// timeKey orders times as bytes: nanoseconds with the sign bit flipped, big-endian.
func appendTimeKey(b []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(nanos(t))^(1<<63))
}

// outboxKey orders the outbox by flushBy, then seq. A zero flushBy sorts last.
func outboxKey(flushBy time.Time, seq uint64) []byte {
	return appendOutboxKey(make([]byte, 0, 16), flushBy, seq)
}

func appendOutboxKey(b []byte, flushBy time.Time, seq uint64) []byte {
	if flushBy.IsZero() {
		flushBy = time.Unix(0, math.MaxInt64)
	}
	return binary.BigEndian.AppendUint64(appendTimeKey(b, flushBy), seq)
}

// expiryKey orders completed keys by completion time; n makes it unique.
func expiryKey(doneAt time.Time, n uint64) []byte {
	return binary.BigEndian.AppendUint64(appendTimeKey(make([]byte, 0, 16), doneAt), n)
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return zeroTime
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == zeroTime {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendBytes(b, p []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(p))), p...)
}

func appendTime(b []byte, t time.Time) []byte { return binary.AppendVarint(b, nanos(t)) }

// appendHeader starts a record in b, which must be empty (a record starts at
// b[0]; seal and setSeq rely on it): its version and kind, room for the CRC and,
// withSeq, the seq.
func appendHeader(b []byte, kind byte, withSeq bool) []byte {
	n := headerSize
	if withSeq {
		n = seqHeader
	}
	b = append(b[:0], make([]byte, n)...)
	b[0], b[1] = recordVersion, kind
	return b
}

// seal writes the CRC of a finished record.
func seal(b []byte, withSeq bool) []byte {
	binary.LittleEndian.PutUint32(b[crcOff:], checksum(b, withSeq))
	return b
}

func checksum(b []byte, withSeq bool) uint32 {
	body := b[headerSize:]
	if withSeq {
		body = b[seqHeader:]
	}
	return crc32.Update(crc32.Checksum(b[:crcOff], castagnoli), castagnoli, body)
}

// setSeq patches seq into an entry or outbox record. The CRC does not cover it.
func setSeq(rec []byte, seq uint64) { binary.BigEndian.PutUint64(rec[seqOff:], seq) }

func entrySize(e *Entry) int {
	n := 2*binary.MaxVarintLen64 + 5*binary.MaxVarintLen32 + len(e.App) + len(e.Device) + len(e.ID) + len(e.ReplyTo) + 4*len(e.Input)
	for k, v := range e.Attrs {
		n += 2*binary.MaxVarintLen32 + len(k) + len(v)
	}
	return n
}

func appendEntryBody(b []byte, e *Entry, input []float32) []byte {
	b = appendTime(b, e.Received)
	b = appendTime(b, e.Deadline)
	b = appendString(b, e.App)
	b = appendString(b, e.Device)
	b = appendString(b, e.ID)
	b = appendString(b, e.ReplyTo)
	b = binary.AppendUvarint(b, uint64(len(input)))
	for _, f := range input {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	b = binary.AppendUvarint(b, uint64(len(e.Attrs)))
	if len(e.Attrs) > 0 { // the gateway sets none: no sorted copy of no keys
		for _, k := range slices.Sorted(maps.Keys(e.Attrs)) {
			b = appendString(b, k)
			b = appendString(b, e.Attrs[k])
		}
	}
	return b
}

// appendEntry appends e's pending record with seq to b, which must be empty.
func appendEntry(b []byte, e *Entry, seq uint64) []byte {
	b = appendHeader(b, kindEntry, true)
	setSeq(b, seq)
	return seal(appendEntryBody(b, e, e.Input), true)
}

// outboxTailSize bounds what appendOutboxTail appends.
func outboxTailSize(reply []byte) int {
	return binary.MaxVarintLen64 + binary.MaxVarintLen32 + len(reply) + 1
}

// appendOutboxTail appends what an outbox record has after its entry body.
func appendOutboxTail(b []byte, flushBy time.Time, reply []byte, unsent bool) []byte {
	b = appendTime(b, flushBy)
	b = appendBytes(b, reply)
	if unsent {
		b = append(b, flagUnsent)
	}
	return b
}

// outboxParts checks a pending (kindEntry) or outbox (kindOutbox) record stored
// under seq as decodeEntry and decodeOutbox do, without decoding it, and returns
// the parts of its entry body an outbox record keeps, aliasing rec: the fields
// before the input (times, key, reply topic) and the attributes after it.
func outboxParts(rec []byte, kind byte, seq uint64) (head, attrs []byte, err error) {
	r, err := open(rec, kind, true)
	if err != nil {
		return nil, nil, err
	}
	what := "entry"
	if kind == kindOutbox {
		what = "outbox entry"
	}
	body := r.b
	r.time()
	r.time()
	for range 4 { // app, device, id, replyTo
		r.bytes()
	}
	head = body[:len(body)-len(r.b)]
	n := r.count(4)
	if n > 0 && kind == kindOutbox {
		r.fail("outbox entry holds %d input values", n)
	}
	if r.err == nil {
		r.b = r.b[4*n:]
	}
	rest := r.b
	// Each attribute needs at least its two length bytes.
	for range r.count(2) {
		r.bytes()
		r.bytes()
	}
	attrs = rest[:len(rest)-len(r.b)]
	if kind == kindOutbox {
		r.time()
		r.bytes()
		if r.err == nil && len(r.b) > 0 {
			r.byte()
		}
	}
	r.end()
	if err := r.errf(what); err != nil {
		return nil, nil, err
	}
	if got := binary.BigEndian.Uint64(rec[seqOff:]); got != seq {
		return nil, nil, fmt.Errorf("%w: %s holds seq %d but is stored under %d", ErrCorrupt, what, got, seq)
	}
	return head, attrs, nil
}

// appendOutbox appends to b (empty) the outbox record under seq of the entry
// whose body parts outboxParts returned, with reply: the same bytes as
// encodeOutbox of the decoded entry, copied instead of decoded and encoded again.
func appendOutbox(b, head, attrs []byte, seq uint64, flushBy time.Time, reply []byte, unsent bool) []byte {
	b = appendHeader(b, kindOutbox, true)
	setSeq(b, seq)
	b = append(b, head...)
	b = binary.AppendUvarint(b, 0) // no input
	b = append(b, attrs...)
	return seal(appendOutboxTail(b, flushBy, reply, unsent), true)
}

// outboxSize bounds the size of appendOutbox's record.
func outboxSize(head, attrs, reply []byte) int {
	return seqHeader + len(head) + 1 + len(attrs) + outboxTailSize(reply)
}

// flagUnsent marks an outbox record whose reply was never handed to the broker.
const flagUnsent = 1

// keyState is a keys bucket record: where a key is and what it needs.
type keyState struct {
	state   byte
	seq     uint64    // pending, outbox
	flushBy time.Time // outbox
	doneAt  time.Time // done
	n       uint64    // done: the expiry key's sequence number
	reply   []byte    // done; aliases the database page until copied
}

func encodeState(s keyState) []byte { return appendState(make([]byte, 0, stateSize(s)), s) }

// stateSize bounds the size of s's record.
func stateSize(s keyState) int {
	return headerSize + 1 + 3*binary.MaxVarintLen64 + binary.MaxVarintLen32 + len(s.reply)
}

// appendState appends s's record to b, which must be empty.
func appendState(b []byte, s keyState) []byte {
	b = appendHeader(b, kindState, false)
	b = append(b, s.state)
	switch s.state {
	case statePending:
		b = binary.AppendUvarint(b, s.seq)
	case stateOutbox:
		b = binary.AppendUvarint(b, s.seq)
		b = appendTime(b, s.flushBy)
	case stateDone:
		b = appendTime(b, s.doneAt)
		b = binary.AppendUvarint(b, s.n)
		b = appendBytes(b, s.reply)
	}
	return seal(b, false)
}

// open checks a record's framing and returns a reader over its body.
func open(rec []byte, kind byte, withSeq bool) (reader, error) {
	n := headerSize
	if withSeq {
		n = seqHeader
	}
	switch {
	case len(rec) < n:
		return reader{}, fmt.Errorf("%w: %d-byte record is shorter than its header", ErrCorrupt, len(rec))
	case rec[0] != recordVersion:
		return reader{}, fmt.Errorf("%w: unknown record format version %d", ErrCorrupt, rec[0])
	case rec[1] != kind:
		return reader{}, fmt.Errorf("%w: record kind %d, want %d", ErrCorrupt, rec[1], kind)
	case binary.LittleEndian.Uint32(rec[crcOff:]) != checksum(rec, withSeq):
		return reader{}, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	return reader{b: rec[n:]}, nil
}

// decodeEntry decodes a pending record stored under seq. The result shares no
// memory with rec.
func decodeEntry(rec []byte, seq uint64) (*Entry, error) {
	r, err := open(rec, kindEntry, true)
	if err != nil {
		return nil, err
	}
	e := new(Entry)
	r.entryBody(e, true)
	r.end()
	if err := r.errf("entry"); err != nil {
		return nil, err
	}
	if got := binary.BigEndian.Uint64(rec[seqOff:]); got != seq {
		return nil, fmt.Errorf("%w: entry holds seq %d but is stored under %d", ErrCorrupt, got, seq)
	}
	e.Seq = seq
	return e, nil
}

// decodeOutbox decodes an outbox record stored under seq.
func decodeOutbox(rec []byte, seq uint64) (*OutboxEntry, error) {
	r, err := open(rec, kindOutbox, true)
	if err != nil {
		return nil, err
	}
	o := new(OutboxEntry)
	r.entryBody(&o.Entry, false)
	o.FlushBy = r.time()
	o.Reply = bytes.Clone(r.bytes())
	if r.err == nil && len(r.b) > 0 {
		o.Unsent = r.byte()&flagUnsent != 0
	}
	r.end()
	if err := r.errf("outbox entry"); err != nil {
		return nil, err
	}
	if got := binary.BigEndian.Uint64(rec[seqOff:]); got != seq {
		return nil, fmt.Errorf("%w: outbox entry holds seq %d but is stored under %d", ErrCorrupt, got, seq)
	}
	o.Seq = seq
	return o, nil
}

// decodeState decodes a keys bucket record. reply aliases rec.
func decodeState(rec []byte) (keyState, error) {
	r, err := open(rec, kindState, false)
	if err != nil {
		return keyState{}, err
	}
	var s keyState
	s.state = r.byte()
	switch s.state {
	case statePending:
		s.seq = r.uvarint()
	case stateOutbox:
		s.seq = r.uvarint()
		s.flushBy = r.time()
	case stateDone:
		s.doneAt = r.time()
		s.n = r.uvarint()
		s.reply = r.bytes()
	default:
		if r.err == nil {
			r.fail("unknown key state %d", s.state)
		}
	}
	r.end()
	return s, r.errf("key state")
}

// reader decodes a record body. The first error sticks; later reads return zero
// values, so a decoder reads every field and checks r.err once.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
	r.b = nil
}

func (r *reader) errf(what string) error {
	if r.err == nil {
		return nil
	}
	return fmt.Errorf("%w: %s: %v", ErrCorrupt, what, r.err)
}

func (r *reader) end() {
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.fail("truncated")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad uvarint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) time() time.Time {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("bad time")
		return time.Time{}
	}
	r.b = r.b[n:]
	return fromNanos(v)
}

// count reads a length and checks that many items of size bytes each can follow.
func (r *reader) count(size int) int {
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)/size) {
		r.fail("length %d overruns the record", n)
		return 0
	}
	return int(n)
}

// bytes returns a length-prefixed field; it aliases the record.
func (r *reader) bytes() []byte {
	n := r.count(1)
	p := r.b[:n:n]
	r.b = r.b[n:]
	return p
}

func (r *reader) str() string { return string(r.bytes()) }

func (r *reader) entryBody(e *Entry, withInput bool) {
	e.Received = r.time()
	e.Deadline = r.time()
	e.App, e.Device, e.ID = r.str(), r.str(), r.str()
	e.ReplyTo = r.str()
	n := r.count(4)
	if n > 0 && !withInput {
		r.fail("outbox entry holds %d input values", n)
		return
	}
	if n > 0 {
		e.Input = make([]float32, n)
		for i := range e.Input {
			e.Input[i] = math.Float32frombits(binary.LittleEndian.Uint32(r.b[4*i:]))
		}
		r.b = r.b[4*n:]
	}
	// Each attribute needs at least its two length bytes.
	if na := r.count(2); na > 0 {
		e.Attrs = make(map[string]string, na)
		for range na {
			k := r.str()
			e.Attrs[k] = r.str()
		}
	}
}
