package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mosquitto"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

// logTap is a log destination for a test: every line goes to the test's log
// and is kept; wait blocks until a line containing a text has been written.
type logTap struct {
	t     *testing.T
	mu    sync.Mutex
	buf   bytes.Buffer
	added chan struct{}
}

func newLogTap(t *testing.T) *logTap { return &logTap{t: t, added: make(chan struct{}, 1)} }

func (l *logTap) Write(p []byte) (int, error) {
	l.t.Logf("%s", bytes.TrimRight(p, "\n"))
	l.mu.Lock()
	l.buf.Write(p)
	l.mu.Unlock()
	select {
	case l.added <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (l *logTap) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wait returns once the log has a line containing text; it fails the test
// after timeout.
func (l *logTap) wait(text string, timeout time.Duration) {
	l.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !strings.Contains(l.String(), text) {
		select {
		case <-l.added:
		case <-deadline.C:
			l.t.Fatalf("no log line with %q within %s", text, timeout)
		}
	}
}

// metricValue reads one series (name, and labels given as name=value pairs) from reg.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, want ...string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			l := labels(m)
			for i := 0; i+1 < len(want); i += 2 {
				if l[want[i]] != want[i+1] {
					continue next
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, want)
	return 0
}

// get fetches url and returns the status code and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := mosquitto.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

// statusWatcher collects the retained status messages the gateway publishes,
// resubscribing after every reconnect.
func statusWatcher(t *testing.T, brokerURL string) <-chan protocol.GatewayStatus {
	t.Helper()
	ch := make(chan protocol.GatewayStatus, 64)
	schema := compileSchema(t, statusSchemaPath)
	opts := mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID("status-watcher").
		SetCleanSession(true).SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond)
	opts.SetOnConnectHandler(func(c mqtt.Client) {
		go c.Subscribe(protocol.StatusTopic("sneakgate"), 1, func(_ mqtt.Client, m mqtt.Message) {
			checkSchema(t, schema, statusSchemaPath, m.Payload())
			var s protocol.GatewayStatus
			if err := json.Unmarshal(m.Payload(), &s); err != nil {
				t.Errorf("status %s: %v", m.Payload(), err)
				return
			}
			ch <- s
		})
	})
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return ch
}

// awaitStatus returns the first status in state from ch.
func awaitStatus(t *testing.T, ch <-chan protocol.GatewayStatus, state string, timeout time.Duration) protocol.GatewayStatus {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case s := <-ch:
			if s.State == state {
				return s
			}
		case <-deadline.C:
			t.Fatalf("no status %q within %s", state, timeout)
		}
	}
}

// dynsecPlugin is Mosquitto's dynamic security plugin, which can refuse
// subscriptions (the ACL file of Mosquitto 2.0 only filters deliveries).
func dynsecPlugin(t *testing.T) string {
	t.Helper()
	m, _ := filepath.Glob("/usr/lib/*/mosquitto_dynamic_security.so")
	if len(m) == 0 {
		t.Fatal("mosquitto_dynamic_security.so not found (Debian's mosquitto package installs it)")
	}
	return m[0]
}

