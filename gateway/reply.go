package gateway

import (
	"math"
	"time"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

// Messages of replies that carry no answer.
const (
	msgExpired = "the deadline passed before the request could run"
	msgError   = "internal error while running the request; it may be retried"
	msgCrashed = "the gateway process died twice while a model ran on this request, the second time with it alone; it was not run again"
	msgBroker  = "the answer was ready, but the broker could not take it before the deadline"
	// msgExpiredInTransit is the error of a request whose deadline passed before it
	// reached the gateway.
	msgExpiredInTransit = "the deadline (sent_at + budget) passed before the gateway received the request"
)

// buildReply turns a job's result into the reply published at now. A model answer
// published after the deadline is late even if the batch finished in time.
func buildReply(j *job, r result, labels []string, estimator string, now time.Time) *protocol.Reply {
	rep := &protocol.Reply{V: protocol.Version, ID: j.ID, App: j.App, Device: j.Device, Status: r.Status}
	met := !now.After(j.Deadline)
	if r.Status == protocol.StatusOK && !met {
		rep.Status = protocol.StatusLate
	}
	if c := scheduler.Argmax(r.Probs); rep.Status.Answered() && c >= 0 {
		rep.Class = protocol.Ptr(c)
		if c < len(labels) {
			rep.Label = labels[c]
		}
		rep.Confidence = protocol.Ptr(round4(r.Probs[c]))
		rep.EstAccuracy = protocol.Ptr(round4(r.EstAccuracy))
		rep.Model = r.Variant
		if rep.Status == protocol.StatusDegraded {
			rep.Model = estimator
		}
		rep.DeadlineMet = protocol.Ptr(met)
	}
	if r.Variant != "" {
		rep.Batch = r.Batch
		rep.QueueMS = protocol.Millis(r.Start.Sub(j.Received))
		rep.InferMS = protocol.Millis(r.Infer)
	}
	rep.TotalMS = protocol.Millis(now.Sub(j.Received))
	rep.SlackMS = protocol.Millis(j.Deadline.Sub(now))
	switch rep.Status {
	case protocol.StatusDegraded:
		rep.Reason = protocol.Reason(r.Reason)
	case protocol.StatusExpired:
		rep.Reason = protocol.Reason(r.Reason)
		rep.Error = msgExpired
		rep.DeadlineMet = protocol.Ptr(false)
	case protocol.StatusRejected:
		rep.Reason = protocol.Reason(r.Reason)
		rep.Error = "not admitted: " + r.Reason
		if rep.Reason == protocol.ReasonOverload {
			// The loop's queue was full: a retry is worth it once it drains.
			ms := minRetryAfter.Milliseconds()
			rep.RetryAfterMS = &ms
		}
	case protocol.StatusError:
		rep.Reason, rep.Error = protocol.ReasonInternal, msgError
		if r.Reason == string(protocol.ReasonEngineCrashed) {
			rep.Reason, rep.Error = protocol.ReasonEngineCrashed, msgCrashed
		}
	}
	return rep
}

// round4 keeps four decimals: more would be noise on the wire.
func round4(x float64) float64 { return math.Round(x*1e4) / 1e4 }

// restamp brings a reply that waited unsent in the outbox up to its actual
// publication at now: total_ms, slack_ms and deadline_met describe now, and an
// answer that would have been on time but can only go out after the deadline is
// no answer any more: it becomes expired (broker_unavailable). A late answer stays
// late.
func restamp(rep *protocol.Reply, received, deadline, now time.Time) {
	met := !now.After(deadline)
	if !met && (rep.Status == protocol.StatusOK || rep.Status == protocol.StatusDegraded) {
		*rep = protocol.Reply{V: rep.V, ID: rep.ID, App: rep.App, Device: rep.Device,
			Status: protocol.StatusExpired, Reason: protocol.ReasonBrokerUnavailable, Error: msgBroker,
			QueueMS: rep.QueueMS, InferMS: rep.InferMS}
	}
	switch {
	case rep.Status.Answered():
		rep.DeadlineMet = protocol.Ptr(met)
	case rep.Status == protocol.StatusExpired:
		rep.DeadlineMet = protocol.Ptr(false)
	}
	rep.TotalMS = protocol.Millis(now.Sub(received))
	rep.SlackMS = protocol.Millis(deadline.Sub(now))
}
