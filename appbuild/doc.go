// Package appbuild makes a served application from a family of ONNX model
// variants and labelled data, in Go, and checks application directories: the
// `sneakgate app build` and `sneakgate app check` commands
// (cmd/sneakgate/app.go; models/README.md, "Serving your own models").
//
// # Build
//
// Build reads the training, validation and optional test splits (.npy, .npz,
// CSV or sample files; see SplitSpec and package dataset), inspects every
// variant with ONNX Runtime (a model with one input is described
// automatically; several inputs, e.g. a recurrent state, need a base spec, see
// BaseSpec), checks the data against the models (row width, finite values,
// labels within the classes the variants output, every class present in the
// training and validation splits, variants agreeing on the number of
// classes), and then:
//
//   - runs every variant through package engine over the validation split in
//     batches of 64, decides how its output is read (rows in [0, 1] summing to
//     1: probabilities; one value per sample in [0, 1]: a score; other finite
//     rows: logits; NaN or infinite values, or a single value outside [0, 1]:
//     an error), checks that batch-1 and batched outputs agree, and records
//     accuracy, confusion matrix and recall; it times a run at batch 1 and 32;
//   - trains the SneakPeek estimators on the training split: "logistic"
//     (FitLogistic: standardised features, L2 with C = 1, L-BFGS, as
//     models/train/common.py fits it with scikit-learn) and "knn" (a
//     stratified reference set of at most 2,000 training rows, at least a
//     fifth left over; the Dirichlet prior strength chosen by negative
//     log-likelihood on those other rows), on the feature transforms of
//     package sneakpeek (DefaultFeatures picks one); loads them with
//     sneakpeek.Load and measures accuracy and ECE (15 equal-width bins of the
//     top-class confidence) on the validation split and the cost per request
//     (testing.Benchmark, best of 3);
//   - makes the best-calibrated estimator the default (the first), or among
//     those within 0.01 ECE of it the cheapest; the prior is the validation
//     split's class mix;
//   - trains the per-sample difficulty model (sneakpeek.TrainDifficulty) on
//     the variants' correctness on the training rows (at most 20,000; not the
//     rows of a kNN default estimator's reference set) and declares it when its
//     mean AUC on the validation split beats the class-based expected
//     accuracy's (Options.NoDifficulty skips it); in the per-variant form
//     the gaps between the variants' estimates are scaled by how far they
//     hold on the validation split (sneakpeek.ChooseGapScale, FitGapScale);
//   - writes manifest.yaml, the variants (NAME.onnx), est/,
//     data/validation.sgs, samples.sgs (the test split, at most 2,000
//     stratified rows of it; without one, a stratified half of validation,
//     at most 2,000 rows, which the manifest's header says) and measured.json
//     (the schema of models/tools/measure), then checks the result with Check.
//
// Everything is written to a temporary directory beside the output and renamed
// into place only when all of it succeeded, so a failed build leaves nothing.
// Random choices (stratified subsets) are seeded, and the logistic fit sums
// its gradient over fixed chunks in a fixed order: a rebuild writes the same
// files, except the timing figures.
//
// # Check
//
// Check loads a manifest directory as the gateway does and runs every variant
// over its validation rows; see Check.
//
// # Caveats
//
// The difficulty model learns from the variants' correctness on the training
// rows; variants trained on those rows are right there more often than on new
// data, so its predictions lean optimistic (the validation AUC it is judged by
// is honest). A variant's file is copied as is: a model whose weights live in external
// data files next to it is not supported. The kNN estimator's cost grows with
// the feature dimension: for inputs of more than a few hundred values that
// are not 2-D images, give a smaller transform (Options.Features).
package appbuild
