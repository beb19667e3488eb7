package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// fakeToken is an MQTT token the test completes by hand.
type fakeToken struct {
	done chan struct{}
	err  error
}

func (t *fakeToken) Wait() bool { <-t.done; return true }
func (t *fakeToken) WaitTimeout(d time.Duration) bool {
	select {
	case <-t.done:
		return true
	case <-time.After(d):
		return false
	}
}
func (t *fakeToken) Done() <-chan struct{} { return t.done }
func (t *fakeToken) Error() error          { return t.err }

// fakeClient records publishes; each returns the next token the test queued.
type fakeClient struct {
	mqtt.Client
	mu        sync.Mutex
	published []string
	topics    []string // each publish's topic
	tokens    []*fakeToken
	down      bool
	// gate, if set, is told that each publish holds a packet id (heldKey) until
	// the test deletes it, as paho's store is.
	gate *pubGate
	// loseAfterCheck, if set, is called once, by the next IsConnectionOpen that
	// finds the connection open, just before it returns true: the connection is
	// lost (down from then on) right after the caller's check.
	loseAfterCheck func()
}

// heldKey is the store key of the i-th publish's packet id.
func (c *fakeClient) heldKey(i int) string { return fmt.Sprintf("o.%d", 60000+i) }

func (c *fakeClient) IsConnectionOpen() bool {
	c.mu.Lock()
	open, lose := !c.down, c.loseAfterCheck
	if open && lose != nil {
		c.loseAfterCheck, c.down = nil, true
	}
	c.mu.Unlock()
	if open && lose != nil {
		lose()
	}
	return open
}
func (c *fakeClient) Publish(topic string, _ byte, _ bool, payload any) mqtt.Token {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gate != nil {
		c.gate.Put(c.heldKey(len(c.published)), packets.NewControlPacket(packets.Publish))
	}
	c.published = append(c.published, string(payload.([]byte)))
	c.topics = append(c.topics, topic)
	if len(c.tokens) == 0 { // acknowledged at once
		t := &fakeToken{done: make(chan struct{})}
		close(t.done)
		return t
	}
	t := c.tokens[0]
	c.tokens = c.tokens[1:]
	return t
}

func (c *fakeClient) setDown(down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down = down
}

func (c *fakeClient) sent() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.published...)
}

// sentTopics are the topics of sent, in order.
func (c *fakeClient) sentTopics() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.topics...)
}

// startEgress starts an egress over c and j for a test (in a synctest bubble) and
// stops it when the test ends.
func startEgress(t *testing.T, c *fakeClient, j *fakeJournal, timeout time.Duration, rate float64, o egressOptions, m *metrics) *egress {
	e := newEgress(c, j, timeout, rate, nil, o, zerolog.Nop(), m)
	t.Cleanup(func() {
		e.Stop(context.Background())
		e.Close()
	})
	return e
}

// gatedOnePlace returns a packet-id gate with one place, open, a client whose
// every publish holds a place until the test frees it (gate.Del of its key), and
// egress options that use the gate.
func gatedOnePlace() (*pubGate, *fakeClient, egressOptions) {
	gate := newPubGate(1)
	gate.Open()
	o := defaultEgressOptions()
	o.Gate = gate
	return gate, &fakeClient{gate: gate}, o
}

func newFakeJournal() *fakeJournal { return &fakeJournal{outbox: map[store.Key][]byte{}} }

// locked runs f with the journal's lock held, to read its state from the test.
func (j *fakeJournal) locked(f func()) {
	j.mu.Lock()
	defer j.mu.Unlock()
	f()
}

// state is what j holds of k: every key completed so far, and whether k's
// reply is in the outbox.
func (j *fakeJournal) state(k store.Key) (completed []store.Key, inOutbox bool) {
	j.locked(func() { completed = slices.Clone(j.completed); _, inOutbox = j.outbox[k] })
	return completed, inOutbox
}

// fakeJournal records completions and keeps an outbox.
type fakeJournal struct {
	mu        sync.Mutex
	completed []store.Key
	outbox    map[store.Key][]byte
	unsent    map[store.Key]bool
	entry     store.Entry // Received and Deadline of every outbox entry
	// outboxAlls is the number of items of each OutboxAll call; gate, if set,
	// holds each OutboxAll until it can receive from it.
	outboxAlls []int
	gate       chan struct{}
}

