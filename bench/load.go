package bench

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sneakgate/sneakgate/devices"
	"github.com/sneakgate/sneakgate/protocol"
)

// loader drives a closed-loop load: a fixed number of workers, spread over the
// devices' clients, each publishing a request and waiting until it completes (the
// subscriber receives it, or its reply arrives) before publishing the next. So
// exactly Concurrency requests are in flight, whatever the path's speed, and
// throughput is what the path sustains at that concurrency.
type loader struct {
	clients []*devices.Client
	app     string
	workers int
	timeout time.Duration // a request not completed by then is counted unanswered
	// bodies are request payloads with an empty id ({"id":"",...}); request seq
	// uses bodies[seq % len(bodies)] with its id spliced in.
	bodies [][]byte
	runID  string
	// scatter gives ids in no order (Config.ScatterIDs).
	scatter bool

	seq     atomic.Int64 // the last request's sequence number, across phases
	mu      sync.Mutex
	pending map[int64]*pending
	strays  int // completions of no pending request (late after a timeout, or a repeat)
}

// pending is one request in flight.
type pending struct {
	sent time.Time
	done chan struct{} // closed on completion
	ph   *phaseLoad
}

// phaseLoad is what one run of the load saw; guarded by loader.mu.
type phaseLoad struct {
	sent, completed, publishErrors, unanswered int
	elapsed                                    time.Duration
	latency                                    []time.Duration
	byStatus                                   map[protocol.Status]int
	byModel                                    map[string]int
	batchSum                                   int // sum of the replies' batch sizes
	// queued and inGateway are the replies' queue_ms and total_ms: from the
	// gateway's receipt to the batch's start, and to the reply's making.
	queued, inGateway []time.Duration
}

func newLoader(clients []*devices.Client, app string, workers int, timeout time.Duration, bodies [][]byte, runID string) *loader {
	return &loader{clients: clients, app: app, workers: workers, timeout: timeout, bodies: bodies, runID: runID,
		pending: map[int64]*pending{}}
}

// idPrefix is how every payload starts; the id follows it up to the next quote
// (protocol.Payload writes "id" first).
var idPrefix = []byte(`{"id":"`)

// payload returns request seq's payload: its body with id {runID}-{seq}.
func (l *loader) payload(seq int64) []byte {
	body := l.bodies[seq%int64(len(l.bodies))]
	id := l.id(seq)
	out := make([]byte, 0, len(body)+len(id))
	out = append(out, idPrefix...)
	out = append(out, id...)
	return append(out, body[len(idPrefix):]...)
}

// meanPayload returns the mean payload size in bytes, with a typical id.
func (l *loader) meanPayload() int {
	sum := 0
	for _, b := range l.bodies {
		sum += len(b)
	}
	return sum/len(l.bodies) + len(l.id(10000))
}

// id is request seq's id: {runID}-{seq}, or with scatter {runID}-{16 hex
// digits of a hash of seq}-{seq}, which sort in no order.
func (l *loader) id(seq int64) string {
	if l.scatter {
		return l.runID + "-" + fmt.Sprintf("%016x", mix64(uint64(seq))) + "-" + strconv.FormatInt(seq, 10)
	}
	return l.runID + "-" + strconv.FormatInt(seq, 10)
}

// mix64 is SplitMix64's finaliser: a bijection that scatters consecutive
// numbers.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// seqOf returns the sequence number of one of this run's ids, or false.
func (l *loader) seqOf(id string) (int64, bool) {
	if len(id) <= len(l.runID)+1 || id[:len(l.runID)] != l.runID || id[len(l.runID)] != '-' {
		return 0, false
	}
	rest := id[len(l.runID)+1:]
	if l.scatter {
		if len(rest) < 18 || rest[16] != '-' {
			return 0, false
		}
		rest = rest[17:]
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || (l.scatter && id != l.id(n)) {
		return 0, false
	}
	return n, true
}

// payloadID returns the id at the start of a request payload, or "".
func payloadID(p []byte) string {
	if !bytes.HasPrefix(p, idPrefix) {
		return ""
	}
	rest := p[len(idPrefix):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return ""
	}
	return string(rest[:end])
}

// run drives the load until count requests have been published (count > 0), or
// until stop is closed or ctx ends, and waits for the requests in flight. It
// returns what the phase saw; elapsed runs from the first publish to the last
// completion.
func (l *loader) run(ctx context.Context, count int, stop <-chan struct{}) *phaseLoad {
	ph := &phaseLoad{byStatus: map[protocol.Status]int{}, byModel: map[string]int{}}
	var issued atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range l.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.worker(ctx, l.clients[w%len(l.clients)], ph, func() bool {
				if count > 0 && issued.Add(1) > int64(count) {
					return false
				}
				select {
				case <-stop:
					return false
				case <-ctx.Done():
					return false
				default:
					return true
				}
			})
		}()
	}
	wg.Wait()
	l.mu.Lock()
	ph.elapsed = time.Since(start)
	l.mu.Unlock()
	return ph
}

// worker publishes one request at a time on c while more says so.
func (l *loader) worker(ctx context.Context, c *devices.Client, ph *phaseLoad, more func() bool) {
	timer := time.NewTimer(l.timeout)
	timer.Stop()
	for more() {
		seq := l.seq.Add(1)
		body := l.payload(seq)
		p := &pending{done: make(chan struct{}), ph: ph}
		l.mu.Lock()
		ph.sent++
		l.pending[seq] = p
		p.sent = time.Now()
		l.mu.Unlock()
		if err := c.PublishRaw(ctx, l.app, body); err != nil {
			l.mu.Lock()
			ph.publishErrors++
			delete(l.pending, seq)
			l.mu.Unlock()
			continue
		}
		timer.Reset(l.timeout)
		select {
		case <-p.done:
		case <-timer.C:
			l.mu.Lock()
			if _, ok := l.pending[seq]; ok {
				delete(l.pending, seq)
				ph.unanswered++
			}
			l.mu.Unlock()
		case <-ctx.Done():
			return
		}
		timer.Stop()
	}
}

// complete records the completion of request seq at time at; r is its reply (nil
// for the broker alone).
func (l *loader) complete(seq int64, at time.Time, r *protocol.Reply) {
	l.mu.Lock()
	p, ok := l.pending[seq]
	if !ok {
		l.strays++
		l.mu.Unlock()
		return
	}
	delete(l.pending, seq)
	ph := p.ph
	ph.completed++
	ph.latency = append(ph.latency, at.Sub(p.sent))
	if r != nil {
		ph.byStatus[r.Status]++
		if r.Model != "" {
			ph.byModel[r.Model]++
		}
		ph.batchSum += r.Batch
		if r.QueueMS != nil {
			ph.queued = append(ph.queued, time.Duration(*r.QueueMS*1e6))
		}
		if r.TotalMS != nil {
			ph.inGateway = append(ph.inGateway, time.Duration(*r.TotalMS*1e6))
		}
	}
	l.mu.Unlock()
	close(p.done)
}

// completeID completes the request with this id, if it is one of this run's.
func (l *loader) completeID(id string, at time.Time, r *protocol.Reply) {
	if seq, ok := l.seqOf(id); ok {
		l.complete(seq, at, r)
		return
	}
	l.mu.Lock()
	l.strays++
	l.mu.Unlock()
}

// collect completes requests from c's replies until stop is closed.
func (l *loader) collect(c *devices.Client, stop <-chan struct{}) {
	for {
		select {
		case rc := <-c.Replies():
			l.completeID(rc.Reply.ID, rc.At, rc.Reply)
		case <-stop:
			return
		}
	}
}
