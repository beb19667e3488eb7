package gateway

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sneakgate/sneakgate/internal/mqttsub"
)

// TestRetrySubscribeBacksOff: refused attempts are retried after 1 s, 2 s, 4 s
// (doubling, capped at a minute) until one succeeds.
func TestRetrySubscribeBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		refused := &errSubscribeRefused{filter: "sneakgate/req/+/+", code: mqttsub.Failure}
		var at []time.Duration
		var waits []time.Duration
		start := time.Now()
		ok := retrySubscribe(context.Background(), func() error {
			at = append(at, time.Since(start))
			if len(at) < 10 {
				return refused
			}
			return nil
		}, func(err error, next time.Duration) {
			if !errors.Is(err, refused) {
				t.Errorf("failed got %v", err)
			}
			waits = append(waits, next)
		})
		if !ok {
			t.Fatal("retrySubscribe gave up")
		}
		want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
		if len(waits) != len(want) {
			t.Fatalf("waits %v, want %v s", waits, want)
		}
		var sum time.Duration
		for i, w := range want {
			if waits[i] != w*time.Second {
				t.Errorf("wait %d: %v, want %v", i, waits[i], w*time.Second)
			}
			sum += w * time.Second
			if at[i+1] != sum {
				t.Errorf("attempt %d at %v, want %v", i+2, at[i+1], sum)
			}
		}
	})
}

// TestRetrySubscribeStopsWithContext: the end of the connection (or the
// gateway) ends the retries during a wait, and none starts after it.
func TestRetrySubscribeStopsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		attempts := 0
		done := make(chan bool)
		go func() {
			done <- retrySubscribe(ctx, func() error { attempts++; return errors.New("no SUBACK") },
				func(error, time.Duration) {})
		}()
		time.Sleep(1500 * time.Millisecond) // fake time: the second attempt is made, the third awaited
		cancel()
		if <-done {
			t.Error("retrySubscribe reported success")
		}
		if attempts != 2 {
			t.Errorf("%d attempts, want 2", attempts)
		}
		if retrySubscribe(ctx, func() error { t.Error("attempt after the end"); return nil }, nil) {
			t.Error("retrySubscribe on an ended context reported success")
		}
	})
}

// TestConnectFailuresLogRate: a series of failed connection attempts is logged
// at its first attempt, whenever the error changes, and otherwise once every
// connLogEvery; a connection ends the series.
func TestConnectFailuresLogRate(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newBrokerLink(func() time.Time { return now })
	refused, tls := errors.New("connection refused"), errors.New("x509: unknown authority")
	type step struct {
		after    time.Duration
		err      error
		log      bool
		attempts int
	}
	for i, s := range []step{
		{0, refused, true, 1},
		{time.Second, refused, false, 2},
		{time.Second, refused, false, 3},
		{time.Second, tls, true, 4},
		{time.Second, tls, false, 5},
		{connLogEvery - time.Second, tls, true, 6},
		{time.Second, tls, false, 7},
	} {
		now = now.Add(s.after)
		if log, n := l.failed(s.err); log != s.log || n != s.attempts {
			t.Errorf("step %d: log %v after %d attempts, want %v after %d", i, log, n, s.log, s.attempts)
		}
	}
	if why := l.notServing(false); why != "not connected to the broker: 7 failed attempts, the last: x509: unknown authority" {
		t.Errorf("notServing: %q", why)
	}
	if n := l.connected(); n != 7 {
		t.Errorf("connected after %d failures, want 7", n)
	}
	if log, n := l.failed(tls); !log || n != 1 {
		t.Errorf("first failure after a connection: log %v, attempts %d", log, n)
	}
}
