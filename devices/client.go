package devices

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/protocol"
)

// Errors returned by the Client.
var (
	// ErrIDInFlight is returned by Do when a Do with the same id is still waiting.
	ErrIDInFlight = errors.New("devices: id already in flight")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("devices: client closed")
	// ErrOptions is wrapped by Dial's validation errors.
	ErrOptions = errors.New("devices: invalid options")
	// ErrDropped is Undelivered.Err of a reply that found the Replies channel
	// full (Stats.Dropped).
	ErrDropped = errors.New("devices: reply dropped: Replies channel full")
	// ErrUnmatched is Undelivered.Err of a reply that no Do waited for, without
	// a Replies channel (Stats.Unmatched).
	ErrUnmatched = errors.New("devices: reply unmatched: no Do waiting and no Replies channel")
)

// ClientOptions configure a Client. Broker and Device are required.
type ClientOptions struct {
	// Broker is the broker URL, e.g. "tcp://127.0.0.1:1883".
	Broker string
	// Device is the device name, 1-64 of [A-Za-z0-9_.-].
	Device string
	// Prefix is the topic prefix; "" means protocol.DefaultPrefix.
	Prefix string
	// ClientID is the MQTT client id; "" means "sgdev-{device}-{random}".
	ClientID string
	// Username and Password authenticate to the broker, if it requires it.
	Username, Password string
	// Persistent asks the broker for a persistent session (clean session off),
	// so replies published while the device is disconnected are delivered when it
	// reconnects. It needs a stable ClientID.
	Persistent bool
	// B64 sends inputs as input_b64 instead of a JSON array.
	B64 bool
	// SentAt stamps each request with sent_at (this machine's clock, in
	// milliseconds), so that its deadline runs from the device's send rather
	// than the gateway's receipt: time queued in the broker then counts, and a
	// request that waited past its deadline is answered expired at once
	// instead of being served late. It needs clocks in step (NTP).
	SentAt bool
	// U8Range, if set, sends inputs as input_u8_b64 (one byte per value, a
	// quarter of input_b64), quantized to this range with protocol.QuantizeU8:
	// it must be the application's input_range. It overrides B64.
	U8Range *[2]float64
	// QoS0 publishes requests and subscribes to the replies at QoS 0 (at most
	// once) instead of QoS 1, for measuring what QoS 1 costs; a request or reply
	// lost on the way is then never answered.
	QoS0 bool
	// Pipeline is the capacity of the Replies channel; 0 disables it, and replies
	// no Do waits for are then dropped and counted as unmatched.
	Pipeline int
	// ConnectTimeout bounds Dial's connect and subscribe (default 10 s).
	ConnectTimeout time.Duration
	// OnUndelivered, if set, is called for each message on the reply topics
	// that the client counts in Stats instead of delivering it, after counting
	// it. It runs on the network loop: it must return quickly and must not call
	// the client's methods.
	OnUndelivered func(Undelivered)
}

// Received is a reply as it arrived.
type Received struct {
	Reply *protocol.Reply
	// Topic is the topic it arrived on.
	Topic string
	// At is when the client's network loop received it.
	At time.Time
}

// Undelivered is a message on the reply topics that the client received but
// could not deliver (ClientOptions.OnUndelivered).
type Undelivered struct {
	// ID is the reply's id, also for a malformed one whose JSON gives it; ""
	// when the message has no readable id.
	ID    string
	Topic string
	// At is when the client's network loop received it.
	At time.Time
	// Err says why: the protocol.ParseReply error of a malformed message
	// (wrapping protocol.ErrBadReply), ErrDropped or ErrUnmatched.
	Err error
}

// Stats counts replies the client could not deliver.
type Stats struct {
	// Unmatched replies had no waiting Do and no Replies channel.
	Unmatched int64
	// Dropped replies had no waiting Do and found the Replies channel full.
	Dropped int64
	// Malformed messages on the reply topic were not valid v1 replies.
	Malformed int64
}

// Client is one device's connection. It is safe for concurrent use.
type Client struct {
	pc      mqtt.Client
	prefix  string
	device  string
	b64     bool
	sentAt  bool
	u8      *[2]float64
	qos     byte
	replies chan Received
	lost    func(Undelivered) // ClientOptions.OnUndelivered; nil without one

	mu      sync.Mutex
	waiters map[string]chan Received
	closed  bool
	done    chan struct{} // closed by Close

	unmatched, dropped, malformed atomic.Int64
}

