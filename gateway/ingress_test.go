package gateway

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// fakeMessage is a request message as paho hands it over; Ack records the
// acknowledgement the gateway would send to the broker.
type fakeMessage struct {
	topic   string
	payload []byte
	dup     bool // a redelivery (the DUP flag)
	once    sync.Once
	acked   chan struct{}
}

func newFakeMessage(topic string, payload []byte) *fakeMessage {
	return &fakeMessage{topic: topic, payload: payload, acked: make(chan struct{})}
}

func (m *fakeMessage) Duplicate() bool   { return m.dup }
func (m *fakeMessage) Qos() byte         { return 1 }
func (m *fakeMessage) Retained() bool    { return false }
func (m *fakeMessage) Topic() string     { return m.topic }
func (m *fakeMessage) MessageID() uint16 { return 1 }
func (m *fakeMessage) Payload() []byte   { return m.payload }
func (m *fakeMessage) Ack()              { m.once.Do(func() { close(m.acked) }) }

func (m *fakeMessage) isAcked() bool {
	select {
	case <-m.acked:
		return true
	default:
		return false
	}
}

// A request message that finds every handler busy and the hand-off queue full
// waits for room, unacknowledged (the broker keeps the rest meanwhile), instead
// of being acknowledged and refused unread; a gateway stopping leaves it
// unacknowledged for the next session.
func TestFullIngressWaitsInsteadOfRefusing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMetrics(nil)
		g := &Gateway{log: zerolog.Nop(), m: m, now: time.Now,
			in: make(chan arrival, 1), stopIngress: make(chan struct{})}
		first := newFakeMessage("sneakgate/req/fashion/d", []byte(`{"id":"1"}`))
		g.onMessage(nil, first) // fills the queue
		second := newFakeMessage("sneakgate/req/fashion/d", []byte(`{"id":"2"}`))
		handed := make(chan struct{})
		go func() { g.onMessage(nil, second); close(handed) }()
		synctest.Wait()
		select {
		case <-handed:
			t.Fatal("onMessage returned with the hand-off queue full")
		default:
		}
		if second.isAcked() || first.isAcked() {
			t.Fatal("a message acknowledged before any handler read it")
		}
		if got := testutil.ToFloat64(m.ingressWaits); got != 1 {
			t.Errorf("ingress_waits_total = %v, want 1", got)
		}
		if a := <-g.in; a.msg != first { // a handler takes the first
			t.Fatalf("the queue held %v, want the first message", a.msg)
		}
		<-handed
		if a := <-g.in; a.msg != second || second.isAcked() {
			t.Fatalf("after a handler made room the queue holds %v (acknowledged %v), want the second message unacknowledged", a.msg, second.isAcked())
		}

		g.onMessage(nil, first) // full again
		third := newFakeMessage("sneakgate/req/fashion/d", []byte(`{"id":"3"}`))
		go func() { g.onMessage(nil, third); close(g.in) }()
		synctest.Wait()
		close(g.stopIngress) // shutting down
		synctest.Wait()
		if a := <-g.in; a.msg != first {
			t.Fatalf("the queue held %v, want the first message", a.msg)
		}
		if _, open := <-g.in; open || third.isAcked() {
			t.Errorf("a message waiting at shutdown was queued (%v) or acknowledged (%v), want neither", open, third.isAcked())
		}
	})
}

// handlerGateway is a gateway with just what the request handlers use: the
// fashion application (no engine), a real journal, a scheduling loop that is not
// running and an egress over c. MaxQueue 0 refuses every request admission sees.
func handlerGateway(t *testing.T, c *fakeClient, degradeRefused bool) *Gateway {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Apps = []AppConfig{{Manifest: fashionManifest}}
	cfg.Admission.MaxQueue = 0
	cfg.Admission.DegradeRefused = degradeRefused
	m := newMetrics(nil)
	g := &Gateway{cfg: &cfg, log: zerolog.Nop(), rejectLog: zerolog.Nop(), m: m, now: time.Now,
		reg: prometheus.NewRegistry(), claimed: map[store.Key]chan struct{}{}, perRequest: time.Millisecond}
	if err := g.loadApps(); err != nil {
		t.Fatal(err)
	}
	j := storetest.New(t, func(o *store.Options) { o.Now = time.Now }) // checked and closed after the egress stops
	g.journal = j
	g.loop = newLoop(nil, nil, &fakeRunner{resident: map[scheduler.VariantID]bool{}}, scheduler.Engine{}, 4,
		time.Now, func(*job, result) {}, zerolog.Nop(), m)
	g.egress = newEgress(c, j, time.Second, 0, time.Now, defaultEgressOptions(), zerolog.Nop(), m)
	t.Cleanup(func() {
		g.egress.Stop(t.Context())
		g.egress.Close()
	})
	return g
}

