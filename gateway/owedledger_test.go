package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// The ledger keeps the latest reply per key, forgets an entry only at its own
// generation, and drops the oldest beyond its size or age.
func TestOwedLedgerBounds(t *testing.T) {
	t0 := time.Unix(1000, 0)
	k := func(id string) store.Key { return store.Key{App: "a", Device: "d", ID: id} }
	l := newOwedLedger(3, time.Minute)
	g1 := l.put(k("1"), "r", []byte("r1"), protocol.StatusRejected, t0)
	g1b := l.put(k("1"), "r", []byte("r1b"), protocol.StatusRejected, t0) // replaces
	l.forget(k("1"), g1)                                                  // a stale generation: kept
	if r, ok := l.get(k("1"), t0); !ok || string(r.payload) != "r1b" {
		t.Fatalf("after replacing and forgetting the old generation: %q %v, want r1b", r.payload, ok)
	}
	l.forget(k("1"), g1b)
	if _, ok := l.get(k("1"), t0); ok || l.len() != 0 {
		t.Fatalf("forgotten entry still held (%d held)", l.len())
	}
	for i, id := range []string{"2", "3", "4", "5"} {
		l.put(k(id), "r", []byte(id), protocol.StatusDegraded, t0.Add(time.Duration(i)*time.Second))
	}
	if _, ok := l.get(k("2"), t0.Add(4*time.Second)); ok || l.len() != 3 {
		t.Errorf("over the size: the oldest held (%v), %d held, want 3", ok, l.len())
	}
	if _, ok := l.get(k("3"), t0.Add(61*time.Second+500*time.Millisecond)); ok {
		t.Error("an entry older than maxAge is still held")
	}
	if _, ok := l.get(k("5"), t0.Add(61*time.Second+500*time.Millisecond)); !ok {
		t.Error("an entry younger than maxAge was dropped")
	}
	// Entries forgotten behind one that stays do not grow the fifo for good.
	l = newOwedLedger(1<<20, time.Hour)
	l.put(k("stays"), "r", nil, protocol.StatusDegraded, t0)
	for i := range 10000 {
		key := k("x")
		l.forget(key, l.put(key, "r", nil, protocol.StatusDegraded, t0.Add(time.Duration(i))))
	}
	if n := len(l.fifo); n > 2*l.len()+1024 {
		t.Errorf("fifo holds %d refs for %d entries", n, l.len())
	}
}

// A copy the broker delivers again (DUP set) of a request answered without the
// journal, whose reply's PUBACK never came (the connection was lost), gets the
// same bytes as the first reply, and is acknowledged once the broker has them;
// answered anew it would get another answer (here: a second answer from the
// estimate, with its own timings). An answer from the estimate stays
// remembered after its request is acknowledged, for any copy (the device's own
// resend comes with DUP clear).
func TestOwedReplyRepeatedToCopy(t *testing.T) {
	topic, payload, lost := owedTopic, owedRequest("a", ""), lostPuback()
	repeat := &fakeToken{done: make(chan struct{})}
	c := &fakeClient{tokens: []*fakeToken{lost, repeat}}
	g := handlerGateway(t, c, true)                // every request refused and answered from its estimate
	g.cfg.Admission.JournalEstimateAnswers = false // the ledger alone, as when the journal cannot record it
	key := store.Key{App: "fashion", Device: "cam-1", ID: "a"}

	first := newFakeMessage(topic, payload)
	g.handle(arrival{msg: first, at: time.Now()})
	copy1 := newFakeMessage(topic, payload)
	copy1.dup = true
	g.handle(arrival{msg: copy1, at: time.Now().Add(time.Second)})
	sent := c.sent()
	if len(sent) != 2 {
		t.Fatalf("%d replies published, want 2", len(sent))
	}
	if rep, err := protocol.ParseReply([]byte(sent[0])); err != nil || rep.Status != protocol.StatusDegraded {
		t.Fatalf("first reply %s (%v), want degraded", sent[0], err)
	}
	if sent[1] != sent[0] {
		t.Errorf("the copy got\n%s\nwant the first reply's bytes\n%s", sent[1], sent[0])
	}
	if n := testutil.ToFloat64(g.m.duplicates.WithLabelValues("unjournaled")); n != 1 {
		t.Errorf("sneakgate_duplicates_total{state=unjournaled} = %v, want 1", n)
	}
	if copy1.isAcked() {
		t.Fatal("the copy was acknowledged before the broker acknowledged its reply")
	}
	close(repeat.done) // the repeat's PUBACK
	within(t, copy1.acked, "the copy was not acknowledged after its reply's PUBACK")
	if first.isAcked() {
		t.Error("the first copy, whose reply failed, was acknowledged")
	}
	// The request is acknowledged; the device sends it again (DUP clear): the
	// same answer.
	if _, ok := g.egress.Owed(key); !ok {
		t.Error("an answer from the estimate was forgotten after its request was acknowledged")
	}
	copy2 := newFakeMessage(topic, payload)
	g.handle(arrival{msg: copy2, at: time.Now().Add(2 * time.Second)})
	within(t, copy2.acked, "the device's resend was not acknowledged")
	if sent := c.sent(); len(sent) != 3 || sent[2] != sent[0] {
		t.Errorf("the device's resend after the acknowledgement got %d replies, the last\n%s\nwant the first reply's bytes", len(sent), sent[len(sent)-1])
	}
}

