package eval

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/devices"
	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/gateway"
	"github.com/sneakgate/sneakgate/internal/mosquitto"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

// LiveConfig is one live comparison: the real gateway (in-process, its embedded
// MQTT broker or an external one, the real engine, journal and estimator) driven by
// the device simulator over MQTT, against the simulator's prediction for the same
// point.
type LiveConfig struct {
	// Manifest is the application's manifest.yaml.
	Manifest string
	Workload string
	Policy   string
	// Rate is the request rate (per second) and Deadline each request's budget.
	Rate     float64
	Deadline time.Duration
	// Duration of the live run; Devices simulated devices; Seed.
	Duration time.Duration
	Devices  int
	Seed     uint64
	// Broker is an external broker URL; "mosquitto" (or "") starts a private
	// Mosquitto on a free local port (the gateway's embedded broker when none
	// is installed); "embedded" is the gateway's embedded broker on a free
	// local port. The embedded broker runs in this process, beside the
	// gateway, and at a few thousand requests per second takes the CPU the
	// gateway needs (docs/evaluation-log.md, "Live at loads 0.5-5").
	Broker string
	// DevicesExe, if not empty, is a sneakgate binary: the devices then run
	// in a child process (DevicesExe devsim ... -json FILE) rather than in
	// this one, as real devices would, off the gateway's CPU threads.
	DevicesExe string
	// Library is the ONNX Runtime library; Dir a scratch directory (journal,
	// profile cache shared by the gateway and the prediction).
	Library, Dir string
	// NoLatencyCorrection runs the gateway with scheduler.latency_correction off.
	NoLatencyCorrection bool
	// NoSentAt has the devices send no sent_at: deadlines then run from the
	// gateway's receipt, and time queued in the broker is not counted.
	NoSentAt bool
	// MaxWait, DegradeRefused and PriceShed are the gateway's
	// admission.max_wait (0: off), admission.degrade_refused and
	// admission.price_shed, simulated alike.
	MaxWait                   float64
	DegradeRefused, PriceShed bool
	// Pipeline is the gateway's scheduler.pipeline, simulated alike.
	Pipeline bool
	// LabelShift is the gateway's apps[].label_shift, simulated alike
	// (GatewayModel.LabelShift).
	LabelShift bool
	// Options are the scheduler options of both; MaxQueue the admission bound.
	Options  scheduler.Options
	MaxQueue int
	// Jitter is the simulator's latency jitter.
	Jitter float64
	// Diag, if not empty, is a directory that receives, per run, a CPU profile
	// of this process while the devices send (NAME.cpu.pprof: the in-process
	// gateway, and the devices when they run in this process) and the
	// gateway's metrics at the end of the run in Prometheus' text format
	// (NAME.prom), NAME being app-workload-policy-rate.
	Diag string
}

