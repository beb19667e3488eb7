//go:build soak

package soak

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/internal/mosquitto"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

// The harness: the real binary (built once in TestMain), a gateway process the
// tests can SIGKILL and restart, a fleet of device clients that publish QoS 1
// requests and record every reply, a /metrics scraper, and a once-a-second
// monitor that logs what a human watching the run would want to see.

var (
	repoRoot   string // absolute path of the repository
	binary     string // the sneakgate binary under test
	ortLib     string // libonnxruntime.so
	profileDir string // engine profile cache shared by every gateway start
	outDir     string // JSON summaries and gateway logs
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	repoRoot = root
	tmp, err := os.MkdirTemp("", "sneakgate-soak-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	profileDir = filepath.Join(tmp, "profiles")

	binary = os.Getenv("SOAK_BINARY")
	if binary == "" {
		// As cmd/sneakgate/main_test.go does, but without the race detector: these
		// tests measure throughput and memory.
		binary = filepath.Join(tmp, "sneakgate")
		cmd := exec.Command("go", "build", "-o", binary, "./cmd/sneakgate")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "soak: build: %v\n%s", err, out)
			return 1
		}
	}
	if ortLib, err = testenv.FindORTLib(); err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		return 1
	}
	outDir = os.Getenv("SOAK_OUT")
	if outDir == "" {
		if outDir, err = os.MkdirTemp("", "sneakgate-soak-out-"); err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			return 1
		}
	} else if err := os.MkdirAll(outDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "soak: binary %s; summaries and gateway logs in %s\n", binary, outDir)
	return m.Run()
}

// ---- knobs ----

// full reports whether SOAK_FULL asks for the full sizes.
func full() bool { return envBool("SOAK_FULL") }

// drainWait is how long a test waits for the last replies after its load
// stopped (SOAK_DRAIN, 60 s): a backlog of long deadlines can take longer to
// drain than to build, and a longer wait tells a late reply from a lost one.
func drainWait(t testing.TB) time.Duration { return envDur(t, "SOAK_DRAIN", time.Minute, time.Minute) }

func envBool(name string) bool {
	v := os.Getenv(name)
	return v == "1" || strings.EqualFold(v, "true") || strings.EqualFold(v, "yes")
}

// envInt returns $name, else the full size under SOAK_FULL, else the short default.
func envInt(t testing.TB, name string, short, fullSize int) int {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", name, v, err)
		}
		return n
	}
	if full() {
		return fullSize
	}
	return short
}

func envFloat(t testing.TB, name string, short, fullSize float64) float64 {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", name, v, err)
		}
		return f
	}
	if full() {
		return fullSize
	}
	return short
}

func envDur(t testing.TB, name string, short, fullSize time.Duration) time.Duration {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", name, v, err)
		}
		return d
	}
	if full() {
		return fullSize
	}
	return short
}

// ---- broker ----

// soakBroker is the test's Mosquitto and what it says about the messages it
// dropped.
type soakBroker struct {
	*mqtttest.Broker
	// dropped is the last value of brokerDroppedTopic (-1 before the first).
	dropped atomic.Int64
}

// startBroker starts Mosquitto with the repository's production delivery settings
// and persistence, so sessions and queued QoS 1 messages survive Stop/Start, and
// a client that follows how many messages it drops.
func startBroker(t *testing.T) *soakBroker {
	t.Helper()
	// The production delivery settings of configs/mosquitto.conf (queue, in-flight
	// window, packet size, saving every 2 s), with persistence. $SYS every second.
	b := &soakBroker{Broker: mqtttest.Start(t, mqtttest.Options{Shipped: true, Persistence: true, Config: "sys_interval 1"})}
	b.dropped.Store(-1)
	// Mosquitto publishes the count when it changes, retained for 60 s only: a
	// client that subscribes at the end may get nothing, so one follows it from
	// the start (and across broker restarts, after which it counts from 0).
	watch := func(_ mqtt.Client, m mqtt.Message) {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(m.Payload())), 10, 64); err == nil {
			b.dropped.Store(n)
		}
	}
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("soak-sys-" + randomHex(4)).SetCleanSession(true).
		SetAutoReconnect(true).SetMaxReconnectInterval(time.Second).
		SetOnConnectHandler(func(c mqtt.Client) { c.Subscribe(brokerDroppedTopic, 0, watch) })
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("$SYS watcher: connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return b
}

// brokerDroppedTopic is where Mosquitto publishes (every sys_interval, when it
// changed) how many messages it has dropped since it started: QoS 1 and 2
// messages for a session whose queue was full (max_queued_messages,
// max_queued_bytes), and QoS 0 ones for a client that was away or behind.
const brokerDroppedTopic = "$SYS/broker/publish/messages/dropped"

