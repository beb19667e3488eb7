package gateway

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
)

// ingressBudget bounds the bytes of request payloads the gateway holds between
// the MQTT client and the end of their handlers (admission.ingress_bytes): the
// hand-off queue counts messages, and with large payloads a count alone let a
// device publishing at QoS 0 (which the broker's in-flight window does not
// hold back) make the gateway hold ingress_queue + workers payloads of up to
// max_payload_bytes each, about 1 GiB with the defaults. A message larger than
// the whole budget takes all of it, so that it still passes alone (the handler
// refuses it when it is over max_payload_bytes). A nil budget bounds nothing
// (tests that build a Gateway by hand).
type ingressBudget struct {
	sem   *semaphore.Weighted
	limit int64
	gauge prometheus.Gauge // sneakgate_ingress_bytes: the bytes taken
}

func newIngressBudget(limit int64, gauge prometheus.Gauge) *ingressBudget {
	return &ingressBudget{sem: semaphore.NewWeighted(limit), limit: limit, gauge: gauge}
}

// weight is what a payload of n bytes takes from the budget.
func (b *ingressBudget) weight(n int) int64 {
	if b == nil {
		return 0
	}
	return min(int64(n), b.limit)
}

// tryTake takes w bytes if they are free now.
func (b *ingressBudget) tryTake(w int64) bool {
	if b == nil || w == 0 {
		return true
	}
	if !b.sem.TryAcquire(w) {
		return false
	}
	b.gauge.Add(float64(w))
	return true
}

// take waits for w bytes (in arrival order) until stop is closed; it reports
// whether it took them.
func (b *ingressBudget) take(w int64, stop <-chan struct{}) bool {
	if b == nil || w == 0 {
		return true
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	if b.sem.Acquire(ctx, w) != nil {
		return false
	}
	b.gauge.Add(float64(w))
	return true
}

// give returns w bytes taken before.
func (b *ingressBudget) give(w int64) {
	if b == nil || w == 0 {
		return
	}
	b.gauge.Add(-float64(w))
	b.sem.Release(w)
}
