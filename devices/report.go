package devices

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sneakgate/sneakgate/protocol"
)

// Report is the outcome of a simulation. Ratios are 0 when their denominator is 0.
type Report struct {
	App      string        `json:"app"`
	Workload string        `json:"workload,omitempty"`
	Devices  int           `json:"devices"`
	Rate     float64       `json:"rate"`
	Arrivals string        `json:"arrivals"`
	Deadline time.Duration `json:"deadline_ns"`
	// BudgetMin and BudgetMax are the smallest and largest budgets the replies
	// were judged against (DeviceDeadlineMet, Utility): Deadline, or without it
	// each reply's total_ms + slack_ms, the budget the gateway applied (the
	// manifest's default_deadline_ms for a reply without them; see
	// SimConfig.Deadline). 0 without replies.
	BudgetMin time.Duration `json:"budget_min_ns"`
	BudgetMax time.Duration `json:"budget_max_ns"`
	// Sending is the time spent sending; Elapsed includes the wait for replies.
	Sending time.Duration `json:"sending_ns"`
	Elapsed time.Duration `json:"elapsed_ns"`

	// Sent counts requests published (attempted); PublishErrors those whose publish
	// failed; Replies the distinct requests answered (a reply the client could
	// use, whatever its status); Unusable those whose reply came but could not
	// be used, with none usable (malformed, or dropped by the client); Unanswered
	// those nothing came back for by the end of the run; Duplicates extra
	// replies to an already answered id. Sent = Replies + Unusable + Unanswered.
	Sent          int `json:"sent"`
	PublishErrors int `json:"publish_errors"`
	Replies       int `json:"replies"`
	Unusable      int `json:"unusable"`
	Unanswered    int `json:"unanswered"`
	Duplicates    int `json:"duplicates"`
	// Malformed, Dropped and Unmatched are the devices' clients' counts
	// (Client.Stats) at the end of the run: messages on their reply topics
	// that were not valid v1 replies (a status or version this build does not
	// know, bad JSON), replies dropped because a client's Replies buffer was
	// full, and replies with nowhere to go (never, in Simulate: its clients
	// have a buffer). They count messages, not requests: copies of one reply
	// and messages of other runs count too.
	Malformed int `json:"malformed"`
	Dropped   int `json:"dropped"`
	Unmatched int `json:"unmatched"`

	ByStatus map[protocol.Status]int `json:"by_status"`
	ByReason map[protocol.Reason]int `json:"by_reason,omitempty"`
	ByModel  map[string]int          `json:"by_model,omitempty"`

	// Answered counts replies carrying a class (ok, late, degraded); Correct those
	// whose class is the sample's true label.
	Answered int `json:"answered"`
	Correct  int `json:"correct"`
	// AccuracyAnswered is Correct/Answered; AccuracyAll is Correct/Sent (a request
	// without an answer counts as wrong).
	AccuracyAnswered float64 `json:"accuracy_answered"`
	AccuracyAll      float64 `json:"accuracy_all"`
	// DeadlineMet counts replies with deadline_met true (the gateway's view);
	// DeviceDeadlineMet answered replies that reached the device within the budget
	// (its round trip within the budget it was judged against; see BudgetMin).
	// Both ratios are of Sent.
	DeadlineMet            int     `json:"deadline_met"`
	DeadlineMetRatio       float64 `json:"deadline_met_ratio"`
	DeviceDeadlineMet      int     `json:"device_deadline_met"`
	DeviceDeadlineMetRatio float64 `json:"device_deadline_met_ratio"`
	// Goodput is the share of Sent answered correctly and within the deadline
	// (gateway's view): accuracy that arrived in time.
	Goodput float64 `json:"goodput"`
	// Utility is the mean, over Sent, of the application's utility W[true][class]
	// of each answer, discounted for lateness as the scheduler discounts it (from
	// the reply's total_ms against the budget it is judged against, toward the
	// value of no answer);
	// a request without a model answer (expired, rejected, error, or no reply at
	// all) counts the application's no_answer_utility for its true class (0 when
	// the manifest sets none), as in the simulator.
	// It is the quantity the data-aware scheduler maximises.
	Utility float64 `json:"utility"`

	// Latency is the device's round trip (publish to reply) over all replies;
	// GatewayTotal the replies' total_ms, where given.
	Latency      Percentiles `json:"latency"`
	GatewayTotal Percentiles `json:"gateway_total"`
}

