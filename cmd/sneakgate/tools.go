package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/sneakgate/sneakgate/devices"
	"github.com/sneakgate/sneakgate/eval"
)

func devsim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := devices.SimFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: sneakgate devsim [flags]\n\n%s\n\n", devices.SimUsage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg.Out, cfg.Progress = stdout, stderr
	_, err := devices.Simulate(ctx, *cfg)
	return err
}

func evaluate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return eval.Main(ctx, args, stdout, stderr)
}
