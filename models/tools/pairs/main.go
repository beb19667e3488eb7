// Command pairs measures how much of the per-sample oracle a two-variant cascade
// can reach on a bundled application: how far a label-free signal (the first
// variant's own top-class confidence) goes towards knowing, per sample, which of
// two variants is right.
//
// It runs the two variants over the validation split (data/validation.sgs) and
// the test samples the evaluation replays (samples.sgs) through ONNX Runtime
// (package engine) and prints, per split, the mean utility (the manifest's
// utility matrix, true class by answer) of
//
//   - each variant alone, and their average (the mean of the two class
//     distributions, answered by its top class);
//   - the pair's oracle: each sample answered by whichever of the two is worth
//     more on it (what knowing the labels would give; no policy without them
//     reaches it);
//   - per true class, the samples only one of the two answers correctly and
//     McNemar's z of the first against the second (sneakpeek.McNemarZ); where
//     the application has data/groups.json (the source each sample was cut
//     from, per sample file: vad's recordings, languages and clips, written by
//     models/train/vad.py), the same per true class and group, so that a
//     difference between the splits can be told from one between sources;
//   - the cascade at escalated shares E: the first variant answers, and the E of
//     the samples it is least sure of (lowest top-class probability) get the
//     second variant's answer ("replace") or the average's ("average").
//
// docs/evaluation-log.md ("Headroom captured") reads its output for fashion's cnn and
// resnet-s.
//
// Usage: go run ./models/tools/pairs [-first cnn] [-second resnet-s] models/fashion
// The ONNX Runtime library is $SNEAKGATE_ORT_LIB.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

func main() {
	first := flag.String("first", "cnn", "the variant that answers first")
	second := flag.String("second", "resnet-s", "the variant asked for a second opinion")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: pairs [-first V] [-second V] models/APP")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *first, *second); err != nil {
		fmt.Fprintf(os.Stderr, "pairs: %v\n", err)
		os.Exit(1)
	}
}

func run(dir, first, second string) error {
	m, err := manifest.Load(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		return err
	}
	e, err := engine.New(engine.Options{IntraOpThreads: 1, InterOpThreads: 1, MemoryBudgetBytes: 1 << 30})
	if err != nil {
		return err
	}
	defer e.Close()
	if err := e.Register(m); err != nil {
		return err
	}
	splits := []string{filepath.Join(dir, "samples.sgs")}
	if m.Validation != nil {
		splits = append([]string{m.Path(m.Validation.File)}, splits...)
	}
	for _, path := range splits {
		set, err := dataset.Read(path)
		if err != nil {
			return err
		}
		rows := make([][]float32, set.N)
		for i := range rows {
			rows[i] = set.Row(i)
		}
		var out [2][][]float64
		for k, v := range []string{first, second} {
			if out[k], err = e.RunAll(context.Background(), engine.VariantID{App: m.Name, Variant: v}, rows, 32); err != nil {
				return fmt.Errorf("run %s: %w", v, err)
			}
		}
		groups, err := readGroups(dir, path, set.N)
		if err != nil {
			return err
		}
		report(m, set, path, first, second, out[0], out[1], groups)
	}
	return nil
}

// readGroups returns the group of each of the n samples of the sample file
// path from dir's data/groups.json, or nil when there is none for it.
func readGroups(dir, path string, n int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "data", "groups.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("groups.json: %w", err)
	}
	rel, err := filepath.Rel(dir, path)
	if err != nil {
		return nil, err
	}
	raw, ok := doc[filepath.ToSlash(rel)]
	if !ok {
		return nil, nil
	}
	var names []string
	var idx []int
	if err := json.Unmarshal(doc["names"], &names); err != nil {
		return nil, fmt.Errorf("groups.json names: %w", err)
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("groups.json %s: %w", rel, err)
	}
	if len(idx) != n {
		return nil, fmt.Errorf("groups.json %s: %d groups for %d samples", rel, len(idx), n)
	}
	out := make([]string, n)
	for i, g := range idx {
		if g < 0 || g >= len(names) {
			return nil, fmt.Errorf("groups.json %s: group %d of sample %d out of range", rel, g, i)
		}
		out[i] = names[g]
	}
	return out, nil
}

