package gateway

import (
	"context"
	"fmt"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/scheduler"
)

// cascadeRows bounds the validation rows a cascade curve is measured on (every
// k-th row of the split), so that start-up stays quick with expensive variants;
// the curve cache (curvecache.go) spares the runs on later starts.
const cascadeRows = 2000

// newPolicy makes the configured policy. For the cascade it first measures
// every application's operating curve (measureCascade).
func (g *Gateway) newPolicy(ctx context.Context) (scheduler.Policy, error) {
	o := g.cfg.SchedulerOptions()
	if g.cfg.Scheduler.Policy != PolicyCascade {
		p, err := scheduler.New(g.cfg.Scheduler.Policy, o)
		if err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
		pc, ok := p.(scheduler.PeekConfigurer)
		for name, a := range g.appSet() {
			if err := g.measurePeek(ctx, a); err != nil {
				return nil, err
			}
			if a.peek != nil && ok {
				pc.ConfigurePeek(name, *a.peek)
			}
		}
		return p, nil
	}
	cfg := map[string]scheduler.CascadeConfig{}
	for name, a := range g.appSet() {
		c, err := g.measureCascade(ctx, a)
		if err != nil {
			return nil, err
		}
		cfg[name] = c
		a.cascade = &c
	}
	p, err := scheduler.NewCascade(o, cfg)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return p, nil
}

// measurePeek measures a's peek curve (a.peek) when scheduler.peek names a
// variant of it; otherwise it leaves a.peek nil. A panic in it is returned as
// an error naming the application (recoverApp).
func (g *Gateway) measurePeek(ctx context.Context, a *appRuntime) (err error) {
	defer recoverApp(&err, a.m.Name, "", "measuring its peek curve")
	a.peek = nil
	if _, ok := g.cfg.Scheduler.Peek[a.m.Name]; !ok {
		return nil
	}
	peek, better, err := scheduler.PeekPair(a.sched, g.cfg.SchedulerOptions())
	if err != nil {
		return fmt.Errorf("gateway: %w: scheduler.peek: %v", ErrConfig, err)
	}
	if a.m.Validation == nil {
		g.log.Warn().Str("app", a.m.Name).Msg("peek: no validation split in the manifest; the application is not peeked")
		return nil
	}
	if peek == better {
		g.log.Warn().Str("app", a.m.Name).Str("variant", a.sched.Variants[peek].ID.Variant).
			Msg("peek: the peek variant is the most accurate, so there is no second opinion to ask; the application is not peeked")
		return nil
	}
	c, err := g.measureCurve(ctx, a, peek, better, "peek")
	if err != nil {
		return err
	}
	a.peek = &c
	return nil
}

// measureCascade runs a's first (scheduler.cascade_first, else the cheapest) and
// most accurate variants over (up to cascadeRows of) its validation split and
// builds its cascade curve. An application without a validation split never
// escalates (everything on its first variant would be wrong, so the
// configuration is cheap = better = the most accurate). A panic in it is
// returned as an error naming the application (recoverApp).
func (g *Gateway) measureCascade(ctx context.Context, a *appRuntime) (_ scheduler.CascadeConfig, err error) {
	defer recoverApp(&err, a.m.Name, "", "measuring its cascade curve")
	cheap, better, err := scheduler.CascadePair(a.sched, g.cfg.SchedulerOptions())
	if err != nil {
		return scheduler.CascadeConfig{}, fmt.Errorf("gateway: %w: scheduler.cascade_first: %v", ErrConfig, err)
	}
	if a.m.Validation == nil || cheap == better {
		if a.m.Validation == nil {
			g.log.Warn().Str("app", a.m.Name).Msg("cascade: no validation split in the manifest; every request runs on the most accurate variant")
		}
		return scheduler.CascadeConfig{Cheap: better, Better: better}, nil
	}
	return g.measureCurve(ctx, a, cheap, better, "cascade")
}

// runAllFunc runs inputs through a variant: engine.Engine.RunAll (tests count
// the runs).
type runAllFunc func(ctx context.Context, id engine.VariantID, inputs [][]float32, batch int) ([][]float64, error)

// measureCurve runs a's variants cheap and better over (up to cascadeRows of)
// its validation split and builds their curve (the cascade's, or the peek's:
// what names it in errors and the log). With engine.profile_cache set it reads
// a curve measured under the same key instead, and stores a new one
// (curvecache.go).
func (g *Gateway) measureCurve(ctx context.Context, a *appRuntime, cheap, better int, what string) (scheduler.CascadeConfig, error) {
	return g.measureCurveWith(ctx, a, cheap, better, what, g.eng.RunAll)
}

// measureCurveWith is measureCurve running the variants with run.
func (g *Gateway) measureCurveWith(ctx context.Context, a *appRuntime, cheap, better int, what string, run runAllFunc) (scheduler.CascadeConfig, error) {
	if cheap == better {
		return scheduler.CascadeConfig{Cheap: cheap, Better: better}, nil
	}
	// The files are hashed before the split is read and again after the runs
	// (below): a curve measured while a model or the split was replaced is not
	// stored. A hit only hashes them: it neither decodes the split nor runs the
	// models.
	key := g.curveKey(a, cheap, better)
	var file string
	if key != nil {
		file = g.curveFile(key)
	}
	if c, ok := g.readCurve(a, key, file); ok {
		g.log.Info().Str("app", a.m.Name).Str("cheap", a.sched.Variants[cheap].ID.Variant).
			Str("better", a.sched.Variants[better].ID.Variant).Int("points", len(c.Curve)).Str("cache", file).
			Msg(what + " curve from cache")
		return c, nil
	}
	set, err := dataset.Read(a.m.Path(a.m.Validation.File))
	if err == nil {
		err = fitsInput(a.m, set)
	}
	if err != nil {
		return scheduler.CascadeConfig{}, fmt.Errorf("gateway: %s for %s: %w", what, a.m.Name, err)
	}
	step := max(1, set.N/cascadeRows)
	var rows [][]float32
	var labels []int32
	for i := 0; i < set.N; i += step {
		rows = append(rows, set.Row(i))
		labels = append(labels, set.Labels[i])
	}
	out := make([][][]float64, 2)
	for k, vi := range []int{cheap, better} {
		id := engine.VariantID{App: a.key, Variant: a.sched.Variants[vi].ID.Variant}
		if out[k], err = run(ctx, id, rows, g.cfg.Scheduler.MaxBatch); err != nil {
			return scheduler.CascadeConfig{}, fmt.Errorf("gateway: %s for %s: %w", what, a.m.Name, err)
		}
	}
	c, err := scheduler.CascadeFromOutputs(a.sched, cheap, better, labels, out[0], out[1])
	if err != nil {
		return c, fmt.Errorf("gateway: %w", err)
	}
	g.log.Info().Str("app", a.m.Name).Str("cheap", a.sched.Variants[cheap].ID.Variant).
		Str("better", a.sched.Variants[better].ID.Variant).Int("rows", len(rows)).Int("points", len(c.Curve)).
		Msg(what + " curve measured on the validation split")
	if key != nil {
		if sameCurveKey(key, g.curveKey(a, cheap, better)) {
			g.writeCurve(a, key, file, c, set.N, len(rows))
		} else {
			g.log.Warn().Str("app", a.m.Name).Str("cache", file).
				Msg("curve cache: a model or the validation split changed while the curve was measured; not stored")
		}
	}
	return c, nil
}
