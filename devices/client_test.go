package devices

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

var tinyApps = map[string]protocol.AppSpec{
	"tiny": {InputSize: 3, DefaultDeadline: time.Second, Range: &[2]float64{0, 100}},
}

func firstValue(in []float32) int { return int(in[0]) }

func dial(t *testing.T, url, device string, o ClientOptions) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o.Broker, o.Device = url, device
	c, err := Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestClientDo(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	startResponder(t, url, tinyApps, firstValue)
	for _, b64 := range []bool{false, true} {
		c := dial(t, url, fmt.Sprintf("dev-b64-%v", b64), ClientOptions{B64: b64})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		// Concurrent Do calls are each matched to their own reply.
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := c.Do(ctx, "tiny", fmt.Sprintf("req-%d", i), []float32{float32(i), 0, 0}, 500*time.Millisecond)
				if err != nil {
					t.Errorf("Do %d: %v", i, err)
					return
				}
				if r.Status != protocol.StatusOK || r.ID != fmt.Sprintf("req-%d", i) || *r.Class != i || r.App != "tiny" || r.Device != c.Device() || !*r.DeadlineMet {
					t.Errorf("Do %d: reply %+v", i, r)
				}
			}()
		}
		wg.Wait()
		cancel()
	}
}

func TestClientDoRejected(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	startResponder(t, url, tinyApps, firstValue)
	c := dial(t, url, "dev1", ClientOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tests := []struct {
		app    string
		input  []float32
		reason protocol.Reason
	}{
		{"tiny", []float32{1, 2}, protocol.ReasonBadInputSize},
		{"tiny", []float32{1, 2, 101}, protocol.ReasonInputOutOfRange},
		{"nope", []float32{1, 2, 3}, protocol.ReasonUnknownApp},
	}
	for i, tt := range tests {
		r, err := c.Do(ctx, tt.app, fmt.Sprint("bad-", i), tt.input, 0)
		if err != nil {
			t.Fatalf("%s: %v", tt.reason, err)
		}
		if r.Status != protocol.StatusRejected || r.Reason != tt.reason || r.Error == "" {
			t.Errorf("want rejected %s, got %+v", tt.reason, r)
		}
	}
	// A raw broken payload: the rejection still carries the id, read before the break.
	got := make(chan *protocol.Reply, 1)
	c2 := dial(t, url, "dev2", ClientOptions{Pipeline: 4})
	if err := c2.PublishRaw(ctx, "tiny", []byte(`{"id":"broken","input":[1,2`)); err != nil {
		t.Fatal(err)
	}
	go func() { got <- (<-c2.Replies()).Reply }()
	select {
	case r := <-got:
		if r.ID != "broken" || r.Reason != protocol.ReasonBadJSON {
			t.Errorf("got %+v", r)
		}
	case <-ctx.Done():
		t.Fatal("no reply to a broken payload")
	}
}

func TestClientPipelineAndErrors(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	resp := startResponder(t, url, tinyApps, firstValue)
	// dropped says which requests the responder ignored: one reaches it only
	// after its Do has registered to wait for the reply.
	dropped := make(chan string, 10)
	resp.drop = func(id string) bool {
		if id == "never" || id == "dup" || id == "closing" {
			dropped <- id
			return true
		}
		return false
	}
	c := dial(t, url, "pipe", ClientOptions{Pipeline: 100})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitDropped := func(id string) {
		t.Helper()
		for {
			select {
			case got := <-dropped:
				if got == id {
					return
				}
			case <-ctx.Done():
				t.Fatalf("%s never reached the responder", id)
			}
		}
	}
	for i := range 50 {
		if err := c.Publish(ctx, "tiny", fmt.Sprint(i), []float32{float32(i), 0, 0}, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for len(seen) < 50 {
		select {
		case rc := <-c.Replies():
			if seen[rc.Reply.ID] || rc.Topic != "sneakgate/res/tiny/pipe" || rc.At.IsZero() {
				t.Fatalf("bad or duplicate reply %+v", rc)
			}
			seen[rc.Reply.ID] = true
		case <-ctx.Done():
			t.Fatalf("got %d of 50 replies", len(seen))
		}
	}

	// No reply: Do ends with ctx.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := c.Do(short, "tiny", "never", []float32{1, 2, 3}, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Do without reply: %v", err)
	}

	// Same id twice in flight.
	slow, cancelSlow := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { _, err := c.Do(slow, "tiny", "dup", []float32{1, 2, 3}, 0); errc <- err }()
	waitDropped("dup") // the first Do waits for its reply
	if _, err := c.Do(ctx, "tiny", "dup", []float32{1, 2, 3}, 0); !errors.Is(err, ErrIDInFlight) {
		t.Errorf("second Do with same id: %v", err)
	}
	cancelSlow()
	<-errc

	// Close wakes a waiting Do.
	go func() { _, err := c.Do(ctx, "tiny", "closing", []float32{1, 2, 3}, 0); errc <- err }()
	waitDropped("closing") // Do waits for its reply (else it would find the client closed)
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("Do after Close: %v", err)
	}
	if err := c.Publish(ctx, "tiny", "x", []float32{1, 2, 3}, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close: %v", err)
	}
}

func TestDialOptions(t *testing.T) {
	ctx := context.Background()
	for _, o := range []ClientOptions{
		{Device: "d"},
		{Broker: "tcp://127.0.0.1:1", Device: "bad name"},
		{Broker: "tcp://127.0.0.1:1", Device: "d", Prefix: "a/+"},
		{Broker: "tcp://127.0.0.1:1", Device: "d", Persistent: true},
	} {
		if _, err := Dial(ctx, o); !errors.Is(err, ErrOptions) {
			t.Errorf("Dial(%+v) = %v, want ErrOptions", o, err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := Dial(short, ClientOptions{Broker: "tcp://127.0.0.1:1", Device: "d", ConnectTimeout: time.Second}); err == nil {
		t.Error("Dial to a closed port succeeded")
	}
}

// Devices that fail alike make one line of DialAll's error, with their count;
// the error still wraps what each failed with.
func TestDialAllJoinsLikeFailures(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := DialAll(ctx, 3, func(int) ClientOptions {
		return ClientOptions{Broker: "tcp://127.0.0.1:1", Device: "d", ConnectTimeout: time.Second}
	})
	if err == nil {
		t.Fatal("DialAll to a closed port succeeded")
	}
	if msg := err.Error(); strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "(3 devices)") {
		t.Errorf("error %q: want one line saying (3 devices)", msg)
	}
	_, err = DialAll(ctx, 2, func(i int) ClientOptions {
		if i == 0 {
			return ClientOptions{Broker: "tcp://127.0.0.1:1", Device: "bad name"}
		}
		return ClientOptions{Broker: "tcp://127.0.0.1:1", Device: "d", ConnectTimeout: time.Second}
	})
	if err == nil || !errors.Is(err, ErrOptions) || strings.Count(err.Error(), "\n") != 1 || strings.Contains(err.Error(), "devices)") {
		t.Errorf("two different failures: %v; want two lines, one wrapping ErrOptions", err)
	}
}

func TestClientSurvivesBrokerRestart(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	c := dial(t, b.URL(), "restart", ClientOptions{})
	b.Stop()
	b.Start()
	startResponder(t, b.URL(), tinyApps, firstValue)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// The client reconnects and resubscribes on its own; retry until it has.
	for i := 0; ; i++ {
		try, cancelTry := context.WithTimeout(ctx, 300*time.Millisecond)
		r, err := c.Do(try, "tiny", fmt.Sprint("after-restart-", i), []float32{7, 0, 0}, 0)
		cancelTry()
		if err == nil {
			if *r.Class != 7 {
				t.Fatalf("got %+v", r)
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("no reply after broker restart: %v", err)
		}
	}
}

// BenchmarkClientDo measures a device's round trip through a real Mosquitto and a
// fake gateway that answers at once (parse with package protocol, reply).
func BenchmarkClientDo(b *testing.B) {
	url := "tcp://" + mqtttest.StartMosquitto(b)
	startResponder(b, url, map[string]protocol.AppSpec{"fashion": {InputSize: 784, DefaultDeadline: time.Second}}, func([]float32) int { return 1 })
	in := make([]float32, 784)
	for _, b64 := range []bool{false, true} {
		b.Run(fmt.Sprintf("b64=%v", b64), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := Dial(ctx, ClientOptions{Broker: url, Device: fmt.Sprintf("bench-%v", b64), B64: b64})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			n := 0
			for b.Loop() {
				n++
				if _, err := c.Do(ctx, "fashion", fmt.Sprint(n), in, time.Second); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestClientSentAt: with SentAt, a request carries sent_at, the send time in
// Unix milliseconds, so that the gateway counts the deadline from the send.
func TestClientSentAt(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	got := make(chan []byte, 2)
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID("sent-at-watcher").SetCleanSession(true)
	w := mqtt.NewClient(o)
	if tok := w.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer w.Disconnect(100)
	if tok := w.Subscribe(protocol.RequestFilter(protocol.DefaultPrefix), 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Payload() }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, stamped := range []bool{true, false} {
		c := dial(t, url, fmt.Sprintf("dev-sent-at-%v", stamped), ClientOptions{SentAt: stamped})
		before := time.Now().UnixMilli()
		if err := c.Publish(ctx, "tiny", "r1", []float32{1, 2, 3}, 100*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		after := time.Now().UnixMilli()
		var p struct {
			SentAt *int64 `json:"sent_at"`
		}
		select {
		case b := <-got:
			if err := json.Unmarshal(b, &p); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
		case <-ctx.Done():
			t.Fatal("no request seen")
		}
		switch {
		case stamped && (p.SentAt == nil || *p.SentAt < before || *p.SentAt > after):
			t.Errorf("sent_at %v, want within [%d, %d]", p.SentAt, before, after)
		case !stamped && p.SentAt != nil:
			t.Errorf("sent_at %d without SentAt", *p.SentAt)
		}
	}
}

// Replies the client cannot deliver are counted in Stats and handed to
// OnUndelivered with their id where one can be read: a malformed reply (an
// unknown status, an unknown version, not JSON), a reply that finds the Replies
// buffer full, and one with nowhere to go (no Replies channel).
func TestClientReportsUndelivered(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("replier"))
	if tok := pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	send := func(device, payload string) {
		t.Helper()
		if tok := pub.Publish(protocol.ReplyTopic(protocol.DefaultPrefix, "tiny", device), 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	lost := make(chan Undelivered, 10)
	next := func() Undelivered {
		t.Helper()
		select {
		case u := <-lost:
			return u
		case <-time.After(10 * time.Second):
			t.Fatal("no OnUndelivered call")
			return Undelivered{}
		}
	}
	ok := func(id string) string {
		return fmt.Sprintf(`{"v":1,"id":%q,"app":"tiny","device":"d","status":"ok","class":1}`, id)
	}

	c := dial(t, url, "buffered", ClientOptions{Pipeline: 1, OnUndelivered: func(u Undelivered) { lost <- u }})
	send("buffered", ok("r1")) // fills the buffer: nobody reads Replies
	send("buffered", ok("r2"))
	send("buffered", `{"v":1,"id":"r3","app":"tiny","device":"d","status":"shed"}`)
	send("buffered", `{"v":2,"id":"r4","app":"tiny","device":"d","status":"ok"}`)
	send("buffered", `not json`)
	for _, want := range []struct {
		id  string
		err error
	}{{"r2", ErrDropped}, {"r3", protocol.ErrBadReply}, {"r4", protocol.ErrBadReply}, {"", protocol.ErrBadReply}} {
		u := next()
		if u.ID != want.id || !errors.Is(u.Err, want.err) || u.Topic != "sneakgate/res/tiny/buffered" || u.At.IsZero() {
			t.Errorf("undelivered %+v, want id %q, error %v", u, want.id, want.err)
		}
	}
	if st := c.Stats(); st != (Stats{Dropped: 1, Malformed: 3}) {
		t.Errorf("stats %+v, want 1 dropped and 3 malformed", st)
	}
	if rc := <-c.Replies(); rc.Reply.ID != "r1" {
		t.Errorf("buffered reply %q, want r1", rc.Reply.ID)
	}

	c = dial(t, url, "unbuffered", ClientOptions{OnUndelivered: func(u Undelivered) { lost <- u }})
	send("unbuffered", ok("r5"))
	if u := next(); u.ID != "r5" || !errors.Is(u.Err, ErrUnmatched) {
		t.Errorf("undelivered %+v, want r5 unmatched", u)
	}
	if st := c.Stats(); st != (Stats{Unmatched: 1}) {
		t.Errorf("stats %+v, want 1 unmatched", st)
	}
}
