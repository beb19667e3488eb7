package devices

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

// SimConfig configures Simulate. SimFlags fills one from command-line flags.
type SimConfig struct {
	// Broker is the broker URL (default tcp://127.0.0.1:1883); Prefix the topic
	// prefix (default "sneakgate").
	Broker string
	Prefix string
	// Manifest is the application's manifest.yaml; if empty it is
	// {Models}/{App}/manifest.yaml. AppManifest, if set, is used instead of either.
	Manifest    string
	Models      string
	App         string
	AppManifest *manifest.App
	// Devices is the number of simulated devices, each its own MQTT client, named
	// {DevicePrefix}-0000, {DevicePrefix}-0001, ... (default 4 and "sim").
	Devices      int
	DevicePrefix string
	// Rate is the total request rate over all devices, per second (required).
	// Arrivals is "poisson" (exponential gaps, the default) or "uniform" (evenly
	// spaced); Seed seeds arrivals, devices, labels and samples.
	Rate     float64
	Arrivals string
	Seed     uint64
	// Deadline is each request's budget, and the budget every reply is judged
	// against (DeviceDeadlineMet, the utility's lateness discount). 0 sends none:
	// the gateway applies its default for the application (the manifest's
	// default_deadline_ms unless the gateway's apps[].default_deadline overrides
	// it), and each reply is judged against the budget the gateway applied to it,
	// total_ms + slack_ms (its deadline minus its receipt), or against the
	// manifest's default_deadline_ms when the reply carries neither (a rejection
	// of an unreadable request, an older gateway). With SentAt the gateway's budget
	// runs from the send, and total_ms + slack_ms leaves out the request's way to
	// the gateway, so give Deadline too for an exact device check.
	Deadline time.Duration
	// Duration and Count end the run, whichever comes first; with neither it lasts
	// 10 seconds.
	Duration time.Duration
	Count    int
	// Workload names one of the manifest's workloads (label mixes); "" draws
	// samples uniformly from the sample file.
	Workload string
	// B64 sends inputs as input_b64 instead of JSON arrays.
	B64 bool
	// SentAt stamps requests with sent_at: deadlines run from the send
	// (ClientOptions.SentAt).
	SentAt bool
	// U8 sends inputs as input_u8_b64, one byte per value scaled to the
	// manifest's input_range (which the application must declare); exact for
	// samples that are 8-bit levels of that range (fashion's pixels).
	U8 bool
	// Drain is how long to wait for outstanding replies after the last request
	// (default: the budget plus 5 s; without Deadline, the largest budget judged
	// so far or the manifest's default_deadline_ms, whichever is longer, plus
	// 5 s, lengthened while draining when a reply shows a longer budget).
	Drain time.Duration
	// RunID prefixes request ids ({RunID}-{n}); default random, so runs never
	// collide with the gateway's duplicate suppression.
	RunID string
	// Quiet turns the progress display and the printed report off. Progress
	// (default os.Stderr) shows a bar only if it is a terminal; Out (default
	// os.Stdout) receives the report.
	Quiet    bool
	Progress io.Writer
	Out      io.Writer
	// Trace, if set, receives one JSON line per request sent (TraceRecord):
	// when its reply arrives, and at the end of the run for each request never
	// answered. Simulate serialises the writes; the caller closes Trace.
	Trace io.Writer
}

