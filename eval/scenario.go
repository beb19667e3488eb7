package eval

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sneakgate/sneakgate/scheduler"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// A Scenario is a self-contained evaluation setting read from a YAML (or JSON)
// file (`sneakgate eval -scenario FILE`): applications with their variants'
// confusion matrices, latencies, swap costs and memory, periodic per-device
// request streams, and one or more simulated SneakPeek estimators given by their
// true- and false-positive rates. Every application shares one engine. No model
// or sample is needed: a variant's answer is drawn from its confusion matrix
// (Predict), an estimate from the estimator's rates.
//
// eval/scenarios/paper-illustrative.yaml is the SneakPeek paper's setting (fall
// detection and wake word, 1 s deadline) populated with paper-shaped,
// illustrative profiles, not the authors' measured ones; whoever holds the real
// profiles can write them in the same format.
type Scenario struct {
	// Name names the scenario in reports; Provenance says where its numbers come
	// from (printed with every report).
	Name       string `yaml:"name"`
	Provenance string `yaml:"provenance"`
	// Engine bounds residency: at most MaxResident variants (0 = unlimited) and
	// MemBudgetMB MiB (0 = unlimited). The command's -max-resident and
	// -mem-budget-mb override them when set.
	Engine struct {
		MaxResident int   `yaml:"max_resident"`
		MemBudgetMB int64 `yaml:"mem_budget_mb"`
	} `yaml:"engine"`
	// Window is how many queued requests a searching policy considers per
	// decision (0 = the scheduler's default); -window overrides it.
	Window     int                 `yaml:"window"`
	Apps       []ScenarioApp       `yaml:"apps"`
	Estimators []ScenarioEstimator `yaml:"estimators"`
}

// ScenarioApp is one application of a Scenario.
type ScenarioApp struct {
	Name    string   `yaml:"name"`
	Classes []string `yaml:"classes"`
	// Prior is the class prior the variants were profiled on (their profiled
	// utility) and the estimator is calibrated with.
	Prior []float64 `yaml:"prior"`
	// Mix is the arrivals' class mix (default: Prior).
	Mix []float64 `yaml:"mix"`
	// Utility is W[y][yhat]; NoAnswerUtility the value of a request of each true
	// class that gets no answer (default 0).
	Utility         [][]float64 `yaml:"utility"`
	NoAnswerUtility []float64   `yaml:"no_answer_utility"`
	DeadlineMS      float64     `yaml:"deadline_ms"`
	// Stream: Devices devices each send one request every PeriodMS, from a
	// uniformly random phase, each send moved by a uniform offset in
	// [-JitterMS, +JitterMS]. The load of a point scales the period (the
	// devices stay).
	Stream struct {
		Devices  int     `yaml:"devices"`
		PeriodMS float64 `yaml:"period_ms"`
		JitterMS float64 `yaml:"jitter_ms"`
	} `yaml:"stream"`
	Variants []ScenarioVariant `yaml:"variants"`
}

// ScenarioVariant is one model variant: its confusion matrix (counts or rows; it
// is row-normalised), its per-batch latency (a table for batch sizes 1..n, or
// FixedMS + PerItemMS x b up to MaxBatch), its load and unload costs and memory.
type ScenarioVariant struct {
	Name      string      `yaml:"name"`
	Confusion [][]float64 `yaml:"confusion"`
	LatencyMS []float64   `yaml:"latency_ms"`
	FixedMS   float64     `yaml:"fixed_ms"`
	PerItemMS float64     `yaml:"per_item_ms"`
	MaxBatch  int         `yaml:"max_batch"`
	LoadMS    float64     `yaml:"load_ms"`
	UnloadMS  float64     `yaml:"unload_ms"`
	MemMB     int64       `yaml:"mem_mb"`
}

