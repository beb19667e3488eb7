package gateway

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

// TestMetricsForAlerting: the labelled counters whose labels are known at start
// exist, at zero, before the first event (so that rate() and absent() alerts see
// them), and every metric a serving gateway exports passes promlint, the checks
// of `promtool check metrics`.
func TestMetricsForAlerting(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	gw := startGateway(t, testConfig(t, b.URL(), t.TempDir()), Options{})
	reg := gw.g.reg
	for _, r := range protocol.Reasons() {
		if v := metricValue(t, reg, "sneakgate_rejected_total", "reason", string(r)); v != 0 {
			t.Errorf("rejected_total{reason=%q} = %v at start", r, v)
		}
	}
	for _, st := range protocol.Statuses() {
		metricValue(t, reg, "sneakgate_replies_total", "app", "fashion", "status", string(st))
		metricValue(t, reg, "sneakgate_replies_dropped_total", "status", string(st))
	}
	for _, met := range []string{"true", "false"} {
		metricValue(t, reg, "sneakgate_deadline_total", "app", "fashion", "met", met)
	}
	for _, name := range []string{"sneakgate_requests_received_total", "sneakgate_admission_degraded_total",
		"sneakgate_device_limit_refused_total",
		"sneakgate_admission_shed_total", "sneakgate_admission_estimate_answers_total", "sneakgate_first_passes_requeued_total"} {
		metricValue(t, reg, name, "app", "fashion")
	}
	metricValue(t, reg, "sneakgate_estimated_accuracy_total", "app", "fashion")
	for _, name := range []string{"sneakgate_admission_drain_rate", "sneakgate_admission_egress_delay_seconds",
		"sneakgate_admission_estimated_wait_seconds"} {
		metricValue(t, reg, name)
	}
	if s := gw.g.stats(); len(s.Rejected) != 0 || len(s.Apps["fashion"].Replies) != 0 {
		t.Errorf("stats list series at zero: rejected %v, replies %v", s.Rejected, s.Apps["fashion"].Replies)
	}

	// Serve one request so that the histograms have series too, then lint all.
	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-lint")
	dev.request("fashion", "cam-lint", "a", samples.Row(0), 60000)
	dev.await([]string{"a"}, 30*time.Second)
	// A reply is counted when the broker acknowledges it (PUBACK), which may
	// come after the broker has delivered it to the device: wait for the count.
	if v := awaitMetric(t, reg, 1, 10*time.Second, "sneakgate_replies_total", "app", "fashion", "status", "ok"); v != 1 {
		t.Errorf("replies_total{ok} = %v within 10s of one answer's arrival, want 1", v)
	}
	if v := metricValue(t, reg, "sneakgate_last_request_received_timestamp_seconds"); v == 0 {
		t.Error("last_request_received_timestamp_seconds still 0 after a request")
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(fams).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// awaitMetric returns the series' value once it is want, or its last value
// after within.
func awaitMetric(t *testing.T, reg prometheus.Gatherer, want float64, within time.Duration, name string, labels ...string) float64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := metricValue(t, reg, name, labels...)
		if v == want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEveryMetricIsRegistered: every collector the gateway keeps in its metrics
// is registered, so that what the code counts is what an operator can scrape
// (sneakgate_admission_degraded_total was counted and never exported).
func TestEveryMetricIsRegistered(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := newMetrics(reg)
	v := reflect.ValueOf(m).Elem()
	collector := reflect.TypeFor[prometheus.Collector]()
	n := 0
	for i := range v.NumField() {
		f := v.Field(i)
		if !f.Type().Implements(collector) || f.IsNil() {
			continue
		}
		n++
		c := reflect.NewAt(f.Type(), f.Addr().UnsafePointer()).Elem().Interface().(prometheus.Collector)
		var are prometheus.AlreadyRegisteredError
		if err := reg.Register(c); !errors.As(err, &are) {
			t.Errorf("metrics.%s is not registered (Register: %v)", v.Type().Field(i).Name, err)
		}
	}
	if n < 20 {
		t.Fatalf("found %d collectors in metrics; the test no longer sees its fields", n)
	}
}
