package devices

import (
	"flag"

	"github.com/sneakgate/sneakgate/protocol"
)

// SimFlags registers the simulator's flags on fs and returns the SimConfig they
// fill when fs is parsed. Pass it to Simulate after fs.Parse:
//
//	fs := flag.NewFlagSet("devsim", flag.ContinueOnError)
//	cfg := devices.SimFlags(fs)
//	if err := fs.Parse(args); err != nil { ... }
//	rep, err := devices.Simulate(ctx, *cfg)
func SimFlags(fs *flag.FlagSet) *SimConfig {
	c := &SimConfig{}
	fs.StringVar(&c.Broker, "broker", "tcp://127.0.0.1:1883", "MQTT broker `URL`")
	fs.StringVar(&c.Prefix, "prefix", protocol.DefaultPrefix, "topic prefix")
	fs.StringVar(&c.App, "app", "fashion", "application `name`; its manifest is {models}/{app}/manifest.yaml")
	fs.StringVar(&c.Models, "models", "models", "models `dir`")
	fs.StringVar(&c.Manifest, "manifest", "", "application manifest `path` (overrides -app and -models)")
	fs.IntVar(&c.Devices, "devices", 4, "number of simulated devices, each its own MQTT client")
	fs.StringVar(&c.DevicePrefix, "device-prefix", "sim", "device names are {prefix}-0000, {prefix}-0001, ...")
	fs.Float64Var(&c.Rate, "rate", 50, "total requests per second over all devices")
	fs.StringVar(&c.Arrivals, "arrivals", "poisson", "arrival process: poisson or uniform (evenly spaced)")
	fs.Uint64Var(&c.Seed, "seed", 1, "random seed for arrivals, devices, labels and samples")
	fs.DurationVar(&c.Deadline, "deadline", 0, "request deadline (budget from receipt), which replies are judged against; 0 sends none (the gateway's default applies), and each reply is judged against the budget the gateway applied, total_ms + slack_ms")
	fs.DurationVar(&c.Duration, "duration", 0, "stop sending after this long (with neither -duration nor -count: 10s)")
	fs.IntVar(&c.Count, "count", 0, "stop sending after this many requests")
	fs.StringVar(&c.Workload, "workload", "", "named label mix from the manifest's workloads; empty draws samples uniformly")
	fs.BoolVar(&c.B64, "b64", false, "send inputs as input_b64 instead of JSON arrays")
	fs.BoolVar(&c.SentAt, "sent-at", false, "stamp requests with sent_at, so deadlines run from the send (time queued in the broker counts; needs clocks in step)")
	fs.BoolVar(&c.U8, "u8", false, "send inputs as input_u8_b64: one byte per value in the manifest's input_range (a quarter of -b64's size)")
	fs.DurationVar(&c.Drain, "drain", 0, "wait this long for outstanding replies after the last request (0: deadline + 5s; without -deadline, the longest budget seen in a reply or the manifest's default + 5s)")
	fs.StringVar(&c.RunID, "run-id", "", "request id prefix (default random)")
	fs.BoolVar(&c.Quiet, "quiet", false, "no progress display and no printed report")
	return c
}

// SimUsage is a one-paragraph description for the devsim command's usage text.
const SimUsage = `Replays the application's labelled samples from N simulated devices at a given
rate and deadline, and prints counts per status and reason, accuracy against the
true labels, the deadline-met ratio, round-trip latency percentiles and per-model
counts. A progress bar is shown on stderr when it is a terminal. Without -deadline
the requests name none, and each reply is judged (device deadline met, utility)
against the budget the gateway applied to it, total_ms + slack_ms, which the
gateway's apps[].default_deadline may set apart from the manifest's. A request
whose reply came but could not be used (malformed: a status or version this
build does not know; or dropped, the device's reply buffer full) is counted
unusable, not unanswered, and not waited for; the replies line also gives the
devices' counts of malformed and dropped messages.`