// brokerDroppingClients returns the clients for which the broker's log says it
// dropped messages ("Outgoing messages are being dropped for client X", logged
// once each time a client's queue overflows).
func brokerDroppingClients(log string) []string {
	const marker = "Outgoing messages are being dropped for client "
	seen := map[string]bool{}
	var out []string
	for line := range strings.Lines(log) {
		i := strings.Index(line, marker)
		if i < 0 {
			continue
		}
		id := strings.TrimSuffix(strings.TrimSpace(line[i+len(marker):]), ".")
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// ---- gateway process ----

// gwOptions are the few settings a test varies; the rest is configs/dev.yaml with
// the embedded broker off.
type gwOptions struct {
	Policy   string // scheduler.policy (default SOAK_POLICY, else edf)
	MaxQueue int    // admission.max_queue (0: the default, 10000)
	// CPU, if positive, caps the gateway process at this many cores with a CPU
	// cgroup (v1 cpu controller or v2 cpu.max), where this machine lets root make
	// one; the test logs when it cannot.
	CPU float64
	// ClientID is mqtt.client_id: by default soak-gateway, logging to
	// outDir/{test}-gateway.log; when set, the log is outDir/{test}-{ClientID}.log.
	ClientID string
	// SharedGroup, if set, is mqtt.shared_group: the gateway is one member of it.
	SharedGroup string
	// Embedded, if set, is mqtt.embedded.listen: the gateway runs its embedded
	// broker there (brokerURL must name it), which a kill takes down with it.
	Embedded string
}

// gatewayProc is one sneakgate serve process at a time, restartable with the same
// config, journal and metrics port.
type gatewayProc struct {
	t       *testing.T
	cfgPath string
	logPath string
	metrics string // host:port of /metrics

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	starts int
	logf   *os.File
	// cgroupProcs is the cgroup.procs file the process is moved into ("" for none).
	cgroupProcs string
	// dropped is sneakgate_replies_dropped_total (all statuses) as last scraped
	// by the monitor, for each start of the process (the counter starts again
	// at 0 with every process).
	dropped map[int]float64
}

// cpuCgroup makes a CPU cgroup capped at cores and returns its cgroup.procs file
// and a function that removes it, or "" and the reason it could not.
func cpuCgroup(name string, cores float64) (procs string, remove func(), why string) {
	// The kernel's default period. (A short one, 10 ms, made start-up profiling
	// take 40 s and the profiles useless: the Go runtime's and ONNX Runtime's
	// threads thrash against a 2.5 ms quota.)
	const period = 100000 // µs
	quota := int(cores * period)
	if dir := "/sys/fs/cgroup/cpu"; fileExists(filepath.Join(dir, "cpu.cfs_quota_us")) { // v1
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", nil, err.Error()
		}
		if err := os.WriteFile(filepath.Join(d, "cpu.cfs_quota_us"), []byte(strconv.Itoa(quota)), 0o644); err != nil {
			os.Remove(d)
			return "", nil, err.Error()
		}
		return filepath.Join(d, "cgroup.procs"), func() { os.Remove(d) }, ""
	}
	if dir := "/sys/fs/cgroup"; fileExists(filepath.Join(dir, "cgroup.controllers")) { // v2
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", nil, err.Error()
		}
		if err := os.WriteFile(filepath.Join(d, "cpu.max"), []byte(fmt.Sprintf("%d %d", quota, period)), 0o644); err != nil {
			os.Remove(d)
			return "", nil, err.Error() + " (is the cpu controller enabled in cgroup.subtree_control?)"
		}
		return filepath.Join(d, "cgroup.procs"), func() { os.Remove(d) }, ""
	}
	return "", nil, "no writable cpu cgroup controller"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freePort(t testing.TB) int {
	t.Helper()
	port, err := mosquitto.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// newGateway writes a config for the broker at brokerURL and returns the process
// handle (not started). The journal lives in the test's temp dir; the log goes to
// outDir/{test}-gateway.log (outDir/{test}-{client id}.log with o.ClientID).
func newGateway(t *testing.T, brokerURL string, o gwOptions) *gatewayProc {
	t.Helper()
	// The go command caches a test's result keyed by the environment variables
	// and files the test reads while it runs; TestMain's reads come before that.
	// Read them again here, so that another SOAK_BINARY or SOAK_OUT, or the same
	// binary rebuilt, is a new run rather than a cached one.
	_, _ = os.Getenv("SOAK_BINARY"), os.Getenv("SOAK_OUT")
	if _, err := os.Stat(binary); err != nil {
		t.Fatalf("gateway binary: %v", err)
	}
	if o.Policy == "" {
		o.Policy = "edf"
		if v := os.Getenv("SOAK_POLICY"); v != "" { // scheduler.policy of the tests that set none
			o.Policy = v
		}
	}
	logName := o.ClientID
	if o.ClientID == "" {
		o.ClientID, logName = "soak-gateway", "gateway"
	}
	dir := t.TempDir()
	g := &gatewayProc{t: t, cfgPath: filepath.Join(dir, "sneakgate.yaml"),
		logPath: filepath.Join(outDir, t.Name()+"-"+logName+".log"),
		metrics: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	var cfg strings.Builder
	level := "info" // SOAK_LOG_LEVEL: debug names every refused request (the log grows fast)
	if v := os.Getenv("SOAK_LOG_LEVEL"); v != "" {
		level = v
	}
	fmt.Fprintf(&cfg, `# Written by the soak tests: configs/dev.yaml with the embedded broker off.
log:
  level: %s
  format: json
mqtt:
  broker: %q
  client_id: %q
`, level, brokerURL, o.ClientID)
	if v := os.Getenv("SOAK_FLUSH_RATE"); v != "" { // mqtt.flush_rate, for experiments
		fmt.Fprintf(&cfg, "  flush_rate: %s\n", v)
	}
	if o.SharedGroup != "" {
		fmt.Fprintf(&cfg, "  shared_group: %q\n", o.SharedGroup)
	}
	if o.Embedded != "" {
		fmt.Fprintf(&cfg, "  embedded:\n    enabled: true\n    listen: %q\n", o.Embedded)
	} else {
		cfg.WriteString("  embedded:\n    enabled: false\n")
	}
	fmt.Fprintf(&cfg, `store:
  path: %q
engine:
  library: %q
  intra_op_threads: 1
  profile_cache: %q
scheduler:
  policy: %s
`, filepath.Join(dir, "sneakgate.db"), ortLib, profileDir, o.Policy)
	if v := os.Getenv("SOAK_PEEK"); v != "" { // scheduler.peek, e.g. fashion=cnn (with the sneakpeek policy)
		cfg.WriteString("  peek:\n")
		for _, kv := range strings.Split(v, ",") {
			app, variant, _ := strings.Cut(kv, "=")
			fmt.Fprintf(&cfg, "    %s: %s\n", app, variant)
		}
	}
	fmt.Fprintf(&cfg, `metrics:
  listen: %q
`, g.metrics)
	if o.MaxQueue > 0 || os.Getenv("SOAK_MAX_WAIT") != "" || os.Getenv("SOAK_PRICE_SHED") != "" {
		cfg.WriteString("admission:\n")
		if v := os.Getenv("SOAK_PRICE_SHED"); v != "" { // admission.price_shed, for experiments
			fmt.Fprintf(&cfg, "  price_shed: %s\n", v)
		}
		if o.MaxQueue > 0 {
			fmt.Fprintf(&cfg, "  max_queue: %d\n", o.MaxQueue)
		}
		if w := os.Getenv("SOAK_MAX_WAIT"); w != "" { // admission.max_wait, for experiments
			fmt.Fprintf(&cfg, "  max_wait: %s\n", w)
		}
	}
	cfg.WriteString("apps:\n")
	for _, app := range []string{"fashion", "satellite", "vad"} {
		fmt.Fprintf(&cfg, "  - manifest: %q\n", filepath.Join(repoRoot, "models", app, "manifest.yaml"))
	}
	if err := os.WriteFile(g.cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(g.logPath)
	if err != nil {
		t.Fatal(err)
	}
	g.logf = f
	if o.CPU > 0 {
		procs, remove, why := cpuCgroup(fmt.Sprintf("sneakgate-soak-%d-%d", os.Getpid(), freePort(t)), o.CPU)
		if procs == "" {
			t.Logf("CPU cap of %.2f cores not applied (%s): the gateway shares the machine with the broker and the load generator", o.CPU, why)
		} else {
			g.cgroupProcs = procs
			t.Cleanup(remove) // runs after the kill below
			t.Logf("gateway capped at %.2f cores (%s)", o.CPU, filepath.Dir(procs))
		}
	}
	t.Cleanup(func() {
		g.signal(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("gateway %s log: %s; last lines:\n%s", o.ClientID, g.logPath, g.tail(12))
		}
		g.mu.Lock()
		g.logf.Close()
		g.mu.Unlock()
	})
	return g
}

// start starts the gateway and waits (up to 2 minutes) for its "gateway ready"
// log line; it returns how long that took. It must run on the test's goroutine.
func (g *gatewayProc) start() time.Duration {
	g.t.Helper()
	t0 := time.Now()
	g.mu.Lock()
	if g.running() {
		g.mu.Unlock()
		g.t.Fatal("gateway start: already running")
	}
	g.starts++
	fmt.Fprintf(g.logf, "--- soak: start %d at %s\n", g.starts, t0.Format(time.RFC3339Nano))
	cmd := exec.Command(binary, "serve", "-config", g.cfgPath)
	pr, pw, err := os.Pipe()
	if err != nil {
		g.mu.Unlock()
		g.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		g.mu.Unlock()
		pr.Close()
		pw.Close()
		g.t.Fatalf("gateway start: %v", err)
	}
	pw.Close()
	if g.cgroupProcs != "" {
		// Moves every thread of the process; threads it starts later inherit it.
		if err := os.WriteFile(g.cgroupProcs, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			g.mu.Unlock()
			cmd.Process.Kill()
			g.t.Fatalf("gateway start: cpu cgroup: %v", err)
		}
	}
	ready := make(chan struct{})
	logf := g.logf
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Bytes()
			g.mu.Lock()
			logf.Write(line)
			logf.Write([]byte{'\n'})
			g.mu.Unlock()
			if !signalled && bytes.Contains(line, []byte("gateway ready")) {
				signalled = true
				close(ready)
			}
		}
		pr.Close()
	}()
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // its exit is in the log
		close(done)
	}()
	g.cmd, g.done = cmd, done
	g.mu.Unlock()
	select {
	case <-ready:
		return time.Since(t0)
	case <-done:
		time.Sleep(100 * time.Millisecond) // let the reader finish the log
		g.t.Fatalf("gateway exited before ready (%v); log %s:\n%s", cmd.ProcessState, g.logPath, g.tail(40))
	case <-time.After(2 * time.Minute):
		g.t.Fatalf("gateway not ready within 2 minutes; log %s:\n%s", g.logPath, g.tail(40))
	}
	return 0
}

func (g *gatewayProc) running() bool {
	if g.cmd == nil {
		return false
	}
	select {
	case <-g.done:
		return false
	default:
		return true
	}
}

// kill SIGKILLs the gateway and waits for it to exit.
func (g *gatewayProc) kill() { g.signal(syscall.SIGKILL) }

// term SIGTERMs the gateway (its drain) and waits for it to exit, SIGKILLing it
// after 90 seconds.
func (g *gatewayProc) term() { g.signal(syscall.SIGTERM) }

func (g *gatewayProc) signal(sig syscall.Signal) {
	g.mu.Lock()
	if !g.running() {
		g.mu.Unlock()
		return
	}
	cmd, done := g.cmd, g.done
	fmt.Fprintf(g.logf, "--- soak: signal %v at %s\n", sig, time.Now().Format(time.RFC3339Nano))
	g.mu.Unlock()
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// tail returns the last n lines of the gateway's log.
func (g *gatewayProc) tail(n int) string {
	b, err := os.ReadFile(g.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// noteScrape records what a scrape of the running process says about the
// replies it dropped.
func (g *gatewayProc) noteScrape(s metricSample) {
	if !s.OK {
		return
	}
	var n float64
	for _, v := range s.Dropped {
		n += v
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dropped == nil {
		g.dropped = map[int]float64{}
	}
	g.dropped[g.starts] = max(g.dropped[g.starts], n)
}

// droppedReplies is the replies the gateway counted as dropped over all its
// processes, as the monitor last scraped each (a process killed keeps what it
// counted after its last scrape to itself: a lower bound).
func (g *gatewayProc) droppedReplies() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	var n float64
	for _, v := range g.dropped {
		n += v
	}
	return n
}

// lossReport says on which side acknowledged requests without a reply were
// lost: the broker's (it dropped messages for a full session queue) or the
// gateway's (replies it counted as dropped, ids its log names).
type lossReport struct {
	Lost     int    `json:"lost"`
	LostFile string `json:"lost_file,omitempty"` // every lost id with its sent_at
	// BrokerDropped is $SYS/broker/publish/messages/dropped since the broker's
	// last start (-1: not read); BrokerDroppingFor the clients the broker logged
	// it was dropping messages for (the gateway's client id: requests; a
	// device's: replies).
	BrokerDropped     int64    `json:"broker_dropped"`
	BrokerDroppingFor []string `json:"broker_dropping_for,omitempty"`
	// GatewayDropped is sneakgate_replies_dropped_total summed over the
	// gateway processes (at least: see droppedReplies).
	GatewayDropped float64 `json:"gateway_dropped_replies"`
	// GatewayLogNamed counts the lost ids the gateways' logs name, by what they
	// logged last about each; NotInLog the others.
	GatewayLogNamed map[string]int `json:"gateway_log_named,omitempty"`
	NotInLog        int            `json:"not_in_gateway_log"`
}

// explainLost logs, and returns, on which side acknowledged requests that got no
// reply were lost, and writes their ids with their sent_at to
// outDir/{test}-lost.txt. The broker side: how many messages the broker dropped
// ($SYS, since its last start) and for which clients (its log; a full queue of
// the gateway's session loses requests, of a device's session replies). The
// gateway side: the replies it counted as dropped, and what its log says about
// the lost ids. The gateway logs requests it rejects or refuses (with their ids;
// rejections at warn, sampled: the first 10 a second, then 1 in 100; refusals
// for overload at debug only), so a lost id found there was seen and answered by
// the gateway but its reply never reached the device; an id not found there was
// admitted (admissions are not logged), rejected and not sampled, or never
// reached it.
func explainLost(t *testing.T, f *fleet, b *soakBroker, gws ...*gatewayProc) lossReport {
	t.Helper()
	r := lossReport{BrokerDropped: b.dropped.Load(), BrokerDroppingFor: brokerDroppingClients(b.Log())}
	for _, g := range gws {
		r.GatewayDropped += g.droppedReplies()
	}
	lost := map[string]bool{}
	var list strings.Builder
	for _, s := range f.snapshot() {
		if s.State == pubAcked && len(s.Replies) == 0 {
			lost[s.ID] = true
			fmt.Fprintf(&list, "%s %s\n", s.ID, s.SentAt.Format(time.RFC3339Nano))
		}
	}
	r.Lost = len(lost)
	brokerSide := "unknown (no $SYS count seen)"
	if r.BrokerDropped >= 0 {
		brokerSide = fmt.Sprintf("%d messages dropped since its last start", r.BrokerDropped)
	}
	sides := fmt.Sprintf("broker side: %s, dropping logged for clients %v; gateway side: at least %.0f replies counted as dropped (sneakgate_replies_dropped_total)",
		brokerSide, r.BrokerDroppingFor, r.GatewayDropped)
	if len(lost) == 0 {
		t.Logf("LOSS: no acknowledged request without a reply; %s", sides)
		return r
	}
	r.LostFile = filepath.Join(outDir, t.Name()+"-lost.txt")
	if err := os.WriteFile(r.LostFile, []byte(list.String()), 0o644); err != nil {
		t.Logf("lost requests: %v", err)
		r.LostFile = ""
	}
	seen := map[string]string{}
	for _, g := range gws {
		g.grepLost(t, lost, seen)
	}
	r.GatewayLogNamed = map[string]int{}
	for _, w := range seen {
		r.GatewayLogNamed[w]++
	}
	r.NotInLog = len(lost) - len(seen)
	t.Logf("LOSS: %d acknowledged requests without a reply (ids and sent_at in %s); %s; the gateway's log names %d of them, by what it logged last: %v (their replies never reached the device); the other %d are not in its log (admitted, or never received)",
		len(lost), r.LostFile, sides, len(seen), r.GatewayLogNamed, r.NotInLog)
	return r
}

// grepLost records in seen, for each lost id the gateway's log names, the last
// message it logged about it.
func (g *gatewayProc) grepLost(t *testing.T, lost map[string]bool, seen map[string]string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	file, err := os.Open(g.logPath)
	if err != nil {
		t.Logf("lost requests: cannot read the gateway log: %v", err)
		return
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, []byte(`"id":"`)) {
			continue
		}
		var e struct{ ID, Reason, Message string }
		if json.Unmarshal(line, &e) != nil || !lost[e.ID] {
			continue
		}
		what := e.Message
		if e.Reason != "" {
			what += " (" + e.Reason + ")"
		}
		seen[e.ID] = what
	}
}

// ---- metrics ----

// metricSample is one scrape of the gateway's /metrics.
type metricSample struct {
	At         time.Time          `json:"at"`
	OK         bool               `json:"ok"` // false when the scrape failed (gateway down)
	Goroutines float64            `json:"goroutines"`
	RSS        float64            `json:"rss_bytes"`
	Queue      float64            `json:"queue"`
	Outbox     float64            `json:"outbox"`
	Received   float64            `json:"received"`           // sneakgate_requests_received_total, all applications
	Replies    map[string]float64 `json:"replies,omitempty"`  // sneakgate_replies_total by status
	Rejected   map[string]float64 `json:"rejected,omitempty"` // sneakgate_rejected_total by reason
	// Dropped is sneakgate_replies_dropped_total by status: replies republished
	// to duplicates of answered requests that the gateway dropped (best effort:
	// the broker acknowledged the first copy).
	Dropped map[string]float64 `json:"dropped,omitempty"`
	// IngressWaits is sneakgate_ingress_waits_total: request messages that
	// found the request handlers' queue full (flow control); Owed is
	// sneakgate_unjournaled_replies_in_flight: replies to requests that are not
	// journaled, handed to the broker and not acknowledged yet.
	IngressWaits float64 `json:"ingress_waits"`
	Owed         float64 `json:"unjournaled_replies_in_flight"`
	// Suspects is sneakgate_crash_suspects by state (alone, answered): the
	// requests this start found in a forward pass an earlier run died in.
	Suspects map[string]float64 `json:"crash_suspects,omitempty"`
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// scrape reads the Prometheus text format at addr; failures give OK false.
func scrape(addr string) metricSample {
	s := metricSample{At: time.Now(), Replies: map[string]float64{}, Rejected: map[string]float64{}, Dropped: map[string]float64{},
		Suspects: map[string]float64{}}
	resp, err := httpClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return s
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		name, labels := line[:sp], ""
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name, labels = name[:i], name[i:]
		}
		switch name {
		case "go_goroutines":
			s.Goroutines = v
		case "process_resident_memory_bytes":
			s.RSS = v
		case "sneakgate_queue_length":
			s.Queue = v
		case "sneakgate_outbox_length":
			s.Outbox = v
		case "sneakgate_requests_received_total":
			s.Received += v
		case "sneakgate_replies_total":
			s.Replies[label(labels, "status")] += v
		case "sneakgate_rejected_total":
			s.Rejected[label(labels, "reason")] += v
		case "sneakgate_replies_dropped_total":
			s.Dropped[label(labels, "status")] += v
		case "sneakgate_ingress_waits_total":
			s.IngressWaits = v
		case "sneakgate_unjournaled_replies_in_flight":
			s.Owed = v
		case "sneakgate_crash_suspects":
			s.Suspects[label(labels, "state")] = v
		}
	}
	s.OK = sc.Err() == nil
	return s
}

// label returns the value of key in a {k="v",...} label set.
func label(labels, key string) string {
	i := strings.Index(labels, key+`="`)
	if i < 0 {
		return ""
	}
	rest := labels[i+len(key)+2:]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return rest
}

// ---- devices ----

// replyRec is one reply as a device received it (parsed fields, no payload).
type replyRec struct {
	At          time.Time
	Status      protocol.Status
	Reason      protocol.Reason
	Class       int // -1 when absent
	Model       string
	DeadlineMet *bool
	RetryAfter  int64 // -1 when absent
	SlackMS     *float64
	Hash        uint64 // FNV-64a of the payload, for byte-identical repeats
}

// reqRec is one published request.
type reqRec struct {
	ID       string
	SentAt   time.Time
	Deadline time.Duration
	In       int          // the index of its input in fleet.inputs
	state    atomic.Int32 // pubPending, pubAcked, pubFailed
	replies  []replyRec   // guarded by fleet.mu
}

const (
	pubPending int32 = iota
	pubAcked
	pubFailed
)

// device is one MQTT client: it publishes requests on its own topic and receives
// its replies on a persistent session (stable client id, clean session off).
type device struct {
	name string
	c    mqtt.Client

	mu  sync.Mutex // guards seq and rng: a test may send from its own goroutine too
	seq int
	rng *mrand.Rand
}

// next returns the device's next request id and a random input index.
func (d *device) next(run string, inputs int) (string, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seq++
	return fmt.Sprintf("%s-%s-%07d", run, d.name, d.seq), d.rng.IntN(inputs)
}

// fleet is the devices of one test and every request and reply they saw.
type fleet struct {
	t      *testing.T
	broker string
	run    string
	inputs [][]float32
	// samples are the inputs' labels and the application's utility matrix and
	// no-answer values, which value the replies (analyse's Utility).
	samples sampleSet
	b64     bool
	devs    []*device

	// per-second counters, read and reset by the monitor
	attempts, skipped, acked, failed atomic.Int64
	missed                           atomic.Int64 // schedule slots the generator could not keep (cumulative)

	mu        sync.Mutex
	reqs      map[string]*reqRec
	byStatus  map[protocol.Status]int64 // replies received, cumulative
	orphans   int64                     // replies to ids this fleet never sent
	malformed int64
	probes    map[string]chan replyRec
}

// sampleSet is the labels of a fleet's inputs and the application that values
// answers to them (its utility matrix and no-answer values).
type sampleSet struct {
	labels []int
	app    *manifest.App
}

// loadSamples returns up to n real Fashion-MNIST test images from the bundled
// sample file (784 values in [0, 1]), with their labels and fashion's manifest.
func loadSamples(t testing.TB, n int) ([][]float32, sampleSet) {
	t.Helper()
	app, err := manifest.Load(filepath.Join(repoRoot, "models/fashion/manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if app.Samples == nil {
		t.Fatal("fashion manifest has no samples")
	}
	set, err := dataset.Read(app.Path(app.Samples.File))
	if err != nil {
		t.Fatal(err)
	}
	if set.D != 784 {
		t.Fatalf("sample file has %d values per sample, want 784", set.D)
	}
	var in [][]float32
	ss := sampleSet{app: app}
	for i := 0; i < set.N && i < n; i++ {
		in = append(in, set.Row(i))
		ss.labels = append(ss.labels, int(set.Labels[i]))
	}
	return in, ss
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newFleet connects n devices named {prefix}-00..; each subscribes (QoS 1) to its
// reply topic on a persistent session and reconnects by itself.
func newFleet(t *testing.T, brokerURL, prefix string, n int) *fleet {
	t.Helper()
	inputs, samples := loadSamples(t, 512)
	f := &fleet{t: t, broker: brokerURL, run: randomHex(3), inputs: inputs, samples: samples,
		b64: os.Getenv("SOAK_B64") != "0", reqs: map[string]*reqRec{},
		byStatus: map[protocol.Status]int64{}, probes: map[string]chan replyRec{}}
	for i := range n {
		f.devs = append(f.devs, f.connect(fmt.Sprintf("%s-%02d", prefix, i)))
	}
	t.Cleanup(func() {
		for _, d := range f.devs {
			d.c.Disconnect(100)
		}
	})
	return f
}

func (f *fleet) connect(name string) *device {
	f.t.Helper()
	d := &device{name: name, rng: mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), uint64(len(f.devs))))}
	filter := protocol.ReplyTopic(protocol.DefaultPrefix, "fashion", name)
	handler := func(_ mqtt.Client, m mqtt.Message) { f.handle(m.Payload()) }
	o := mqtt.NewClientOptions().AddBroker(f.broker).
		SetClientID("soak-" + f.run + "-" + name).SetCleanSession(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(time.Second).SetConnectRetryInterval(250 * time.Millisecond).
		SetKeepAlive(30 * time.Second).SetOrderMatters(false).SetWriteTimeout(5 * time.Second).
		SetDefaultPublishHandler(handler)
	o.SetOnConnectHandler(func(c mqtt.Client) {
		// The session keeps the subscription; subscribing again is harmless and
		// covers a broker that lost it.
		c.Subscribe(filter, 1, handler)
	})
	d.c = mqtt.NewClient(o)
	tok := d.c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		f.t.Fatalf("device %s: connect: %v", name, tok.Error())
	}
	tok = d.c.Subscribe(filter, 1, handler)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		f.t.Fatalf("device %s: subscribe: %v", name, tok.Error())
	}
	return d
}

