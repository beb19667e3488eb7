// Command sneakgate is the sneakgate inference gateway and its tools.
//
//	sneakgate serve  -config FILE   run the gateway (default command)
//	sneakgate tail   [flags]        follow the replies on the result topics: a line each, summaries
//	sneakgate devsim [flags]        simulate devices against a running gateway
//	sneakgate eval   [flags]        evaluate scheduling policies (simulator or live)
//	sneakgate bench  [flags]        end-to-end benchmark: Mosquitto alone against the gateway
//	sneakgate app build [flags]     make an application directory from ONNX variants and data
//	sneakgate app check DIR         validate an application directory and run its variants
//	sneakgate journal check FILE    verify a request journal (exit 1 when damaged)
//	sneakgate journal salvage FILE -out NEWFILE
//	                                copy what is readable of a journal into a new one
//	sneakgate version
//	sneakgate help                  list the commands (so does sneakgate -h)
//
// Each command's -h describes it and its flags. Usage errors (an unknown command
// or flag, a missing argument) exit 2, other failures 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/gateway"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "sneakgate:", err)
		os.Exit(2)
	case errors.As(err, new(flagError)):
		os.Exit(2) // the flag package already printed the problem and the usage
	default:
		fmt.Fprintln(os.Stderr, "sneakgate:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage: sneakgate COMMAND [flags]; sneakgate help lists the commands")

// flagError is a command-line flag error; main exits 2 on it.
type flagError struct{ error }

// parseFlags parses args, marking errors as flag errors.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return flagError{err}
	}
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && isHelp(args[0]) {
		printHelp(stderr)
		return flag.ErrHelp
	}
	cmd := "serve"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	defaultORTLibrary()
	switch cmd {
	case "serve":
		return serve(ctx, args, stderr)
	case "tail":
		return tailCmd(ctx, args, stdout, stderr)
	case "devsim":
		return devsim(ctx, args, stdout, stderr)
	case "eval":
		return evaluate(ctx, args, stdout, stderr)
	case "bench":
		return benchmark(ctx, args, stdout, stderr)
	case "app":
		return app(ctx, args, stdout, stderr)
	case "journal":
		return journal(args, stdout, stderr)
	case "version":
		if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			fmt.Fprintf(stderr, "%susage: sneakgate version\n", about("version"))
			return flag.ErrHelp
		}
		if len(args) > 0 {
			return fmt.Errorf("%w (version takes no arguments)", errUsage)
		}
		fmt.Fprintln(stdout, "sneakgate", version)
		return nil
	case "help":
		printHelp(stdout)
		return nil
	}
	return fmt.Errorf("%w (unknown command %q)", errUsage, cmd)
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	defer gcFloor()()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/sneakgate/sneakgate.yaml", "configuration `file`")
	level := fs.String("log-level", "", "override log.level (trace, debug, info, warn, error)")
	fs.Usage = func() {
		fmt.Fprint(stderr, about("serve")+"usage: sneakgate serve [-config FILE] [-log-level LEVEL]\n\n"+
			"Serves the applications of the configuration file (README.md, \"Configuration\") until\n"+
			"SIGINT or SIGTERM; SIGHUP reloads them. sneakgate help lists the other commands.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fs, fmt.Errorf("serve: unexpected arguments %q", fs.Args()))
	}
	cfg, err := gateway.LoadConfig(*path)
	if err != nil {
		if _, serr := os.Stat(*path); !isSet(fs, "config") && errors.Is(serr, os.ErrNotExist) {
			return fmt.Errorf("%w (the default configuration; give one with -config FILE; sneakgate help lists the commands)", err)
		}
		return err
	}
	if *level != "" {
		cfg.Log.Level = *level
		if err := cfg.Validate(); err != nil {
			return err
		}
	}
	log := newLogger(cfg.Log, stderr)
	gateway.Version = version
	// SIGHUP (systemctl reload) re-reads the configuration and the applications'
	// manifests (gateway.Reload). Notify before New: a SIGHUP during start-up
	// must not kill the process; it is acted on once the gateway runs.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	g, err := gateway.New(ctx, gateway.Options{Config: cfg, Logger: log})
	if err != nil {
		if abandoned(ctx, err) {
			// SIGTERM or SIGINT during start-up (systemctl stop while it
			// profiles or warms): a requested, clean stop, as one a moment
			// later would be, not a failure of the unit.
			log.Info().Err(err).Msg("start-up abandoned: asked to stop before the gateway was ready")
			return nil
		}
		return err
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reload(ctx, g, *path, *level, log)
			}
		}
	}()
	return g.Run(ctx)
}

// reload applies the configuration file at path to the running gateway and logs
// what changed; on error the gateway keeps serving what it served.
func reload(ctx context.Context, g *gateway.Gateway, path, level string, log zerolog.Logger) {
	log.Info().Str("config", path).Msg("SIGHUP: reloading the configuration")
	res, err := g.ReloadFile(ctx, path, func(cfg *gateway.Config) {
		if level != "" {
			cfg.Log.Level = level
		}
	})
	if err != nil {
		if abandoned(ctx, err) {
			log.Info().Err(err).Msg("reload abandoned: the gateway is stopping")
		} else {
			log.Error().Err(err).Msg("reload refused; the previous configuration and applications keep serving")
		}
		return
	}
	ev := log.Info().Strs("added", res.Added).Strs("changed", res.Changed).Strs("removed", res.Removed).
		Strs("unchanged", res.Unchanged)
	if len(res.Ignored) > 0 {
		ev = ev.Strs("not_applied_needs_restart", res.Ignored)
	}
	ev.Msg("reloaded")
}

// abandoned reports whether a reload failed because the gateway began to stop
// (ctx ended) while it ran, rather than because the configuration or an
// application could not be loaded: the log then says so, not "reload refused".
func abandoned(ctx context.Context, err error) bool {
	return ctx.Err() != nil && errors.Is(err, ctx.Err())
}

func newLogger(c gateway.LogConfig, w io.Writer) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(c.Level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	journal := toJournal(w)
	if c.Format == "console" {
		// Colours only on a terminal: not into files, pipes or the journal.
		cw := zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !isTerminal(w)}
		if journal {
			w = journalWriter{out: w, console: &cw}
		} else {
			w = cw
		}
	} else if journal {
		w = journalWriter{out: w}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}
