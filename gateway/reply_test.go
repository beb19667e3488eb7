package gateway

import (
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/scheduler"
)

// Every reason the scheduler gives a verdict is a reason the protocol defines.
func TestSchedulerReasonsAreProtocolReasons(t *testing.T) {
	for _, r := range []string{scheduler.ReasonPastHardStop, scheduler.ReasonNoVariantInTime,
		scheduler.ReasonNoVariantFits, scheduler.ReasonNotWorth, scheduler.ReasonOverload} {
		if !protocol.Reason(r).Known() {
			t.Errorf("scheduler reason %q is not in protocol.AnswerReasons", r)
		}
	}
}

func TestBuildReply(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	j := &job{App: "a", Device: "d", ID: "1", Received: t0, Deadline: t0.Add(10 * time.Millisecond)}
	labels := []string{"no", "yes"}
	cases := []struct {
		name string
		r    result
		at   time.Time
		want func(*protocol.Reply) bool
	}{
		{"ok", result{Status: protocol.StatusOK, Probs: []float64{0.2, 0.8}, Variant: "m", Batch: 4,
			EstAccuracy: 0.912345, Start: t0.Add(time.Millisecond), Infer: 2 * time.Millisecond}, t0.Add(5 * time.Millisecond),
			func(r *protocol.Reply) bool {
				return r.Status == protocol.StatusOK && *r.Class == 1 && r.Label == "yes" && *r.Confidence == 0.8 &&
					*r.EstAccuracy == 0.9123 && r.Model == "m" && r.Batch == 4 && *r.QueueMS == 1 && *r.InferMS == 2 &&
					*r.TotalMS == 5 && *r.SlackMS == 5 && *r.DeadlineMet
			}},
		{"published late", result{Status: protocol.StatusOK, Probs: []float64{0.9, 0.1}, Variant: "m", Batch: 1},
			t0.Add(11 * time.Millisecond),
			func(r *protocol.Reply) bool {
				return r.Status == protocol.StatusLate && !*r.DeadlineMet && *r.SlackMS == -1
			}},
		{"degraded", result{Status: protocol.StatusDegraded, Reason: scheduler.ReasonOverload, Probs: []float64{0.3, 0.7},
			EstAccuracy: 0.7}, t0.Add(time.Millisecond),
			func(r *protocol.Reply) bool {
				return r.Status == protocol.StatusDegraded && r.Model == "sneakpeek-x" && r.Reason == protocol.ReasonOverloadShed &&
					r.Batch == 0 && r.QueueMS == nil && *r.Class == 1
			}},
		{"expired", result{Status: protocol.StatusExpired, Reason: scheduler.ReasonPastHardStop}, t0.Add(30 * time.Millisecond),
			func(r *protocol.Reply) bool {
				return r.Class == nil && r.Reason == protocol.ReasonPastHardStop && r.Error != "" && !*r.DeadlineMet
			}},
		{"error", result{Status: protocol.StatusError}, t0,
			func(r *protocol.Reply) bool { return r.Reason == protocol.ReasonInternal && r.Class == nil }},
	}
	for _, c := range cases {
		r := buildReply(j, c.r, labels, "sneakpeek-x", c.at)
		if r.V != 1 || r.ID != "1" || r.App != "a" || r.Device != "d" || !c.want(r) {
			t.Errorf("%s: %+v", c.name, r)
		}
	}
}

// A reply that waited unsent in the outbox is stamped at its publication: on time
// it keeps its answer; past the deadline an on-time answer becomes expired
// (broker_unavailable), a late one stays late; nothing claims deadline_met.
func TestRestamp(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	j := &job{App: "a", Device: "d", ID: "1", Received: t0, Deadline: t0.Add(10 * time.Millisecond)}
	ok := func() *protocol.Reply {
		return buildReply(j, result{Status: protocol.StatusOK, Probs: []float64{0.2, 0.8}, Variant: "m", Batch: 1},
			[]string{"no", "yes"}, "", t0.Add(2*time.Millisecond))
	}
	r := ok()
	restamp(r, j.Received, j.Deadline, t0.Add(4*time.Millisecond))
	if r.Status != protocol.StatusOK || *r.Class != 1 || !*r.DeadlineMet || *r.TotalMS != 4 || *r.SlackMS != 6 {
		t.Errorf("on time: %+v", r)
	}
	r = ok()
	restamp(r, j.Received, j.Deadline, t0.Add(20*time.Second))
	if r.Status != protocol.StatusExpired || r.Reason != protocol.ReasonBrokerUnavailable || r.Class != nil ||
		r.Label != "" || *r.DeadlineMet || *r.TotalMS != 20000 || r.Error == "" {
		t.Errorf("after the deadline: %+v", r)
	}
	late := buildReply(j, result{Status: protocol.StatusLate, Probs: []float64{0.2, 0.8}, Variant: "m", Batch: 1},
		nil, "", t0.Add(12*time.Millisecond))
	restamp(late, j.Received, j.Deadline, t0.Add(time.Second))
	if late.Status != protocol.StatusLate || *late.DeadlineMet || *late.SlackMS != -990 {
		t.Errorf("late: %+v", late)
	}
}
