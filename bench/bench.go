// Package bench is sneakgate's end-to-end benchmark (`sneakgate bench`, `make
// bench-e2e`): in one run it starts a private Mosquitto, measures the same request
// payloads published through the broker alone (publisher to subscriber, the
// ceiling) and through the gateway (a separate `sneakgate serve` process on that
// broker), and reports the throughput of each path, their ratio, the CPU time per
// request of the broker, the gateway and the load generator (from
// /proc/PID/stat), and latency percentiles.
//
// # Basics
//
// Both paths get the same closed-loop load: Concurrency requests in flight,
// spread over Devices MQTT clients of this process (devices.Client), each request
// a real sample of the application's sample file encoded as JSON "input" or
// "input_b64", published at the chosen QoS. On the broker alone a subscriber in
// this process (one paho client, as the gateway is one client) receives the
// requests on the gateway's own filter {prefix}/req/+/+; a request completes when
// it arrives. Through the gateway a request completes when its reply arrives.
// Each path first gets Warmup requests that are not counted, then Requests
// requests (or Duration of load); the CPU times are the differences over the
// measured part only. Latency is from publish to receipt.
//
// With CPUProfile, after the measured part the gateway gets the same load for
// ProfileSeconds more while its CPU profile is fetched from its pprof endpoint
// (metrics.pprof, always on in the benchmark's configuration), so that profiling
// does not change the figures.
//
// # Caveats
//
//   - Broker, gateway and load generator share the machine; the load generator's
//     own CPU time is reported so that a saturated machine shows.
//   - CPU times have the 10 ms resolution of /proc/PID/stat.
//   - The broker runs with internal/mosquitto's defaults (no persistence), not
//     the shipped configs/mosquitto.conf.
//   - The gateway is the binary GatewayBinary (`sneakgate bench` passes itself),
//     started with gateway.DefaultConfig or GatewayConfig plus the benchmark's
//     overrides (gatewayConfig); its log and configuration are in the work
//     directory, kept with Keep.
package bench

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/devices"
	"github.com/sneakgate/sneakgate/internal/mosquitto"
	"github.com/sneakgate/sneakgate/protocol"
)

// Config configures a run. Flags fills one from command-line flags.
type Config struct {
	// App is the application ({Models}/{App}/manifest.yaml, or Manifest).
	App, Models, Manifest string
	// Policy is the gateway's scheduler.policy; Variant, if set, its
	// scheduler.fixed_variant for App (used by fifo and fixed-batch).
	Policy, Variant string
	// Encoding is "b64" (inputs as input_b64, the default) or "json" (a JSON
	// "input" array).
	Encoding string
	// QoS is the QoS of requests and of the subscriptions to them and to the
	// replies: 1 (default) or 0. The gateway publishes replies at QoS 1.
	QoS int
	// Devices is the number of MQTT clients publishing; Concurrency the number of
	// requests in flight over all of them.
	Devices, Concurrency int
	// Saturate measures each path at Concurrency, twice that, and so on up to
	// MaxConcurrency (default 512), and reports each path at the concurrency
	// where it answered most requests a second: its capacity, which a single
	// concurrency shows only when it is enough to keep the path busy (a
	// closed loop with too few requests in flight measures the path's latency,
	// by Little's law, not its throughput).
	Saturate       bool
	MaxConcurrency int
	// ScatterIDs gives requests ids in no order (a hash of the sequence number
	// before it), as devices choosing random ids (UUIDs) do, instead of ids in
	// increasing order.
	ScatterIDs bool
	// Requests is the number of measured requests per path, unless Duration is
	// set: then each path is measured for Duration. Warmup requests go first,
	// not counted.
	Requests int
	Duration time.Duration
	Warmup   int
	// Deadline is each request's budget (deadline_ms); generous by default so
	// that admission refuses nothing at the benchmark's concurrency.
	Deadline time.Duration
	// Prefix is the topic prefix.
	Prefix string
	// GatewayBinary is the sneakgate binary to start as the gateway;
	// GatewayConfig a configuration file to start from (default: the built-in
	// defaults); Library the ONNX Runtime library (default: the configuration's,
	// else $SNEAKGATE_ORT_LIB); ProfileCache the engine's profile cache (default:
	// a fresh one in the work directory).
	GatewayBinary, GatewayConfig, Library, ProfileCache string
	// CPUProfile, if set, is where the gateway's CPU profile goes, taken over
	// ProfileSeconds of the same load after the measured part.
	CPUProfile     string
	ProfileSeconds int
	// WorkDir holds the broker's and the gateway's files (default: a temporary
	// directory, removed unless Keep).
	WorkDir string
	Keep    bool
	// ReplyTimeout is how long a request may take before it counts unanswered.
	ReplyTimeout time.Duration
	// StartTimeout bounds the gateway's start-up (it profiles the variants).
	StartTimeout time.Duration
	// Progress receives progress lines (default os.Stderr).
	Progress io.Writer
}

