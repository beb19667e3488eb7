package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sneakgate/sneakgate/appbuild"
	"github.com/sneakgate/sneakgate/engine"
)

const appUsage = `usage:
  sneakgate app build -name NAME -out DIR -variant NAME=FILE.onnx [-variant ...]
                      -train X.npy,y.npy -validation X.npy,y.npy [-test X.npy,y.npy]
                      [-labels a,b,c | -labels-file F] [-utility F.yaml] [-deadline 50ms]
                      [-base spec.yaml] [flags]
      Make an application directory from ONNX variants and labelled splits: run
      every variant through ONNX Runtime on the validation split (confusion,
      recall, accuracy), train the SneakPeek estimators on the training split,
      write manifest.yaml, the variants, est/, samples.sgs and data/validation.sgs,
      and print what it measured and decided. A split is one of
        ` + appbuild.SplitSpec + `
      Nothing is left in DIR when it fails. "sneakgate app build -h" lists every flag.
  sneakgate app check [-rows N] [-ort-lib FILE] DIR
      Validate an application directory as the gateway will load it (manifest,
      estimators, sample files), load and run every variant on the validation
      rows through ONNX Runtime, and print the table. No estimator, or a
      validation split or samples file that the manifest does not name or that
      is missing, is a warning saying what serving loses (the gateway serves
      without them); without the split the variants run on the samples, else on
      random rows. Exits 1 with the reason when something is wrong.
See models/README.md, "Serving your own models".
`

// app runs the application tools.
func app(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || isHelp(args[0]) {
		fmt.Fprint(stderr, about("app")+appUsage)
		if len(args) == 0 {
			return fmt.Errorf("%w (app: want build or check)", errUsage)
		}
		return flag.ErrHelp
	}
	switch args[0] {
	case "build":
		return appBuild(ctx, args[1:], stdout, stderr)
	case "check":
		return appCheck(ctx, args[1:], stdout, stderr)
	}
	return fmt.Errorf("%w (unknown app command %q; want build or check)", errUsage, args[0])
}

func appBuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("app build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o appbuild.Options
	fs.StringVar(&o.Name, "name", "", "application `name` (topics sneakgate/req/NAME/...)")
	fs.StringVar(&o.Out, "out", "", "application `directory` to write (must be absent or empty unless -force)")
	fs.BoolVar(&o.Force, "force", false, "replace a non-empty -out directory")
	fs.Func("variant", "a model variant `NAME=FILE.onnx` (repeat; manifest order)", func(s string) error {
		v, err := appbuild.ParseVariant(s)
		if err != nil {
			return err
		}
		o.Variants = append(o.Variants, v)
		return nil
	})
	fs.StringVar(&o.Train, "train", "", "training `split` (estimators): X.npy,y.npy, data.npz, X.csv,y.csv or split.sgs")
	fs.StringVar(&o.Validation, "validation", "", "validation `split` (every measured figure)")
	fs.StringVar(&o.Test, "test", "", "test `split` for samples.sgs (default: a stratified half of validation)")
	labels := fs.String("labels", "", "class names, comma-separated, in label order")
	fs.StringVar(&o.LabelsFile, "labels-file", "", "`file` of class names, one per line")
	fs.StringVar(&o.UtilityFile, "utility", "", "YAML `file`: the K x K utility matrix W[truth][prediction] (default identity)")
	fs.DurationVar(&o.Deadline, "deadline", 0, "default deadline of a request (default 50ms, or the base spec's)")
	fs.StringVar(&o.Base, "base", "", "partial manifest `spec.yaml` to complete (multi-input models, workloads, comments...)")
	fs.StringVar(&o.Description, "description", "", "the application's description")
	rng := fs.String("input-range", "", "`lo,hi`: every input value lies in it (the gateway refuses others)")
	fs.StringVar(&o.Features, "features", "", "feature `transform` of the estimators: identity, avgpool:H:W:S, audio-frames:N (default from the input shape)")
	fs.IntVar(&o.KNNReference, "knn-ref", 2000, "most training `rows` in the kNN reference set")
	fs.IntVar(&o.KNNK, "knn-k", 5, "kNN `neighbours`")
	fs.IntVar(&o.SampleCount, "samples", 2000, "most `rows` in samples.sgs")
	seed := fs.Uint64("seed", 1, "`seed` of the stratified subsets")
	difficulty := fs.Bool("difficulty", true, "train the per-sample difficulty model (kept when it predicts the variants' correctness better than the class estimate)")
	fs.StringVar(&o.Library, "ort-lib", "", "ONNX Runtime `library` (default $SNEAKGATE_ORT_LIB, else where make ort or make install put it)")
	quiet := fs.Bool("q", false, "no progress lines on stderr")
	fs.Usage = func() {
		fmt.Fprint(stderr, about("app")+appUsage+"\nflags of app build:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fs, fmt.Errorf("app build: unexpected arguments %q", fs.Args()))
	}
	if *labels != "" {
		for _, l := range strings.Split(*labels, ",") {
			o.Labels = append(o.Labels, strings.TrimSpace(l))
		}
	}
	if *rng != "" {
		lo, hi, ok := strings.Cut(*rng, ",")
		a, err1 := strconv.ParseFloat(strings.TrimSpace(lo), 64)
		b, err2 := strconv.ParseFloat(strings.TrimSpace(hi), 64)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Errorf("app build: -input-range %q: want lo,hi", *rng)
		}
		o.InputRange = &[2]float64{a, b}
	}
	o.Seed = *seed
	o.NoDifficulty = !*difficulty
	o.Library = ortLibrary(o.Library)
	o.Stdout = stdout
	if !*quiet {
		o.Log = stderr
	}
	o.CommandLine = "sneakgate app build " + strings.Join(args, " ")
	_, err := appbuild.Build(ctx, o)
	return err
}

func appCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("app check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o appbuild.CheckOptions
	fs.IntVar(&o.Rows, "rows", 0, "run only the first `N` validation rows (0: all; only then are accuracies compared with the manifest)")
	fs.StringVar(&o.Library, "ort-lib", "", "ONNX Runtime `library` (default $SNEAKGATE_ORT_LIB, else where make ort or make install put it)")
	fs.BoolVar(&o.NoLatency, "no-latency", false, "do not time the variants")
	fs.Usage = func() {
		fmt.Fprint(stderr, about("app")+appUsage+"\nflags of app check:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError(fs, fmt.Errorf("app check: no DIR"))
	}
	dir := fs.Arg(0)
	if err := parseFlags(fs, fs.Args()[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fs, fmt.Errorf("app check: unexpected arguments %q", fs.Args()))
	}
	o.Stdout = stdout
	o.Library = ortLibrary(o.Library)
	_, err := appbuild.Check(ctx, dir, o)
	return err
}

// usageError prints err and the usage, as the flag package does for a bad
// flag, and returns it as a flag error (exit status 2).
func usageError(fs *flag.FlagSet, err error) error {
	fmt.Fprintln(fs.Output(), err)
	fs.Usage()
	return flagError{err}
}

// ortLibName is the ONNX Runtime library `make ort` and `make install` install.
const ortLibName = "libonnxruntime.so.1.30.0"

// ortLibraries are where `make ort` and `make install` put the ONNX Runtime
// library, in the order they are tried: a checkout's .cache/onnxruntime from
// the working directory, then beside this binary's checkout (bin/sneakgate ->
// .cache/onnxruntime), then this binary's PREFIX (PREFIX/bin/sneakgate ->
// PREFIX/lib/sneakgate), then the default PREFIX /usr/local. exe is this
// binary's path, symbolic links resolved ("" when unknown).
func ortLibraries(exe string) []string {
	ps := []string{filepath.Join(".cache/onnxruntime", ortLibName)}
	if exe != "" {
		up := filepath.Dir(filepath.Dir(exe))
		ps = append(ps, filepath.Join(up, ".cache/onnxruntime", ortLibName), filepath.Join(up, "lib/sneakgate", ortLibName))
	}
	return append(ps, filepath.Join("/usr/local/lib/sneakgate", ortLibName))
}

// executable is this binary's path with symbolic links resolved, or "".
func executable() string {
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return ""
	}
	return exe
}

// ortLibrary is flag, else $SNEAKGATE_ORT_LIB, else the first of ortLibraries
// that exists (else "", and the engine says what is missing).
func ortLibrary(flag string) string { return ortLibraryFor(flag, executable()) }

// ortLibraryFor is ortLibrary for the binary at exe.
func ortLibraryFor(flag, exe string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv(engine.LibraryEnv); env != "" {
		return env
	}
	for _, p := range ortLibraries(exe) {
		if _, err := os.Stat(p); err == nil {
			if abs, err := filepath.Abs(p); err == nil {
				return abs
			}
		}
	}
	return ""
}

// defaultORTLibrary sets $SNEAKGATE_ORT_LIB, when it is not set, to the first
// of ortLibraries that exists, so that every command (serve without
// engine.library, eval, bench and the gateway it starts, app) finds the library
// make ort or make install put there, from any directory.
func defaultORTLibrary() {
	if os.Getenv(engine.LibraryEnv) != "" {
		return
	}
	if lib := ortLibrary(""); lib != "" {
		os.Setenv(engine.LibraryEnv, lib)
	}
}