func (j *fakeJournal) Complete(k store.Key, _ []byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.completed = append(j.completed, k)
	delete(j.outbox, k)
	return nil
}
func (j *fakeJournal) CompleteAsync(k store.Key, r []byte, done func(error)) { done(j.Complete(k, r)) }
func (j *fakeJournal) Outbox(k store.Key, r []byte, _ time.Time) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.outbox[k] = r
	delete(j.unsent, k)
	return nil
}
func (j *fakeJournal) OutboxAll(items []store.OutboxItem) []error {
	j.mu.Lock()
	j.outboxAlls = append(j.outboxAlls, len(items))
	gate := j.gate
	j.mu.Unlock()
	if gate != nil {
		<-gate
	}
	errs := make([]error, len(items))
	for i, it := range items {
		write := j.Outbox
		if it.Unsent {
			write = j.OutboxUnsent
		}
		errs[i] = write(it.Key, it.Reply, it.FlushBy)
	}
	return errs
}
func (j *fakeJournal) OutboxUnsent(k store.Key, r []byte, _ time.Time) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.outbox[k] = r
	if j.unsent == nil {
		j.unsent = map[store.Key]bool{}
	}
	j.unsent[k] = true
	return nil
}
func (j *fakeJournal) OutboxEntry(k store.Key) (*store.OutboxEntry, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r, ok := j.outbox[k]
	if !ok {
		return nil, nil
	}
	e := j.entry
	e.Key, e.ReplyTo = k, "t"
	return &store.OutboxEntry{Entry: e, Reply: r, Unsent: j.unsent[k]}, nil
}
func (j *fakeJournal) OutboxEntries() ([]store.OutboxEntry, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []store.OutboxEntry
	for k, r := range j.outbox {
		e := j.entry
		e.Key, e.ReplyTo = k, "t"
		out = append(out, store.OutboxEntry{Entry: e, Reply: r, Unsent: j.unsent[k]})
	}
	slices.SortFunc(out, func(a, b store.OutboxEntry) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// A reply whose PUBACK is slower than the publish timeout goes to the outbox, but
// the flusher does not publish it a second time while the client still holds the
// first copy; when the late PUBACK comes, the request is completed.
func TestSlowAckIsNotPublishedTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := &fakeToken{done: make(chan struct{})}
		c := &fakeClient{tokens: []*fakeToken{slow}}
		j := newFakeJournal()
		e := startEgress(t, c, j, time.Second, 0, defaultEgressOptions(), newMetrics(nil))
		k := store.Key{App: "a", Device: "d", ID: "1"}
		e.Answer(okAnswer(k, time.Now().Add(time.Hour)))
		time.Sleep(2 * time.Second) // past the publish timeout
		synctest.Wait()
		if len(j.outbox) != 1 || !e.isBusy(k) {
			t.Fatalf("outbox %v, late %v", j.outbox, e.isBusy(k))
		}
		e.flush(t.Context())
		if len(c.published) != 1 {
			t.Fatalf("published %d times while the first copy was pending", len(c.published))
		}
		close(slow.done) // the PUBACK arrives after all
		synctest.Wait()
		if len(j.completed) != 1 || len(j.outbox) != 0 || e.isBusy(k) {
			t.Errorf("completed %v, outbox %v", j.completed, j.outbox)
		}
	})
}

func okAnswer(k store.Key, deadline time.Time) *answerMsg {
	return &answerMsg{topic: "t", key: k, deadline: deadline, build: func(now time.Time) *protocol.Reply {
		met := !now.After(deadline)
		return &protocol.Reply{V: 1, ID: k.ID, App: k.App, Device: k.Device, Status: protocol.StatusOK,
			Class: protocol.Ptr(1), Model: "m", DeadlineMet: &met}
	}}
}

// An answer is durable in the outbox before it is first published: the journal
// holds exactly the bytes the broker got, so a repeat after a crash is identical.
func TestAnswerIsDurableBeforePublish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		held := &fakeToken{done: make(chan struct{})}
		c := &fakeClient{tokens: []*fakeToken{held}}
		j := newFakeJournal()
		e := startEgress(t, c, j, time.Minute, 0, defaultEgressOptions(), newMetrics(nil))
		k := store.Key{App: "a", Device: "d", ID: "1"}
		e.Answer(okAnswer(k, time.Now().Add(time.Hour)))
		synctest.Wait() // the worker waits for the PUBACK
		if sent := c.sent(); len(sent) != 1 || string(j.outbox[k]) != sent[0] || j.unsent[k] {
			t.Fatalf("published %q, outbox %q (unsent %v): want the same bytes, marked sent", sent, j.outbox[k], j.unsent[k])
		}
		e.flush(t.Context()) // the flusher sees it in the outbox, but it is in flight
		if sent := c.sent(); len(sent) != 1 {
			t.Fatalf("an answer in flight was published %d times", len(sent))
		}
		close(held.done)
		synctest.Wait()
		if len(j.completed) != 1 || len(j.outbox) != 0 {
			t.Errorf("after PUBACK: completed %v, outbox %v", j.completed, j.outbox)
		}
	})
}

