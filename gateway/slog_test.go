package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/store"
)

// A client's connection closed under the embedded broker's reader is a normal
// disconnect: logged at debug, not warn; other warnings stay warnings.
func TestBrokerLogClosedConnectionIsDebug(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(zerologHandler{zerolog.New(&buf).Level(zerolog.InfoLevel)})
	closed := fmt.Errorf("read tcp 127.0.0.1:1883->127.0.0.1:5000: %w", net.ErrClosed)
	log.Warn("", "listener", "tcp", "error", closed)
	if buf.Len() != 0 {
		t.Fatalf("a closed connection logged at info level or above: %s", buf.String())
	}
	log.Warn("", "listener", "tcp", "error", errors.New("read tcp: connection reset by peer"))
	if !strings.Contains(buf.String(), `"level":"warn"`) {
		t.Fatalf("another error not logged as a warning: %q", buf.String())
	}
}

// Rejection lines are sampled: a burst is logged, a flood is not.
func TestRejectLogSampled(t *testing.T) {
	var buf bytes.Buffer
	log := zerolog.New(&buf).Sample(rejectSampler())
	for range 1000 {
		log.Warn().Msg("request rejected")
	}
	// 10 per second and 1 in 100 beyond: about 20 in the usual fraction of a
	// second this loop takes, far below 1,000 however slow the machine.
	if n := strings.Count(buf.String(), "\n"); n < 10 || n >= 200 {
		t.Fatalf("%d of 1000 rejection lines logged, want the burst of 10 and about 1 in 100 after", n)
	}
}

// A journaled reply_to the gateway does not publish to is redirected at every
// outbox flush of its reply, and an upgraded journal may hold thousands: the
// warning is sampled like rejections, not one line a reply a flush.
func TestJournaledReplyToLogSampled(t *testing.T) {
	var buf bytes.Buffer
	g := &Gateway{log: zerolog.New(&buf)}
	g.sampleLogs()
	k := store.Key{App: "fashion", Device: "cam1", ID: "r1"}
	for range 1000 {
		if got := g.journaledReplyTo("sneakgate/res/fashion/cam1/\x01", k); got != "sneakgate/res/fashion/cam1" {
			t.Fatalf("journaledReplyTo = %q, want the device's own reply topic", got)
		}
	}
	if n := strings.Count(buf.String(), "\n"); n < 1 || n >= 200 {
		t.Fatalf("%d of 1000 redirected replies logged, want the burst of 10 and about 1 in 100 after", n)
	}
}

// retainedMessage is a request message the broker replays as retained.
type retainedMessage struct{ *fakeMessage }

func (retainedMessage) Retained() bool { return true }

// A device can leave a retained message on as many request topics as it likes,
// and the broker replays every one at each (re)subscription: the warning is
// sampled like rejections; sneakgate_requests_ignored_total counts them all.
func TestRetainedRequestLogSampled(t *testing.T) {
	var buf bytes.Buffer
	g := &Gateway{log: zerolog.New(&buf), m: newMetrics(nil)}
	g.sampleLogs()
	for i := range 1000 {
		m := retainedMessage{newFakeMessage(fmt.Sprintf("sneakgate/req/fashion/cam%d", i), []byte("{}"))}
		g.onMessage(nil, m)
		if !m.isAcked() {
			t.Fatal("a retained message was not acknowledged")
		}
	}
	if n := testutil.ToFloat64(g.m.ignored.WithLabelValues("retained")); n != 1000 {
		t.Errorf("sneakgate_requests_ignored_total{why=\"retained\"} = %v, want 1000", n)
	}
	if n := strings.Count(buf.String(), "\n"); n < 1 || n >= 200 {
		t.Fatalf("%d of 1000 retained messages logged, want the burst of 10 and about 1 in 100 after", n)
	}
}

// nanEstimator answers NaN, as an estimator may for an input out of range of
// an application without input_range.
type nanEstimator struct{}

func (nanEstimator) Estimate(_ []float32, dst []float64) {
	for i := range dst {
		dst[i] = math.NaN()
	}
}

// Such an input comes in every request a device sends: the warning is sampled
// like rejections, not one a request.
func TestInvalidEstimateLogSampled(t *testing.T) {
	var buf bytes.Buffer
	g := &Gateway{log: zerolog.New(&buf)}
	g.sampleLogs()
	a := &appRuntime{m: &manifest.App{Name: "app", Labels: []string{"a", "b"}}, est: nanEstimator{}}
	for range 1000 {
		if p, _, _, _ := g.estimate(a, []float32{1}); p != nil {
			t.Fatalf("estimate = %v, want none", p)
		}
	}
	if n := strings.Count(buf.String(), "\n"); n < 1 || n >= 200 {
		t.Fatalf("%d of 1000 invalid estimates logged, want the burst of 10 and about 1 in 100 after", n)
	}
}
