package gateway

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// corruptKeyJournal returns a journal at a new path that knows key, answered
// or pending, but whose key record for it no longer decodes, as after a
// flipped bit on disk, and the options it was opened with.
func corruptKeyJournal(t *testing.T, key store.Key, answered bool) (*store.Store, string, store.Options) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "journal.db")
	o := storetest.Options(t)
	o.Now = time.Now
	j, err := store.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Put(&store.Entry{Key: key, Received: time.Now(), Deadline: time.Now().Add(time.Minute), ReplyTo: "r"}); err != nil {
		t.Fatal(err)
	}
	if answered {
		if err := j.Complete(key, []byte(`{"v":1,"status":"ok"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("keys"))
		k, v := b.Cursor().First()
		if k == nil {
			return errors.New("no key record")
		}
		bad := append([]byte(nil), v...)
		bad[len(bad)-1] ^= 0x10
		return b.Put(append([]byte(nil), k...), bad)
	})
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}
	if j, err = store.Open(path, o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Close() })
	if _, err := j.Lookup(key); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("Lookup of the damaged key record: %v, want store.ErrCorrupt", err)
	}
	return j, path, o
}

// A request whose key record in the journal is unreadable (store.ErrCorrupt)
// may be pending or answered, so any answer to it could contradict its first;
// and no later delivery in this session could read the record either (left
// unacknowledged, it would come back on every reconnect and hold one of the
// broker's in-flight slots). On every path the gateway treats it as damage
// found while running: no reply, the request left unacknowledged, the failure
// counted, and the gateway stops. The next start's verification
// (store.OpenOrRecover, as `sneakgate serve` opens the journal) salvages the
// journal and indexes the key again, so the redelivered copy is answered once:
// a pending request is a duplicate of the one the new session runs.
func TestCorruptKeyRecordStopsTheGateway(t *testing.T) {
	input := make([]float32, 784)
	const topic = "sneakgate/req/fashion/cam-1"
	for _, tc := range []struct {
		name           string
		payload        protocol.Payload
		degradeRefused bool
		maxQueue       int
		op             string
		answered       bool
	}{
		{"expired on arrival", protocol.Payload{ID: "a", DeadlineMS: 1000, SentAt: time.Now().Add(-time.Minute), Input: input, B64: true}, false, 0, "lookup", true},
		{"refused for overload", protocol.Payload{ID: "b", DeadlineMS: 60000, Input: input, B64: true}, false, 0, "lookup", false},
		{"refused and answered from the estimate", protocol.Payload{ID: "c", DeadlineMS: 60000, Input: input, B64: true}, true, 0, "lookup", true},
		{"deadline past", protocol.Payload{ID: "d", Deadline: time.Now().Add(-time.Second), Input: input, B64: true}, false, 0, "lookup", false},
		{"admitted", protocol.Payload{ID: "e", DeadlineMS: 60000, Input: input, B64: true}, false, 10, "put", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &fakeClient{}
			g := handlerGateway(t, c, tc.degradeRefused)
			g.cfg.Admission.MaxQueue = tc.maxQueue
			g.fatal = make(chan struct{})
			key := store.Key{App: "fashion", Device: "cam-1", ID: tc.payload.ID}
			j, path, o := corruptKeyJournal(t, key, tc.answered)
			g.journal = j
			leftForRedelivery(t, g, c, topic, tc.payload, tc.op)
			if err := g.fatalError(); !errors.Is(err, store.ErrCorrupt) {
				t.Errorf("the gateway's fatal error: %v, want one wrapping store.ErrCorrupt", err)
			}

			// The next start.
			if err := j.Close(); err != nil {
				t.Fatal(err)
			}
			s, rec, err := store.OpenOrRecover(path, o)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if rec == nil {
				t.Error("the next start's verification found nothing wrong")
			}
			res, err := s.Lookup(key)
			want := store.DupPending
			if tc.answered {
				want = store.New // the answered key's record was the only record of it
			}
			if err != nil || res.Dup != want {
				t.Errorf("after the next start's verification: Lookup %+v, %v; want %v", res, err, want)
			}
		})
	}
}

// TestPanicAfterABrokenJournalWriteLeavesIt: a request the journal could not
// store because its key record is unreadable is left for redelivery (above);
// a panic after that write (here the store-error counter's) leaves it so too:
// not acknowledged, no reply, and its queue place given back once.
func TestPanicAfterABrokenJournalWriteLeavesIt(t *testing.T) {
	const topic = "sneakgate/req/fashion/cam-1"
	c := &fakeClient{}
	g := handlerGateway(t, c, false)
	g.cfg.Admission.MaxQueue = 10
	g.fatal = make(chan struct{})
	p := protocol.Payload{ID: "e", DeadlineMS: 60000, Input: make([]float32, 784), B64: true}
	key := store.Key{App: "fashion", Device: "cam-1", ID: p.ID}
	g.journal, _, _ = corruptKeyJournal(t, key, false)
	// A counter of the wrong arity panics when the failed write is counted.
	g.m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"op", "extra"})
	msg := newFakeMessage(topic, p.Marshal())
	g.handle(arrival{msg: msg, at: time.Now()})
	if sent := c.sent(); len(sent) != 0 {
		t.Errorf("%d replies published (%s), want none: the request may be in the journal", len(sent), sent[0])
	}
	if msg.isAcked() {
		t.Error("request acknowledged, want it left for redelivery")
	}
	if q := g.loop.Queued(); q != 0 {
		t.Errorf("loop.Queued() = %d after the panic, want 0", q)
	}
}