// The answers a worker takes together while the broker is away are kept unsent
// in one group commit (one OutboxAll), as they are made durable together when it
// is there, rather than one commit after another.
func TestUnsentAnswersAreWrittenTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &fakeClient{down: true}
		j := newFakeJournal()
		j.gate = make(chan struct{})
		o := defaultEgressOptions()
		o.AnswerWorkers = 1
		e := startEgress(t, c, j, time.Second, 0, o, newMetrics(nil))
		key := func(i int) store.Key { return store.Key{App: "a", Device: "d", ID: fmt.Sprint(i)} }
		e.Answer(okAnswer(key(0), time.Now().Add(time.Hour)))
		synctest.Wait() // the worker holds the first answer in its OutboxAll
		for i := 1; i < 10; i++ {
			e.Answer(okAnswer(key(i), time.Now().Add(time.Hour)))
		}
		close(j.gate)
		synctest.Wait()
		j.locked(func() {
			if !slices.Equal(j.outboxAlls, []int{1, 9}) || len(j.unsent) != 10 || len(j.outbox) != 10 {
				t.Errorf("OutboxAll calls of %v items, %d of %d answers unsent; want [1 9] and all 10 unsent", j.outboxAlls, len(j.unsent), len(j.outbox))
			}
		})
		if len(c.sent()) != 0 {
			t.Errorf("published %d answers with the broker away", len(c.sent()))
		}
	})
}

// An answer decided while the broker is away waits unsent; published after its
// deadline it says expired (broker_unavailable), never ok with deadline_met.
func TestUnsentAnswerIsStampedAtPublication(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &fakeClient{down: true}
		j := newFakeJournal()
		e := startEgress(t, c, j, time.Second, 0, defaultEgressOptions(), newMetrics(nil))
		t0 := time.Now()
		j.entry = store.Entry{Received: t0, Deadline: t0.Add(2 * time.Second)}
		k := store.Key{App: "a", Device: "d", ID: "1"}
		e.Answer(okAnswer(k, j.entry.Deadline))
		synctest.Wait()
		if len(c.sent()) != 0 || !j.unsent[k] {
			t.Fatalf("broker away: published %v, unsent %v", c.sent(), j.unsent[k])
		}
		time.Sleep(20 * time.Second) // the broker comes back after the deadline
		c.setDown(false)
		e.flush(t.Context())
		sent := c.sent()
		if len(sent) != 1 {
			t.Fatalf("published %d replies, want 1", len(sent))
		}
		rep, err := protocol.ParseReply([]byte(sent[0]))
		if err != nil {
			t.Fatal(err)
		}
		if rep.Status != protocol.StatusExpired || rep.Reason != protocol.ReasonBrokerUnavailable ||
			rep.DeadlineMet == nil || *rep.DeadlineMet || rep.Class != nil || *rep.SlackMS != -18000 {
			t.Errorf("stale reply %s", sent[0])
		}
		if len(j.completed) != 1 {
			t.Errorf("completed %v", j.completed)
		}
	})
}

// Replies republished to duplicates never block and never wait for the broker:
// past the queue's bound they are dropped and counted (the broker has the first
// copy); answers have their own queue.
func TestRepeatsNeverBlock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &fakeClient{}
		j := newFakeJournal()
		m := newMetrics(nil)
		o := defaultEgressOptions()
		o.RawQueue, o.RawWorkers = 2, 0 // nothing drains the queue
		e := startEgress(t, c, j, time.Second, 0, o, m)
		for range 5 {
			e.SendRaw("t", "a", protocol.StatusOK, []byte(`{"v":1}`))
		}
		if got := testutil.ToFloat64(m.dropped.WithLabelValues("ok")); got != 3 {
			t.Errorf("dropped %v repeats, want 3", got)
		}
		e.Answer(okAnswer(store.Key{App: "a", Device: "d", ID: "x"}, time.Now().Add(time.Hour)))
		synctest.Wait()
		if len(j.completed) != 1 {
			t.Errorf("an answer behind a full repeat queue was not published: completed %v", j.completed)
		}
	})
}

