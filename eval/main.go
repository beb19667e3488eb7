package eval

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

const usage = `usage: sneakgate eval [flags]

Simulates the scheduling policies against measured latency/swap profiles, replaying
each application's workloads with its real samples and SneakPeek estimates, over a
sweep of loads (fractions of the engine's capacity) and deadlines. Prints a table,
writes results.json and one PNG per (app, workload, deadline) into -out.

Capacity is the rate the most accurate variant sustains at its most efficient
batch size up to -max-batch. Correctness is exact when the engine is available
(every variant's real prediction on every sample, computed once), otherwise drawn
from the variants' confusion matrices. SneakPeek estimates are computed once per
sample by the manifest's estimator (package sneakpeek, as the gateway does).

flags:
`

// UsageError is a command-line error of Main (a bad flag, an unexpected
// argument); the flag package has already printed the usage for a bad flag.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Main runs `sneakgate eval` with args (without the subcommand name). It returns
// flag.ErrHelp for -h and a UsageError for a bad command line.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var (
		models     = fs.String("models", "models", "directory holding {app}/manifest.yaml")
		apps       = fs.String("apps", "", "comma-separated applications (default: every manifest under -models)")
		synthetic  = fs.Bool("synthetic", false, "evaluate the built-in synthetic application instead (no engine, no files)")
		workloads  = fs.String("workloads", "", "comma-separated workloads (default: every workload of each app)")
		policies   = fs.String("policies", "sneakpeek,oblivious,placebo,cascade,edf,fixed-batch", "comma-separated policies ("+strings.Join(append(scheduler.Names(), evalPolicies...), ",")+"); cascade needs the engine")
		loads      = fs.String("loads", "0.3,0.6,0.9,1.2,1.5", "loads as fractions of capacity")
		deadlines  = fs.String("deadlines", "1", "deadline budgets as multiples of each app's default deadline")
		n          = fs.Int("n", 5000, "requests per point (at least; see -min-deadlines)")
		minDl      = fs.Float64("min-deadlines", 20, "lengthen each point to at least this many deadlines of arrivals (0 = off)")
		maxN       = fs.Int("max-n", 200000, "cap on the requests of a lengthened point")
		seed       = fs.Uint64("seed", 1, "seed for arrivals, samples, jitter and confusion draws")
		seeds      = fs.Int("seeds", 1, "run every point with this many seeds (seed, seed+1, ...) and report means with 95% intervals; with -live, run each live point once per seed (the policies of a seed back to back) and summarise live against simulated and each policy against -ref, paired by seed")
		ref        = fs.String("ref", "sneakpeek", "policy the summary compares every other with (paired by seed)")
		gatewayUS  = fs.Float64("gateway-us", DefaultGatewayCostUS, "the gateway's own time per request run on a model, on the scheduling loop while the engine waits, in microseconds (0 = engine time only)")
		verdictUS  = fs.Float64("verdict-us", DefaultVerdictCostUS, "the same for a request answered without a model (degraded, expired, shed), in microseconds")
		decisionUS = decisionCostFlag{}
		decWall    = fs.Bool("decision-wall", false, "charge each decision, on the simulated loop, the wall-clock time it took on this machine (in place of -decision-us): every policy pays its own decisions as measured, at whatever queue and batch the run reaches; not deterministic, so run it with -workers 1 on an otherwise idle machine")
		gwKnown    = fs.Bool("gateway-known", true, "policies plan with the loop's time per request included in the variants' latency, as the gateway does (scheduler.latency_correction): -gateway-us, or with -decision-wall or -decision-us (and without -pipeline) the loop's time as charged, weighted means over recent batches of the decisions' time per batch and the rest per request (false: they plan with the engine's profile alone, as the gateway with latency_correction false)")
		ingressMS  = fs.Float64("ingress-ms", DefaultIngressMS, "time from a request's receipt until the scheduler sees it, in milliseconds (journal write, parse, estimate)")
		// The flags named _ are the gateway model, read by flagGatewayModel.
		_           = fs.Float64("jitter", 0.05, "relative spread of actual latencies around the profile")
		maxBatch    = fs.Int("max-batch", 32, "largest batch")
		window      = fs.Int("window", 0, "requests a searching policy considers per decision (0 = default)")
		shrink      = fs.Float64("shrink", 0, "data-aware policies: weight of the profiled utility in a request's value, 0..1 (scheduler.Options.Shrink)")
		resample    = fs.Bool("resample", true, "each seed draws its requests from its own bootstrap replicate of the test samples (each class's samples drawn with replacement; all policies of a seed see the same one), so the intervals cover which test samples there are, not only the arrivals (Point.Resample; not with -live, which replays the samples themselves); false: every seed replays the test samples themselves, as every figure of docs/evaluation-log.md computed before 2026-12-02's fourth session")
		estAnswers  = fs.Bool("estimate-answers", true, "data-aware policies, with -label-shift: answer a request from its corrected estimate when that is worth at least as much as any model's answer in the live class mix (scheduler.Options.EstimateAnswers, the gateway's scheduler.estimate_answers, simulated and live); false: the figures of docs/evaluation-log.md computed before 2026-12-02's third session")
		planAhead   = fs.Int("plan-ahead", 3, "searching policies: batches after the first that a decision keeps from its plan for the next decisions to run without planning again, each while it still holds (scheduler.Options.PlanAhead; 3 is the gateway's default scheduler.plan_ahead, simulated and live; 0: plan at every decision, as every figure computed before b901455 did)")
		horizon     = fs.Duration("price-horizon", time.Second, "searching policies: price engine time over the requests that arrived within this horizon, not the window alone (scheduler.Options.PriceHorizon; 1s is the gateway's default; 0: the window alone)")
		_           = fs.Int("max-queue", 10000, "queue bound; arrivals beyond it are rejected")
		_           = fs.Bool("degrade-refused", true, "the gateway's admission.degrade_refused, simulated and live: answer a request refused for overload from its estimate (degraded) instead of rejecting it")
		_           = fs.Bool("label-shift", true, "the gateway's apps[].label_shift, simulated and live, for every policy: correct each estimate for the live class mix (online EM from the estimator's mean output) and answer without a model (degraded, shed) from the corrected one; the variants' values keep the raw estimate (scheduler.Reweigh). false: the figures of docs/evaluation-log.md computed before 2026-12-02's label-shift default")
		_           = fs.Bool("shift-evidence", false, "with -label-shift: the correction's live class mix counts each request at its outcome, one a model answered by that answer through the variant's validation confusion (sneakpeek.PriorShift.ObserveAnswer), any other by its corrected estimate; false: every request by its corrected estimate on arrival, as the gateway does (simulated only: the gateway does not have it)")
		_           = fs.Bool("price-admission", true, "the gateway's admission.price_shed, simulated and live: while a data-aware searching policy sheds under overload, answer at admission, from its estimate, an arrival worth less per second of engine time than what its latest shedding decision gave up (scheduler.PriceGate); false: the figures of docs/evaluation-log.md computed before 2026-11-30's last night")
		_           = fs.Bool("pipeline", false, "the gateway's scheduler.pipeline, simulated and live: decide the next batch while the engine runs the current one, so the loop's time overlaps the engine's")
		_           = fs.Float64("max-wait", 0.5, "the gateway's admission.max_wait, simulated and live: refuse an arrival whose queue would take longer than this fraction of its budget to drain on the cheapest variant (0 = off)")
		_           = fs.Bool("measured-wait", true, "with -max-wait > 0, also simulate the gateway's refusal of an arrival that would wait longer than its whole budget at the measured drain rate (requests answered per second of the loop's busy time), as the gateway does; false: the figures of docs/evaluation-log.md computed before 2026-11-30's evening")
		_           = fs.Int("max-resident", 0, "most variants resident at once (0 = unlimited)")
		_           = fs.Int64("mem-budget-mb", 0, "residency memory budget in MiB (0 = unlimited)")
		profiles    = fs.String("profiles", "", "read variant profiles from this JSON file instead of measuring")
		saveProf    = fs.String("save-profiles", "", "write the profiles used to this JSON file")
		ortLib      = fs.String("ort-lib", "", "ONNX Runtime library (default $"+engine.LibraryEnv+")")
		noEngine    = fs.Bool("no-engine", false, "do not use the engine: needs -profiles; correctness from confusion matrices")
		out         = fs.String("out", "eval-out", "output directory for results.json and the plots")
		workers     = fs.Int("workers", runtime.NumCPU(), "points simulated in parallel")
		quiet       = fs.Bool("quiet", false, "no progress bar")
		ceilOnly    = fs.Bool("ceilings", false, "print the fluid ceilings at each load (what choosing a variant per request by profiled utility, by the estimate's values, and by the true answers realises with no deadlines; eval.Ceilings), write them to results.json and stop without simulating; they use the raw estimate, as the variants' values do, whatever -label-shift, and the profiles as they are)")
		cascFirst   = fs.String("cascade-first", "", "the cascade's first variant per application, app=variant[,app=variant] (default: each application's cheapest)")
		peek        = fs.String("peek", "", "the peek variant of sneakpeek-peek per application, app=variant[,app=variant] (default: -cascade-first's, else the cheapest)")
		estimator   = fs.String("estimator", "", "SneakPeek estimator of each manifest (default: its first, as the gateway); \""+StandIn+"\" = the cheapest variant's softmax")
		live        = fs.Bool("live", false, "drive the real gateway over MQTT with the device simulator and compare with the simulator's prediction")
		liveRates   = fs.String("live-rates", "300", "with -live: request rates (per second) to run live")
		liveDur     = fs.Duration("live-duration", 10*time.Second, "with -live: how long each live run sends")
		liveDevices = fs.Int("live-devices", 4, "with -live: simulated devices")
		liveLatency = fs.Bool("live-latency-correction", true, "with -live: the gateway corrects its latency tables from observed batches (scheduler.latency_correction)")
		liveSentAt  = fs.Bool("live-sent-at", true, "with -live: the devices stamp requests with sent_at, so deadlines run from the send and time queued in the broker counts (false: from the gateway's receipt)")
		guardWin    = fs.Int("guard-window", 0, "guarded policies: the drift guard's window (0 = sneakpeek.DefaultGuardWindow)")
		guardDis    = fs.Float64("guard-distrust", 0, "guarded policies: gap beyond the baseline that distrusts (0 = default)")
		guardRet    = fs.Float64("guard-retrust", 0, "guarded policies: gap below which trust returns (0 = default)")
		shiftWin    = fs.Int("shift-window", 0, "label-shift policies: the live prior estimate's window, update step 1/window (0 = sneakpeek.DefaultShiftWindow)")
		liveBroker  = fs.String("live-broker", "mosquitto", "with -live: the broker: \"mosquitto\" starts a private Mosquitto on a free port (the embedded broker when none is installed), \"embedded\" the gateway's embedded broker (in this process), or an external broker URL")
		liveDiag    = fs.String("live-diag", "", "with -live: a directory that receives, per run, a CPU profile of this process while the devices send (NAME.cpu.pprof) and the gateway's metrics at the end (NAME.prom)")
		liveProc    = fs.Bool("live-devices-process", true, "with -live: run the simulated devices in a child process (sneakgate devsim), off the gateway's CPU threads; false runs them in this process")
		scenario    = fs.String("scenario", "", "simulate a scenario file instead of the manifests: applications sharing one engine, periodic device streams, simulated estimators (eval/scenarios; docs/evaluation.md)")
	)
	fs.Var(decisionUS, "decision-us", "per policy, the scheduling loop's time per scheduled request for the decision itself, on top of -gateway-us and -verdict-us, in microseconds: policy=us pairs, comma-separated (e.g. sneakpeek=9,placebo=9,edf=1,fixed-batch=0.3), and policy@load=us for a cost at one of -loads in place of the policy's (e.g. sneakpeek@1=2); the decision times the report prints (decide_us) are this machine's measurement")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return UsageError{err}
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("eval: unexpected arguments %q", fs.Args())
		fmt.Fprintln(stderr, err) // as the flag package reports a bad flag
		fs.Usage()
		return UsageError{err}
	}
	ls, err := floats(*loads)
	if err != nil {
		return fmt.Errorf("eval: -loads: %w", err)
	}
	ds, err := floats(*deadlines)
	if err != nil {
		return fmt.Errorf("eval: -deadlines: %w", err)
	}
	pols := split(*policies)
	if *synthetic && *policies == fs.Lookup("policies").DefValue {
		pols = slices.DeleteFunc(pols, func(p string) bool { return p == PolicyCascade })
	}
	if *seeds < 1 || *gatewayUS < 0 || *verdictUS < 0 || *ingressMS < 0 {
		return errors.New("eval: -seeds must be at least 1, -gateway-us, -verdict-us and -ingress-ms not negative")
	}
	for _, p := range pols {
		if err := CheckPolicy(p); err != nil {
			return err
		}
	}
	opts := scheduler.Options{MaxBatch: *maxBatch, Window: *window, Shrink: *shrink, PriceHorizon: *horizon, EstimateAnswers: *estAnswers, PlanAhead: *planAhead}
	if opts.CascadeFirst, err = parsePairs(*cascFirst); err != nil {
		return fmt.Errorf("eval: -cascade-first: %w", err)
	}
	if opts.Peek, err = parsePairs(*peek); err != nil {
		return fmt.Errorf("eval: -peek: %w", err)
	}
	if *decWall && (len(decisionUS) > 0 || *live) {
		return errors.New("eval: -decision-wall charges the measured decisions in place of -decision-us, in the simulator (-live pays its own)")
	}
	if len(decisionUS) > 0 && *live {
		return errors.New("eval: -decision-us models the simulator's loop; -live runs the gateway, which pays its own")
	}
	for key := range decisionUS {
		p, at, perLoad := strings.Cut(key, "@")
		if *scenario == "" && !slices.Contains(pols, p) {
			return fmt.Errorf("eval: -decision-us names %q, which -policies does not run (%s)", p, strings.Join(pols, ","))
		}
		if perLoad && (*scenario != "" || !slices.ContainsFunc(ls, func(l float64) bool { return costKey(p, l) == key })) {
			return fmt.Errorf("eval: -decision-us names %s at load %s, which -loads does not run (%s)", p, at, *loads)
		}
	}
	if *scenario != "" {
		return mainScenario(ctx, fs, *scenario, "sneakgate eval "+strings.Join(args, " "), stdout, stderr)
	}
	if *live {
		for _, p := range pols {
			if _, g := resolvePolicy(p); g != guardOff {
				return fmt.Errorf("eval: -live does not run %s (the gateway has no drift guard yet)", p)
			}
			if shiftOf(p) != shiftOff {
				return fmt.Errorf("eval: -live does not run %s (the gateway has no label-shift correction wired yet)", p)
			}
			if p == PolicyPlacebo || p == PolicyClassBased || p == PolicyOracle {
				return fmt.Errorf("eval: -live does not run %s (an evaluation-only baseline)", p)
			}
		}
		rates, err := floats(*liveRates)
		if err != nil {
			return fmt.Errorf("eval: -live-rates: %w", err)
		}
		lib := *ortLib
		if lib == "" {
			lib = os.Getenv(engine.LibraryEnv)
		}
		devicesExe := ""
		if *liveProc {
			// eval runs inside the sneakgate binary, which has devsim.
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("eval: -live-devices-process: %w", err)
			}
			devicesExe = exe
		}
		return runLive(ctx, liveRun{models: *models, apps: split(*apps), workloads: split(*workloads), policies: pols,
			rates: rates, deadlines: ds, dur: *liveDur, devices: *liveDevices, broker: *liveBroker, devicesExe: devicesExe, lib: lib, diag: *liveDiag,
			opts: opts, gm: flagGatewayModel(fs), seed: *seed, seeds: max(*seeds, 1), ref: *ref, out: *out, noLatency: !*liveLatency, noSentAt: !*liveSentAt}, stdout, stderr)
	}

	var as []*App
	rep := &Report{Command: "sneakgate eval " + strings.Join(args, " "), Correctness: map[string]string{},
		Profiles: map[string]string{}, Estimators: map[string]string{}, Capacity: map[string]float64{}}
	if *synthetic {
		as = []*App{Synthetic(*seed)}
	} else {
		as, err = loadApps(ctx, *models, split(*apps), *profiles, *saveProf, *ortLib, *estimator, *noEngine, *maxBatch, opts.CascadeFirst, opts.Peek, stderr)
		if err != nil {
			return err
		}
	}
	gwCost := time.Duration(*gatewayUS * float64(time.Microsecond))
	rep.GatewayCostUS, rep.VerdictCostUS, rep.IngressMS, rep.Seeds = *gatewayUS, *verdictUS, *ingressMS, *seeds
	rep.GatewayKnown, rep.PlanAhead, rep.DecisionWall = *gwKnown, *planAhead, *decWall
	for p, d := range decisionUS {
		if rep.DecisionCostUS == nil {
			rep.DecisionCostUS = map[string]float64{}
		}
		rep.DecisionCostUS[p] = float64(d) / float64(time.Microsecond)
	}
	for _, a := range as {
		if slices.Contains(pols, PolicyCascade) && a.Cascade == nil {
			return fmt.Errorf("eval: %s: the cascade policy needs the engine and a validation split (drop it from -policies)", a.Sched.Name)
		}
		if a.Cascade != nil {
			if rep.Cascades == nil {
				rep.Cascades = map[string]*scheduler.CascadeConfig{}
			}
			rep.Cascades[a.Sched.Name] = a.Cascade
			c := a.Cascade
			if len(c.Curve) == 0 {
				fmt.Fprintf(stderr, "%s: cascade: the cheapest variant is the most accurate (%s); it never escalates\n",
					a.Sched.Name, a.Sched.Variants[c.Better].ID.Variant)
				continue
			}
			fmt.Fprintf(stderr, "%s: cascade %s -> %s, %d operating points on the validation split (escalating %.0f%%..%.0f%%, utility %.3f..%.3f)\n",
				a.Sched.Name, a.Sched.Variants[c.Cheap].ID.Variant, a.Sched.Variants[c.Better].ID.Variant, len(c.Curve),
				100*c.Curve[0].Escalated, 100*c.Curve[len(c.Curve)-1].Escalated, c.Curve[0].Utility, c.Curve[len(c.Curve)-1].Utility)
		}
	}
	for _, a := range as {
		name := a.Sched.Name
		rep.Correctness[name] = "confusion-matrix draws"
		if a.Pred != nil {
			rep.Correctness[name] = "exact (real variant predictions on the samples)"
		}
		rep.Profiles[name] = a.ProfileSource
		rep.Estimators[name] = a.EstimatorSource
		rep.Capacity[name] = CapacityWith(a.Sched, opts, gwCost)
		fmt.Fprintf(stderr, "%s: %d samples, capacity %.0f req/s, deadline %v, profiles: %s, estimator: %s, correctness: %s\n",
			name, len(a.Labels), rep.Capacity[name], a.Deadline, a.ProfileSource, a.EstimatorSource, rep.Correctness[name])
	}
	for _, a := range as {
		for _, w := range a.Workloads {
			if ws := split(*workloads); len(ws) > 0 && !slices.Contains(ws, w.Name) {
				continue
			}
			rep.Diagnoses = append(rep.Diagnoses, Diagnose(a, w, max(*n, 20000), *seed))
		}
	}
	fmt.Fprintln(stdout, "Without time pressure: estimator quality on the replayed mix, and the utility of serving every request")
	fmt.Fprintln(stdout, "on the profiled-best variant, on each request's data-aware pick, on the true class's best variant (oracle),")
	fmt.Fprintln(stdout, "or with the estimate itself (degraded):")
	if err := WriteDiagnoses(stdout, rep.Diagnoses, as); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	for _, a := range as {
		for _, w := range a.Workloads {
			if ws := split(*workloads); len(ws) > 0 && !slices.Contains(ws, w.Name) {
				continue
			}
			rep.Ceilings = append(rep.Ceilings, Ceilings(a, w, ls, ceilingRequests, *seed, *seeds, *resample, opts, gwCost)...)
		}
	}
	fmt.Fprintf(stdout, "Fluid ceilings over %d seed(s) (no deadlines, batches or swaps; each variant at its best amortised time and -gateway-us): the realised utility\n", *seeds)
	fmt.Fprintln(stdout, "of choosing per request, within the load's engine time, by profiled utility, by the estimate's values (what sneakpeek plans with),")
	fmt.Fprintln(stdout, "or by the true answers (oracle); the estimate's share is its gain over profiled as a share of the oracle's:")
	if err := WriteCeilings(stdout, rep.Ceilings); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	// writeReport writes results.json into -out and returns its path.
	writeReport := func() (string, error) {
		if err := os.MkdirAll(*out, 0o755); err != nil {
			return "", fmt.Errorf("eval: %w", err)
		}
		jp := filepath.Join(*out, "results.json")
		return jp, rep.WriteJSON(jp)
	}
	if *ceilOnly {
		jp, err := writeReport()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", jp)
		return nil
	}
	sw := &Sweep{Apps: as, Workloads: split(*workloads), Policies: pols, Loads: ls, DeadlineScales: ds, Workers: *workers,
		MinDeadlines: *minDl, MaxRequests: *maxN, Seeds: *seeds,
		Base: Point{Options: opts, Requests: *n, Seed: *seed, Resample: *resample, GatewayModel: flagGatewayModel(fs),
			Guard: sneakpeek.GuardOptions{Window: *guardWin, Distrust: *guardDis, Retrust: *guardRet},
			Shift: sneakpeek.ShiftOptions{Window: *shiftWin}}}
	pts, err := sw.Points()
	if err != nil {
		return err
	}
	if len(pts) == 0 {
		return errors.New("eval: nothing to simulate (check -apps and -workloads)")
	}
	var tick func()
	if !*quiet {
		bar := progressbar.NewOptions(len(pts), progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription("simulating"), progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true), progressbar.OptionClearOnFinish(),
			progressbar.OptionThrottle(100*time.Millisecond))
		tick = func() { _ = bar.Add(1) }
		defer func() { _ = bar.Finish() }()
	}
	rep.Results = sw.Run(ctx, pts, tick)
	if err := ctx.Err(); err != nil {
		return err
	}
	// The per-seed comparisons below (gains, guard, shift) use the first seed;
	// the summary uses all of them.
	first := slices.DeleteFunc(slices.Clone(rep.Results), func(r Result) bool { return r.Seed != *seed })
	rep.Gains = Gains(first, "sneakpeek", "oblivious")
	if *seeds == 1 {
		if err := WriteTable(stdout, rep.Results); err != nil {
			return err
		}
	}
	rep.Summaries = Summarize(rep.Results, *ref)
	fmt.Fprintf(stdout, "\nMeans over %d seed(s) with 95%% intervals; \"vs ref\" is the paired difference from %s (* when its interval excludes 0), ratio = utility / %s's:\n", *seeds, *ref, *ref)
	if err := WriteSummary(stdout, rep.Summaries); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\nPer true class: recall/mean utility (means over seeds):")
	if err := WritePerClass(stdout, rep.Summaries); err != nil {
		return err
	}
	if len(rep.Gains) > 0 {
		fmt.Fprintln(stdout, "\nsneakpeek vs oblivious (mean utility):")
		if err := WriteGains(stdout, rep.Gains); err != nil {
			return err
		}
	}
	for _, gp := range []string{PolicyGuarded, PolicyGuardedDeg} {
		gs := Gains(first, gp, "oblivious")
		if len(gs) == 0 {
			continue
		}
		rep.GuardedGains = append(rep.GuardedGains, gs...)
		fmt.Fprintf(stdout, "\n%s vs oblivious (mean utility):\n", gp)
		if err := WriteGains(stdout, gs); err != nil {
			return err
		}
		if err := WriteGuard(stdout, first, gp); err != nil {
			return err
		}
	}
	for _, sp := range []string{PolicyShift, PolicyShiftCal, PolicyTruePrior} {
		gs := Gains(first, sp, "oblivious")
		if len(gs) == 0 {
			continue
		}
		rep.ShiftGains = append(rep.ShiftGains, gs...)
		fmt.Fprintf(stdout, "\n%s vs oblivious (mean utility):\n", sp)
		if err := WriteGains(stdout, gs); err != nil {
			return err
		}
		if err := WriteShift(stdout, first, sp); err != nil {
			return err
		}
	}
	jp, err := writeReport()
	if err != nil {
		return err
	}
	files, err := WritePlots(*out, rep.Summaries)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s and %d plots in %s\n", jp, len(files), *out)
	for _, r := range rep.Results {
		if r.Err != "" {
			return fmt.Errorf("eval: %s/%s load %.2f %s: %s", r.App, r.Workload, r.Load, r.Policy, r.Err)
		}
	}
	return nil
}

