package scheduler

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// Options configure a policy. Fields a policy does not use are ignored.
type Options struct {
	// MaxBatch caps a batch's size (default 32; a variant's own table may cap it lower).
	MaxBatch int
	// Window is how many queued requests a searching policy considers per decision.
	Window int
	// FixedVariant names, per application, the variant a fixed-variant policy uses;
	// an application not named uses its most accurate variant.
	FixedVariant map[string]string
	// CascadeFirst names, per application, the variant the cascade runs first;
	// an application not named runs its cheapest variant first (CascadePair).
	CascadeFirst map[string]string
	// Peek names, per application, the variant whose output sneakpeek uses as
	// a per-sample signal (peek.go): its batches are first passes, and the
	// answers it is unsure of get a second opinion from the most accurate
	// variant when that pays at the price of engine time. The policy needs
	// each application's curve (PeekConfigurer); an application not named,
	// or without a curve, is not peeked.
	Peek map[string]string
	// MaxQueueDelay is how long a batching policy may hold a request to fill a batch.
	MaxQueueDelay time.Duration
	// ExhaustiveGroups is the most groups a searching policy orders exhaustively;
	// with more it searches greedily (default 3).
	ExhaustiveGroups int
	// Shrink (0..1) is the weight a data-aware policy gives the profiled utility
	// when valuing a request: (1-Shrink)*U(m|p) + Shrink*U_profiled(m). 0 is the
	// method as published; docs/evaluation-log.md ("Shrinking") measures 0.5. It
	// does not touch the degraded answer's value.
	Shrink float64
	// PriceHorizon, if positive, prices engine time over the requests that
	// arrived within it (up to maxStream of them) together with the window,
	// instead of over the window alone: at low rates a decision sees one or two
	// requests, and pricing them alone gives each whatever the instantaneous rate
	// allows, where pricing the recent stream sends the requests that gain most
	// from an expensive variant to it (docs/method.md, "Price of engine time").
	PriceHorizon time.Duration
	// EstimateAnswers lets a data-aware policy answer a request from its
	// label-shift-corrected estimate (degraded, ReasonEstimateWorthMore) when
	// that answer is worth at least as much as every model answer, even with
	// engine time to spare: where the live class mix makes the models' answers
	// worth less than the estimate's (a VAD in a meeting, whose models miss
	// speech the application values most), running them loses utility and
	// engine time. It needs the label-shift correction (Request.Mix and
	// Request.ShiftedUtility, set by Reweigh); see decisionState.estimateWorthMore.
	EstimateAnswers bool
	// PlanAhead is how many batches after the first a searching policy may
	// take from one plan before it plans again (ahead.go); 0 plans at every
	// decision.
	PlanAhead int
}

// DefaultOptions returns the options used for fields left zero.
func DefaultOptions() Options {
	return Options{MaxBatch: 32, Window: 128, MaxQueueDelay: 2 * time.Millisecond, ExhaustiveGroups: 3}
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.MaxBatch <= 0 {
		o.MaxBatch = d.MaxBatch
	}
	if o.Window <= 0 {
		o.Window = d.Window
	}
	if o.MaxQueueDelay <= 0 {
		o.MaxQueueDelay = d.MaxQueueDelay
	}
	if o.ExhaustiveGroups <= 0 {
		o.ExhaustiveGroups = d.ExhaustiveGroups
	}
	return o
}

// Factory makes a policy from options.
type Factory func(Options) (Policy, error)

var (
	regMu    sync.RWMutex
	registry = map[string]Factory{}
)

// Register makes a policy available by name. It panics on a duplicate name, which is
// a programming error caught at init.
func Register(name string, f Factory) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("scheduler: policy registered twice: " + name)
	}
	registry[name] = f
}

// New makes the named policy. It returns an error naming the known policies when the
// name is unknown.
func New(name string, o Options) (Policy, error) {
	regMu.RLock()
	f, ok := registry[name]
	regMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("scheduler: unknown policy %q (known: %v)", name, Names())
	}
	if !(o.Shrink >= 0 && o.Shrink <= 1) {
		return nil, fmt.Errorf("scheduler: shrink %v: must be in [0, 1]", o.Shrink)
	}
	return f(o.withDefaults())
}

// Names lists the registered policies, sorted.
func Names() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// ValidateVariants checks that every FixedVariant, CascadeFirst and Peek option
// names a variant of a known application.
func ValidateVariants(apps map[string]*App, o Options) error {
	for app := range o.FixedVariant {
		a, ok := apps[app]
		if !ok {
			return fmt.Errorf("scheduler: fixed variant for unknown app %q", app)
		}
		if _, err := fixedVariant(a, o); err != nil {
			return err
		}
	}
	for app := range o.CascadeFirst {
		a, ok := apps[app]
		if !ok {
			return fmt.Errorf("scheduler: cascade first variant for unknown app %q", app)
		}
		if _, _, err := CascadePair(a, o); err != nil {
			return err
		}
	}
	for app := range o.Peek {
		a, ok := apps[app]
		if !ok {
			return fmt.Errorf("scheduler: peek variant for unknown app %q", app)
		}
		if _, _, err := PeekPair(a, o); err != nil {
			return err
		}
	}
	return nil
}
