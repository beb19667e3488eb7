package appbuild

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/sneakpeek"
)

// difficultyLambda is the L2 penalty per row of the difficulty model (the
// value sneakpeek.TrainDifficulty recommends, as models/tools/difficulty).
const difficultyLambda = 1e-3

// maxDifficultyRows bounds the training rows the variants are run on to train
// the difficulty model.
const maxDifficultyRows = 20000

// difficultyResult is what the build measured of the difficulty model.
type difficultyResult struct {
	// AUC and ClassAUC are per variant, on the validation split.
	AUC, ClassAUC []float64
	CostUS        float64
	Rows          int
	// Form is the model's form (sneakpeek.FormShared or FormPerVariant), and
	// FormWhy the check that chose it; GapWhy says which gap scale the
	// per-variant form got (sneakpeek.ChooseGapScale) and why.
	Form, FormWhy, GapWhy string
	// Kept says whether the manifest declares it, and Why.
	Kept bool
	Why  string
}

// trainDifficulty trains the per-sample difficulty model (sneakpeek.Difficulty)
// of app on training rows: every variant is run on them (up to
// maxDifficultyRows, stratified; rows of a kNN default estimator's reference
// set are left out, as its estimate of them is its own label), the default
// estimator gives each row's class estimate. Its AUC per variant is measured on
// the validation split against the class-based expected accuracy; the manifest
// declares it when it beats the class-based form on average. preds are the
// variants' validation predictions.
func trainDifficulty(ctx context.Context, o *Options, app *manifest.App, train, val *split, exclude []int, preds [][]int, runs int) (*difficultyResult, error) {
	k, nv := app.K(), len(app.Variants)
	def := app.Estimators[0]
	est, err := sneakpeek.Load(app, def)
	if err != nil {
		return nil, err
	}
	skip := make([]bool, train.n)
	for _, i := range exclude {
		skip[i] = true
	}
	var idx []int
	var labels []int32
	for i := 0; i < train.n; i++ {
		if !skip[i] {
			idx = append(idx, i)
			labels = append(labels, train.labels[i])
		}
	}
	if len(idx) > maxDifficultyRows {
		pick, _ := stratified(labels, k, maxDifficultyRows, o.Seed+3)
		sub := make([]int, len(pick))
		for j, p := range pick {
			sub[j] = idx[p]
		}
		idx = sub
	}
	if len(idx) < 2 {
		return &difficultyResult{Why: "too few training rows"}, nil
	}
	rows := make([]sneakpeek.DifficultyRow, len(idx))
	for j, i := range idx {
		p := make([]float64, k)
		est.Estimate(train.row(i), p)
		rows[j] = sneakpeek.DifficultyRow{Input: train.row(i), Estimate: p, Correct: make([]bool, nv)}
	}
	fmt.Fprintf(o.Log, "training the per-sample difficulty model: running the variants on %d training rows\n", len(idx))
	eng, err := newEngine(o.Library)
	if err != nil {
		return nil, err
	}
	defer eng.Close()
	if err := eng.Register(app); err != nil {
		return nil, err
	}
	sub := &split{name: "train", n: len(idx), d: train.d, x: make([]float32, 0, len(idx)*train.d)}
	for _, i := range idx {
		sub.x = append(sub.x, train.row(i)...)
	}
	names := make([]string, nv)
	for v, mv := range app.Variants {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		names[v] = mv.Name
		id := engine.VariantID{App: app.Name, Variant: mv.Name}
		if _, err := eng.Load(id); err != nil {
			return nil, err
		}
		out, err := runAll(eng, id, sub)
		if _, uerr := eng.Unload(id); err == nil {
			err = uerr
		}
		if err != nil {
			return nil, err
		}
		for j, p := range out {
			rows[j].Correct[v] = sneakpeek.Argmax(p) == int(train.labels[idx[j]])
		}
	}
	// Per-variant first; the shared form where, on the validation split, choosing
	// on the per-variant estimates with engine time free is less accurate than
	// the most accurate variant alone beyond chance (sneakpeek.CheckRanking).
	correct := make([][]bool, nv)
	cls := make([][]float64, nv)
	for v := range nv {
		correct[v], cls[v] = make([]bool, val.n), make([]float64, val.n)
	}
	pv := make([][]float64, val.n) // the estimator's output per validation row
	for i := range val.n {
		pv[i] = make([]float64, k)
		est.Estimate(val.row(i), pv[i])
		for v := range nv {
			cls[v][i] = sneakpeek.ExpectedAccuracy(pv[i], app.Variants[v].Recall)
			correct[v][i] = preds[v][i] == int(val.labels[i])
		}
	}
	train1 := func(form string) (*sneakpeek.DifficultyParams, *sneakpeek.Difficulty, [][]float64, error) {
		params, err := sneakpeek.TrainDifficulty(form, def.Features, app.InputSize, k, names, rows, difficultyLambda)
		if err != nil {
			return nil, nil, nil, err
		}
		model, err := sneakpeek.NewDifficulty(params, app.InputSize)
		if err != nil {
			return nil, nil, nil, err
		}
		scores := make([][]float64, nv)
		for v := range scores {
			scores[v] = make([]float64, val.n)
		}
		c := make([]float64, nv)
		for i := range val.n {
			model.Correctness(val.row(i), pv[i], c)
			for v := range nv {
				scores[v][i] = c[v]
			}
		}
		return params, model, scores, nil
	}
	params, model, scores, err := train1(sneakpeek.FormPerVariant)
	if err != nil {
		return nil, err
	}
	res := &difficultyResult{Rows: len(idx), Form: sneakpeek.FormPerVariant}
	check := sneakpeek.CheckRanking(scores, correct)
	res.FormWhy = fmt.Sprintf("with engine time free, choosing on the per-variant estimates is %.4f accurate on validation, %s alone %.4f (z %.2f)",
		check.Accuracy, names[check.Top], check.TopAccuracy, check.Z)
	if check.Noisy() {
		if params, model, scores, err = train1(sneakpeek.FormShared); err != nil {
			return nil, err
		}
		res.Form = sneakpeek.FormShared
		res.FormWhy += ": less accurate beyond chance, so the shared form"
		// Class terms where they predict the variants' correctness better on
		// the validation split (models/tools/difficulty's rule).
		cp, cm, cscores, err := train1(sneakpeek.FormSharedClass)
		if err != nil {
			return nil, err
		}
		if plain, withClass := sneakpeek.LogLoss(scores, correct), sneakpeek.LogLoss(cscores, correct); withClass < plain {
			params, model, scores = cp, cm, cscores
			res.FormWhy += fmt.Sprintf(", with class terms (validation log loss summed over the variants %.4f against %.4f)", withClass, plain)
		} else {
			res.FormWhy += fmt.Sprintf(", without class terms (validation log loss summed over the variants %.4f with them, %.4f without)", withClass, plain)
		}
	}
	if res.Form == sneakpeek.FormPerVariant {
		// The gaps between the variants' estimates, scaled by how far they
		// hold on the validation split (models/tools/difficulty's rule; the
		// model's validation estimates are out of sample): the kind of the
		// smallest held-out gap error, fitted on all of the split.
		pred := make([]int, val.n)
		for i := range val.n {
			pred[i] = sneakpeek.Argmax(pv[i])
		}
		ch := sneakpeek.ChooseGapScale(scores, correct, pred, k)
		res.GapWhy = fmt.Sprintf("gap scale %s (validation gap error: %s)", ch.Kind, ch.Errors())
		if ch.Kind != sneakpeek.GapNone {
			sneakpeek.FitGapScale(ch.Kind, scores, correct, pred, k, -1).SetOn(params)
			if model, err = sneakpeek.NewDifficulty(params, app.InputSize); err != nil {
				return nil, err
			}
		}
	}
	var sum, sumClass float64
	for v := range nv {
		a, ca := sneakpeek.AUC(scores[v], correct[v]), sneakpeek.AUC(cls[v], correct[v])
		if math.IsNaN(a) || math.IsNaN(ca) { // a variant always (or never) right on validation
			a, ca = 0.5, 0.5
		}
		res.AUC, res.ClassAUC = append(res.AUC, round(a, 4)), append(res.ClassAUC, round(ca, 4))
		sum += a
		sumClass += ca
	}
	if sum <= sumClass {
		res.Why = fmt.Sprintf("left out: its mean AUC on validation %.3f does not beat the class-based %.3f", sum/float64(nv), sumClass/float64(nv))
		return res, nil
	}
	cost, _ := benchDifficulty(model, est, val, k, nv, runs)
	res.CostUS = cost
	res.Kept = true
	res.Why = fmt.Sprintf("kept: mean AUC on validation %.3f, class-based %.3f", sum/float64(nv), sumClass/float64(nv))
	file := "est/difficulty.json"
	b, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(app.Path(file), b, 0o644); err != nil {
		return nil, err
	}
	trained := fmt.Sprintf("training split (%d rows", len(idx))
	if len(exclude) > 0 {
		trained += ", outside the kNN reference set"
	}
	app.Difficulty = &manifest.Difficulty{File: file, Estimator: def.Name, Form: res.Form, AUC: res.AUC, ClassAUC: res.ClassAUC,
		TrainedOn: trained + fmt.Sprintf("); AUC on the validation split (%d rows); %s form: %s", val.n, res.Form, res.FormWhy), CostUS: round(cost, 3)}
	if res.GapWhy != "" {
		app.Difficulty.TrainedOn += "; " + res.GapWhy
	}
	return res, nil
}

// benchDifficulty measures the model's cost per request on top of the
// estimator (testing.Benchmark, best of runs).
func benchDifficulty(m *sneakpeek.Difficulty, est sneakpeek.Estimator, val *split, k, nv, runs int) (float64, int64) {
	ps := make([][]float64, min(val.n, 256))
	for i := range ps {
		ps[i] = make([]float64, k)
		est.Estimate(val.row(i), ps[i])
	}
	c := make([]float64, nv)
	return benchLoop(func(i int) {
		j := i % len(ps)
		m.Correctness(val.row(j), ps[j], c)
	}, runs)
}
