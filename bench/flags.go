package bench

import (
	"flag"
	"os"
	"time"
)

// Flags registers the benchmark's flags on fs and returns the Config they fill
// when fs is parsed (the caller sets GatewayBinary, defaulting to itself).
func Flags(fs *flag.FlagSet) *Config {
	c := &Config{}
	fs.StringVar(&c.App, "app", "fashion", "application `name`; its manifest is {models}/{app}/manifest.yaml")
	fs.StringVar(&c.Models, "models", "models", "models `dir`")
	fs.StringVar(&c.Manifest, "manifest", "", "application manifest `path` (overrides -app and -models)")
	fs.StringVar(&c.Policy, "policy", "fixed-batch", "the gateway's scheduler.policy")
	fs.StringVar(&c.Variant, "variant", "logreg", "scheduler.fixed_variant for the app (fifo, fixed-batch; empty: the most accurate)")
	fs.StringVar(&c.Encoding, "encoding", "b64", "request input encoding: b64 (input_b64) or json (input)")
	fs.IntVar(&c.QoS, "qos", 1, "QoS of the requests and of the subscriptions (0 or 1)")
	fs.IntVar(&c.Devices, "devices", 8, "MQTT clients publishing requests")
	fs.BoolVar(&c.ScatterIDs, "scatter-ids", false, "ids in no order (a hash before the sequence number), as devices choosing random ids send, instead of increasing ones")
	fs.IntVar(&c.Concurrency, "concurrency", 64, "requests in flight over all devices (closed loop)")
	fs.BoolVar(&c.Saturate, "saturate", false, "measure each path at -concurrency, twice that, and so on up to -max-concurrency, and compare each path at its highest throughput (its capacity) instead of both at -concurrency")
	fs.IntVar(&c.MaxConcurrency, "max-concurrency", 512, "the highest concurrency measured with -saturate")
	fs.IntVar(&c.Requests, "n", 10000, "measured requests per path")
	fs.DurationVar(&c.Duration, "duration", 0, "measure each path for this long instead of -n requests")
	fs.IntVar(&c.Warmup, "warmup", 1000, "requests per path before measuring, not counted")
	fs.DurationVar(&c.Deadline, "deadline", time.Second, "request budget (deadline_ms)")
	fs.StringVar(&c.GatewayConfig, "config", "", "gateway configuration `file` to start from (default: the built-in defaults); broker, journal, metrics, policy and apps are the benchmark's")
	fs.StringVar(&c.Library, "ort-lib", os.Getenv("SNEAKGATE_ORT_LIB"), "ONNX Runtime library `path` (default $SNEAKGATE_ORT_LIB)")
	fs.StringVar(&c.ProfileCache, "profile-cache", "", "the gateway's engine profile cache `dir` (default: a fresh one per run)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the gateway, taken under the same load after the measurement, to `file`")
	fs.IntVar(&c.ProfileSeconds, "profile-seconds", 5, "length of the CPU profile")
	fs.StringVar(&c.WorkDir, "work-dir", "", "`dir` for the broker's and the gateway's files, logs and configuration (kept; default: a temporary one)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temporary work directory")
	return c
}