// A refusal is remembered only until its request is acknowledged, and only
// for copies the broker delivers again (DUP set): a retry after its
// retry_after_ms, DUP clear, is a new request, which may be admitted.
func TestOwedRefusalRepeatedOnlyToRedeliveries(t *testing.T) {
	topic, payload, lost := owedTopic, owedRequest("a", ""), lostPuback()
	slow := &fakeToken{done: make(chan struct{})} // the retry's reply: no PUBACK yet
	c := &fakeClient{tokens: []*fakeToken{lost, slow}}
	g := handlerGateway(t, c, false) // every request refused (overload)
	key := store.Key{App: "fashion", Device: "cam-1", ID: "a"}
	g.handle(arrival{msg: newFakeMessage(topic, payload), at: time.Now()})
	retry := newFakeMessage(topic, payload) // DUP clear: the device's retry
	g.handle(arrival{msg: retry, at: time.Now().Add(time.Second)})
	copy1 := newFakeMessage(topic, payload)
	copy1.dup = true
	g.handle(arrival{msg: copy1, at: time.Now().Add(2 * time.Second)})
	sent := c.sent()
	if len(sent) != 3 {
		t.Fatalf("%d replies published, want 3", len(sent))
	}
	if rep, err := protocol.ParseReply([]byte(sent[0])); err != nil || rep.Status != protocol.StatusRejected {
		t.Fatalf("first reply %s (%v), want rejected", sent[0], err)
	}
	if n, r := testutil.ToFloat64(g.m.duplicates.WithLabelValues("unjournaled")), g.loop.refused.Load(); n != 1 || r != 2 {
		t.Errorf("%v repeats, %d refusals; want the device's retry (DUP clear) refused anew and only the redelivered copy repeated (1, 2)", n, r)
	}
	if sent[2] != sent[1] {
		t.Errorf("the redelivered copy got\n%s\nwant the latest reply's bytes\n%s", sent[2], sent[1])
	}
	close(slow.done) // the PUBACKs: the retry's, then the copy's
	within(t, copy1.acked, "the redelivered copy was not acknowledged after its reply's PUBACK")
	if _, ok := g.egress.Owed(key); ok {
		t.Error("a refusal is still remembered after its request was acknowledged")
	}
}

