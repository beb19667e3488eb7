package tail

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/protocol"
)

// t0 is the injected clock's start.
var t0 = time.Date(2025, 3, 1, 14, 30, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// reply returns a reply as the gateway publishes it (protocol's encoding).
func reply(t testing.TB, r protocol.Reply) []byte {
	t.Helper()
	r.V = protocol.Version
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func okReply(id, app, device string, totalMS, slackMS float64) protocol.Reply {
	return protocol.Reply{ID: id, App: app, Device: device, Status: protocol.StatusOK,
		Class: protocol.Ptr(5), Label: "sandal", Confidence: protocol.Ptr(0.9633), Model: "resnet-s", Batch: 1,
		QueueMS: protocol.Ptr(0.862), InferMS: protocol.Ptr(1.654), TotalMS: &totalMS, SlackMS: &slackMS,
		DeadlineMet: protocol.Ptr(slackMS >= 0)}
}

func rejected(id, app, device string) protocol.Reply {
	return protocol.Reply{ID: id, App: app, Device: device, Status: protocol.StatusRejected,
		Reason: protocol.ReasonOverload, Error: "queue full", RetryAfterMS: protocol.Ptr[int64](120)}
}

func TestReplyLines(t *testing.T) {
	var out strings.Builder
	p := NewPrinter(&out, Options{Location: time.UTC}, t0)
	late := okReply("r2", "fashion", "cam-2", 51.25, -1.25)
	late.Status, late.Label, late.Confidence, late.Model = protocol.StatusLate, "", nil, "cnn"
	degraded := protocol.Reply{ID: "r3", App: "vad", Device: "mic-1", Status: protocol.StatusDegraded,
		Reason: protocol.ReasonNoVariantInTime, Class: protocol.Ptr(1), Label: "speech", Confidence: protocol.Ptr(0.7),
		Model: "estimate", TotalMS: protocol.Ptr(0.412), SlackMS: protocol.Ptr(31.588), DeadlineMet: protocol.Ptr(true)}
	for i, r := range []protocol.Reply{okReply("r1", "fashion", "cam-1", 2.66, 97.34), late, degraded, rejected("r4", "vad", "mic-1")} {
		if !p.Message(Message{Topic: "sneakgate/res/x/y", Payload: reply(t, r), At: at(1000*i + 5)}) {
			t.Fatalf("reply %d not printed", i)
		}
	}
	want := `14:30:00.005  fashion/cam-1         r1            ok        sandal 0.96         resnet-s               2.66ms  slack +97.3ms
14:30:01.005  fashion/cam-2         r2            late      class 5             cnn                    51.2ms  slack -1.25ms
14:30:02.005  vad/mic-1             r3            degraded  speech 0.70         estimate              0.412ms  slack +31.6ms     no_variant_meets_deadline
14:30:03.005  vad/mic-1             r4            rejected                                                                       overload: queue full (retry after 120ms)
`
	if out.String() != want {
		t.Errorf("lines:\n%s\nwant:\n%s", out.String(), want)
	}
	if p.Printed() != 4 {
		t.Errorf("Printed() = %d, want 4", p.Printed())
	}
}

func TestColorOnlyWhenAsked(t *testing.T) {
	var plain, color strings.Builder
	m := Message{Topic: "sneakgate/res/fashion/cam-1", Payload: reply(t, rejected("r4", "vad", "mic-1")), At: t0}
	NewPrinter(&plain, Options{Location: time.UTC}, t0).Message(m)
	NewPrinter(&color, Options{Location: time.UTC, Color: true}, t0).Message(m)
	if strings.Contains(plain.String(), "\x1b[") {
		t.Errorf("escape codes without Color: %q", plain.String())
	}
	if !strings.Contains(color.String(), "\x1b[31mrejected\x1b[0m  ") {
		t.Errorf("no red status with Color: %q", color.String())
	}
}

func TestSummary(t *testing.T) {
	var out strings.Builder
	dropped := new(atomic.Int64)
	p := NewPrinter(&out, Options{Location: time.UTC, Dropped: dropped}, t0)
	// First interval (5 s): 10 ok replies of 1..10 ms, one late, one rejected, one malformed.
	for i := 1; i <= 10; i++ {
		p.Message(Message{Payload: reply(t, okReply("a", "fashion", "cam-1", float64(i), 10)), At: at(100 * i)})
	}
	late := okReply("b", "fashion", "cam-1", 100, -3)
	late.Status = protocol.StatusLate
	p.Message(Message{Payload: reply(t, late), At: at(2000)})
	p.Message(Message{Payload: reply(t, rejected("c", "fashion", "cam-1")), At: at(2100)})
	p.Message(Message{Topic: "sneakgate/res/fashion/cam-1", Payload: []byte("not json"), At: at(2200)})
	dropped.Add(3)
	p.Summary(at(5000))
	// Second interval (5 s): nothing.
	p.Summary(at(10000))
	// Third interval (2.5 s): two ok replies, then the end.
	p.Message(Message{Payload: reply(t, okReply("d", "vad", "mic-1", 0.5, 30)), At: at(11000)})
	p.Message(Message{Payload: reply(t, okReply("e", "vad", "mic-1", 0.7, 30)), At: at(12000)})
	p.Final(at(12500))
	want := `14:30:02.200  sneakgate/res/fashion/cam-1  MALFORMED  bad reply: invalid character 'o' in literal null (expecting 'u') (8 bytes: "not json")
14:30:05.000  -- last 5s: 12 replies, 2.4/s | ok 10 (83.3%) late 1 (8.3%) rejected 1 (8.3%) | deadline met 90.9% | total_ms p50 6.00ms p99 100ms | malformed 1 | dropped 3 (printing too slow)
14:30:10.000  -- last 5s: 0 replies, 0.0/s
14:30:12.500  -- total 12.5s: 14 replies, 1.1/s | ok 12 (85.7%) late 1 (7.1%) rejected 1 (7.1%) | deadline met 92.3% | total_ms p50 5.00ms p99 100ms | malformed 1 | dropped 3 (printing too slow)
`
	var got strings.Builder
	for _, l := range strings.SplitAfter(out.String(), "\n") {
		if strings.Contains(l, "  -- ") || strings.Contains(l, "MALFORMED") {
			got.WriteString(l)
		}
	}
	if got.String() != want {
		t.Errorf("summary:\n%s\nwant:\n%s", got.String(), want)
	}
}

// The summary says why replies were degraded, most frequent reason first: an
// answer from the estimate because it was worth more is not overload.
func TestSummaryDegradedReasons(t *testing.T) {
	var out strings.Builder
	p := NewPrinter(&out, Options{Location: time.UTC}, t0)
	deg := func(id string, why protocol.Reason) protocol.Reply {
		return protocol.Reply{ID: id, App: "vad", Device: "mic-1", Status: protocol.StatusDegraded, Reason: why,
			Class: protocol.Ptr(1), Label: "speech", Confidence: protocol.Ptr(0.9), Model: "sneakpeek-logistic",
			TotalMS: protocol.Ptr(0.4), SlackMS: protocol.Ptr(31.0), DeadlineMet: protocol.Ptr(true)}
	}
	for i, r := range []protocol.Reply{deg("a", protocol.ReasonEstimateWorthMore), deg("b", protocol.ReasonOverloadShed),
		deg("c", protocol.ReasonEstimateWorthMore), okReply("d", "vad", "mic-1", 1, 30), deg("e", protocol.ReasonNoVariantInTime)} {
		p.Message(Message{Payload: reply(t, r), At: at(100 * (i + 1))})
	}
	p.Summary(at(5000))
	p.Message(Message{Payload: reply(t, deg("f", protocol.ReasonOverloadShed)), At: at(6000)})
	p.Summary(at(10000))
	var got []string
	for _, l := range strings.SplitAfter(out.String(), "\n") {
		if strings.Contains(l, "  -- ") {
			got = append(got, l[strings.Index(l, "|")+2:strings.Index(l, " | deadline")])
		}
	}
	want := []string{
		"ok 1 (20.0%) degraded 4 (80.0%) [estimate_worth_more 2, no_variant_meets_deadline 1, overload_shed 1]",
		"degraded 1 (100.0%) [overload_shed 1]",
	}
	if !slices.Equal(got, want) {
		t.Errorf("summaries:\n%q\nwant:\n%q", got, want)
	}
}

func TestFilter(t *testing.T) {
	var out strings.Builder
	p := NewPrinter(&out, Options{Location: time.UTC, Filter: Filter{
		Apps: []string{"fashion"}, Statuses: []protocol.Status{protocol.StatusRejected}}}, t0)
	msgs := []struct {
		topic string
		r     protocol.Reply
		want  bool
	}{
		{"sneakgate/res/fashion/cam-1", okReply("1", "fashion", "cam-1", 1, 1), false},
		{"sneakgate/res/fashion/cam-1", rejected("2", "fashion", "cam-1"), true},
		{"sneakgate/res/vad/mic-1", rejected("3", "vad", "mic-1"), false},
	}
	for _, m := range msgs {
		if got := p.Message(Message{Topic: m.topic, Payload: reply(t, m.r), At: t0}); got != m.want {
			t.Errorf("%s %s: printed %v, want %v", m.r.App, m.r.Status, got, m.want)
		}
	}
	// Malformed payloads pass the status filter, not the app filter (from the topic).
	p.Message(Message{Topic: "sneakgate/res/vad/mic-1", Payload: []byte("{}"), At: t0})
	p.Message(Message{Topic: "sneakgate/res/fashion/cam-9", Payload: []byte(`{"v":2}`), At: t0})
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], " 2 ") || !strings.Contains(lines[1], "cam-9  MALFORMED  bad reply: version 2") {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestJSONPassthrough(t *testing.T) {
	var out, diag strings.Builder
	p := NewPrinter(&out, Options{Location: time.UTC, JSON: true, Diag: &diag}, t0)
	raw := reply(t, okReply("r1", "fashion", "cam-1", 2.66, 97.34))
	p.Message(Message{Payload: raw, At: t0})
	p.Message(Message{Payload: []byte("{\n \"v\": 1,\n \"status\": \"ok\"\n}"), At: t0})
	p.Message(Message{Topic: "t", Payload: []byte("garbage"), At: t0})
	p.Final(at(1000))
	if want := string(raw) + "\n" + `{"v":1,"status":"ok"}` + "\n"; out.String() != want {
		t.Errorf("stdout %q, want %q", out.String(), want)
	}
	if d := diag.String(); !strings.Contains(d, "MALFORMED") || !strings.Contains(d, "-- total 1s: 2 replies") {
		t.Errorf("diagnostics %q", d)
	}
}

// Run prints each message, a summary at each tick (ending at the tick's time)
// and the final summary when ctx ends.
func TestRun(t *testing.T) {
	var out strings.Builder
	p := NewPrinter(&out, Options{Location: time.UTC}, t0)
	msgs, ticks := make(chan Message), make(chan time.Time)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, p, msgs, ticks, 0, func() time.Time { return at(7000) }); close(done) }()
	// Unbuffered channels: each send returns once Run has taken it, and Run
	// handles one at a time, so the output's order is the sends' order.
	msgs <- Message{Payload: reply(t, okReply("r1", "fashion", "cam-1", 2, 8)), At: at(1000)}
	ticks <- at(5000)
	msgs <- Message{Payload: reply(t, okReply("r2", "fashion", "cam-1", 4, 6)), At: at(6000)}
	cancel()
	<-done
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], " r1 ") || !strings.HasPrefix(lines[1], "14:30:05.000  -- last 5s: 1 replies") ||
		!strings.Contains(lines[2], " r2 ") || !strings.HasPrefix(lines[3], "14:30:07.000  -- total 7s: 2 replies, 0.3/s") {
		t.Errorf("output:\n%s", out.String())
	}
}

// Run stops after limit printed replies.
func TestRunLimit(t *testing.T) {
	var out strings.Builder
	p := NewPrinter(&out, Options{Location: time.UTC, Filter: Filter{Devices: []string{"cam-2"}}}, t0)
	msgs := make(chan Message, 4)
	for i, d := range []string{"cam-1", "cam-2", "cam-1", "cam-2"} {
		msgs <- Message{Payload: reply(t, okReply(d, "fashion", d, 1, 1)), At: at(i)}
	}
	Run(context.Background(), p, msgs, nil, 1, func() time.Time { return at(10) })
	if p.Printed() != 1 || len(msgs) != 2 {
		t.Errorf("printed %d, left %d messages; want 1 and 2", p.Printed(), len(msgs))
	}
}

func TestMillis(t *testing.T) {
	for v, want := range map[float64]string{0.4123: "0.412ms", 2.66: "2.66ms", 97.34: "97.3ms", 1234.5: "1234ms", -3.5: "-3.50ms"} {
		if got := millis(v); got != want {
			t.Errorf("millis(%v) = %q, want %q", v, got, want)
		}
	}
}
