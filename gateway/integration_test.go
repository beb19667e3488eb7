package gateway

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/store"
)

// These tests run the whole gateway against real components: a Mosquitto broker
// started per test, the real ONNX Runtime library, a real bbolt journal, and the
// committed Fashion-MNIST models on real test images.

const fashionManifest = "../models/fashion/manifest.yaml"

// testConfig is a config for one gateway talking to broker, journaling in dir.
func testConfig(t *testing.T, brokerURL, dir string) *Config {
	t.Helper()
	c := DefaultConfig()
	c.Log.Level = "warn"
	c.MQTT.Broker = brokerURL
	c.MQTT.ClientID = "sneakgate-test"
	c.MQTT.PublishTimeout = 2 * time.Second
	c.Store.Path = filepath.Join(dir, "journal.db")
	c.Engine.Library = testenv.ORTLib(t)
	c.Engine.WarmupRuns, c.Engine.ProfileRuns = 1, 3
	c.Engine.ProfileCache = filepath.Join(dir, "profiles")
	c.Apps = []AppConfig{{Manifest: fashionManifest}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

// running is a gateway started by a test.
type running struct {
	g      *Gateway
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop stops the gateway (once; later calls do nothing) and checks Run's error.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		if err := <-r.done; err != nil {
			t.Errorf("gateway Run: %v", err)
		}
	})
}

func startGateway(t *testing.T, cfg *Config, o Options) *running {
	t.Helper()
	o.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	return runGateway(t, cfg, o)
}