// ScenarioEstimator is one simulated SneakPeek estimator: per application, the
// rates at which it flags a request as its positive class. A request of the
// positive class is flagged with probability TPR, any other with probability
// FPR; the estimate is the Bayes posterior of the class given the flag under the
// application's prior, p(y | flag) ∝ Prior(y) P(flag | y), so it is calibrated
// on the prior's mix. Positive is the positive class's index (default: the last
// class).
type ScenarioEstimator struct {
	Name string               `yaml:"name"`
	Note string               `yaml:"note"`
	Apps map[string]FlagRates `yaml:"apps"`
}

// FlagRates are a simulated estimator's rates for one application.
type FlagRates struct {
	TPR      float64 `yaml:"tpr"`
	FPR      float64 `yaml:"fpr"`
	Positive *int    `yaml:"positive"`
}

// LoadScenario reads and checks a scenario file and builds its applications.
func LoadScenario(path string) (*CompiledScenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("eval: scenario: %w", err)
	}
	var s Scenario
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("eval: scenario %s: %w", path, err)
	}
	c, err := s.Compile()
	if err != nil {
		return nil, fmt.Errorf("eval: scenario %s: %w", path, err)
	}
	return c, nil
}

// CompiledScenario is a checked Scenario with the scheduler's view of each
// application and, per estimator, each application's flag probabilities and
// estimates.
type CompiledScenario struct {
	Scenario
	// Sched[a] is application a's scheduler view; Eval[a] wraps it for Predict
	// (one pseudo-sample per class, labelled with it).
	Sched []*scheduler.App
	Eval  []*App
	// Deadline[a] is application a's budget.
	Deadline []time.Duration
	// Flag[e][a][y] is the probability that estimator e flags a request of
	// application a and true class y; Est[e][a][f] is the estimate of a request
	// flagged (f = 1) or not (f = 0).
	Flag [][][]float64
	Est  [][][2][]float64
}

// Compile checks s and builds its applications.
func (s *Scenario) Compile() (*CompiledScenario, error) {
	if len(s.Apps) == 0 {
		return nil, errors.New("no apps")
	}
	if len(s.Estimators) == 0 {
		return nil, errors.New("no estimators")
	}
	c := &CompiledScenario{Scenario: *s}
	c.Apps = slices.Clone(s.Apps) // build fills in defaults (Mix)
	seen := map[string]bool{}
	for i := range s.Apps {
		sa := &c.Apps[i]
		if sa.Name == "" || seen[sa.Name] {
			return nil, fmt.Errorf("app %d: missing or repeated name %q", i, sa.Name)
		}
		seen[sa.Name] = true
		a, dl, err := sa.build()
		if err != nil {
			return nil, fmt.Errorf("app %s: %w", sa.Name, err)
		}
		ea := &App{Sched: a, Labels: make([]int, a.K), Est: make([][]float64, a.K), ClassNames: sa.Classes,
			Deadline: dl, ProfileSource: "scenario " + s.Name, EstimatorSource: "simulated flag (TPR/FPR)"}
		for y := range a.K {
			ea.Labels[y] = y
			ea.Est[y] = a.Prior
		}
		if err := ea.index(); err != nil {
			return nil, err
		}
		c.Sched, c.Eval, c.Deadline = append(c.Sched, a), append(c.Eval, ea), append(c.Deadline, dl)
	}
	for _, e := range s.Estimators {
		if e.Name == "" {
			return nil, errors.New("an estimator without a name")
		}
		for name := range e.Apps {
			if !seen[name] {
				return nil, fmt.Errorf("estimator %s: unknown app %q", e.Name, name)
			}
		}
		var flag [][]float64
		var est [][2][]float64
		for ai, a := range c.Sched {
			r, ok := e.Apps[a.Name]
			if !ok {
				return nil, fmt.Errorf("estimator %s: no rates for app %s", e.Name, a.Name)
			}
			f, p, err := r.posteriors(a.Prior)
			if err != nil {
				return nil, fmt.Errorf("estimator %s, app %s: %w", e.Name, s.Apps[ai].Name, err)
			}
			flag, est = append(flag, f), append(est, p)
		}
		c.Flag, c.Est = append(c.Flag, flag), append(c.Est, est)
	}
	return c, nil
}

