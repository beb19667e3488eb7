package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

// Config is the gateway's configuration file (YAML). Unknown keys are rejected;
// named defaults (DefaultConfig) apply to every field the file leaves out; relative
// paths are resolved against the config file's directory.
type Config struct {
	Log       LogConfig       `yaml:"log"`
	MQTT      MQTTConfig      `yaml:"mqtt"`
	Store     StoreConfig     `yaml:"store"`
	Engine    EngineConfig    `yaml:"engine"`
	Scheduler SchedulerConfig `yaml:"scheduler"`
	Admission AdmissionConfig `yaml:"admission"`
	Metrics   MetricsConfig   `yaml:"metrics"`
	Apps      []AppConfig     `yaml:"apps"`

	// files holds what Validate read from the files the mqtt section names, so
	// that New uses it instead of reading them again (mqttfiles.go). Without a
	// yaml tag: not configuration, and changedSections skips it.
	files *mqttFiles
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is trace, debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is "console" (human) or "json".
	Format string `yaml:"format"`
}

// MQTTConfig configures the broker connection.
type MQTTConfig struct {
	// Broker is the broker URL, e.g. tcp://127.0.0.1:1883.
	Broker string `yaml:"broker"`
	// ClientID is the gateway's MQTT client id, its persistent session at the
	// broker. "{hostname}" in it stands for the machine's host name. Every
	// gateway connected to one broker needs its own (members of a shared group
	// too): a second client with the same id takes the session over and the
	// broker disconnects the first.
	ClientID string `yaml:"client_id"`
	Username string `yaml:"username"`
	// PasswordFile holds the password (kept out of the config file). Under
	// systemd with credentials, a bare name is a credential's, and none means
	// the credential mqtt-password if there is one (passwordPath).
	PasswordFile string `yaml:"password_file"`
	// TLS configures TLS for ssl://, tls://, mqtts:// and wss:// broker URLs.
	TLS MQTTTLS `yaml:"tls"`
	// TopicPrefix prefixes every topic: {prefix}/req/{app}/{device}.
	TopicPrefix string `yaml:"topic_prefix"`
	// SharedGroup, when set, makes the gateway one member of a group of gateways
	// that share the request stream: it subscribes to
	// $share/{group}/{prefix}/req/+/+ (MQTT shared subscription; Mosquitto
	// grants it to MQTT 3.1.1 clients too), so that the broker gives each
	// request to one member, and its retained status (and stats) go to
	// {prefix}/status/{client_id} ({prefix}/stats/{client_id}) instead of
	// {prefix}/status ({prefix}/stats). Each member needs
	// its own client_id and its own journal (store.path). A valid topic level:
	// non-empty, no '+', '#' or '/'.
	SharedGroup string `yaml:"shared_group"`
	// ReplyAllow lists the topics a request's reply_to may name, with {prefix},
	// {app} and {device} placeholders and MQTT wildcards.
	ReplyAllow []string `yaml:"reply_allow"`
	// Keepalive is the MQTT keepalive interval.
	Keepalive time.Duration `yaml:"keepalive"`
	// PublishTimeout bounds the wait for a reply's PUBACK before it goes to the outbox.
	PublishTimeout time.Duration `yaml:"publish_timeout"`
	// FlushRate caps replies per second when the outbox flushes after a reconnect
	// (0: no cap; else at least minFlushRate).
	FlushRate float64 `yaml:"flush_rate"`
	// ShutdownTimeout bounds how long a stopping gateway waits for the broker to
	// take its last replies (places for them at mqtt.max_inflight_publishes,
	// their PUBACKs). Past it the gateway gives up on the broker: what it has
	// not acknowledged stays in the journal (answers kept in the outbox,
	// requests pending) or, for a request that is not journaled, unacknowledged
	// with the broker, and is answered after the next start. The whole stop
	// then takes at most about this plus publish_timeout (a publish the MQTT
	// client has started) plus 3 s (the retained status, the disconnection, the
	// journal's close): keep that below systemd's TimeoutStopSec (30 s in the
	// shipped unit), which would kill the gateway instead.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// MaxInflightPublishes bounds the publishes handed to the broker and not
	// acknowledged yet (each holds one of the MQTT client's 65,535 packet ids;
	// with all of them held, paho fails every further publish). Beyond it,
	// replies to requests that are not journaled wait in order in the gateway,
	// and answers wait for PUBACKs (docs/reliability.md, "Packet ids").
	MaxInflightPublishes int `yaml:"max_inflight_publishes"`
	// DurableReplies commits each answer to the journal's outbox before its first
	// publish, so that a repeat of a request, before or after a crash, gets the
	// same bytes. Off saves one journal write per answer (about a quarter of the
	// throughput at saturation on a 2-core box, docs/benchmarks.md) at the price
	// of that guarantee: after a crash between publish and completion, the
	// request is answered again, possibly differently.
	DurableReplies bool `yaml:"durable_replies"`
	// StatsInterval is how often Stats go to {prefix}/stats (with SharedGroup,
	// {prefix}/stats/{client_id}); 0 turns them off.
	StatsInterval time.Duration `yaml:"stats_interval"`
	// Embedded runs an MQTT broker inside the gateway.
	Embedded EmbeddedBroker `yaml:"embedded"`
}