// devicesProcess runs the device simulator dc describes as `exe devsim` in a
// child process and reads its report (written to out).
func devicesProcess(ctx context.Context, exe string, dc devices.SimConfig, out string) (devices.Report, error) {
	var rep devices.Report
	args := []string{"devsim", "-broker", dc.Broker, "-manifest", dc.Manifest, "-devices", strconv.Itoa(dc.Devices),
		"-rate", strconv.FormatFloat(dc.Rate, 'g', -1, 64), "-seed", strconv.FormatUint(dc.Seed, 10),
		"-deadline", dc.Deadline.String(), "-duration", dc.Duration.String(), "-workload", dc.Workload,
		"-quiet", "-json", out}
	if dc.B64 {
		args = append(args, "-b64")
	}
	if dc.SentAt {
		args = append(args, "-sent-at")
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return rep, fmt.Errorf("%s %s: %w: %s", exe, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return rep, err
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return rep, fmt.Errorf("%s: %w", out, err)
	}
	return rep, nil
}

// LiveResult compares a live run with the simulator's prediction.
type LiveResult struct {
	App      string  `json:"app"`
	Workload string  `json:"workload"`
	Policy   string  `json:"policy"`
	Rate     float64 `json:"rate_per_s"`
	// Seed drove the run's arrivals and samples (live and simulated alike).
	Seed uint64 `json:"seed"`
	// Load is Rate as a fraction of the simulator's capacity for the app.
	Load       float64        `json:"load"`
	DeadlineMS float64        `json:"deadline_ms"`
	Live       devices.Report `json:"live"`
	Sim        Metrics        `json:"sim"`
	// Slowdown is how much longer the live forward passes took than their
	// profile (the gateway's latency correction at the end of the run, averaged
	// over the variants it ran, weighted by their forward passes); SimSlowed is
	// the prediction with the engine slowed by it (Point.EngineSlowdown): what
	// the simulator says once told how much the CPU was shared.
	Slowdown  float64 `json:"slowdown"`
	SimSlowed Metrics `json:"sim_slowed"`
	// TransitP50MS and TransitP90MS are the live requests' time from their
	// send to the gateway's receipt (sneakgate_request_transit_seconds),
	// EgressMS the answers' mean time from the loop to the broker
	// (sneakgate_reply_egress_seconds); SimTransit is the prediction with each
	// simulated request's transit drawn from that distribution (Point.Transit),
	// the egress delay in admission (GatewayModel.EgressDelay) and the engine
	// slowed too: what the simulator says once told what happened outside the
	// scheduler.
	TransitP50MS float64 `json:"transit_p50_ms"`
	TransitP90MS float64 `json:"transit_p90_ms"`
	EgressMS     float64 `json:"egress_ms"`
	SimTransit   Metrics `json:"sim_transit"`
	// Checks are the compared quantities, each with its tolerance and verdict.
	Checks []LiveCheck `json:"checks"`
	// Holds is true when every check holds.
	Holds bool `json:"holds"`
}

// LiveCheck is one compared quantity: a share of the requests sent.
type LiveCheck struct {
	Name      string  `json:"name"`
	Live      float64 `json:"live"`
	Sim       float64 `json:"sim"`
	Tolerance float64 `json:"tolerance"`
	Holds     bool    `json:"holds"`
}

// Live runs one live point and its prediction. The gateway measures the variant
// profiles at start-up into Dir's profile cache; the prediction is simulated with
// exactly those profiles, the same estimator (the manifest's first), policy,
// options, rate, deadline, workload and number of requests, with exact
// correctness (every variant run on every sample). Live and simulated requests are
// different draws from the same workload, so shares are compared with a tolerance
// of max(abs, 3 standard errors) (see compare).
func Live(ctx context.Context, c LiveConfig, progress io.Writer) (LiveResult, error) {
	res := LiveResult{Workload: c.Workload, Policy: c.Policy, Rate: c.Rate, Seed: c.Seed, DeadlineMS: float64(c.Deadline) / 1e6}
	cfg := gateway.DefaultConfig()
	cfg.Log.Level = "warn"
	cfg.MQTT.ClientID = "sneakgate-eval-live"
	run := filepath.Join(c.Dir, fmt.Sprintf("run-%d", time.Now().UnixNano()))
	broker := c.Broker
	if broker == "" || broker == "mosquitto" {
		dir := filepath.Join(run, "mosquitto")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return res, err
		}
		b, err := mosquitto.New(dir, func(port int) string { return mosquitto.Config(port, dir, mosquitto.Options{}) })
		if err == nil {
			err = b.Start()
		}
		switch {
		case err == nil:
			defer b.Stop()
			broker = b.URL()
		case errors.Is(err, mosquitto.ErrNotFound):
			fmt.Fprintf(progress, "live: %v; using the gateway's embedded broker\n", err)
			broker = "embedded"
		default:
			return res, fmt.Errorf("eval: live broker: %w", err)
		}
	}
	if broker == "embedded" {
		addr, err := freePort()
		if err != nil {
			return res, err
		}
		cfg.MQTT.Embedded.Enabled, cfg.MQTT.Embedded.Listen = true, addr
		broker = "tcp://" + addr
	}
	cfg.MQTT.Broker = broker
	cfg.Store.Path = filepath.Join(run, "journal.db")
	cfg.Engine.Library = c.Library
	cfg.Engine.ProfileCache = filepath.Join(c.Dir, "profiles")
	cfg.Engine.ProfileRuns = 15
	cfg.Scheduler.Policy = c.Policy
	if c.Policy == PolicyPeek {
		// The gateway's sneakpeek with scheduler.peek: -peek's variants,
		// else -cascade-first's (as the simulator's sneakpeek-peek).
		cfg.Scheduler.Policy = gateway.PolicyPeeks
		cfg.Scheduler.Peek = map[string]string{}
		for app, v := range c.Options.CascadeFirst {
			cfg.Scheduler.Peek[app] = v
		}
		for app, v := range c.Options.Peek {
			cfg.Scheduler.Peek[app] = v
		}
		if len(cfg.Scheduler.Peek) == 0 {
			return res, fmt.Errorf("eval: live %s needs -peek app=variant (or -cascade-first)", PolicyPeek)
		}
	}
	o := c.Options
	d := scheduler.DefaultOptions()
	cfg.Scheduler.MaxBatch = cmp0(o.MaxBatch, d.MaxBatch)
	cfg.Scheduler.Window = cmp0(o.Window, d.Window)
	cfg.Scheduler.MaxQueueDelay = d.MaxQueueDelay
	cfg.Scheduler.Shrink = o.Shrink // the same valuation as the simulated point
	cfg.Scheduler.PriceHorizon = o.PriceHorizon
	cfg.Scheduler.EstimateAnswers = o.EstimateAnswers
	cfg.Scheduler.PlanAhead = o.PlanAhead
	cfg.Scheduler.CascadeFirst = o.CascadeFirst
	cfg.Scheduler.LatencyCorrection = !c.NoLatencyCorrection
	cfg.Scheduler.Pipeline = c.Pipeline
	if c.MaxQueue > 0 {
		cfg.Admission.MaxQueue = c.MaxQueue
	}
	cfg.Admission.MaxWait, cfg.Admission.DegradeRefused, cfg.Admission.PriceShed = c.MaxWait, c.DegradeRefused, c.PriceShed
	cfg.Metrics.Listen = ""
	cfg.Apps = []gateway.AppConfig{{Manifest: c.Manifest, LabelShift: &c.LabelShift}}
	if err := cfg.Validate(); err != nil {
		return res, fmt.Errorf("eval: live config: %w", err)
	}
	fmt.Fprintf(progress, "live: starting the gateway (%s, broker %s; profiling variants)...\n", c.Policy, cfg.MQTT.Broker)
	g, err := gateway.New(ctx, gateway.Options{Config: &cfg, Logger: zerolog.New(progress).Level(zerolog.WarnLevel)})
	if err != nil {
		return res, err
	}
	gctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- g.Run(gctx) }()
	fmt.Fprintf(progress, "live: driving %s/%s at %.0f req/s, deadline %v, for %v...\n", filepath.Base(filepath.Dir(c.Manifest)),
		c.Workload, c.Rate, c.Deadline, c.Duration)
	dc := devices.SimConfig{Broker: cfg.MQTT.Broker, Manifest: c.Manifest,
		Devices: c.Devices, Rate: c.Rate, Seed: c.Seed, Deadline: c.Deadline, Duration: c.Duration,
		Workload: c.Workload, Quiet: true, Progress: io.Discard, Out: io.Discard, B64: true, SentAt: !c.NoSentAt}
	var rep devices.Report
	var simErr error
	name := fmt.Sprintf("%s-%s-%s-%.0f", filepath.Base(filepath.Dir(c.Manifest)), c.Workload, c.Policy, c.Rate)
	stopProfile, err := startDiagProfile(c.Diag, name)
	if err != nil {
		stop()
		<-done
		return res, err
	}
	if c.DevicesExe != "" {
		rep, simErr = devicesProcess(ctx, c.DevicesExe, dc, filepath.Join(run, "devices.json"))
	} else {
		rep, simErr = devices.Simulate(ctx, dc)
	}
	stopProfile()
	stop()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return res, fmt.Errorf("eval: live gateway: %w", err)
	}
	if err := writeDiagMetrics(c.Diag, name, g.Registry()); err != nil {
		return res, err
	}
	if simErr != nil {
		return res, fmt.Errorf("eval: live devices: %w", simErr)
	}
	res.Live = rep
	res.App = rep.App
	res.Slowdown = measuredSlowdown(g.Registry(), rep.App)

	// The prediction, with the profiles the gateway measured.
	prof, err := readProfileCache(cfg.Engine.ProfileCache)
	if err != nil {
		return res, err
	}
	eng, err := engine.New(engine.Options{LibraryPath: c.Library, IntraOpThreads: 1, BatchSizes: batchSizes(cfg.Scheduler.MaxBatch)})
	if err != nil {
		return res, fmt.Errorf("eval: %w", err)
	}
	defer eng.Close()
	a, err := LoadApp(ctx, c.Manifest, LoadOptions{Engine: eng, Profiles: prof, MaxBatch: cfg.Scheduler.MaxBatch,
		CascadeFirst: c.Options.CascadeFirst, Peek: c.Options.Peek})
	if err != nil {
		return res, err
	}
	w, err := a.Workload(c.Workload)
	if err != nil {
		return res, err
	}
	res.Load = c.Rate / Capacity(a.Sched, o)
	pt := Point{App: a, Workload: w, Policy: c.Policy, Options: o, Load: res.Load, Deadline: c.Deadline,
		Requests: max(rep.Sent, 1), Seed: c.Seed, GatewayModel: GatewayModel{Jitter: c.Jitter,
			MaxQueue: cfg.Admission.MaxQueue, MaxWait: cfg.Admission.MaxWait, MeasuredWait: true,
			DegradeRefused: cfg.Admission.DegradeRefused, PriceAdmission: cfg.Admission.PriceShed, Pipeline: c.Pipeline, LabelShift: c.LabelShift,
			// The gateway's own time as the sweep models it; its policies plan with
			// the engine's (corrected) profile alone.
			GatewayCost: DefaultGatewayCostUS * time.Microsecond, VerdictCost: DefaultVerdictCostUS * time.Microsecond,
			IngressDelay: time.Duration(DefaultIngressMS * float64(time.Millisecond))}}
	m, err := Simulate(pt, nil)
	if err != nil {
		return res, err
	}
	res.Sim = m
	res.Checks, res.Holds = compare(rep, m)
	if res.Slowdown > 1 {
		pt.EngineSlowdown = res.Slowdown
		if res.SimSlowed, err = Simulate(pt, nil); err != nil {
			return res, err
		}
	} else {
		res.SimSlowed = m
	}
	res.SimTransit = res.SimSlowed
	if tr := transitSample(g.Registry(), rep.App, 1000); len(tr) > 0 {
		res.TransitP50MS, res.TransitP90MS = float64(tr[len(tr)/2])/1e6, float64(tr[len(tr)*9/10])/1e6
		pt.Transit = tr
		res.EgressMS = meanHistogram(g.Registry(), "sneakgate_reply_egress_seconds") * 1e3
		pt.EgressDelay = time.Duration(res.EgressMS * float64(time.Millisecond))
		if res.SimTransit, err = Simulate(pt, nil); err != nil {
			return res, err
		}
	}
	return res, nil
}

