package gateway

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// Broker is the embedded MQTT broker (mochi-mqtt), for a gateway that runs alone on
// an edge box. Without users it accepts every client, so the config allows that
// only on a loopback address; with users (mqtt.embedded.users_file) it accepts
// only those, by user name and password.
type Broker struct {
	srv  *mqtt.Server
	addr string
	hold *holdHook

	closeOnce sync.Once
	closeErr  error
}

// PacketOverhead is the room an MQTT packet gets beyond the largest payload the
// gateway accepts: a topic (MQTT allows up to 65,535 bytes), the packet id and MQTT
// 5 properties. configs/mosquitto.conf's max_packet_size is the default
// admission.max_payload_bytes plus this (a test checks it).
const PacketOverhead = 64 << 10

// MaxPacketSize is the largest MQTT packet a broker should read for the gateway
// with the given admission.max_payload_bytes. A payload a little over that limit
// still reaches the gateway, which answers it rejected/payload_too_large; a larger
// packet is refused by the broker before it reads it.
func MaxPacketSize(maxPayloadBytes int) uint32 {
	// MQTT's largest packet: one header byte and a remaining length of up to
	// 268,435,455 bytes; a limit at least this large limits nothing.
	const mqttMax = 1 + 268_435_455
	return uint32(min(int64(maxPayloadBytes)+PacketOverhead, mqttMax))
}

// loopbackAddr reports whether the host of the listen address addr is a
// loopback address or "localhost". An empty host (":1883") listens on every
// interface, and any other host name may resolve to one that is not loopback.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LoadUsersFile reads an embedded broker users file: one "user:password" a
// line (the password is everything after the first ':'); blank lines and lines
// starting with '#' are skipped. It refuses an empty user name or password, a
// user listed twice, and a file that lists no one.
func LoadUsersFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		user, pass, ok := strings.Cut(line, ":")
		switch {
		case !ok || user == "" || pass == "":
			return nil, fmt.Errorf("%s:%d: want user:password", path, n)
		case users[user] != "":
			return nil, fmt.Errorf("%s:%d: user %q listed twice", path, n, user)
		}
		users[user] = pass
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(users) == 0 {
		return nil, errors.New(path + ": lists no user")
	}
	return users, nil
}

// StartBroker listens on addr and serves MQTT until Close. A client that sends a
// packet larger than MaxPacketSize(maxPayloadBytes) is disconnected as soon as
// the packet's length is read, so a huge payload is never read into memory.
// (mochi-mqtt does not announce the limit to MQTT 5 clients at connect.)
// With users (name to password; LoadUsersFile) the broker accepts only those
// clients, each to every topic; with none, it accepts every client. With tc
// (EmbeddedTLS), the listener speaks TLS only, and with tc.ClientAuth set
// refuses a client without a certificate it verifies.
//
// A QoS 1 or 2 publish to a guarded subscription (the gateway's own client
// and request filter, as it subscribes) is acknowledged to its publisher only
// once that subscriber has acknowledged it (its journal holds it: a kill -9
// loses no request a device was told had arrived; broker_ack.go), and is never
// dropped: while that subscriber holds holdLimit unacknowledged, or has not
// subscribed yet, the publisher waits for it, unacknowledged (holdHook).
func StartBroker(addr string, maxPayloadBytes int, users map[string]string, tc *tls.Config, log zerolog.Logger, guarded ...Guard) (*Broker, error) {
	return startBroker(addr, maxPayloadBytes, users, tc, log, guarded, brokerTuning{})
}

// Guard names a subscription the embedded broker holds publishers for instead
// of dropping its messages: the subscribing client's id (the gateway's
// mqtt.client_id) and its filter as subscribed ("$share/{group}/..." for a
// shared group). Other clients' subscriptions to the same filter, a monitor's
// for instance, are not guarded: one that stops acknowledging loses its own
// copies, as before, and holds no device.
type Guard struct{ Client, Filter string }

// brokerTuning is what tests change: mochi's in-flight limit (0: its default,
// 8,192), a function called each time the broker holds a publish, one called
// each time it lets a held publish through, and one called each time its
// listener has accepted a connection (before the connection's first read).
type brokerTuning struct {
	maxInflight    uint16
	onHold, onWake func()
	onAccept       func()
	onTakeoverWait func()        // takeoverHook.onWait
	connectTimeout time.Duration // 0: brokerConnectTimeout
	writeTimeout   time.Duration // 0: brokerWriteTimeout
}

