package devices

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/protocol"
)

// near says whether d is within 2 µs of want: total_ms and slack_ms are each
// rounded to the microsecond, so their sum may be 1 µs off the budget.
func near(d, want time.Duration) bool {
	return d >= want-2*time.Microsecond && d <= want+2*time.Microsecond
}

// The gateway serves the application with a default deadline of 1 s
// (apps[].default_deadline: 1s; the manifest says 500 ms). devsim without
// -deadline sends no deadline, so every request's budget is the gateway's 1 s.
// Every reply comes after about 700 ms, deadline_met true. devsim judged the
// device's deadline and discounted utility against the manifest's 500 ms: the
// report said no reply reached the device within its budget and valued every
// answer as late, while the gateway (and deadline_met in the same report and
// trace) said every one was on time. It judges each reply against the budget
// the gateway applied, total_ms + slack_ms.
func TestDefaultDeadlineIsTheGatewaysNotTheManifests(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	gatewayDefault := map[string]protocol.AppSpec{"toy": {InputSize: 4, DefaultDeadline: time.Second}}
	resp := startResponder(t, url, gatewayDefault, func(in []float32) int { return int(in[0]) })
	resp.delay = 700 * time.Millisecond
	var out, trace bytes.Buffer
	rep, err := Simulate(context.Background(), SimConfig{
		Broker: url, AppManifest: testApp(t), Devices: 2, Rate: 100, Count: 6, Workload: "only-b",
		Drain: 5 * time.Second, Out: &out, Progress: &out, Trace: &trace,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", out.String())
	if rep.Replies != 6 || rep.DeadlineMet != 6 || rep.Correct != 6 {
		t.Fatalf("replies %d, deadline_met %d, correct %d; want 6 each", rep.Replies, rep.DeadlineMet, rep.Correct)
	}
	if rep.DeviceDeadlineMet != 6 {
		t.Errorf("device deadline met %d of 6: replies after ~700 ms of a 1 s budget judged against the manifest's 500 ms", rep.DeviceDeadlineMet)
	}
	if rep.Utility < 0.5-1e-9 {
		t.Errorf("utility %.4f, want 0.5 (every answer right, W[b][b] = 0.5, and on time by the gateway's deadline_met)", rep.Utility)
	}
	if !near(rep.BudgetMin, time.Second) || !near(rep.BudgetMax, time.Second) {
		t.Errorf("replies judged against %v to %v, want the gateway's 1s", rep.BudgetMin, rep.BudgetMax)
	}
	if !strings.Contains(out.String(), "app default (replies judged against") {
		t.Errorf("report does not say what the replies were judged against")
	}
	checkTrace(t, &trace, rep, nil)
}

// A reply without slack_ms (an older gateway) does not say the budget the
// gateway applied: it is judged against the manifest's default, as before.
func TestRepliesWithoutSlackAreJudgedByTheManifest(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	gatewayDefault := map[string]protocol.AppSpec{"toy": {InputSize: 4, DefaultDeadline: time.Second}}
	resp := startResponder(t, url, gatewayDefault, func(in []float32) int { return int(in[0]) })
	resp.delay, resp.noSlack = 700*time.Millisecond, true
	var trace bytes.Buffer
	rep, err := Simulate(context.Background(), SimConfig{
		Broker: url, AppManifest: testApp(t), Devices: 2, Rate: 100, Count: 6, Workload: "only-b",
		Drain: 5 * time.Second, Quiet: true, Trace: &trace,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Replies != 6 || rep.DeadlineMet != 6 || rep.Correct != 6 {
		t.Fatalf("replies %d, deadline_met %d, correct %d; want 6 each", rep.Replies, rep.DeadlineMet, rep.Correct)
	}
	if rep.DeviceDeadlineMet != 0 || !(rep.Utility < 0.5) {
		t.Errorf("device deadline met %d, utility %.4f; want 0 and discounted below 0.5 (700 ms against the manifest's 500 ms)", rep.DeviceDeadlineMet, rep.Utility)
	}
	if rep.BudgetMin != 500*time.Millisecond || rep.BudgetMax != 500*time.Millisecond {
		t.Errorf("replies judged against %v to %v, want the manifest's 500ms", rep.BudgetMin, rep.BudgetMax)
	}
	checkTrace(t, &trace, rep, nil)
}

// The default drain time was the manifest's default plus 5 s (here 5.1 s), so
// with a gateway default of 6 s the replies that came after 5.5 s, within
// their budget, were counted unanswered. The drain time follows the largest
// budget a reply has shown, here the first reply's, which comes 2 s into the
// run: after the sending, while draining.
func TestDrainWaitsForTheGatewaysLongerDefault(t *testing.T) {
	url := "tcp://" + mqtttest.StartMosquitto(t)
	gatewayDefault := map[string]protocol.AppSpec{"toy": {InputSize: 4, DefaultDeadline: 6 * time.Second}}
	resp := startResponder(t, url, gatewayDefault, func(in []float32) int { return int(in[0]) })
	resp.delayOf = func(id string) time.Duration {
		if strings.HasSuffix(id, "-0") {
			return 2 * time.Second
		}
		return 5500 * time.Millisecond
	}
	app := testApp(t)
	app.DefaultDeadlineMS = 100
	var trace bytes.Buffer
	rep, err := Simulate(context.Background(), SimConfig{
		Broker: url, AppManifest: app, Devices: 2, Rate: 100, Count: 3, Workload: "only-b",
		Quiet: true, Trace: &trace,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Replies != 3 || rep.Unanswered != 0 {
		t.Fatalf("replies %d, unanswered %d after %v; want 3 and 0", rep.Replies, rep.Unanswered, rep.Elapsed)
	}
	if rep.DeadlineMet != 3 || rep.DeviceDeadlineMet != 3 || rep.Utility < 0.5-1e-9 {
		t.Errorf("deadline met %d, device deadline met %d, utility %.4f; want 3, 3 and 0.5", rep.DeadlineMet, rep.DeviceDeadlineMet, rep.Utility)
	}
	if rep.Elapsed > 8*time.Second {
		t.Errorf("ran %v: the drain should end when the last reply comes, about 5.5 s in", rep.Elapsed)
	}
	checkTrace(t, &trace, rep, nil)
}