// An owed reply (to a request that is not journaled: a refusal, a rejection, an
// answer from the estimate, an expired request) is handed to the broker at once,
// however many are waiting for their PUBACK, and is never dropped; its request is
// acknowledged only once the broker has acknowledged the reply, in the order the
// PUBACKs come. One the broker never gets (not connected, stopping, a failed
// publish) leaves its request unacknowledged, for the broker to deliver again.
func TestOwedRepliesAcknowledgeAfterPUBACK(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 3000 // more than every bounded queue of the egress
		tokens := make([]*fakeToken, n)
		for i := range tokens {
			tokens[i] = &fakeToken{done: make(chan struct{})}
		}
		c := &fakeClient{tokens: append([]*fakeToken(nil), tokens...)}
		m := newMetrics(nil)
		e := startEgress(t, c, newFakeJournal(), time.Second, 0, defaultEgressOptions(), m)
		var mu sync.Mutex
		var acked []int
		for i := range n {
			rep := &protocol.Reply{V: 1, ID: fmt.Sprint(i), App: "a", Device: "d", Status: protocol.StatusRejected, Reason: protocol.ReasonOverload}
			if err := e.Owe("t", rep, func() { mu.Lock(); acked = append(acked, i); mu.Unlock() }); err != nil {
				t.Fatalf("Owe %d: %v", i, err)
			}
		}
		synctest.Wait()
		if got := len(c.sent()); got != n {
			t.Fatalf("%d of %d owed replies handed to the client before any PUBACK", got, n)
		}
		if got := testutil.ToFloat64(m.owed); got != n {
			t.Errorf("unjournaled_replies_in_flight = %v, want %d", got, n)
		}
		mu.Lock()
		if len(acked) != 0 {
			t.Fatalf("%d requests acknowledged before the broker acknowledged their replies", len(acked))
		}
		mu.Unlock()
		for i := range n / 2 {
			close(tokens[i].done)
		}
		synctest.Wait()
		mu.Lock()
		if len(acked) != n/2 || !slices.IsSorted(acked) || acked[len(acked)-1] != n/2-1 {
			t.Fatalf("after %d PUBACKs, acknowledged %d requests (want the first %d in order)", n/2, len(acked), n/2)
		}
		mu.Unlock()
		tokens[n/2].err = mqtt.ErrNotConnected // this publish fails
		for i := n / 2; i < n; i++ {
			close(tokens[i].done)
		}
		synctest.Wait()
		mu.Lock()
		if len(acked) != n-1 || slices.Contains(acked, n/2) {
			t.Errorf("acknowledged %d of %d requests, want all but the one whose reply failed", len(acked), n)
		}
		mu.Unlock()
		if got := testutil.ToFloat64(m.owed); got != 0 {
			t.Errorf("unjournaled_replies_in_flight = %v after every PUBACK, want 0", got)
		}
		if got := testutil.ToFloat64(m.replies.WithLabelValues("_unknown", "rejected")); got != n-1 {
			t.Errorf("replies_total{rejected} = %v, want %d", got, n-1)
		}
		for _, st := range protocol.Statuses() {
			if got := testutil.ToFloat64(m.dropped.WithLabelValues(string(st))); got != 0 {
				t.Errorf("dropped{%s} = %v, want 0", st, got)
			}
		}

		// Not connected: nothing is published and nothing acknowledged.
		c.setDown(true)
		ackedDown := false
		err := e.Owe("t", &protocol.Reply{V: 1, ID: "down", App: "a", Status: protocol.StatusExpired}, func() { ackedDown = true })
		synctest.Wait()
		if !errors.Is(err, errNotConnected) || ackedDown || len(c.sent()) != n {
			t.Errorf("Owe while not connected: err %v, acknowledged %v, published %d (want errNotConnected, false, %d)", err, ackedDown, len(c.sent()), n)
		}
	})
}

// Without durable replies an answer is published before any journal write and
// completed on PUBACK; only a publish that fails leaves it in the outbox.
func TestAnswerWithoutDurableReplies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		held := &fakeToken{done: make(chan struct{})}
		c := &fakeClient{tokens: []*fakeToken{held}}
		j := newFakeJournal()
		o := defaultEgressOptions()
		o.Durable = false
		e := startEgress(t, c, j, time.Second, 0, o, newMetrics(nil))
		k := store.Key{App: "a", Device: "d", ID: "1"}
		e.Answer(okAnswer(k, time.Now().Add(time.Hour)))
		synctest.Wait()
		var n int
		j.locked(func() { n = len(j.outbox) })
		if len(c.sent()) != 1 || n != 0 {
			t.Fatalf("published %d, outbox %d: want published before any outbox write", len(c.sent()), n)
		}
		time.Sleep(2 * time.Second) // past the publish timeout
		synctest.Wait()
		var kept []byte
		var unsent bool
		j.locked(func() { kept, unsent = j.outbox[k], j.unsent[k] })
		if string(kept) != c.sent()[0] || unsent {
			t.Fatalf("after a timeout the outbox holds %q (unsent %v), want the published bytes", kept, unsent)
		}
		close(held.done)
		synctest.Wait()
		var done int
		j.locked(func() { done = len(j.completed) })
		if done != 1 {
			t.Errorf("completed %d, want 1", done)
		}
	})
}

// The flusher works from a snapshot of the outbox: an answer in flight when it
// was read, and completed by the time the flusher reaches it, is not published a
// second time.
func TestFlushSkipsAnswersCompletedSinceTheSnapshot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		held := &fakeToken{done: make(chan struct{})}
		c := &fakeClient{tokens: []*fakeToken{held}} // the answer's PUBACK is held
		j := newFakeJournal()
		k0 := store.Key{App: "a", Device: "d", ID: "0"} // left over from before
		j.outbox[k0] = []byte(`{"v":1,"id":"0","app":"a","device":"d","status":"ok"}`)
		e := startEgress(t, c, j, time.Minute, 1, defaultEgressOptions(), newMetrics(nil))
		k1 := store.Key{App: "a", Device: "d", ID: "1"}
		e.Answer(okAnswer(k1, time.Now().Add(time.Hour)))
		synctest.Wait() // k1 is in the outbox and in flight
		done := make(chan struct{})
		go func() { e.flush(t.Context()); close(done) }()
		synctest.Wait() // k0 published; the flusher waits its rate gap
		close(held.done)
		<-done
		if n := len(c.sent()); n != 2 {
			t.Errorf("published %d replies, want 2 (k1 once, k0 once)", n)
		}
	})
}