// brokerConnectTimeout is how long the embedded broker waits for a new
// connection's CONNECT (and, over TLS, its handshake) before closing it. mochi
// reads the CONNECT without a deadline, so a client that opens a connection
// and sends nothing held a socket and two goroutines for as long as it stayed:
// anyone who can reach the port could pile them up. Once the CONNECT is read,
// mochi sets the connection's deadline from the client's keepalive (none for a
// keepalive of 0), replacing this one. 10 s as HiveMQ's default for a
// connection that has not sent its CONNECT.
const brokerConnectTimeout = 10 * time.Second

// brokerListener is the embedded broker's listener (mochi's listeners.Listener)
// in place of mochi's TCP listener, which Close can leave waiting for good:
// mochi closes the clients it has registered and then waits for every
// connection's goroutine, including one that has not sent its CONNECT yet (no
// deadline: a client mid-connect, a TLS handshake not finished) or that
// registers just after; and that goroutine counts itself in (mochi's
// ClientsWg.Add) only once it runs, so the wait can also miss it. This one
// remembers every connection it accepted until its goroutine ends, closes
// those that are left once mochi has closed its clients, and waits for their
// goroutines itself. It hands mochi each connection as a brokerConn, which
// bounds writes (brokerWriteTimeout; at Close, brokerCloseWriteTimeout).
type brokerListener struct {
	id       string
	ln       net.Listener // TCP; connections are closed as TCP, not TLS
	tc       *tls.Config  // nil: plain MQTT
	log      *slog.Logger
	onAccept func()
	// disconnect, if set, replaces mochi's closeClients (disconnectAll).
	disconnect func(listener string)
	connect    time.Duration // the CONNECT's deadline (brokerConnectTimeout)
	write      time.Duration // brokerConn's timeout (brokerWriteTimeout)

	mu     sync.Mutex
	closed bool
	conns  map[*brokerConn]struct{} // accepted, their goroutine not ended
	wg     sync.WaitGroup           // the connections' goroutines
}

func newBrokerListener(id string, ln net.Listener, tc *tls.Config) *brokerListener {
	return &brokerListener{id: id, ln: ln, tc: tc, connect: brokerConnectTimeout, write: brokerWriteTimeout,
		conns: map[*brokerConn]struct{}{}}
}

func (l *brokerListener) ID() string       { return l.id }
func (l *brokerListener) Address() string  { return l.ln.Addr().String() }
func (l *brokerListener) Protocol() string { return l.ln.Addr().Network() }

// Init takes mochi's logger; the listener is already listening.
func (l *brokerListener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

// Serve accepts connections until Close and hands each to mochi (establish)
// on its own goroutine, over TLS with tc, with l.connect to send its CONNECT.
func (l *brokerListener) Serve(establish listeners.EstablishFn) {
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			return // closed (mochi's TCP listener also stops at any error)
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			raw.Close()
			return
		}
		bc := newBrokerConn(raw, l)
		l.conns[bc] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		if l.onAccept != nil {
			l.onAccept()
		}
		go func() {
			defer l.wg.Done()
			// mochi replaces the deadline once it has read the CONNECT.
			_ = bc.SetDeadline(time.Now().Add(l.connect))
			var c net.Conn = bc
			if l.tc != nil {
				c = tls.Server(bc, l.tc)
			}
			if err := establish(l.id, c); err != nil {
				l.log.Warn("", "error", err) // as mochi's TCP listener logs it
			}
			raw.Close()
			l.mu.Lock()
			delete(l.conns, bc)
			l.mu.Unlock()
			bc.settle()
			close(bc.done)
		}()
	}
}