// meanHistogram is the mean of the histogram name (summed over its label
// values), 0 when it has no observation.
func meanHistogram(reg prometheus.Gatherer, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetHistogram().GetSampleSum()
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// transitSample is n evenly spaced quantiles of app's
// sneakgate_request_transit_seconds, each interpolated linearly within its
// bucket (the first from 0, the last open bucket taken as its lower bound); nil
// when it has no observation.
func transitSample(reg prometheus.Gatherer, app string, n int) []time.Duration {
	mfs, err := reg.Gather()
	if err != nil {
		return nil
	}
	for _, mf := range mfs {
		if mf.GetName() != "sneakgate_request_transit_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			ok := false
			for _, lp := range m.GetLabel() {
				ok = ok || lp.GetName() == "app" && lp.GetValue() == app
			}
			if h := m.GetHistogram(); ok && h.GetSampleCount() > 0 {
				return histogramQuantiles(h, n)
			}
		}
	}
	return nil
}

// histogramQuantiles is transitSample's interpolation.
func histogramQuantiles(h *dto.Histogram, n int) []time.Duration {
	total := float64(h.GetSampleCount())
	out := make([]time.Duration, n)
	bs := h.GetBucket()
	for i := range out {
		target := (float64(i) + 0.5) / float64(n) * total
		lo, prev := 0.0, 0.0
		v := 0.0
		found := false
		for _, b := range bs {
			c := float64(b.GetCumulativeCount())
			if c >= target && c > prev {
				v = lo + (b.GetUpperBound()-lo)*(target-prev)/(c-prev)
				found = true
				break
			}
			lo, prev = b.GetUpperBound(), c
		}
		if !found {
			v = lo // beyond the last bucket
		}
		out[i] = time.Duration(v * float64(time.Second))
	}
	return out
}

