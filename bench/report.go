package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/sneakgate/sneakgate/devices"
)

// Issue 10's targets for the gateway, with fixed-batch on the cheapest variant and
// input_b64, in the same run: CPU per request and throughput against the broker
// alone.
const (
	TargetGatewayUSPerRequest = 100
	TargetRatio               = 0.40
	// InferenceTarget bounds a variant's forward pass inside the gateway
	// against its benchmark (the start-up profile) at the batch sizes it runs.
	InferenceTarget = 1.3
)

// Print writes the result for people.
func (r *Result) Print(w io.Writer) {
	s := r.Setup
	pol := s.Policy
	if s.Variant != "" {
		pol += " on " + s.Variant
	}
	what := fmt.Sprintf("%d requests", s.Requests)
	if s.DurationS > 0 {
		what = (time.Duration(s.DurationS * float64(time.Second))).String()
	}
	ids := ""
	if s.ScatterIDs {
		ids = " (ids in no order)"
	}
	inFlight := fmt.Sprintf("%d in flight", s.Concurrency)
	if s.MaxConcurrency > 0 {
		inFlight = fmt.Sprintf("%d to %d in flight (each path at its best below)", s.Concurrency, s.MaxConcurrency)
	}
	fmt.Fprintf(w, "sneakgate bench: %s, %s, %s (%d B), QoS %d, %d devices%s, %s, %s after %d warm-up, deadline %d ms\n",
		s.App, pol, s.Encoding, s.PayloadBytes, s.QoS, s.Devices, ids, inFlight, what, s.Warmup, s.DeadlineMS)
	fmt.Fprintf(w, "machine: %d CPUs, load average %.2f at the start, %.2f at the end\n\n", r.Host.CPUs, r.Host.LoadStart, r.Host.LoadEnd)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	// The first column is padded: tabwriter right-aligns every column.
	fmt.Fprintf(tw, "%-24s\tin flight\treq/s\tp50 ms\tp90 ms\tp99 ms\tbroker µs/req\tgateway µs/req\tclient µs/req\t\t\n", "path")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }
	row := func(name string, p *Phase, mark string) {
		gw := "-"
		if p.Gateway != nil {
			gw = fmt.Sprintf("%.0f", p.Gateway.PerRequestUS)
		}
		fmt.Fprintf(tw, "%-24s\t%d\t%.0f\t%s\t%s\t%s\t%.0f\t%s\t%.0f\t%s\t\n", name, p.Concurrency, p.Throughput, ms(p.Latency.P50),
			ms(p.Latency.P90), ms(p.Latency.P99), p.Broker.PerRequestUS, gw, p.Client.PerRequestUS, mark)
	}
	rows := func(name string, all []Phase, best *Phase) {
		if all == nil {
			row(name, best, "")
			return
		}
		for _, p := range all {
			mark := ""
			if p.Concurrency == best.Concurrency {
				mark = "*"
			}
			row(name, &p, mark)
		}
	}
	var sat Saturation
	if r.Saturation != nil {
		sat = *r.Saturation
	}
	rows("broker alone (pub->sub)", sat.Broker, &r.Broker)
	rows("through the gateway", sat.Gateway, &r.Gateway)
	_ = tw.Flush()
	if r.Saturation != nil {
		fmt.Fprintln(w, "* each path's highest throughput (its capacity here); the figures below are of these two")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "ratio gateway / broker alone  %.3f (issue 10: >= %.2f)\n", r.Ratio, TargetRatio)
	if r.Saturation == nil {
		fmt.Fprintf(w, "%-29s both paths at %d in flight: the gateway's may be bound by its journal commits' latency, not its CPU; -saturate compares each at its capacity\n",
			"", r.Setup.Concurrency)
	}
	if g := r.Gateway.Gateway; g != nil {
		fmt.Fprintf(w, "gateway CPU per request       %.0f µs (issue 10: <= %d µs with fixed-batch, cheapest variant, input_b64)\n",
			g.PerRequestUS, TargetGatewayUSPerRequest)
	}
	cores := func(p *Phase) string {
		out := fmt.Sprintf("broker %.2f", p.Broker.Cores)
		if p.Gateway != nil {
			out += fmt.Sprintf(", gateway %.2f", p.Gateway.Cores)
		}
		return out + fmt.Sprintf(", client %.2f", p.Client.Cores)
	}
	fmt.Fprintf(w, "CPU use, cores                broker alone: %s; through the gateway: %s\n", cores(&r.Broker), cores(&r.Gateway))
	g := &r.Gateway
	fmt.Fprintf(w, "gateway replies               %s; models: %s; mean batch %.1f\n", devices.JoinCounts(g.ByStatus),
		devices.JoinCounts(g.ByModel), g.MeanBatch)
	if g.InGateway != nil {
		pct := func(p devices.Percentiles) string {
			return fmt.Sprintf("p50 %s / p90 %s / p99 %s ms", ms(p.P50), ms(p.P90), ms(p.P99))
		}
		fmt.Fprintf(w, "in the gateway (its replies)  queue_ms %s; total_ms %s\n", pct(*g.Queued), pct(*g.InGateway))
	}
	for _, x := range []struct {
		name string
		p    *Phase
	}{{"broker alone", &r.Broker}, {"through the gateway", &r.Gateway}} {
		if x.p.Unanswered+x.p.PublishErrors > 0 {
			fmt.Fprintf(w, "%-29s %d of %d sent not completed (%d publish errors, %d timed out)\n", x.name,
				x.p.Unanswered+x.p.PublishErrors, x.p.Sent, x.p.PublishErrors, x.p.Unanswered)
		}
	}
	if r.Strays > 0 {
		fmt.Fprintf(w, "%-29s %d (repeated deliveries, or replies after the timeout)\n", "stray completions", r.Strays)
	}
	for _, k := range slices.Sorted(maps.Keys(g.Inference)) {
		fmt.Fprintf(w, "%-29s %.2fx its start-up profile at the batch sizes run, over the measured requests (issue 10: <= %.1fx)\n",
			"inference, "+k, g.Inference[k], InferenceTarget)
		if p, ok := g.InferencePasses[k]; ok {
			cpu := "CPU not measured"
			if p.CPUUS > 0 {
				cpu = fmt.Sprintf("%.0f µs CPU (%.2fx the profile), %.0f µs waiting", p.CPUUS, p.CPUUS/p.ProfiledUS, p.WallUS-p.CPUUS)
			}
			fmt.Fprintf(w, "%-29s %d passes, each %.0f µs: %s; the profile %.0f µs at the same batch sizes\n",
				"", p.Passes, p.WallUS, cpu, p.ProfiledUS)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.Inference)) {
		fmt.Fprintf(w, "%-29s %.2fx at the end (the gateway's latency correction: about the last 20 batches)\n",
			"inference, "+k, r.Inference[k])
	}
	if r.CPUProfile != "" {
		fmt.Fprintf(w, "CPU profile                   %s (%.0f req/s, %d in flight, while profiled): go tool pprof -top %s %s\n",
			r.CPUProfile, r.Profiled.Throughput, r.Profiled.Concurrency, r.Setup.Gateway, r.CPUProfile)
	}
}
