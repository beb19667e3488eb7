package gateway

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

// stoppingGateway is a gateway with what Run needs (in a synctest bubble): a
// real journal, a scheduling loop on a fake engine whose answers go to an egress
// with one answer worker and room for one answer, and a real paho client to b
// whose packet-id gate has one place, taken by a publish b holds: every answer
// waits for a place, and the third blocks the loop. Three requests are
// journaled and submitted; Run is running.
type stoppingGateway struct {
	g    *Gateway
	b    *heldBroker
	j    *store.Store
	log  *testenv.Buffer
	stop context.CancelFunc
	done chan error
}

func startStoppingGateway(t *testing.T, limit time.Duration) *stoppingGateway {
	t.Helper()
	s := &stoppingGateway{b: newHeldBroker(), log: &testenv.Buffer{}, done: make(chan error, 1)}
	cfg := DefaultConfig()
	cfg.Admission.Workers = 1
	cfg.MQTT.StatsInterval = 0
	cfg.MQTT.ShutdownTimeout = limit
	log := zerolog.New(s.log)
	m := newMetrics(nil)
	gate := newPubGate(1)
	g := &Gateway{cfg: &cfg, log: log, now: time.Now, reg: prometheus.NewRegistry(), m: m,
		link: newBrokerLink(time.Now), notify: newNotifier(time.Now, log),
		in: make(chan arrival, 1), stopIngress: make(chan struct{}), claimed: map[store.Key]chan struct{}{},
		fatal: make(chan struct{})}
	o := mqtt.NewClientOptions().SetStore(gate).
		SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) { g.egress.connectionLost() })
	g.client = heldClient(t, s.b, o)
	g.client.Publish("fill", 1, false, []byte("fill")) // the broker holds it: the gate is full
	s.j = storetest.New(t, func(o *store.Options) { o.Now = time.Now })
	g.journal = s.j
	eo := defaultEgressOptions()
	eo.Gate, eo.AnswerWorkers, eo.AnswerQueue = gate, 1, 1
	g.egress = newEgress(g.client, s.j, cfg.MQTT.PublishTimeout, 0, time.Now, eo, log, m)
	p, err := scheduler.New("edf", scheduler.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRunner{lat: func(int) time.Duration { return time.Millisecond }, resident: map[scheduler.VariantID]bool{}}
	g.loop = newLoop(p, map[string]*scheduler.App{"app": loopApp()}, f, scheduler.Engine{}, 100, time.Now,
		func(jb *job, _ result) {
			g.egress.Answer(okAnswer(store.Key{App: jb.App, Device: jb.Device, ID: jb.ID}, jb.Deadline))
		}, log, m)
	s.g = g
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go func() { s.done <- g.Run(ctx) }()
	for _, id := range []string{"a", "b", "c"} {
		e := &store.Entry{Key: store.Key{App: "app", Device: "d", ID: id}, Deadline: time.Now().Add(time.Hour),
			ReplyTo: "t", Input: []float32{1}}
		if _, err := s.j.Put(e); err != nil {
			t.Fatal(err)
		}
		if !g.loop.Reserve(100) || !g.loop.Submit(&job{App: "app", Device: "d", ID: id, ReplyTo: "t",
			Received: time.Now(), Deadline: e.Deadline, Input: e.Input}) {
			t.Fatalf("submit %s refused", id)
		}
	}
	time.Sleep(100 * time.Millisecond) // the loop runs and answers them
	synctest.Wait()
	return s
}

// stoppedLine is the fields of the gateway's last log line.
type stoppedLine struct {
	Message        string `json:"message"`
	Pending        int    `json:"pending"`
	Outbox         int    `json:"outbox"`
	Unacknowledged int    `json:"unacknowledged"`
	GaveUp         bool   `json:"gave_up_on_broker"`
}