// ErrConfig is wrapped by configuration errors from Run.
var ErrConfig = errors.New("bench: invalid configuration")

func (c *Config) defaults() error {
	if c.Models == "" {
		c.Models = "models"
	}
	if c.App == "" && c.Manifest == "" {
		c.App = "fashion"
	}
	if c.Encoding == "" {
		c.Encoding = "b64"
	}
	if c.Policy == "" {
		c.Policy = "fixed-batch"
	}
	if c.Devices == 0 {
		c.Devices = 8
	}
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
	if c.MaxConcurrency == 0 {
		c.MaxConcurrency = 512
	}
	if c.Requests == 0 {
		c.Requests = 10000
	}
	if c.Deadline == 0 {
		c.Deadline = time.Second
	}
	if c.Prefix == "" {
		c.Prefix = protocol.DefaultPrefix
	}
	if c.ProfileSeconds == 0 {
		c.ProfileSeconds = 5
	}
	if c.ReplyTimeout == 0 {
		c.ReplyTimeout = 30 * time.Second
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 2 * time.Minute
	}
	if c.Progress == nil {
		c.Progress = os.Stderr
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	switch {
	case c.GatewayBinary == "":
		return bad("the gateway binary is required")
	case c.Encoding != "b64" && c.Encoding != "json":
		return bad("encoding must be b64 or json, got %q", c.Encoding)
	case c.QoS != 0 && c.QoS != 1:
		return bad("qos must be 0 or 1, got %d", c.QoS)
	case c.Devices < 1 || c.Concurrency < 1:
		return bad("devices and concurrency must be positive")
	case c.Saturate && c.MaxConcurrency < c.Concurrency:
		return bad("max concurrency %d is below concurrency %d", c.MaxConcurrency, c.Concurrency)
	case c.Requests < 0 || c.Duration < 0 || c.Warmup < 0 || c.Deadline < 0 || c.ProfileSeconds < 0:
		return bad("requests, duration, warmup, deadline and profile seconds must not be negative")
	case !protocol.ValidDevice(deviceName(c.Devices)):
		return bad("too many devices: %d", c.Devices)
	}
	if c.Duration > 0 {
		c.Requests = 0 // each path is measured for Duration instead
	}
	return nil
}

func deviceName(i int) string { return fmt.Sprintf("bench-%04d", i) }

// levels returns the concurrencies each path is measured at: Concurrency, and
// with Saturate its doublings up to MaxConcurrency.
func (c *Config) levels() []int {
	out := []int{c.Concurrency}
	for n := 2 * c.Concurrency; c.Saturate && n <= c.MaxConcurrency; n *= 2 {
		out = append(out, n)
	}
	return out
}

// Result is a run's outcome.
type Result struct {
	Started time.Time `json:"started"`
	Host    Host      `json:"host"`
	Setup   Setup     `json:"setup"`
	// Broker is the broker alone (publisher to subscriber); Gateway the same load
	// through the gateway (publish to reply). With Config.Saturate each is the
	// path's phase of highest throughput in Saturation.
	Broker  Phase `json:"broker_alone"`
	Gateway Phase `json:"gateway"`
	// Ratio is Gateway.Throughput / Broker.Throughput.
	Ratio float64 `json:"ratio"`
	// Saturation holds every phase of a run with Config.Saturate, in the order
	// measured (concurrency rising).
	Saturation *Saturation `json:"saturation,omitempty"`
	// Profiled is the load during the CPU profile (with Config.CPUProfile), and
	// CPUProfile the profile's file.
	Profiled   *Phase `json:"profiled,omitempty"`
	CPUProfile string `json:"cpu_profile,omitempty"`
	// Inference is, per variant that ran, the gateway's latency correction at
	// the end of the measured phase (sneakgate_latency_correction_ratio: the
	// geometric mean of observed / profiled over about the last 20 batches,
	// each batch counting the same). Gateway.Inference is the ratio over the
	// whole measured phase, which is what issue 10's target is about.
	Inference map[string]float64 `json:"latency_correction_ratio,omitempty"`
	// Strays counts completions that matched no request in flight: repeated
	// deliveries, or replies after the reply timeout.
	Strays int `json:"strays"`
	// WorkDir is where the broker's and the gateway's files were (gone unless
	// kept).
	WorkDir string `json:"work_dir"`
}

// Saturation is each path's phases at rising concurrency.
type Saturation struct {
	Broker  []Phase `json:"broker_alone"`
	Gateway []Phase `json:"gateway"`
}

// Host describes the machine.
type Host struct {
	CPUs int `json:"cpus"`
	// LoadStart and LoadEnd are the 1-minute load averages at the start and the
	// end of the run (-1 if unknown): other work on the machine skews every
	// figure.
	LoadStart float64 `json:"load_start"`
	LoadEnd   float64 `json:"load_end"`
}

// Setup is what was measured.
type Setup struct {
	App          string `json:"app"`
	Policy       string `json:"policy"`
	Variant      string `json:"variant,omitempty"`
	Encoding     string `json:"encoding"`      // "input" or "input_b64"
	PayloadBytes int    `json:"payload_bytes"` // mean
	QoS          int    `json:"qos"`
	Devices      int    `json:"devices"`
	ScatterIDs   bool   `json:"scatter_ids,omitempty"`
	Concurrency  int    `json:"concurrency"`
	// MaxConcurrency is the highest concurrency measured with Config.Saturate.
	MaxConcurrency int     `json:"max_concurrency,omitempty"`
	Requests       int     `json:"requests,omitempty"`
	DurationS      float64 `json:"duration_s,omitempty"`
	Warmup         int     `json:"warmup"`
	DeadlineMS     int64   `json:"deadline_ms"`
	Gateway        string  `json:"gateway_binary"`
}

// Phase is the measured part of one path.
type Phase struct {
	// Concurrency is the number of requests kept in flight.
	Concurrency int `json:"concurrency"`
	// Sent requests were published; Completed arrived (at the subscriber, or as
	// replies); Unanswered did not within the reply timeout.
	Sent          int `json:"sent"`
	Completed     int `json:"completed"`
	PublishErrors int `json:"publish_errors"`
	Unanswered    int `json:"unanswered"`
	// Elapsed runs from the first publish to the last completion; Throughput is
	// Completed / Elapsed.
	Elapsed    time.Duration `json:"elapsed_ns"`
	Throughput float64       `json:"throughput_per_s"`
	// Latency is from publish to receipt.
	Latency devices.Percentiles `json:"latency"`
	// CPU per process over the phase.
	Broker  Usage  `json:"broker_cpu"`
	Gateway *Usage `json:"gateway_cpu,omitempty"`
	Client  Usage  `json:"client_cpu"`
	// ByStatus, ByModel and MeanBatch describe the gateway's replies.
	ByStatus  map[protocol.Status]int `json:"by_status,omitempty"`
	ByModel   map[string]int          `json:"by_model,omitempty"`
	MeanBatch float64                 `json:"mean_batch,omitempty"`
	// Queued and InGateway are the gateway's own times from its replies:
	// queue_ms (receipt to the batch's start: admission, the journal's commit
	// of the request and the wait for a batch) and total_ms (receipt to the
	// reply's making; the outbox commit and the hand-over to the broker come
	// after). The round trip less InGateway is the two transits through the
	// broker and the reply's outbox commit.
	Queued    *devices.Percentiles `json:"queue_ms,omitempty"`
	InGateway *devices.Percentiles `json:"total_ms,omitempty"`
	// Inference is, per variant that ran through the gateway, the time its
	// forward passes took over the phase divided by what its start-up profile
	// gives for passes of the same batch sizes (time-weighted: the increases
	// of sneakgate_infer_duration_seconds_sum and
	// sneakgate_infer_profiled_seconds_total). Issue 10 asks for at most
	// InferenceTarget.
	Inference map[string]float64 `json:"inference_ratio,omitempty"`
	// InferencePasses splits the same passes per variant: how many, and each's
	// wall time, the CPU time of the engine worker's thread in it and the
	// profile's time, on average.
	InferencePasses map[string]InferencePasses `json:"inference_passes,omitempty"`
}

// InferencePasses are a variant's forward passes through the gateway over a
// phase, with the mean per pass in microseconds of: their wall time (the
// gateway's sneakgate_infer_duration_seconds), the CPU time of the engine
// worker's thread in them (sneakgate_infer_cpu_seconds_total; 0 from a gateway
// without it), and the start-up profile's time of a pass of the same batch size
// (sneakgate_infer_profiled_seconds_total). WallUS / ProfiledUS is
// Phase.Inference; WallUS - CPUUS is how long a pass waited (for a core, or for
// the Go scheduler after the call into ONNX Runtime) instead of running.
type InferencePasses struct {
	Passes     int     `json:"passes"`
	WallUS     float64 `json:"wall_us"`
	CPUUS      float64 `json:"cpu_us"`
	ProfiledUS float64 `json:"profiled_us"`
}

// Usage is one process's CPU time over a phase.
type Usage struct {
	UserNS   int64 `json:"user_ns"`
	SystemNS int64 `json:"system_ns"`
	// PerRequestUS is (user + system) / completed requests, in microseconds;
	// Cores is (user + system) / elapsed.
	PerRequestUS float64 `json:"per_request_us"`
	Cores        float64 `json:"cores"`
}

func usage(d CPUTime, completed int, elapsed time.Duration) Usage {
	u := Usage{UserNS: int64(d.User), SystemNS: int64(d.System)}
	if completed > 0 {
		u.PerRequestUS = float64(d.Total()) / 1e3 / float64(completed)
	}
	if elapsed > 0 {
		u.Cores = float64(d.Total()) / float64(elapsed)
	}
	return u
}

// pids are the processes a phase measures: the broker's pid (0: this process)
// and, when the load goes through one, the gateway, whose CPU time is read
// too and whose forward passes are compared with its profile over the phase.
type pids struct {
	broker int
	gw     *gatewayProc
}

// measureAll measures a path at each of c's levels of concurrency and returns
// every phase and the one of highest throughput.
func (c *Config) measureAll(ctx context.Context, l *loader, ps pids, name string, logf func(string, ...any)) (all []Phase, best Phase, err error) {
	for _, n := range c.levels() {
		logf("%s: %s", name, c.describeLoad(n))
		p, err := c.measure(ctx, l, ps, n)
		if err != nil {
			return all, best, err
		}
		logf("%s: %.0f/s", name, p.Throughput)
		all = append(all, p)
		if p.Throughput > best.Throughput || len(all) == 1 {
			best = p
		}
	}
	return all, best, nil
}

// measure runs the load of a phase (warm-up, then measured) with concurrency
// requests in flight and reads the CPU times around the measured part.
func (c *Config) measure(ctx context.Context, l *loader, ps pids, concurrency int) (Phase, error) {
	l.workers = concurrency
	if c.Warmup > 0 {
		w := l.run(ctx, c.Warmup, nil)
		if w.completed == 0 && ctx.Err() == nil {
			return Phase{}, fmt.Errorf("bench: none of %d warm-up requests completed (%d publish errors)", w.sent, w.publishErrors)
		}
	}
	var stop chan struct{}
	if c.Duration > 0 {
		stop = make(chan struct{})
		t := time.AfterFunc(c.Duration, func() { close(stop) })
		defer t.Stop()
	}
	read := func() (b, g, s CPUTime, err error) {
		var e1, e2, e3 error
		b, e1 = ReadCPU(ps.broker)
		if ps.gw != nil {
			g, e2 = ReadCPU(ps.gw.pid())
		}
		s, e3 = ReadCPU(0)
		return b, g, s, errors.Join(e1, e2, e3)
	}
	var inf0 map[string]inferTotals
	if ps.gw != nil {
		var err error
		if inf0, err = ps.gw.inference(ctx); err != nil {
			return Phase{}, err
		}
	}
	b0, g0, s0, err := read()
	if err != nil {
		return Phase{}, err
	}
	ph := l.run(ctx, c.Requests, stop)
	b1, g1, s1, err := read()
	if err != nil {
		return Phase{}, err
	}
	p := ph.summary()
	p.Concurrency = concurrency
	if ps.gw != nil {
		inf1, err := ps.gw.inference(ctx)
		if err != nil {
			return Phase{}, err
		}
		p.Inference = inferenceRatios(inf0, inf1)
		p.InferencePasses = inferencePasses(inf0, inf1)
	}
	p.Broker = usage(b1.Sub(b0), p.Completed, p.Elapsed)
	p.Client = usage(s1.Sub(s0), p.Completed, p.Elapsed)
	if ps.gw != nil {
		u := usage(g1.Sub(g0), p.Completed, p.Elapsed)
		p.Gateway = &u
	}
	return p, ctx.Err()
}

// summary returns the phase's figures, without CPU times.
func (ph *phaseLoad) summary() Phase {
	p := Phase{Sent: ph.sent, Completed: ph.completed, PublishErrors: ph.publishErrors, Unanswered: ph.unanswered,
		Elapsed: ph.elapsed, Latency: devices.LatencyPercentiles(ph.latency)}
	if ph.elapsed > 0 {
		p.Throughput = float64(ph.completed) / ph.elapsed.Seconds()
	}
	if len(ph.byStatus) > 0 {
		p.ByStatus, p.ByModel = ph.byStatus, ph.byModel
		p.MeanBatch = float64(ph.batchSum) / float64(max(ph.completed, 1))
	}
	if len(ph.inGateway) > 0 {
		q, t := devices.LatencyPercentiles(ph.queued), devices.LatencyPercentiles(ph.inGateway)
		p.Queued, p.InGateway = &q, &t
	}
	return p
}

// Run runs the benchmark. It returns an error wrapping ErrConfig for a bad
// configuration, or the error that stopped it.
func Run(ctx context.Context, c Config) (res Result, err error) {
	if err := c.defaults(); err != nil {
		return Result{}, err
	}
	manifestPath := c.Manifest
	if manifestPath == "" {
		manifestPath = filepath.Join(c.Models, c.App, "manifest.yaml")
	}
	manifestPath, err = filepath.Abs(manifestPath)
	if err != nil {
		return Result{}, err
	}
	app, set, err := (&devices.SimConfig{Manifest: manifestPath}).LoadSamples()
	if err != nil {
		return Result{}, err
	}
	c.App = app.Name
	bodies := requestBodies(set.N, set.Row, protocol.DeadlineMS(c.Deadline), c.Encoding == "b64")

	res = Result{Started: time.Now(), Host: Host{CPUs: runtime.NumCPU(), LoadStart: loadAvg()}}
	res.Setup = Setup{App: app.Name, Policy: c.Policy, Encoding: "input", QoS: c.QoS,
		Devices: c.Devices, ScatterIDs: c.ScatterIDs, Concurrency: c.Concurrency, Requests: c.Requests, DurationS: c.Duration.Seconds(),
		Warmup: c.Warmup, DeadlineMS: protocol.DeadlineMS(c.Deadline), Gateway: c.GatewayBinary}
	if c.Encoding == "b64" {
		res.Setup.Encoding = "input_b64"
	}
	if c.Policy == "fifo" || c.Policy == "fixed-batch" {
		res.Setup.Variant = c.Variant
	}
	levels := c.levels()
	if c.Saturate {
		res.Setup.MaxConcurrency = levels[len(levels)-1]
	}

	dir := c.WorkDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "sneakgate-bench-"); err != nil {
			return res, err
		}
		if !c.Keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	res.WorkDir = dir
	logf := func(format string, args ...any) { fmt.Fprintf(c.Progress, "bench: "+format+"\n", args...) }

	// The broker.
	bdir := filepath.Join(dir, "broker")
	if err := os.MkdirAll(bdir, 0o755); err != nil {
		return res, err
	}
	broker, err := mosquitto.New(bdir, func(port int) string { return mosquitto.Config(port, bdir, mosquitto.Options{}) })
	if err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}
	if err := broker.Start(); err != nil {
		return res, fmt.Errorf("bench: %w\n%s", err, broker.Log())
	}
	defer broker.Stop()
	logf("mosquitto on %s (pid %d)", broker.Addr(), broker.Pid())

	clients, err := dial(ctx, &c, broker.URL())
	if err != nil {
		return res, err
	}
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	var rid [3]byte
	_, _ = crand.Read(rid[:]) // never fails
	l := newLoader(clients, app.Name, c.Concurrency, c.ReplyTimeout, bodies, "bench"+hex.EncodeToString(rid[:]))
	l.scatter = c.ScatterIDs
	res.Setup.PayloadBytes = l.meanPayload()

	// The broker alone.
	sub, err := subscribe(&c, broker.URL(), l)
	if err != nil {
		return res, err
	}
	var sat Saturation
	sat.Broker, res.Broker, err = c.measureAll(ctx, l, pids{broker: broker.Pid()}, "broker alone", logf)
	sub.Disconnect(100)
	if err != nil {
		return res, err
	}

	// The gateway.
	gdir := filepath.Join(dir, "gateway")
	if err := os.MkdirAll(gdir, 0o755); err != nil {
		return res, err
	}
	port, err := mosquitto.FreePort()
	if err != nil {
		return res, err
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", port)
	gcfg, err := gatewayConfig(&c, manifestPath, broker.URL(), gdir, metrics)
	if err != nil {
		return res, err
	}
	cfgPath := filepath.Join(gdir, "sneakgate.yaml")
	if err := writeConfig(gcfg, cfgPath); err != nil {
		return res, err
	}
	logf("starting the gateway (%s, policy %s; it profiles the variants first)", c.GatewayBinary, c.Policy)
	gw, err := startGateway(ctx, c.GatewayBinary, cfgPath, filepath.Join(gdir, "gateway.log"), metrics, c.StartTimeout)
	if err != nil {
		return res, err
	}
	stopCollect := make(chan struct{})
	var collectors sync.WaitGroup
	for _, cl := range clients {
		collectors.Add(1)
		go func() { defer collectors.Done(); l.collect(cl, stopCollect) }()
	}
	defer func() {
		close(stopCollect)
		collectors.Wait()
	}()
	gwStopped := false
	defer func() {
		if !gwStopped {
			_ = gw.stop()
		}
	}()
	logf("the gateway's pid: %d", gw.pid())
	sat.Gateway, res.Gateway, err = c.measureAll(ctx, l, pids{broker: broker.Pid(), gw: gw}, "through the gateway", logf)
	if err != nil {
		return res, err
	}
	if c.Saturate {
		res.Saturation = &sat
	}
	if res.Inference, err = gw.correction(ctx); err != nil {
		logf("latency correction not read: %v", err)
	}
	if res.Broker.Throughput > 0 {
		res.Ratio = res.Gateway.Throughput / res.Broker.Throughput
	}
	if c.CPUProfile != "" {
		logf("CPU profile of the gateway over %d s of the same load, %d in flight", c.ProfileSeconds, res.Gateway.Concurrency)
		l.workers = res.Gateway.Concurrency
		p, err := profile(ctx, &c, l, gw)
		if err != nil {
			return res, err
		}
		res.Profiled, res.CPUProfile = &p, c.CPUProfile
	}
	gwStopped = true
	if err := gw.stop(); err != nil {
		return res, err
	}
	res.Host.LoadEnd = loadAvg()
	l.mu.Lock()
	res.Strays = l.strays
	l.mu.Unlock()
	return res, nil
}