// TestSubscriptionRefused: a broker that refuses the gateway's subscription to
// requests leaves it connected but not ready: /readyz 503 with the reason, the
// retained status offline/subscribe_refused, an error log line naming the filter
// and the SUBACK code, and sneakgate_mqtt_subscribe_failures_total{reason="refused"}.
// Once the broker's ACL allows it, the gateway subscribes, is ready and online.
func TestSubscriptionRefused(t *testing.T) {
	dir := t.TempDir()
	// Anonymous clients may subscribe to the status only; the test may change the ACL.
	dynsec := filepath.Join(dir, "dynamic-security.json")
	if err := os.WriteFile(dynsec, []byte(`{"defaultACLAccess":{"publishClientSend":true,"publishClientReceive":true,"subscribe":false,"unsubscribe":true},
 "clients":[],"groups":[{"groupname":"anon","roles":[{"rolename":"anon"}]}],"anonymousGroup":"anon",
 "roles":[{"rolename":"anon","acls":[
   {"acltype":"subscribeLiteral","topic":"sneakgate/status","allow":true,"priority":0},
   {"acltype":"publishClientSend","topic":"$CONTROL/dynamic-security/#","allow":true,"priority":0}]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	b := mqtttest.Start(t, mqtttest.Options{Config: "plugin " + dynsecPlugin(t) + "\nplugin_opt_config_file " + dynsec})
	status := statusWatcher(t, b.URL())
	cfg := testConfig(t, b.URL(), dir)
	cfg.Metrics.Listen = freeAddr(t)
	tap := newLogTap(t)
	gw := runGateway(t, cfg, Options{Logger: zerolog.New(tap).Level(zerolog.InfoLevel)})

	// New returned after the first refusal.
	if !strings.Contains(tap.String(), "refused the subscription") || !strings.Contains(tap.String(), `"suback":"0x80"`) ||
		!strings.Contains(tap.String(), `"filter":"sneakgate/req/+/+"`) {
		t.Errorf("no error line naming the filter and the SUBACK code:\n%s", tap.String())
	}
	if code, body := get(t, "http://"+cfg.Metrics.Listen+"/readyz"); code != http.StatusServiceUnavailable ||
		!strings.Contains(body, "refused the subscription to sneakgate/req/+/+ (SUBACK 0x80)") {
		t.Errorf("readyz while refused: %d %q", code, body)
	}
	if s := awaitStatus(t, status, protocol.StateOffline, 10*time.Second); s.Reason != StatusSubscribeRefused {
		t.Errorf("status while refused: %+v", s)
	}
	reg := gw.g.reg
	if v := metricValue(t, reg, "sneakgate_mqtt_subscribe_failures_total", "reason", "refused"); v < 1 {
		t.Errorf("subscribe_failures_total{refused} = %v", v)
	}
	if c, s := metricValue(t, reg, "sneakgate_mqtt_connected"), metricValue(t, reg, "sneakgate_mqtt_subscribed"); c != 1 || s != 0 {
		t.Errorf("connected %v, subscribed %v while refused; want 1, 0", c, s)
	}

	// Allow it (Mosquitto disconnects the clients whose role changed; both reconnect).
	admin := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("admin"))
	if tok := admin.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("admin connect: %v", tok.Error())
	}
	grant := `{"commands":[{"command":"addRoleACL","rolename":"anon","acltype":"subscribePattern","topic":"sneakgate/req/#","allow":true}]}`
	if tok := admin.Publish("$CONTROL/dynamic-security/v1", 1, false, grant); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("grant: %v", tok.Error())
	}
	admin.Disconnect(100)
	awaitStatus(t, status, protocol.StateOnline, 30*time.Second)
	if code, body := get(t, "http://"+cfg.Metrics.Listen+"/readyz"); code != http.StatusOK {
		t.Errorf("readyz once subscribed: %d %q", code, body)
	}
	if s := metricValue(t, reg, "sneakgate_mqtt_subscribed"); s != 1 {
		t.Errorf("subscribed %v once granted", s)
	}
}

// TestBrokerDownAtStart: with no broker, every failed connection attempt is
// logged (rate-limited) with its error, /metrics, /healthz and /readyz answer
// before any connection, and cancelling New's context (SIGTERM) ends the wait
// for the broker at once.
func TestBrokerDownAtStart(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, "tcp://"+freeAddr(t), dir)
	cfg.Metrics.Listen = freeAddr(t)
	tap := newLogTap(t)
	ctx, cancel := context.WithCancel(context.Background())
	type made struct {
		g   *Gateway
		err error
	}
	newDone := make(chan made, 1)
	go func() {
		g, err := New(ctx, Options{Config: cfg, Logger: zerolog.New(tap).Level(zerolog.InfoLevel)})
		newDone <- made{g, err}
	}()
	tap.wait("connecting to the broker failed", 60*time.Second)
	if !strings.Contains(tap.String(), "connection refused") {
		t.Errorf("the failed attempt's log line has no error:\n%s", tap.String())
	}
	base := "http://" + cfg.Metrics.Listen
	code, body := get(t, base+"/metrics")
	for _, want := range []string{"sneakgate_mqtt_connected 0", "sneakgate_mqtt_subscribed 0",
		`sneakgate_build_info{go_version="go`, "sneakgate_mqtt_connect_failures_total ",
		"sneakgate_last_request_received_timestamp_seconds 0"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics before connecting: no %q (%d)", want, code)
		}
	}
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Errorf("/readyz before connecting: %d %q", code, body)
	}
	cancel() // SIGTERM
	m := <-newDone
	if m.err != nil {
		t.Fatalf("New: %v", m.err)
	}
	if strings.Contains(tap.String(), "not connected and subscribed yet") {
		t.Error("New waited out its timeout instead of ending with its context")
	}
	if err := m.g.Run(ctx); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestReadinessSaysWhy: /readyz names what the overloaded gateway did in the
// last second: refused requests, answered them from their estimate instead of
// queueing them, or left the MQTT client waiting for a request handler (which
// refuses nothing: the broker keeps the requests it has not sent). It used to
// say "refusing requests" for all three.
func TestReadinessSaysWhy(t *testing.T) {
	input := make([]float32, 784)
	const topic = "sneakgate/req/fashion/cam-1"
	payload := func(id string) []byte {
		return (&protocol.Payload{ID: id, DeadlineMS: 60000, SentAt: time.Now(), Input: input, B64: true}).Marshal()
	}
	const (
		refusing = "refusing requests"
		estimate = "answering requests from their estimate"
		waiting  = "the request handlers are behind"
	)
	for _, tc := range []struct {
		name           string
		degradeRefused bool
		act            func(g *Gateway)
		want           string
	}{
		{"refused", false, func(g *Gateway) {
			g.handle(arrival{msg: newFakeMessage(topic, payload("a")), at: g.now()})
		}, refusing},
		{"answered from the estimate", true, func(g *Gateway) {
			g.handle(arrival{msg: newFakeMessage(topic, payload("b")), at: g.now()})
		}, estimate},
		{"waiting for a handler", false, func(g *Gateway) {
			g.in <- arrival{} // the hand-off is full
			close(g.stopIngress)
			g.onMessage(nil, newFakeMessage(topic, payload("c"))) // waits, then gives up: stopping
		}, waiting},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := handlerGateway(t, &fakeClient{}, tc.degradeRefused)
			// A stopped clock: the one-second window is the gateway's, not the
			// test's, so a slow machine cannot let it pass before the check.
			base, skew := time.Now(), time.Duration(0)
			g.now = func() time.Time { return base.Add(skew) }
			g.in, g.stopIngress = make(chan arrival, 1), make(chan struct{})
			g.subscribed.Store(true)
			if why := g.readiness(); why != "" {
				t.Fatalf("before any overload: %q", why)
			}
			tc.act(g)
			why := g.readiness()
			if !strings.HasPrefix(why, "overloaded: ") {
				t.Fatalf("readiness %q, want overloaded", why)
			}
			for _, s := range []string{refusing, estimate, waiting} {
				if got := strings.Contains(why, s); got != (s == tc.want) {
					t.Errorf("readiness %q: says %q: %v, want %v", why, s, got, !got)
				}
			}
			skew = 2 * time.Second
			if why := g.readiness(); why != "" {
				t.Errorf("a second later: %q, want ready", why)
			}
		})
	}
}