// The flusher hands a chunk of replies over before it waits for their PUBACKs,
// and makes the chunk's unsent replies durable in one group commit: one reply
// at a time, each its own commit and round trip, a busy gateway's outbox took
// minutes to drain after an outage. With a rate cap it goes a tenth of a
// second's worth at a time.
func TestFlushPublishesAChunkBeforeItsAcks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 5
		var held []*fakeToken
		for range n {
			held = append(held, &fakeToken{done: make(chan struct{})})
		}
		c := &fakeClient{tokens: append([]*fakeToken(nil), held...)}
		j := newFakeJournal()
		t0 := time.Now()
		j.entry = store.Entry{Received: t0, Deadline: t0.Add(time.Hour)}
		for i := range n {
			k := store.Key{App: "a", Device: "d", ID: fmt.Sprint(i)}
			if err := j.OutboxUnsent(k, []byte(`{"v":1,"id":"`+k.ID+`","app":"a","device":"d","status":"ok","class":1}`), t0.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		e := startEgress(t, c, j, time.Minute, 0, defaultEgressOptions(), newMetrics(nil))
		done := make(chan struct{})
		go func() { e.flush(t.Context()); close(done) }()
		synctest.Wait() // every PUBACK is held
		if got := len(c.sent()); got != n {
			t.Fatalf("handed over %d replies before any PUBACK, want all %d", got, n)
		}
		j.locked(func() {
			if !slices.Equal(j.outboxAlls, []int{n}) || len(j.unsent) != 0 {
				t.Errorf("OutboxAll calls of %v items, %d still unsent; want one of %d, none unsent", j.outboxAlls, len(j.unsent), n)
			}
		})
		for _, h := range held {
			close(h.done)
		}
		<-done
		j.locked(func() {
			if len(j.completed) != n || len(j.outbox) != 0 {
				t.Errorf("completed %d, outbox %d; want %d and 0", len(j.completed), len(j.outbox), n)
			}
		})

		// Capped at 20 a second: two a tenth of a second.
		c2 := &fakeClient{}
		j2 := newFakeJournal()
		for i := range n {
			k := store.Key{App: "a", Device: "d", ID: fmt.Sprint(i)}
			j2.outbox[k] = []byte(`{"v":1,"id":"` + k.ID + `","app":"a","device":"d","status":"ok"}`)
		}
		e2 := startEgress(t, c2, j2, time.Minute, 20, defaultEgressOptions(), newMetrics(nil))
		start := time.Now()
		e2.flush(t.Context())
		if took := time.Since(start); len(c2.sent()) != n || took != 250*time.Millisecond {
			t.Errorf("capped at 20/s: published %d in %v, want %d in 250ms (chunks of 2, 2 and 1, each followed by 50ms a reply)", len(c2.sent()), took, n)
		}
	})
}

// BenchmarkAnswersWhileBrokerAway keeps answers unsent in a real journal (with
// fsync) while the broker is away, as the scheduling loop answers its queue
// during an outage: the time per answer until the journal holds them all, and
// the group commits per answer.
func BenchmarkAnswersWhileBrokerAway(b *testing.B) {
	j, err := store.Open(filepath.Join(b.TempDir(), "journal.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	key := func(i int) store.Key { return store.Key{App: "a", Device: "d", ID: fmt.Sprint(i)} }
	for i := range b.N {
		if _, err := j.Put(&store.Entry{Key: key(i), ReplyTo: "t", Deadline: time.Now().Add(time.Hour), Input: []float32{1}}); err != nil {
			b.Fatal(err)
		}
	}
	e := newEgress(&fakeClient{down: true}, j, time.Second, 0, nil, defaultEgressOptions(), zerolog.Nop(), newMetrics(nil))
	defer e.Close()
	commits := j.Stats().Commits
	b.ResetTimer()
	for i := range b.N {
		e.Answer(okAnswer(key(i), time.Now().Add(time.Hour)))
	}
	for j.Stats().Outbox < b.N {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(j.Stats().Commits-commits)/float64(b.N), "commits/answer")
	e.Stop(context.Background())
}

// After Stop and Close the owed replies are no longer the gateway's (their
// requests stay unacknowledged, for the broker to deliver again), so
// sneakgate_unjournaled_replies_in_flight reads 0, whatever the owed waiter was
// doing: waiting for one reply's PUBACK with another queued behind it, or idle.
func TestOwedGaugeIsZeroAfterStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		held := []*fakeToken{{done: make(chan struct{})}, {done: make(chan struct{})}}
		c := &fakeClient{tokens: append([]*fakeToken(nil), held...)}
		m := newMetrics(nil)
		e := newEgress(c, newFakeJournal(), time.Second, 0, nil, defaultEgressOptions(), zerolog.Nop(), m)
		owe := func(id string) {
			t.Helper()
			rep := &protocol.Reply{V: 1, ID: id, App: "a", Device: "d", Status: protocol.StatusRejected, Reason: protocol.ReasonOverload}
			if err := e.Owe("t", rep, func() { t.Errorf("%s acknowledged without its PUBACK", id) }); err != nil {
				t.Fatalf("Owe %s: %v", id, err)
			}
		}
		owe("first")
		synctest.Wait() // the waiter waits for first's PUBACK
		owe("second")   // queued behind it
		synctest.Wait()
		if got := testutil.ToFloat64(m.owed); got != 2 {
			t.Fatalf("unjournaled_replies_in_flight = %v with two replies handed over, want 2", got)
		}
		e.Stop(context.Background())
		e.Close()
		if got := testutil.ToFloat64(m.owed); got != 0 {
			t.Errorf("unjournaled_replies_in_flight = %v after Stop and Close, want 0", got)
		}
		if err := e.Owe("t", &protocol.Reply{V: 1, ID: "late", App: "a", Status: protocol.StatusExpired}, func() {}); !errors.Is(err, errStopping) {
			t.Errorf("Owe after Close: %v, want errStopping", err)
		}
		if got := testutil.ToFloat64(m.owed); got != 0 {
			t.Errorf("unjournaled_replies_in_flight = %v after an Owe refused by Close, want 0", got)
		}
	})
}

