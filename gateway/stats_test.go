package gateway

import (
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
)

// answerBetweenReads registers collectors on a registry so that, in every
// gathering, an answer is counted right after the answer count
// (sneakgate_deadline_total) has been read and before the est_accuracy sum
// (sneakgate_estimated_accuracy_total) is, when the two are read separately:
// the collector of the sum waits for the collector of the count, which counts
// the answer once it has been read. (The registry runs collectors concurrently
// in no fixed order; this fixes the worst one.) A collector that reads both
// has nothing to wait for, and counts the answer after reading them.
type answerBetweenReads struct {
	*prometheus.Registry
	answer func()
	mu     sync.Mutex
	read   chan struct{} // closed once the count has been read in this gathering
}

// next readies the next gathering.
func (r *answerBetweenReads) next() {
	r.mu.Lock()
	r.read = make(chan struct{})
	r.mu.Unlock()
}

func (r *answerBetweenReads) Register(c prometheus.Collector) error {
	return r.Registry.Register(r.wrap(c))
}

func (r *answerBetweenReads) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		r.Registry.MustRegister(r.wrap(c))
	}
}

func (r *answerBetweenReads) wrap(c prometheus.Collector) prometheus.Collector {
	descs := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(descs); close(descs) }()
	var count, sum bool
	for d := range descs {
		count = count || strings.Contains(d.String(), `"sneakgate_deadline_total"`)
		sum = sum || strings.Contains(d.String(), `"sneakgate_estimated_accuracy_total"`)
	}
	if !count && !sum {
		return c
	}
	return &ordered{Collector: c, r: r, count: count, sum: sum}
}

type ordered struct {
	prometheus.Collector
	r          *answerBetweenReads
	count, sum bool
}

func (o *ordered) Collect(ch chan<- prometheus.Metric) {
	o.r.mu.Lock()
	read := o.r.read
	o.r.mu.Unlock()
	if o.sum && !o.count && read != nil {
		<-read
	}
	// Read the values now: a registry reads a metric's value when it processes
	// it, which may be after the answer below.
	ms := make(chan prometheus.Metric)
	go func() { o.Collector.Collect(ms); close(ms) }()
	for m := range ms {
		pb := &dto.Metric{}
		if err := m.Write(pb); err != nil {
			panic(err)
		}
		ch <- frozen{m.Desc(), pb}
	}
	if o.count && read != nil {
		o.r.answer()
		close(read)
	}
}

// frozen is a metric whose value was read at collection.
type frozen struct {
	desc *prometheus.Desc
	pb   *dto.Metric
}

func (f frozen) Desc() *prometheus.Desc { return f.desc }
func (f frozen) Write(out *dto.Metric) error {
	out.Label, out.Counter, out.Gauge, out.Untyped = f.pb.Label, f.pb.Counter, f.pb.Gauge, f.pb.Untyped
	out.Histogram, out.Summary, out.TimestampMs = f.pb.Histogram, f.pb.Summary, f.pb.TimestampMs
	return nil
}

// TestStatsAnswersOneSnapshot: deadline_met and mean_est_accuracy come from one
// read of the answers' count, deadline-met count and est_accuracy sum, and so
// does a scrape of sneakgate_deadline_total and
// sneakgate_estimated_accuracy_total. Every gathering here counts an answer
// (est_accuracy 1) after the count is read and before the sum is, if they are
// read apart (answerBetweenReads): a sum with one answer more than its count
// would make the mean exceed 1, which the stats schema refuses. The stats must
// be those of the first n answers for some n.
func TestStatsAnswersOneSnapshot(t *testing.T) {
	reg := &answerBetweenReads{Registry: prometheus.NewRegistry()}
	g := &Gateway{cfg: &Config{}, log: zerolog.Nop(), reg: reg.Registry, m: newMetrics(reg), now: time.Now, started: time.Now()}
	g.apps.Store(&map[string]*appRuntime{})
	g.m.initLabels([]string{"fashion"})
	// Answer 1: est_accuracy 0.5, met. Answer k > 1: est_accuracy 1, met when k is odd.
	g.m.countAnswer("fashion", true, 0.5)
	counted := 1
	reg.answer = func() { counted++; g.m.countAnswer("fashion", counted%2 == 1, 1) }
	// consistent reports whether a mean and a met share are those of the first
	// n answers for some n.
	consistent := func(mean, met float64) bool {
		for n := 1; n <= counted; n++ {
			if math.Abs(mean-round4((0.5+float64(n-1))/float64(n))) < 1e-9 &&
				math.Abs(met-round4(float64(1+(n-1)/2)/float64(n))) < 1e-9 {
				return true
			}
		}
		return false
	}
	for range 20 {
		reg.next()
		a := g.stats().Apps["fashion"]
		if a == nil || a.MeanEstAccuracy == nil || a.DeadlineMet == nil {
			t.Fatalf("stats without the answers: %+v", a)
		}
		if mean, met := *a.MeanEstAccuracy, *a.DeadlineMet; mean > 1 || !consistent(mean, met) {
			t.Fatalf("stats after %d answers: mean_est_accuracy %v, deadline_met %v: not those of the first n answers for any n", counted, mean, met)
		}

		// A scrape: the count and the sum from the same moment.
		reg.next()
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var n, sum float64
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				switch f.GetName() {
				case "sneakgate_deadline_total":
					n += m.GetCounter().GetValue()
				case "sneakgate_estimated_accuracy_total":
					sum += m.GetCounter().GetValue()
				}
			}
		}
		if sum != 0.5+(n-1) {
			t.Fatalf("scrape: sneakgate_estimated_accuracy_total %v with sneakgate_deadline_total %v: want %v", sum, n, 0.5+(n-1))
		}
	}
	if counted < 40 {
		t.Errorf("%d answers counted during 40 gatherings, want one each", counted-1)
	}
}