// TraceRecord is one request's line in SimConfig.Trace (devsim -trace): what
// was sent, when, and what came back, so that a run's timeline (a reload, a
// restart, the first second) can be read request by request.
type TraceRecord struct {
	ID     string `json:"id"`
	Seq    int    `json:"seq"` // the request's number in the run, from 0
	Device string `json:"device"`
	Label  int    `json:"label"` // the sample's true class
	// SentMS is when the request was handed to its client, in milliseconds
	// since the run's first planned send.
	SentMS float64 `json:"sent_ms"`
	// RTTMS is the time from that hand-over to the reply's receipt; absent,
	// with Status, when nothing came back. A request whose reply came but
	// could not be used has RTTMS and Unusable, no Status.
	RTTMS  *float64        `json:"rtt_ms,omitempty"`
	Status protocol.Status `json:"status,omitempty"`
	Reason protocol.Reason `json:"reason,omitempty"`
	Model  string          `json:"model,omitempty"`
	Class  *int            `json:"class,omitempty"`
	// Batch, QueueMS, InferMS and TotalMS are the reply's: the batch it ran in,
	// receipt to the pass's start, the pass, receipt to the answer.
	Batch       int      `json:"batch,omitempty"`
	QueueMS     *float64 `json:"queue_ms,omitempty"`
	InferMS     *float64 `json:"infer_ms,omitempty"`
	TotalMS     *float64 `json:"total_ms,omitempty"`
	DeadlineMet *bool    `json:"deadline_met,omitempty"`
	// BudgetMS is the budget the reply was judged against (SimConfig.Deadline):
	// the device's deadline check is RTTMS <= BudgetMS, and an answer's utility
	// is discounted for TotalMS past it. Absent when never answered.
	BudgetMS *float64 `json:"budget_ms,omitempty"`
	// Unusable says why the reply that came could not be used: "dropped" (the
	// client's Replies buffer was full) or the parse error of a malformed reply
	// (e.g. `bad reply: status "shed"`). Absent when a usable reply came or
	// nothing did.
	Unusable string `json:"unusable,omitempty"`
	// Utility is what the request adds to the report's utility (before the
	// mean over the requests sent).
	Utility float64 `json:"utility"`
}

// ErrSimConfig is wrapped by configuration errors from Simulate.
var ErrSimConfig = errors.New("devices: invalid simulation config")

func (c *SimConfig) defaults() error {
	if c.Broker == "" {
		c.Broker = "tcp://127.0.0.1:1883"
	}
	if c.Prefix == "" {
		c.Prefix = protocol.DefaultPrefix
	}
	if c.Devices == 0 {
		c.Devices = 4
	}
	if c.DevicePrefix == "" {
		c.DevicePrefix = "sim"
	}
	if c.Arrivals == "" {
		c.Arrivals = "poisson"
	}
	if c.Duration == 0 && c.Count == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Progress == nil {
		c.Progress = os.Stderr
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.RunID == "" {
		var b [3]byte
		_, _ = crand.Read(b[:]) // never fails
		c.RunID = hex.EncodeToString(b[:])
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrSimConfig}, args...)...)
	}
	switch {
	case c.Devices < 0:
		return bad("devices must be positive, got %d", c.Devices)
	case !protocol.ValidDevice(fmt.Sprintf("%s-%04d", c.DevicePrefix, c.Devices)):
		return bad("device prefix %q does not make valid device names", c.DevicePrefix)
	case !(c.Rate > 0):
		return bad("rate must be positive, got %v", c.Rate)
	case c.Arrivals != "poisson" && c.Arrivals != "uniform":
		return bad("arrivals must be poisson or uniform, got %q", c.Arrivals)
	case c.Duration < 0 || c.Count < 0 || c.Deadline < 0 || c.Drain < 0:
		return bad("duration, count, deadline and drain must not be negative")
	case c.AppManifest == nil && c.Manifest == "" && c.App == "":
		return bad("give an app or a manifest")
	}
	return nil
}

// LoadSamples returns the application's manifest and its labelled sample file:
// the manifest is c.AppManifest if set, else c.Manifest, else
// {c.Models}/{c.App}/manifest.yaml. It returns an error wrapping ErrSimConfig when
// the manifest names no sample file or the file does not fit the application.
func (c *SimConfig) LoadSamples() (*manifest.App, *dataset.Set, error) {
	app := c.AppManifest
	if app == nil {
		path := c.Manifest
		if path == "" {
			path = filepath.Join(c.Models, c.App, "manifest.yaml")
			if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
				return nil, nil, fmt.Errorf("%w: no application %s under %s (%s does not exist); for an application elsewhere, one of your own, give -manifest DIR/manifest.yaml", ErrSimConfig, c.App, c.Models, path)
			}
		}
		var err error
		if app, err = manifest.Load(path); err != nil {
			return nil, nil, err
		}
	}
	if app.Samples == nil || app.Samples.File == "" {
		return nil, nil, fmt.Errorf("%w: application %s has no samples in its manifest", ErrSimConfig, app.Name)
	}
	path := app.Path(app.Samples.File)
	set, err := dataset.Read(path)
	if err != nil {
		return nil, nil, err
	}
	if set.D != app.InputSize {
		return nil, nil, fmt.Errorf("%w: sample file %s has %d values per sample, application %s wants %d", ErrSimConfig, path, set.D, app.Name, app.InputSize)
	}
	return app, set, nil
}