// handle records a reply; it runs on paho's goroutines and must not block.
func (f *fleet) handle(payload []byte) {
	at := time.Now()
	r, err := protocol.ParseReply(payload)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.malformed++
		return
	}
	h := fnv.New64a()
	h.Write(payload)
	rr := replyRec{At: at, Status: r.Status, Reason: r.Reason, Class: -1, Model: r.Model,
		DeadlineMet: r.DeadlineMet, RetryAfter: -1, SlackMS: r.SlackMS, Hash: h.Sum64()}
	if r.Class != nil {
		rr.Class = *r.Class
	}
	if r.RetryAfterMS != nil {
		rr.RetryAfter = *r.RetryAfterMS
	}
	f.byStatus[r.Status]++
	if ch, ok := f.probes[r.ID]; ok {
		select {
		case ch <- rr:
		default:
		}
	}
	rec, ok := f.reqs[r.ID]
	if !ok {
		f.orphans++
		return
	}
	rec.replies = append(rec.replies, rr)
}

// send publishes one request from d with the given budget (deadline_ms, counted
// from sent_at = now). A device whose connection is down does not publish (the
// request is counted as skipped); otherwise the request is recorded and counts as
// acknowledged once its publish token completes without error.
func (f *fleet) send(d *device, deadline time.Duration) *reqRec {
	if !d.c.IsConnectionOpen() {
		f.skipped.Add(1)
		return nil
	}
	id, in := d.next(f.run, len(f.inputs))
	now := time.Now()
	rec := &reqRec{ID: id, SentAt: now, Deadline: deadline, In: in}
	p := protocol.Payload{ID: rec.ID, DeadlineMS: protocol.DeadlineMS(deadline), SentAt: now,
		Input: f.inputs[in], B64: f.b64}
	f.mu.Lock()
	f.reqs[rec.ID] = rec
	f.mu.Unlock()
	f.attempts.Add(1)
	tok := d.c.Publish(protocol.RequestTopic(protocol.DefaultPrefix, "fashion", d.name), 1, false, p.Marshal())
	go func() {
		<-tok.Done()
		if tok.Error() == nil {
			rec.state.Store(pubAcked)
			f.acked.Add(1)
		} else {
			rec.state.Store(pubFailed)
			f.failed.Add(1)
		}
	}()
	return rec
}