// An owed reply that waits for a place at the gate when the connection is lost
// is never handed over: it is forgotten, and a copy of its request is answered
// anew, since nothing went out that it could contradict. One handed over stays,
// even once its PUBACK comes on the next connection (paho resent it): the
// request's acknowledgement is dropped there, and the broker delivers it again.
func TestOwedReplyDroppedUnsentIsForgotten(t *testing.T) {
	_, c, o := gatedOnePlace()
	puback := &fakeToken{done: make(chan struct{})}
	c.tokens = []*fakeToken{puback}
	e := newEgress(c, newFakeJournal(), time.Second, 0, time.Now, o, zerolog.Nop(), newMetrics(nil))
	t.Cleanup(func() { e.Stop(t.Context()); e.Close() })
	rep := func(id string) *protocol.Reply {
		return &protocol.Reply{V: 1, ID: id, App: "fashion", Device: "cam-1", Status: protocol.StatusRejected}
	}
	handed, waiting := store.Key{App: "fashion", Device: "cam-1", ID: "handed"}, store.Key{App: "fashion", Device: "cam-1", ID: "waiting"}
	acked := make(chan struct{})
	if err := e.Owe("r", rep("handed"), func() { close(acked) }); err != nil {
		t.Fatal(err)
	}
	if err := e.Owe("r", rep("waiting"), func() {}); err != nil {
		t.Fatal(err)
	}
	if len(c.sent()) != 1 {
		t.Fatalf("%d handed over with one place at the gate, want 1", len(c.sent()))
	}
	if _, ok := e.Owed(waiting); !ok {
		t.Fatal("a waiting owed reply is not remembered")
	}
	e.connectionLost()
	if _, ok := e.Owed(waiting); ok {
		t.Error("a reply dropped unsent by the lost connection is still remembered")
	}
	if _, ok := e.Owed(handed); !ok {
		t.Error("a reply handed over before the connection was lost was forgotten")
	}
	if n := testutil.ToFloat64(e.m.owedRemembered); n != 1 {
		t.Errorf("sneakgate_unjournaled_replies_remembered = %v, want 1", n)
	}
	close(puback.done) // the resent reply's PUBACK, on the new connection
	within(t, acked, "the request of a reply the broker acknowledged was not acknowledged")
	if _, ok := e.Owed(handed); !ok {
		t.Error("a reply acknowledged on a later connection than it was handed over on was forgotten")
	}
}

// A reply to a request that arrived on a connection since lost stays
// remembered after its PUBACK: paho drops that request's acknowledgement, so the
// broker delivers the request again, and the copy must get the same bytes. One
// whose request arrived on the current connection is forgotten (a refusal: an
// answer from the estimate would stay either way).
func TestOwedReplyOfAnEarlierConnectionStays(t *testing.T) {
	c := &fakeClient{} // every publish acknowledged at once
	e := newEgress(c, newFakeJournal(), time.Second, 0, time.Now, defaultEgressOptions(), zerolog.Nop(), newMetrics(nil))
	t.Cleanup(func() { e.Stop(t.Context()); e.Close() })
	rep := func(id string) *protocol.Reply {
		return &protocol.Reply{V: 1, ID: id, App: "fashion", Device: "cam-1", Status: protocol.StatusRejected}
	}
	before := e.conn.Load()
	e.connectionLost()
	e.gate.All() // the client reconnected: paho lists what it resends
	for _, tc := range []struct {
		id   string
		conn uint64
		kept bool
	}{{"old", before, true}, {"current", e.conn.Load(), false}} {
		acked := make(chan struct{})
		if err := e.OweOn("r", rep(tc.id), func() { close(acked) }, tc.conn); err != nil {
			t.Fatal(err)
		}
		within(t, acked, "not acknowledged after its PUBACK")
		if _, ok := e.Owed(store.Key{App: "fashion", Device: "cam-1", ID: tc.id}); ok != tc.kept {
			t.Errorf("%s: remembered %v after the PUBACK, want %v", tc.id, ok, tc.kept)
		}
	}
}

