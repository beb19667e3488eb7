// Package scheduler decides which queued requests run next, on which model variant,
// in which batch.
//
// # Basics
//
// A decision is a pure function of a Snapshot: the current time, the queued requests
// (each with its SneakPeek estimate and per-variant expected utilities, computed once
// at admission by Prepare), every application's variants with their measured latency
// per batch size and swap cost, and which variants are resident. A Policy returns a
// Decision: at most one Batch to run now, Verdicts for requests that should be answered
// without running a model (degraded or expired), and a time by which it wants to be
// asked again. The caller (the gateway's scheduling loop, or the evaluation simulator)
// executes the decision; the policy has no side effects on the queue. Both callers
// apply decisions with an Executor (exec.go), which owns the queue and the
// residency and refuses an invalid decision before it changes anything.
//
// All policies share one utility and cost model (utility.go): the data-aware expected
// utility U(m|p), the profiled utility, the deadline penalty, and the swap/residency
// accounting (residency.go), so their scores are comparable.
//
// Policies are registered by name (New, Names): sneakpeek (the data-aware grouped
// search of the SneakPeek method, sneakpeek.go, plan.go, search.go), oblivious (the
// same search and price of engine time with profiled utility, splitting load
// between variants as the price's fluid optimum does: assignMix in plan.go),
// oblivious-switch (the oblivious policy before it could mix: all traffic on one
// variant at a time), bruteforce (exhaustive over tiny windows, a reference),
// fixed-batch (a Triton-style dynamic batcher), edf and fifo. The searching policies
// keep their cost bounded by Options.Window and Options.ExhaustiveGroups whatever the
// queue length, and price engine time under overload (setPrice in plan.go).
//
// The cascade policy (cascade.go: the cheapest variant first, a better one when the
// cheap answer is unsure) is built with NewCascade from each application's
// validation-split operating curve and is not registered: it needs the caller to
// run second passes (Batch.EscalateBelow, Request.First, Outcome FirstAnswer).
//
// # No answer
//
// An application may give a value to a request that gets no model answer (its
// default action; App.NoAnswer from the manifest's no_answer_utility, 0 by
// default). An expired or shed request is worth it, a late result decays to it
// (Discount), and shedding and the pre-pass compare every alternative with it, so
// that dropping a likely member of a class whose miss costs is not cheap.
//
// # Time and the deadline penalty
//
// A request arrives at Arrival with an absolute Deadline; its budget is
// D = Deadline - Arrival. A result that finishes at or before the deadline keeps its
// full utility u; one that finishes later keeps u*(1-S(x)) with x = lateness/D and
// S(x) = x^3/(x^3+(1-x)^3), and nothing from Deadline+D on (the "hard stop"). A
// request whose hard stop has passed is answered expired without running.
//
// # Caveats
//
// Decide is called from one goroutine; policies may keep state between calls
// (for example a batching delay) and are not safe for concurrent use.
package scheduler