// maxBehind is how far a device may fall behind its schedule before it gives up
// the missed slots.
const maxBehind = 250 * time.Millisecond

// load publishes at rate requests per second in total, evenly spread over the
// devices, until stop is closed. A device that falls behind its schedule publishes
// as fast as it can to catch up, up to maxBehind; slots missed beyond that are
// dropped and counted (fleet.missed), so the achieved rate is what the generator
// could do (the monitor and the tests report it).
func (f *fleet) load(rate float64, deadline time.Duration, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	per := rate / float64(len(f.devs))
	gap := time.Duration(float64(time.Second) / per)
	for i, d := range f.devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := time.Now().Add(gap * time.Duration(i) / time.Duration(len(f.devs)))
			timer := time.NewTimer(0)
			defer timer.Stop()
			<-timer.C
			for {
				if wait := time.Until(next); wait > 0 {
					timer.Reset(wait)
					select {
					case <-stop:
						return
					case <-timer.C:
					}
				} else {
					select {
					case <-stop:
						return
					default:
					}
				}
				f.send(d, deadline)
				next = next.Add(gap)
				if behind := time.Since(next); behind > maxBehind {
					// The generator cannot keep up (CPU): drop the missed slots
					// rather than burst to catch up; the achieved rate is reported.
					missed := int64(behind / gap)
					f.missed.Add(missed)
					next = next.Add(time.Duration(missed) * gap)
				}
			}
		}()
	}
	return &wg
}