// loadApp returns the manifest, the sample set and the sampler.
func (c *SimConfig) loadApp() (*manifest.App, *sampler, error) {
	app, set, err := c.LoadSamples()
	if err != nil {
		return nil, nil, err
	}
	var w *manifest.Workload
	if c.Workload != "" {
		for i := range app.Workloads {
			if app.Workloads[i].Name == c.Workload {
				w = &app.Workloads[i]
			}
		}
		if w == nil {
			names := make([]string, len(app.Workloads))
			for i, x := range app.Workloads {
				names[i] = x.Name
			}
			return nil, nil, fmt.Errorf("%w: application %s has no workload %q (have %v)", ErrSimConfig, app.Name, c.Workload, names)
		}
	}
	s, err := newSampler(set, app.Path(app.Samples.File), app.K(), w)
	if err != nil {
		return nil, nil, err
	}
	return app, s, nil
}

// outstanding is a request awaiting its reply.
type outstanding struct {
	label  int
	sent   time.Time
	seq    int
	device string
	// unusable, if not "", is why the reply that came could not be used
	// (TraceRecord.Unusable), and came when it came: the request stays pending
	// in case a usable copy follows, but the drain no longer waits for it.
	unusable string
	came     time.Time
}

// sim is one run's shared state.
type sim struct {
	cfg SimConfig
	// na is the application's value of a request of a true class that gets no
	// model answer (manifest no_answer_utility; 0 when unset).
	na func(y int) float64
	// budget is the budget every reply is judged against (SimConfig.Deadline),
	// or, when the requests name none, that of a reply that does not say the
	// gateway's (the manifest's default_deadline_ms): see replyBudget.
	budget  time.Duration
	w       [][]float64 // the application's utility matrix W[y][yhat]
	utility float64     // sum of penalised utility of the answers so far
	u8      *[2]float64 // the input_range, with SimConfig.U8

	mu      sync.Mutex
	pending map[string]outstanding // by id
	// silent counts the pending requests nothing came back for: those the
	// drain waits for.
	silent   int
	done     map[string]bool // answered ids, to count duplicates
	rep      Report
	rtt      []time.Duration
	gwTotal  []time.Duration
	ontime   int
	idle     chan struct{} // signalled (size 1) when silent becomes 0
	start    time.Time     // the first planned send, for TraceRecord.SentMS
	trace    *json.Encoder // SimConfig.Trace; nil without one
	traceErr error         // the first failed trace write
}