// With every packet id place taken, an owed reply waits in the gateway instead
// of failing, and goes out once a PUBACK frees a place. One still waiting when
// the connection is lost is not sent (its request's acknowledgement would be
// lost with the connection; the broker delivers the request again). An answer
// waits for a place before it is stamped; Close makes it give up and keeps it
// unsent in the outbox, and every gauge of the egress reads 0 after it.
func TestOwedRepliesWaitForAPacketID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate, c, o := gatedOnePlace()
		m := newMetrics(nil)
		j := newFakeJournal()
		e := newEgress(c, j, time.Second, 0, nil, o, zerolog.Nop(), m)
		hold := func(key string) { gate.Put(key, packets.NewControlPacket(packets.Publish)) }
		acked := map[string]bool{}
		var mu sync.Mutex
		owe := func(id string) {
			t.Helper()
			rep := &protocol.Reply{V: 1, ID: id, App: "a", Device: "d", Status: protocol.StatusRejected, Reason: protocol.ReasonOverload}
			if err := e.Owe("t", rep, func() { mu.Lock(); acked[id] = true; mu.Unlock() }); err != nil {
				t.Fatalf("Owe %s: %v", id, err)
			}
		}
		check := func(when string, published int, ack []string, waiting float64) {
			t.Helper()
			mu.Lock()
			defer mu.Unlock()
			if n, w := len(c.sent()), testutil.ToFloat64(m.owedWaiting); n != published || len(acked) != len(ack) || w != waiting {
				t.Errorf("%s: %d published, acknowledged %v, %v waiting; want %d, %v, %v", when, n, acked, w, published, ack, waiting)
			}
			for _, id := range ack {
				if !acked[id] {
					t.Errorf("%s: %s not acknowledged", when, id)
				}
			}
		}
		hold("o.1")
		owe("a")
		owe("b")
		synctest.Wait()
		check("with every place taken", 0, nil, 2)
		gate.Del("o.1") // its PUBACK
		synctest.Wait()
		check("after one PUBACK", 1, []string{"a"}, 1)
		e.connectionLost()
		gate.Del(c.heldKey(0)) // a's PUBACK
		synctest.Wait()
		check("after the connection was lost", 1, []string{"a"}, 0)
		if f := testutil.ToFloat64(m.publishFails); f != 1 {
			t.Errorf("publish_failures_total = %v, want 1 (b, not sent)", f)
		}

		// Full again: an answer waits for a place; the connection is lost, and
		// it is kept unsent instead (the place frees only on a later connection).
		// The flusher waits too, until it is stopped.
		hold("o.2")
		lost := store.Key{App: "a", Device: "d", ID: "lost"}
		e.Answer(okAnswer(lost, time.Now().Add(time.Hour)))
		synctest.Wait()
		e.connectionLost()
		synctest.Wait()
		j.locked(func() {
			if _, ok := j.outbox[lost]; !ok || !j.unsent[lost] {
				t.Errorf("an answer waiting for a place when the connection was lost: in the outbox %v, unsent %v; want kept unsent", ok, j.unsent[lost])
			}
		})
		flushCtx, stopFlush := context.WithCancel(context.Background())
		flushed := make(chan struct{})
		go func() { e.flush(flushCtx); close(flushed) }()
		synctest.Wait()
		stopFlush()
		synctest.Wait()
		select {
		case <-flushed:
		default:
			t.Fatal("the flusher, waiting for a place, did not stop with its context")
		}
		check("the flusher stopped", 1, []string{"a"}, 0)

		// An owed reply and an answer wait; Close ends both waits.
		owe("c")
		k := store.Key{App: "a", Device: "d", ID: "answer"}
		e.Answer(okAnswer(k, time.Now().Add(time.Hour)))
		synctest.Wait()
		check("full again", 1, []string{"a"}, 1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		e.Stop(ctx) // the answer worker waits for a place: Stop gives up
		cancel()
		e.Close()
		synctest.Wait()
		j.locked(func() {
			if _, ok := j.outbox[k]; !ok || !j.unsent[k] {
				t.Errorf("an answer that never got a place: in the outbox %v, unsent %v; want kept unsent", ok, j.unsent[k])
			}
		})
		check("after Close", 1, []string{"a"}, 0)
		if g := testutil.ToFloat64(m.owed); g != 0 {
			t.Errorf("unjournaled_replies_in_flight = %v after Close, want 0", g)
		}
	})
}