// The defaults of -gateway-us, -verdict-us and -ingress-ms, from
// docs/benchmarks.md: a sneakpeek decision costs 3-15 us per scheduled request at
// 100-1,000 queued and 1.3 us at 10,000 queued, when most of them are answered
// without a model ("Scheduling decisions"); the journal's fsync before a request
// is scheduled takes about 0.3-2 ms ("The whole gateway").
const (
	DefaultGatewayCostUS = 5
	DefaultVerdictCostUS = 1
	DefaultIngressMS     = 1
)

// ceilingRequests is how many requests each seed's fluid ceilings are computed
// over.
const ceilingRequests = 20000

func loadApps(ctx context.Context, dir string, names []string, profPath, savePath, lib, estimator string, noEngine bool,
	maxBatch int, cascadeFirst, peek map[string]string, stderr io.Writer) ([]*App, error) {
	if len(names) == 0 {
		ms, _ := filepath.Glob(filepath.Join(dir, "*", "manifest.yaml"))
		for _, m := range ms {
			names = append(names, filepath.Base(filepath.Dir(m)))
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("eval: no manifest under %s (use -synthetic for the built-in app)", dir)
		}
	}
	o := LoadOptions{MaxBatch: maxBatch, Profiles: Profiles{}, Estimator: estimator, CascadeFirst: cascadeFirst, Peek: peek}
	if profPath != "" {
		p, err := ReadProfiles(profPath)
		if err != nil {
			return nil, err
		}
		o.Profiles = p
	}
	if !noEngine {
		// Measure on one intra-op thread so the profile matches a gateway that
		// runs one batch at a time next to its other actors.
		e, err := engine.New(engine.Options{LibraryPath: lib, IntraOpThreads: 1, WarmupRuns: 3, ProfileRuns: 15,
			BatchSizes: batchSizes(maxBatch)})
		if err != nil {
			return nil, fmt.Errorf("eval: %w (use -no-engine with -profiles to run without ONNX Runtime)", err)
		}
		defer e.Close()
		o.Engine = e
	}
	var as []*App
	for _, name := range names {
		fmt.Fprintf(stderr, "loading %s (profiling variants and running them on the samples)...\n", name)
		a, err := LoadApp(ctx, filepath.Join(dir, name, "manifest.yaml"), o)
		if err != nil {
			return nil, err
		}
		as = append(as, a)
	}
	if savePath != "" {
		if err := o.Profiles.Write(savePath); err != nil {
			return nil, err
		}
	}
	return as, nil
}