// runGateway starts a gateway on cfg with o as given (its Logger included) and
// stops it when the test ends.
func runGateway(t *testing.T, cfg *Config, o Options) *running {
	t.Helper()
	o.Config = cfg
	g, err := New(context.Background(), o)
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{g: g, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- g.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// device is a test device: a paho client collecting every reply it sees.
type device struct {
	t       *testing.T
	c       mqtt.Client
	mu      sync.Mutex
	replies map[string][]*protocol.Reply
	raw     map[string][]string
	order   []string // ids in arrival order
	arrived chan struct{}
}

func newDevice(t *testing.T, brokerURL, name string) *device {
	t.Helper()
	d := &device{t: t, replies: map[string][]*protocol.Reply{}, raw: map[string][]string{}, arrived: make(chan struct{}, 1<<16)}
	opts := mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID(name).SetCleanSession(true)
	d.c = mqtt.NewClient(opts)
	if tok := d.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	tok := d.c.Subscribe("sneakgate/res/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		r, err := protocol.ParseReply(m.Payload())
		if err != nil {
			t.Errorf("bad reply on %s: %v: %s", m.Topic(), err, m.Payload())
			return
		}
		d.mu.Lock()
		d.replies[r.ID] = append(d.replies[r.ID], r)
		d.raw[r.ID] = append(d.raw[r.ID], string(m.Payload()))
		d.order = append(d.order, r.ID)
		d.mu.Unlock()
		d.arrived <- struct{}{}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { d.c.Disconnect(100) })
	return d
}

func (d *device) publish(topic string, payload []byte) {
	d.t.Helper()
	tok := d.c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		d.t.Fatalf("publish: %v", tok.Error())
	}
}

func (d *device) request(app, dev, id string, input []float32, deadlineMS int64) {
	d.t.Helper()
	p := map[string]any{"id": id, "input": input}
	if deadlineMS > 0 {
		p["deadline_ms"] = deadlineMS
	}
	b, _ := json.Marshal(p)
	d.publish(protocol.RequestTopic("sneakgate", app, dev), b)
}

// await waits until ids all have at least one reply (bounded, not a sleep).
func (d *device) await(ids []string, within time.Duration) map[string]*protocol.Reply {
	d.t.Helper()
	deadline := time.After(within)
	for {
		d.mu.Lock()
		out := map[string]*protocol.Reply{}
		for _, id := range ids {
			if rs := d.replies[id]; len(rs) > 0 {
				out[id] = rs[0]
			}
		}
		d.mu.Unlock()
		if len(out) == len(ids) {
			return out
		}
		select {
		case <-d.arrived:
		case <-deadline:
			d.t.Fatalf("got %d of %d replies within %v", len(out), len(ids), within)
		}
	}
}

// awaitFirst waits (bounded) until one of ids has a reply and returns it.
func (d *device) awaitFirst(ids []string, within time.Duration) (string, *protocol.Reply) {
	d.t.Helper()
	deadline := time.After(within)
	for {
		d.mu.Lock()
		for _, id := range ids {
			if rs := d.replies[id]; len(rs) > 0 {
				d.mu.Unlock()
				return id, rs[0]
			}
		}
		d.mu.Unlock()
		select {
		case <-d.arrived:
		case <-deadline:
			d.t.Fatalf("no reply to any of %v within %v", ids, within)
		}
	}
}

// awaitIdenticalRepeats waits (bounded) until each id has a second reply and
// checks that it is byte for byte the first.
func (d *device) awaitIdenticalRepeats(ids []string, within time.Duration) {
	d.t.Helper()
	deadline := time.After(within)
	for _, id := range ids {
		for d.count(id) < 2 {
			select {
			case <-d.arrived:
			case <-deadline:
				d.t.Fatalf("%s answered %d times, want a repeat", id, d.count(id))
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range ids {
		if r := d.raw[id]; r[0] != r[1] {
			d.t.Errorf("%s: the repeat differs from the first reply:\n%s\n%s", id, r[0], r[1])
		}
	}
}

func (d *device) count(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.replies[id])
}

func fashionSamples(t *testing.T) (*manifest.App, *dataset.Set) {
	t.Helper()
	return appSamples(t, fashionManifest)
}

// appSamples loads an application's manifest and its replayable test samples.
func appSamples(t *testing.T, path string) (*manifest.App, *dataset.Set) {
	t.Helper()
	m, err := manifest.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if m.Samples == nil {
		t.Fatalf("%s has no samples", path)
	}
	s, err := dataset.Read(m.Path(m.Samples.File))
	if err != nil {
		t.Fatal(err)
	}
	return m, s
}

// TestEndToEndEveryApp serves the three bundled applications from one gateway and
// replays real held-out samples of each through the broker.
func TestEndToEndEveryApp(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.Apps = nil
	for _, app := range []string{"fashion", "satellite", "vad"} {
		cfg.Apps = append(cfg.Apps, AppConfig{Manifest: "../models/" + app + "/manifest.yaml"})
	}
	// edf answers every request of these bursts with a model whatever the CPU
	// left to it (a 5 s budget is never too short for a variant): sneakpeek
	// prices engine time from the observed passes and may answer part of a burst
	// from the estimate when other packages' tests slow them (one fashion reply
	// of 200 was degraded so in a make test run, with resnet-m, 2 ms per image,
	// on top). The policies' own choices are tested elsewhere.
	cfg.Scheduler.Policy = "edf"
	// Nor is admission tested here: its measured drain rate starts from the
	// first passes, and when other packages' tests hold the CPU the first
	// resnet-m pass reads as a few answers a second, a 200-request burst as
	// longer than its 5 s budget, and requests were answered from the estimate
	// at admission (fashion-43 degraded in a make test run). That is the
	// test's job when the gateway really is short of CPU (TestOverload5x in
	// soak/, and the admission tests of this package), not this one's.
	cfg.Admission.MaxWait = 0
	startGateway(t, cfg, Options{})
	dev := newDevice(t, b.URL(), "sensor-1")
	for _, app := range []string{"fashion", "satellite", "vad"} {
		t.Run(app, func(t *testing.T) {
			m, samples := appSamples(t, "../models/"+app+"/manifest.yaml")
			n := min(200, samples.N)
			ids := make([]string, n)
			for i := range n {
				ids[i] = fmt.Sprintf("%s-%d", app, i)
				dev.request(app, "sensor-1", ids[i], samples.Row(i), 5000)
			}
			replies := dev.await(ids, 60*time.Second)
			correct, expected := 0, 0.0
			for i, id := range ids {
				r := replies[id]
				if r.Status != protocol.StatusOK {
					t.Fatalf("%s: status %s (%s)", id, r.Status, r.Error)
				}
				if r.App != app || r.Device != "sensor-1" || r.Class == nil || r.Label != m.Labels[*r.Class] ||
					r.Confidence == nil || r.EstAccuracy == nil || r.Batch < 1 || r.QueueMS == nil ||
					r.InferMS == nil || r.TotalMS == nil || r.DeadlineMet == nil || !*r.DeadlineMet {
					t.Fatalf("%s: incomplete reply %+v", id, r)
				}
				v := m.Variant(r.Model)
				if v == nil {
					t.Fatalf("%s: reply names unknown model %q", id, r.Model)
				}
				expected += v.Accuracy
				if int32(*r.Class) == samples.Labels[i] {
					correct++
				}
			}
			// Accuracy against the validation accuracy of the variants that answered:
			// allow four standard errors of a binomial proportion plus 2 points for
			// the test split differing from the validation split.
			acc, want := float64(correct)/float64(n), expected/float64(n)
			tol := 4*math.Sqrt(want*(1-want)/float64(n)) + 0.02
			t.Logf("%s: %d replies, accuracy %.3f, validation accuracy of the variants used %.3f (tolerance %.3f)", app, n, acc, want, tol)
			if acc < want-tol {
				t.Errorf("accuracy %.3f below %.3f - %.3f", acc, want, tol)
			}
		})
	}
}

func TestBadInputIsRejectedAndLosesNothing(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	gw := startGateway(t, cfg, Options{})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-bad")
	good, _ := json.Marshal(samples.Row(0))
	topic := protocol.RequestTopic("sneakgate", "fashion", "cam-bad")
	cases := []struct {
		id, topic, payload string
		reason             protocol.Reason
	}{
		{"", topic, `{not json`, protocol.ReasonBadJSON},
		{"short", topic, `{"id":"short","input":[1,2,3]}`, protocol.ReasonBadInputSize},
		{"nan", topic, `{"id":"nan","input_b64":"` + b64With(samples.Row(0), 10, float32(math.NaN())) + `"}`, protocol.ReasonNonFiniteInput},
		{"inf", topic, `{"id":"inf","input_b64":"` + b64With(samples.Row(0), 0, float32(math.Inf(1))) + `"}`, protocol.ReasonNonFiniteInput},
		{"app", protocol.RequestTopic("sneakgate", "nope", "cam-bad"), `{"id":"app","input":[1]}`, protocol.ReasonUnknownApp},
		{"both", topic, `{"id":"both","deadline_ms":10,"deadline":1,"input":` + string(good) + `}`, protocol.ReasonDeadlineConflict},
		{"past", topic, `{"id":"past","deadline":1000,"input":` + string(good) + `}`, protocol.ReasonDeadlinePast},
		{"far", topic, `{"id":"far","deadline_ms":86400000000,"input":` + string(good) + `}`, protocol.ReasonDeadlineTooFar},
		{"rt", topic, `{"id":"rt","reply_to":"elsewhere/x","input":` + string(good) + `}`, protocol.ReasonReplyToNotAllowed},
		{"big", topic, `{"id":"big","input":[` + strings.Repeat("0.5,", 80000) + `0]}`, protocol.ReasonPayloadTooLarge},
		{"range", topic, `{"id":"range","input_b64":"` + b64With(samples.Row(0), 3, 7) + `"}`, protocol.ReasonInputOutOfRange},
	}
	var ids []string
	for _, c := range cases {
		dev.publish(c.topic, []byte(c.payload))
		if c.id != "" {
			ids = append(ids, c.id)
		}
	}
	// A device name outside the allowed characters is still answered on its topic.
	dev.publish("sneakgate/req/fashion/bad device!", []byte(`{"id":"baddev"}`))
	ids = append(ids, "baddev")
	cases = append(cases, struct {
		id, topic, payload string
		reason             protocol.Reason
	}{"baddev", "", "", protocol.ReasonBadDevice})
	// A good request after all of that is still answered.
	dev.request("fashion", "cam-bad", "good", samples.Row(0), 5000)
	ids = append(ids, "good")
	replies := dev.await(ids, 30*time.Second)
	for _, c := range cases {
		if c.id == "" {
			continue
		}
		r := replies[c.id]
		if r.Status != protocol.StatusRejected || r.Error == "" || (c.reason != "" && r.Reason != c.reason) {
			t.Errorf("%s: got %s/%s (%s), want rejected/%s", c.id, r.Status, r.Reason, r.Error, c.reason)
		}
	}
	if r := replies["good"]; r.Status != protocol.StatusOK {
		t.Errorf("good request after bad ones: %+v", r)
	}
	if got := testutil.ToFloat64(gw.g.m.rejected.WithLabelValues(string(protocol.ReasonBadInputSize))); got < 1 {
		t.Errorf("rejected{bad_input_size} = %v", got)
	}
}

// b64With encodes in as input_b64 after setting in[i] = v (on a copy).
func b64With(in []float32, i int, v float32) string {
	c := append([]float32(nil), in...)
	c[i] = v
	b := make([]byte, 4*len(c))
	for j, x := range c {
		binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(x))
	}
	return base64.StdEncoding.EncodeToString(b)
}

// TestAckOnlyAfterCommit: a gateway stopped while a request's journal write is
// still in progress does not acknowledge it; the broker redelivers it to the next
// gateway session, which answers it.
func TestAckOnlyAfterCommit(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	dir := t.TempDir()
	cfg := testConfig(t, b.URL(), dir)
	inPut, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	first := startGateway(t, cfg, Options{BeforeCommit: func(ops []store.Op) error {
		for _, op := range ops {
			if op.Kind == store.OpPut {
				once.Do(func() { close(inPut) })
				<-release                                  // the disk hangs until the test lets go...
				return fmt.Errorf("injected disk failure") // ...and then fails
			}
		}
		return nil
	}})
	drained := make(chan struct{})
	first.g.onDrain = func() { close(drained) }
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-ack")
	dev.request("fashion", "cam-ack", "precious", samples.Row(1), 60000)
	<-inPut
	stopped := make(chan struct{})
	go func() { first.stop(t); close(stopped) }()
	<-drained      // shutdown has begun
	close(release) // the write fails while the gateway is stopping
	<-stopped
	if got := testutil.ToFloat64(first.g.m.storeErrors.WithLabelValues("put")); got != 1 {
		t.Fatalf("store put errors = %v", got)
	}
	if n := dev.count("precious"); n != 0 {
		t.Fatalf("a request whose write failed was answered %d times", n)
	}
	startGateway(t, cfg, Options{})
	r := dev.await([]string{"precious"}, 30*time.Second)["precious"]
	if r.Status != protocol.StatusOK || r.Class == nil {
		t.Fatalf("redelivered request: %+v", r)
	}
}

// TestJournalFailureIsRejected: while running, a request whose journal write fails
// is answered rejected/internal with a retry hint (an unacknowledged message would
// wait for a reconnect); a retry of the same id is then served.
func TestJournalFailureIsRejected(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	var failed atomic.Bool
	startGateway(t, cfg, Options{BeforeCommit: func(ops []store.Op) error {
		for _, op := range ops {
			if op.Kind == store.OpPut && failed.CompareAndSwap(false, true) {
				return fmt.Errorf("injected disk failure")
			}
		}
		return nil
	}})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-fail")
	dev.request("fashion", "cam-fail", "r", samples.Row(1), 60000)
	r := dev.await([]string{"r"}, 30*time.Second)["r"]
	if r.Status != protocol.StatusRejected || r.Reason != protocol.ReasonInternal || r.RetryAfterMS == nil {
		t.Fatalf("first try: %+v", r)
	}
	dev.mu.Lock()
	delete(dev.replies, "r")
	dev.mu.Unlock()
	dev.request("fashion", "cam-fail", "r", samples.Row(1), 60000)
	if r := dev.await([]string{"r"}, 30*time.Second)["r"]; r.Status != protocol.StatusOK {
		t.Fatalf("retry: %+v", r)
	}
}

// TestRecoveryAfterCrash: requests journaled by a gateway that died before
// answering are answered by the next one: expired if their deadline passed, run
// otherwise.
func TestRecoveryAfterCrash(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	dir := t.TempDir()
	cfg := testConfig(t, b.URL(), dir)
	_, samples := fashionSamples(t)
	// What a crashed gateway leaves behind: a journal with two pending requests.
	now := time.Now()
	reply := protocol.ReplyTopic("sneakgate", "fashion", "cam-rec")
	journalPending(t, cfg.Store.Path,
		&store.Entry{Key: store.Key{App: "fashion", Device: "cam-rec", ID: "stale"}, Received: now.Add(-time.Minute),
			Deadline: now.Add(-30 * time.Second), ReplyTo: reply, Input: samples.Row(2)},
		&store.Entry{Key: store.Key{App: "fashion", Device: "cam-rec", ID: "fresh"}, Received: now,
			Deadline: now.Add(time.Minute), ReplyTo: reply, Input: samples.Row(3)})
	dev := newDevice(t, b.URL(), "cam-rec")
	gw := startGateway(t, cfg, Options{})
	got := dev.await([]string{"stale", "fresh"}, 30*time.Second)
	if r := got["stale"]; r.Status != protocol.StatusExpired {
		t.Errorf("stale: %+v", r)
	}
	if r := got["fresh"]; r.Status != protocol.StatusOK || int32(*r.Class) < 0 {
		t.Errorf("fresh: %+v", r)
	}
	// Both were completed in the journal once published: nothing is pending.
	gw.stop(t)
	j, err := store.Open(cfg.Store.Path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if p, err := j.Pending(); err != nil || len(p) != 0 {
		t.Errorf("pending after answers: %d, %v", len(p), err)
	}
}

// journalPending writes the journal at path holding entries, pending, as a
// gateway that died before answering them leaves it.
func journalPending(t *testing.T, path string, entries ...*store.Entry) {
	t.Helper()
	j, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, err := j.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDuplicatesAreNotRunTwice: a redelivered id is not run again; a duplicate of
// an answered request gets the same reply again.
func TestDuplicatesAreNotRunTwice(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	gw := startGateway(t, cfg, Options{})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-dup")
	dev.request("fashion", "cam-dup", "once", samples.Row(4), 5000)
	first := dev.await([]string{"once"}, 30*time.Second)["once"]
	dev.request("fashion", "cam-dup", "once", samples.Row(4), 5000)
	deadline := time.After(30 * time.Second)
	for dev.count("once") < 2 {
		select {
		case <-dev.arrived:
		case <-deadline:
			t.Fatal("no reply to the duplicate")
		}
	}
	dev.mu.Lock()
	raw := dev.raw["once"]
	dev.mu.Unlock()
	if raw[0] != raw[1] {
		t.Errorf("duplicate got a different reply:\n%s\n%s", raw[0], raw[1])
	}
	if got := testutil.ToFloat64(gw.g.m.received.WithLabelValues("fashion")); got != 1 {
		t.Errorf("requests run: %v, want 1", got)
	}
	if got := testutil.ToFloat64(gw.g.m.duplicates.WithLabelValues("done")); got != 1 {
		t.Errorf("duplicates{done} = %v, want 1", got)
	}
	_ = first
}

// leaveInOutbox journals e with rep in its outbox, as a gateway that died before
// the broker acknowledged rep leaves it (sent: it may have been handed to the
// broker; else it never was), and returns rep's bytes.
func leaveInOutbox(t *testing.T, j *store.Store, e *store.Entry, rep *protocol.Reply, sent bool) []byte {
	t.Helper()
	if _, err := j.Put(e); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	write := j.OutboxUnsent
	if sent {
		write = j.Outbox
	}
	if err := write(e.Key, b, e.Deadline); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOutboxFlushedAfterRestart: replies a gateway decided but could not hand to
// the broker wait in the journal's outbox and are published, in deadline order,
// by the next gateway.
func TestOutboxFlushedAfterRestart(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	cfg := testConfig(t, b.URL(), t.TempDir())
	_, samples := fashionSamples(t)
	j, err := store.Open(cfg.Store.Path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	topic := protocol.ReplyTopic("sneakgate", "fashion", "cam-out")
	for i, id := range []string{"later", "sooner"} {
		k := store.Key{App: "fashion", Device: "cam-out", ID: id}
		dl := now.Add(time.Duration(2-i) * time.Minute)
		leaveInOutbox(t, j, &store.Entry{Key: k, Received: now, Deadline: dl, ReplyTo: topic, Input: samples.Row(i)},
			&protocol.Reply{V: 1, ID: id, App: "fashion", Device: "cam-out", Status: protocol.StatusOK,
				Class: protocol.Ptr(3), Label: "dress", Model: "cnn"}, true)
	}
	j.Close()
	dev := newDevice(t, b.URL(), "cam-out")
	gw := startGateway(t, cfg, Options{})
	got := dev.await([]string{"later", "sooner"}, 30*time.Second)
	for id, r := range got {
		if r.Status != protocol.StatusOK || r.Label != "dress" {
			t.Errorf("%s: %+v", id, r)
		}
	}
	dev.mu.Lock()
	if a, b := dev.order[0], dev.order[1]; a != "sooner" || b != "later" {
		t.Errorf("flushed in order %s, %s; want the earlier deadline first", a, b)
	}
	dev.mu.Unlock()
	gw.stop(t)
	j, err = store.Open(cfg.Store.Path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if o, err := j.OutboxEntries(); err != nil || len(o) != 0 {
		t.Errorf("outbox after flush: %d entries, %v", len(o), err)
	}
}

// TestServesAcrossBrokerRestart: the gateway reconnects to a restarted broker,
// resumes its session and keeps serving.
func TestServesAcrossBrokerRestart(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Persistence: true, Shipped: true})
	cfg := testConfig(t, b.URL(), t.TempDir())
	startGateway(t, cfg, Options{})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-restart")
	dev.request("fashion", "cam-restart", "before", samples.Row(5), 5000)
	dev.await([]string{"before"}, 30*time.Second)
	dev.c.Disconnect(100)
	b.Stop()
	b.Start()
	dev = newDevice(t, b.URL(), "cam-restart-2")
	dev.request("fashion", "cam-restart-2", "after", samples.Row(6), 30000)
	if r := dev.await([]string{"after"}, 60*time.Second)["after"]; r.Status != protocol.StatusOK {
		t.Errorf("after restart: %+v", r)
	}
}

// TestStatusAndStats: the gateway announces itself on the retained status topic,
// publishes periodic stats, and says goodbye when it stops.
func TestStatusAndStats(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.MQTT.StatsInterval = 50 * time.Millisecond
	// edf runs the default variant, the estimate monitor's reference, so the one
	// answer is observed (sneakpeek may choose another variant).
	cfg.Scheduler.Policy = "edf"
	gw := startGateway(t, cfg, Options{})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-stats")
	dev.request("fashion", "cam-stats", "s1", samples.Row(7), 5000)
	dev.await([]string{"s1"}, 30*time.Second)

	msgs := make(chan mqtt.Message, 100)
	opts := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("operator")
	op := mqtt.NewClient(opts)
	if tok := op.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer op.Disconnect(100)
	op.Subscribe("sneakgate/status", 1, func(_ mqtt.Client, m mqtt.Message) { msgs <- m }).WaitTimeout(10 * time.Second)
	op.Subscribe("sneakgate/stats", 0, func(_ mqtt.Client, m mqtt.Message) { msgs <- m }).WaitTimeout(10 * time.Second)
	var status protocol.GatewayStatus
	var stats protocol.Stats
	// Every status and stats message as published validates against its schema.
	statusSchema, statsSchema := compileSchema(t, statusSchemaPath), compileSchema(t, statsSchemaPath)
	timeout := time.After(30 * time.Second)
	for status.State == "" || stats.V == 0 {
		select {
		case m := <-msgs:
			switch m.Topic() {
			case "sneakgate/status":
				if !m.Retained() {
					t.Errorf("status not retained")
				}
				checkSchema(t, statusSchema, statusSchemaPath, m.Payload())
				json.Unmarshal(m.Payload(), &status)
			case "sneakgate/stats":
				checkSchema(t, statsSchema, statsSchemaPath, m.Payload())
				json.Unmarshal(m.Payload(), &stats)
				if a := stats.Apps["fashion"]; a == nil || a.Received < 1 || a.Replies[protocol.StatusOK] < 1 {
					stats.V = 0 // the reply's completion may not be counted yet
				}
			}
		case <-timeout:
			t.Fatalf("status %+v, stats %+v", status, stats)
		}
	}
	if status.State != protocol.StateOnline || status.Policy != "edf" || len(status.Apps) != 1 {
		t.Errorf("status %+v", status)
	}
	if a := stats.Apps["fashion"]; a.DeadlineMet == nil || *a.DeadlineMet != 1 || a.MeanEstAccuracy == nil ||
		a.Estimates == nil || a.Estimates.Observations != 1 {
		t.Errorf("stats %+v (estimates %+v)", a, a.Estimates)
	}
	gw.stop(t)
	for {
		select {
		case m := <-msgs:
			if m.Topic() == "sneakgate/status" {
				checkSchema(t, statusSchema, statusSchemaPath, m.Payload())
				json.Unmarshal(m.Payload(), &status)
				if status.State == protocol.StateOffline {
					if status.Reason != "shutdown" {
						t.Errorf("offline status %+v", status)
					}
					return
				}
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no offline status after shutdown")
		}
	}
}

// queueOfOne starts a broker and returns a configuration whose queue holds one
// request, held there for max_queue_delay by fixed-batch, and the clock for the
// gateway (Options.Now): while the test has it stopped, the hold does not run
// out, so a second request finds the queue full however long a loaded machine
// takes to deliver it (with the wall clock, a second request handled more than
// the 500 ms after the first was queued found it empty).
func queueOfOne(t *testing.T) (*mqtttest.Broker, *Config, *testClock) {
	t.Helper()
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.Admission.MaxQueue = 1
	cfg.Scheduler.Policy = "fixed-batch"
	cfg.Scheduler.MaxQueueDelay = 500 * time.Millisecond
	return b, cfg, &testClock{}
}

// testClock is a gateway clock (Options.Now) that a test can stop and move
// forward. Stopped, it reads the instant it stopped at: what the gateway times
// by it (fixed-batch's hold, counted from the request's Queued; readiness's
// second after a refusal) lasts until the test moves on, however slowly the
// machine runs the steps in between. Running, it reads the wall clock plus the
// time skipped. (The scheduling loop's timers still run on the wall clock: a
// stopped clock makes the loop wake, find the hold not over and sleep again.)
type testClock struct {
	mu      sync.Mutex
	skipped time.Duration
	stopped bool
	at      time.Time // the reading while stopped
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return c.at
	}
	return time.Now().Add(c.skipped)
}

// Stop stops the clock at its present reading.
func (c *testClock) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stopped {
		c.at, c.stopped = time.Now().Add(c.skipped), true
	}
}

// Start runs the clock again: it jumps forward by the wall time it was stopped.
func (c *testClock) Start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = false
}

// Skip moves the clock forward by d, stopped or running.
func (c *testClock) Skip(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.skipped += d
	c.at = c.at.Add(d)
}

// waitUntil waits until cond holds, failing the test after 30 s. It polls: it
// is for the gateway's state that no message announces, such as a copy of a
// request it ignores as a duplicate (no reply).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDuplicateWhileQueueFull: a re-sent request whose original still waits in a
// full queue is a duplicate, not an overload.
func TestDuplicateWhileQueueFull(t *testing.T) {
	b, cfg, clock := queueOfOne(t)
	gw := startGateway(t, cfg, Options{Now: clock.Now})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-full")
	clock.Stop() // the first copy stays queued until the second is handled
	dev.request("fashion", "cam-full", "a", samples.Row(1), 60000)
	dev.request("fashion", "cam-full", "a", samples.Row(1), 60000)
	// The second copy gets no reply of its own (unless refused): wait until the
	// gateway has counted it, as a duplicate or refused for overload.
	waitUntil(t, "the second copy of a handled", func() bool {
		return testutil.ToFloat64(gw.g.m.duplicates.WithLabelValues("pending")) > 0 || gw.g.loop.refused.Load() > 0
	})
	clock.Start()
	if r := dev.await([]string{"a"}, 30*time.Second)["a"]; r.Status != protocol.StatusOK {
		t.Fatalf("a: %+v", r)
	}
	gw.stop(t)
	if got := testutil.ToFloat64(gw.g.m.rejected.WithLabelValues(string(protocol.ReasonOverload))); got != 0 {
		t.Errorf("duplicate refused as overload %v times", got)
	}
	if got := testutil.ToFloat64(gw.g.m.duplicates.WithLabelValues("pending")); got != 1 {
		t.Errorf("duplicates{pending} = %v, want 1", got)
	}
}

// TestRepeatsAfterCrashNeverContradict: what a gateway that died between
// publishing and completing leaves in its outbox is published again byte for
// byte, even past its deadline, and a re-sent request gets the same bytes; a reply
// that never reached the broker is stamped at its publication instead, and one
// that can only go out after its deadline says expired (broker_unavailable).
func TestRepeatsAfterCrashNeverContradict(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	cfg := testConfig(t, b.URL(), t.TempDir())
	_, samples := fashionSamples(t)
	j, err := store.Open(cfg.Store.Path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	topic := protocol.ReplyTopic("sneakgate", "fashion", "cam-crash")
	first := map[string][]byte{}
	for _, c := range []struct {
		id       string
		deadline time.Time
		sent     bool
	}{
		{"delivered", now.Add(-time.Minute), true},
		{"unsent-stale", now.Add(-time.Minute), false},
		{"unsent-fresh", now.Add(time.Minute), false},
	} {
		k := store.Key{App: "fashion", Device: "cam-crash", ID: c.id}
		first[c.id] = leaveInOutbox(t, j, &store.Entry{Key: k, Received: now.Add(-2 * time.Minute), Deadline: c.deadline,
			ReplyTo: topic, Input: samples.Row(1)},
			&protocol.Reply{V: 1, ID: c.id, App: "fashion", Device: "cam-crash", Status: protocol.StatusOK,
				Class: protocol.Ptr(3), Label: "dress", Model: "cnn", DeadlineMet: protocol.Ptr(true), SlackMS: protocol.Ptr(5.0)}, c.sent)
	}
	j.Close()
	dev := newDevice(t, b.URL(), "cam-crash")
	startGateway(t, cfg, Options{})
	got := dev.await([]string{"delivered", "unsent-stale", "unsent-fresh"}, 30*time.Second)
	dev.mu.Lock()
	if raw := dev.raw["delivered"][0]; raw != string(first["delivered"]) {
		t.Errorf("a possibly delivered reply was changed:\n%s\n%s", raw, first["delivered"])
	}
	dev.mu.Unlock()
	if r := got["unsent-stale"]; r.Status != protocol.StatusExpired || r.Reason != protocol.ReasonBrokerUnavailable ||
		r.DeadlineMet == nil || *r.DeadlineMet || r.Class != nil {
		t.Errorf("unsent past its deadline: %+v", r)
	}
	if r := got["unsent-fresh"]; r.Status != protocol.StatusOK || r.DeadlineMet == nil || !*r.DeadlineMet || *r.SlackMS < 1000 {
		t.Errorf("unsent within its deadline: %+v", r)
	}
	// Re-sent requests get exactly what was published first.
	for _, id := range []string{"delivered", "unsent-stale"} {
		dev.request("fashion", "cam-crash", id, samples.Row(1), 60000)
	}
	dev.awaitIdenticalRepeats([]string{"delivered", "unsent-stale"}, 30*time.Second)
}

// TestReadiness: /readyz says ready only while the gateway is subscribed and not
// refusing work; an overload refusal makes it 503 with the reason for a second.
func TestReadiness(t *testing.T) {
	b, cfg, clock := queueOfOne(t)
	cfg.Admission.DegradeRefused = false // a bare refusal, with its retry hint
	gw := startGateway(t, cfg, Options{Now: clock.Now})
	probe := func() (int, string) {
		w := httptest.NewRecorder()
		gw.g.readyz(w, httptest.NewRequest("GET", "/readyz", nil))
		return w.Code, w.Body.String()
	}
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-ready")
	// Stopped, the clock keeps the admitted request queued, and the probes see
	// the refusal's second as it is when they read it, not cut short by
	// however long the machine takes to get to them.
	clock.Stop()
	dev.request("fashion", "cam-ready", "a", samples.Row(1), 60000)
	dev.request("fashion", "cam-ready", "b", samples.Row(2), 60000)
	if id, r := dev.awaitFirst([]string{"a", "b"}, 30*time.Second); r.Reason != protocol.ReasonOverload {
		t.Errorf("%s answered while the other was queued: %+v, want a refusal", id, r)
	}
	if code, body := probe(); code != http.StatusServiceUnavailable || !strings.Contains(body, "overloaded") {
		t.Errorf("readyz after a refusal: %d %q", code, body)
	}
	clock.Skip(2 * time.Second)
	if code, body := probe(); code != http.StatusOK {
		t.Errorf("readyz a while after the last refusal: %d %q", code, body)
	}
	clock.Start()
	got := dev.await([]string{"a", "b"}, 30*time.Second)
	refused := 0
	for id, r := range got {
		if r.Reason == protocol.ReasonOverload {
			refused++
			if r.RetryAfterMS == nil || *r.RetryAfterMS < 100 {
				t.Errorf("%s: refused without a retry hint: %+v", id, r)
			}
		} else if r.Status != protocol.StatusOK {
			t.Errorf("%s: %+v", id, r)
		}
	}
	if refused != 1 {
		t.Fatalf("%d of 2 requests refused with max_queue 1, want 1: %+v", refused, got)
	}
	gw.stop(t)
	if code, _ := probe(); code != http.StatusServiceUnavailable {
		t.Errorf("readyz after shutdown: %d", code)
	}
}

// TestRefusedAnsweredFromEstimate: with admission.degrade_refused (the default), a
// request refused for overload is answered from the application's SneakPeek
// estimate, like one the scheduler sheds, instead of getting a bare rejection.
func TestRefusedAnsweredFromEstimate(t *testing.T) {
	b, cfg, clock := queueOfOne(t)
	gw := startGateway(t, cfg, Options{Now: clock.Now})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-deg")
	clock.Stop() // the admitted request stays queued until the other is answered
	dev.request("fashion", "cam-deg", "a", samples.Row(1), 60000)
	dev.request("fashion", "cam-deg", "b", samples.Row(2), 60000)
	dev.awaitFirst([]string{"a", "b"}, 30*time.Second)
	clock.Start()
	got := dev.await([]string{"a", "b"}, 30*time.Second)
	var ok, degraded int
	for id, r := range got {
		switch r.Status {
		case protocol.StatusOK:
			ok++
		case protocol.StatusDegraded:
			degraded++
			if r.Reason != protocol.ReasonOverloadShed || r.Class == nil || r.Label == "" ||
				!strings.HasPrefix(r.Model, "sneakpeek-") || r.DeadlineMet == nil || !*r.DeadlineMet || r.Batch != 0 {
				t.Errorf("%s: refused request answered %+v, want a degraded answer from the estimate", id, r)
			}
		default:
			t.Errorf("%s: %+v", id, r)
		}
	}
	if ok != 1 || degraded != 1 {
		t.Fatalf("ok %d, degraded %d with max_queue 1, want 1 and 1: %+v", ok, degraded, got)
	}
	gw.stop(t)
	if n := testutil.ToFloat64(gw.g.m.refusedDeg.WithLabelValues("fashion")); n != 1 {
		t.Errorf("admission_degraded_total = %v, want 1", n)
	}
	if n := testutil.ToFloat64(gw.g.m.rejected.WithLabelValues(string(protocol.ReasonOverload))); n != 0 {
		t.Errorf("rejected{overload} = %v, want 0: the refused request was answered", n)
	}
}

// TestPriceShedAtAdmission: with admission.price_shed (the default), while the
// scheduler's latest gate sheds (scheduler.PriceGate, set by a sneakpeek
// decision that shed under overload), an arrival it sheds is answered from its
// estimate at admission, neither journaled nor queued; once a decision finds
// time free again, arrivals are served.
func TestPriceShedAtAdmission(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	if cfg.Scheduler.Policy != "sneakpeek" || !cfg.Admission.PriceShed {
		t.Fatalf("defaults: policy %q, price_shed %v", cfg.Scheduler.Policy, cfg.Admission.PriceShed)
	}
	gw := startGateway(t, cfg, Options{})
	_, samples := fashionSamples(t)

	// A real gate: a sneakpeek decision over a queue of the gateway's own
	// application that no variant could drain in time.
	app := gw.g.loop.apps["fashion"]
	now := time.Now()
	p := make([]float64, app.K)
	for i := range p {
		p[i] = 0.01
	}
	p[0] = 1 - 0.01*float64(app.K-1)
	var q []*scheduler.Request
	for i := range 5000 {
		q = append(q, scheduler.Prepare(app, uint64(i+1), now, now.Add(time.Millisecond), p, nil))
	}
	res := map[scheduler.VariantID]time.Time{}
	for _, v := range app.Variants {
		res[v.ID] = now
	}
	pol, err := scheduler.New("sneakpeek", cfg.SchedulerOptions())
	if err != nil {
		t.Fatal(err)
	}
	d := pol.Decide(&scheduler.Snapshot{Now: now, Queue: q, Apps: map[string]*scheduler.App{"fashion": app},
		Engine: scheduler.Engine{Resident: res}})
	if d.Gate == nil || !d.Gate.Active {
		t.Fatalf("an overloaded sneakpeek decision set no shedding gate: %+v", d.Gate)
	}
	// Made to shed every arrival with an estimate, for the test.
	all := *d.Gate
	all.At, all.Density = time.Now(), math.Inf(1)
	gw.g.loop.gate.Store(&all)

	dev := newDevice(t, b.URL(), "cam-gate")
	dev.request("fashion", "cam-gate", "shed", samples.Row(1), 60000)
	r := dev.await([]string{"shed"}, 30*time.Second)["shed"]
	if r.Status != protocol.StatusDegraded || r.Reason != protocol.ReasonOverloadShed || r.Class == nil ||
		!strings.HasPrefix(r.Model, "sneakpeek-") || r.Batch != 0 {
		t.Fatalf("shed at admission: %+v, want a degraded answer from the estimate", r)
	}
	// Not queued nor pending: the journal holds only its reply, for copies
	// (admission.journal_estimate_answers).
	if n, err := gw.g.journal.Lookup(store.Key{App: "fashion", Device: "cam-gate", ID: "shed"}); err != nil || n.Dup != store.DupDone {
		t.Errorf("a request shed at admission: the journal says %+v %v, want its reply (dup-done)", n, err)
	} else {
		dev.mu.Lock()
		if got := dev.raw["shed"][0]; string(n.Reply) != got {
			t.Errorf("the journal's reply to the shed request\n%s\nis not the one published\n%s", n.Reply, got)
		}
		dev.mu.Unlock()
	}
	if st := gw.g.journal.Stats(); st.Pending != 0 || st.Puts != 0 {
		t.Errorf("journal stats after a request shed at admission: %+v, want no Put and nothing pending", st)
	}

	gw.g.loop.gate.Store(&scheduler.PriceGate{At: time.Now()}) // time is free
	dev.request("fashion", "cam-gate", "served", samples.Row(2), 60000)
	if r := dev.await([]string{"served"}, 30*time.Second)["served"]; r.Status != protocol.StatusOK {
		t.Fatalf("served once the gate sheds nothing: %+v", r)
	}
	gw.stop(t)
	if n := testutil.ToFloat64(gw.g.m.admissionShed.WithLabelValues("fashion")); n != 1 {
		t.Errorf("admission_shed_total = %v, want 1", n)
	}
	if n := testutil.ToFloat64(gw.g.m.received.WithLabelValues("fashion")); n != 1 {
		t.Errorf("received = %v, want 1 (the shed request is not journaled)", n)
	}
}

// TestEndToEndDeadlines: with sent_at the deadline counts from the device's
// clock. A request that arrives after it is answered expired
// (expired_before_receipt), journaled, so a copy gets the same bytes; a copy of an
// answered request whose absolute deadline has since passed gets the first answer
// again, not a deadline_past rejection.
func TestEndToEndDeadlines(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	var skew atomic.Int64 // the test moves the gateway's clock forward
	gw := startGateway(t, cfg, Options{Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-e2e")
	topic := protocol.RequestTopic("sneakgate", "fashion", "cam-e2e")
	late := (&protocol.Payload{ID: "late", DeadlineMS: 500, SentAt: time.Now().Add(-10 * time.Second), Input: samples.Row(1)}).Marshal()
	dev.publish(topic, late)
	r := dev.await([]string{"late"}, 30*time.Second)["late"]
	if r.Status != protocol.StatusExpired || r.Reason != protocol.ReasonExpiredBeforeReceipt || r.DeadlineMet == nil || *r.DeadlineMet {
		t.Errorf("request that arrived after its deadline: %+v", r)
	}
	// Its 10 s from sent_at to receipt are in the transit histogram.
	var h dto.Metric
	if err := gw.g.m.transit.WithLabelValues("fashion").(prometheus.Metric).Write(&h); err != nil ||
		h.GetHistogram().GetSampleCount() != 1 || h.GetHistogram().GetSampleSum() < 10 {
		t.Errorf("transit histogram: %v, %v", h.GetHistogram(), err)
	}
	absolute := (&protocol.Payload{ID: "abs", Deadline: time.Now().Add(1500 * time.Millisecond), Input: samples.Row(2)}).Marshal()
	dev.publish(topic, absolute)
	if r := dev.await([]string{"abs"}, 30*time.Second)["abs"]; r.Status != protocol.StatusOK {
		t.Fatalf("abs: %+v", r)
	}
	// Copies: one at once, one after the absolute deadline has passed.
	dev.publish(topic, late)
	for dev.count("late") < 2 { // before the clock moves
		select {
		case <-dev.arrived:
		case <-time.After(30 * time.Second):
			t.Fatal("no reply to the copy of late")
		}
	}
	skew.Store(int64(5 * time.Second))
	dev.publish(topic, absolute)
	dev.awaitIdenticalRepeats([]string{"late", "abs"}, 30*time.Second)
}

// TestJournalDamagedWhileRunningStops: a journal that turns out damaged while
// the gateway runs cannot be written any more; the gateway stops with an error
// (systemd restarts it and the start-up check recovers the file) instead of
// running on without a journal.
func TestJournalDamagedWhileRunningStops(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	cfg := testConfig(t, b.URL(), t.TempDir())
	gw := startGateway(t, cfg, Options{BeforeCommit: func(ops []store.Op) error {
		for _, op := range ops {
			if op.Kind == store.OpPut {
				return fmt.Errorf("%w: injected page fault", store.ErrDamaged)
			}
		}
		return nil
	}})
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-damaged")
	dev.request("fashion", "cam-damaged", "r", samples.Row(1), 60000)
	select {
	case err := <-gw.done:
		if !errors.Is(err, store.ErrDamaged) {
			t.Errorf("Run returned %v, want an error wrapping store.ErrDamaged", err)
		}
		gw.once.Do(gw.cancel) // stopped already: the cleanup has nothing to wait for
	case <-time.After(30 * time.Second):
		t.Fatal("the gateway kept running on a damaged journal")
	}
	// The request is left for redelivery, not refused: a Put that failed on a
	// broken journal may be in the file (a commit whose sync failed after its
	// meta page was written), and the next session would answer it again.
	if v := metricValue(t, gw.g.reg, "sneakgate_rejected_total", "reason", string(protocol.ReasonInternal)); v != 0 {
		t.Errorf("%v requests refused on a broken journal, want none (left for redelivery)", v)
	}
}