// Percentiles summarises a latency distribution.
type Percentiles struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50_ns"`
	P90 time.Duration `json:"p90_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

// LatencyPercentiles summarises d by nearest rank (p50, p90, p99, max); it sorts d
// in place.
func LatencyPercentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	slices.Sort(d)
	q := func(p float64) time.Duration {
		// nearest rank
		i := int(p*float64(len(d))+0.999999) - 1
		return d[min(max(i, 0), len(d)-1)]
	}
	return Percentiles{N: len(d), P50: q(0.50), P90: q(0.90), P99: q(0.99), Max: d[len(d)-1]}
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func (r *Report) finish() {
	r.AccuracyAnswered = ratio(r.Correct, r.Answered)
	r.AccuracyAll = ratio(r.Correct, r.Sent)
	r.DeadlineMetRatio = ratio(r.DeadlineMet, r.Sent)
	r.DeviceDeadlineMetRatio = ratio(r.DeviceDeadlineMet, r.Sent)
}

var statusOrder = protocol.Statuses()

// Print writes the report for people.
func (r *Report) Print(w io.Writer) {
	dl := "app default"
	switch {
	case r.Deadline > 0:
		dl = r.Deadline.String()
	case r.BudgetMax > 0 && r.BudgetMin == r.BudgetMax:
		dl = fmt.Sprintf("app default (replies judged against %s)", r.BudgetMax)
	case r.BudgetMax > 0:
		dl = fmt.Sprintf("app default (replies judged against %s to %s)", r.BudgetMin, r.BudgetMax)
	}
	fmt.Fprintf(w, "app %s", r.App)
	if r.Workload != "" {
		fmt.Fprintf(w, ", workload %s", r.Workload)
	}
	fmt.Fprintf(w, ", %d devices, %.1f req/s %s, deadline %s, ran %s\n", r.Devices, r.Rate, r.Arrivals, dl, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  sent          %d (%.1f req/s achieved), publish errors %d\n", r.Sent, float64(r.Sent)/max(r.Sending.Seconds(), 1e-9), r.PublishErrors)
	fmt.Fprintf(w, "  replies       %d, unusable %d, unanswered %d, duplicate replies %d; malformed %d, dropped %d",
		r.Replies, r.Unusable, r.Unanswered, r.Duplicates, r.Malformed, r.Dropped)
	if r.Unmatched > 0 {
		fmt.Fprintf(w, ", unmatched %d", r.Unmatched)
	}
	fmt.Fprintln(w)
	var parts []string
	for _, s := range statusOrder {
		parts = append(parts, fmt.Sprintf("%s %d", s, r.ByStatus[s]))
	}
	fmt.Fprintf(w, "  status        %s\n", strings.Join(parts, "  "))
	if len(r.ByReason) > 0 {
		fmt.Fprintf(w, "  reasons       %s\n", JoinCounts(r.ByReason))
	}
	fmt.Fprintf(w, "  accuracy      %.4f of answered (%d/%d), %.4f of all sent\n", r.AccuracyAnswered, r.Correct, r.Answered, r.AccuracyAll)
	fmt.Fprintf(w, "  deadline met  %.4f (gateway: deadline_met), %.4f (device: reply within budget)\n", r.DeadlineMetRatio, r.DeviceDeadlineMetRatio)
	fmt.Fprintf(w, "  goodput       %.4f (correct and on time, of all sent)\n", r.Goodput)
	fmt.Fprintf(w, "  utility       %.4f (mean over all sent, the app's utility matrix, lateness-discounted)\n", r.Utility)
	fmt.Fprintf(w, "  round trip    %s\n", r.Latency)
	if r.GatewayTotal.N > 0 {
		fmt.Fprintf(w, "  gateway total %s\n", r.GatewayTotal)
	}
	if len(r.ByModel) > 0 {
		fmt.Fprintf(w, "  models        %s\n", JoinCounts(r.ByModel))
	}
}

func (p Percentiles) String() string {
	if p.N == 0 {
		return "n/a"
	}
	f := func(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/1e6) }
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s  (n=%d)", f(p.P50), f(p.P90), f(p.P99), f(p.Max), p.N)
}

// JoinCounts lists m's entries as "key count", largest count first, separated by
// two spaces.
func JoinCounts[K ~string](m map[K]int) string {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, "  ")
}
