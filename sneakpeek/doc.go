// Package sneakpeek implements SneakPeek estimators: very cheap per-application
// models that look at a request's own input and return a class distribution p(y),
// and the data-aware accuracy and utility that a scheduler computes from it.
//
// # Basics
//
// Load builds the estimator an application manifest describes (manifest.Estimator);
// LoadDefault builds the manifest's first one. An Estimator writes K probabilities
// into a caller-supplied slice, does not allocate in steady state and is safe for
// concurrent use:
//
//	est, err := sneakpeek.LoadDefault(app)
//	p := make([]float64, app.K())
//	est.Estimate(input, p)
//	a := sneakpeek.ExpectedAccuracy(p, app.Variants[0].Recall)
//
// # Estimator kinds
//
// "knn" (the paper's form): the k nearest neighbours (squared Euclidean distance,
// ties to the lower row index) of the transformed input among the rows of a
// reference file (package dataset format; rows are already transformed features),
// each casting one vote e_y for its label; p(y) = (e_y + alpha_y) / (k + sum alpha)
// with alpha = manifest.App.Alpha(), the Dirichlet posterior of the paper.
//
// "logistic": multinomial logistic regression on the transformed input. Its file
// is JSON {"classes": K, "dim": D, "mean": [D], "scale": [D], "weights": [K][D],
// "bias": [K]}; p = softmax(W z + b) with z = (f - mean) / scale.
//
// # Feature transforms
//
// The manifest names the transform applied to the raw request input x (the values
// the device sends) before an estimator. Training (models/train/common.py) applies
// the same definitions:
//
//   - "identity": f = x.
//   - "avgpool:H:W:S": x is an H x W image, row-major; f is the (H/S) x (W/S) image
//     of the means of non-overlapping S x S blocks, row-major. H and W must be
//     multiples of S and H*W the input size.
//   - "audio-frames:N": x (length L) is cut into N frames of F = L/N samples (the
//     first L - N*F samples are dropped). For each frame, e = log10(mean(x^2) +
//     1e-10) and z = (number of adjacent pairs inside the frame whose signs differ,
//     a value < 0 counting as negative and 0 as positive) / F. f is the N values e,
//     then the N values z, then max(e) and mean(e): 2N+2 values.
//
// # Caveats
//
// The kNN estimator costs O(rows x features) per request; keep the reference set to
// a few thousand rows of a few dozen features. Estimates are only as calibrated as
// the validation split says (the manifest records accuracy and 15-bin ECE); the
// gateway's drift guard checks them at run time.
package sneakpeek