// probe publishes one request from a fresh device and returns its first reply and
// the request (zero reply after timeout).
func (f *fleet) probe(d *device, deadline, timeout time.Duration) (replyRec, *reqRec, bool) {
	ch := make(chan replyRec, 4)
	id, _ := d.next(f.run, len(f.inputs))
	now := time.Now()
	rec := &reqRec{ID: id, SentAt: now, Deadline: deadline}
	f.mu.Lock()
	f.probes[rec.ID] = ch
	f.reqs[rec.ID] = rec
	f.mu.Unlock()
	p := protocol.Payload{ID: rec.ID, DeadlineMS: protocol.DeadlineMS(deadline), SentAt: now,
		Input: f.inputs[0], B64: f.b64}
	tok := d.c.Publish(protocol.RequestTopic(protocol.DefaultPrefix, "fashion", d.name), 1, false, p.Marshal())
	if tok.WaitTimeout(timeout) && tok.Error() == nil {
		rec.state.Store(pubAcked)
	}
	select {
	case r := <-ch:
		return r, rec, true
	case <-time.After(timeout):
		return replyRec{}, rec, false
	}
}

// outstanding counts acknowledged requests without a reply and publishes whose
// token has not completed yet.
func (f *fleet) outstanding() (unanswered, unresolved int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.reqs {
		switch r.state.Load() {
		case pubAcked:
			if len(r.replies) == 0 {
				unanswered++
			}
		case pubPending:
			unresolved++
		}
	}
	return unanswered, unresolved
}

// waitReplies polls until every acknowledged request has a reply and no publish
// is unresolved, or until timeout; it returns how long it waited.
func (f *fleet) waitReplies(timeout time.Duration) time.Duration {
	t0 := time.Now()
	last := time.Now()
	for {
		u, p := f.outstanding()
		if u == 0 && p == 0 {
			return time.Since(t0)
		}
		if time.Since(t0) > timeout {
			f.t.Logf("waited %s: still %d acknowledged requests without a reply, %d publishes unresolved", timeout, u, p)
			return time.Since(t0)
		}
		if time.Since(last) >= 5*time.Second {
			f.t.Logf("waiting for replies: %d acknowledged requests unanswered, %d publishes unresolved (%s)", u, p, time.Since(t0).Round(time.Second))
			last = time.Now()
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// snapshot returns copies of the request records (replies included).
func (f *fleet) snapshot() []reqSnap {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]reqSnap, 0, len(f.reqs))
	for _, r := range f.reqs {
		out = append(out, reqSnap{ID: r.ID, SentAt: r.SentAt, Deadline: r.Deadline, In: r.In, State: r.state.Load(),
			Replies: append([]replyRec(nil), r.replies...)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SentAt.Before(out[j].SentAt) })
	return out
}

type reqSnap struct {
	ID       string
	SentAt   time.Time
	Deadline time.Duration
	In       int
	State    int32
	Replies  []replyRec
}

func (f *fleet) statusCounts() map[protocol.Status]int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[protocol.Status]int64, len(f.byStatus))
	for k, v := range f.byStatus {
		m[k] = v
	}
	return m
}

