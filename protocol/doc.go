// Package protocol is sneakgate's wire contract, version 1: the MQTT topics, the
// request payload a device publishes, the reply the gateway publishes, the reply
// statuses and the rejection reason codes. It is pure: it parses and builds bytes
// and knows nothing of MQTT clients, storage or models. docs/protocol.md is the
// human reference; this package is its executable form.
//
// # Basics
//
// A device publishes a JSON request to {prefix}/req/{app}/{device} (QoS 1) and
// receives a JSON Reply on {prefix}/res/{app}/{device}, or on an allowed reply_to
// topic. The gateway calls ParseRequest with the topic, the payload, the time of
// receipt and an Env (prefix, Limits, reply allow-list, application lookup). It
// returns either a *Request, fully validated (input size, finite values, input
// range, absolute deadline, resolved reply topic), or a *Rejection that carries a
// Reason code, a message and, when one can be derived, the topic to publish the
// rejected Reply to (Rejection.Reply builds it).
//
// Devices build payloads with Payload and read replies with ParseReply.
//
// # Caveats
//
//   - Unknown request fields are rejected (reason unknown_field): a misspelt
//     "deadline_ms" must not silently become the application's default deadline.
//     Unknown reply fields must be ignored by devices, so replies can grow.
//   - A JSON null is treated as an absent field.
//   - Absolute deadlines ("deadline") assume the device's and the gateway's clocks
//     agree; "deadline_ms" (relative to receipt) does not and is preferred.
//   - A Rejection with an empty ReplyTo (the topic is not {prefix}/req/{app}/{device}
//     with non-empty levels) cannot be answered; the gateway logs and counts it.
//   - ReplyTo is always either the device's own reply topic or a topic matched by
//     the allow-list; ParseRequest never returns any other publish target.
package protocol