// profile runs the load while the gateway's CPU profile is taken.
func profile(ctx context.Context, c *Config, l *loader, gw *gatewayProc) (Phase, error) {
	stop := make(chan struct{})
	var perr error
	go func() {
		defer close(stop)
		perr = gw.cpuProfile(ctx, c.ProfileSeconds, c.CPUProfile)
	}()
	ph := l.run(ctx, 0, stop)
	<-stop
	if perr != nil {
		return Phase{}, perr
	}
	p := ph.summary()
	p.Concurrency = l.workers
	return p, ctx.Err()
}

// requestBodies returns up to 1024 payloads, one per sample (n samples, row i's
// values from row), each with an empty id to splice one into.
func requestBodies(n int, row func(int) []float32, deadlineMS int64, b64 bool) [][]byte {
	out := make([][]byte, min(n, 1024))
	for i := range out {
		p := protocol.Payload{DeadlineMS: deadlineMS, Input: row(i), B64: b64}
		out[i] = p.Marshal()
	}
	return out
}

func (c *Config) describeLoad(concurrency int) string {
	what := fmt.Sprintf("%d requests", c.Requests)
	if c.Duration > 0 {
		what = c.Duration.String()
	}
	return fmt.Sprintf("%d warm-up requests, then %s; %d in flight over %d devices, QoS %d", c.Warmup, what,
		concurrency, c.Devices, c.QoS)
}

