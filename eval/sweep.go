package eval

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/scheduler"
)

// Sweep is a grid of points: every application and workload, deadline, load and
// policy.
type Sweep struct {
	Apps      []*App
	Workloads []string // empty = every workload of each app
	Policies  []string
	Loads     []float64
	// DeadlineScales multiply each application's default deadline.
	DeadlineScales []float64
	Base           Point // Requests, Seed, Jitter, MaxQueue, budgets, Options
	Workers        int
	// MinDeadlines, if positive, lengthens a point's run to at least this many
	// deadline budgets of arrivals (Requests >= MinDeadlines * rate * deadline), so
	// that an overload is a steady state and not a burst the queue absorbs; MaxRequests
	// (if positive) caps the lengthened run.
	MinDeadlines float64
	MaxRequests  int
	// Seeds is how many seeds each point runs with: Base.Seed, Base.Seed+1, ...
	// (0 means 1). Every policy sees the same requests for a given seed.
	Seeds int
}

// Result is one point's outcome.
type Result struct {
	App        string  `json:"app"`
	Workload   string  `json:"workload"`
	DeadlineMS float64 `json:"deadline_ms"`
	Load       float64 `json:"load"`
	RatePerS   float64 `json:"rate_per_s"`
	Policy     string  `json:"policy"`
	Seed       uint64  `json:"seed"`
	// Deadlines is how many deadline budgets the arrivals span: a run of only a
	// few cannot show a steady overload.
	Deadlines float64 `json:"deadlines_spanned"`
	Metrics
	Err string `json:"error,omitempty"`
}

// Points expands the sweep.
func (s *Sweep) Points() ([]Point, error) {
	var pts []Point
	for _, a := range s.Apps {
		var wls []manifest.Workload
		if len(s.Workloads) == 0 {
			wls = a.Workloads
		} else {
			for _, name := range s.Workloads {
				w, err := a.Workload(name)
				if err != nil {
					continue // not every app has every workload
				}
				wls = append(wls, w)
			}
		}
		for _, w := range wls {
			for _, ds := range s.DeadlineScales {
				for _, load := range s.Loads {
					for k := range max(1, s.Seeds) {
						for _, pol := range s.Policies {
							pt := s.Base
							pt.App, pt.Workload, pt.Policy, pt.Load = a, w, pol, load
							pt.Seed = s.Base.Seed + uint64(k)
							pt.Deadline = time.Duration(float64(a.Deadline) * ds)
							if s.MinDeadlines > 0 {
								rate := load * CapacityWith(a.Sched, withMaxBatch(pt.Options), pt.GatewayCost)
								need := int(math.Ceil(s.MinDeadlines * rate * pt.Deadline.Seconds()))
								if s.MaxRequests > 0 {
									need = min(need, s.MaxRequests)
								}
								pt.Requests = max(pt.Requests, need)
							}
							pts = append(pts, pt)
						}
					}
				}
			}
		}
	}
	return pts, nil
}

// Run simulates every point with Workers goroutines, calling progress after each,
// and returns the results in point order. It stops early when ctx is done.
func (s *Sweep) Run(ctx context.Context, pts []Point, progress func()) []Result {
	out := make([]Result, len(pts))
	parallel(ctx, len(pts), s.Workers, func(i int) {
		pt := pts[i]
		r := Result{App: pt.App.Sched.Name, Workload: pt.Workload.Name,
			DeadlineMS: float64(pt.Deadline) / 1e6, Load: pt.Load, Policy: pt.Policy, Seed: pt.Seed,
			RatePerS: pt.Load * CapacityWith(pt.App.Sched, withMaxBatch(pt.Options), pt.GatewayCost)}
		r.Deadlines = float64(pt.Requests) / (r.RatePerS * pt.Deadline.Seconds())
		m, err := Simulate(pt, nil)
		r.Metrics = m
		if err != nil {
			r.Err = err.Error()
		}
		out[i] = r
		if progress != nil {
			progress()
		}
	})
	return out
}

// parallel calls fn(i) for i in [0, n) on max(1, workers) goroutines and returns
// when every call handed out has returned; it hands out no more once ctx is done.
func parallel(ctx context.Context, n, workers int, fn func(i int)) {
	work := make(chan int)
	var wg sync.WaitGroup
	for range max(1, workers) {
		wg.Go(func() {
			for i := range work {
				fn(i)
			}
		})
	}
	for i := range n {
		select {
		case work <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
}

func withMaxBatch(o scheduler.Options) scheduler.Options {
	if o.MaxBatch <= 0 {
		o.MaxBatch = scheduler.DefaultOptions().MaxBatch
	}
	return o
}