// TestStartWithBacklogDoesNotWaitForSUBACK: a gateway that restarts with
// requests waiting in its persistent session gets them before the SUBACK of
// the subscription it sends after connecting. With more of them than the
// request handlers' queue holds, the MQTT client stops reading until Run
// starts the handlers (flow control), so the SUBACK cannot arrive while New
// waits for it: New used to wait its whole firstConnectWait (10 s) at every
// such start, log "not connected and subscribed yet" and count a failed
// subscription, while the backlog grew (TestKill9Soak at 2,000-3,000
// requests/s: restarts 11-14 s long, one after another). The first request
// message shows the subscription in effect: New returns then, and once Run
// has started the handlers the SUBACK follows.
func TestStartWithBacklogDoesNotWaitForSUBACK(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.Metrics.Listen = freeAddr(t)
	cfg.Admission.Workers, cfg.Admission.IngressQueue = 1, 1

	// The gateway's session from an earlier run: subscribed, then gone.
	prev := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(cfg.MQTT.ClientID).SetCleanSession(false))
	if tok := prev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	if tok := prev.Subscribe(cfg.MQTT.RequestFilter(), 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	prev.Disconnect(100)
	dev := newDevice(t, b.URL(), "cam-backlog")
	const backlog = 50 // far more than the handlers' queue of 1
	var ids []string
	for i := range backlog {
		id := fmt.Sprintf("b%d", i)
		ids = append(ids, id)
		dev.request("fashion", "cam-backlog", id, make([]float32, 784), 60000)
	}

	tap := newLogTap(t)
	gw := runGateway(t, cfg, Options{Logger: zerolog.New(tap).Level(zerolog.InfoLevel)})
	if log := tap.String(); strings.Contains(log, "not connected and subscribed yet") || strings.Contains(log, "no SUBACK") {
		t.Errorf("New waited for a SUBACK behind the backlog:\n%s", log)
	}
	dev.await(ids, 60*time.Second)
	tap.wait("connected and subscribed", 30*time.Second)
	if v := metricValue(t, gw.g.reg, "sneakgate_mqtt_subscribe_failures_total", "reason", "error"); v != 0 {
		t.Errorf("subscribe_failures_total{error} = %v", v)
	}
}