// dial connects the devices.
func dial(ctx context.Context, c *Config, url string) ([]*devices.Client, error) {
	return devices.DialAll(ctx, c.Devices, func(i int) devices.ClientOptions {
		return devices.ClientOptions{Broker: url, Prefix: c.Prefix, Device: deviceName(i), QoS0: c.QoS == 0,
			Pipeline: slices.Max(c.levels()) + 64}
	})
}

// subscribe connects the broker-alone subscriber: one client on the gateway's
// request filter that completes each request it receives.
func subscribe(c *Config, url string, l *loader) (mqtt.Client, error) {
	const timeout = 10 * time.Second
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(l.runID + "-sub").SetCleanSession(true).
		SetAutoReconnect(false).SetConnectTimeout(timeout)
	sc := mqtt.NewClient(o)
	if err := waitToken(sc.Connect(), timeout); err != nil {
		return nil, fmt.Errorf("bench: subscriber: connect to %s: %w", url, err)
	}
	err := waitToken(sc.Subscribe(protocol.RequestFilter(c.Prefix), byte(c.QoS), func(_ mqtt.Client, m mqtt.Message) {
		l.completeID(payloadID(m.Payload()), time.Now(), nil)
	}), timeout)
	if err != nil {
		sc.Disconnect(0)
		return nil, fmt.Errorf("bench: subscriber: subscribe: %w", err)
	}
	return sc, nil
}

func waitToken(t mqtt.Token, timeout time.Duration) error {
	if !t.WaitTimeout(timeout) {
		return fmt.Errorf("timed out after %v", timeout)
	}
	return t.Error()
}
