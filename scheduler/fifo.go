package scheduler

import "fmt"

func init() { Register("fifo", newFIFO) }

// fifo serves requests in arrival order on one fixed variant per application,
// batching the head request with the following requests of the same application.
type fifo struct {
	o Options
	// ix keeps the queue per application in arrival order and by hard stop
	// between decisions (index.go); hopeless is per-decision scratch.
	ix       queueIndex
	hopeless map[*Request]bool
}

func newFIFO(o Options) (Policy, error) {
	return &fifo{o: o, ix: queueIndex{arrival: true, stop: true}, hopeless: map[*Request]bool{}}, nil
}

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

// Decide makes the decision decideFull makes, from the index: the hopeless
// requests are a prefix of each application's hard-stop heap, the head is the
// queue's first other request, and its batch the next ones of its application
// in arrival order; a decision costs what it answers and batches, not the queue.
func (p *fifo) Decide(s *Snapshot) Decision {
	return p.ix.decide(s, p.decideIndexed, p.decideFull)
}

func (p *fifo) decideIndexed(s *Snapshot) Decision {
	p.ix.sync(s)
	defer p.ix.restore()
	clear(p.hopeless)
	d := Decision{Verdicts: p.ix.hopeless(s.Now, nil, p.hopeless)}
	var head *Request
	for _, r := range s.Queue {
		if !p.hopeless[r] {
			head = r
			break
		}
	}
	if head == nil || !p.ix.member(head) {
		return d
	}
	v := fixedOrDefault(head.App, p.o)
	ai := p.ix.per[head.App]
	sw, ok := PlanSwap(s, v)
	if !ok {
		d.Verdicts = p.ix.expireApp(d.Verdicts, ai, p.hopeless)
		return d
	}
	limit := min(p.o.MaxBatch, v.MaxBatch())
	rs := make([]*Request, 0, limit)
	p.ix.arrivals(ai, func(r *Request) bool {
		if !p.hopeless[r] {
			rs = append(rs, r)
		}
		return len(rs) < limit
	})
	d.Batch = newBatch(s, v, sw, rs)
	return d
}

// decideFull is the decision from a scan of the whole queue; Decide makes the
// same one from the index.
func (p *fifo) decideFull(s *Snapshot) Decision {
	vs, q := splitHopeless(s.Queue, s.Now)
	d := Decision{Verdicts: vs}
	if len(q) == 0 {
		return d
	}
	head := q[0]
	v := fixedOrDefault(head.App, p.o)
	sw, ok := PlanSwap(s, v)
	if !ok {
		d.Verdicts = expireApp(d.Verdicts, q, head.App)
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

// fixedOrDefault is fixedVariant, falling back to a's most accurate variant
// when the option names none of a's (options are validated by the caller,
// ValidateVariants).
func fixedOrDefault(a *App, o Options) *Variant {
	v, err := fixedVariant(a, o)
	if err != nil {
		return a.Variants[a.DefaultVariant]
	}
	return v
}

// expireApp appends to vs a no-variant-fits verdict for each request of q from
// application a.
func expireApp(vs []Verdict, q []*Request, a *App) []Verdict {
	for _, r := range q {
		if r.App == a {
			vs = append(vs, Verdict{Request: r, Outcome: Expired, Reason: ReasonNoVariantFits})
		}
	}
	return vs
}