// An answer is stamped (deadline_met) only once it holds its place at the
// gate: when a batch of answers finds a single place free, the others are
// stamped when they get theirs, not with the first. They were all stamped
// together, so an answer that waited for a PUBACK past its deadline went out
// claiming the deadline met.
func TestAnswersStampedWhenTheirPlaceIsFree(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate, c, o := gatedOnePlace()
		o.AnswerWorkers = 1
		j := newFakeJournal()
		e := startEgress(t, c, j, time.Minute, 0, o, newMetrics(nil))
		gate.Put("o.1", packets.NewControlPacket(packets.Publish))
		key := func(id string) store.Key { return store.Key{App: "a", Device: "d", ID: id} }
		e.Answer(okAnswer(key("first"), time.Now().Add(time.Hour)))
		synctest.Wait() // the worker waits for a place with [first]
		e.Answer(okAnswer(key("second"), time.Now().Add(5*time.Second)))
		e.Answer(okAnswer(key("third"), time.Now().Add(5*time.Second)))
		gate.Del("o.1")
		synctest.Wait() // first out; the worker waits for a place with [second third]
		if n := len(c.sent()); n != 1 {
			t.Fatalf("%d published with one place, want 1", n)
		}
		gate.Del(c.heldKey(0)) // one place for two answers, in time
		synctest.Wait()
		time.Sleep(10 * time.Second) // no PUBACK until after third's deadline
		gate.Del(c.heldKey(1))
		synctest.Wait()
		sent := c.sent()
		if len(sent) != 3 {
			t.Fatalf("%d published, want 3", len(sent))
		}
		for i, want := range []bool{true, true, false} {
			rep, err := protocol.ParseReply([]byte(sent[i]))
			if err != nil {
				t.Fatal(err)
			}
			if rep.DeadlineMet == nil || *rep.DeadlineMet != want {
				t.Errorf("%s: deadline_met %v, want %v (handed over %s)", rep.ID, *rep.DeadlineMet, want,
					map[bool]string{true: "in time", false: "after its deadline"}[want])
			}
			j.locked(func() {
				if got := j.outbox[key(rep.ID)]; got != nil && string(got) != sent[i] {
					t.Errorf("%s: the outbox holds other bytes than the broker got", rep.ID)
				}
			})
		}
		gate.Del(c.heldKey(2))
	})
}

// A publisher that found the connection open just before it was lost does not
// wait for a place at the gate through the outage (the places free only once a
// later connection's resends are acknowledged): the loss between its check and
// its wait ends the wait as one during it does, and the answer is kept unsent.
// The wait used to start after the loss had been signalled, and lasted.
func TestConnectionLostJustBeforeTheWaitForAPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate, c, o := gatedOnePlace()
		j := newFakeJournal()
		e := startEgress(t, c, j, time.Minute, 0, o, newMetrics(nil))
		gate.Put("o.1", packets.NewControlPacket(packets.Publish)) // every place taken
		c.mu.Lock()
		c.loseAfterCheck = e.connectionLost
		c.mu.Unlock()
		k := store.Key{App: "a", Device: "d", ID: "x"}
		e.Answer(okAnswer(k, time.Now().Add(time.Hour)))
		synctest.Wait()
		j.locked(func() {
			if _, ok := j.outbox[k]; !ok || !j.unsent[k] {
				t.Errorf("an answer whose connection was lost as it began to wait for a place: in the outbox %v, unsent %v; want kept unsent", ok, j.unsent[k])
			}
		})
		if n := len(c.sent()); n != 0 {
			t.Errorf("%d published with the connection lost, want 0", n)
		}
	})
}