// A copy the broker delivers again of a request whose refusal is remembered,
// but whose key the journal has stored since (the device's own retry, DUP
// clear, admitted and answered while the first copy was not acknowledged), is
// answered as the journal says: the remembered refusal would contradict the
// journaled answer.
func TestOwedReplyYieldsToTheJournal(t *testing.T) {
	topic, payload, lost := owedTopic, owedRequest("a", ""), lostPuback()
	c := &fakeClient{tokens: []*fakeToken{lost}}
	g := handlerGateway(t, c, false) // every request refused for overload
	key := store.Key{App: "fashion", Device: "cam-1", ID: "a"}

	g.handle(arrival{msg: newFakeMessage(topic, payload), at: time.Now()})
	sent := c.sent()
	if len(sent) != 1 {
		t.Fatalf("%d replies published, want 1 (the refusal)", len(sent))
	}
	if _, ok := g.egress.Owed(key); !ok {
		t.Fatal("the refusal is not remembered")
	}
	// The device's retry of "a" was admitted and answered.
	now := time.Now()
	if _, err := g.journal.Put(&store.Entry{Key: key, Received: now, Deadline: now.Add(time.Minute),
		ReplyTo: "sneakgate/res/fashion/cam-1", Input: make([]float32, 784)}); err != nil {
		t.Fatal(err)
	}
	answer := protocol.Reply{V: 1, ID: "a", App: "fashion", Device: "cam-1", Status: protocol.StatusOK}
	answerBytes, err := answer.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.journal.Complete(key, answerBytes); err != nil {
		t.Fatal(err)
	}

	cp := newFakeMessage(topic, payload)
	cp.dup = true
	g.handle(arrival{msg: cp, at: time.Now()})
	if n := testutil.ToFloat64(g.m.duplicates.WithLabelValues("unjournaled")); n != 0 {
		t.Errorf("sneakgate_duplicates_total{state=unjournaled} = %v, want 0: the journal knows the key", n)
	}
	if n := testutil.ToFloat64(g.m.duplicates.WithLabelValues("done")); n != 1 {
		t.Errorf("sneakgate_duplicates_total{state=done} = %v, want 1", n)
	}
	for _, s := range c.sent()[1:] {
		if s == sent[0] {
			t.Errorf("the refusal was published again after the journal answered the id:\n%s", s)
		}
	}
}

// A repeat that waits for a place at the gate when the connection is lost is
// dropped unsent, but the reply it repeats was handed over before and may have
// reached the device: it stays remembered, so that the next copy gets the same
// bytes too.
func TestOwedRepeatDroppedUnsentKeepsTheReply(t *testing.T) {
	_, c, o := gatedOnePlace()
	puback := &fakeToken{done: make(chan struct{})} // the first reply's PUBACK, never seen
	c.tokens = []*fakeToken{puback}
	e := newEgress(c, newFakeJournal(), time.Second, 0, time.Now, o, zerolog.Nop(), newMetrics(nil))
	t.Cleanup(func() { e.Stop(t.Context()); e.Close() })
	key := store.Key{App: "fashion", Device: "cam-1", ID: "a"}
	rep := &protocol.Reply{V: 1, ID: "a", App: "fashion", Device: "cam-1", Status: protocol.StatusDegraded}
	if err := e.Owe("r", rep, func() {}); err != nil {
		t.Fatal(err)
	}
	if len(c.sent()) != 1 {
		t.Fatalf("%d handed over, want 1", len(c.sent()))
	}
	r, ok := e.Owed(key)
	if !ok {
		t.Fatal("the handed-over reply is not remembered")
	}
	// A copy of the request: its repeat waits, the only place being taken.
	if err := e.Repeat(key, r, func() {}, e.conn.Load()); err != nil {
		t.Fatal(err)
	}
	if len(c.sent()) != 1 {
		t.Fatalf("%d handed over, want 1 (the repeat waits)", len(c.sent()))
	}
	e.connectionLost()
	if got, ok := e.Owed(key); !ok || string(got.payload) != c.sent()[0] {
		t.Errorf("after the waiting repeat was dropped: remembered %v (%q), want the reply handed over before", ok, got.payload)
	}
}

// panicClient panics in its Publish number panicAt (from 1), as a fault in the
// MQTT client would, and otherwise publishes as its fakeClient does.
type panicClient struct {
	*fakeClient
	calls   atomic.Int32
	panicAt int32
}

func (c *panicClient) Publish(topic string, qos byte, retained bool, payload any) mqtt.Token {
	if c.calls.Add(1) == c.panicAt {
		panic("publish fault")
	}
	return c.fakeClient.Publish(topic, qos, retained, payload)
}