// EmbeddedBroker configures the in-process broker (mochi-mqtt).
type EmbeddedBroker struct {
	Enabled bool `yaml:"enabled"`
	// Listen is the TCP address it listens on. An address that is not loopback
	// (127.0.0.0/8, ::1, localhost) needs UsersFile: the broker would otherwise
	// accept anyone who can reach the port.
	Listen string `yaml:"listen"`
	// UsersFile, when set, lists the clients the broker accepts, one
	// "user:password" a line (blank lines and lines starting with '#' are
	// skipped), in plain text: make it readable by the gateway alone. With it,
	// anonymous clients and wrong passwords are refused; the gateway itself
	// connects with mqtt.username and mqtt.password_file, so list it too. A
	// relative path is resolved like mqtt.password_file (a bare name, under
	// systemd, names a credential).
	UsersFile string `yaml:"users_file"`
	// TLS makes the listener serve MQTT over TLS (mqtts://), and with
	// client_ca_file require client certificates (EmbeddedTLS).
	TLS EmbeddedTLS `yaml:"tls"`
}

// StoreConfig configures the request journal.
type StoreConfig struct {
	// Path is the bbolt file.
	Path string `yaml:"path"`
	// Retention is how long answered requests are remembered to suppress duplicates.
	Retention time.Duration `yaml:"retention"`
	// MaxBatchDelay and MaxBatchSize bound the group commit; the delay applies
	// only under load: after a commit of at least journalBusyGroup writes
	// (store.Options.DelayUnderLoad, BusyGroupSize).
	MaxBatchDelay time.Duration `yaml:"max_batch_delay"`
	MaxBatchSize  int           `yaml:"max_batch_size"`
	// MaxBytes caps the journal's live data (bytes in use, not the file size):
	// beyond it new requests are refused with reason overload, while duplicates
	// are still answered and replies still drain it. 0 means no cap. The default,
	// 1 GiB, holds about 1.2 million answered requests at about 0.85 KB each
	// (more for large inputs while pending): about 2,000 requests/s sustained over
	// the default 10-minute retention. Answers from the estimate at admission
	// (admission.journal_estimate_answers) are recorded only while less than
	// half of it is in use, so that they leave the rest to requests; beyond
	// that they go out unrecorded. Keep it well under the free disk space.
	MaxBytes int64 `yaml:"max_bytes"`
}

// EngineConfig configures ONNX Runtime.
type EngineConfig struct {
	// Library is libonnxruntime.so; empty uses $SNEAKGATE_ORT_LIB.
	Library        string `yaml:"library"`
	Provider       string `yaml:"provider"`
	IntraOpThreads int    `yaml:"intra_op_threads"`
	InterOpThreads int    `yaml:"inter_op_threads"`
	// ProviderOptions are passed to the execution provider as they are.
	ProviderOptions map[string]string `yaml:"provider_options"`
	// RequireProvider makes a GPU provider that cannot be used (no GPU, no
	// driver, CUDA's libraries missing, a CPU-only library) stop the start-up.
	// Without it the gateway falls back to the CPU provider, logs a warning and
	// says so in sneakgate_engine_provider_info and
	// sneakgate_engine_provider_fallback (docs/deployment.md, "GPU").
	RequireProvider bool `yaml:"require_provider"`
	// MemoryBudgetMB and MaxResident bound resident variants (0 = unlimited).
	MemoryBudgetMB int `yaml:"memory_budget_mb"`
	MaxResident    int `yaml:"max_resident"`
	// BatchSizes are the profiled batch sizes.
	BatchSizes []int `yaml:"batch_sizes"`
	// PadBatches runs every pass at the next of BatchSizes, the extra rows
	// zeroed (engine.Options.PadBatches), and the scheduler plans with that
	// size's latency. For CUDA: a session whose input shape changes pays
	// cuDNN's set-up again (docs/deployment.md, "GPU"); with one batch size
	// and this, it never changes. Not for apps[].provider: cpu beside a GPU
	// engine (engine.OnCPU).
	PadBatches  bool `yaml:"pad_batches"`
	WarmupRuns  int  `yaml:"warmup_runs"`
	ProfileRuns int  `yaml:"profile_runs"`
	// WarmUp runs every variant the gateway loads before it serves once at
	// scheduler.max_batch and once at 1 (engine.Engine.Warm): at start, and,
	// without residency limits, a reload's new versions, which are then loaded
	// before the swap rather than when first run. The first requests then meet
	// steady passes, for about 40 MiB more memory at idle with the bundled
	// models (and both versions resident for a moment during a reload).
	WarmUp bool `yaml:"warm_up"`
	// ProfileCache is a directory where measured profiles are kept across restarts.
	ProfileCache string `yaml:"profile_cache"`
}

