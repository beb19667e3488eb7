package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/sneakgate/sneakgate/devices"
	"github.com/sneakgate/sneakgate/eval"
)

func devsim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := devices.SimFlags(fs)
	jsonOut := fs.String("json", "", "also write the report as JSON to this `file`")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: sneakgate devsim [flags]\n\n%s\n\n", devices.SimUsage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg.Out, cfg.Progress = stdout, stderr
	rep, err := devices.Simulate(ctx, *cfg)
	if *jsonOut != "" && rep.Sent > 0 {
		b, jerr := json.MarshalIndent(rep, "", "  ")
		if jerr == nil {
			jerr = os.WriteFile(*jsonOut, append(b, '\n'), 0o644)
		}
		if jerr != nil {
			return errors.Join(err, fmt.Errorf("devsim: -json: %w", jerr))
		}
	}
	return err
}

func evaluate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return eval.Main(ctx, args, stdout, stderr)
}