// A panic while a copy's repeat is handed over does not answer the copy
// rejected internal: the first reply, which the repeat gives again, may have
// reached the device, and the rejection would contradict it (and replace it in
// the ledger for later copies). The copy is acknowledged and dropped, as any
// request whose reply was being handed over (handle).
func TestOwedRepeatPanicDoesNotAnswerAnew(t *testing.T) {
	topic, payload, lost := owedTopic, owedRequest("a", ""), lostPuback()
	c := &fakeClient{tokens: []*fakeToken{lost}}
	g := handlerGateway(t, c, true)                // answered from the estimate
	g.cfg.Admission.JournalEstimateAnswers = false // the ledger alone, as when the journal cannot record it
	g.egress.Stop(t.Context())
	g.egress.Close()
	g.egress = newEgress(&panicClient{fakeClient: c, panicAt: 2}, g.journal, time.Second, 0, time.Now,
		defaultEgressOptions(), zerolog.Nop(), g.m) // the copy's repeat panics
	key := store.Key{App: "fashion", Device: "cam-1", ID: "a"}
	g.handle(arrival{msg: newFakeMessage(topic, payload), at: time.Now()})
	first := c.sent()
	if len(first) != 1 {
		t.Fatalf("%d replies published, want 1", len(first))
	}
	cp := newFakeMessage(topic, payload)
	cp.dup = true
	g.handle(arrival{msg: cp, at: time.Now()})
	for _, s := range c.sent()[1:] {
		if rep, err := protocol.ParseReply([]byte(s)); err != nil || rep.Status != protocol.StatusDegraded {
			t.Errorf("after a panic in the repeat, a different reply went out: %s", s)
		}
	}
	if r, ok := g.egress.Owed(key); !ok || string(r.payload) != first[0] {
		t.Errorf("remembered %v %s, want the first reply", ok, r.payload)
	}
	if !cp.isAcked() {
		t.Error("the copy whose repeat panicked was not acknowledged")
	}
}

