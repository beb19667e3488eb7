package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"maps"
	"math"
	"reflect"
	"slices"
	"testing"
	"time"
)

func sampleEntry() *Entry {
	return &Entry{
		Key:      Key{App: "cls", Device: "cam-01", ID: "req/π 1"},
		Received: time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC),
		Deadline: time.Date(2025, 3, 4, 5, 6, 8, 0, time.UTC),
		ReplyTo:  "sg/reply/cls/cam-01",
		Input:    []float32{0, float32(math.Copysign(0, -1)), 1.5, float32(math.Inf(-1)), math.SmallestNonzeroFloat32},
		Attrs:    map[string]string{"corr": "\x00\xff", "b": ""},
	}
}

func TestEntryRoundTrip(t *testing.T) {
	e := sampleEntry()
	rec := encodeEntry(e, 0)
	setSeq(rec, 42)
	got, err := decodeEntry(rec, 42)
	if err != nil {
		t.Fatal(err)
	}
	want := *e
	want.Seq = 42
	if !sameEntry(got, &want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, &want)
	}
	if _, err := decodeEntry(rec, 43); !errors.Is(err, ErrCorrupt) {
		t.Errorf("decode under another seq: err %v, want ErrCorrupt", err)
	}
}

func TestEntryZeroValues(t *testing.T) {
	e := &Entry{Key: Key{"a", "b", "c"}, Input: []float32{}, Attrs: map[string]string{}}
	got, err := decodeEntry(encodeEntry(e, 1), 1)
	if err != nil {
		t.Fatal(err)
	}
	want := &Entry{Key: e.Key, Seq: 1}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v (zero times stay zero, empty slices come back nil)", got, want)
	}
}

func TestOutboxRoundTrip(t *testing.T) {
	e := sampleEntry()
	flushBy := e.Deadline.Add(time.Second)
	rec := encodeOutbox(e, 7, flushBy, []byte(`{"status":"ok"}`), false)
	got, err := decodeOutbox(rec, 7)
	if err != nil {
		t.Fatal(err)
	}
	want := OutboxEntry{Entry: *e, Reply: []byte(`{"status":"ok"}`), FlushBy: flushBy}
	want.Seq, want.Input = 7, nil
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("got %+v, want %+v", *got, want)
	}
}

func TestStateRoundTrip(t *testing.T) {
	for _, s := range []keyState{
		{state: statePending, seq: 1 << 40},
		{state: stateOutbox, seq: 3, flushBy: time.Unix(0, -5).UTC()},
		{state: stateDone, doneAt: time.Unix(1700000000, 1).UTC(), n: 9, reply: []byte("r")},
		{state: stateDone, doneAt: time.Unix(1700000000, 1).UTC(), n: 9, reply: []byte{}},
	} {
		got, err := decodeState(encodeState(s))
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Errorf("got %+v, want %+v", got, s)
		}
	}
}

// Every truncation and every single-bit flip of a record is reported as
// ErrCorrupt, never a panic and never a silently different entry.
func TestCorruptRecordsAreDetected(t *testing.T) {
	records := map[string][]byte{
		"entry":  encodeEntry(sampleEntry(), 1),
		"outbox": encodeOutbox(sampleEntry(), 1, time.Unix(5, 0), []byte("reply"), true),
		"state":  encodeState(keyState{state: stateDone, doneAt: time.Unix(5, 0), n: 1, reply: []byte("reply")}),
	}
	decode := map[string]func([]byte) error{
		"entry":  func(b []byte) error { _, err := decodeEntry(b, 1); return err },
		"outbox": func(b []byte) error { _, err := decodeOutbox(b, 1); return err },
		"state":  func(b []byte) error { _, err := decodeState(b); return err },
	}
	for name, rec := range records {
		for n := range len(rec) {
			if err := decode[name](rec[:n]); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s truncated to %d bytes: err %v, want ErrCorrupt", name, n, err)
			}
		}
		for i := range len(rec) * 8 {
			b := append([]byte(nil), rec...)
			b[i/8] ^= 1 << (i % 8)
			if err := decode[name](b); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s with bit %d flipped: err %v, want ErrCorrupt", name, i, err)
			}
		}
	}
}

func TestKeyEncodingIsUnambiguous(t *testing.T) {
	keys := []Key{
		{"a", "b/c", "d"}, {"a/b", "c", "d"}, {"a", "b", "c/d"},
		{"a", "b", "cd"}, {"a", "bc", "d"}, {"ab", "c", "d"},
		{"a", "b", "\x01c"}, {"a", "b\x01", "c"},
	}
	seen := map[string]Key{}
	for _, k := range keys {
		kb := encodeKey(k)
		if other, dup := seen[string(kb)]; dup {
			t.Errorf("%v and %v encode alike", k, other)
		}
		seen[string(kb)] = k
		got, err := decodeKey(kb)
		if err != nil || got != k {
			t.Errorf("decodeKey(encodeKey(%v)) = %v, %v", k, got, err)
		}
	}
}