// PolicyCascade is the scheduler.policy of the confidence cascade
// (scheduler.NewCascade): not a registered policy, since the loop must measure
// its curves and run its second passes.
const PolicyCascade = "cascade"

// PolicyPeeks is the one policy scheduler.peek applies to.
const PolicyPeeks = "sneakpeek"

// SchedulerConfig selects and tunes the scheduling policy.
type SchedulerConfig struct {
	// Policy is a registered policy name (scheduler.Names()) or "cascade" (the
	// gateway measures each application's cascade curve on its validation split
	// at start-up and on reload).
	Policy        string            `yaml:"policy"`
	MaxBatch      int               `yaml:"max_batch"`
	Window        int               `yaml:"window"`
	MaxQueueDelay time.Duration     `yaml:"max_queue_delay"`
	FixedVariant  map[string]string `yaml:"fixed_variant"`
	// CascadeFirst names, per application, the variant the cascade policy runs
	// first (default: the cheapest). docs/evaluation-log.md ("The cascade's first
	// variant") shows that a mid-sized first variant can beat the cheapest.
	CascadeFirst map[string]string `yaml:"cascade_first"`
	// Peek names, per application, the variant whose output the sneakpeek
	// policy uses as a per-sample signal (scheduler.Options.Peek): batches
	// on it are first passes, and the answers it is unsure of get a second
	// opinion from the most accurate variant when that pays at the price of
	// engine time. The gateway measures each peeked application's curve on
	// its validation split at start-up and on reload, as for the cascade.
	// docs/evaluation-log.md ("The peek") says where it pays.
	Peek map[string]string `yaml:"peek"`
	// Shrink is scheduler.Options.Shrink for the data-aware policies.
	Shrink float64 `yaml:"shrink"`
	// PriceHorizon is scheduler.Options.PriceHorizon (0: price over the window).
	PriceHorizon time.Duration `yaml:"price_horizon"`
	// EstimateAnswers is scheduler.Options.EstimateAnswers: a data-aware policy
	// answers a request from its label-shift-corrected estimate (degraded,
	// reason estimate_worth_more) when that answer is worth at least as much
	// as any model's in the live class mix, shrunk as the variants' values are
	// (docs/evaluation-log.md, "Answers from the estimate"). It acts only for
	// applications with the label-shift correction (apps[].label_shift) and a
	// validation split. On by default. The test reads only the request, so
	// admission makes it (the policy's scheduler.EstimateRule, published with
	// each decision) and answers such a request before the journal write,
	// neither journaled nor queued, its reply handled like price_shed's; the
	// scheduler answers the few queued without the test (before its first
	// decision, recovered from the journal, prepared again by a reload).
	EstimateAnswers bool `yaml:"estimate_answers"`
	// PlanAhead is scheduler.Options.PlanAhead: how many batches after the
	// first a searching policy takes from one plan before it plans again, each
	// only while it still holds (scheduler/ahead.go). Default 3: a window of
	// 128 at the cap of 32 plans about four batches.
	PlanAhead int `yaml:"plan_ahead"`
	// LatencyCorrection corrects the variants' latency tables from the observed
	// forward passes and adds the loop's own measured time per request
	// (gateway/latency.go); false keeps the start-up profiles.
	LatencyCorrection bool `yaml:"latency_correction"`
	// Pipeline decides the next batch while the engine runs the current one,
	// for the current one's planned end (gateway/loop.go Run), instead of
	// after it while the engine waits.
	Pipeline bool `yaml:"pipeline"`
}