func (s *stoppingGateway) stopped(t *testing.T) stoppedLine {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(s.log.String()), "\n")
	var l stoppedLine
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &l); err != nil || !strings.HasPrefix(l.Message, "stopped:") {
		t.Fatalf("last log line %q (%v), want the stop's", lines[len(lines)-1], err)
	}
	return l
}

// A gateway stopped while the broker, still connected (it answers pings),
// acknowledges nothing: every place at the gate is taken, so the answers of the
// loop's last batch wait for one, and the loop waits for room to hand over its
// last answer. Before, Run waited for the broker for good (systemd's
// TimeoutStopSec killed it); now it gives up mqtt.shutdown_timeout after the
// stop began, keeps the three answers unsent in the outbox (stamped when they
// go out after the next start), closes the journal cleanly and says so.
func TestStopGivesUpOnTheBroker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 10 * time.Second
		s := startStoppingGateway(t, limit)
		if r, held, _, _ := s.b.counts(); r != 1 || held != 1 {
			t.Fatalf("the broker received %d publishes and holds %d, want 1 and 1 (the answers wait for a place)", r, held)
		}
		s.stop()
		stopped := time.Now()
		time.Sleep(limit + 3*time.Second) // the status publish waits 2 s, the disconnection 250 ms
		select {
		case err := <-s.done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		default:
			t.Errorf("Run has not returned %v after the stop, with mqtt.shutdown_timeout %v", time.Since(stopped), limit)
			for { // let it finish: the broker acknowledges
				s.b.ack(-1)
				synctest.Wait()
				select {
				case <-s.done:
					return
				default:
				}
				time.Sleep(time.Second)
			}
		}
		if l := s.stopped(t); l.Pending != 0 || l.Outbox != 3 || l.Unacknowledged != 0 || !l.GaveUp {
			t.Errorf("stopped with %+v, want 0 pending, 3 in the outbox, 0 unacknowledged, gave up", l)
		}
		if !strings.Contains(s.log.String(), "giving up on it") {
			t.Error("no log line says the gateway gave up on the broker")
		}
		s.b.mu.Lock()
		got := append([]string(nil), s.b.payloads...)
		s.b.mu.Unlock()
		if len(got) != 2 || !strings.Contains(got[1], `"shutdown"`) {
			t.Errorf("the broker received %q, want the publish it held and the status (offline, shutdown)", got)
		}
		// The journal reopens (storetest checks it at the end) with the three
		// answers in the outbox, unsent.
		again := storetest.Open(t, s.j.Path(), storetest.Options(t))
		out, err := again.OutboxEntries()
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 3 {
			t.Fatalf("%d replies in the outbox after the stop, want 3", len(out))
		}
		for _, e := range out {
			if !e.Unsent {
				t.Errorf("%s kept as sent: it was never handed to the broker", e.ID)
			}
		}
		if p, err := again.Pending(); err != nil || len(p) != 0 {
			t.Errorf("%d requests pending (%v), want 0", len(p), err)
		}
	})
}

// The same stop with a broker that acknowledges: no giving up, every answer
// delivered and completed, nothing left for the next start.
func TestStopWithTheBrokerAcknowledging(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 10 * time.Second
		s := startStoppingGateway(t, limit)
		s.stop()
		stopped := time.Now()
	wait:
		for {
			s.b.ack(-1)
			synctest.Wait()
			select {
			case err := <-s.done:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				break wait
			default:
			}
			time.Sleep(100 * time.Millisecond)
		}
		if took := time.Since(stopped); took >= limit {
			t.Errorf("the stop took %v, want less than mqtt.shutdown_timeout %v", took, limit)
		}
		if l := s.stopped(t); l.Pending != 0 || l.Outbox != 0 || l.Unacknowledged != 0 || l.GaveUp {
			t.Errorf("stopped with %+v, want nothing left and no giving up", l)
		}
		if r, _, _, _ := s.b.counts(); r != 5 {
			t.Errorf("the broker received %d publishes, want 5 (the held one, three answers, the status)", r)
		}
	})
}