func TestTimeKeysSort(t *testing.T) {
	times := []time.Time{time.Unix(-10, 0), time.Unix(0, 0), time.Unix(0, 1), time.Unix(1<<33, 0), {}}
	for i := 1; i < len(times); i++ {
		a, b := outboxKey(times[i-1], 9), outboxKey(times[i], 1)
		if string(a) >= string(b) {
			t.Errorf("outbox key for %v does not sort before %v", times[i-1], times[i])
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(encodeEntry(sampleEntry(), 1))
	f.Add(encodeOutbox(sampleEntry(), 1, time.Unix(5, 0), []byte("r"), false))
	f.Add(encodeState(keyState{state: stateOutbox, seq: 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Also as a body behind a valid header and checksum, so the fuzzer reaches
		// the field parser and not only the CRC check.
		sealed := seal(append(appendHeader(nil, kindEntry, true), b...), true)
		setSeq(sealed, 1)
		for _, b := range [][]byte{b, sealed} {
			checkDecode(t, b)
		}
		sealedOutbox := seal(append(appendHeader(nil, kindOutbox, true), b...), true)
		setSeq(sealedOutbox, 1)
		checkDecode(t, sealedOutbox)
		decodeState(seal(append(appendHeader(nil, kindState, false), b...), false))
	})
}

func checkDecode(t *testing.T, b []byte) {
	if e, err := decodeEntry(b, 1); err == nil {
		// Whatever decodes must encode back to a record that decodes alike.
		if again, err := decodeEntry(encodeEntry(e, 1), 1); err != nil || !sameEntry(again, e) {
			t.Fatalf("re-encode of %+v: %+v, %v", e, again, err)
		}
	}
	_, outErr := decodeOutbox(b, 1)
	_, entErr := decodeEntry(b, 1)
	// The journal's copy of a record into the outbox refuses what the decoders do.
	for kind, want := range map[byte]error{kindEntry: entErr, kindOutbox: outErr} {
		if _, _, err := outboxParts(b, kind, 1); (err == nil) != (want == nil) {
			t.Fatalf("outboxParts of kind %d: %v, decoding: %v", kind, err, want)
		}
	}
	decodeState(b)
	decodeKey(b)
}

// sameEntry compares entries with Input compared bit for bit (so -0 and NaN
// payloads count).
func sameEntry(a, b *Entry) bool {
	if len(a.Input) != len(b.Input) {
		return false
	}
	for i := range a.Input {
		if math.Float32bits(a.Input[i]) != math.Float32bits(b.Input[i]) {
			return false
		}
	}
	a2, b2 := *a, *b
	a2.Input, b2.Input = nil, nil
	return reflect.DeepEqual(a2, b2)
}

// TestAppendOutboxMatchesEncode checks that the outbox record the journal
// copies from a pending or outbox record is byte for byte the one encodeOutbox
// makes of the decoded entry, and that it refuses what the decoders refuse.
func TestAppendOutboxMatchesEncode(t *testing.T) {
	flushBy := time.Date(2025, 3, 4, 5, 6, 9, 10, time.UTC)
	reply := []byte(`{"status":"ok","class":2}`)
	for name, e := range map[string]*Entry{
		"full":  sampleEntry(),
		"zero":  {Key: Key{App: "a", Device: "d", ID: "i"}},
		"attrs": {Key: Key{App: "a", Device: "d", ID: "i"}, Attrs: map[string]string{"z": "1", "a": "2", "m": ""}},
	} {
		for _, unsent := range []bool{false, true} {
			want := encodeOutbox(e, 9, flushBy, reply, unsent)
			for _, src := range []struct {
				kind byte
				rec  []byte
			}{
				{kindEntry, encodeEntry(e, 9)},
				{kindOutbox, encodeOutbox(e, 9, time.Unix(1, 0), []byte("an older reply"), !unsent)},
			} {
				head, attrs, err := outboxParts(src.rec, src.kind, 9)
				if err != nil {
					t.Fatalf("%s, kind %d: %v", name, src.kind, err)
				}
				got := appendOutbox(nil, head, attrs, 9, flushBy, reply, unsent)
				if string(got) != string(want) {
					t.Errorf("%s, kind %d, unsent %v:\n got %x\nwant %x", name, src.kind, unsent, got, want)
				}
				if len(got) > outboxSize(head, attrs, reply) {
					t.Errorf("%s: %d bytes, more than outboxSize's %d", name, len(got), outboxSize(head, attrs, reply))
				}
				if _, _, err := outboxParts(src.rec, src.kind, 10); !errors.Is(err, ErrCorrupt) {
					t.Errorf("%s: wrong seq: %v, want ErrCorrupt", name, err)
				}
				other := byte(kindEntry + kindOutbox - src.kind)
				if _, _, err := outboxParts(src.rec, other, 9); !errors.Is(err, ErrCorrupt) {
					t.Errorf("%s: wrong kind: %v, want ErrCorrupt", name, err)
				}
				for cut := seqHeader; cut < len(src.rec); cut++ { // as the decoders say
					bad := seal(append([]byte(nil), src.rec[:cut]...), true)
					_, err := decodeEntry(bad, 9)
					if src.kind == kindOutbox {
						_, err = decodeOutbox(bad, 9)
					}
					if _, _, got := outboxParts(bad, src.kind, 9); (got == nil) != (err == nil) || (got != nil && !errors.Is(got, ErrCorrupt)) {
						t.Fatalf("%s: record cut at %d: %v; decoding it: %v", name, cut, got, err)
					}
				}
			}
		}
	}
}

// encodeEntry encodes a pending entry with seq in a fresh record (the journal
// appends into its own buffers with appendEntry).
func encodeEntry(e *Entry, seq uint64) []byte {
	return appendEntry(make([]byte, 0, seqHeader+entrySize(e)), e, seq)
}

// encodeOutbox encodes an outbox record from scratch: the reference the
// journal's appendOutbox, which copies from the pending record, is checked
// against.
func encodeOutbox(e *Entry, seq uint64, flushBy time.Time, reply []byte, unsent bool) []byte {
	c := *e
	c.Input = nil // not kept in the outbox: do not size the record for it
	b := appendHeader(make([]byte, 0, seqHeader+entrySize(&c)+outboxTailSize(reply)), kindOutbox, true)
	setSeq(b, seq)
	b = appendEntryBody(b, e, nil)
	return seal(appendOutboxTail(b, flushBy, reply, unsent), true)
}

// TestAppendEntryBodyMatchesReference: appendEntryBody writes what it always
// did (the reference below, as it was before attributes were skipped when
// there are none): the input one little-endian float32 after another, then the
// attributes sorted after their count; into a buffer with room or without, and
// after bytes already in it.
func TestAppendEntryBodyMatchesReference(t *testing.T) {
	input := make([]float32, 784)
	for i := range input {
		input[i] = float32(i)*0.37 - 100
	}
	input[3], input[5] = float32(math.NaN()), float32(math.Inf(1))
	reference := func(b []byte, e *Entry) []byte {
		b = appendTime(b, e.Received)
		b = appendTime(b, e.Deadline)
		b = appendString(b, e.App)
		b = appendString(b, e.Device)
		b = appendString(b, e.ID)
		b = appendString(b, e.ReplyTo)
		b = binary.AppendUvarint(b, uint64(len(e.Input)))
		for _, f := range e.Input {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
		}
		b = binary.AppendUvarint(b, uint64(len(e.Attrs)))
		for _, k := range slices.Sorted(maps.Keys(e.Attrs)) {
			b = appendString(b, k)
			b = appendString(b, e.Attrs[k])
		}
		return b
	}
	big := sampleEntry()
	big.Input = input
	for name, e := range map[string]*Entry{
		"sample":   sampleEntry(),
		"784":      big,
		"no input": {Key: Key{App: "a", Device: "d", ID: "i"}},
		"no attrs": {Key: Key{App: "a", Device: "d", ID: "i"}, Input: input},
	} {
		for _, prefix := range [][]byte{nil, []byte("head"), make([]byte, 3, 4096)} {
			want := reference(slices.Clone(prefix), e)
			if got := appendEntryBody(slices.Clone(prefix), e, e.Input); !bytes.Equal(got, want) {
				t.Errorf("%s after %d bytes (room %d):\n got %x\nwant %x", name, len(prefix), cap(prefix), got, want)
			}
		}
	}
}

// BenchmarkAppendEntry encodes a pending record of a 784-value input (a
// Fashion-MNIST request) without attributes into a reused buffer, as Put does
// for the gateway: no allocation (3 when the empty attributes were sorted).
func BenchmarkAppendEntry(b *testing.B) {
	e := sampleEntry()
	e.Attrs = nil
	e.Input = make([]float32, 784)
	buf := make([]byte, 0, seqHeader+entrySize(e))
	b.ReportAllocs()
	for b.Loop() {
		buf = appendEntry(buf[:0], e, 7)
	}
}

// TestAppendEntryWithoutAttrsAllocatesNothing: Put's encoding of a request
// without attributes (all the gateway's) into a buffer with room allocates
// nothing; sorting the keys of an empty map cost three allocations per request.
func TestAppendEntryWithoutAttrsAllocatesNothing(t *testing.T) {
	e := sampleEntry()
	e.Attrs = nil
	buf := make([]byte, 0, seqHeader+entrySize(e))
	if n := testing.AllocsPerRun(100, func() { buf = appendEntry(buf[:0], e, 7) }); n != 0 {
		t.Errorf("appendEntry allocated %v times, want 0", n)
	}
}
