// Package soak holds fault and overload tests that run the real sneakgate binary
// against a real Mosquitto, as a user would: SIGKILLs of the gateway under load
// (TestKill9Soak), a broker outage under load (TestBrokerOutage) and five times
// the gateway's measured capacity (TestOverload5x).
//
// The tests are behind the build tag "soak", so `go test ./...` skips them. Run
// them with `make soak` (short sizes) or `make soak SOAK_FULL=1` (the full sizes);
// docs/reliability.md, "Fault and overload tests (make soak)", lists what each
// test asserts and every knob (SOAK_* environment variables).
//
// This file only documents the package; the tests are in *_test.go.
package soak