// Simulate runs a simulation and returns its report; unless cfg.Quiet it shows
// progress on cfg.Progress and prints the report on cfg.Out. It returns an error
// wrapping ErrSimConfig for a bad configuration, or a manifest, sample file or
// connection error; cancelling ctx ends the run early and still returns the
// report of what was sent, with ctx's error.
func Simulate(ctx context.Context, cfg SimConfig) (Report, error) {
	if err := cfg.defaults(); err != nil {
		return Report{}, err
	}
	app, smp, err := cfg.loadApp()
	if err != nil {
		return Report{}, err
	}
	if cfg.U8 && app.InputRange == nil {
		return Report{}, fmt.Errorf("%w: -u8 needs an input_range in %s's manifest", ErrSimConfig, app.Name)
	}
	s := &sim{cfg: cfg, pending: map[string]outstanding{}, done: map[string]bool{}, idle: make(chan struct{}, 1),
		w: app.Utility, na: app.NoAnswer}
	if cfg.U8 {
		s.u8 = app.InputRange
	}
	if cfg.Trace != nil {
		s.trace = json.NewEncoder(cfg.Trace)
	}
	s.budget = cfg.Deadline
	if s.budget == 0 {
		s.budget = time.Duration(app.DefaultDeadlineMS) * time.Millisecond
	}
	s.rep = Report{App: app.Name, Workload: cfg.Workload, Devices: cfg.Devices, Rate: cfg.Rate,
		Arrivals: cfg.Arrivals, Deadline: cfg.Deadline,
		ByStatus: map[protocol.Status]int{}, ByReason: map[protocol.Reason]int{}, ByModel: map[string]int{}}

	clients, err := s.dial(ctx)
	if err != nil {
		return Report{}, err
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	stopCollect := make(chan struct{})
	var collectors sync.WaitGroup
	for _, c := range clients {
		collectors.Add(1)
		go func() { defer collectors.Done(); s.collect(c, stopCollect) }()
	}

	bar := s.progressBar()
	stopDescribe := make(chan struct{})
	var describer sync.WaitGroup
	if bar != nil {
		describer.Add(1)
		go func() { defer describer.Done(); s.describe(bar, stopDescribe) }()
	}
	start := time.Now()
	var publishers sync.WaitGroup
	runErr := s.dispatch(ctx, app.Name, clients, smp, bar, &publishers)
	s.mu.Lock()
	s.rep.Sending = time.Since(start)
	s.mu.Unlock()
	publishers.Wait()
	if runErr == nil {
		drain := func() time.Duration { return cfg.Drain }
		if cfg.Drain == 0 {
			drain = s.drainTime
		}
		runErr = s.drain(ctx, drain)
	}
	s.mu.Lock()
	s.rep.Elapsed = time.Since(start)
	s.mu.Unlock()
	close(stopCollect)
	collectors.Wait()
	close(stopDescribe)
	describer.Wait()
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(cfg.Progress)
	}

	s.mu.Lock()
	rep := s.rep
	for _, c := range clients {
		st := c.Stats()
		rep.Malformed += int(st.Malformed)
		rep.Dropped += int(st.Dropped)
		rep.Unmatched += int(st.Unmatched)
	}
	rep.Unanswered = s.silent
	rep.Unusable = len(s.pending) - s.silent
	left := make([]string, 0, len(s.pending))
	for id, o := range s.pending {
		s.utility += s.na(o.label) // no usable answer: the default action
		left = append(left, id)
	}
	slices.SortFunc(left, func(a, b string) int { return s.pending[a].seq - s.pending[b].seq })
	for _, id := range left {
		o := s.pending[id]
		t := TraceRecord{Utility: s.na(o.label)}
		if o.unusable != "" {
			ms := float64(o.came.Sub(o.sent)) / float64(time.Millisecond)
			t.RTTMS, t.Unusable = &ms, o.unusable
		}
		s.traceLine(id, o, t)
	}
	if s.traceErr != nil && runErr == nil {
		runErr = fmt.Errorf("devices: trace: %w", s.traceErr)
	}
	rep.Latency = LatencyPercentiles(s.rtt)
	rep.GatewayTotal = LatencyPercentiles(s.gwTotal)
	rep.Goodput = ratio(s.ontime, rep.Sent)
	if rep.Sent > 0 {
		rep.Utility = s.utility / float64(rep.Sent)
	}
	s.mu.Unlock()
	rep.finish()
	if !cfg.Quiet {
		rep.Print(cfg.Out)
	}
	return rep, runErr
}

func (s *sim) dial(ctx context.Context) ([]*Client, error) {
	return DialAll(ctx, s.cfg.Devices, func(i int) ClientOptions {
		return ClientOptions{Broker: s.cfg.Broker, Prefix: s.cfg.Prefix,
			Device: fmt.Sprintf("%s-%04d", s.cfg.DevicePrefix, i), B64: s.cfg.B64, SentAt: s.cfg.SentAt, U8Range: s.u8, Pipeline: 4096,
			OnUndelivered: s.undelivered}
	})
}

// dispatch publishes requests at the configured arrival process until the count
// or the duration is reached or ctx ends.
func (s *sim) dispatch(ctx context.Context, app string, clients []*Client, smp *sampler, bar *progressbar.ProgressBar, publishers *sync.WaitGroup) error {
	cfg := s.cfg
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	gap := func() time.Duration {
		if cfg.Arrivals == "uniform" {
			return time.Duration(float64(time.Second) / cfg.Rate)
		}
		return time.Duration(rng.ExpFloat64() / cfg.Rate * float64(time.Second))
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	start := time.Now()
	s.mu.Lock()
	s.start = start
	s.mu.Unlock()
	var offset time.Duration // planned send time of the next request, from start
	for n := 0; ; n++ {
		if cfg.Count > 0 && n >= cfg.Count || cfg.Duration > 0 && offset >= cfg.Duration {
			return nil
		}
		if d := time.Until(start.Add(offset)); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		} else if ctx.Err() != nil {
			return ctx.Err()
		}
		var progress float64
		if cfg.Count > 0 {
			progress = float64(n) / float64(cfg.Count)
		}
		if cfg.Duration > 0 {
			progress = max(progress, float64(offset)/float64(cfg.Duration))
		}
		idx, label := smp.draw(rng, progress)
		c := clients[rng.IntN(len(clients))]
		id := fmt.Sprintf("%s-%d", cfg.RunID, n)
		input := smp.set.Row(idx)
		offset += gap()

		s.mu.Lock()
		s.pending[id] = outstanding{label: label, sent: time.Now(), seq: n, device: c.Device()}
		s.silent++
		s.rep.Sent++
		s.mu.Unlock()
		publishers.Add(1)
		go func() {
			defer publishers.Done()
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := c.Publish(pctx, app, id, input, cfg.Deadline); err != nil {
				s.mu.Lock()
				s.rep.PublishErrors++
				s.mu.Unlock()
			}
		}()
		if bar != nil {
			_ = bar.Add(1)
		}
	}
}

