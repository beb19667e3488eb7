// Package devices is the device side of sneakgate: a client library that publishes
// requests and awaits their replies over MQTT, and a simulator that replays real
// labelled samples from many simulated devices against a gateway.
//
// # Basics
//
// Dial connects one device (one MQTT client) and subscribes to its reply topics,
// {prefix}/res/+/{device}. Client.Do publishes a request at QoS 1 and waits for the
// reply with the same id; Client.Publish only publishes, and replies that no Do
// waits for arrive on Client.Replies (enable it with ClientOptions.Pipeline).
//
// Simulate runs N clients at a total request rate (Poisson or evenly spaced
// arrivals, seeded), draws each request's true label from a workload's label mix
// (optionally drifting) and a sample of that label from the application's sample
// file, and reports statuses, accuracy, deadline-met ratio, latency percentiles and
// per-model counts. SimFlags registers its command-line flags. Each reply is judged
// (the device's deadline, the utility's lateness discount) against the request's
// budget: SimConfig.Deadline, or, when the requests name none, the budget the
// gateway applied, the reply's total_ms + slack_ms.
//
// # Caveats
//
//   - Replies are correlated by id only: ids must be unique per device while in
//     flight (Do returns ErrIDInFlight otherwise). The simulator makes ids unique
//     per run.
//   - A rejected, expired or error reply is a reply, not a Go error: Do returns it
//     with a nil error. Do's error is for transport failures and ctx.
//   - Do waits until the reply or ctx; the gateway answers every request it
//     receives, but a request lost before it reached the gateway (broker down) is
//     never answered, so always pass a ctx with a timeout.
//   - The MQTT network loop is never blocked: a reply for which no Do waits and
//     that does not fit in the Replies buffer is dropped and counted (Stats), and
//     handed with its id to ClientOptions.OnUndelivered, as a malformed one is.
package devices