// A request the gateway answers without journaling it (refused for overload,
// answered from its estimate, invalid, expired on arrival) is acknowledged to
// the broker only once the broker has acknowledged its reply: until then a
// gateway killed by SIGKILL leaves it with the broker, which delivers it again.
// With the broker away the request is not acknowledged at all.
func TestUnjournaledRepliesAcknowledgeAfterPUBACK(t *testing.T) {
	input := make([]float32, 784)
	req := func(id string, deadline time.Duration, sentAt time.Time) []byte {
		p := protocol.Payload{ID: id, DeadlineMS: protocol.DeadlineMS(deadline), SentAt: sentAt, Input: input, B64: true}
		return p.Marshal()
	}
	const topic = "sneakgate/req/fashion/cam-1"
	for _, tc := range []struct {
		name           string
		payload        []byte
		degradeRefused bool
		status         protocol.Status
		reason         protocol.Reason
	}{
		{"refused for overload", req("a", time.Minute, time.Now()), false, protocol.StatusRejected, protocol.ReasonOverload},
		{"refused and answered from the estimate", req("b", time.Minute, time.Now()), true, protocol.StatusDegraded, protocol.ReasonOverloadShed},
		{"invalid", []byte(`{"id":"c","input":[1,2}`), false, protocol.StatusRejected, protocol.ReasonBadJSON},
		{"expired on arrival", req("d", time.Second, time.Now().Add(-time.Minute)), false, protocol.StatusExpired, protocol.ReasonExpiredBeforeReceipt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := &fakeToken{done: make(chan struct{})}
			c := &fakeClient{tokens: []*fakeToken{tok}}
			g := handlerGateway(t, c, tc.degradeRefused)
			msg := newFakeMessage(topic, tc.payload)
			g.handle(arrival{msg: msg, at: time.Now()})
			sent := c.sent()
			if len(sent) != 1 {
				t.Fatalf("%d replies published, want 1", len(sent))
			}
			rep, err := protocol.ParseReply([]byte(sent[0]))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Status != tc.status || rep.Reason != tc.reason {
				t.Errorf("reply %s/%s, want %s/%s", rep.Status, rep.Reason, tc.status, tc.reason)
			}
			if msg.isAcked() {
				t.Fatal("request acknowledged before the broker acknowledged its reply")
			}
			close(tok.done) // the PUBACK
			select {
			case <-msg.acked:
			case <-time.After(10 * time.Second):
				t.Fatal("request not acknowledged after the broker acknowledged its reply")
			}
		})
	}
	t.Run("broker away", func(t *testing.T) {
		c := &fakeClient{down: true}
		g := handlerGateway(t, c, false)
		msg := newFakeMessage(topic, req("e", time.Minute, time.Now()))
		g.handle(arrival{msg: msg, at: time.Now()})
		if len(c.sent()) != 0 || msg.isAcked() {
			t.Errorf("with the broker away: %d replies published, acknowledged %v; want none, left for redelivery", len(c.sent()), msg.isAcked())
		}
	})
}

