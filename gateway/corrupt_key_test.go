package gateway

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// corruptKeyJournal returns a journal that knows key (answered) but whose key
// record for it no longer decodes, as after a flipped bit on disk.
func corruptKeyJournal(t *testing.T, key store.Key) *store.Store {
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
	if err := j.Complete(key, []byte(`{"v":1,"status":"ok"}`)); err != nil {
		t.Fatal(err)
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
	return j
}

// A request whose key record in the journal is unreadable (store.ErrCorrupt)
// cannot be looked up on this delivery or any later one. Left unacknowledged
// (as for a closed or damaged journal, TestLookupFailureLeavesRequestUnanswered)
// it would come back on every reconnect and hold one of the broker's in-flight
// slots for good; every path answers it instead, as Put's does: rejected,
// internal, saying the id cannot be used again, and acknowledged once the
// broker has the reply. The failure is counted; the gateway keeps running.
func TestCorruptKeyRecordAnsweredInternal(t *testing.T) {
	input := make([]float32, 784)
	const topic = "sneakgate/req/fashion/cam-1"
	for _, tc := range []struct {
		name           string
		payload        protocol.Payload
		degradeRefused bool
		maxQueue       int
		op             string
	}{
		{"expired on arrival", protocol.Payload{ID: "a", DeadlineMS: 1000, SentAt: time.Now().Add(-time.Minute), Input: input, B64: true}, false, 0, "lookup"},
		{"refused for overload", protocol.Payload{ID: "b", DeadlineMS: 60000, Input: input, B64: true}, false, 0, "lookup"},
		{"refused and answered from the estimate", protocol.Payload{ID: "c", DeadlineMS: 60000, Input: input, B64: true}, true, 0, "lookup"},
		{"deadline past", protocol.Payload{ID: "d", Deadline: time.Now().Add(-time.Second), Input: input, B64: true}, false, 0, "lookup"},
		{"admitted", protocol.Payload{ID: "e", DeadlineMS: 60000, Input: input, B64: true}, false, 10, "put"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := &fakeToken{done: make(chan struct{})}
			c := &fakeClient{tokens: []*fakeToken{tok}}
			g := handlerGateway(t, c, tc.degradeRefused)
			g.cfg.Admission.MaxQueue = tc.maxQueue
			g.fatal = make(chan struct{})
			g.journal = corruptKeyJournal(t, store.Key{App: "fashion", Device: "cam-1", ID: tc.payload.ID})
			msg := newFakeMessage(topic, tc.payload.Marshal())
			g.handle(arrival{msg: msg, at: time.Now()})
			sent := c.sent()
			if len(sent) != 1 {
				t.Fatalf("%d replies published, want 1", len(sent))
			}
			rep, err := protocol.ParseReply([]byte(sent[0]))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Status != protocol.StatusRejected || rep.Reason != protocol.ReasonInternal || rep.Error != msgCorruptKey || rep.ID != tc.payload.ID {
				t.Errorf("reply %s/%s %q for %q, want rejected/internal %q", rep.Status, rep.Reason, rep.Error, rep.ID, msgCorruptKey)
			}
			close(tok.done) // the PUBACK
			select {
			case <-msg.acked:
			case <-time.After(10 * time.Second):
				t.Fatal("request not acknowledged after the broker acknowledged its reply")
			}
			if got := testutil.ToFloat64(g.m.storeErrors.WithLabelValues(tc.op)); got != 1 {
				t.Errorf("store_errors_total{op=%s} = %v, want 1", tc.op, got)
			}
			if err := g.fatalError(); err != nil {
				t.Errorf("the gateway stops: %v", err)
			}
		})
	}
}