// Close stops accepting, gives every write brokerCloseWriteTimeout, lets mochi
// close its clients (closeClients writes each a DISCONNECT), closes every
// connection still open and waits until each connection's goroutine has ended.
func (l *brokerListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	by := time.Now().Add(brokerCloseWriteTimeout)
	for c := range l.conns {
		c.closing(by)
	}
	l.mu.Unlock()
	if l.disconnect != nil {
		closeClients = l.disconnect
	}
	closeClients(l.id)
	l.ln.Close()
	l.mu.Lock()
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

func startBroker(addr string, maxPayloadBytes int, users map[string]string, tc *tls.Config, log zerolog.Logger, guarded []Guard, tune brokerTuning) (*Broker, error) {
	// Fail early, with the address in the error, when the port is taken. The
	// broker serves on this listener (brokerListener): nothing can take the
	// port between this check and mochi's start.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	bl := newBrokerListener("tcp", ln, tc)
	bl.onAccept = tune.onAccept
	if tune.connectTimeout > 0 {
		bl.connect = tune.connectTimeout
	}
	if tune.writeTimeout > 0 {
		bl.write = tune.writeTimeout
	}
	started := false
	defer func() {
		if !started {
			ln.Close()
		}
	}()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = MaxPacketSize(maxPayloadBytes)
	if tune.maxInflight > 0 {
		caps.MaximumInflight = tune.maxInflight
	}
	// A subscriber's pending writes hold its unwritten QoS 1 messages (at most
	// its in-flight ones) and its QoS 0 ones: room for 1,024 of those beyond a
	// full in-flight store, so that QoS 0 traffic does not crowd out QoS 1.
	caps.MaximumClientWritesPending = int32(caps.MaximumInflight) + 1024
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: false,
		// Sampled (rejectSampler): mochi warns once for every connection that
		// fails before it is a client, and for every packet it refuses.
		Logger: slog.New(zerologHandler{log.Sample(rejectSampler())}),
	})
	bl.disconnect = func(listener string) { disconnectAll(srv, listener) }
	if len(users) == 0 {
		if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
	} else {
		// Listed users are checked first (name and password must match); with
		// no Auth rules, everyone else (anonymous included) is refused. The
		// one ACL rule without filters lets an accepted client use any topic.
		ledger := &auth.Ledger{Users: auth.Users{}, Auth: auth.AuthRules{}, ACL: auth.ACLRules{{}}}
		for u, p := range users {
			ledger.Users[u] = auth.UserRule{Username: auth.RString(u), Password: auth.RString(p)}
		}
		if err := srv.AddHook(new(auth.Hook), &auth.Options{Ledger: ledger}); err != nil {
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
	}
	wt := &writeTimeoutHook{exempt: map[string]bool{}}
	for _, g := range guarded {
		wt.exempt[g.Client] = true
	}
	if err := srv.AddHook(wt, nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.AddHook(&takeoverHook{srv: srv, onWait: tune.onTakeoverWait}, nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	hold := newHoldHook(srv, guarded, holdLimit(caps.MaximumInflight), log)
	hold.onHold, hold.onWake = tune.onHold, tune.onWake
	if err := srv.AddHook(hold, nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.AddListener(bl); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	started = true
	var guardedNames []string
	for _, g := range guarded {
		guardedNames = append(guardedNames, g.Client+" "+g.Filter)
	}
	log.Info().Str("listen", addr).Int("users", len(users)).Bool("tls", tc != nil).
		Bool("client_certificates", tc != nil && tc.ClientAuth == tls.RequireAndVerifyClientCert).
		Uint32("max_packet_bytes", caps.MaximumPacketSize).Strs("guarded", guardedNames).Int("hold_limit", hold.limit).
		Msg("embedded MQTT broker started")
	return &Broker{srv: srv, addr: addr, hold: hold}, nil
}

// disconnectAll does what mochi's closeListenerClients does at Close (a
// DISCONNECT to every client of the listener, and its connection stopped)
// without its deadlock: that lists the clients under a read lock of the
// clients' map and, inside it, takes the read lock again (Clients.Len in
// Clients.GetByListener), so a connection ending at that moment, which waits
// for the write lock to remove its client, blocked the second read lock and
// itself behind the first: Close never returned (seen once under -race, in
// TestEmbeddedBrokerStuckClientReconnects, whose old connection ends while
// the broker closes).
func disconnectAll(srv *mqtt.Server, listener string) {
	for _, cl := range srv.Clients.GetAll() {
		if cl.Net.Listener == listener && !cl.Closed() {
			_ = srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// Dropped is how many messages the broker has dropped instead of delivering
// them to a subscriber, after acknowledging them to their publisher: beyond a
// client's in-flight store (8,192) or its pending writes (9,216). A guarded
// subscription's QoS 1 messages are held instead (Held); the rest (replies to a
// device that acknowledges none, QoS 0 messages) are not (docs/deployment.md,
// "The embedded broker").
func (b *Broker) Dropped() int64 {
	return atomic.LoadInt64(&b.srv.Info.InflightDropped) + atomic.LoadInt64(&b.srv.Info.MessagesDropped)
}

// Held is how many publishes the broker has held, unacknowledged, because a
// guarded subscriber had no room (each counted once, however long it waited).
func (b *Broker) Held() int64 { return b.hold.held.Load() }

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.addr }

// Close stops the broker and disconnects its clients, closing every connection,
// one that has not finished connecting included (brokerListener); a client that
// does not read holds it up for at most brokerCloseWriteTimeout. Held publishes
// are neither acknowledged nor delivered.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.hold.stop()
		b.closeErr = b.srv.Close()
		b.hold.writers.Wait()
		b.hold.logAcks()
	})
	return b.closeErr
}

// The embedded broker never drops a request it has acknowledged. mochi-mqtt
// acknowledges a QoS 1 publish to its publisher before it hands the message to
// the subscribers, and drops the message for a subscriber that already holds
// Capabilities.MaximumInflight (8,192) unacknowledged: under an overload that
// outlasts the gateway's window, requests would be lost after their devices were
// told they had arrived. holdHook runs before the acknowledgement (mochi's
// OnPublish): a QoS 1 or 2 publish that would go to a guarded subscription (the
// gateway's request filter) whose subscriber is at holdLimit waits there, in the
// publisher's read loop, until the subscriber acknowledges some. The publisher is
// then not read from, and gets no PUBACK, until the gateway has room: flow
// control back to the device over TCP, as with a gateway that stops reading,
// instead of a loss. Memory stays bounded: mochi reads nothing more from a held
// publisher.
//
// Held publishes wait in first-come order, one queue per set of guarded
// subscribers they go to. Whatever frees room (a subscriber's acknowledgement, a
// passed publish handed over) lets the queues' heads through while there is room,
// reserving it for them, and wakes only those: one wake-up per held publish, not
// one per held publish per acknowledgement. A publish that finds no queue takes
// room without the lock (reserved is counted before the in-flight store is read,
// so two publishes that check at once cannot both take the last place).
//
// A guarded subscriber with no session yet, or not subscribed (the gateway's
// client just after a start, before its SUBSCRIBE), has no room either: mochi
// would acknowledge the request and find no subscriber for it.
//
// A guarded client (a gateway) is never held, so no two clients can wait for
// each other: the gateway's replies, and its acknowledgements of requests,
// never wait for a device. A held publish gives up, unacknowledged and
// undelivered, when its publisher's connection is closed (a device that
// reconnects sends it again, as MQTT requires of an unacknowledged QoS 1
// publish) or when the broker closes.
//
// A publish let through is not acknowledged then either: the hook hands it to
// the subscribers itself and acknowledges it to its publisher once the guarded
// subscribers have (relay, broker_ack.go).
type holdHook struct {
	mqtt.HookBase
	srv *mqtt.Server
	// guard holds the guarded filters, each as subscribed ("$share/g/f" for a
	// shared group) and as matched against topics (f); filters holds them
	// split into levels for matching.
	guard   map[string]string
	filters []guardFilter
	// owners are the guarded clients: only their subscriptions to a guarded
	// filter hold publishers, and they are never held themselves; reserved
	// counts, per owner, the publishes let through and not yet handed over
	// (their messages may not be in its in-flight store yet). Both are fixed
	// at construction.
	owners   map[string]bool
	reserved map[string]*atomic.Int64
	limit    int
	log      zerolog.Logger
	// onHold, when set (tests), is called each time a publish starts to wait;
	// onWake each time a held publish is let through.
	onHold, onWake func()

	queued  atomic.Int64 // publishes in a queue (counted before their first check)
	held    atomic.Int64 // publishes that had to wait (total)
	holding atomic.Int64 // publishes waiting now
	logged  atomic.Int64 // when a hold was last logged (since stampBase, monotonic; 0: never)

	mu      sync.Mutex
	stopped bool
	queues  map[string]*waitQueue    // by targetKey, each first come first
	waiters map[*mqtt.Client]*waiter // the same waiters, by publisher

	acks // the devices' acknowledgements (broker_ack.go)
}

// guardFilter is a guarded filter: as subscribed (full), without its
// "$share/{group}/" prefix (filter), and that split at '/' (levels); owners are
// the clients it is guarded for (the members a shared one's group may have).
type guardFilter struct {
	full, filter string
	levels       []string
	shared       bool
	owners       []string
}

type passage struct {
	subs   []string          // the owners room was reserved at
	chosen map[string]string // shared group filter to member, or nil
}

// waiter is a held publish. ready is closed when it is let through (p set) or
// gives up (p nil); p is written under h.mu before.
type waiter struct {
	cl     *mqtt.Client
	plain  []string
	groups map[string][]string
	key    string
	ready  chan struct{}
	p      *passage
}

type waitQueue struct{ ws []*waiter }

// holdLimit is how many unacknowledged messages a guarded subscriber may hold:
// mochi's MaximumInflight less a margin for what reaches it without passing the
// hook (retained messages sent at subscribe, a resumed session's messages).
func holdLimit(maxInflight uint16) int { return max(1, int(maxInflight)-int(maxInflight)/16) }

func newHoldHook(srv *mqtt.Server, guard []Guard, limit int, log zerolog.Logger) *holdHook {
	h := &holdHook{srv: srv, guard: map[string]string{}, owners: map[string]bool{}, reserved: map[string]*atomic.Int64{},
		limit: limit, log: log, queues: map[string]*waitQueue{}, waiters: map[*mqtt.Client]*waiter{}}
	h.acks.setup(srv)
	for _, g := range guard {
		if _, ok := h.guard[g.Filter]; !ok {
			f := unshared(g.Filter)
			h.guard[g.Filter] = f
			h.filters = append(h.filters, guardFilter{full: g.Filter, filter: f, levels: strings.Split(f, "/"), shared: f != g.Filter})
		}
		for i := range h.filters {
			if f := &h.filters[i]; f.full == g.Filter && !slices.Contains(f.owners, g.Client) {
				f.owners = append(f.owners, g.Client)
			}
		}
		if !h.owners[g.Client] {
			h.owners[g.Client] = true
			h.acks.lastDelivery[g.Client] = new(atomic.Uint32)
			h.reserved[g.Client] = new(atomic.Int64)
		}
	}
	return h
}

// unshared is filter without a "$share/{group}/" prefix.
func unshared(filter string) string {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			return f
		}
	}
	return filter
}