// collect records the replies of one client until stop is closed.
func (s *sim) collect(c *Client, stop <-chan struct{}) {
	for {
		select {
		case rc := <-c.Replies():
			s.record(rc)
		case <-stop:
			return
		}
	}
}

func (s *sim) record(rc Received) {
	r := rc.Reply
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.pending[r.ID]
	if !ok {
		if s.done[r.ID] {
			s.rep.Duplicates++
		}
		return // not ours (another run, or an id-less rejection)
	}
	delete(s.pending, r.ID)
	if o.unusable == "" {
		s.silent--
	}
	s.done[r.ID] = true
	rep := &s.rep
	rep.Replies++
	rep.ByStatus[r.Status]++
	if r.Reason != "" {
		rep.ByReason[r.Reason]++
	}
	if r.Model != "" {
		rep.ByModel[r.Model]++
	}
	rtt := rc.At.Sub(o.sent)
	s.rtt = append(s.rtt, rtt)
	budget := s.replyBudget(r)
	if rep.BudgetMin == 0 || budget < rep.BudgetMin {
		rep.BudgetMin = budget
	}
	rep.BudgetMax = max(rep.BudgetMax, budget)
	before := s.utility
	defer func() {
		ms := float64(rtt) / float64(time.Millisecond)
		s.traceLine(r.ID, o, TraceRecord{RTTMS: &ms, Status: r.Status, Reason: r.Reason, Model: r.Model,
			Class: r.Class, Batch: r.Batch, QueueMS: r.QueueMS, InferMS: r.InferMS, TotalMS: r.TotalMS,
			DeadlineMet: r.DeadlineMet, BudgetMS: protocol.Millis(budget), Utility: s.utility - before})
	}()
	if r.TotalMS != nil {
		s.gwTotal = append(s.gwTotal, time.Duration(*r.TotalMS*float64(time.Millisecond)))
	}
	met := r.DeadlineMet != nil && *r.DeadlineMet
	if met {
		rep.DeadlineMet++
	}
	if !r.Status.Answered() || r.Class == nil {
		s.utility += s.na(o.label) // expired, rejected, error: the default action
	}
	if r.Status.Answered() && r.Class != nil {
		s.utility += s.answerUtility(o.label, *r.Class, r.TotalMS, budget)
		rep.Answered++
		if rtt <= budget {
			rep.DeviceDeadlineMet++
		}
		if *r.Class == o.label {
			rep.Correct++
			if met {
				s.ontime++
			}
		}
	}
	s.checkIdle()
}

// checkIdle signals idle when no pending request waits for a reply. s.mu is
// held.
func (s *sim) checkIdle() {
	if s.silent == 0 {
		select {
		case s.idle <- struct{}{}:
		default:
		}
	}
}

