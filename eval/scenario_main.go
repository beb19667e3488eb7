package eval

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/sneakgate/sneakgate/scheduler"
)

// mainScenario is `sneakgate eval -scenario FILE`: it reads the command's other
// flags from fs (parsed), runs the scenario and prints its report. -policies
// and -loads default to ScenarioPolicies and scenarioDefaultLoads, -window,
// -max-resident and -mem-budget-mb to the scenario's own, unless given;
// -workloads names the estimators to run (default: all).
func mainScenario(ctx context.Context, fs *flag.FlagSet, path, command string, stdout, stderr io.Writer) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, n := range []string{"live", "synthetic", "apps", "profiles", "deadlines"} {
		if set[n] {
			return fmt.Errorf("eval: -%s does not apply to -scenario", n)
		}
	}
	get := func(name string) any { return fs.Lookup(name).Value.(flag.Getter).Get() }
	str := func(name string) string { return get(name).(string) }
	f64 := func(name string) float64 { return get(name).(float64) }
	c, err := LoadScenario(path)
	if err != nil {
		return err
	}
	pols := ScenarioPolicies
	if set["policies"] {
		pols = split(str("policies"))
	}
	loads := scenarioDefaultLoads
	if set["loads"] {
		loads = str("loads")
	}
	ls, err := floats(loads)
	if err != nil {
		return fmt.Errorf("eval: -loads: %w", err)
	}
	opts := scheduler.Options{MaxBatch: get("max-batch").(int), Window: c.Window, Shrink: f64("shrink"),
		PriceHorizon: get("price-horizon").(time.Duration)}
	if set["window"] {
		opts.Window = get("window").(int)
	}
	base := ScenarioPoint{Options: opts, Requests: get("n").(int), MinDeadlines: f64("min-deadlines"),
		Seed: get("seed").(uint64), GatewayModel: flagGatewayModel(fs)}
	// Residency: the scenario's engine section unless the flags say otherwise.
	if !set["max-resident"] {
		base.CountBudget = c.Engine.MaxResident
	}
	if !set["mem-budget-mb"] {
		base.MemBudget = c.Engine.MemBudgetMB << 20
	}
	seeds := get("seeds").(int)
	if seeds < 1 {
		return errors.New("eval: -seeds must be at least 1")
	}
	cfg := ScenarioConfig{Path: path, Scenario: c, Policies: pols, Loads: ls, Seeds: seeds, Base: base, Workers: get("workers").(int),
		Ref: str("ref"), Out: str("out"), Command: command, Estimators: split(str("workloads"))}
	if !get("quiet").(bool) {
		ne := len(c.Estimators)
		if len(cfg.Estimators) > 0 {
			ne = len(cfg.Estimators)
		}
		bar := progressbar.NewOptions(ne*len(ls)*seeds*len(pols), progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription("simulating"), progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100*time.Millisecond))
		cfg.Progress = func() { _ = bar.Add(1) }
		defer func() { _ = bar.Finish() }()
	}
	rep, c, err := RunScenario(ctx, cfg)
	if err != nil {
		return err
	}
	return WriteScenario(stdout, rep, c, withMaxBatch(opts).MaxBatch, cfg.Ref, cfg.Out)
}