// levelsMatch reports whether topic matches the filter split into levels.
func levelsMatch(levels []string, topic string) bool {
	rest, more := topic, true
	for _, l := range levels {
		if l == "#" {
			return true
		}
		if !more {
			return false
		}
		var t string
		t, rest, more = strings.Cut(rest, "/")
		if l != "+" && l != t {
			return false
		}
	}
	return !more
}

func (h *holdHook) ID() string { return "sneakgate-hold" }

func (h *holdHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnPacketRead, mqtt.OnPacketEncode, mqtt.OnPacketProcessed, mqtt.OnSelectSubscribers, mqtt.OnQosPublish,
		mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnPublishDropped, mqtt.OnDisconnect, mqtt.OnSessionEstablished,
		mqtt.OnSubscribed, mqtt.OnUnsubscribed:
		return true
	}
	return false
}

// subscribesGuarded reports whether cl is a guarded client with a guarded
// subscription at QoS 1 or 2.
func (h *holdHook) subscribesGuarded(cl *mqtt.Client) bool {
	if !h.owners[cl.ID] {
		return false
	}
	for _, f := range h.filters {
		if sub, ok := cl.State.Subscriptions.Get(f.full); ok && sub.Qos > 0 {
			return true
		}
	}
	return false
}

// targets are the guarded subscribers a publish to topic goes to: the owners of
// each plain guarded filter that matches (subscribed to it, or not yet: the
// gateway's client before it has subscribed, or while a reconnection takes its
// session over, has no room, so a request waits for it instead of finding no
// subscriber; an owner subscribed at QoS 0 is no target), and each guarded
// shared group's owners. Only a shared guard walks mochi's topic tree (a group
// with members from elsewhere is left to mochi).
func (h *holdHook) targets(topic, self string) (plain []string, groups map[string][]string) {
	var tree *mqtt.Subscribers
	for i := range h.filters {
		f := &h.filters[i]
		if !levelsMatch(f.levels, topic) {
			continue
		}
		if f.shared {
			if tree == nil {
				tree = h.srv.Topics.Subscribers(topic)
			}
			if ids := h.groupOwners(f, tree, self); len(ids) > 0 {
				if groups == nil {
					groups = map[string][]string{}
				}
				groups[f.full] = ids
			}
			continue
		}
		for _, id := range f.owners {
			if id == self || slices.Contains(plain, id) {
				continue
			}
			if cl, ok := h.srv.Clients.Get(id); ok && !cl.IsTakenOver() {
				if sub, ok := cl.State.Subscriptions.Get(f.full); ok && sub.Qos == 0 {
					continue
				}
			}
			plain = append(plain, id)
		}
	}
	return plain, groups
}

