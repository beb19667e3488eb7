// Command difficulty trains the per-sample difficulty model of a bundled
// application (sneakpeek.Difficulty) on its validation split.
//
// For each application directory given it runs every variant over
// data/validation.sgs through ONNX Runtime (package engine), records which rows
// each variant answers correctly, computes the default estimator's class
// estimate of every row, measures the model's AUC per variant by two-fold
// cross-fitting (trained on one half, scored on the other) next to the AUC of the
// class-based expected accuracy sum_y p(y) recall(y), trains the final model on
// all rows, and writes est/difficulty.json (parameters) and difficulty.json
// (what models/train/common.py render copies into the manifest's difficulty
// section: the estimator it reads, the AUCs, how it was trained, its cost).
//
// The validation split is the only labelled split committed for the bundled
// applications; the test split (samples.sgs), which the evaluation replays, is
// never used. `sneakgate app build` trains the same model on a training split.
//
// The form (sneakpeek.FormShared or FormPerVariant) is chosen on the same
// cross-fitted estimates: the per-variant form unless choosing a variant per
// row on its estimates, with engine time free, is less accurate than serving
// every row with the most accurate variant beyond chance
// (sneakpeek.CheckRanking: McNemar's z below -1.96); then the shared form.
// Where it picks the shared form, auto also cross-fits it with class terms
// (sneakpeek.FormSharedClass) and keeps them when they lower the held-out log
// loss of the variants' correctness, summed over the variants; -form
// shared-class trains them in any case.
//
// Where it keeps the per-variant form, it scales the gaps between the
// variants' estimates by how far they hold out of sample (sneakpeek.GapScale,
// difficulty_gap.go): the model is cross-fitted again over -gap-folds
// contiguous blocks of rows; with -gaps auto the kind (none, one scale per
// variant, or per variant and estimated class) is the one of the smallest
// held-out gap error (sneakpeek.ChooseGapScale), and the scales and centres
// fitted on all the cross-fitted rows (sneakpeek.FitGapScale) are written with
// the parameters. The shared form keeps its variants in order by construction
// and gets none. Contiguous blocks keep neighbouring rows together where a
// split keeps its source's order: satellite's (models/train/common.py's
// stratified split sorts the rows it keeps) has neighbouring rows alike
// (adjacent rows share their label 58% of the time, random pairs 19%, as the
// tool prints); vad's
// windows are shuffled (models/train/vad.py), so there the blocks are folds
// of mixed speakers, as the row-parity folds are.
//
// On the same cross-fitted estimates it also prints each variant's log loss,
// the gap between the most accurate variant and the runner-up by true class
// (sneakpeek.CheckGaps: predicted against realised, over the quarter of each
// class's rows of the largest predicted gap and over all of them), and what
// serving the rows of the largest predicted gaps with the most accurate
// variant instead of the runner-up realises.
//
// With -dump DIR it also writes, per application, the validation rows' labels,
// class estimates, every variant's output and correctness and the chosen
// form's cross-fitted estimates as .npy files into DIR/APP, which fluid.py
// (beside this file; numpy) reads to compute the fluid optimum of choosing a
// variant per request by each of several signals' values, offline.
//
// Usage: go run ./models/tools/difficulty [-form auto|shared|shared-class|per-variant] [-gaps auto|none|variant|class] [-gap-folds 5] [-n] [-dump DIR] models/fashion models/satellite ...
// The ONNX Runtime library is $SNEAKGATE_ORT_LIB.
package main

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

const lambda = 1e-3

