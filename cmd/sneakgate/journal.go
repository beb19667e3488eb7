package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/sneakgate/sneakgate/store"
)

const journalUsage = `usage:
  sneakgate journal check FILE
      Verify a request journal (store.path) without changing it: bbolt's page
      structure, every record, the key index and counts, then bbolt's own check.
      Prints a report; exits 0 when the journal is healthy, 1 when it is damaged
      or cannot be read. A running gateway holds the file's lock: stop it first,
      or check a copy.
  sneakgate journal salvage FILE -out NEWFILE
      Copy every readable pending request, outbox reply and remembered answer of
      FILE into a new journal NEWFILE (which must not exist), and print what was
      kept and lost. The keys of lost requests are not copied, so a device's
      resend of one runs as new. To use the result, stop the gateway and move
      NEWFILE to store.path. (The gateway does this by itself at start-up when it
      finds its journal damaged.) Fails, writing nothing, when FILE has no
      readable meta page (empty, not a journal, or its header destroyed).
`

// errJournalDamaged is journal check's error for a damaged journal (exit 1).
var errJournalDamaged = errors.New("the journal is damaged")

// journal runs the journal tools.
func journal(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || isHelp(args[0]) {
		fmt.Fprint(stderr, about("journal")+journalUsage)
		if len(args) == 0 {
			return fmt.Errorf("%w (journal: want check or salvage)", errUsage)
		}
		return flag.ErrHelp
	}
	switch args[0] {
	case "check":
		return journalCheck(args[1:], stdout, stderr)
	case "salvage":
		return journalSalvage(args[1:], stdout, stderr)
	}
	return fmt.Errorf("%w (unknown journal command %q; want check or salvage)", errUsage, args[0])
}

// parseFileFlags parses flags before and after one positional FILE argument.
func parseFileFlags(fs *flag.FlagSet, args []string) (string, error) {
	fs.Usage = func() { fmt.Fprint(fs.Output(), about("journal")+journalUsage) }
	if err := parseFlags(fs, args); err != nil {
		return "", err
	}
	if fs.NArg() == 0 {
		return "", usageError(fs, fmt.Errorf("journal %s: no FILE", fs.Name()))
	}
	file := fs.Arg(0)
	if err := parseFlags(fs, fs.Args()[1:]); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		return "", usageError(fs, fmt.Errorf("journal %s: unexpected arguments %q", fs.Name(), fs.Args()))
	}
	return file, nil
}

// lockedHint explains ErrLocked to the operator.
func lockedHint(file string, err error) error {
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%s is in use: a running gateway holds its lock (and verified it when it started). "+
			"Stop the gateway to check it, or check a copy (cp %s /tmp/journal-copy.db); a copy taken while the "+
			"gateway writes may show damage that the file does not have: %w", file, file, err)
	}
	return err
}

func journalCheck(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file, err := parseFileFlags(fs, args)
	if err != nil {
		return err
	}
	rep, err := store.Inspect(file)
	if err != nil {
		return lockedHint(file, err)
	}
	printReport(stdout, rep)
	if rep.Damaged() && rep.PageSize == 0 {
		// No meta page: salvage would find nothing to copy.
		return fmt.Errorf("%s: %w: it cannot be read as a journal at all (%s)", file, errJournalDamaged, rep.Problems[0])
	}
	if rep.Damaged() {
		return fmt.Errorf("%s: %w; sneakgate journal salvage %s -out NEWFILE copies what is readable (the gateway does this itself at start-up)",
			file, errJournalDamaged, file)
	}
	return nil
}

func journalSalvage(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("salvage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "the new journal `file` to write (must not exist)")
	file, err := parseFileFlags(fs, args)
	if err != nil {
		return err
	}
	if *out == "" {
		return usageError(fs, errors.New("journal salvage: -out is required"))
	}
	rep, err := store.Salvage(file, *out)
	if err != nil {
		return lockedHint(file, err)
	}
	printReport(stdout, rep)
	fmt.Fprintf(stdout, "\nsalvaged %s into %s: kept %d pending, %d outbox, %d done; lost %d", file, *out, rep.Pending, rep.Outbox, rep.Done, rep.Lost)
	if rep.UnreadablePages > 0 {
		fmt.Fprintf(stdout, " or more (%d unreadable pages)", rep.UnreadablePages)
	}
	fmt.Fprintln(stdout)
	if rep.Lost > 0 || rep.UnreadablePages > 0 {
		fmt.Fprintln(stdout, "the keys of lost requests are released: a device's resend of one runs as new")
	}
	return nil
}

// printReport writes an inspection report for people.
func printReport(w io.Writer, r *store.Report) {
	state := "healthy"
	if r.Damaged() {
		state = "DAMAGED"
	}
	fmt.Fprintf(w, "journal %s: %s\n", r.Path, state)
	fmt.Fprintf(w, "  file        %d bytes", r.FileSize)
	if r.PageSize > 0 {
		fmt.Fprintf(w, ", page size %d, transaction %d", r.PageSize, r.TxID)
	}
	fmt.Fprintln(w)
	if r.PageSize > 0 {
		pct := 0.0
		if r.FileSize > 0 {
			pct = 100 * float64(r.FreeBytes()) / float64(r.FileSize)
		}
		fmt.Fprintf(w, "  in use      %d bytes (high-water mark %d); free %d bytes (%.0f%%)\n", r.UsedBytes, r.HighWaterBytes, r.FreeBytes(), pct)
	}
	fmt.Fprintf(w, "  readable    %d pending, %d outbox, %d done\n", r.Pending, r.Outbox, r.Done)
	if r.Lost > 0 || r.UnreadablePages > 0 {
		fmt.Fprintf(w, "  lost        %d requests, %d unreadable pages", r.Lost, r.UnreadablePages)
		if len(r.LostKeys) > 0 {
			ks := make([]string, len(r.LostKeys))
			for i, k := range r.LostKeys {
				ks[i] = k.String()
			}
			fmt.Fprintf(w, "; keys: %s", strings.Join(ks, ", "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  %-10s  %8s  %8s\n", "bucket", "records", "corrupt")
	for _, b := range r.Buckets {
		if b.Missing {
			fmt.Fprintf(w, "  %-10s  %8s\n", b.Name, "missing")
			continue
		}
		fmt.Fprintf(w, "  %-10s  %8d  %8d\n", b.Name, b.Records, b.Corrupt)
	}
	if n := len(r.Problems) + r.MoreProblems; n > 0 {
		fmt.Fprintf(w, "  problems (%d):\n", n)
		for _, p := range r.Problems {
			fmt.Fprintf(w, "    - %s\n", p)
		}
		if r.MoreProblems > 0 {
			fmt.Fprintf(w, "    ... and %d more\n", r.MoreProblems)
		}
	}
}
