package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// command is one of sneakgate's commands, for `sneakgate help` and the first
// line of its -h.
type command struct{ name, args, about string }

var commands = []command{
	{"serve", "[-config FILE]", "run the gateway (the default command)"},
	{"tail", "[flags]", "follow the gateway's replies: a readable line each, and summaries"},
	{"devsim", "[flags]", "simulate devices against a running gateway"},
	{"eval", "[flags]", "evaluate scheduling policies (simulator or live)"},
	{"bench", "[flags]", "end-to-end benchmark: Mosquitto alone against the gateway"},
	{"app", "build|check ...", "make an application directory from ONNX variants and data, or check one"},
	{"journal", "check|salvage FILE", "verify a request journal, or copy what is readable of it"},
	{"version", "", "print the version"},
	{"help", "", "list the commands"},
}

// about returns the first lines of name's -h: "sneakgate NAME: what it does".
func about(name string) string {
	for _, c := range commands {
		if c.name == name {
			return "sneakgate " + name + ": " + c.about + "\n\n"
		}
	}
	panic("about: unknown command " + name)
}

// printHelp lists the commands.
func printHelp(w io.Writer) {
	fmt.Fprint(w, "sneakgate: an inference gateway for IoT devices over MQTT\n\nusage: sneakgate COMMAND [flags]\n\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-30s %s\n", strings.TrimSpace(c.name+" "+c.args), c.about)
	}
	fmt.Fprint(w, "\nsneakgate COMMAND -h describes a command and its flags.\n")
}

// isSet reports whether the flag name was given on fs's command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool { return arg == "-h" || arg == "-help" || arg == "--help" }

// installedModels is where `make install` puts the models: PREFIX/share/sneakgate/models,
// PREFIX being this binary's (PREFIX/bin/sneakgate), or the default /usr/local.
func installedModels() []string {
	const share = "share/sneakgate/models"
	dirs := []string{}
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			dirs = append(dirs, filepath.Join(filepath.Dir(filepath.Dir(exe)), share))
		}
	}
	if d := filepath.Join("/usr/local", share); len(dirs) == 0 || dirs[0] != d {
		dirs = append(dirs, d)
	}
	return dirs
}

// modelsHelp is the help of devsim's and eval's -models flag.
const modelsHelp = "models `dir` (./models; where it does not exist, the installed models of make install, PREFIX/share/sneakgate/models)"

// defaultModels returns "models" when ./models exists, else the first of the
// installed directories that exists, else "models" (and the error names it).
func defaultModels(installed []string) string {
	if _, err := os.Stat("models"); err == nil {
		return "models"
	}
	for _, d := range installed {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			return d
		}
	}
	return "models"
}