// groupOwners are the members a message to guarded shared filter f may go to
// (its owners but self, sorted), or nil when the group has a member from
// elsewhere: that group is left to mochi (holding for some members only would
// send it nothing).
func (h *holdHook) groupOwners(f *guardFilter, tree *mqtt.Subscribers, self string) []string {
	for id := range tree.Shared[f.full] {
		if !slices.Contains(f.owners, id) {
			return nil
		}
	}
	ids := make([]string, 0, len(f.owners))
	for _, id := range f.owners {
		if id != self {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// targetKey names a set of targets: held publishes with the same key wait in
// one queue.
func targetKey(plain []string, groups map[string][]string) string {
	var b strings.Builder
	for _, id := range slices.Sorted(slices.Values(plain)) {
		b.WriteString(id)
		b.WriteByte(0)
	}
	for _, f := range slices.Sorted(maps.Keys(groups)) {
		b.WriteByte(1)
		b.WriteString(f)
		for _, id := range groups[f] {
			b.WriteByte(0)
			b.WriteString(id)
		}
	}
	return b.String()
}

// member reports how many messages owner id holds or is about to as a member
// of shared filter, and whether its connection is up; ok is false when it is
// no member with room to take one (not subscribed to filter at QoS 1 or 2, or
// being taken over: its in-flight store is moving to the new connection,
// which the hook waits for, OnSessionEstablished releases).
func (h *holdHook) member(id, filter string) (n int, connected, ok bool) {
	cl, ok := h.srv.Clients.Get(id)
	if !ok || cl.IsTakenOver() {
		return 0, false, false
	}
	if sub, ok := cl.State.Subscriptions.Get(filter); !ok || sub.Qos == 0 {
		return 0, false, false
	}
	return cl.State.Inflight.Len() + int(h.reserved[id].Load()), !cl.Closed(), true
}

// reserve takes a place at owner id, or reports that it has none. The place
// is counted before the in-flight store is read: of two publishes that check
// at once for the last place, at most one gets it (both may fail; each that
// fails then checks again under h.mu, after giving its place back). An owner
// whose connection is closed and whose session is kept (the gateway's,
// reconnecting) has room: its messages wait in its session.
//
// An owner without a session or without a guarded subscription has none: a
// request waits (unacknowledged) until the gateway's client has subscribed,
// where mochi would acknowledge it and find no subscriber. An owner being
// taken over has none either: mochi clears the old connection's in-flight
// store (OnQosDropped for each message) after copying it to the new one and
// before registering the new one, so that store shrinking is no room.
func (h *holdHook) reserve(id string) bool {
	cl, ok := h.srv.Clients.Get(id)
	if !ok || cl.IsTakenOver() || !h.subscribesGuarded(cl) {
		return false
	}
	r := h.reserved[id].Add(1)
	if cl.State.Inflight.Len()+int(r) <= h.limit {
		return true
	}
	h.reserved[id].Add(-1)
	return false
}

func (h *holdHook) unreserve(ids []string) {
	for _, id := range ids {
		h.reserved[id].Add(-1)
	}
}

// admit reserves room at every plain target and at one member of each group,
// or reports that some target has none. A group's member is the connected one
// that holds least; one whose connection is closed only when none is connected.
func (h *holdHook) admit(plain []string, groups map[string][]string) (*passage, bool) {
	p := &passage{subs: make([]string, 0, len(plain)+len(groups))}
	for _, id := range plain {
		if !h.reserve(id) {
			h.unreserve(p.subs)
			return nil, false
		}
		p.subs = append(p.subs, id)
	}
	for filter, ids := range groups {
		id := h.reserveMember(filter, ids)
		if id == "" {
			h.unreserve(p.subs)
			return nil, false
		}
		p.subs = append(p.subs, id)
		if p.chosen == nil {
			p.chosen = map[string]string{}
		}
		p.chosen[filter] = id
	}
	return p, true
}

// reserveMember reserves room at the member of ids (subscribed to the shared
// filter) admit prefers that has some, and returns it ("" if none has).
func (h *holdHook) reserveMember(filter string, ids []string) string {
	var tried []string
	for {
		best, bestN, bestUp := "", 0, false
		for _, id := range ids {
			if slices.Contains(tried, id) {
				continue
			}
			n, up, ok := h.member(id, filter)
			if !ok || n >= h.limit {
				continue
			}
			if best == "" || (up && !bestUp) || (up == bestUp && n < bestN) {
				best, bestN, bestUp = id, n, up
			}
		}
		if best == "" || h.reserve(best) {
			return best
		}
		tried = append(tried, best)
	}
}

// OnPublish holds a QoS 1 or 2 publish to a guarded subscription whose
// subscriber has no room, before mochi acknowledges it, and then hands it to
// the subscribers itself and acknowledges it to its publisher only once every
// guarded subscriber has (relay, broker_ack.go). A publish the broker relays
// passes here again from the relay's inline client: its origin is put back.
func (h *holdHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return h.relayed(pk), nil
	}
	if pk.FixedHeader.Qos == 0 || h.owners[cl.ID] {
		return pk, nil
	}
	plain, groups := h.targets(pk.TopicName, cl.ID)
	if len(plain) == 0 && len(groups) == 0 {
		if h.acksPending(cl) {
			// Not a request, but after one that is not acknowledged yet:
			// acknowledged in its turn.
			return h.relay(cl, pk, nil, false)
		}
		return pk, nil
	}
	// Without held publishes, one that finds room passes without the lock
	// (one that arrives as the first is queued may pass it: they came at once).
	if h.queued.Load() == 0 {
		if p, ok := h.admit(plain, groups); ok {
			return h.relay(cl, pk, p, true)
		}
	}
	w := &waiter{cl: cl, plain: plain, groups: groups, key: targetKey(plain, groups), ready: make(chan struct{})}
	h.mu.Lock()
	if h.stopped || cl.Closed() {
		h.mu.Unlock()
		return pk, packets.ErrRejectPacket // neither acknowledged nor delivered
	}
	// Counted before the first check: whatever frees room after the check
	// then sees a waiter and lets it through (release).
	h.queued.Add(1)
	q := h.queues[w.key]
	if q == nil {
		q = new(waitQueue)
		h.queues[w.key] = q
	}
	q.ws = append(q.ws, w)
	h.waiters[cl] = w
	h.drainLocked()
	h.mu.Unlock()

	select {
	case <-w.ready:
		return h.passed(cl, pk, w)
	default:
	}
	// Most passages come from release; the tick checks again for what no hook
	// reports (a connection closed under a held read loop, room freed unseen).
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	h.held.Add(1)
	h.holding.Add(1)
	defer h.holding.Add(-1)
	h.logHold(cl.ID, pk.TopicName)
	if h.onHold != nil {
		h.onHold()
	}
	for {
		select {
		case <-w.ready:
			return h.passed(cl, pk, w)
		case <-tick.C:
			keepAlive(cl)
			h.mu.Lock()
			if h.stopped || cl.Closed() {
				h.cancelLocked(w)
			} else {
				h.drainLocked()
			}
			h.mu.Unlock()
		}
	}
}

// passed is OnPublish's end for a publish that was queued.
func (h *holdHook) passed(cl *mqtt.Client, pk packets.Packet, w *waiter) (packets.Packet, error) {
	if w.p == nil {
		return pk, packets.ErrRejectPacket // neither acknowledged nor delivered
	}
	return h.relay(cl, pk, w.p, true)
}

// drainLocked lets each queue's held publishes through, first come first, while
// their targets have room, and wakes those (and only those); a publisher whose
// connection is closed gives up. h.mu held.
func (h *holdHook) drainLocked() {
	for key, q := range h.queues {
		for len(q.ws) > 0 {
			w := q.ws[0]
			if w.cl.Closed() {
				h.cancelLocked(w)
				continue
			}
			p, ok := h.admit(w.plain, w.groups)
			if !ok {
				break
			}
			q.ws[0] = nil
			q.ws = q.ws[1:]
			delete(h.waiters, w.cl)
			h.queued.Add(-1)
			w.p = p
			if h.onWake != nil {
				h.onWake()
			}
			close(w.ready)
		}
		if len(q.ws) == 0 {
			delete(h.queues, key)
		}
	}
}

// cancelLocked takes w out of its queue, if it is still in one, and wakes it
// to give up. h.mu held.
func (h *holdHook) cancelLocked(w *waiter) {
	if h.waiters[w.cl] != w {
		return
	}
	delete(h.waiters, w.cl)
	q := h.queues[w.key]
	if i := slices.Index(q.ws, w); i >= 0 {
		q.ws = slices.Delete(q.ws, i, i+1)
	}
	if len(q.ws) == 0 {
		delete(h.queues, w.key)
	}
	h.queued.Add(-1)
	close(w.ready)
}

// release lets held publishes through if there may be room for them now.
func (h *holdHook) release() {
	if h.queued.Load() == 0 {
		return
	}
	h.mu.Lock()
	h.drainLocked()
	h.mu.Unlock()
}

// keepAlive renews cl's connection deadline as mochi's read loop does each
// time it reads a packet (1.5 x the keepalive; it covers writes too): a held
// publish blocks that loop, and without this a hold longer than the deadline
// would fail every write to the device (its replies) and close the connection.
// The device itself may still give up on a hold longer than its keepalive and
// ping timeout (no PINGRESP is read while held); it then sends the request
// again after reconnecting, as an unacknowledged QoS 1 publish.
func keepAlive(cl *mqtt.Client) {
	if ka := time.Duration(cl.State.Keepalive) * time.Second; ka > 0 && cl.Net.Conn != nil {
		_ = cl.Net.Conn.SetDeadline(time.Now().Add(ka + ka/2 + time.Second))
	}
}

// logHold logs that publishers are held, at most once every 10 s.
func (h *holdHook) logHold(client, topic string) {
	now := int64(time.Since(stampBase))
	last := h.logged.Load()
	if last != 0 && now-last < int64(10*time.Second) || !h.logged.CompareAndSwap(last, now) {
		return
	}
	h.log.Warn().Str("client", client).Str("topic", topic).Int("limit", h.limit).Int64("holding", h.holding.Load()).
		Msg("the gateway's client has no room for requests (it holds its limit of unacknowledged messages, or has not subscribed yet): publishers wait, unacknowledged, until it has (held, not dropped)")
}

// OnSelectSubscribers gives each guarded shared group's message to the member
// admit reserved room at; the other groups get mochi's choice.
func (h *holdHook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	r := h.relayOf(pk.Connect.ClientIdentifier)
	if r == nil || r.chosen == nil {
		return subs
	}
	subs.SharedSelected = map[string]packets.Subscription{}
	for filter, members := range subs.Shared {
		id, sub, ok := r.chosen[filter], packets.Subscription{}, false
		if id != "" {
			sub, ok = members[id]
		}
		if !ok {
			for id, sub = range members { // mochi's SelectShared: any member
				break
			}
		}
		if cur, ok := subs.SharedSelected[id]; ok {
			sub = cur.Merge(sub)
		}
		subs.SharedSelected[id] = sub
	}
	return subs
}

// OnQosComplete and OnQosDropped: an owner's in-flight store shrank (mochi
// calls them after the delete), unless it shrank because the owner's session
// is being taken over (its messages went to the new connection). A message
// dropped from an owner's store (its session ended; not a takeover) will not
// be acknowledged: its publisher is not either (broker_ack.go).
func (h *holdHook) OnQosComplete(cl *mqtt.Client, _ packets.Packet) {
	if h.owners[cl.ID] && !cl.IsTakenOver() {
		h.release()
	}
}

func (h *holdHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if h.owners[cl.ID] && !cl.IsTakenOver() {
		if pk.FixedHeader.Type != packets.Pubrel { // not the owner's own QoS 2 publish
			h.ownerAcked(cl.ID, pk.PacketID, false)
		}
		h.release()
	}
}

// OnDisconnect: a held publisher gives up at once; an owner's going may make
// room (a session that is not kept); the connection's acknowledgements still
// owed are not written (its client sends those publishes again).
func (h *holdHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.connectionEnded(cl)
	if h.queued.Load() == 0 {
		return
	}
	h.mu.Lock()
	if w := h.waiters[cl]; w != nil {
		h.cancelLocked(w)
	}
	h.drainLocked()
	h.mu.Unlock()
}

func (h *holdHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if h.owners[cl.ID] {
		h.reconcile(cl)
	}
	h.release()
}

func (h *holdHook) OnSubscribed(*mqtt.Client, packets.Packet, []byte) { h.release() }
func (h *holdHook) OnUnsubscribed(*mqtt.Client, packets.Packet)       { h.release() }

// stop releases every held publish, unacknowledged and undelivered, and writes
// no acknowledgement from then on (Broker.Close calls it before mochi's Close,
// which waits for every client's read loop).
func (h *holdHook) stop() {
	h.mu.Lock()
	h.stopped = true
	for _, w := range h.waiters {
		h.cancelLocked(w)
	}
	h.mu.Unlock()
	h.stopWriters()
}