// ---- analysis shared by the tests ----

// tally is what every test reports about its requests and replies.
type tally struct {
	Published        int            `json:"published"`    // publish calls made
	Acknowledged     int            `json:"acknowledged"` // PUBACK received
	PublishFailed    int            `json:"publish_failed"`
	Unresolved       int            `json:"publish_unresolved"`
	Skipped          int64          `json:"skipped_disconnected"`
	Missed           int64          `json:"generator_missed_slots"`
	Answered         int            `json:"acknowledged_with_reply"`
	Lost             int            `json:"acknowledged_without_reply"`
	LostIDs          []string       `json:"lost_ids,omitempty"` // the first few
	FirstByStatus    map[string]int `json:"first_reply_by_status"`
	FirstByReason    map[string]int `json:"first_reply_by_reason"`
	Replies          int            `json:"replies"`
	RepeatedIDs      int            `json:"ids_with_repeats"`
	RepeatReplies    int            `json:"repeat_replies"`
	RepeatsIdentical int            `json:"ids_with_byte_identical_repeats"`
	RepeatsDisagree  int            `json:"ids_whose_repeats_disagree"`
	Disagreements    []string       `json:"disagreements,omitempty"` // the first few
	// Reanswered counts ids whose first reply was not journaled (a refusal:
	// status rejected) and that got a different reply later: the
	// gateway acknowledges such a request once the broker has its reply, so a
	// gateway killed in between leaves the request with the broker, which
	// delivers it again, and it is answered anew, like a device's resend
	// (docs/protocol.md, "Delivery"). Not counted in RepeatsDisagree, nor as
	// repeats that are not byte-identical.
	Reanswered         int      `json:"ids_reanswered_after_unjournaled_reply"`
	ReansweredExamples []string `json:"reanswered_examples,omitempty"` // the first few
	StaleMet           int      `json:"stale_deadline_met"`            // replies received past deadline+tolerance claiming deadline_met
	StaleMetFirst      int      `json:"stale_deadline_met_first_reply"`
	StaleMetExamples   []string `json:"stale_examples,omitempty"`
	// StaleHeld counts stale replies (as StaleMet, and not counted there) that the
	// gateway stamped as handed to the broker before the broker went away: the
	// broker or the MQTT session held them across the outage and delivered them
	// late with their true publication stamp. The gateway cannot see that delay.
	StaleHeld      int              `json:"stale_held_across_outage"`
	Orphans        int64            `json:"orphan_replies"`
	Malformed      int64            `json:"malformed_replies"`
	ReplyLatencyMS map[string]int64 `json:"first_reply_latency_ms"` // p50, p99, max of sent_at to first reply
	// Utility is the mean, over the acknowledged requests, of what their
	// first replies are worth as the devices received them (replyUtility);
	// UtilityN the requests it is over (0 without labels).
	Utility  float64 `json:"utility"`
	UtilityN int     `json:"utility_requests"`
}

// replyUtility is what the first reply r (nil: none) to a request of true class y
// sent at sentAt with this budget is worth to its device: the utility matrix's
// value of its class for an answer (ok, late, degraded), discounted for
// lateness at the device's receipt as the scheduler values a late result
// (scheduler.Penalty and Discount: whole up to the deadline, down to the no-answer
// value at twice the budget); the no-answer value for no reply, a refusal or an
// expired request.
func replyUtility(ss sampleSet, y int, r *replyRec, sentAt time.Time, budget time.Duration) float64 {
	none := ss.app.NoAnswer(y)
	if r == nil || r.Class < 0 || r.Class >= len(ss.app.Utility[y]) {
		return none
	}
	switch r.Status {
	case protocol.StatusOK, protocol.StatusLate, protocol.StatusDegraded:
		return scheduler.Discount(ss.app.Utility[y][r.Class], none, scheduler.Penalty(r.At, sentAt.Add(budget), budget))
	}
	return none
}

// heldWindow is how long after the broker stops a reply may still be handed to
// the gateway's MQTT client, which then holds it and resends it unchanged after
// the reconnect (the client notices the broken connection only when it fails).
const heldWindow = time.Second

// staleTolerance is how far past its deadline a reply may arrive and still claim
// deadline_met (broker and device delivery, clock granularity).
const staleTolerance = 250 * time.Millisecond

func analyse(f *fleet) tally { return analyseOutage(f, time.Time{}) }

