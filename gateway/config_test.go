package gateway

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sneakgate.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfigDefaultsAndPaths(t *testing.T) {
	p := writeConfig(t, "store:\n  path: state/j.db\napps:\n  - manifest: m/manifest.yaml\n")
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(p)
	if c.Store.Path != filepath.Join(dir, "state/j.db") || c.Apps[0].Manifest != filepath.Join(dir, "m/manifest.yaml") {
		t.Errorf("paths not resolved: %q %q", c.Store.Path, c.Apps[0].Manifest)
	}
	if c.Scheduler.Policy != "sneakpeek" || c.MQTT.TopicPrefix != "sneakgate" || c.Store.Retention != 10*time.Minute ||
		c.SchedulerOptions().PlanAhead != 3 {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestLoadConfigErrorsNameTheField(t *testing.T) {
	cases := map[string]string{
		"apps:\n  - manifest: a\nunknown_key: 1\n":                                 "unknown_key",
		"apps:\n  - manifest: a\nscheduler:\n  policy: magic\n":                    "scheduler.policy",
		"apps:\n  - manifest: a\nscheduler:\n  max_batch: 64\n":                    "scheduler.max_batch",
		"apps:\n  - manifest: a\nscheduler:\n  plan_ahead: -1\n":                   "scheduler.plan_ahead",
		"apps:\n  - manifest: a\nengine:\n  provider: npu\n":                       "engine.provider",
		"apps:\n  - manifest: a\n    provider: cuda\n":                             "apps[0].provider",
		"apps:\n  - manifest: a\nengine:\n  batch_sizes: [4, 2]\n":                 "engine.batch_sizes",
		"apps:\n  - manifest: a\nmqtt:\n  topic_prefix: 'a/#'\n":                   "mqtt.topic_prefix",
		"apps:\n  - manifest: a\nmqtt:\n  topic_prefix: '$sys'\n":                  "mqtt.topic_prefix",
		"apps:\n  - manifest: a\nmqtt:\n  topic_prefix: 'a//b'\n":                  "mqtt.topic_prefix",
		"apps:\n  - manifest: a\nmqtt:\n  topic_prefix: '/a'\n":                    "mqtt.topic_prefix",
		"apps:\n  - manifest: a\nlog:\n  level: loud\n":                            "log.level",
		"apps:\n  - manifest: a\nadmission:\n  max_queue: 0\n":                     "admission.max_queue",
		"apps:\n  - manifest: a\nadmission:\n  ingress_bytes: 1000\n":              "admission.ingress_bytes",
		"apps:\n  - manifest: a\nmqtt:\n  embedded: {enabled: true, listen: ''}\n": "mqtt.embedded.listen",
		"apps: []\n":                "apps",
		"apps:\n  - estimator: x\n": "apps[0].manifest",
		"store:\n  retention: -1s\napps:\n  - manifest: a\n":                                     "store.retention",
		"mqtt:\n  shutdown_timeout: 0s\napps:\n  - manifest: a\n":                                "mqtt.shutdown_timeout",
		"apps:\n  - manifest: a\n    default_deadline: 500us\n":                                  "apps[0].default_deadline",
		"apps:\n  - manifest: a\n    default_deadline: 1500us\n":                                 "apps[0].default_deadline",
		"apps:\n  - manifest: a\n    default_deadline: 11m\n":                                    "apps[0].default_deadline",
		"admission:\n  min_deadline: 20ms\napps:\n  - manifest: a\n    default_deadline: 10ms\n": "apps[0].default_deadline",
	}
	for body, field := range cases {
		_, err := LoadConfig(writeConfig(t, body))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), field) {
			t.Errorf("%q: error %v, want one naming %s", body, err, field)
		}
	}
}

func TestShippedConfigsLoad(t *testing.T) {
	for _, p := range []string{"../configs/dev.yaml", "../configs/sneakgate.yaml"} {
		if _, err := LoadConfig(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// A manifest's default deadline outside admission's limits is refused at
// start, naming the application: every other budget is held to those limits
// (docs/protocol.md), and the default is the budget of requests that name none.
func TestManifestDefaultDeadlineWithinLimits(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:1", t.TempDir())
	cfg.Admission.MaxDeadline = 40 * time.Millisecond // fashion's default is 50 ms
	_, err := New(context.Background(), Options{Config: cfg})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "fashion") || !strings.Contains(err.Error(), "default deadline 50ms") {
		t.Fatalf("New: %v; want a configuration error naming fashion's 50ms default deadline", err)
	}
}

// A configuration the YAML decoder refuses is explained in the file's terms: an
// unknown key names its section (not a Go type) and a duration without a unit
// says how to write one; before, "field manifests not found in type
// gateway.AppConfig" and "cannot unmarshal !!int `100` into time.Duration".
func TestLoadConfigExplainsTypeErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want, not string }{
		{"apps:\n  - manifests: x.yaml\n", `unknown key "manifests" under apps[]`, "gateway.AppConfig"},
		{"mqtt:\n  embedded:\n    tls:\n      cert: x\n", `unknown key "cert" under mqtt.embedded.tls`, "gateway."},
		{"bogus_key: 1\n", `unknown key "bogus_key" at the top level`, "gateway.Config"},
		{"apps:\n  - manifest: x.yaml\n    default_deadline: 100\n", `"100" is not a duration: write it with a unit (100ms`, "time.Duration"},
	} {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), tc.not) || !strings.Contains(err.Error(), "line ") {
			t.Errorf("%q: %v; want an error with its line, %q and without %q", tc.yaml, err, tc.want, tc.not)
		}
	}
}