// A request the gateway would answer without journaling it (expired on arrival,
// refused for overload, rejected for a deadline already past) is first looked up
// in the journal, since it may be a copy of a request answered before. When the
// journal cannot say (closed; damaged: a commit panicked, store/commit.go
// safeCommit), the request is neither answered nor acknowledged: an answer now
// could contradict the stored reply of a journaled request, and the broker
// delivers it again to the next session, which can look it up. The failure is
// counted, and a damaged journal stops the gateway.
func TestLookupFailureLeavesRequestUnanswered(t *testing.T) {
	input := make([]float32, 784)
	const topic = "sneakgate/req/fashion/cam-1"
	requests := []struct {
		name           string
		payload        protocol.Payload
		degradeRefused bool
	}{
		{"expired on arrival", protocol.Payload{ID: "a", DeadlineMS: 1000, SentAt: time.Now().Add(-time.Minute), Input: input, B64: true}, false},
		{"refused for overload", protocol.Payload{ID: "b", DeadlineMS: 60000, Input: input, B64: true}, false},
		{"refused and answered from the estimate", protocol.Payload{ID: "c", DeadlineMS: 60000, Input: input, B64: true}, true},
		{"deadline past", protocol.Payload{ID: "d", Deadline: time.Now().Add(-time.Second), Input: input, B64: true}, false},
	}
	journals := []struct {
		name         string
		breakJournal func(t *testing.T, g *Gateway)
		want         error
	}{
		{"closed", func(t *testing.T, g *Gateway) {
			if err := g.journal.Close(); err != nil {
				t.Fatal(err)
			}
		}, store.ErrClosed},
		{"damaged", func(t *testing.T, g *Gateway) {
			// A journal broken by a panic in a commit (store/doc.go): every later
			// call, Lookup included, fails with store.ErrDamaged.
			o := storetest.Options(t)
			o.BeforeCommit = func([]store.Op) error { panic("injected: bbolt panicked in a commit") }
			j, err := store.Open(filepath.Join(t.TempDir(), "journal.db"), o)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = j.Close() }) // an error wrapping ErrDamaged
			if _, err := j.Put(&store.Entry{Key: store.Key{App: "fashion", Device: "cam-0", ID: "x"}, Received: time.Now(),
				Deadline: time.Now().Add(time.Minute), ReplyTo: "r"}); !errors.Is(err, store.ErrDamaged) {
				t.Fatalf("Put on the hook that panics: %v, want store.ErrDamaged", err)
			}
			g.journal = j
		}, store.ErrDamaged},
	}
	for _, jc := range journals {
		for _, rc := range requests {
			t.Run(jc.name+"/"+rc.name, func(t *testing.T) {
				c := &fakeClient{}
				g := handlerGateway(t, c, rc.degradeRefused)
				g.fatal = make(chan struct{})
				jc.breakJournal(t, g)
				if _, err := g.journal.Lookup(store.Key{App: "fashion", Device: "cam-1", ID: rc.payload.ID}); !errors.Is(err, jc.want) {
					t.Fatalf("Lookup on the %s journal: %v, want %v", jc.name, err, jc.want)
				}
				leftForRedelivery(t, g, c, topic, rc.payload, "lookup")
				if stopping := g.fatalError(); errors.Is(jc.want, store.ErrDamaged) != errors.Is(stopping, store.ErrDamaged) {
					t.Errorf("fatal error %v with a %s journal", stopping, jc.name)
				}
			})
		}
	}
}

// leftForRedelivery has g handle payload on topic and fails the test unless
// the request got no reply (it may have been answered before, or be pending)
// and was not acknowledged, and the journal failure was counted once for op.
func leftForRedelivery(t *testing.T, g *Gateway, c *fakeClient, topic string, payload protocol.Payload, op string) {
	t.Helper()
	msg := newFakeMessage(topic, payload.Marshal())
	g.handle(arrival{msg: msg, at: time.Now()})
	if sent := c.sent(); len(sent) != 0 {
		t.Errorf("%d replies published (%s), want none: the request may have been answered before, or be pending", len(sent), sent[0])
	}
	if msg.isAcked() {
		t.Error("request acknowledged, want it left for redelivery")
	}
	if got := testutil.ToFloat64(g.m.storeErrors.WithLabelValues(op)); got != 1 {
		t.Errorf("store_errors_total{op=%s} = %v, want 1", op, got)
	}
}

