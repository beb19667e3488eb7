package store_test

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

func key(i int) store.Key {
	return store.Key{App: "cls", Device: fmt.Sprintf("dev-%d", i%7), ID: fmt.Sprintf("req-%d", i)}
}

func entry(i int) *store.Entry {
	return &store.Entry{
		Key:      key(i),
		Received: storetest.Epoch.Add(time.Duration(i) * time.Millisecond),
		Deadline: storetest.Epoch.Add(time.Duration(i) * time.Second),
		ReplyTo:  "sg/reply/cls/" + key(i).Device,
		Input:    []float32{float32(i), 0.5, float32(math.Inf(1)), float32(math.Copysign(0, -1))},
		Attrs:    map[string]string{"corr": fmt.Sprint(i)},
	}
}

func mustPut(t testing.TB, s *store.Store, e *store.Entry, want store.Dup) store.PutResult {
	t.Helper()
	res, err := s.Put(e)
	if err != nil {
		t.Fatalf("Put %s: %v", e.Key, err)
	}
	if res.Dup != want {
		t.Fatalf("Put %s: %s, want %s", e.Key, res.Dup, want)
	}
	return res
}

func pendingKeys(t testing.TB, s *store.Store) []store.Key {
	t.Helper()
	es, err := s.Pending()
	if err != nil {
		t.Fatal(err)
	}
	var ks []store.Key
	for i, e := range es {
		if i > 0 && e.Seq <= es[i-1].Seq {
			t.Errorf("Pending not in Seq order: %d after %d", e.Seq, es[i-1].Seq)
		}
		ks = append(ks, e.Key)
	}
	return ks
}

func outboxKeys(t testing.TB, s *store.Store) []store.Key {
	t.Helper()
	es, err := s.OutboxEntries()
	if err != nil {
		t.Fatal(err)
	}
	var ks []store.Key
	for _, e := range es {
		ks = append(ks, e.Key)
	}
	return ks
}

func wantCounts(t testing.TB, s *store.Store, pending, outbox, done int) {
	t.Helper()
	st := s.Stats()
	if st.Pending != pending || st.Outbox != outbox || st.Done != done {
		t.Errorf("Stats pending/outbox/done = %d/%d/%d, want %d/%d/%d", st.Pending, st.Outbox, st.Done, pending, outbox, done)
	}
}

