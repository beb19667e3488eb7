package gateway

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/sneakgate/sneakgate/protocol"
)

// Version is reported in the status message; cmd/sneakgate sets it.
var Version = "dev"

// statusPayload encodes the retained availability message.
func (g *Gateway) statusPayload(state, reason string) []byte {
	s := protocol.GatewayStatus{V: protocol.Version, State: state, Reason: reason}
	if state == protocol.StateOnline {
		s.Version, s.Policy, s.Since = Version, g.cfg.Scheduler.Policy, g.started.UnixMilli()
		for name := range g.appSet() {
			s.Apps = append(s.Apps, name)
		}
		slices.Sort(s.Apps)
	}
	b, _ := json.Marshal(s)
	return b
}

// publishStatus publishes the retained availability message and waits (bounded)
// for the broker to take it.
func (g *Gateway) publishStatus(state, reason string) {
	t := g.client.Publish(g.cfg.MQTT.StatusTopic(), 1, true, g.statusPayload(state, reason))
	if !t.WaitTimeout(2*time.Second) || t.Error() != nil {
		if t.Error() != nil && g.egress != nil {
			g.egress.gate.strand(t) // perhaps failed unsent: stranded.go
		}
		g.log.Warn().Err(t.Error()).Str("state", state).Msg("status not published")
	}
}

// statsLoop publishes Stats every interval until ctx ends.
func (g *Gateway) statsLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !g.client.IsConnectionOpen() {
				continue
			}
			b, err := json.Marshal(g.stats())
			if err != nil {
				continue
			}
			g.client.Publish(g.cfg.MQTT.StatsTopic(), 0, false, b)
		}
	}
}

// stats summarises the gateway's metrics.
func (g *Gateway) stats() *protocol.Stats {
	now := g.now()
	s := &protocol.Stats{V: protocol.Version, Time: now.UnixMilli(), UptimeS: now.Sub(g.started).Seconds(),
		Apps: map[string]*protocol.AppStats{}, Rejected: map[string]int64{}}
	app := func(name string) *protocol.AppStats {
		a := s.Apps[name]
		if a == nil {
			a = &protocol.AppStats{Replies: map[protocol.Status]int64{}}
			s.Apps[name] = a
		}
		return a
	}
	for name, a := range g.appSet() {
		as := app(name)
		if a.shift != nil {
			for _, x := range a.shift.Prior() {
				as.LivePrior = append(as.LivePrior, round4(x))
			}
		}
		if a.monitor != nil {
			st := a.monitor.Stats()
			as.Estimates = &protocol.EstimateStats{Observations: st.Observations,
				Agreement: round4(st.Agreement), Predicted: round4(st.Predicted)}
		}
	}
	fams, err := g.reg.Gather()
	if err != nil {
		g.log.Warn().Err(err).Msg("gathering metrics for stats")
	}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			l := labels(m)
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			switch f.GetName() {
			case "sneakgate_requests_received_total":
				app(l["app"]).Received = int64(v)
			case "sneakgate_replies_total":
				if _, ok := g.app(l["app"]); ok && v > 0 {
					app(l["app"]).Replies[protocol.Status(l["status"])] = int64(v)
				}
			case "sneakgate_rejected_total":
				if v > 0 { // the series exist from the start, at zero (initLabels)
					s.Rejected[l["reason"]] = int64(v)
				}
			case "sneakgate_queue_length":
				s.Queue = int(v)
			case "sneakgate_outbox_length":
				s.Outbox = int(v)
			case "sneakgate_resident_variants":
				s.Resident = int(v)
			}
		}
	}
	// The answers' count, deadline-met count and est_accuracy sum from one read
	// (answerCounts), not from the gathering, which reads each series at its own
	// moment while answers go on being counted.
	for name, c := range g.m.answers.snapshot() {
		if n := c.met + c.missed; n > 0 {
			a := app(name)
			a.DeadlineMet = protocol.Ptr(round4(c.met / n))
			a.MeanEstAccuracy = protocol.Ptr(round4(c.estSum / n))
		}
	}
	return s
}

func labels(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}