// Dial connects a device to the broker and subscribes (QoS 1; 0 with QoS0) to its
// reply topics {prefix}/res/+/{device}. The client reconnects and resubscribes by
// itself after a connection loss. It returns an error wrapping ErrOptions for
// invalid options, or the connect or subscribe error.
func Dial(ctx context.Context, o ClientOptions) (*Client, error) {
	if o.Broker == "" {
		return nil, fmt.Errorf("%w: Broker is required", ErrOptions)
	}
	if !protocol.ValidDevice(o.Device) {
		return nil, fmt.Errorf("%w: Device %q must be 1-64 of [A-Za-z0-9_.-]", ErrOptions, o.Device)
	}
	if o.Prefix == "" {
		o.Prefix = protocol.DefaultPrefix
	}
	if err := protocol.CheckPrefix(o.Prefix); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrOptions, err)
	}
	if o.Persistent && o.ClientID == "" {
		return nil, fmt.Errorf("%w: Persistent needs a stable ClientID", ErrOptions)
	}
	if o.ClientID == "" {
		var r [4]byte
		_, _ = rand.Read(r[:]) // crypto/rand.Read never fails
		o.ClientID = "sgdev-" + o.Device + "-" + hex.EncodeToString(r[:])
	}
	if r := o.U8Range; r != nil && !protocol.UsableU8Range(r) {
		return nil, fmt.Errorf("%w: U8Range %v must be finite with low below high", ErrOptions, *r)
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	c := &Client{prefix: o.Prefix, device: o.Device, b64: o.B64, sentAt: o.SentAt, u8: o.U8Range, qos: 1, lost: o.OnUndelivered, waiters: map[string]chan Received{}, done: make(chan struct{})}
	if o.QoS0 {
		c.qos = 0
	}
	if o.Pipeline > 0 {
		c.replies = make(chan Received, o.Pipeline)
	}
	subscribed := make(chan error, 1)
	filter := protocol.ReplyFilter(o.Prefix, o.Device)
	po := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(o.ClientID).
		SetUsername(o.Username).SetPassword(o.Password).
		SetCleanSession(!o.Persistent).SetAutoReconnect(true).
		SetConnectTimeout(o.ConnectTimeout).SetMaxReconnectInterval(2 * time.Second).
		SetKeepAlive(30 * time.Second)
	po.SetOnConnectHandler(func(pc mqtt.Client) {
		// Called on its own goroutine on every (re)connect: waiting here is fine.
		tok := pc.Subscribe(filter, c.qos, c.handle)
		var err error
		if !tok.WaitTimeout(o.ConnectTimeout) {
			err = fmt.Errorf("devices: subscribe %s: timed out", filter)
		} else if tok.Error() != nil {
			err = fmt.Errorf("devices: subscribe %s: %w", filter, tok.Error())
		}
		select {
		case subscribed <- err:
		default:
		}
	})
	c.pc = mqtt.NewClient(po)
	if err := wait(ctx, c.pc.Connect()); err != nil {
		c.pc.Disconnect(0)
		return nil, fmt.Errorf("devices: connect %s: %w", o.Broker, err)
	}
	select {
	case err := <-subscribed:
		if err != nil {
			c.pc.Disconnect(0)
			return nil, err
		}
	case <-ctx.Done():
		c.pc.Disconnect(0)
		return nil, ctx.Err()
	}
	return c, nil
}

// DialAll connects n devices at once, device i with options(i). If any fails, it
// closes the others and returns the errors joined.
func DialAll(ctx context.Context, n int, options func(i int) ClientOptions) ([]*Client, error) {
	clients := make([]*Client, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			clients[i], errs[i] = Dial(ctx, options(i))
		}()
	}
	wg.Wait()
	if err := joinDistinct(errs); err != nil {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
		return nil, err
	}
	return clients, nil
}

// joinDistinct joins the non-nil errs, each distinct message once, with how
// many devices failed with it: sixteen devices refused by a broker that is not
// running make one line, not sixteen. Each joined error wraps the first of its
// kind (errors.Is and As see it).
func joinDistinct(errs []error) error {
	var order []string
	first := map[string]error{}
	count := map[string]int{}
	for _, err := range errs {
		if err == nil {
			continue
		}
		m := err.Error()
		if count[m] == 0 {
			order = append(order, m)
			first[m] = err
		}
		count[m]++
	}
	out := make([]error, 0, len(order))
	for _, m := range order {
		if n := count[m]; n > 1 {
			out = append(out, fmt.Errorf("%w (%d devices)", first[m], n))
		} else {
			out = append(out, first[m])
		}
	}
	return errors.Join(out...)
}