func TestLifecycle(t *testing.T) {
	clk := storetest.NewClock()
	s := storetest.New(t, func(o *store.Options) { o.Now = clk.Now; o.Retention = time.Minute })

	var seqs []uint64
	for i := range 4 {
		e := entry(i)
		mustPut(t, s, e, store.New)
		seqs = append(seqs, e.Seq)
	}
	if !slices.IsSorted(seqs) || seqs[0] == 0 {
		t.Errorf("Seqs %v: want increasing from 1", seqs)
	}
	wantCounts(t, s, 4, 0, 0)

	// Replies for 0 and 3 cannot be delivered; 3's deadline is earlier.
	if err := s.Outbox(key(0), []byte("r0"), storetest.Epoch.Add(9*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.Outbox(key(3), []byte("r3"), storetest.Epoch.Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got, want := pendingKeys(t, s), []store.Key{key(1), key(2)}; !slices.Equal(got, want) {
		t.Errorf("Pending = %v, want %v", got, want)
	}
	ob, err := s.OutboxEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(ob) != 2 || ob[0].Key != key(3) || ob[1].Key != key(0) {
		t.Fatalf("OutboxEntries = %+v, want 3 then 0 (deadline order)", ob)
	}
	want0 := *entry(0)
	want0.Seq, want0.Input = seqs[0], nil
	if got := ob[1]; !reflect.DeepEqual(got.Entry, want0) || string(got.Reply) != "r0" || !got.FlushBy.Equal(storetest.Epoch.Add(9*time.Second)) {
		t.Errorf("outbox entry = %+v, want %+v with reply r0", got, want0)
	}
	wantCounts(t, s, 2, 2, 0)

	// Deliver: one from the outbox, one straight from pending.
	if err := s.Complete(key(3), []byte("r3")); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(key(1), []byte("r1")); err != nil {
		t.Fatal(err)
	}
	if got, want := pendingKeys(t, s), []store.Key{key(2)}; !slices.Equal(got, want) {
		t.Errorf("Pending = %v, want %v", got, want)
	}
	if got, want := outboxKeys(t, s), []store.Key{key(0)}; !slices.Equal(got, want) {
		t.Errorf("OutboxEntries = %v, want %v", got, want)
	}
	wantCounts(t, s, 1, 1, 2)

	// GC forgets completed keys only once Retention has passed.
	clk.Advance(59 * time.Second)
	if n, err := s.GC(clk.Now()); err != nil || n != 0 {
		t.Errorf("GC before Retention = %d, %v; want 0", n, err)
	}
	clk.Advance(time.Second)
	if n, err := s.GC(clk.Now()); err != nil || n != 2 {
		t.Errorf("GC at Retention = %d, %v; want 2", n, err)
	}
	wantCounts(t, s, 1, 1, 0)
	mustPut(t, s, entry(1), store.New)
}

func TestDuplicates(t *testing.T) {
	clk := storetest.NewClock()
	s := storetest.New(t, func(o *store.Options) { o.Now = clk.Now; o.Retention = time.Minute })

	first := entry(1)
	mustPut(t, s, first, store.New)
	if res := mustPut(t, s, entry(1), store.DupPending); res.Seq != first.Seq {
		t.Errorf("DupPending Seq = %d, want the first copy's %d", res.Seq, first.Seq)
	}

	// An unsent reply is still to come; once it may have been delivered, it is the
	// answer to every repeat.
	if err := s.OutboxUnsent(key(1), []byte("r0"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, entry(1), store.DupPending)
	if ob, err := s.OutboxEntries(); err != nil || len(ob) != 1 || !ob[0].Unsent {
		t.Fatalf("OutboxEntries = %+v, %v; want one unsent", ob, err)
	}
	if err := s.Outbox(key(1), []byte("r1"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if res := mustPut(t, s, entry(1), store.DupDone); string(res.Reply) != "r1" {
		t.Errorf("DupDone reply of a sent outbox entry = %q, want r1", res.Reply)
	}
	if res, err := s.Lookup(key(1)); err != nil || res.Dup != store.DupDone || string(res.Reply) != "r1" {
		t.Errorf("Lookup of a sent outbox entry = %+v, %v", res, err)
	}
	if ob, err := s.OutboxEntries(); err != nil || len(ob) != 1 || ob[0].Unsent {
		t.Fatalf("OutboxEntries = %+v, %v; want one sent", ob, err)
	}
	if oe, err := s.OutboxEntry(key(1)); err != nil || oe == nil || oe.Unsent || string(oe.Reply) != "r1" {
		t.Fatalf("OutboxEntry = %+v, %v; want the sent reply r1", oe, err)
	}

	if err := s.Complete(key(1), []byte("r1")); err != nil {
		t.Fatal(err)
	}
	if oe, err := s.OutboxEntry(key(1)); err != nil || oe != nil {
		t.Fatalf("OutboxEntry of a completed key = %+v, %v; want nil", oe, err)
	}
	if res := mustPut(t, s, entry(1), store.DupDone); string(res.Reply) != "r1" {
		t.Errorf("DupDone reply = %q, want r1", res.Reply)
	}
	// A second Complete keeps the first reply.
	if err := s.Complete(key(1), []byte("other")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(59 * time.Second)
	if res := mustPut(t, s, entry(1), store.DupDone); string(res.Reply) != "r1" {
		t.Errorf("DupDone reply = %q, want r1", res.Reply)
	}

	// Past Retention the key is forgotten even before GC runs, and the stale
	// expiry record must not make GC drop the new entry.
	clk.Advance(time.Second)
	again := mustPut(t, s, entry(1), store.New)
	if again.Seq <= first.Seq {
		t.Errorf("re-put Seq %d, want > %d", again.Seq, first.Seq)
	}
	wantCounts(t, s, 1, 0, 0)
	if n, err := s.GC(clk.Now()); err != nil || n != 0 {
		t.Errorf("GC = %d, %v; want 0 (the key is pending again)", n, err)
	}
	if got := pendingKeys(t, s); !slices.Equal(got, []store.Key{key(1)}) {
		t.Errorf("Pending = %v, want [%v]", got, key(1))
	}

	// Complete of a key never put (a request answered without running) is
	// remembered too.
	if err := s.Complete(key(2), []byte("rejected")); err != nil {
		t.Fatal(err)
	}
	if res := mustPut(t, s, entry(2), store.DupDone); string(res.Reply) != "rejected" {
		t.Errorf("DupDone reply = %q", res.Reply)
	}
	wantCounts(t, s, 1, 0, 1)
}

func TestKeysAreUnambiguous(t *testing.T) {
	s := storetest.New(t)
	for _, k := range []store.Key{{"a", "b.c", "d"}, {"a", "b", "c/d"}, {"a", "b/c", "d"}, {"a/b", "c", "d"}, {"a", "b", "c\x00d"}} {
		mustPut(t, s, &store.Entry{Key: k}, store.New)
	}
}

func TestReopenRecoversIdenticalEntries(t *testing.T) {
	clk := storetest.NewClock()
	o := storetest.Options(t)
	o.Now = clk.Now
	path := t.TempDir() + "/journal.db"
	s := storetest.Open(t, path, o)
	var want []*store.Entry
	for i := range 5 {
		e := entry(i)
		if i == 4 {
			e.Received = time.Time{} // set from the clock by Put
			e.Attrs = nil
		}
		mustPut(t, s, e, store.New)
		want = append(want, e)
	}
	if err := s.Outbox(key(2), []byte("r2"), want[2].Deadline); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(key(3), []byte("r3")); err != nil {
		t.Fatal(err)
	}
	// Close without completing the rest, as a shutdown mid-work would.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = storetest.Open(t, path, o)
	got, err := s.Pending()
	if err != nil {
		t.Fatal(err)
	}
	wantPending := []*store.Entry{want[0], want[1], want[4]}
	if len(got) != len(wantPending) {
		t.Fatalf("Pending after reopen: %d entries, want %d", len(got), len(wantPending))
	}
	for i := range got {
		if !sameEntry(got[i], wantPending[i]) {
			t.Errorf("Pending[%d] after reopen:\n got %+v\nwant %+v", i, got[i], wantPending[i])
		}
	}
	if !want[4].Received.Equal(clk.Now()) {
		t.Errorf("Received defaulted to %v, want the clock's %v", want[4].Received, clk.Now())
	}
	ob, err := s.OutboxEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(ob) != 1 || ob[0].Key != key(2) || string(ob[0].Reply) != "r2" || ob[0].ReplyTo != want[2].ReplyTo {
		t.Errorf("OutboxEntries after reopen = %+v", ob)
	}
	mustPut(t, s, entry(3), store.DupDone)
	mustPut(t, s, entry(2), store.DupDone) // its reply may have been delivered
	wantCounts(t, s, 3, 1, 1)

	// Seq keeps growing across restarts.
	e := entry(9)
	mustPut(t, s, e, store.New)
	if e.Seq <= want[4].Seq {
		t.Errorf("Seq after reopen = %d, want > %d", e.Seq, want[4].Seq)
	}
}

func TestInvalidArguments(t *testing.T) {
	s := storetest.New(t)
	long := strings.Repeat("x", store.MaxKeyPart+1)
	for _, k := range []store.Key{{}, {"a", "b", ""}, {"", "b", "c"}, {"a", long, "c"}} {
		if _, err := s.Put(&store.Entry{Key: k}); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("Put %v: err %v, want ErrInvalid", k, err)
		}
		if err := s.Complete(k, nil); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("Complete %v: err %v, want ErrInvalid", k, err)
		}
		if err := s.Outbox(k, nil, time.Time{}); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("Outbox %v: err %v, want ErrInvalid", k, err)
		}
	}
	if _, err := s.Put(nil); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Put(nil): err %v, want ErrInvalid", err)
	}
	big := &store.Entry{Key: key(1), Input: make([]float32, store.MaxRecordSize/4)}
	if _, err := s.Put(big); !errors.Is(err, store.ErrTooLarge) {
		t.Errorf("Put of a %d-float input: err %v, want ErrTooLarge", len(big.Input), err)
	}
	if err := s.Outbox(key(1), nil, time.Time{}); !errors.Is(err, store.ErrNotPending) {
		t.Errorf("Outbox of an unknown key: err %v, want ErrNotPending", err)
	}
	if err := s.Complete(key(1), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Outbox(key(1), nil, time.Time{}); !errors.Is(err, store.ErrNotPending) {
		t.Errorf("Outbox of a completed key: err %v, want ErrNotPending", err)
	}
	wantCounts(t, s, 0, 0, 1)
}

func TestClosed(t *testing.T) {
	s := storetest.New(t)
	mustPut(t, s, entry(1), store.New)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	_, putErr := s.Put(entry(2))
	_, pendErr := s.Pending()
	_, obErr := s.OutboxEntries()
	_, gcErr := s.GC(time.Now())
	_, lookErr := s.Lookup(key(1))
	_, lookNewErr := s.Lookup(key(2)) // unknown: no read transaction, ErrClosed all the same
	_, oeErr := s.OutboxEntry(key(2))
	for name, err := range map[string]error{
		"Put": putErr, "Pending": pendErr, "OutboxEntries": obErr, "GC": gcErr,
		"Lookup": lookErr, "Lookup of an unknown key": lookNewErr, "OutboxEntry of an unknown key": oeErr,
		"Outbox": s.Outbox(key(1), nil, time.Time{}), "Complete": s.Complete(key(1), nil), "Check": s.Check(),
	} {
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: err %v, want ErrClosed", name, err)
		}
	}
}

func TestGCInChunks(t *testing.T) {
	clk := storetest.NewClock()
	s := storetest.New(t, func(o *store.Options) { o.Now = clk.Now; o.Retention = time.Minute })
	const n = 2500
	for i := range n {
		if err := s.Complete(key(i), []byte("r")); err != nil {
			t.Fatal(err)
		}
		if i == n/2 {
			clk.Advance(10 * time.Second)
		}
	}
	commits := s.Stats().Commits
	clk.Advance(50 * time.Second)
	if got, err := s.GC(clk.Now()); err != nil || got != n/2+1 {
		t.Fatalf("GC = %d, %v; want %d (those completed a minute ago)", got, err, n/2+1)
	}
	clk.Advance(10 * time.Second)
	if got, err := s.GC(clk.Now()); err != nil || got != n-(n/2+1) {
		t.Fatalf("GC = %d, %v; want %d", got, err, n-(n/2+1))
	}
	if c := s.Stats().Commits - commits; c < 3 {
		t.Errorf("GC of %d keys took %d commits, want at least 3 (chunked)", n, c)
	}
	wantCounts(t, s, 0, 0, 0)
}

// sameEntry compares entries with Input compared bit for bit.
func sameEntry(a, b *store.Entry) bool {
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

// Lookup says what Put would, without writing.
func TestLookup(t *testing.T) {
	clk := storetest.NewClock()
	s := storetest.New(t, func(o *store.Options) { o.Now = clk.Now; o.Retention = time.Minute })
	look := func(want store.Dup) store.PutResult {
		t.Helper()
		res, err := s.Lookup(key(1))
		if err != nil || res.Dup != want {
			t.Fatalf("Lookup = %v, %v; want %v", res.Dup, err, want)
		}
		return res
	}
	look(store.New)
	if st := s.Stats(); st.Pending != 0 {
		t.Fatalf("Lookup wrote: %+v", st)
	}
	mustPut(t, s, entry(1), store.New)
	look(store.DupPending)
	if err := s.Complete(key(1), []byte("r1")); err != nil {
		t.Fatal(err)
	}
	if res := look(store.DupDone); string(res.Reply) != "r1" {
		t.Errorf("reply %q", res.Reply)
	}
	clk.Advance(2 * time.Minute)
	look(store.New)
	if _, err := s.Lookup(store.Key{}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("bad key: %v", err)
	}
}

// OutboxAll is Outbox of each item: one error per item, the others written.
func TestOutboxAll(t *testing.T) {
	s := storetest.New(t)
	for i := range 3 {
		mustPut(t, s, entry(i), store.New)
	}
	items := []store.OutboxItem{
		{Key: key(0), Reply: []byte("r0"), FlushBy: storetest.Epoch},
		{Key: key(7), Reply: []byte("r7")},       // never put
		{Key: store.Key{}, Reply: []byte("bad")}, // invalid
		{Key: key(2), Reply: []byte("r2")},
		{Key: key(2), Reply: []byte("r2, again")}, // replaces the one before
	}
	errs := s.OutboxAll(items)
	if len(errs) != len(items) || errs[0] != nil || !errors.Is(errs[1], store.ErrNotPending) ||
		!errors.Is(errs[2], store.ErrInvalid) || errs[3] != nil || errs[4] != nil {
		t.Fatalf("OutboxAll: %v", errs)
	}
	got := map[store.Key]string{}
	es, err := s.OutboxEntries()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		got[e.Key] = string(e.Reply)
	}
	if len(got) != 2 || got[key(0)] != "r0" || got[key(2)] != "r2, again" {
		t.Errorf("outbox %v, want r0 and the second r2", got)
	}
	wantCounts(t, s, 1, 2, 0)
	// Unsent writes as OutboxUnsent: marked unsent, and a duplicate of the
	// request is still pending.
	if errs := s.OutboxAll([]store.OutboxItem{{Key: key(1), Reply: []byte("r1"), Unsent: true}}); errs[0] != nil {
		t.Fatalf("OutboxAll unsent: %v", errs[0])
	}
	if e, err := s.OutboxEntry(key(1)); err != nil || e == nil || !e.Unsent || string(e.Reply) != "r1" {
		t.Errorf("unsent item: %+v, %v; want r1 marked unsent", e, err)
	}
	mustPut(t, s, entry(1), store.DupPending)
	wantCounts(t, s, 0, 3, 0)
	if errs := s.OutboxAll(nil); len(errs) != 0 {
		t.Errorf("OutboxAll(nil): %v", errs)
	}
	s.Close()
	if errs := s.OutboxAll(items[:1]); !errors.Is(errs[0], store.ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", errs)
	}
}
