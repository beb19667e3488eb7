package store_test

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// Answered records an answer for a key never put, so that copies of the
// request get it, after a reopen too; it writes nothing for a key the journal
// knows and answers as Put would.
func TestAnswered(t *testing.T) {
	clk := storetest.NewClock()
	path := filepath.Join(t.TempDir(), "j.db")
	opts := store.Options{Now: clk.Now, Retention: time.Minute, NoSync: true}
	s := storetest.Open(t, path, opts)

	res, err := s.Answered(key(1), []byte("estimate"))
	if err != nil || res.Dup != store.New {
		t.Fatalf("Answered new key = %+v, %v; want New", res, err)
	}
	wantCounts(t, s, 0, 0, 1)
	if res := mustPut(t, s, entry(1), store.DupDone); string(res.Reply) != "estimate" {
		t.Errorf("Put of a copy: reply %q, want the recorded one", res.Reply)
	}
	// Known keys: nothing written, Put's answer.
	res, err = s.Answered(key(1), []byte("another"))
	if err != nil || res.Dup != store.DupDone || string(res.Reply) != "estimate" {
		t.Errorf("Answered of an answered key = %+v, %v; want DupDone with the first reply", res, err)
	}
	p := mustPut(t, s, entry(2), store.New)
	res, err = s.Answered(key(2), []byte("estimate"))
	if err != nil || res.Dup != store.DupPending || res.Seq != p.Seq {
		t.Errorf("Answered of a pending key = %+v, %v; want DupPending seq %d", res, err, p.Seq)
	}
	if got := pendingKeys(t, s); len(got) != 1 || got[0] != key(2) {
		t.Errorf("pending after Answered of a pending key = %v, want [%s]", got, key(2))
	}
	if err := s.Outbox(key(2), []byte("model"), clk.Now()); err != nil {
		t.Fatal(err)
	}
	res, err = s.Answered(key(2), []byte("estimate"))
	if err != nil || res.Dup != store.DupDone || string(res.Reply) != "model" {
		t.Errorf("Answered of a key in the outbox = %+v, %v; want DupDone with the outbox's reply", res, err)
	}
	wantCounts(t, s, 0, 1, 1)

	// Forgotten after Retention: recorded afresh.
	clk.Advance(2 * time.Minute)
	res, err = s.Answered(key(1), []byte("later"))
	if err != nil || res.Dup != store.New {
		t.Errorf("Answered after Retention = %+v, %v; want New", res, err)
	}
	wantCounts(t, s, 0, 1, 1)

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = storetest.Open(t, path, opts)
	if res := mustPut(t, s, entry(1), store.DupDone); string(res.Reply) != "later" {
		t.Errorf("after reopening: reply %q, want %q", res.Reply, "later")
	}
	if _, err := s.Answered(store.Key{App: "cls"}, []byte("x")); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Answered of a bad key: %v, want ErrInvalid", err)
	}
}

// Answered refuses new keys while the journal is full, as Put does, and still
// answers known ones.
func TestAnsweredRefusedWhenFull(t *testing.T) {
	s := storetest.New(t, func(o *store.Options) { o.MaxBytes = 64 << 10 })
	fillUntilFull(t, s)
	if _, err := s.Answered(key(20000), []byte("r")); !errors.Is(err, store.ErrFull) {
		t.Errorf("Answered of a new key in a full journal: %v, want ErrFull", err)
	}
	if res, err := s.Answered(key(0), []byte("r")); err != nil || res.Dup != store.DupPending {
		t.Errorf("Answered of a pending key in a full journal = %+v, %v; want DupPending", res, err)
	}
}

// A key answered longer ago than Retention is a new key to Answered, as it is
// to Put: while the journal is full it is refused, not recorded afresh.
func TestAnsweredStaleKeyRefusedWhenFull(t *testing.T) {
	clk := storetest.NewClock()
	s := storetest.New(t, func(o *store.Options) { o.Now = clk.Now; o.Retention = time.Minute; o.MaxBytes = 256 << 10 })
	if res, err := s.Answered(key(20000), []byte("estimate")); err != nil || res.Dup != store.New {
		t.Fatalf("Answered = %+v, %v; want New", res, err)
	}
	clk.Advance(2 * time.Minute) // forgotten, not yet collected
	fillUntilFull(t, s)
	if _, err := s.Put(entry(20000)); !errors.Is(err, store.ErrFull) {
		t.Fatalf("Put of the forgotten key in a full journal: %v, want ErrFull", err)
	}
	if res, err := s.Answered(key(20000), []byte("later")); !errors.Is(err, store.ErrFull) {
		t.Errorf("Answered of the forgotten key in a full journal = %+v, %v; want ErrFull, as Put", res, err)
	}
}

// Answers recorded without a request cannot fill the journal: Answered stops
// recording them while the requests still have room (half the cap), so that
// a stream of answers from the estimate under overload never has the journal
// refuse the requests it could run.
func TestAnsweredLeavesRoomForRequests(t *testing.T) {
	const limit = 256 << 10
	s := storetest.New(t, func(o *store.Options) { o.MaxBytes = limit })
	reply := make([]byte, 400) // about an answer from the estimate's size
	for i := range reply {
		reply[i] = 'x'
	}
	var err error
	n := 0
	for ; n < 100000 && err == nil; n++ {
		_, err = s.Answered(key(n), reply)
	}
	if !errors.Is(err, store.ErrFull) {
		t.Fatalf("recording %d answers: %v, want ErrFull in the end", n, err)
	}
	if used := s.Stats().UsedBytes; used > limit/2+limit/8 {
		t.Errorf("answers alone took %d bytes of the %d-byte cap, want about half at most", used, limit)
	}
	e := entry(n + 1)
	if res, err := s.Put(e); err != nil || res.Dup != store.New {
		t.Fatalf("Put of a request after %d recorded answers = %+v, %v; want New (the answers must leave it room)", n, res, err)
	}
}

// fillUntilFull puts requests of 1 KiB of input into s until Put refuses one
// with ErrFull (s has a MaxBytes), failing the test on any other outcome.
func fillUntilFull(t *testing.T, s *store.Store) {
	t.Helper()
	var err error
	for n := 0; n < 10000 && err == nil; n++ {
		e := entry(n)
		e.Input = make([]float32, 256)
		_, err = s.Put(e)
	}
	if !errors.Is(err, store.ErrFull) {
		t.Fatalf("filling: %v, want ErrFull", err)
	}
}