var (
	gaps     = flag.String("gaps", "auto", "the gap scale of the per-variant form: none, variant (one per variant), class (one per variant and estimated class), or auto (the one of the smallest held-out gap error, sneakpeek.ChooseGapScale)")
	gapFolds = flag.Int("gap-folds", 5, "folds (contiguous blocks of rows) of the cross-fitting that fits the gap scale")
	form     = flag.String("form", "auto", "the model's form: shared, shared-class (shared with class terms), per-variant, or auto (per-variant unless its estimates, with engine time free, choose worse than the most accurate variant alone beyond chance; then shared, with class terms where they lower the held-out log loss)")
	dry      = flag.Bool("n", false, "print the cross-fitted measures only; write nothing")
	dumpDir  = flag.String("dump", "", "also write, per application, the validation rows' labels, class estimates, every variant's output and correctness and the chosen form's cross-fitted estimates as .npy files (with meta.json) into DIR/APP, for offline analysis (fluid.py)")
)

func main() {
	flag.Parse()
	failed := false
	for _, dir := range flag.Args() {
		if err := run(dir); err != nil {
			fmt.Fprintf(os.Stderr, "difficulty %s: %v\n", dir, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func run(dir string) error {
	m, err := manifest.Load(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		return err
	}
	if m.Validation == nil || len(m.Estimators) == 0 {
		return fmt.Errorf("%s: needs a validation split and an estimator", m.Name)
	}
	val, err := dataset.Read(m.Path(m.Validation.File))
	if err != nil {
		return err
	}
	est, err := sneakpeek.Load(m, m.Estimators[0])
	if err != nil {
		return err
	}
	features := m.Estimators[0].Features
	eng, err := engine.New(engine.Options{LibraryPath: os.Getenv(engine.LibraryEnv), IntraOpThreads: 2})
	if err != nil {
		return err
	}
	defer eng.Close()
	if err := eng.Register(m); err != nil {
		return err
	}
	k, nv := m.K(), len(m.Variants)
	rows := make([]sneakpeek.DifficultyRow, val.N)
	inputs := make([][]float32, val.N)
	for i := range rows {
		inputs[i] = val.Row(i)
		p := make([]float64, k)
		est.Estimate(val.Row(i), p)
		rows[i] = sneakpeek.DifficultyRow{Input: val.Row(i), Estimate: p, Correct: make([]bool, nv)}
	}
	names := make([]string, nv)
	outputs := make([][][]float64, nv) // for -dump
	for v, mv := range m.Variants {
		names[v] = mv.Name
		out, err := eng.RunAll(context.Background(), engine.VariantID{App: m.Name, Variant: mv.Name}, inputs, 256)
		if err != nil {
			return err
		}
		outputs[v] = out
		for i, p := range out {
			rows[i].Correct[v] = sneakpeek.Argmax(p) == int(val.Labels[i])
		}
	}
	correct := make([][]bool, nv)
	for v := range correct {
		correct[v] = make([]bool, val.N)
		for i, r := range rows {
			correct[v][i] = r.Correct[v]
		}
	}
	chosen := *form
	if chosen == "auto" {
		chosen = sneakpeek.FormPerVariant
	}
	scores, err := crossFit(chosen, features, m.InputSize, k, names, rows)
	if err != nil {
		return err
	}
	check := sneakpeek.CheckRanking(scores, correct)
	how := fmt.Sprintf("validation split (%d rows); AUC by two-fold cross-fitting", val.N)
	fmt.Printf("%s: with engine time free, choosing on the %s form's estimates: accuracy %.4f, %s alone %.4f (%d rows moved; right where %s is wrong on %d, the reverse on %d: z %.2f)\n",
		m.Name, chosen, check.Accuracy, names[check.Top], check.TopAccuracy, check.Moved, names[check.Top], check.Better, check.Worse, check.Z)
	if *form == "auto" {
		if check.Noisy() {
			chosen = sneakpeek.FormShared
			how += fmt.Sprintf("; shared form: choosing on per-variant estimates with time free was less accurate than %s alone beyond chance (%.4f against %.4f, z %.2f)",
				names[check.Top], check.Accuracy, check.TopAccuracy, check.Z)
			if scores, err = crossFit(chosen, features, m.InputSize, k, names, rows); err != nil {
				return err
			}
			c := sneakpeek.CheckRanking(scores, correct)
			fmt.Printf("%s: the shared form instead: accuracy %.4f (%d rows moved, z %.2f)\n", m.Name, c.Accuracy, c.Moved, c.Z)
			// Class terms are kept where they predict the variants'
			// correctness better on held-out rows (the summed log loss).
			classScores, err := crossFit(sneakpeek.FormSharedClass, features, m.InputSize, k, names, rows)
			if err != nil {
				return err
			}
			plain, withClass := sneakpeek.LogLoss(scores, correct), sneakpeek.LogLoss(classScores, correct)
			fmt.Printf("%s: held-out log loss summed over the variants: shared %.4f, with class terms %.4f\n", m.Name, plain, withClass)
			if withClass < plain {
				chosen, scores = sneakpeek.FormSharedClass, classScores
				how += fmt.Sprintf("; class terms kept: held-out log loss summed over the variants %.4f against %.4f without", withClass, plain)
			}
		} else {
			how += fmt.Sprintf("; per-variant form: choosing on its estimates with time free was not less accurate than %s alone beyond chance (%.4f against %.4f, z %.2f)",
				names[check.Top], check.Accuracy, check.TopAccuracy, check.Z)
		}
	}
	if chosen == sneakpeek.FormSharedClass {
		c := sneakpeek.CheckRanking(scores, correct)
		how += fmt.Sprintf("; shared form with class terms (with engine time free: accuracy %.4f, %d rows moved, z %.2f)", c.Accuracy, c.Moved, c.Z)
	}
	heldOut(m, names, scores, correct, val.Labels)
	if *dumpDir != "" {
		if err := dump(filepath.Join(*dumpDir, m.Name), m, names, val, rows, outputs, correct, scores); err != nil {
			return err
		}
	}
	mform := chosen
	if mform == sneakpeek.FormSharedClass {
		mform = sneakpeek.FormShared // the manifest's form; the parameter file has the class terms
	}
	mt := manifest.Difficulty{File: "est/difficulty.json", Estimator: m.Estimators[0].Name, Form: mform, TrainedOn: how}
	fmt.Printf("%s: per-sample difficulty (%s form), AUC of correctness predictions (validation, cross-fitted)\n", m.Name, chosen)
	fmt.Printf("  %-14s %9s %10s %10s\n", "variant", "accuracy", "class AUC", "sample AUC")
	for v := range names {
		labels := make([]bool, val.N)
		cls := make([]float64, val.N)
		right := 0
		for i, r := range rows {
			labels[i] = r.Correct[v]
			if r.Correct[v] {
				right++
			}
			for y, py := range r.Estimate {
				cls[i] += py * m.Variants[v].Recall[y]
			}
		}
		a, ca := sneakpeek.AUC(scores[v], labels), sneakpeek.AUC(cls, labels)
		mt.AUC = append(mt.AUC, round(a))
		mt.ClassAUC = append(mt.ClassAUC, round(ca))
		fmt.Printf("  %-14s %9.4f %10.3f %10.3f\n", names[v], float64(right)/float64(val.N), ca, a)
	}
	var gs *sneakpeek.GapScale
	if chosen == sneakpeek.FormPerVariant {
		adj, rnd := neighbours(val.Labels, m.K())
		fmt.Printf("%s: adjacent validation rows share their label %.0f%% of the time, random pairs %.0f%% (the contiguous blocks keep alike rows together only when the first is well above the second)\n",
			m.Name, 100*adj, 100*rnd)
		g, why, err := gapScale(m, features, names, rows, correct)
		if err != nil {
			return err
		}
		how += why
		mt.TrainedOn, gs = how, g
	}
	if *dry {
		return nil
	}
	p, d, err := fit(chosen, features, m.InputSize, k, names, rows)
	if err != nil {
		return err
	}
	if gs != nil {
		gs.SetOn(p)
		if d, err = sneakpeek.NewDifficulty(p, m.InputSize); err != nil {
			return err
		}
	}
	c := make([]float64, nv)
	best := math.Inf(1)
	for range 5 {
		r := testing.Benchmark(func(b *testing.B) {
			for i := range b.N {
				r := rows[i%len(rows)]
				d.Correctness(r.Input, r.Estimate, c)
			}
		})
		best = min(best, float64(r.NsPerOp())/1000)
	}
	mt.CostUS = math.Round(best*1000) / 1000
	fmt.Printf("  cost %.3f us per request (on top of the estimator)\n", mt.CostUS)
	if err := writeJSON(filepath.Join(dir, mt.File), p); err != nil {
		return err
	}
	return writeJSON(filepath.Join(dir, "difficulty.json"), mt)
}

// heldOut prints what the cross-fitted estimates scores say on held-out rows
// besides the AUCs: each variant's log loss; by true class, the gap between
// the most accurate variant and the runner-up that the estimates predict
// against the one realised, over the quarter of each class's rows with the
// largest predicted gap and over all of them (sneakpeek.CheckGaps); and what
// serving with the most accurate variant instead of the runner-up the rows of
// the largest predicted gaps realises, for budgets of 10-50% of the rows.
func heldOut(m *manifest.App, names []string, scores [][]float64, correct [][]bool, labels []int32) {
	nv, n := len(names), len(labels)
	acc := make([]int, nv)
	for v := range nv {
		for _, ok := range correct[v] {
			if ok {
				acc[v]++
			}
		}
	}
	order := make([]int, nv)
	for v := range order {
		order[v] = v
	}
	slices.SortStableFunc(order, func(a, b int) int { return acc[b] - acc[a] })
	hi, lo := order[0], order[min(1, nv-1)]
	fmt.Printf("  held-out log loss:")
	for v := range nv {
		fmt.Printf(" %s %.4f", names[v], sneakpeek.LogLoss(scores[v:v+1], correct[v:v+1]))
	}
	fmt.Printf("; sum %.4f\n", sneakpeek.LogLoss(scores, correct))
	y := make([]int, n)
	for i, l := range labels {
		y[i] = int(l)
	}
	for _, frac := range []float64{0.25, 1} {
		gaps := sneakpeek.CheckGaps(scores, correct, y, m.K(), hi, lo, frac)
		mae, chi2 := sneakpeek.GapMiss(gaps)
		fmt.Printf("  gap %s - %s by true class, the %.0f%% of each class's rows with the largest predicted gap: |predicted - realised| %.4f (row-weighted), chi2 %.1f over %d classes\n",
			names[hi], names[lo], 100*frac, mae, chi2, len(gaps))
		fmt.Printf("    %-12s %5s %9s %9s %7s\n", "class", "rows", "predicted", "realised", "se")
		for _, g := range gaps {
			fmt.Printf("    %-12s %5d %+9.4f %+9.4f %7.4f\n", m.Labels[g.Class], g.N, g.Pred, g.Real, g.SE)
		}
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	gap := func(i int) float64 { return scores[hi][i] - scores[lo][i] }
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(gap(b), gap(a)) })
	fmt.Printf("  %s instead of %s on the rows of the largest predicted gap, accuracy gained (realised / predicted):", names[hi], names[lo])
	for _, budget := range []float64{0.1, 0.2, 0.3, 0.5} {
		r, p := 0, 0.0
		for _, i := range idx[:int(budget*float64(n))] {
			if correct[hi][i] {
				r++
			}
			if correct[lo][i] {
				r--
			}
			p += gap(i)
		}
		fmt.Printf(" %.0f%%: %+.4f / %+.4f", 100*budget, float64(r)/float64(n), p/float64(n))
	}
	fmt.Println()
}

// gapScale fits the per-variant form's gap scale (sneakpeek.FitGapScale) on
// estimates cross-fitted over -gap-folds contiguous blocks of rows, of the
// kind -gaps asks for or, with auto, the one ChooseGapScale picks on them. It
// returns nil for none, and what it did in words for the manifest.
func gapScale(m *manifest.App, features string, names []string, rows []sneakpeek.DifficultyRow, correct [][]bool) (*sneakpeek.GapScale, string, error) {
	k := m.K()
	scores, err := crossFitBlocks(sneakpeek.FormPerVariant, features, m.InputSize, k, names, rows, *gapFolds)
	if err != nil {
		return nil, "", err
	}
	pred := make([]int, len(rows))
	for i, r := range rows {
		pred[i] = sneakpeek.Argmax(r.Estimate)
	}
	kind := *gaps
	why := ""
	if kind == "auto" {
		ch := sneakpeek.ChooseGapScale(scores, correct, pred, k)
		kind = ch.Kind
		fmt.Printf("%s: held-out gap error (fitted on one half of the %d-fold cross-fitted rows, measured on the other): %s\n",
			m.Name, *gapFolds, ch.Errors())
		why = fmt.Sprintf(" (held-out gap error: %s)", ch.Errors())
	}
	if kind == sneakpeek.GapNone {
		fmt.Printf("%s: no gap scale\n", m.Name)
		return nil, "; no gap scale" + why, nil
	}
	if kind != sneakpeek.GapPerVariant && kind != sneakpeek.GapPerClass {
		return nil, "", fmt.Errorf("-gaps %q: want auto, none, variant or class", kind)
	}
	g := sneakpeek.FitGapScale(kind, scores, correct, pred, k, -1)
	var b strings.Builder
	for v, s := range g.Scale {
		if v == g.Ref {
			continue
		}
		fmt.Fprintf(&b, " %s", names[v])
		for _, x := range s {
			fmt.Fprintf(&b, " %.2f", x)
		}
		b.WriteString(";")
	}
	scales := strings.TrimSuffix(b.String(), ";")
	fmt.Printf("%s: gap scale (%s) against %s:%s\n", m.Name, kind, names[g.Ref], scales)
	return &g, fmt.Sprintf("; gaps to %s scaled per %s by %d-fold cross-fitting over contiguous blocks%s:%s", names[g.Ref], kind, *gapFolds, why, scales), nil
}

// fit trains the difficulty model of form on rows and builds it.
func fit(form, features string, inputSize, k int, names []string, rows []sneakpeek.DifficultyRow) (*sneakpeek.DifficultyParams, *sneakpeek.Difficulty, error) {
	p, err := sneakpeek.TrainDifficulty(form, features, inputSize, k, names, rows, lambda)
	if err != nil {
		return nil, nil, err
	}
	d, err := sneakpeek.NewDifficulty(p, inputSize)
	return p, d, err
}

// neighbours returns how often adjacent rows have the same label, and how
// often two rows drawn at random do (the sum of the squared class shares).
func neighbours(labels []int32, k int) (adjacent, random float64) {
	n := len(labels)
	if n < 2 {
		return 0, 0
	}
	share := make([]float64, k)
	same := 0
	for i, y := range labels {
		if int(y) >= 0 && int(y) < k {
			share[y]++
		}
		if i > 0 && labels[i-1] == y {
			same++
		}
	}
	for _, c := range share {
		random += (c / float64(n)) * (c / float64(n))
	}
	return float64(same) / float64(n-1), random
}

// crossFit returns scores[v][i], variant v's estimated correctness on row i
// from the model of form trained on the other half of rows (two folds by row
// parity; the split is shuffled).
func crossFit(form, features string, inputSize, k int, names []string, rows []sneakpeek.DifficultyRow) ([][]float64, error) {
	return crossFitFolds(form, features, inputSize, k, names, rows, 2, func(i int) int { return i % 2 })
}

// crossFitBlocks is crossFit over folds contiguous blocks of rows.
func crossFitBlocks(form, features string, inputSize, k int, names []string, rows []sneakpeek.DifficultyRow, folds int) ([][]float64, error) {
	n := len(rows)
	// Fold f holds rows f*n/folds to (f+1)*n/folds - 1.
	return crossFitFolds(form, features, inputSize, k, names, rows, folds, func(i int) int { return ((i+1)*folds - 1) / n })
}

// crossFitFolds returns scores[v][i], variant v's estimated correctness on row
// i from the model of form trained on the rows of the other folds (foldOf(i)
// is row i's, 0 to folds-1).
func crossFitFolds(form, features string, inputSize, k int, names []string, rows []sneakpeek.DifficultyRow, folds int, foldOf func(int) int) ([][]float64, error) {
	scores := make([][]float64, len(names))
	for v := range scores {
		scores[v] = make([]float64, len(rows))
	}
	c := make([]float64, len(names))
	for fold := range folds {
		var train []sneakpeek.DifficultyRow
		for i, r := range rows {
			if foldOf(i) != fold {
				train = append(train, r)
			}
		}
		_, d, err := fit(form, features, inputSize, k, names, train)
		if err != nil {
			return nil, err
		}
		for i, r := range rows {
			if foldOf(i) == fold {
				d.Correctness(r.Input, r.Estimate, c)
				for v := range c {
					scores[v][i] = c[v]
				}
			}
		}
	}
	return scores, nil
}

func round(x float64) float64 { return math.Round(x*1e4) / 1e4 }

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// dump writes what fluid.py reads into dir: labels.npy (n), est.npy (n x K, the
// default estimator's class estimates), outputs.npy (variants x n x K, each
// variant's class distribution), correct.npy and scores.npy (variants x n: 1
// where the variant is right; the chosen form's cross-fitted estimates of
// that) and meta.json (the variants, the labels and the utility matrix).
func dump(dir string, m *manifest.App, names []string, val *dataset.Set, rows []sneakpeek.DifficultyRow, outputs [][][]float64, correct [][]bool, scores [][]float64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	n, k, nv := val.N, m.K(), len(names)
	lab, est, out := make([]float64, n), make([]float64, 0, n*k), make([]float64, 0, nv*n*k)
	cor, sc := make([]float64, 0, nv*n), make([]float64, 0, nv*n)
	for i, r := range rows {
		lab[i] = float64(val.Labels[i])
		est = append(est, r.Estimate...)
	}
	for v := range nv {
		for i := range n {
			out = append(out, outputs[v][i]...)
			c := 0.0
			if correct[v][i] {
				c = 1
			}
			cor = append(cor, c)
		}
		sc = append(sc, scores[v]...)
	}
	for _, f := range []struct {
		name  string
		shape []int
		data  []float64
	}{
		{"labels.npy", []int{n}, lab},
		{"est.npy", []int{n, k}, est},
		{"outputs.npy", []int{nv, n, k}, out},
		{"correct.npy", []int{nv, n}, cor},
		{"scores.npy", []int{nv, n}, sc},
	} {
		if err := writeNpy(filepath.Join(dir, f.name), f.shape, f.data); err != nil {
			return err
		}
	}
	return writeJSON(filepath.Join(dir, "meta.json"), map[string]any{
		"app": m.Name, "variants": names, "labels": m.Labels, "utility": m.Utility})
}

// writeNpy writes data (row-major, shape) as a NumPy .npy file of
// little-endian float64.
func writeNpy(path string, shape []int, data []float64) error {
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = fmt.Sprint(d)
	}
	sh := strings.Join(dims, ", ")
	if len(shape) == 1 {
		sh += ","
	}
	h := fmt.Sprintf("{'descr': '<f8', 'fortran_order': False, 'shape': (%s), }", sh)
	h += strings.Repeat(" ", 63-(10+len(h))%64) + "\n" // the header ends on a 64-byte boundary
	b := append([]byte{0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, byte(len(h)), byte(len(h) >> 8)}, h...)
	for _, v := range data {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	return os.WriteFile(path, b, 0o644)
}