// AdmissionConfig bounds what is accepted.
type AdmissionConfig struct {
	// MaxQueue is the most requests waiting for a model; beyond it requests are
	// rejected with reason overload and a retry-after hint.
	MaxQueue int `yaml:"max_queue"`
	// MaxQueuePerDevice is the most of those one device may have (0: no such
	// limit); beyond it that device's requests are rejected overload, with a
	// retry-after hint, while other devices' are still admitted.
	MaxQueuePerDevice int `yaml:"max_queue_per_device"`
	// MaxWait refuses a request (overload, with retry_after_ms) of an
	// application without an estimator that no choice of variants could answer
	// in time: the queue ahead of it would take longer than this fraction of its
	// deadline budget to drain even at the fastest rate the gateway could drain
	// it (every queued request on its application's cheapest variant, plus the
	// loop's own measured time per request), or that drain plus the delay of
	// replies to the broker exceeds the whole budget. Every request, with an
	// estimator or not, is refused when at the rate the gateway has actually
	// been draining it would wait longer than the whole budget (the gateway is
	// short of CPU). See scheduler.Backlog.Refuses.
	// 0 turns the check off, so that only max_queue refuses. The default 0.5
	// leaves half the budget for the batch, the journal and the broker.
	MaxWait float64 `yaml:"max_wait"`
	// DegradeRefused answers a request refused for overload (max_wait or
	// max_queue) from its application's SneakPeek estimate, status degraded
	// (reason overload_shed), instead of a bare rejection, when the application
	// has an estimator: the same answer the scheduler gives a request it sheds.
	// It costs the input's decoding and the estimate, not a journal write; like
	// a rejection's, the request is acknowledged once the broker has the reply
	// (a crash in between makes the broker deliver it again, answered anew).
	// Beyond the cheapest variant's
	// capacity this is most of what data-aware scheduling is worth
	// (docs/evaluation-log.md, "Admission").
	DegradeRefused bool `yaml:"degrade_refused"`
	// PriceShed answers at admission, from its SneakPeek estimate (status
	// degraded, reason overload_shed), a request that the scheduler's shedding
	// walk would shed anyway: while the policy is shedding under overload, an
	// arrival whose model answer is worth less per second of engine time than
	// what the latest decision shed (scheduler.PriceGate; sneakpeek only, the
	// gate expires 250 ms after the last decision that shed). The request is
	// neither journaled nor queued, so the scheduling loop does not spend a
	// verdict on it; its reply is handled like degrade_refused's.
	PriceShed bool `yaml:"price_shed"`
	// JournalEstimateAnswers records each answer admission gives from the
	// estimate (degrade_refused, price_shed, and the policy's answers from
	// the estimate) in the journal before it is published (one write in a
	// group commit the handler waits for; no input kept), so that a copy of
	// the request after a crash gets the same reply instead of a model's
	// answer or an expiry. Off, those answers are remembered in memory only
	// (lost at a restart), and admission spends no journal write on them.
	JournalEstimateAnswers bool `yaml:"journal_estimate_answers"`
	// Workers is the number of request handlers (parse, admit, journal); their
	// journal writes share group commits.
	Workers int `yaml:"workers"`
	// IngressQueue bounds the messages waiting for a handler; when it is full
	// the MQTT client waits for room (it stops reading; the broker keeps the
	// rest), so that no message is acknowledged unread.
	IngressQueue int `yaml:"ingress_queue"`
	// IngressBytes bounds the bytes of request payloads queued for the
	// handlers and in their hands; when the next message would go beyond it
	// the MQTT client waits, as for a full queue. With large payloads it, not
	// IngressQueue, is what bounds the gateway's memory for requests the
	// broker's in-flight window does not hold back (QoS 0). At least
	// MaxPayloadBytes.
	IngressBytes    int           `yaml:"ingress_bytes"`
	MaxPayloadBytes int           `yaml:"max_payload_bytes"`
	MinDeadline     time.Duration `yaml:"min_deadline"`
	MaxDeadline     time.Duration `yaml:"max_deadline"`
}

// MetricsConfig configures the Prometheus endpoint.
type MetricsConfig struct {
	// Listen is the HTTP address of /metrics, /healthz and /readyz; empty
	// disables it.
	Listen string `yaml:"listen"`
	// Pprof also serves Go's profiler under /debug/pprof/ on that listener (for
	// measuring; keep the listener on loopback), and has the engine worker read
	// its thread's CPU clock around each forward pass
	// (sneakgate_infer_cpu_seconds_total), which costs a pass two system calls.
	Pprof bool `yaml:"pprof"`
}