func batchSizes(maxB int) []int {
	var out []int
	for b := 1; b < maxB; b *= 2 {
		out = append(out, b)
	}
	return append(out, maxB)
}

// parsePairs reads "k=v[,k=v]" into a map (nil for "").
func parsePairs(s string) (map[string]string, error) {
	var out map[string]string
	for _, x := range split(s) {
		k, v, ok := strings.Cut(x, "=")
		if k, v = strings.TrimSpace(k), strings.TrimSpace(v); !ok || k == "" || v == "" {
			return nil, fmt.Errorf("%q is not app=variant", x)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out, nil
}

func split(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

func floats(s string) ([]float64, error) {
	var out []float64
	for _, x := range split(s) {
		f, err := strconv.ParseFloat(x, 64)
		if err != nil {
			return nil, err
		}
		if f <= 0 {
			return nil, fmt.Errorf("%v: must be positive", f)
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

type liveRun struct {
	models           string
	apps, workloads  []string
	policies         []string
	rates, deadlines []float64
	dur              time.Duration
	devices          int
	broker, lib, out string
	opts             scheduler.Options
	// gm holds the gateway's admission settings and the simulator's jitter
	// (the -max-queue, -max-wait, -degrade-refused, -price-admission and
	// -jitter flags).
	gm GatewayModel
	// seed is the first seed; seeds how many runs of each point (seed,
	// seed+1, ...); ref the policy the summary pairs the others with.
	seed       uint64
	seeds      int
	ref        string
	noLatency  bool
	noSentAt   bool
	devicesExe string
	diag       string
}

// runLive runs every live point (app x workload x deadline x rate x policy), prints
// the comparison table and writes live.json into the output directory.
func runLive(ctx context.Context, l liveRun, stdout, stderr io.Writer) error {
	if len(l.apps) == 0 {
		return errors.New("eval: -live needs -apps")
	}
	if len(l.workloads) == 0 {
		l.workloads = []string{"natural"}
	}
	if err := os.MkdirAll(l.out, 0o755); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	dir, err := os.MkdirTemp("", "sneakgate-live-")
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	defer os.RemoveAll(dir)
	var rs []LiveResult
	for _, app := range l.apps {
		mf := filepath.Join(l.models, app, "manifest.yaml")
		m, err := manifest.Load(mf)
		if err != nil {
			return err
		}
		for _, wl := range l.workloads {
			for _, ds := range l.deadlines {
				dl := time.Duration(float64(m.DefaultDeadlineMS) * ds * float64(time.Millisecond))
				// The policies of one seed run back to back, so that each pair the
				// summary compares ran under the same conditions of the box.
				for _, rate := range l.rates {
					for i := range max(l.seeds, 1) {
						for _, pol := range l.policies {
							r, err := Live(ctx, LiveConfig{Manifest: mf, Workload: wl, Policy: pol, Rate: rate, Deadline: dl,
								Duration: l.dur, Devices: l.devices, Seed: l.seed + uint64(i), Broker: l.broker, DevicesExe: l.devicesExe, Library: l.lib, Dir: dir,
								Options: l.opts, MaxQueue: l.gm.MaxQueue, Jitter: l.gm.Jitter, NoLatencyCorrection: l.noLatency, NoSentAt: l.noSentAt,
								MaxWait: l.gm.MaxWait, DegradeRefused: l.gm.DegradeRefused, PriceShed: l.gm.PriceAdmission, Pipeline: l.gm.Pipeline, LabelShift: l.gm.LabelShift, Diag: l.diag}, stderr)
							if err != nil {
								return err
							}
							rs = append(rs, r)
						}
					}
				}
			}
		}
	}
	if err := WriteLive(stdout, rs); err != nil {
		return err
	}
	if l.seeds > 1 {
		fmt.Fprintf(stdout, "\nMeans over %d seeds with 95%% intervals; live - sim is paired by run, \"vs ref\" is the paired difference of live utility from %s's (by seed; * when its interval excludes 0):\n", l.seeds, l.ref)
		if err := WriteLiveSummary(stdout, SummarizeLive(rs, l.ref)); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(rs, "", " ")
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	p := filepath.Join(l.out, "live.json")
	if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	held := 0
	for _, r := range rs {
		if r.Holds {
			held++
		}
	}
	fmt.Fprintf(stdout, "\nlive agrees with the simulator within tolerance at %d of %d points; wrote %s\n", held, len(rs), p)
	return nil
}

// flagGatewayModel is the gateway model the parsed flags of fs describe (shared
// by the sweep and -scenario).
func flagGatewayModel(fs *flag.FlagSet) GatewayModel {
	get := func(name string) any { return fs.Lookup(name).Value.(flag.Getter).Get() }
	f64 := func(name string) float64 { return get(name).(float64) }
	us := func(name string) time.Duration { return time.Duration(f64(name) * float64(time.Microsecond)) }
	return GatewayModel{Jitter: f64("jitter"), MaxQueue: get("max-queue").(int), MaxWait: f64("max-wait"),
		MeasuredWait: get("measured-wait").(bool), DegradeRefused: get("degrade-refused").(bool),
		PriceAdmission: get("price-admission").(bool), Pipeline: get("pipeline").(bool), LabelShift: get("label-shift").(bool), ShiftEvidence: get("shift-evidence").(bool),
		MemBudget: get("mem-budget-mb").(int64) << 20, CountBudget: get("max-resident").(int),
		GatewayCost: us("gateway-us"), VerdictCost: us("verdict-us"), DecisionCost: get("decision-us").(map[string]time.Duration),
		GatewayKnown: get("gateway-known").(bool), DecisionWall: get("decision-wall").(bool),
		IngressDelay: time.Duration(f64("ingress-ms") * float64(time.Millisecond))}
}

// parseDecisionCosts parses policy=us pairs, comma-separated; "" is nil.
func parseDecisionCosts(v string) (map[string]time.Duration, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	m := map[string]time.Duration{}
	for _, kv := range strings.Split(v, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
		us, err := strconv.ParseFloat(val, 64)
		if !ok || name == "" || err != nil || !(us >= 0) || math.IsInf(us, 0) {
			return nil, fmt.Errorf("%q is not policy=microseconds or policy@load=microseconds (a number >= 0)", kv)
		}
		if pol, at, ok := strings.Cut(name, "@"); ok {
			load, err := strconv.ParseFloat(at, 64)
			if pol == "" || err != nil || !(load > 0) || math.IsInf(load, 0) {
				return nil, fmt.Errorf("%q: %q is not policy@load (a load > 0)", kv, name)
			}
			name = costKey(pol, load)
		}
		m[name] = time.Duration(us * float64(time.Microsecond))
	}
	return m, nil
}

// costKey is -decision-us's key for policy at load ("sneakpeek@1.5"), the
// load written as strconv's shortest form so that 1 and 1.0 are one key.
func costKey(policy string, load float64) string {
	return policy + "@" + strconv.FormatFloat(load, 'g', -1, 64)
}

// decisionCostAt is policy's decision charge at load from -decision-us's
// costs: its policy@load entry when there is one, else its policy entry
// (0 without either).
func decisionCostAt(costs map[string]time.Duration, policy string, load float64) time.Duration {
	if c, ok := costs[costKey(policy, load)]; ok {
		return c
	}
	return costs[policy]
}

// decisionCostFlag is -decision-us: per policy, microseconds per scheduled
// request (parseDecisionCosts), parsed once when the flag is set.
type decisionCostFlag map[string]time.Duration

func (f decisionCostFlag) String() string {
	var parts []string
	for _, p := range slices.Sorted(maps.Keys(f)) {
		parts = append(parts, fmt.Sprintf("%s=%g", p, float64(f[p])/float64(time.Microsecond)))
	}
	return strings.Join(parts, ",")
}

func (f decisionCostFlag) Set(v string) error {
	m, err := parseDecisionCosts(v)
	if err != nil {
		return err
	}
	clear(f)
	maps.Copy(f, m)
	return nil
}

func (f decisionCostFlag) Get() any { return map[string]time.Duration(f) }