// posteriors returns P(flag | y) per class and the estimate given no flag and
// given a flag.
func (r FlagRates) posteriors(prior []float64) ([]float64, [2][]float64, error) {
	k := len(prior)
	pos := k - 1
	if r.Positive != nil {
		pos = *r.Positive
	}
	if pos < 0 || pos >= k {
		return nil, [2][]float64{}, fmt.Errorf("positive class %d out of range", pos)
	}
	if !(r.TPR >= 0 && r.TPR <= 1 && r.FPR >= 0 && r.FPR <= 1) {
		return nil, [2][]float64{}, fmt.Errorf("tpr %v and fpr %v must be in [0, 1]", r.TPR, r.FPR)
	}
	flag := make([]float64, k)
	for y := range k {
		flag[y] = r.FPR
	}
	flag[pos] = r.TPR
	var est [2][]float64
	for f := range 2 {
		p := make([]float64, k)
		s := 0.0
		for y := range k {
			l := flag[y]
			if f == 0 {
				l = 1 - l
			}
			p[y] = prior[y] * l
			s += p[y]
		}
		if s == 0 {
			copy(p, prior) // a flag that cannot happen: never used
		} else {
			for y := range p {
				p[y] /= s
			}
		}
		est[f] = p
	}
	return flag, est, nil
}

func (sa *ScenarioApp) build() (*scheduler.App, time.Duration, error) {
	k := len(sa.Classes)
	if k < 2 {
		return nil, 0, errors.New("needs at least two classes")
	}
	if err := checkDist("prior", sa.Prior, k); err != nil {
		return nil, 0, err
	}
	if sa.Mix == nil {
		sa.Mix = slices.Clone(sa.Prior)
	}
	if err := checkDist("mix", sa.Mix, k); err != nil {
		return nil, 0, err
	}
	if len(sa.Utility) != k {
		return nil, 0, fmt.Errorf("utility has %d rows, want %d", len(sa.Utility), k)
	}
	for y, row := range sa.Utility {
		if len(row) != k {
			return nil, 0, fmt.Errorf("utility row %d has %d entries, want %d", y, len(row), k)
		}
	}
	if sa.NoAnswerUtility != nil && len(sa.NoAnswerUtility) != k {
		return nil, 0, fmt.Errorf("no_answer_utility has %d entries, want %d", len(sa.NoAnswerUtility), k)
	}
	if !(sa.DeadlineMS > 0) {
		return nil, 0, errors.New("deadline_ms must be positive")
	}
	st := sa.Stream
	if st.Devices < 1 || !(st.PeriodMS > 0) || st.JitterMS < 0 {
		return nil, 0, errors.New("stream: devices >= 1, period_ms > 0 and jitter_ms >= 0 are required")
	}
	if len(sa.Variants) == 0 {
		return nil, 0, errors.New("no variants")
	}
	a := &scheduler.App{Name: sa.Name, K: k, Prior: slices.Clone(sa.Prior), Utility: sa.Utility,
		NoAnswer: slices.Clone(sa.NoAnswerUtility)}
	best := -1.0
	for i, sv := range sa.Variants {
		v, err := sv.build(a, i)
		if err != nil {
			return nil, 0, fmt.Errorf("variant %q: %w", sv.Name, err)
		}
		if v.Accuracy > best {
			best, a.DefaultVariant = v.Accuracy, i
		}
		a.Variants = append(a.Variants, v)
	}
	return a, ms(sa.DeadlineMS), nil
}