// AppConfig names one application to serve.
type AppConfig struct {
	// Manifest is the application's manifest.yaml.
	Manifest string `yaml:"manifest"`
	// Estimator names the SneakPeek estimator to use (default: the manifest's first).
	Estimator string `yaml:"estimator"`
	// DefaultDeadline overrides the manifest's default deadline.
	DefaultDeadline time.Duration `yaml:"default_deadline"`
	// LabelShift corrects each estimate for the live label mix (online EM from
	// the estimator's mean output on the validation split, sneakpeek.PriorShift)
	// and answers a request without a model (degraded, shed) from the corrected
	// estimate; the variants' values keep the raw one (scheduler.Reweigh). On by
	// default for an application with an estimator (nil: on, and off with a log
	// line when the validation split the manifest names cannot be read); false
	// turns it off, true makes a missing estimator, or a named validation split
	// that cannot be read, an error. A manifest that names no validation split
	// starts the correction from its prior, nil or true (shiftStart).
	// docs/evaluation-log.md, "Label-shift correction on by default", has what it
	// gains and costs.
	LabelShift *bool `yaml:"label_shift"`
	// ClassBased ignores the manifest's per-sample difficulty model: expected
	// accuracy is then sum_y p(y) recall(y), the published method's form (for
	// comparison). The difficulty model is used only with the estimator it was
	// trained on (the manifest's difficulty.estimator).
	ClassBased bool `yaml:"class_based"`
	// Provider "cpu" runs the application's variants on the CPU provider
	// whatever engine.provider says, beside the other applications on the GPU:
	// for models the GPU provider cannot run (docs/deployment.md, "GPU": the
	// vad models kill the CUDA provider of the library `make ort-gpu`
	// installs). Empty, the default: engine.provider.
	Provider string `yaml:"provider"`
}

// defaultShutdownTimeout is mqtt.shutdown_timeout's default: with the default
// publish_timeout (5 s) and 3 s for the rest, the stop ends within 23 s, below
// the shipped unit's TimeoutStopSec (30 s).
const defaultShutdownTimeout = 15 * time.Second

// DefaultConfig returns the configuration used for every field a file leaves out.
func DefaultConfig() Config {
	so := scheduler.DefaultOptions()
	return Config{
		Log: LogConfig{Level: "info", Format: "console"},
		MQTT: MQTTConfig{
			Broker: "tcp://127.0.0.1:1883", ClientID: "sneakgate", TopicPrefix: "sneakgate",
			ReplyAllow: []string{"{prefix}/res/{app}/{device}"},
			Keepalive:  30 * time.Second, PublishTimeout: 5 * time.Second, FlushRate: 2000, StatsInterval: 10 * time.Second,
			ShutdownTimeout:      defaultShutdownTimeout,
			DurableReplies:       true,
			MaxInflightPublishes: defaultMaxInflightPublishes,
			Embedded:             EmbeddedBroker{Listen: "127.0.0.1:1883"},
		},
		Store: StoreConfig{
			Path: "sneakgate.db", Retention: 10 * time.Minute,
			MaxBatchDelay: time.Millisecond, MaxBatchSize: 256, MaxBytes: 1 << 30,
		},
		Engine: EngineConfig{
			Provider: "cpu", IntraOpThreads: 1, InterOpThreads: 1,
			BatchSizes: []int{1, 2, 4, 8, 16, 32}, WarmupRuns: 3, ProfileRuns: 7,
			WarmUp: true, // docs/benchmarks.md, "Warm sessions before the first request"
		},
		Scheduler: SchedulerConfig{Policy: "sneakpeek", MaxBatch: so.MaxBatch, Window: so.Window, MaxQueueDelay: so.MaxQueueDelay,
			Shrink: 0.5, // docs/evaluation-log.md, "Shrinking"
			// docs/evaluation-log.md, "Price horizon": +0.004-0.007 on fashion in the
			// simulator, even with the window's price live.
			PriceHorizon: time.Second,
			// docs/evaluation-log.md, "Answers from the estimate": vad meeting
			// 0.05-0.26 above every baseline at every load.
			EstimateAnswers: true,
			// docs/evaluation.md, "With each policy's decision time charged":
			// a third of sneakpeek's decision time per request on satellite.
			PlanAhead:         3,
			LatencyCorrection: true},
		Admission: AdmissionConfig{
			MaxQueue: 10000, MaxWait: 0.5, DegradeRefused: true, PriceShed: true, JournalEstimateAnswers: true, Workers: 128, IngressQueue: 4096, IngressBytes: 64 << 20, MaxPayloadBytes: 256 << 10,
			MinDeadline: time.Millisecond, MaxDeadline: 10 * time.Minute,
		},
	}
}

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("config")

func configErr(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(format, args...))
}

// LoadConfig reads, defaults, resolves and validates the config file at path.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	c := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrConfig, path, explainYAML(err))
	}
	c.resolve(filepath.Dir(path))
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

func (c *Config) resolve(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Store.Path)
	abs(&c.Engine.Library)
	abs(&c.Engine.ProfileCache)
	c.MQTT.ClientID = expandHostname(c.MQTT.ClientID, os.Hostname)
	c.MQTT.PasswordFile = passwordPath(c.MQTT.PasswordFile, dir, os.Getenv("CREDENTIALS_DIRECTORY"))
	if c.MQTT.Embedded.UsersFile != "" {
		c.MQTT.Embedded.UsersFile = passwordPath(c.MQTT.Embedded.UsersFile, dir, os.Getenv("CREDENTIALS_DIRECTORY"))
	}
	abs(&c.MQTT.TLS.CAFile)
	abs(&c.MQTT.TLS.CertFile)
	abs(&c.MQTT.TLS.KeyFile)
	abs(&c.MQTT.Embedded.TLS.CertFile)
	abs(&c.MQTT.Embedded.TLS.KeyFile)
	abs(&c.MQTT.Embedded.TLS.ClientCAFile)
	for i := range c.Apps {
		abs(&c.Apps[i].Manifest)
	}
}