// sneakgate_request_transit_seconds counts a request's first delivery only: a
// redelivery keeps its sent_at, and its transit would count the outage (a
// review's finding).
func TestTransitCountsFirstDeliveriesOnly(t *testing.T) {
	input := make([]float32, 784)
	g := handlerGateway(t, &fakeClient{tokens: []*fakeToken{{done: make(chan struct{})}, {done: make(chan struct{})}}}, true)
	for i, dup := range []bool{false, true} {
		p := protocol.Payload{ID: fmt.Sprint("t", i), DeadlineMS: 60000, SentAt: time.Now().Add(-time.Minute / 2), Input: input, B64: true}
		msg := newFakeMessage("sneakgate/req/fashion/cam-1", p.Marshal())
		msg.dup = dup
		g.handle(arrival{msg: msg, at: time.Now()})
	}
	var h dto.Metric
	if err := g.m.transit.WithLabelValues("fashion").(prometheus.Metric).Write(&h); err != nil {
		t.Fatal(err)
	}
	if n, sum := h.GetHistogram().GetSampleCount(), h.GetHistogram().GetSampleSum(); n != 1 || sum < 29 {
		t.Errorf("transit histogram: %d observations summing %.1f s; want 1 of about 30 s (the redelivery not counted)", n, sum)
	}
}