// wait waits for a paho token or ctx.
func wait(ctx context.Context, tok mqtt.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// handle runs on paho's network loop: it must not block.
func (c *Client) handle(_ mqtt.Client, m mqtt.Message) {
	at := time.Now()
	r, err := protocol.ParseReply(m.Payload())
	if err != nil {
		c.malformed.Add(1)
		if c.lost != nil {
			// A reply this build cannot use may still say whose it is.
			var id struct {
				ID string `json:"id"`
			}
			_ = json.Unmarshal(m.Payload(), &id) // id.ID stays "" if it cannot
			c.lost(Undelivered{ID: id.ID, Topic: m.Topic(), At: at, Err: err})
		}
		return
	}
	rc := Received{Reply: r, Topic: m.Topic(), At: at}
	c.mu.Lock()
	w, ok := c.waiters[r.ID]
	if ok {
		delete(c.waiters, r.ID)
	}
	c.mu.Unlock()
	if ok {
		w <- rc // buffered, one reply per waiter
		return
	}
	if c.replies == nil {
		c.unmatched.Add(1)
		if c.lost != nil {
			c.lost(Undelivered{ID: r.ID, Topic: rc.Topic, At: at, Err: ErrUnmatched})
		}
		return
	}
	select {
	case c.replies <- rc:
	default:
		c.dropped.Add(1)
		if c.lost != nil {
			c.lost(Undelivered{ID: r.ID, Topic: rc.Topic, At: at, Err: ErrDropped})
		}
	}
}

// Device returns the device name.
func (c *Client) Device() string { return c.device }

// Replies returns the channel of replies that no Do waits for; nil unless
// ClientOptions.Pipeline > 0. It is never closed.
func (c *Client) Replies() <-chan Received { return c.replies }

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{Unmatched: c.unmatched.Load(), Dropped: c.dropped.Load(), Malformed: c.malformed.Load()}
}

// Do publishes a request to {prefix}/req/{app}/{device} and waits for the reply
// with the same id. deadline is the budget relative to the gateway's receipt,
// rounded up to a millisecond; 0 uses the application's default. It returns the
// reply whatever its status, ErrIDInFlight if a Do with the same id is waiting, or
// the publish error or ctx's error.
func (c *Client) Do(ctx context.Context, app, id string, input []float32, deadline time.Duration) (*protocol.Reply, error) {
	rc, err := c.DoReceived(ctx, app, id, input, deadline)
	if err != nil {
		return nil, err
	}
	return rc.Reply, nil
}

// DoReceived is Do returning the reply's topic and time of arrival too.
func (c *Client) DoReceived(ctx context.Context, app, id string, input []float32, deadline time.Duration) (Received, error) {
	w := make(chan Received, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return Received{}, ErrClosed
	}
	if _, dup := c.waiters[id]; dup {
		c.mu.Unlock()
		return Received{}, fmt.Errorf("%w: %q", ErrIDInFlight, id)
	}
	c.waiters[id] = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.waiters[id] == w {
			delete(c.waiters, id)
		}
		c.mu.Unlock()
	}()
	if err := c.Publish(ctx, app, id, input, deadline); err != nil {
		return Received{}, err
	}
	select {
	case rc := <-w:
		return rc, nil
	case <-ctx.Done():
		return Received{}, ctx.Err()
	case <-c.done:
		return Received{}, ErrClosed
	}
}

// Publish publishes a request at QoS 1 and returns when the broker acknowledged it
// (PUBACK; at QoS 0, with ClientOptions.QoS0, once it is written), or with the
// publish error, ctx's error or ErrClosed (Close while it waited). The reply arrives on Replies (if enabled).
// deadline is as for Do. Payloads are built with protocol.Payload, "id" first.
func (c *Client) Publish(ctx context.Context, app, id string, input []float32, deadline time.Duration) error {
	p := protocol.Payload{ID: id, DeadlineMS: protocol.DeadlineMS(deadline), Input: input, B64: c.b64}
	if c.sentAt {
		p.SentAt = time.Now()
	}
	if c.u8 != nil {
		p.Input, p.InputU8 = nil, protocol.QuantizeU8(input, c.u8[0], c.u8[1])
	}
	return c.PublishPayload(ctx, app, &p)
}

// PublishPayload publishes a prepared payload (for example with an absolute
// deadline or a reply_to) for app; otherwise as Publish.
func (c *Client) PublishPayload(ctx context.Context, app string, p *protocol.Payload) error {
	return c.PublishRaw(ctx, app, p.Marshal())
}

// PublishRaw publishes payload bytes as they are to this device's request topic
// for app, for tests of the gateway's handling of bad input.
func (c *Client) PublishRaw(ctx context.Context, app string, payload []byte) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return ErrClosed
	}
	tok := c.pc.Publish(protocol.RequestTopic(c.prefix, app, c.device), c.qos, false, payload)
	if err := wait(ctx, tok); err != nil {
		// Close fails a publish still waiting for its PUBACK (paho's
		// "connection lost before Publish completed"): that is ErrClosed.
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed && ctx.Err() == nil {
			return ErrClosed
		}
		return fmt.Errorf("devices: publish: %w", err)
	}
	return nil
}

// Close disconnects, waiting up to 250 ms for in-flight work. Waiting Do calls
// return ErrClosed.
func (c *Client) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	close(c.done)
	c.mu.Unlock()
	c.pc.Disconnect(250)
}