// startDiagProfile starts a CPU profile into dir/name.cpu.pprof and returns
// what stops it; with no dir it does nothing.
func startDiagProfile(dir, name string) (func(), error) {
	if dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("eval: live diagnostics: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, name+".cpu.pprof"))
	if err != nil {
		return nil, fmt.Errorf("eval: live diagnostics: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("eval: live diagnostics: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// writeDiagMetrics writes reg's metrics to dir/name.prom in Prometheus' text
// format; with no dir it does nothing.
func writeDiagMetrics(dir, name string, reg prometheus.Gatherer) error {
	if dir == "" {
		return nil
	}
	mfs, err := reg.Gather()
	if err != nil {
		return fmt.Errorf("eval: live diagnostics: %w", err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			return fmt.Errorf("eval: live diagnostics: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, name+".prom"), b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("eval: live diagnostics: %w", err)
	}
	return nil
}

// measuredSlowdown is app's latency correction at the end of a live run
// (sneakgate_latency_correction_ratio), averaged over its variants weighted by
// the forward passes each ran (sneakgate_batch_size's count); 0 when none ran.
func measuredSlowdown(reg prometheus.Gatherer, app string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	variant := func(m *dto.Metric) (string, bool) {
		var a, v string
		for _, lp := range m.GetLabel() {
			switch lp.GetName() {
			case "app":
				a = lp.GetValue()
			case "variant":
				v = lp.GetValue()
			}
		}
		return v, a == app
	}
	factor, passes := map[string]float64{}, map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v, ok := variant(m)
			if !ok {
				continue
			}
			switch mf.GetName() {
			case "sneakgate_latency_correction_ratio":
				factor[v] = m.GetGauge().GetValue()
			case "sneakgate_batch_size":
				passes[v] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	var sum, n float64
	for v, f := range factor {
		sum += f * passes[v]
		n += passes[v]
	}
	if n == 0 {
		return 0
	}
	return sum / n
}

// compare lists the compared quantities. Each tolerance is max(abs, 3 standard
// errors of the difference of two independent shares over n requests each), abs
// being 3 points for accuracy and mean utility and 5 for the status shares (which depend on timing the
// simulator does not model: MQTT, journal and estimator time).
func compare(r devices.Report, m Metrics) ([]LiveCheck, bool) {
	n := float64(max(r.Sent, 1))
	share := func(s protocol.Status) float64 { return float64(r.ByStatus[s]) / n }
	sm := float64(max(m.Requests, 1))
	cs := []LiveCheck{
		{Name: "accuracy", Live: r.AccuracyAll, Sim: m.Accuracy, Tolerance: 0.03},
		// The utility the scheduler maximises; its spread is approximated by a
		// share's (exact for a 0/1 utility matrix).
		{Name: "utility", Live: r.Utility, Sim: m.Utility, Tolerance: 0.03},
		{Name: "ok", Live: share(protocol.StatusOK), Sim: float64(m.OK) / sm, Tolerance: 0.05},
		{Name: "late", Live: share(protocol.StatusLate), Sim: float64(m.Late) / sm, Tolerance: 0.05},
		{Name: "degraded", Live: share(protocol.StatusDegraded), Sim: float64(m.Degraded) / sm, Tolerance: 0.05},
		{Name: "expired", Live: share(protocol.StatusExpired), Sim: float64(m.Expired) / sm, Tolerance: 0.05},
		// Unanswered includes the requests whose reply came but was unusable.
		{Name: "rejected+error+unanswered", Live: (share(protocol.StatusRejected) + share(protocol.StatusError) +
			float64(r.Unanswered+r.Unusable)/n), Sim: float64(m.Rejected) / sm, Tolerance: 0.05},
	}
	all := true
	for i := range cs {
		c := &cs[i]
		p := min(max((c.Live+c.Sim)/2, 0), 1)
		se := math.Sqrt(max(p*(1-p), 0) * (1/n + 1/sm))
		c.Tolerance = max(c.Tolerance, 3*se)
		c.Holds = math.Abs(c.Live-c.Sim) <= c.Tolerance
		all = all && c.Holds
	}
	return cs, all
}

// LiveSummary is one live point (app, workload, deadline, rate, policy) over
// its seeds: live and simulated utility, their paired difference, and the
// paired difference of live utility from the reference policy's run of the
// same seed.
type LiveSummary struct {
	App, Workload, Policy string
	Rate, Load            float64 // Load: the mean over the runs
	DeadlineMS            float64
	Runs                  int
	Live, LiveCI          float64
	Sim                   float64
	LiveSim, LiveSimCI    float64 // live - sim
	// VsRef and VsRefCI: live utility - the reference policy's, paired by seed
	// (Pairs pairs; none for the reference itself or without its runs).
	VsRef, VsRefCI float64
	Pairs          int
}

// SummarizeLive groups live results by point and summarises them against ref.
func SummarizeLive(rs []LiveResult, ref string) []LiveSummary {
	type key struct {
		app, wl, pol string
		rate, dl     float64
	}
	var order []key
	groups := map[key][]LiveResult{}
	for _, r := range rs {
		k := key{r.App, r.Workload, r.Policy, r.Rate, r.DeadlineMS}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	var out []LiveSummary
	for _, k := range order {
		g := groups[k]
		s := LiveSummary{App: k.app, Workload: k.wl, Policy: k.pol, Rate: k.rate, DeadlineMS: k.dl, Runs: len(g)}
		var live, sim, diff []float64
		for _, r := range g {
			live, sim = append(live, r.Live.Utility), append(sim, r.Sim.Utility)
			diff = append(diff, r.Live.Utility-r.Sim.Utility)
			s.Load += r.Load / float64(len(g))
		}
		s.Live, s.LiveCI = MeanCI(live)
		s.Sim, _ = MeanCI(sim)
		s.LiveSim, s.LiveSimCI = MeanCI(diff)
		if k.pol != ref {
			refBySeed := map[uint64]float64{}
			for _, r := range groups[key{k.app, k.wl, ref, k.rate, k.dl}] {
				refBySeed[r.Seed] = r.Live.Utility
			}
			var d []float64
			for _, r := range g {
				if u, ok := refBySeed[r.Seed]; ok {
					d = append(d, r.Live.Utility-u)
				}
			}
			s.Pairs = len(d)
			s.VsRef, s.VsRefCI = MeanCI(d)
		}
		out = append(out, s)
	}
	return out
}

// WriteLiveSummary prints SummarizeLive's table.
func WriteLiveSummary(w io.Writer, ss []LiveSummary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "app\tworkload\tpolicy\trate/s\tload\tdl_ms\truns\tlive\t±95%\tsim\tlive-sim\t±95%\tvs ref\t±95%\t")
	for _, s := range ss {
		vs := "\t"
		if s.Pairs > 0 {
			vs = markedDiff(s.VsRef, s.VsRefCI, s.Pairs) + fmt.Sprintf("\t%.4f", s.VsRefCI)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.3f\t%g\t%d\t%.4f\t%.4f\t%.4f\t%+.4f\t%.4f\t%s\t\n", s.App, s.Workload, s.Policy,
			s.Rate, s.Load, s.DeadlineMS, s.Runs, s.Live, s.LiveCI, s.Sim, s.LiveSim, s.LiveSimCI, vs)
	}
	return tw.Flush()
}

// WriteLive prints live results.
func WriteLive(w io.Writer, rs []LiveResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "app\tworkload\tpolicy\trate/s\tload\tdl_ms\tsent\tquantity\tlive\tsim\ttolerance\tholds\t")
	for _, r := range rs {
		for _, c := range r.Checks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.3f\t%g\t%d\t%s\t%.3f\t%.3f\t%.3f\t%v\t\n", r.App, r.Workload, r.Policy,
				r.Rate, r.Load, r.DeadlineMS, r.Live.Sent, c.Name, c.Live, c.Sim, c.Tolerance, c.Holds)
		}
		var models []string
		for k, v := range r.Live.ByModel {
			models = append(models, fmt.Sprintf("%s %.2f", k, float64(v)/float64(max(1, r.Live.Answered))))
		}
		var sims []string
		for k, v := range r.Sim.VariantShare {
			sims = append(sims, fmt.Sprintf("%s %.2f", k, v))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t\t\t\t\tvariants\tlive: %s\tsim: %s\t\t\t\n", r.App, r.Workload, r.Policy,
			strings.Join(models, ", "), strings.Join(sims, ", "))
		fmt.Fprintf(tw, "%s\t%s\t%s\t\t\t\t\tlatency p50/p99\tlive: %v/%v\tsim p99: %.2fms\t\t\t\n", r.App, r.Workload, r.Policy,
			r.Live.Latency.P50.Round(10*time.Microsecond), r.Live.Latency.P99.Round(10*time.Microsecond), r.Sim.P99LatencyMS)
		fmt.Fprintf(tw, "%s\t%s\t%s\t\t\t\t\tengine slowdown\tlive: x%.2f\tsim utility at it: %.3f\t\t\t\n", r.App, r.Workload, r.Policy,
			r.Slowdown, r.SimSlowed.Utility)
		if r.TransitP50MS > 0 || r.TransitP90MS > 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t\t\t\t\tsend to receipt p50/p90, egress\tlive: %.1fms/%.1fms, %.1fms\tsim utility at them, slowed: %.3f (from the estimate %.3f)\t\t\t\n",
				r.App, r.Workload, r.Policy, r.TransitP50MS, r.TransitP90MS, r.EgressMS, r.SimTransit.Utility, float64(r.SimTransit.Degraded)/float64(max(1, r.SimTransit.Requests)))
		}
	}
	return tw.Flush()
}

// readProfileCache reads the engine's profile cache directory (files
// {app}.{variant}.{hash}.json holding {"profile": engine.Profile}).
func readProfileCache(dir string) (Profiles, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("eval: %w", err)
	}
	out := Profiles{}
	for _, f := range files {
		parts := strings.Split(filepath.Base(f), ".")
		if len(parts) != 4 {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("eval: %w", err)
		}
		var e struct {
			Profile engine.Profile `json:"profile"`
		}
		if err := json.Unmarshal(b, &e); err != nil {
			return nil, fmt.Errorf("eval: profile cache %s: %w", f, err)
		}
		out[parts[0]+"/"+parts[1]] = e.Profile
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("eval: the gateway left no profiles in %s", dir)
	}
	return out, nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("eval: %w", err)
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

func cmp0(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}
