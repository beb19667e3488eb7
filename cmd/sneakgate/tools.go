package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sneakgate/sneakgate/devices"
	"github.com/sneakgate/sneakgate/eval"
)

func devsim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := devices.SimFlags(fs)
	models := fs.Lookup("models")
	models.Usage = modelsHelp
	if d := defaultModels(installedModels()); d != models.DefValue {
		models.Value.Set(d)
		models.DefValue = d
	}
	jsonOut := fs.String("json", "", "also write the report as JSON to this `file`")
	traceOut := fs.String("trace", "", "write one JSON line per request to this `file`: id, seq, device, label, sent_ms, rtt_ms, status, reason, model, class, batch, queue_ms, infer_ms, total_ms, deadline_met, budget_ms, unusable, utility (requests without a usable reply last, without status and budget_ms: unanswered ones without rtt_ms, those whose reply was unusable with rtt_ms and unusable, why)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "%susage: sneakgate devsim [flags]\n\n%s\n\n", about("devsim"), devices.SimUsage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fs, fmt.Errorf("devsim: unexpected arguments %q", fs.Args()))
	}
	if cfg.Devices <= 0 {
		// SimConfig reads 0 as "the default", 4; on the command line it is a mistake.
		return usageError(fs, fmt.Errorf("devsim: -devices %d: want at least 1", cfg.Devices))
	}
	cfg.Out, cfg.Progress = stdout, stderr
	var trace *bufio.Writer
	var traceFile *os.File
	if *traceOut != "" {
		f, err := os.Create(*traceOut)
		if err != nil {
			return fmt.Errorf("devsim: -trace: %w", err)
		}
		trace, traceFile = bufio.NewWriter(f), f
		cfg.Trace = trace
	}
	rep, err := devices.Simulate(ctx, *cfg)
	if trace != nil {
		if terr := errors.Join(trace.Flush(), traceFile.Close()); terr != nil {
			err = errors.Join(err, fmt.Errorf("devsim: -trace: %w", terr))
		}
		if err != nil && rep.Sent == 0 {
			os.Remove(*traceOut) // nothing was sent: no empty trace left to read as a run
		}
	}
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

// evaluate runs eval.Main, which has its own flags. Where ./models does not
// exist it is given the installed models (a later -models overrides them). Its
// usage errors exit 2 as every command's: eval.Main returns flag.ErrHelp on -h
// and an eval.UsageError on a bad command line, having printed its usage, which
// begins "usage: sneakgate eval"; usageWatch puts the command's one-line
// description before it.
func evaluate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if d := defaultModels(installedModels()); d != "models" {
		args = append([]string{"-models", d}, args...)
	}
	w := &usageWatch{w: stderr, usage: "usage: sneakgate eval", about: about("eval")}
	err := eval.Main(ctx, args, stdout, w)
	if errors.As(err, new(eval.UsageError)) {
		return flagError{err}
	}
	return err
}

// usageWatch passes writes through to w, putting about before the first write
// that begins with usage.
type usageWatch struct {
	w            io.Writer
	usage, about string
	seen         bool
}

func (u *usageWatch) Write(b []byte) (int, error) {
	if !u.seen && strings.HasPrefix(string(b), u.usage) {
		u.seen = true
		if _, err := io.WriteString(u.w, u.about); err != nil {
			return 0, err
		}
	}
	return u.w.Write(b)
}