// A copy of a request that arrives just past its absolute deadline while a
// worker is still journaling the first copy waits for that worker (claim) and
// is then answered as the first copy's duplicate: it is never rejected
// deadline_past while the first copy is journaled and will be answered (the
// id would get two different answers; docs/reliability.md, "A repeat never
// contradicts the first answer to a journaled request"). Before the claim, its
// journal lookup saw no committed record and the copy was rejected.
func TestPastDeadlineCopyWaitsForFirstCopy(t *testing.T) {
	c := &fakeClient{}
	g := handlerGateway(t, c, false)
	g.cfg.Admission.MaxQueue = 100 // admit the first copy
	g.cfg.Admission.MaxWait = 0

	// Hold the first group commit (the first copy's Put) until released.
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	g.journal = storetest.New(t, func(o *store.Options) {
		o.Now = time.Now
		o.BeforeCommit = func([]store.Op) error {
			once.Do(func() {
				close(entered)
				<-release
			})
			return nil
		}
	})
	waiting := make(chan store.Key, 1)
	g.claimWaits = func(k store.Key) { waiting <- k }

	deadline := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	p := protocol.Payload{ID: "r1", Deadline: deadline, Input: make([]float32, 784), B64: true}
	const topic = "sneakgate/req/fashion/cam-1"
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.handle(arrival{msg: newFakeMessage(topic, p.Marshal()), at: deadline.Add(-10 * time.Second)})
	}()
	<-entered // the first copy is being journaled

	second := newFakeMessage(topic, p.Marshal())
	second.dup = true
	handled := make(chan struct{})
	go func() {
		defer close(handled)
		g.handle(arrival{msg: second, at: deadline.Add(time.Millisecond)}) // just past the deadline
	}()
	select {
	case <-handled:
		t.Error("the copy was handled while the first copy was being journaled")
	case k := <-waiting:
		if k.ID != "r1" {
			t.Errorf("waited for %v", k)
		}
	}
	close(release)
	<-done
	<-handled

	res, err := g.journal.Lookup(store.Key{App: "fashion", Device: "cam-1", ID: "r1"})
	if err != nil || res.Dup != store.DupPending {
		t.Fatalf("first copy: journal says %v, %v; want pending", res.Dup, err)
	}
	for _, s := range c.sent() {
		rep, err := protocol.ParseReply([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		if rep.ID == "r1" && rep.Status == protocol.StatusRejected {
			t.Errorf("the copy was answered %s/%s (%q) while the first copy is journaled and pending", rep.Status, rep.Reason, rep.Error)
		}
	}
}

// A journaled request the loop's full channel cannot take is answered rejected
// overload with retry_after_ms, and counted and logged as every rejection is
// (sneakgate_rejected_total{reason}; docs/protocol.md).
func TestJournaledRejectionIsCounted(t *testing.T) {
	c := &fakeClient{}
	g := handlerGateway(t, c, false)
	g.cfg.Admission.MaxQueue = 100 // the queue has room; the loop (not running) takes none
	g.cfg.Admission.MaxWait = 0
	const topic = "sneakgate/req/fashion/cam-1"
	for i := range 10 {
		p := protocol.Payload{ID: fmt.Sprint(i), DeadlineMS: 60000, Input: make([]float32, 784), B64: true}
		g.handle(arrival{msg: newFakeMessage(topic, p.Marshal()), at: time.Now()})
	}
	g.egress.Stop(t.Context()) // published what it was given
	rejected := 0
	for _, s := range c.sent() {
		rep, err := protocol.ParseReply([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		if rep.Status != protocol.StatusRejected {
			continue
		}
		rejected++
		if rep.Reason != protocol.ReasonOverload || rep.RetryAfterMS == nil || *rep.RetryAfterMS <= 0 {
			t.Errorf("%s: %s %s, retry_after_ms %v; want overload with retry_after_ms", rep.ID, rep.Status, rep.Reason, rep.RetryAfterMS)
		}
	}
	if rejected == 0 {
		t.Fatal("no request rejected: the loop's channel took all ten")
	}
	if n := testutil.ToFloat64(g.m.rejected.WithLabelValues(string(protocol.ReasonOverload))); int(n) != rejected {
		t.Errorf("rejected_total{overload} = %v, want %d (the rejected replies)", n, rejected)
	}
}

// A copy of a request answered before its application was removed (by a
// reload) gets the stored reply again, not rejected unknown_app: a repeat never
// contradicts the first answer to a journaled request. The reply goes where the
// copy asks (its reply_to, when the allow-list admits it), as the first went;
// a copy whose reply_to is not allowed is rejected unknown_app on its own
// topic, as before.
func TestCopyAfterAppRemovedGetsStoredReply(t *testing.T) {
	for _, c := range []struct {
		name, replyTo, want string
		stored              bool
	}{
		{"own reply topic", "", "sneakgate/res/gone/cam-1", true},
		{"reply_to", "custom/gone/cam-1", "custom/gone/cam-1", true},
		{"reply_to not allowed", "elsewhere/x", "sneakgate/res/gone/cam-1", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			fc := &fakeClient{}
			g := handlerGateway(t, fc, false)
			allow, err := protocol.NewAllowList([]string{"{prefix}/res/{app}/{device}", "custom/{app}/{device}"})
			if err != nil {
				t.Fatal(err)
			}
			g.env.ReplyAllow = allow
			key := store.Key{App: "gone", Device: "cam-1", ID: "r1"}
			if _, err := g.journal.Put(&store.Entry{Key: key, ReplyTo: c.want, Input: []float32{1}}); err != nil {
				t.Fatal(err)
			}
			stored := `{"v":1,"id":"r1","app":"gone","device":"cam-1","status":"ok","class":1}`
			if err := g.journal.Complete(key, []byte(stored)); err != nil {
				t.Fatal(err)
			}
			payload := `{"id":"r1","input":[1]}`
			if c.replyTo != "" {
				payload = fmt.Sprintf(`{"id":"r1","reply_to":%q,"input":[1]}`, c.replyTo)
			}
			g.handle(arrival{msg: newFakeMessage("sneakgate/req/gone/cam-1", []byte(payload)), at: time.Now()})
			g.egress.Stop(t.Context())
			sent, topics := fc.sent(), fc.sentTopics()
			if len(sent) != 1 || len(topics) != 1 || topics[0] != c.want {
				t.Fatalf("sent %q to %q, want one reply to %s", sent, topics, c.want)
			}
			if got := sent[0] == stored; got != c.stored {
				t.Errorf("sent %q: the stored reply %v, want %v", sent[0], got, c.stored)
			}
		})
	}
}

// While the MQTT client is still waiting for a request handler (the hand-off
// full, every handler stuck, e.g. on a slow disk's journal commit), /readyz
// says overloaded for as long as the wait lasts: the gateway takes no request.
// The wait's stamp is stored once, when it begins, and readiness once said
// ready a second into a wait that went on.
func TestReadinessDuringAnOngoingIngressWait(t *testing.T) {
	g := handlerGateway(t, &fakeClient{}, false)
	base := time.Now()
	var offset atomic.Int64
	g.now = func() time.Time { return base.Add(time.Duration(offset.Load())) }
	g.in, g.stopIngress = make(chan arrival, 1), make(chan struct{})
	g.subscribed.Store(true)
	g.in <- arrival{} // the hand-off is full; no handler takes from it
	waiting := make(chan struct{})
	go func() {
		defer close(waiting)
		p := (&protocol.Payload{ID: "c", DeadlineMS: 60000, Input: make([]float32, 784), B64: true}).Marshal()
		g.onMessage(nil, newFakeMessage("sneakgate/req/fashion/cam-1", p)) // waits for room
	}()
	for g.ingressWaiting.Load() == 0 {
		runtime.Gosched()
	}
	if why := g.readiness(); !strings.Contains(why, "request handlers are behind") {
		t.Fatalf("as the wait begins: readiness %q", why)
	}
	offset.Store(int64(2 * time.Second)) // two seconds on, still waiting
	if why := g.readiness(); !strings.Contains(why, "request handlers are behind") {
		t.Errorf("2 s into the wait: readiness %q, want overloaded", why)
	}
	close(g.stopIngress)
	<-waiting
	if why := g.readiness(); why != "" {
		t.Errorf("2 s after the wait began and it ended: readiness %q, want ready", why)
	}
}

// panickingEstimator stands in for an estimator (or any code the handler runs
// before it journals a request) that panics.
type panickingEstimator struct{}

func (panickingEstimator) Estimate([]float32, []float64) { panic("injected: the estimator panicked") }

// A request whose handler panics before journaling it is answered rejected
// internal, with retry_after_ms (nothing was stored: a retry is a new request),
// and acknowledged once the broker has the reply; its queue place is given
// back. Before, the recover acknowledged it and dropped it, and the device got
// no answer. A copy of a request the journal knows is answered as a duplicate
// instead (a repeat never contradicts the first answer to a journaled request),
// and a panic once the request is journaled sends nothing: the journaled
// request is answered by the loop or the next session's recovery, never twice.
func TestPanicBeforeJournalIsRejectedInternal(t *testing.T) {
	const topic = "sneakgate/req/fashion/cam-1"
	stored := `{"v":1,"id":"done","app":"fashion","device":"cam-1","status":"ok","class":1}`
	for _, tc := range []struct {
		name    string
		id      string
		journal func(t *testing.T, g *Gateway, key store.Key) // what the journal knows of the id first
		want    string                                        // the reply: rejected (internal), the stored one, or none
	}{
		{"new request", "new", nil, "rejected"},
		{"copy of a pending request", "pending", func(t *testing.T, g *Gateway, key store.Key) {
			if _, err := g.journal.Put(&store.Entry{Key: key, ReplyTo: "sneakgate/res/fashion/cam-1", Input: []float32{1},
				Received: time.Now(), Deadline: time.Now().Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"copy of an answered request", "done", func(t *testing.T, g *Gateway, key store.Key) {
			if _, err := g.journal.Put(&store.Entry{Key: key, ReplyTo: "sneakgate/res/fashion/cam-1", Input: []float32{1},
				Received: time.Now(), Deadline: time.Now().Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
			if err := g.journal.Complete(key, []byte(stored)); err != nil {
				t.Fatal(err)
			}
		}, stored},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := &fakeToken{done: make(chan struct{})}
			c := &fakeClient{tokens: []*fakeToken{tok}}
			g := handlerGateway(t, c, false)
			g.cfg.Admission.MaxQueue = 100 // admitted: the estimate runs
			g.cfg.Admission.MaxWait = 0
			key := store.Key{App: "fashion", Device: "cam-1", ID: tc.id}
			if tc.journal != nil {
				tc.journal(t, g, key)
			}
			a, _ := g.app("fashion")
			a.est = panickingEstimator{}
			p := protocol.Payload{ID: tc.id, DeadlineMS: 60000, Input: make([]float32, 784), B64: true}
			msg := newFakeMessage(topic, p.Marshal())
			msg.dup = tc.journal != nil
			g.handle(arrival{msg: msg, at: time.Now()})
			if q := g.loop.Queued(); q != 0 {
				t.Errorf("%d queue places held after the panic, want 0", q)
			}
			close(tok.done) // the PUBACK of the reply, if any
			g.egress.Stop(t.Context())
			sent := c.sent()
			switch {
			case tc.want == "" && len(sent) != 0:
				t.Fatalf("sent %q, want no reply (the journaled request is pending)", sent)
			case tc.want == stored && (len(sent) != 1 || sent[0] != stored):
				t.Fatalf("sent %q, want the stored reply %s", sent, stored)
			case tc.want == "rejected":
				if len(sent) != 1 {
					t.Fatalf("%d replies published, want 1 (rejected internal)", len(sent))
				}
				rep, err := protocol.ParseReply([]byte(sent[0]))
				if err != nil {
					t.Fatal(err)
				}
				if rep.ID != tc.id || rep.Status != protocol.StatusRejected || rep.Reason != protocol.ReasonInternal ||
					rep.RetryAfterMS == nil || *rep.RetryAfterMS <= 0 {
					t.Errorf("reply %s %s/%s retry_after_ms %v, want %s rejected/internal with retry_after_ms", rep.ID, rep.Status, rep.Reason, rep.RetryAfterMS, tc.id)
				}
				if res, err := g.journal.Lookup(key); err != nil || res.Dup != store.New {
					t.Errorf("journal says %v, %v; want the rejected request not stored", res.Dup, err)
				}
			}
			select {
			case <-msg.acked:
			case <-time.After(10 * time.Second):
				t.Fatal("request not acknowledged")
			}
			// Counted where it is rejected, not where it is answered as a repeat.
			want := 0.0
			if tc.want == "rejected" {
				want = 1
			}
			if n := testutil.ToFloat64(g.m.rejected.WithLabelValues(string(protocol.ReasonInternal))); n != want {
				t.Errorf("rejected_total{internal} = %v, want %v", n, want)
			}
			if n := testutil.ToFloat64(g.m.handlerPanics); n != 1 {
				t.Errorf("handler_panics_total = %v, want 1", n)
			}
		})
	}
	// A panic once the request is journaled and acknowledged, before the loop
	// has it, hands it to the loop all the same: before, it stayed pending,
	// unanswered, until the next session's recovery (days, for a gateway that
	// is not restarted). With the loop's channel full it is answered rejected
	// (overload), as a request the handler itself cannot submit.
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("after the journal write, loop full %v", full), func(t *testing.T) {
			c := &fakeClient{}
			g := handlerGateway(t, c, false)
			g.cfg.Admission.MaxQueue = 100
			g.cfg.Admission.MaxWait = 0
			if full {
				for range cap(g.loop.admit) {
					g.loop.admit <- &job{}
				}
			}
			// Counting the request, just after its Put, panics (a label too few).
			g.m.received = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"app", "extra"})
			p := protocol.Payload{ID: "j", DeadlineMS: 60000, Input: make([]float32, 784), B64: true}
			msg := newFakeMessage(topic, p.Marshal())
			g.handle(arrival{msg: msg, at: time.Now()})
			if !msg.isAcked() {
				t.Error("journaled request not acknowledged")
			}
			if n := testutil.ToFloat64(g.m.handlerPanics); n != 1 {
				t.Errorf("handler_panics_total = %v, want 1", n)
			}
			g.egress.Stop(t.Context())
			sent := c.sent()
			if full {
				if len(sent) != 1 {
					t.Fatalf("sent %q, want one reply (rejected overload): the loop's channel is full", sent)
				}
				if rep, err := protocol.ParseReply([]byte(sent[0])); err != nil || rep.Status != protocol.StatusRejected || rep.Reason != protocol.ReasonOverload {
					t.Errorf("reply %s (%v), want rejected overload", sent[0], err)
				}
				if q := g.loop.Queued(); q != 0 {
					t.Errorf("%d queue places held after the panic, want 0", q)
				}
				return
			}
			if len(sent) != 0 {
				t.Errorf("sent %q, want nothing yet: the loop serves it", sent)
			}
			if q := g.loop.Queued(); q != 1 {
				t.Errorf("%d queue places held after the panic, want 1 (the request, handed to the loop)", q)
			}
			if res, err := g.journal.Lookup(store.Key{App: "fashion", Device: "cam-1", ID: "j"}); err != nil || res.Dup != store.DupPending {
				t.Errorf("journal says %v, %v; want the request pending", res.Dup, err)
			}
			select {
			case j := <-g.loop.admit:
				if j.ID != "j" || j.Estimate == nil || len(j.Input) != 784 {
					t.Errorf("the loop got %s (estimate %v, %d inputs), want j with its estimate and input", j.ID, j.Estimate != nil, len(j.Input))
				}
			default:
				t.Error("the journaled request never reached the loop: it would stay pending until the next session")
			}
		})
	}
}

// TestPanicInDegradeRefusedIsAnswered: a request refused for overload with
// admission.degrade_refused runs the estimator (degradeRefused); a panic there
// comes before its reply is handed over, so the request is answered rejected
// internal, not acknowledged and dropped (a review found the handler had
// stopped tracking it before the estimator ran).
func TestPanicInDegradeRefusedIsAnswered(t *testing.T) {
	const topic = "sneakgate/req/fashion/cam-1"
	tok := &fakeToken{done: make(chan struct{})}
	c := &fakeClient{tokens: []*fakeToken{tok}}
	g := handlerGateway(t, c, true) // max_queue 0: refused; degrade_refused: the estimator runs
	a, _ := g.app("fashion")
	a.est = panickingEstimator{}
	p := protocol.Payload{ID: "r", DeadlineMS: 60000, Input: make([]float32, 784), B64: true}
	msg := newFakeMessage(topic, p.Marshal())
	g.handle(arrival{msg: msg, at: time.Now()})
	close(tok.done)
	g.egress.Stop(t.Context())
	res, err := g.journal.Lookup(store.Key{App: "fashion", Device: "cam-1", ID: "r"})
	if sent := c.sent(); len(sent) != 1 {
		t.Errorf("acknowledged=%v, journal=%v (%v), %d replies %q: want one reply (rejected internal)",
			msg.isAcked(), res.Dup, err, len(sent), sent)
	}
}

// TestPanicAfterReleaseReleasesOnce: a panic after the handler gave its queue
// place back (here in the failed journal write's path, where the store-error
// counter panics) must not give it back again (the queue count went to -1,
// and admission took one place more than admission.max_queue), and the
// request, neither journaled nor answered, must not be acknowledged without
// a reply (here its lookup fails on the closed journal: left for
// redelivery).
func TestPanicAfterReleaseReleasesOnce(t *testing.T) {
	const topic = "sneakgate/req/fashion/cam-1"
	c := &fakeClient{}
	g := handlerGateway(t, c, false)
	g.cfg.Admission.MaxQueue = 100
	g.cfg.Admission.MaxWait = 0
	if err := g.journal.Close(); err != nil { // Put fails (ErrClosed)
		t.Fatal(err)
	}
	// Counting the failed write panics (a label too few), as the commit's
	// "after the journal write" case injects its panic.
	g.m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"op", "extra"})
	p := protocol.Payload{ID: "q", DeadlineMS: 60000, Input: make([]float32, 784), B64: true}
	msg := newFakeMessage(topic, p.Marshal())
	g.handle(arrival{msg: msg, at: time.Now()})
	g.egress.Stop(t.Context())
	if q := g.loop.Queued(); q != 0 {
		t.Errorf("loop.Queued() = %d after the panic, want 0 (the place was released twice)", q)
	}
	if sent := c.sent(); msg.isAcked() && len(sent) == 0 {
		t.Errorf("acknowledged with no reply and not journaled (Put failed)")
	}
}
