package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/sneakgate/sneakgate/bench"
)

const benchUsage = `Measures the same request payloads through a private Mosquitto alone (publisher
to subscriber, the ceiling) and through the gateway (this binary, started as a
separate "serve" process on that broker), in one run, and prints the throughput
of each path, their ratio, CPU time per request of the broker, the gateway and
this process (from /proc/PID/stat), and latency percentiles (publish to receipt).
The load is closed-loop: -concurrency requests in flight over -devices clients.`

func benchmark(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := bench.Flags(fs)
	out := fs.String("out", "", "also write the results as JSON to this `file`")
	bin := fs.String("gateway-bin", "", "sneakgate `binary` to start as the gateway (default: this one)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "%susage: sneakgate bench [flags]\n\n%s\n\n", about("bench"), benchUsage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fs, fmt.Errorf("bench: unexpected arguments %q", fs.Args()))
	}
	cfg.GatewayBinary = *bin
	if cfg.GatewayBinary == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench: this binary's path: %w", err)
		}
		cfg.GatewayBinary = self
	}
	cfg.Progress = stderr
	res, err := bench.Run(ctx, *cfg)
	if err != nil {
		return err
	}
	res.Print(stdout)
	if *out != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err == nil {
			err = os.WriteFile(*out, append(b, '\n'), 0o644)
		}
		if err != nil {
			return fmt.Errorf("bench: -out: %w", err)
		}
	}
	return nil
}
