package devices

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/protocol"
)

// responder is a fake gateway for tests: it parses every request with package
// protocol and answers class = answer(input), status ok, model "fake"; rejections
// get the protocol's rejected reply. It answers on its own goroutine, never on the
// network loop.
type responder struct {
	t      testing.TB
	pc     mqtt.Client
	env    protocol.Env
	answer func(in []float32) int
	delay  time.Duration
	// drop, if set, makes the responder ignore requests whose id it returns true for.
	// Set it (and status) before requests arrive.
	drop func(id string) bool
	// status, if set, gives the status of an answered request.
	status func(id string) protocol.Status
	// delayOf, if set, gives the delay of each request instead of delay.
	delayOf func(id string) time.Duration
	// noSlack leaves slack_ms out of the replies, as an older gateway would.
	noSlack bool

	work     chan mqtt.Message
	wg       sync.WaitGroup
	received atomic.Int64
}

func startResponder(t testing.TB, url string, apps map[string]protocol.AppSpec, answer func([]float32) int) *responder {
	t.Helper()
	r := &responder{t: t, answer: answer, work: make(chan mqtt.Message, 100000)}
	r.env = protocol.Env{App: func(a string) (protocol.AppSpec, bool) { s, ok := apps[a]; return s, ok }}
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID("fake-gateway").SetCleanSession(true)
	r.pc = mqtt.NewClient(o)
	if tok := r.pc.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("responder connect: %v", tok.Error())
	}
	tok := r.pc.Subscribe(protocol.RequestFilter(protocol.DefaultPrefix), 1, func(_ mqtt.Client, m mqtt.Message) {
		r.received.Add(1)
		r.work <- m // buffered: never blocks in tests
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("responder subscribe: %v", tok.Error())
	}
	done := make(chan struct{})
	r.wg.Add(1)
	go r.loop(done)
	t.Cleanup(func() {
		close(done)
		r.wg.Wait()
		r.pc.Disconnect(100)
	})
	return r
}

func (r *responder) loop(done chan struct{}) {
	defer r.wg.Done()
	for {
		select {
		case <-done:
			return
		case m := <-r.work:
			r.wg.Add(1)
			go func() { defer r.wg.Done(); r.serve(m) }()
		}
	}
}

func (r *responder) serve(m mqtt.Message) {
	start := time.Now()
	req, rej := protocol.ParseRequest(m.Topic(), m.Payload(), start, r.env)
	var topic string
	var reply *protocol.Reply
	if rej != nil {
		if rej.ReplyTo == "" {
			return
		}
		topic, reply = rej.ReplyTo, rej.Reply()
	} else {
		if r.drop != nil && r.drop(req.ID) {
			return
		}
		if r.delayOf != nil {
			time.Sleep(r.delayOf(req.ID))
		} else {
			time.Sleep(r.delay)
		}
		topic = req.ReplyTo
		status := protocol.StatusOK
		if r.status != nil {
			status = r.status(req.ID)
		}
		reply = req.NewReply(status)
		if status.Answered() {
			reply.Class, reply.Model, reply.Batch = protocol.Ptr(r.answer(req.Input)), "fake", 1
		}
		now := time.Now()
		reply.TotalMS = protocol.Millis(now.Sub(start))
		if !r.noSlack {
			reply.SlackMS = protocol.Millis(req.Deadline.Sub(now))
		}
		reply.DeadlineMet = protocol.Ptr(!now.After(req.Deadline))
	}
	b, err := json.Marshal(reply)
	if err != nil {
		r.t.Errorf("responder: %v", err)
		return
	}
	r.pc.Publish(topic, 1, false, b).WaitTimeout(5 * time.Second)
}