// undelivered is the clients' ClientOptions.OnUndelivered: a reply came for a
// pending request, but the client could not use it (malformed) or had to drop
// it (its Replies buffer full). The request is no longer waited for: its reply
// came, and nothing more will unless the gateway sends another copy, which
// record still takes. It runs on a client's network loop, holding s.mu only
// briefly.
func (s *sim) undelivered(u Undelivered) {
	why := u.Err.Error()
	switch {
	case errors.Is(u.Err, ErrDropped):
		why = "dropped"
	case errors.Is(u.Err, ErrUnmatched):
		why = "unmatched"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.pending[u.ID]
	if !ok || o.unusable != "" {
		return // not ours, answered already, or already known unusable
	}
	o.unusable, o.came = why, u.At
	s.pending[u.ID] = o
	s.silent--
	s.checkIdle()
}

// traceLine writes request id's TraceRecord (t with what o knows filled in)
// to the trace, if any. s.mu is held.
func (s *sim) traceLine(id string, o outstanding, t TraceRecord) {
	if s.trace == nil || s.traceErr != nil {
		return
	}
	t.ID, t.Seq, t.Device, t.Label = id, o.seq, o.device, o.label
	t.SentMS = float64(o.sent.Sub(s.start)) / float64(time.Millisecond)
	s.traceErr = s.trace.Encode(t)
}

// replyBudget is the budget reply r is judged against: SimConfig.Deadline when
// the requests name one; else the budget the gateway applied, its deadline minus
// its receipt, total_ms + slack_ms (both rounded to the microsecond on the wire);
// else, for a reply without them, the manifest's default_deadline_ms.
func (s *sim) replyBudget(r *protocol.Reply) time.Duration {
	if s.cfg.Deadline > 0 || r.TotalMS == nil || r.SlackMS == nil {
		return s.budget
	}
	b := time.Duration(math.Round((*r.TotalMS+*r.SlackMS)*1e3)) * time.Microsecond
	if b <= 0 {
		return s.budget // no budget at all: nothing to judge against but the default
	}
	return b
}

// drainTime is how long to wait for replies after the last request when
// SimConfig.Drain is 0: the budget plus 5 s. Without SimConfig.Deadline the
// budget is the largest one a reply has shown so far (the gateway's default may
// be longer than the manifest's), but never less than the manifest's default,
// which is all that is known before a reply comes: a run whose replies all come
// after that default plus 5 s, with none before, still ends too early (give
// -drain).
func (s *sim) drainTime() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(s.budget, s.rep.BudgetMax) + 5*time.Second
}

// answerUtility is the application's utility W[label][class] of an answer,
// discounted as the scheduler discounts it for the gateway's lateness (total_ms
// against budget); 0 when the matrix does not cover the classes.
func (s *sim) answerUtility(label, class int, totalMS *float64, budget time.Duration) float64 {
	if label < 0 || label >= len(s.w) || class < 0 || class >= len(s.w[label]) {
		return 0
	}
	u := s.w[label][class]
	if totalMS != nil {
		// A late answer decays toward the value of no answer, as the scheduler
		// and the simulator value it.
		var t0 time.Time
		fin := t0.Add(time.Duration(*totalMS * float64(time.Millisecond)))
		u = scheduler.Discount(u, s.na(label), scheduler.Penalty(fin, t0.Add(budget), budget))
	}
	return u
}

// drain waits until a reply has come for every request (usable or not), the
// drain time passes, or ctx ends. The drain time, d(), is measured from the
// call; when it has passed, d is asked again, and a longer answer (drainTime,
// after a reply with a longer budget) makes drain wait on.
func (s *sim) drain(ctx context.Context, d func() time.Duration) error {
	start := time.Now()
	t := time.NewTimer(d())
	defer t.Stop()
	for {
		s.mu.Lock()
		n := s.silent
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-s.idle:
		case <-t.C:
			if rest := time.Until(start.Add(d())); rest > 0 {
				t.Reset(rest)
				continue
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// progressBar returns a bar on cfg.Progress, or nil when quiet or not a terminal.
func (s *sim) progressBar() *progressbar.ProgressBar {
	if s.cfg.Quiet || !isTerminal(s.cfg.Progress) {
		return nil
	}
	total := s.cfg.Count
	if est := int(s.cfg.Rate * s.cfg.Duration.Seconds()); s.cfg.Duration > 0 && (total == 0 || est < total) {
		total = est
	}
	return progressbar.NewOptions(total,
		progressbar.OptionSetWriter(s.cfg.Progress),
		progressbar.OptionSetDescription("sending"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("req"),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetWidth(24),
	)
}

// describe shows the live status counts on the bar until stop is closed.
func (s *sim) describe(bar *progressbar.ProgressBar, stop <-chan struct{}) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-stop:
			return
		}
		s.mu.Lock()
		st := s.rep.ByStatus
		d := fmt.Sprintf("ok %d late %d degr %d exp %d rej %d err %d wait %d",
			st[protocol.StatusOK], st[protocol.StatusLate], st[protocol.StatusDegraded], st[protocol.StatusExpired],
			st[protocol.StatusRejected], st[protocol.StatusError], s.silent)
		s.mu.Unlock()
		bar.Describe(d)
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