// A copy's repeat goes where the first reply went, as a journaled copy's
// stored reply does (answeredBefore): here the first copy, answered from the
// estimate on its allowed reply_to, and the copy rejected unknown_app once a
// reload removed the application, a rejection whose reply topic is the
// device's own.
func TestOwedRepeatGoesWhereTheFirstReplyWent(t *testing.T) {
	const custom = "sneakgate/custom/cam-1"
	topic, payload, lost := owedTopic, owedRequest("a", custom), lostPuback()
	c := &fakeClient{tokens: []*fakeToken{lost}}
	g := handlerGateway(t, c, true)                // answered from the estimate
	g.cfg.Admission.JournalEstimateAnswers = false // the ledger alone, as when the journal cannot record it
	allow, err := protocol.NewAllowList([]string{"{prefix}/res/{app}/{device}", "{prefix}/custom/{device}"})
	if err != nil {
		t.Fatal(err)
	}
	g.env.ReplyAllow = allow
	g.handle(arrival{msg: newFakeMessage(topic, payload), at: time.Now()})
	c.mu.Lock()
	topics := slices.Clone(c.topics)
	c.mu.Unlock()
	if len(topics) != 1 || topics[0] != custom {
		t.Fatalf("first reply on %v, want one on %s", topics, custom)
	}
	g.apps.Store(&map[string]*appRuntime{}) // a reload removed fashion
	cp := newFakeMessage(topic, payload)
	cp.dup = true
	g.handle(arrival{msg: cp, at: time.Now()})
	sent := c.sent()
	if len(sent) != 2 || sent[1] != sent[0] {
		t.Fatalf("the copy got %d replies %q, want the first reply again", len(sent)-1, sent[1:])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.topics[1] != custom {
		t.Errorf("the repeat went to %s, want %s, where the first reply went", c.topics[1], custom)
	}
}

// The gauge of remembered replies follows the ledger when old entries expire
// on a lookup, not only when replies are added or forgotten.
func TestOwedRememberedGaugeFollowsExpiry(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	c := &fakeClient{tokens: []*fakeToken{{done: make(chan struct{})}}} // no PUBACK
	o := defaultEgressOptions()
	o.OwedMemory = time.Minute
	e := newEgress(c, newFakeJournal(), time.Second, 0, clock, o, zerolog.Nop(), newMetrics(nil))
	t.Cleanup(func() { e.Stop(t.Context()); e.Close() })
	rep := &protocol.Reply{V: 1, ID: "a", App: "fashion", Device: "cam-1", Status: protocol.StatusRejected}
	if err := e.Owe("r", rep, func() {}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(e.m.owedRemembered); n != 1 {
		t.Fatalf("sneakgate_unjournaled_replies_remembered = %v, want 1", n)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	if _, ok := e.Owed(store.Key{App: "fashion", Device: "cam-1", ID: "b"}); ok {
		t.Fatal("an unknown key is remembered")
	}
	if n := testutil.ToFloat64(e.m.owedRemembered); n != 0 {
		t.Errorf("after the reply expired: sneakgate_unjournaled_replies_remembered = %v, want 0", n)
	}
}

// owedTopic is the request topic of the owed-reply tests' device.
const owedTopic = "sneakgate/req/fashion/cam-1"

// owedRequest is a fashion request with id and a minute's budget, its reply to
// replyTo ("": the default topic).
func owedRequest(id, replyTo string) []byte {
	p := protocol.Payload{ID: id, DeadlineMS: 60000, Input: make([]float32, 784), B64: true, ReplyTo: replyTo}
	return p.Marshal()
}

// lostPuback is the token of a publish that failed with the connection.
func lostPuback() *fakeToken {
	t := &fakeToken{done: make(chan struct{}), err: errors.New("connection lost")}
	close(t.done)
	return t
}

// BenchmarkOwedLedgerMemory reports the heap one remembered reply holds (the
// reply of about 250 bytes, fashion's answer from the estimate, its key and
// topic, and the map's and the queue's share), with the ledger at its default
// size: the figure behind defaultOwedMemoryMax's "about 11 MiB" (688 B/entry,
// 10.75 MiB on 2026-12-04).
//
//	go test -run '^$' -bench OwedLedgerMemory -benchtime 1x ./gateway
func BenchmarkOwedLedgerMemory(b *testing.B) {
	reply := []byte(`{"v":1,"id":"0614de-bo-00-0000752","app":"fashion","device":"bo-00","status":"degraded","reason":"overload_shed","class":5,"label":"sandal","confidence":0.9394,"model":"sneakpeek-logistic","est_accuracy":0.9394,"total_ms":0.191,"slack_ms":1999.809,"deadline_met":true}`)
	t0 := time.Unix(1000, 0)
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		l := newOwedLedger(defaultOwedMemoryMax, time.Hour)
		for i := range defaultOwedMemoryMax {
			dev := fmt.Sprintf("bo-%02d", i%16)
			key := store.Key{App: "fashion", Device: dev, ID: fmt.Sprintf("0614de-%s-%07d", dev, i)}
			l.put(key, "sneakgate/res/fashion/"+dev, bytes.Clone(reply), protocol.StatusDegraded, t0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		held := float64(after.HeapAlloc) - float64(before.HeapAlloc)
		b.ReportMetric(held/float64(l.len()), "B/entry")
		b.ReportMetric(held/(1<<20), "MiB")
		runtime.KeepAlive(l)
	}
}

// A copy of a request whose answer from the estimate the journal recorded
// (store.Answered, by an earlier session that may have died before handing
// the reply over) gets the recorded bytes, and is acknowledged only once the
// broker has them: acknowledged first, as a copy of a request answered by a
// model is, a reply dropped on the way would leave the request unanswered.
func TestRecordedEstimateAnswerCopyAcknowledgedAfterPUBACK(t *testing.T) {
	puback := &fakeToken{done: make(chan struct{})}
	c := &fakeClient{tokens: []*fakeToken{puback}}
	g := handlerGateway(t, c, true)
	key := store.Key{App: "fashion", Device: "cam-1", ID: "a"}
	recorded := `{"v":1,"id":"a","app":"fashion","device":"cam-1","status":"degraded","reason":"overload_shed","class":5,"label":"sandal","model":"sneakpeek-logistic","deadline_met":true}`
	if res, err := g.journal.Answered(key, []byte(recorded)); err != nil || res.Dup != store.New {
		t.Fatalf("Answered: %+v %v", res, err)
	}
	cp := newFakeMessage(owedTopic, owedRequest("a", ""))
	cp.dup = true
	g.handle(arrival{msg: cp, at: time.Now()})
	if sent := c.sent(); len(sent) != 1 || sent[0] != recorded {
		t.Fatalf("the copy got %q, want the recorded reply", sent)
	}
	if n := testutil.ToFloat64(g.m.duplicates.WithLabelValues("done")); n != 1 {
		t.Errorf("sneakgate_duplicates_total{state=done} = %v, want 1", n)
	}
	if cp.isAcked() {
		t.Fatal("the copy was acknowledged before the broker acknowledged its reply")
	}
	close(puback.done)
	within(t, cp.acked, "the copy was not acknowledged after its reply's PUBACK")
}

// An answer from the estimate the journal recorded is not remembered in the
// ledger as well: its copies get the journal's bytes, acknowledged once the
// broker has them.
func TestRecordedEstimateAnswerIsNotRemembered(t *testing.T) {
	repeat := &fakeToken{done: make(chan struct{})}
	c := &fakeClient{tokens: []*fakeToken{lostPuback(), repeat}}
	g := handlerGateway(t, c, true) // answered from the estimate, and recorded
	key := store.Key{App: "fashion", Device: "cam-1", ID: "a"}
	g.handle(arrival{msg: newFakeMessage(owedTopic, owedRequest("a", "")), at: time.Now()})
	if _, ok := g.egress.Owed(key); ok {
		t.Error("a recorded answer from the estimate is remembered in the ledger too")
	}
	if n := testutil.ToFloat64(g.m.owedRemembered); n != 0 {
		t.Errorf("sneakgate_unjournaled_replies_remembered = %v, want 0", n)
	}
	cp := newFakeMessage(owedTopic, owedRequest("a", ""))
	cp.dup = true
	g.handle(arrival{msg: cp, at: time.Now()})
	sent := c.sent()
	if len(sent) != 2 || sent[1] != sent[0] {
		t.Fatalf("replies %q, want the first reply twice", sent)
	}
	if n := testutil.ToFloat64(g.m.duplicates.WithLabelValues("done")); n != 1 {
		t.Errorf("sneakgate_duplicates_total{state=done} = %v, want 1", n)
	}
	close(repeat.done)
	within(t, cp.acked, "the copy was not acknowledged after its reply's PUBACK")
}

// An answer from the estimate that the journal refuses to record because its
// room is kept for requests still goes out, counted apart as unrecorded (a
// condition of overload, not a store error).
func TestEstimateAnswerUnrecordedWhenJournalFull(t *testing.T) {
	c := &fakeClient{}
	g := handlerGateway(t, c, true) // answered from the estimate
	j := storetest.New(t, func(o *store.Options) { o.Now = time.Now; o.MaxBytes = 64 << 10 })
	for i := 0; ; i++ {
		e := &store.Entry{Key: store.Key{App: "fashion", Device: "filler", ID: fmt.Sprint(i)}, Input: make([]float32, 256)}
		if _, err := j.Put(e); errors.Is(err, store.ErrFull) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	g.journal = j
	g.handle(arrival{msg: newFakeMessage(owedTopic, owedRequest("a", "")), at: time.Now()})
	sent := c.sent()
	if len(sent) != 1 {
		t.Fatalf("%d replies, want the answer from the estimate", len(sent))
	}
	if rep, err := protocol.ParseReply([]byte(sent[0])); err != nil || rep.Status != protocol.StatusDegraded {
		t.Fatalf("reply %s (%v), want degraded", sent[0], err)
	}
	if n := testutil.ToFloat64(g.m.unrecorded.WithLabelValues("fashion", unrecordedFull)); n != 1 {
		t.Errorf("sneakgate_estimate_answers_unrecorded_total{reason=journal_full} = %v, want 1", n)
	}
	if n := testutil.ToFloat64(g.m.storeErrors.WithLabelValues("answered")); n != 0 {
		t.Errorf("sneakgate_store_errors_total{op=answered} = %v, want 0: a full journal is not a failure", n)
	}
	if res, err := j.Lookup(store.Key{App: "fashion", Device: "cam-1", ID: "a"}); err != nil || res.Dup != store.New {
		t.Errorf("the journal recorded the answer: %+v %v", res, err)
	}
}