// analyseOutage is analyse for a run in which the broker stopped at stoppedAt: a
// stale reply whose publication the gateway stamped (sent_at + deadline -
// slack_ms) before stoppedAt + heldWindow counts as StaleHeld, not StaleMet.
func analyseOutage(f *fleet, stoppedAt time.Time) tally {
	snaps := f.snapshot()
	tl := tally{FirstByStatus: map[string]int{}, FirstByReason: map[string]int{}, ReplyLatencyMS: map[string]int64{}}
	var lat []time.Duration
	for _, s := range snaps {
		tl.Published++
		switch s.State {
		case pubAcked:
			tl.Acknowledged++
		case pubFailed:
			tl.PublishFailed++
		default:
			tl.Unresolved++
		}
		tl.Replies += len(s.Replies)
		if s.State == pubAcked && f.samples.labels != nil && s.In < len(f.samples.labels) {
			var first *replyRec
			if len(s.Replies) > 0 {
				first = &s.Replies[0]
			}
			tl.Utility += replyUtility(f.samples, f.samples.labels[s.In], first, s.SentAt, s.Deadline)
			tl.UtilityN++
		}
		if s.State == pubAcked {
			if len(s.Replies) == 0 {
				tl.Lost++
				if len(tl.LostIDs) < 20 {
					tl.LostIDs = append(tl.LostIDs, s.ID)
				}
			} else {
				tl.Answered++
			}
		}
		if len(s.Replies) == 0 {
			continue
		}
		first := s.Replies[0]
		tl.FirstByStatus[string(first.Status)]++
		if first.Reason != "" {
			tl.FirstByReason[string(first.Reason)]++
		}
		lat = append(lat, first.At.Sub(s.SentAt))
		for i, r := range s.Replies {
			if r.DeadlineMet != nil && *r.DeadlineMet && r.At.Sub(s.SentAt) > s.Deadline+staleTolerance {
				if r.SlackMS != nil && !stoppedAt.IsZero() {
					deadline := time.UnixMilli(s.SentAt.UnixMilli()).Add(s.Deadline)
					// The gateway learns of the broker's death only when its
					// connection breaks: a reply handed to the MQTT client in the
					// second after the stop is resent by the session unchanged.
					if published := deadline.Add(-time.Duration(*r.SlackMS * float64(time.Millisecond))); published.Before(stoppedAt.Add(heldWindow)) {
						tl.StaleHeld++
						continue
					}
				}
				tl.StaleMet++
				if i == 0 {
					tl.StaleMetFirst++
				}
				if len(tl.StaleMetExamples) < 10 {
					slack := "-"
					if r.SlackMS != nil {
						slack = strconv.FormatFloat(*r.SlackMS, 'f', 1, 64)
					}
					tl.StaleMetExamples = append(tl.StaleMetExamples, fmt.Sprintf("%s reply %d: %s deadline_met=true received %s after sent_at (deadline %s, gateway slack_ms %s)",
						s.ID, i+1, r.Status, r.At.Sub(s.SentAt).Round(time.Millisecond), s.Deadline, slack))
				}
			}
		}
		if len(s.Replies) > 1 {
			tl.RepeatedIDs++
			tl.RepeatReplies += len(s.Replies) - 1
			identical, agree := true, true
			for _, r := range s.Replies[1:] {
				identical = identical && r.Hash == first.Hash
				agree = agree && r.Status == first.Status && r.Class == first.Class && r.Model == first.Model
			}
			// describe is the id and its replies, for the first few examples.
			describe := func() string {
				var parts []string
				for _, r := range s.Replies {
					parts = append(parts, fmt.Sprintf("%s/%s class=%d model=%q", r.Status, r.Reason, r.Class, r.Model))
				}
				return s.ID + ": " + strings.Join(parts, " | ")
			}
			switch {
			case identical:
				tl.RepeatsIdentical++
			case unjournaledReply(first):
				tl.Reanswered++
				if len(tl.ReansweredExamples) < 10 {
					tl.ReansweredExamples = append(tl.ReansweredExamples, describe())
				}
			case !agree:
				tl.RepeatsDisagree++
				if len(tl.Disagreements) < 10 {
					tl.Disagreements = append(tl.Disagreements, describe())
				}
			}
		}
	}
	tl.Skipped = f.skipped.Load()
	tl.Missed = f.missed.Load()
	f.mu.Lock()
	tl.Orphans, tl.Malformed = f.orphans, f.malformed
	f.mu.Unlock()
	if tl.UtilityN > 0 {
		tl.Utility /= float64(tl.UtilityN)
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		tl.ReplyLatencyMS["p50"] = lat[len(lat)/2].Milliseconds()
		tl.ReplyLatencyMS["p99"] = lat[len(lat)*99/100].Milliseconds()
		tl.ReplyLatencyMS["max"] = lat[len(lat)-1].Milliseconds()
	}
	return tl
}

// unjournaledReply reports whether r is a reply the gateway gives without
// journaling the request: a refusal or rejection (a retry is a new request).
// An answer from the estimate at admission is recorded in the journal before
// it is handed over (admission.journal_estimate_answers, the default), so its
// copies get the same bytes, and an expiry on arrival depends only on the
// request: neither is excused.
func unjournaledReply(r replyRec) bool {
	return r.Status == protocol.StatusRejected
}

func (tl tally) log(t *testing.T) {
	t.Logf("requests: %d published, %d acknowledged, %d publish failed, %d unresolved, %d skipped while disconnected, %d schedule slots the generator missed",
		tl.Published, tl.Acknowledged, tl.PublishFailed, tl.Unresolved, tl.Skipped, tl.Missed)
	t.Logf("replies: %d in all; acknowledged with a reply %d, WITHOUT a reply %d; first reply by status %v; by reason %v",
		tl.Replies, tl.Answered, tl.Lost, tl.FirstByStatus, tl.FirstByReason)
	if tl.UtilityN > 0 {
		t.Logf("UTILITY: %.4f, mean over %d acknowledged requests of their first reply's worth at the device (fashion's utility matrix, discounted for lateness from sent_at as the scheduler does, the no-answer value for none)",
			tl.Utility, tl.UtilityN)
	}
	t.Logf("repeats: %d ids got more than one reply (%d extra replies); byte-identical %d; answered anew after a reply that was not journaled %d; disagreeing on status/class/model %d",
		tl.RepeatedIDs, tl.RepeatReplies, tl.RepeatsIdentical, tl.Reanswered, tl.RepeatsDisagree)
	t.Logf("stale deadline_met=true (received > deadline + %s after sent_at): %d replies (%d of them first replies), and %d more handed to the broker in time before it stopped (held across the outage by the broker or the MQTT session); orphan replies %d, malformed %d; first-reply latency ms %v",
		staleTolerance, tl.StaleMet, tl.StaleMetFirst, tl.StaleHeld, tl.Orphans, tl.Malformed, tl.ReplyLatencyMS)
	for _, d := range tl.Disagreements {
		t.Logf("  disagreement: %s", d)
	}
	for _, d := range tl.ReansweredExamples {
		t.Logf("  answered anew: %s", d)
	}
	for _, e := range tl.StaleMetExamples {
		t.Logf("  stale: %s", e)
	}
	if len(tl.LostIDs) > 0 {
		t.Logf("  lost (first %d): %v", len(tl.LostIDs), tl.LostIDs)
	}
}

// ---- monitor ----

// second is one line of the per-second monitor.
type second struct {
	T          float64          `json:"t"` // seconds since the monitor started
	Phase      string           `json:"phase"`
	Offered    int64            `json:"offered"` // publish calls this second
	Acked      int64            `json:"acked"`
	Failed     int64            `json:"publish_failed"`
	Skipped    int64            `json:"skipped"`
	Replies    map[string]int64 `json:"replies"` // received by the devices this second, by status
	GatewayUp  bool             `json:"gateway_up"`
	Queue      float64          `json:"queue"`
	Outbox     float64          `json:"outbox"`
	RSSMiB     float64          `json:"rss_mib"`
	Goroutines float64          `json:"goroutines"`
	// From the gateway process running this second (its counters start at 0
	// with each process): replies it dropped so far, request messages that
	// waited for a handler so far, replies to unjournaled requests in flight.
	Dropped      float64 `json:"replies_dropped"`
	IngressWaits float64 `json:"ingress_waits"`
	Owed         float64 `json:"unjournaled_replies_in_flight"`
}

// monitor logs one line a second and keeps the series.
type monitor struct {
	t     *testing.T
	f     *fleet
	gw    *gatewayProc
	phase atomic.Value // string
	stop  chan struct{}
	done  chan struct{}

	mu     sync.Mutex
	series []second
}

func startMonitor(t *testing.T, f *fleet, gw *gatewayProc) *monitor {
	m := &monitor{t: t, f: f, gw: gw, stop: make(chan struct{}), done: make(chan struct{})}
	m.phase.Store("start")
	go m.loop()
	t.Cleanup(m.close)
	return m
}

func (m *monitor) setPhase(p string) { m.phase.Store(p) }

func (m *monitor) close() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
}