// TestEgressDelayForgetsAnOverload: the egress delay admission adds to a
// request's wait (scheduler.Backlog.Egress) follows the answers of the last
// fraction of a second, not the last few dozen answers: a delay measured under an
// overload must not outlive it, or admission keeps refusing the requests whose
// answers would renew it (after 8 s at 4,000 req/s with `make run`'s embedded
// broker, 97% of the requests at 100 req/s with a 20 ms budget were refused, the
// gateway idle).
func TestEgressDelayForgetsAnOverload(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	overload := func() *egress {
		e := &egress{now: func() time.Time { return now }, m: newMetrics(nil)}
		// 8 s at 4,000 answers a second, each 1.5 s from the loop to the broker.
		for range 32000 {
			now = now.Add(250 * time.Microsecond)
			e.observeDelay(1500 * time.Millisecond)
		}
		if d := e.Delay(); d < 1400*time.Millisecond {
			t.Fatalf("egress delay %v during the overload, want about 1.5s", d)
		}
		return e
	}
	const budget = 20 * time.Millisecond

	// Every request refused for a second: no answers, the delay reads 0; then
	// the burst admitted runs as one batch of 32 answers, 1 ms each.
	e := overload()
	now = now.Add(1100 * time.Millisecond)
	if d := e.Delay(); d != 0 {
		t.Fatalf("egress delay %v after a second without answers, want 0", d)
	}
	for range 32 {
		e.observeDelay(time.Millisecond)
	}
	if d := e.Delay(); d >= budget {
		t.Errorf("egress delay %v after a second without answers and a batch answered in 1 ms: admission refuses every %v budget", d, budget)
	}

	// Answers every 100 ms, 1 ms each, right after the overload: forgotten
	// within about a second.
	e = overload()
	for range 15 {
		now = now.Add(100 * time.Millisecond)
		e.observeDelay(time.Millisecond)
	}
	if d := e.Delay(); d >= budget {
		t.Errorf("egress delay %v after 1.5 s of answers handed over in 1 ms: admission refuses every %v budget", d, budget)
	}

	// Under a steady load the average is still of many answers: one slow answer
	// among many fast ones moves it by 1/64 of the difference.
	e = &egress{now: func() time.Time { return now }, m: newMetrics(nil)}
	for range 4000 {
		now = now.Add(250 * time.Microsecond)
		e.observeDelay(2 * time.Millisecond)
	}
	now = now.Add(250 * time.Microsecond)
	e.observeDelay(66 * time.Millisecond)
	if d := e.Delay(); d < 2*time.Millisecond || d > 3100*time.Microsecond {
		t.Errorf("egress delay %v after one 66 ms answer among 2 ms ones at 4,000 a second, want 3 ms", d)
	}
}

// A broker that takes replies and fails them (or a connection lost under them)
// fails every reply while it lasts: the warning for each, journaled or not, is
// sampled like rejections; sneakgate_publish_failures_total counts them all.
func TestFailedReplyLogSampled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 1000
		c := &fakeClient{}
		for range 2 * n {
			t := &fakeToken{done: make(chan struct{}), err: errors.New("refused")}
			close(t.done)
			c.tokens = append(c.tokens, t)
		}
		var buf bytes.Buffer
		m := newMetrics(nil)
		e := newEgress(c, newFakeJournal(), time.Second, 0, nil, defaultEgressOptions(), zerolog.New(zerolog.SyncWriter(&buf)), m)
		t.Cleanup(func() {
			e.Stop(context.Background())
			e.Close()
		})
		for i := range n {
			e.Answer(okAnswer(store.Key{App: "a", Device: "d", ID: fmt.Sprint(i)}, time.Now().Add(time.Hour)))
		}
		synctest.Wait()
		for i := range n {
			rep := &protocol.Reply{V: 1, ID: fmt.Sprint(i), App: "a", Device: "d", Status: protocol.StatusRejected}
			if err := e.Owe("t", rep, func() {}); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if got := testutil.ToFloat64(m.publishFails); got != 2*n {
			t.Errorf("sneakgate_publish_failures_total = %v, want %d", got, 2*n)
		}
		if lines := strings.Count(buf.String(), "\n"); lines >= 400 {
			t.Errorf("%d lines logged for %d failed replies, want them sampled", lines, 2*n)
		}
		for _, msg := range []string{"reply kept in the outbox", "reply to a request that is not journaled failed"} {
			if !strings.Contains(buf.String(), msg) {
				t.Errorf("no %q line logged", msg)
			}
		}
	})
}

// A reply to a QoS 0 request (no acknowledgement to give: a nil ack) waits in
// line like the others, but once owedQoS0Limit replies wait it is dropped and
// counted instead of queued; a QoS 1 request's reply is queued whatever the
// line's length.
func TestQoS0RepliesDroppedBeyondTheLine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate, c, o := gatedOnePlace()
		m := newMetrics(nil)
		e := newEgress(c, newFakeJournal(), time.Second, 0, nil, o, zerolog.Nop(), m)
		gate.Put("o.1", packets.NewControlPacket(packets.Publish)) // every place taken
		rep := func(id string) *protocol.Reply {
			return &protocol.Reply{V: 1, ID: id, App: "a", Device: "d", Status: protocol.StatusRejected, Reason: protocol.ReasonOverload}
		}
		for i := range owedQoS0Limit {
			if err := e.Owe("t", rep(fmt.Sprint(i)), nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Owe("t", rep("qos0"), nil); err != nil {
			t.Fatal(err)
		}
		if err := e.Owe("t", rep("qos1"), func() {}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if w, d := testutil.ToFloat64(m.owedWaiting), testutil.ToFloat64(m.dropped.WithLabelValues("rejected")); w != owedQoS0Limit+1 || d != 1 {
			t.Errorf("%v waiting, %v dropped; want %d (the QoS 1 one queued), 1 (the QoS 0 one beyond the line)", w, d, owedQoS0Limit+1)
		}
		e.connectionLost() // empties the line
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		e.Stop(ctx)
		cancel()
		e.Close()
		synctest.Wait()
	})
}