// engine.batch_sizes is bounded: the engine profiles each variant on two of
// the largest batch's inputs, and the gateway fills a latency table of
// scheduler.max_batch+1 entries per variant, so [1, 1099511627776] with
// max_batch 1099511627776 passed Validate and asked for terabytes at start-up
// (a fatal out of memory, no error).
func TestLoadConfigBoundsBatchSizes(t *testing.T) {
	for _, body := range []string{
		"apps:\n  - manifest: a\nengine:\n  batch_sizes: [1, 1099511627776]\nscheduler:\n  max_batch: 1099511627776\n",
		"apps:\n  - manifest: a\nengine:\n  batch_sizes: [1, 65537]\n",
	} {
		_, err := LoadConfig(writeConfig(t, body))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "engine.batch_sizes") {
			t.Errorf("%q: error %v, want one naming engine.batch_sizes", body, err)
		}
	}
	if _, err := LoadConfig(writeConfig(t, "apps:\n  - manifest: a\nengine:\n  batch_sizes: [1, 65536]\nscheduler:\n  max_batch: 65536\n")); err != nil {
		t.Errorf("batch sizes up to 65536: %v", err)
	}
}

// mqtt.keepalive is what the MQTT client can send: whole seconds in 16 bits.
// A negative one passed Validate and, once connected, paho's keepalive
// goroutine called time.NewTicker with a negative interval and panicked,
// killing the process; one of 65536s or more wrapped in CONNECT's 16-bit
// field (100000s went to the broker as 34464s), and one below a second was
// truncated to 0, which turns keepalive off.
func TestLoadConfigKeepalive(t *testing.T) {
	for _, ka := range []string{"-1s", "-30s", "65536s", "100000s", "500ms"} {
		body := "apps:\n  - manifest: a\nmqtt:\n  keepalive: " + ka + "\n"
		_, err := LoadConfig(writeConfig(t, body))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "mqtt.keepalive") {
			t.Errorf("keepalive %s: error %v, want one naming mqtt.keepalive", ka, err)
		}
	}
	for _, ka := range []string{"0s", "1s", "30s", "65535s"} {
		if _, err := LoadConfig(writeConfig(t, "apps:\n  - manifest: a\nmqtt:\n  keepalive: "+ka+"\n")); err != nil {
			t.Errorf("keepalive %s: %v", ka, err)
		}
	}
}

// mqtt.flush_rate .nan passed the "must not be negative" check (NaN < 0 is
// false) and silently meant no cap: the outbox flush paces only when
// rate > 0.
//
// A rate below 1e-10 a second overflowed the pause between replies (a second
// over the rate, in a time.Duration) into a negative one, no pause at all, and
// one of 1e-9 paused 30 years: both are refused, 0 (no cap) is not.
func TestLoadConfigFlushRateNaN(t *testing.T) {
	for _, r := range []string{".nan", "-1", "1e-11", "1e-9", "0.009"} {
		_, err := LoadConfig(writeConfig(t, "apps:\n  - manifest: a\nmqtt:\n  flush_rate: "+r+"\n"))
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "mqtt.flush_rate") {
			t.Errorf("flush_rate %s: error %v, want one naming mqtt.flush_rate", r, err)
		}
	}
	for _, r := range []string{"0", "0.01", "200"} {
		if _, err := LoadConfig(writeConfig(t, "apps:\n  - manifest: a\nmqtt:\n  flush_rate: "+r+"\n")); err != nil && strings.Contains(err.Error(), "flush_rate") {
			t.Errorf("flush_rate %s: %v", r, err)
		}
	}
}

// TestAppProviderCPU: apps[].provider accepts cpu (the application runs on the
// CPU beside a GPU engine, engine.OnCPU) and keeps it.
func TestAppProviderCPU(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, "apps:\n  - manifest: a\n    provider: cpu\n  - manifest: b\nengine:\n  provider: cuda\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Apps[0].Provider != "cpu" || c.Apps[1].Provider != "" {
		t.Errorf("apps[].provider: %q %q", c.Apps[0].Provider, c.Apps[1].Provider)
	}
}