// minFlushRate is the smallest mqtt.flush_rate other than 0: a reply every
// 100 s.
const minFlushRate = 0.01

// Validate checks every field, naming the first bad one. It reads the files the
// mqtt section names (TLS certificates and keys, the embedded broker's users)
// and keeps what they hold for New, which does not read them again.
func (c *Config) Validate() error {
	switch c.Log.Level {
	case "trace", "debug", "info", "warn", "error":
	default:
		return configErr("log.level", "%q: want trace, debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "console", "json":
	default:
		return configErr("log.format", "%q: want console or json", c.Log.Format)
	}
	if c.MQTT.Broker == "" {
		return configErr("mqtt.broker", "required")
	}
	if _, err := c.brokerTLS(); err != nil {
		return err
	}
	if c.MQTT.ClientID == "" {
		return configErr("mqtt.client_id", "required")
	}
	// The rule devices and `sneakgate tail` check too: a prefix they refuse
	// (starting with $, with an empty level) would be one the gateway serves
	// alone.
	if err := protocol.CheckPrefix(c.MQTT.TopicPrefix); err != nil {
		return configErr("mqtt.topic_prefix", "%v", err)
	}
	if g := c.MQTT.SharedGroup; g != "" {
		if !validTopicLevel(g) {
			return configErr("mqtt.shared_group", "%q: must be one topic level, without '+', '#' or '/'", g)
		}
		// The client id names the member's status topic.
		if !validTopicLevel(c.MQTT.ClientID) {
			return configErr("mqtt.client_id", "%q: with mqtt.shared_group it names the status topic {prefix}/status/{client_id}, so it must be one topic level, without '+', '#' or '/'", c.MQTT.ClientID)
		}
	}
	if len(c.MQTT.ReplyAllow) == 0 {
		return configErr("mqtt.reply_allow", "must list at least the device's own result topic")
	}
	// The client sends whole seconds in 16 bits (0: off); paho panics, in a
	// goroutine of its own, on a negative one.
	if ka := c.MQTT.Keepalive; ka < 0 || ka > maxKeepalive || (ka > 0 && ka < time.Second) {
		return configErr("mqtt.keepalive", "%s: must be 0 (off) or between 1s and %s", ka, maxKeepalive)
	}
	if c.MQTT.PublishTimeout <= 0 {
		return configErr("mqtt.publish_timeout", "must be positive")
	}
	if c.MQTT.ShutdownTimeout <= 0 {
		return configErr("mqtt.shutdown_timeout", "must be positive")
	}
	if c.MQTT.StatsInterval < 0 {
		return configErr("mqtt.stats_interval", "must not be negative")
	}
	// 0 is no cap; below minFlushRate the pause between replies (a second over
	// the rate) is hours, or overflows a time.Duration into no pause at all.
	if r := c.MQTT.FlushRate; !(r >= minFlushRate || r == 0) { // NaN too
		return configErr("mqtt.flush_rate", "%v: must be 0 (no cap) or at least %v replies a second", r, minFlushRate)
	}
	if n := c.MQTT.MaxInflightPublishes; n < 1 || n > maxInflightPublishes {
		return configErr("mqtt.max_inflight_publishes", "%d: must be between 1 and %d (the MQTT client has 65,535 packet ids, and needs a few for its status and subscription)", n, maxInflightPublishes)
	}
	if e := c.MQTT.Embedded; e.Enabled {
		if e.Listen == "" {
			return configErr("mqtt.embedded.listen", "required when the embedded broker is enabled")
		}
		if _, err := c.embeddedTLS(); err != nil {
			return err
		}
		if e.UsersFile != "" {
			if _, err := c.embeddedUsers(); err != nil {
				return err
			}
		} else if !loopbackAddr(e.Listen) && e.TLS.ClientCAFile == "" {
			return configErr("mqtt.embedded.listen", "%q is not a loopback address: the embedded broker would accept anyone who can reach it; listen on 127.0.0.1, or set mqtt.embedded.users_file or mqtt.embedded.tls.client_ca_file", e.Listen)
		}
	}
	if c.Store.Path == "" {
		return configErr("store.path", "required")
	}
	if c.Store.Retention <= 0 {
		return configErr("store.retention", "must be positive")
	}
	if c.Store.MaxBatchSize <= 0 || c.Store.MaxBatchDelay < 0 {
		return configErr("store.max_batch_size", "must be positive (and max_batch_delay not negative)")
	}
	if c.Store.MaxBytes < 0 {
		return configErr("store.max_bytes", "must not be negative (0: no cap)")
	}
	switch c.Engine.Provider {
	case "cpu", "cuda", "tensorrt":
	default:
		return configErr("engine.provider", "%q: want cpu, cuda or tensorrt", c.Engine.Provider)
	}
	if c.Engine.IntraOpThreads < 0 || c.Engine.InterOpThreads < 0 {
		return configErr("engine.intra_op_threads", "must not be negative")
	}
	if c.Engine.MemoryBudgetMB < 0 || c.Engine.MaxResident < 0 {
		return configErr("engine.memory_budget_mb", "budgets must not be negative")
	}
	if len(c.Engine.BatchSizes) == 0 {
		return configErr("engine.batch_sizes", "must list at least one batch size")
	}
	for i, b := range c.Engine.BatchSizes {
		if b < 1 || (i > 0 && b <= c.Engine.BatchSizes[i-1]) {
			return configErr("engine.batch_sizes", "%v: must be positive and increasing", c.Engine.BatchSizes)
		}
		if b > maxBatchSize {
			return configErr("engine.batch_sizes", "%v: %d exceeds %d", c.Engine.BatchSizes, b, maxBatchSize)
		}
	}
	if c.Engine.ProfileRuns < 1 {
		return configErr("engine.profile_runs", "must be at least 1")
	}
	if c.Scheduler.PlanAhead < 0 || c.Scheduler.PlanAhead > maxPlanAhead {
		return configErr("scheduler.plan_ahead", "%d: must be between 0 and %d", c.Scheduler.PlanAhead, maxPlanAhead)
	}
	if !(c.Scheduler.Shrink >= 0 && c.Scheduler.Shrink <= 1) {
		return configErr("scheduler.shrink", "%v: must be between 0 and 1", c.Scheduler.Shrink)
	}
	if c.Scheduler.Policy != PolicyCascade {
		if _, err := scheduler.New(c.Scheduler.Policy, c.SchedulerOptions()); err != nil {
			return configErr("scheduler.policy", "%v (or %s)", err, PolicyCascade)
		}
	}
	if len(c.Scheduler.Peek) > 0 && c.Scheduler.Policy != PolicyPeeks {
		return configErr("scheduler.peek", "only the %s policy peeks (scheduler.policy is %s)", PolicyPeeks, c.Scheduler.Policy)
	}
	if c.Scheduler.MaxBatch < 1 || c.Scheduler.MaxBatch > c.Engine.BatchSizes[len(c.Engine.BatchSizes)-1] {
		return configErr("scheduler.max_batch", "%d: must be between 1 and the largest engine.batch_sizes entry", c.Scheduler.MaxBatch)
	}
	if c.Admission.MaxQueue < 1 {
		return configErr("admission.max_queue", "must be at least 1")
	}
	if c.Admission.MaxQueuePerDevice < 0 {
		return configErr("admission.max_queue_per_device", "%d: must be 0 (no limit) or positive", c.Admission.MaxQueuePerDevice)
	}
	if !(c.Admission.MaxWait >= 0 && c.Admission.MaxWait <= 10) {
		return configErr("admission.max_wait", "%v: must be between 0 (off) and 10", c.Admission.MaxWait)
	}
	if c.Admission.Workers < 1 || c.Admission.Workers > 4096 {
		return configErr("admission.workers", "%d: must be between 1 and 4096", c.Admission.Workers)
	}
	if c.Admission.IngressQueue < 1 {
		return configErr("admission.ingress_queue", "must be at least 1")
	}
	if c.Admission.MaxPayloadBytes < 64 {
		return configErr("admission.max_payload_bytes", "must be at least 64")
	}
	if c.Admission.IngressBytes < c.Admission.MaxPayloadBytes {
		return configErr("admission.ingress_bytes", "%d: must be at least admission.max_payload_bytes (%d), so that a request of the largest size admitted fits", c.Admission.IngressBytes, c.Admission.MaxPayloadBytes)
	}
	if c.Admission.MinDeadline <= 0 || c.Admission.MaxDeadline < c.Admission.MinDeadline {
		return configErr("admission.max_deadline", "need 0 < min_deadline <= max_deadline")
	}
	if len(c.Apps) == 0 {
		return configErr("apps", "must name at least one application manifest")
	}
	for i, a := range c.Apps {
		if a.Manifest == "" {
			return configErr(fmt.Sprintf("apps[%d].manifest", i), "required")
		}
		switch d := a.DefaultDeadline; {
		case d < 0:
			return configErr(fmt.Sprintf("apps[%d].default_deadline", i), "must not be negative")
		case d%time.Millisecond != 0:
			// Budgets are whole milliseconds on the wire and in manifests: 500us
			// would have become 0 ms, and every request without a deadline expired.
			return configErr(fmt.Sprintf("apps[%d].default_deadline", i), "%s is not a whole number of milliseconds", d)
		case d > 0 && (d < c.Admission.MinDeadline || d > c.Admission.MaxDeadline):
			return configErr(fmt.Sprintf("apps[%d].default_deadline", i), "%s is outside admission.min_deadline..max_deadline (%s..%s)",
				d, c.Admission.MinDeadline, c.Admission.MaxDeadline)
		}
		if a.Provider != "" && a.Provider != engine.ProviderCPU {
			return configErr(fmt.Sprintf("apps[%d].provider", i), "%q: only %q (or empty for engine.provider)", a.Provider, engine.ProviderCPU)
		}
	}
	return nil
}

// engineLibrary is engine.library, or $SNEAKGATE_ORT_LIB when it is empty (as
// the engine resolves it; the load guard needs it before the engine exists).
func (c *Config) engineLibrary() string {
	if c.Engine.Library != "" {
		return c.Engine.Library
	}
	return os.Getenv(engine.LibraryEnv)
}

// SchedulerOptions maps the scheduler section to the policy options.
func (c *Config) SchedulerOptions() scheduler.Options {
	return scheduler.Options{
		MaxBatch: c.Scheduler.MaxBatch, Window: c.Scheduler.Window,
		MaxQueueDelay: c.Scheduler.MaxQueueDelay, FixedVariant: c.Scheduler.FixedVariant,
		CascadeFirst: c.Scheduler.CascadeFirst, Peek: c.Scheduler.Peek,
		Shrink: c.Scheduler.Shrink, PriceHorizon: c.Scheduler.PriceHorizon,
		EstimateAnswers: c.Scheduler.EstimateAnswers, PlanAhead: c.Scheduler.PlanAhead,
	}
}

// maxKeepalive is the longest MQTT keepalive: CONNECT holds it in 16 bits of
// seconds.
const maxKeepalive = 65535 * time.Second

// maxBatchSize bounds engine.batch_sizes (and so scheduler.max_batch), 2048
// times the default largest size: the engine profiles each variant on two of
// the largest batch's inputs and the gateway keeps a latency table of
// max_batch+1 entries per variant, so a size of 2^40 asked for terabytes at
// start-up, a fatal out of memory rather than an error.
const maxBatchSize = 1 << 16

// maxPlanAhead bounds scheduler.plan_ahead, generously: a plan covers
// scheduler.window requests (128 by default), so a few batches are all a
// plan holds at the usual batch caps.
const maxPlanAhead = 1024

// hostnamePlaceholder in mqtt.client_id stands for the machine's host name, so
// that one config file gives every gateway of a shared group its own client id.
const hostnamePlaceholder = "{hostname}"

// expandHostname replaces {hostname} in id with the host name (or "localhost"
// when it cannot be read).
func expandHostname(id string, hostname func() (string, error)) string {
	if !strings.Contains(id, hostnamePlaceholder) {
		return id
	}
	h, err := hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	return strings.ReplaceAll(id, hostnamePlaceholder, h)
}

// validTopicLevel reports whether s can be one level of a topic name and of a
// topic filter: non-empty UTF-8 without '+', '#', '/' or NUL.
func validTopicLevel(s string) bool {
	return s != "" && utf8.ValidString(s) && !strings.ContainsAny(s, "+#/\x00")
}

// RequestFilter is the filter the gateway subscribes to for requests:
// {prefix}/req/+/+, shared as $share/{group}/{prefix}/req/+/+ when
// SharedGroup is set.
func (c MQTTConfig) RequestFilter() string {
	f := protocol.RequestFilter(c.TopicPrefix)
	if c.SharedGroup != "" {
		f = "$share/" + c.SharedGroup + "/" + f
	}
	return f
}

// StatusTopic is where the gateway publishes its retained status (and its last
// will): {prefix}/status, or {prefix}/status/{client_id} for a member of a
// shared group, so that each member's availability has a topic of its own.
func (c MQTTConfig) StatusTopic() string {
	t := protocol.StatusTopic(c.TopicPrefix)
	if c.SharedGroup != "" {
		t += "/" + c.ClientID
	}
	return t
}

// StatsTopic is where the gateway publishes its periodic stats: {prefix}/stats,
// or {prefix}/stats/{client_id} for a member of a shared group.
func (c MQTTConfig) StatsTopic() string {
	t := protocol.StatsTopic(c.TopicPrefix)
	if c.SharedGroup != "" {
		t += "/" + c.ClientID
	}
	return t
}