func report(m *manifest.App, set *dataset.Set, path, first, second string, a, b [][]float64, groups []string) {
	n := set.N
	u := func(i int, p []float64) float64 { return m.Utility[set.Labels[i]][sneakpeek.Argmax(p)] }
	avg := make([][]float64, n)
	for i := range avg {
		avg[i] = make([]float64, len(a[i]))
		for j := range avg[i] {
			avg[i][j] = (a[i][j] + b[i][j]) / 2
		}
	}
	mean := func(f func(i int) float64) float64 {
		s := 0.0
		for i := 0; i < n; i++ {
			s += f(i)
		}
		return s / float64(n)
	}
	fmt.Printf("%s (%d samples)\n", path, n)
	fmt.Printf("  %-22s %.4f\n", first+" alone", mean(func(i int) float64 { return u(i, a[i]) }))
	fmt.Printf("  %-22s %.4f\n", second+" alone", mean(func(i int) float64 { return u(i, b[i]) }))
	fmt.Printf("  %-22s %.4f\n", "average of the two", mean(func(i int) float64 { return u(i, avg[i]) }))
	fmt.Printf("  %-22s %.4f\n", "the pair's oracle", mean(func(i int) float64 { return max(u(i, a[i]), u(i, b[i])) }))

	// Per true class (and group of source, where the samples have one), the
	// samples only one of the two gets right, and McNemar's z of the first
	// against the second.
	only := disagreements(set, a, b, func(int) string { return "" })
	fmt.Printf("  %-22s %9s %9s %7s\n", "true class", "only "+first, "only "+second, "z")
	for y, label := range m.Labels {
		c := only[source{y, ""}]
		fmt.Printf("  %-22s %9d %9d %+7.2f\n", label, c.a, c.b, sneakpeek.McNemarZ(c.a, c.b))
	}
	if groups != nil {
		byGroup := disagreements(set, a, b, func(i int) string { return groups[i] })
		keys := slices.SortedFunc(maps.Keys(byGroup), func(p, q source) int {
			return cmp.Or(cmp.Compare(p.y, q.y), strings.Compare(p.g, q.g))
		})
		fmt.Printf("  %-10s %-14s %7s %9s %9s %7s\n", "true class", "group", "samples", "only "+first, "only "+second, "z")
		for _, k := range keys {
			c := byGroup[k]
			fmt.Printf("  %-10s %-14s %7d %9d %9d %+7.2f\n", m.Labels[k.y], k.g, c.n, c.a, c.b, sneakpeek.McNemarZ(c.a, c.b))
		}
	}

	// The first variant's least sure samples first.
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	conf := func(i int) float64 { return a[i][sneakpeek.Argmax(a[i])] }
	sort.SliceStable(order, func(x, y int) bool { return conf(order[x]) < conf(order[y]) })
	fmt.Printf("  %8s %10s %9s %9s\n", "escalated", "threshold", "replace", "average")
	for _, share := range []float64{0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1} {
		k := int(share * float64(n))
		escalated := make([]bool, n)
		for _, i := range order[:k] {
			escalated[i] = true
		}
		var rep, av float64
		for i := 0; i < n; i++ {
			if !escalated[i] {
				rep += u(i, a[i])
				av += u(i, a[i])
				continue
			}
			rep += u(i, b[i])
			av += u(i, avg[i])
		}
		threshold := "-"
		if k > 0 {
			threshold = fmt.Sprintf("%.3f", conf(order[k-1]))
		}
		fmt.Printf("  %8.0f%% %10s %9.4f %9.4f\n", 100*share, threshold, rep/float64(n), av/float64(n))
	}
}

// source is a true class and a group of source samples are tallied by.
type source struct {
	y int
	g string
}

// tally counts samples and those only the first (a) or only the second (b)
// of two variants answers correctly.
type tally struct{ n, a, b int }

// disagreements tallies the samples of set by true class and group(i), from
// the two variants' outputs a and b.
func disagreements(set *dataset.Set, a, b [][]float64, group func(i int) string) map[source]tally {
	t := map[source]tally{}
	for i := range set.N {
		y := int(set.Labels[i])
		k := source{y, group(i)}
		ra, rb := sneakpeek.Argmax(a[i]) == y, sneakpeek.Argmax(b[i]) == y
		c := t[k]
		c.n++
		if ra && !rb {
			c.a++
		}
		if rb && !ra {
			c.b++
		}
		t[k] = c
	}
	return t
}
