// Package eval measures the scheduling policies: a deterministic discrete-event
// simulator that runs package scheduler's policies against measured latency and
// swap profiles, replaying each application's workloads with its real samples and
// SneakPeek estimates, and the `sneakgate eval` command around it (Main).
//
// # Basics
//
// LoadApp builds an App from a manifest (profiles measured by the engine or read
// from a JSON file; every variant's real prediction on every sample when an engine
// is available); Synthetic builds a self-contained one. Simulate runs one Point
// (app, workload, policy, load, deadline) and returns its Metrics; a Sweep runs a
// grid in parallel; WriteTable, Report.WriteJSON and WritePlots present it.
// Diagnose measures, without time pressure, what choosing variants by the estimate
// could buy at most. Live runs the real gateway over MQTT with the device
// simulator and compares it with Simulate's prediction for the same point.
//
// # Caveats
//
// Decision times are wall-clock measurements of the real Decide calls and do not
// advance simulated time; the gateway's own time is modelled instead by constants
// (Point.GatewayCost and VerdictCost per request on the scheduling loop, the same
// for every policy, and Point.IngressDelay from receipt to the queue), not MQTT,
// the journal or estimation as such. The simulator starts with the gateway's warm
// residency (WarmResidency). Correctness is exact only with real predictions
// (App.Pred); otherwise it is drawn from the confusion matrices. A request that
// gets no answer scores its class's no-answer value (manifest no_answer_utility).
// Baselines only the evaluation runs: cascade and placebo (baselines.go). See
// docs/evaluation.md.
package eval
