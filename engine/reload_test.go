package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
)

// A reloaded application's new version is registered under its own key next to
// the serving one, profiled outside the budget without disturbing it, and the
// old key is unregistered afterwards.
func TestRegisterAsSideBySide(t *testing.T) {
	opts := Options{BatchSizes: []int{1, 2}, WarmupRuns: 1, ProfileRuns: 1}
	probe := newEngine(t, opts)
	if err := probe.Register(linApp(t)); err != nil {
		t.Fatal(err)
	}
	mem, err := probe.MemBytes(idLogits)
	if err != nil {
		t.Fatal(err)
	}
	// Room for exactly one resident variant of this size.
	opts.MemoryBudgetBytes = mem
	e := newEngine(t, opts)
	if err := e.Register(linApp(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Load(idLogits); err != nil {
		t.Fatal(err)
	}
	if err := e.RegisterAs("lin#2", linApp(t)); err != nil {
		t.Fatal(err)
	}
	if err := e.RegisterAs("lin#2", linApp(t)); !errors.Is(err, ErrAlreadyRegistered) {
		t.Fatalf("second RegisterAs: %v, want ErrAlreadyRegistered", err)
	}
	v2 := VariantID{"lin#2", "logits"}
	// Profile would need room next to the resident variant; ProfileBeside does not.
	if err := e.Profile(context.Background(), v2); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("Profile: %v, want ErrOverBudget", err)
	}
	if err := e.ProfileBeside(context.Background(), v2); err != nil {
		t.Fatal(err)
	}
	if p, ok := e.ProfileOf(v2); !ok || p.LatencyAt(1) <= 0 {
		t.Fatalf("no profile for %s: %+v", v2, p)
	}
	checkConsistent(t, e)
	if got := fmt.Sprint(e.Resident()); got != "[lin/logits]" {
		t.Fatalf("Resident = %s", got)
	}
	if got := fmt.Sprint(e.Variants("lin#2")); got != "[lin#2/logits lin#2/probs lin#2/trees]" {
		t.Fatalf("Variants(lin#2) = %s", got)
	}
	x := [][]float32{{0.1, 0.2, 0.3, 0.4}}
	want, err := e.Run(idLogits, x)
	if err != nil {
		t.Fatal(err)
	}
	// Swap: the old version goes, the new one loads into its room and answers alike.
	if err := e.Unregister("lin"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(idLogits, x); !errors.Is(err, ErrUnknownVariant) {
		t.Fatalf("Run after Unregister: %v, want ErrUnknownVariant", err)
	}
	if err := e.Unregister("lin"); err != nil {
		t.Fatalf("second Unregister: %v", err)
	}
	if _, err := e.Load(v2); err != nil {
		t.Fatal(err)
	}
	got, err := e.Run(v2, x)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("new version answers %v, old %v", got, want)
	}
	// The key is free again.
	if err := e.Register(linApp(t)); err != nil {
		t.Fatalf("Register after Unregister: %v", err)
	}
}

// A Load that found its variant just before Unregister took it away (here
// Unregister runs to its end between Load's lookup and its locking the variant)
// fails with ErrUnknownVariant: it creates no session that nothing would ever
// unload and that would count against the budget for good.
func TestLoadRacingUnregister(t *testing.T) {
	e := newEngine(t, Options{BatchSizes: []int{1}})
	if err := e.Register(linApp(t)); err != nil {
		t.Fatal(err)
	}
	e.lookedUp = func(VariantID) {
		e.lookedUp = nil
		if err := e.Unregister("lin"); err != nil {
			t.Errorf("Unregister: %v", err)
		}
	}
	if _, err := e.Load(idLogits); !errors.Is(err, ErrUnknownVariant) {
		t.Errorf("Load of a variant unregistered meanwhile: %v, want ErrUnknownVariant", err)
	}
	if bytes, count := e.Usage(); bytes != 0 || count != 0 {
		t.Errorf("usage after Unregister: %d bytes / %d variants, want none", bytes, count)
	}
}

// Close neither returns nor releases the session options while a Load of a
// variant that Unregister is taking away still creates its session: Unregister
// waits for that Load, and Close for Unregister.
func TestCloseWaitsForUnregister(t *testing.T) {
	e := newEngine(t, Options{BatchSizes: []int{1}})
	if err := e.Register(linApp(t)); err != nil {
		t.Fatal(err)
	}
	unregistered, closed := make(chan error, 1), make(chan error, 1)
	waiting := make(chan struct{})
	e.closeWaits = func() { close(waiting) }
	e.creating = func(VariantID) {
		e.creating = nil
		go func() { unregistered <- e.Unregister("lin") }()
		for len(e.Variants("lin")) > 0 { // Unregister then waits for this Load
			runtime.Gosched()
		}
		go func() { closed <- e.Close() }()
		select {
		case err := <-closed:
			t.Errorf("Close returned (%v) while a Load was creating its session", err)
			closed <- err
		case <-waiting:
		}
	}
	if _, err := e.Load(idLogits); err != nil {
		t.Errorf("Load: %v", err)
	}
	if err := <-unregistered; err != nil {
		t.Errorf("Unregister: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if bytes, count := e.Usage(); bytes != 0 || count != 0 {
		t.Errorf("usage after Close: %d bytes / %d variants, want none", bytes, count)
	}
}
