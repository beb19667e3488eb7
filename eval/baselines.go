package eval

// Baselines that only the evaluation runs:
//
//   - "cascade": scheduler.NewCascade with the application's operating curve
//     measured on its validation split (App.Cascade): every request first on the
//     cheapest variant, escalated to the most accurate one when the cheap answer's
//     top-class probability (App.Conf, the real output on the sample) is below the
//     threshold the policy picks from the curve for the measured arrival rate. The
//     simulator runs the second passes (Batch.EscalateBelow). It needs the engine.
//   - "placebo": sneakpeek fed, for each request, the estimate of another request
//     drawn from the same workload (seeded by the point's seed): the gain of
//     sneakpeek over placebo is what the estimate itself buys, beyond what grouping
//     by any estimate and mixing variants buy.
//   - "sneakpeek-class": sneakpeek valuing variants by the class estimate alone,
//     sum_y p(y) recall(y), as the published method does, ignoring the
//     manifest's per-sample difficulty model (what the gateway does with
//     apps[].class_based). sneakpeek over sneakpeek-class is what per-sample
//     difficulty buys.
//   - "sneakpeek-oracle": sneakpeek told, for each request, which variants answer
//     it correctly (the variants' real predictions on the sample: correctness 1
//     or 0 in place of the difficulty model's probabilities): the per-sample
//     oracle. (sneakpeek - oblivious) / (sneakpeek-oracle - oblivious) is the
//     share of the per-sample headroom sneakpeek captures. Needs the engine's
//     predictions (App.Pred).
//   - "sneakpeek-peek": sneakpeek with a peek (scheduler.Options.Peek, the
//     gateway's scheduler.peek): its batches on the peek variant (-peek, else
//     -cascade-first's, else the cheapest) are first passes whose unsure
//     answers get a second opinion from the most accurate variant when that
//     pays at the price of engine time (scheduler/peek.go). Needs the engine.
const (
	PolicyPeek       = "sneakpeek-peek"
	PolicyCascade    = "cascade"
	PolicyPlacebo    = "placebo"
	PolicyClassBased = "sneakpeek-class"
	PolicyOracle     = "sneakpeek-oracle"
)