func (m *monitor) loop() {
	defer close(m.done)
	t0 := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	prev := m.f.statusCounts()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		s := scrape(m.gw.metrics)
		m.gw.noteScrape(s)
		cur := m.f.statusCounts()
		sec := second{T: time.Since(t0).Seconds(), Phase: m.phase.Load().(string),
			Offered: m.f.attempts.Swap(0), Acked: m.f.acked.Swap(0), Failed: m.f.failed.Swap(0), Skipped: m.f.skipped.Load(),
			Replies: map[string]int64{}, GatewayUp: s.OK, Queue: s.Queue, Outbox: s.Outbox,
			RSSMiB: s.RSS / (1 << 20), Goroutines: s.Goroutines, IngressWaits: s.IngressWaits, Owed: s.Owed}
		for _, v := range s.Dropped {
			sec.Dropped += v
		}
		var parts []string
		for _, st := range protocol.Statuses() {
			if d := cur[st] - prev[st]; d != 0 {
				sec.Replies[string(st)] = d
				parts = append(parts, fmt.Sprintf("%s=%d", st, d))
			}
		}
		prev = cur
		m.mu.Lock()
		m.series = append(m.series, sec)
		m.mu.Unlock()
		gw := "gateway down"
		if s.OK {
			gw = fmt.Sprintf("queue=%.0f outbox=%.0f owed=%.0f rss=%.0fMiB goroutines=%.0f", s.Queue, s.Outbox, s.Owed, sec.RSSMiB, s.Goroutines)
		}
		m.t.Logf("t=%5.1fs %-9s offered=%d acked=%d failed=%d | replies %s | %s",
			sec.T, sec.Phase, sec.Offered, sec.Acked, sec.Failed, strings.Join(parts, " "), gw)
	}
}

func (m *monitor) seconds() []second {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]second(nil), m.series...)
}

// ---- summary ----

// writeSummary writes v as JSON to outDir/{test}.json and logs the path.
func writeSummary(t *testing.T, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Errorf("summary: %v", err)
		return
	}
	path := filepath.Join(outDir, t.Name()+".json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Errorf("summary: %v", err)
		return
	}
	t.Logf("summary written to %s", path)
}

// waitFor polls cond every interval until it holds or timeout passes.
func waitFor(timeout, interval time.Duration, cond func() bool) bool {
	end := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(interval)
	}
}

// The tally tells apart repeats that are byte-identical, repeats after a first
// reply the gateway did not journal (answered anew, excused), and repeats that
// disagree; the LOSS line reads the clients the broker's log says it dropped
// messages for. (Runs without a gateway or a broker.)
func TestAnalyseRepeatsAndBrokerLog(t *testing.T) {
	t0 := time.Now()
	ok := replyRec{Status: protocol.StatusOK, Class: 1, Model: "m", Hash: 1}
	shed := replyRec{Status: protocol.StatusDegraded, Reason: protocol.ReasonOverloadShed, Class: 2, Hash: 2}
	refused := replyRec{Status: protocol.StatusRejected, Reason: protocol.ReasonOverload, Class: -1, Hash: 3}
	expired := replyRec{Status: protocol.StatusExpired, Class: -1, Hash: 4}
	okAgain := ok
	okAgain.Hash = 5 // same status, class and model; other bytes
	other := replyRec{Status: protocol.StatusOK, Class: 3, Model: "m", Hash: 6}
	f := &fleet{reqs: map[string]*reqRec{}}
	for i, replies := range [][]replyRec{
		{ok, ok},        // byte-identical
		{refused, ok},   // answered anew after a refusal
		{shed, expired}, // disagreeing: an answer from the estimate is journaled
		{ok, other},     // disagreeing
		{ok, okAgain},   // agreeing, not byte-identical
		{expired},       // not repeated
		nil,             // lost
	} {
		r := &reqRec{ID: fmt.Sprint(i), SentAt: t0.Add(time.Duration(i)), Deadline: time.Second, replies: replies}
		r.state.Store(pubAcked)
		f.reqs[r.ID] = r
	}
	tl := analyse(f)
	if tl.RepeatedIDs != 5 || tl.RepeatsIdentical != 1 || tl.Reanswered != 1 || tl.RepeatsDisagree != 2 || tl.Lost != 1 {
		t.Errorf("repeated %d, identical %d, answered anew %d, disagreeing %d, lost %d; want 5, 1, 1, 2, 1",
			tl.RepeatedIDs, tl.RepeatsIdentical, tl.Reanswered, tl.RepeatsDisagree, tl.Lost)
	}
	if len(tl.Disagreements) != 2 || !strings.HasPrefix(tl.Disagreements[0], "2: degraded/overload_shed class=2") ||
		!strings.HasPrefix(tl.Disagreements[1], "3: ok/ class=1") ||
		len(tl.ReansweredExamples) != 1 || !strings.HasPrefix(tl.ReansweredExamples[0], "1: rejected/overload") {
		t.Errorf("examples: disagreements %q, answered anew %q", tl.Disagreements, tl.ReansweredExamples)
	}
	if tl.UtilityN != 0 {
		t.Errorf("utility over %d requests without labels", tl.UtilityN)
	}

	// Utility: true class 1 for every request (utility 1 right, 0.2 wrong, -0.5
	// with no answer); the replies arrive at sent_at + At.
	ss := sampleSet{labels: []int{0, 1}, app: &manifest.App{Utility: [][]float64{{1, 0.2, 0.2, 0.2}, {0.2, 1, 0.2, 0.2}},
		NoAnswerUtility: []float64{-0.5, -0.5}}}
	at := func(r replyRec, d time.Duration) replyRec { r.At = t0.Add(d); return r }
	f = &fleet{reqs: map[string]*reqRec{}, samples: ss}
	for i, c := range []struct {
		replies []replyRec
		want    float64
	}{
		{[]replyRec{at(ok, time.Second)}, 1},                        // right, at the deadline
		{[]replyRec{at(other, 100*time.Millisecond)}, 0.2},          // wrong, in time
		{[]replyRec{at(ok, 1500*time.Millisecond)}, -0.5 + 1.5*0.5}, // half the budget late: Penalty 1/2
		{[]replyRec{at(ok, 2*time.Second)}, -0.5},                   // at the hard stop
		{[]replyRec{at(refused, 0)}, -0.5},                          // refused
		{[]replyRec{at(expired, 0)}, -0.5},                          // expired
		{nil, -0.5},                                                 // no reply
	} {
		r := &reqRec{ID: fmt.Sprint(i), SentAt: t0, Deadline: time.Second, In: 1, replies: c.replies}
		r.state.Store(pubAcked)
		f.reqs[r.ID] = r
		if got := replyUtility(ss, 1, func() *replyRec {
			if len(c.replies) == 0 {
				return nil
			}
			return &c.replies[0]
		}(), t0, time.Second); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("reply %d: utility %v, want %v", i, got, c.want)
		}
	}
	if tl := analyse(f); tl.UtilityN != 7 || math.Abs(tl.Utility-(1+0.2+0.25-0.5*4)/7) > 1e-9 {
		t.Errorf("utility %v over %d requests, want %v over 7", tl.Utility, tl.UtilityN, (1+0.2+0.25-0.5*4)/7)
	}

	log := "1700000000: New client connected from 127.0.0.1:5 as sneakgate (p2, c0, k30).\n" +
		"1700000001: Outgoing messages are being dropped for client sneakgate.\n" +
		"1700000002: Outgoing messages are being dropped for client cam-03.\n" +
		"1700000003: Outgoing messages are being dropped for client sneakgate.\n"
	if got := brokerDroppingClients(log); !slices.Equal(got, []string{"cam-03", "sneakgate"}) {
		t.Errorf("brokerDroppingClients: %q, want cam-03 and sneakgate", got)
	}
}