func (sv ScenarioVariant) build(a *scheduler.App, i int) (*scheduler.Variant, error) {
	k := a.K
	if sv.Name == "" {
		return nil, errors.New("no name")
	}
	if len(sv.Confusion) != k {
		return nil, fmt.Errorf("confusion has %d rows, want %d", len(sv.Confusion), k)
	}
	for y, row := range sv.Confusion {
		s := 0.0
		for _, x := range row {
			if x < 0 {
				return nil, fmt.Errorf("confusion row %d has a negative entry", y)
			}
			s += x
		}
		if len(row) != k || s <= 0 {
			return nil, fmt.Errorf("confusion row %d: want %d entries with a positive sum", y, k)
		}
	}
	v := &scheduler.Variant{ID: scheduler.VariantID{App: a.Name, Variant: sv.Name}, Index: i,
		Cond: sneakpeek.RowNormalise(sv.Confusion, false), Load: ms(sv.LoadMS), Unload: ms(sv.UnloadMS),
		MemBytes: sv.MemMB << 20}
	v.Recall = make([]float64, k)
	for y := range k {
		v.Recall[y] = v.Cond[y][y]
	}
	switch {
	case len(sv.LatencyMS) > 0:
		if sv.FixedMS != 0 || sv.PerItemMS != 0 {
			return nil, errors.New("give latency_ms or fixed_ms/per_item_ms, not both")
		}
		v.Latency = make([]time.Duration, len(sv.LatencyMS)+1)
		for b, l := range sv.LatencyMS {
			if !(l > 0) {
				return nil, fmt.Errorf("latency_ms[%d] must be positive", b)
			}
			v.Latency[b+1] = ms(l)
		}
	case sv.FixedMS+sv.PerItemMS > 0 && sv.FixedMS >= 0 && sv.PerItemMS >= 0:
		n := max(1, sv.MaxBatch)
		v.Latency = make([]time.Duration, n+1)
		for b := 1; b <= n; b++ {
			v.Latency[b] = ms(sv.FixedMS + sv.PerItemMS*float64(b))
		}
	default:
		return nil, errors.New("no latency (latency_ms, or fixed_ms and per_item_ms with max_batch)")
	}
	if sv.LoadMS < 0 || sv.UnloadMS < 0 || sv.MemMB < 0 {
		return nil, errors.New("load_ms, unload_ms and mem_mb must not be negative")
	}
	v.Accuracy = sneakpeek.ExpectedAccuracy(a.Prior, v.Recall)
	v.ProfiledUtility = scheduler.ExpectedUtility(a.Prior, v.Cond, a.Utility)
	return v, nil
}

func checkDist(name string, p []float64, k int) error {
	if len(p) != k {
		return fmt.Errorf("%s has %d entries, want %d", name, len(p), k)
	}
	s := 0.0
	for _, x := range p {
		if x < 0 {
			return fmt.Errorf("%s has a negative entry", name)
		}
		s += x
	}
	if math.Abs(s-1) > 1e-6 {
		return fmt.Errorf("%s sums to %v, want 1", name, s)
	}
	return nil
}

// Rates returns every application's arrival rate (requests per second) at the
// scenario's own streams.
func (c *CompiledScenario) Rates() []float64 {
	r := make([]float64, len(c.Apps))
	for i, sa := range c.Apps {
		r[i] = float64(sa.Stream.Devices) / (sa.Stream.PeriodMS / 1e3)
	}
	return r
}

// EngineLoad is the share of the engine's time that the arrival rates (per
// application) would take with every request on its application's most
// accurate variant (best) and on its cheapest one (cheap), each at its most
// efficient batch size up to maxBatch, swaps not counted. best > 1 is beyond the
// most accurate variants' capacity, cheap > 1 beyond every variant's.
func (c *CompiledScenario) EngineLoad(rates []float64, maxBatch int) (best, cheap float64) {
	for i, a := range c.Sched {
		v := a.Variants[a.DefaultVariant]
		best += rates[i] * scheduler.Amortised(v, min(maxBatch, v.MaxBatch())).Seconds()
		ch := math.Inf(1)
		for _, v := range a.Variants {
			ch = min(ch, scheduler.Amortised(v, min(maxBatch, v.MaxBatch())).Seconds())
		}
		cheap += rates[i] * ch
	}
	return best, cheap
}
