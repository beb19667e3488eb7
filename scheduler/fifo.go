package scheduler

import "fmt"

func init() { Register("fifo", newFIFO) }

// fifo serves requests in arrival order on one fixed variant per application,
// batching the head request with the following requests of the same application.
type fifo struct {
	o Options
}

func newFIFO(o Options) (Policy, error) { return &fifo{o: o}, nil }

func (p *fifo) Name() string { return "fifo" }

// fixedVariant resolves the configured variant of a, or its most accurate.
func fixedVariant(a *App, o Options) (*Variant, error) {
	name, ok := o.FixedVariant[a.Name]
	if !ok {
		return a.Variants[a.DefaultVariant], nil
	}
	for _, v := range a.Variants {
		if v.ID.Variant == name {
			return v, nil
		}
	}
	return nil, fmt.Errorf("scheduler: app %s has no variant %q", a.Name, name)
}

func (p *fifo) Decide(s *Snapshot) Decision {
	vs, q := splitHopeless(s.Queue, s.Now)
	d := Decision{Verdicts: vs}
	if len(q) == 0 {
		return d
	}
	head := q[0]
	v, err := fixedVariant(head.App, p.o)
	if err != nil {
		// Options are validated by the caller (ValidateFixed); fall back safely.
		v = head.App.Variants[head.App.DefaultVariant]
	}
	sw, ok := PlanSwap(s, v)
	if !ok {
		for _, r := range q {
			if r.App == head.App {
				d.Verdicts = append(d.Verdicts, Verdict{Request: r, Outcome: Expired, Reason: ReasonNoVariantFits})
			}
		}
		return d
	}
	limit := min(p.o.MaxBatch, v.MaxBatch())
	rs := make([]*Request, 0, limit)
	for _, r := range q {
		if r.App == head.App {
			rs = append(rs, r)
			if len(rs) == limit {
				break
			}
		}
	}
	d.Batch = newBatch(s, v, sw, rs)
	return d
}

// ValidateFixed checks that every FixedVariant option names a variant of a known
// application.
func ValidateFixed(apps map[string]*App, o Options) error {
	for app := range o.FixedVariant {
		a, ok := apps[app]
		if !ok {
			return fmt.Errorf("scheduler: fixed variant for unknown app %q", app)
		}
		if _, err := fixedVariant(a, o); err != nil {
			return err
		}
	}
	return nil
}
