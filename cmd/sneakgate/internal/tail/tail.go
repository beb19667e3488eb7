// Package tail is `sneakgate tail`, the operator's view of the gateway's replies:
// one readable line per reply on the result topics, a summary line every few
// seconds (reply rate, status mix, deadline-met share, total_ms percentiles), or
// the raw replies as JSON lines.
//
// Printer formats; it takes the clock from its callers (Message.At and the times
// passed to Summary and Final), so its output is a function of its input. Run
// feeds a Printer from a stream of messages and a stream of ticks; Subscribe
// makes the stream of messages from an MQTT broker.
package tail

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sneakgate/sneakgate/protocol"
)

// Message is a payload as it arrived on a topic.
type Message struct {
	Topic   string
	Payload []byte
	// At is when it arrived.
	At time.Time
}

// Filter selects the replies to print; an empty list selects every value.
type Filter struct {
	Apps, Devices []string
	Statuses      []protocol.Status
}

// matches reports whether a reply of app, device and status passes f. An empty
// app or device (unknown) passes its list; an empty status (a malformed payload)
// passes the status list.
func (f Filter) matches(app, device string, status protocol.Status) bool {
	in := func(list []string, v string) bool { return v == "" || len(list) == 0 || slices.Contains(list, v) }
	return in(f.Apps, app) && in(f.Devices, device) &&
		(status == "" || len(f.Statuses) == 0 || slices.Contains(f.Statuses, status))
}

// Options configure a Printer.
type Options struct {
	// Prefix is the gateway's topic prefix, to read the app and device of a
	// malformed payload from its topic ({prefix}/res/{app}/{device}).
	Prefix string
	Filter Filter
	// JSON prints each selected reply's payload as it arrived, one per line;
	// malformed payloads and summaries then go to Diag.
	JSON bool
	// Diag receives malformed payloads and summaries with JSON (default: discarded).
	Diag io.Writer
	// Color marks statuses and missed deadlines with ANSI colours.
	Color bool
	// Location is the time zone of printed times (default time.Local).
	Location *time.Location
	// Dropped counts messages lost before they reached the Printer (a full
	// hand-off buffer); summaries report its increase. Optional.
	Dropped *atomic.Int64
}

// Printer formats replies and summaries. It is not safe for concurrent use.
type Printer struct {
	o          Options
	w          io.Writer // replies
	d          io.Writer // summaries and malformed payloads
	interval   window
	total      window
	start      time.Time // of the run
	since      time.Time // of the interval
	dropped    int64     // Dropped when the interval started
	dropped0   int64     // Dropped when the run started
	line       []byte
	replyCount int64
}

// NewPrinter returns a Printer writing to w, whose run and first interval start
// at start.
func NewPrinter(w io.Writer, o Options, start time.Time) *Printer {
	if o.Location == nil {
		o.Location = time.Local
	}
	if o.Prefix == "" {
		o.Prefix = protocol.DefaultPrefix
	}
	p := &Printer{o: o, w: w, d: w, start: start, since: start,
		interval: newWindow(1), total: newWindow(2)}
	if o.JSON {
		p.d = cmp.Or[io.Writer](o.Diag, io.Discard)
	}
	if o.Dropped != nil {
		p.dropped0 = o.Dropped.Load()
		p.dropped = p.dropped0
	}
	return p
}

// Printed returns how many replies the Printer printed.
func (p *Printer) Printed() int64 { return p.replyCount }

// Message prints m if it is a selected reply, or a line about it if it is not a
// reply, and counts it; it reports whether it printed a reply.
func (p *Printer) Message(m Message) bool {
	r, err := protocol.ParseReply(m.Payload)
	if err != nil {
		app, device := topicLevels(p.o.Prefix, m.Topic)
		if !p.o.Filter.matches(app, device, "") {
			return false
		}
		p.interval.malformed++
		p.total.malformed++
		p.malformed(m, err)
		return false
	}
	if !p.o.Filter.matches(r.App, r.Device, r.Status) {
		return false
	}
	p.interval.add(r)
	p.total.add(r)
	p.replyCount++
	if p.o.JSON {
		p.line = append(p.line[:0], m.Payload...)
		if bytes.ContainsAny(p.line, "\r\n") {
			var b bytes.Buffer
			if json.Compact(&b, m.Payload) == nil {
				p.line = append(p.line[:0], b.Bytes()...)
			}
		}
		p.line = append(p.line, '\n')
		p.w.Write(p.line)
		return true
	}
	p.line = p.appendReply(p.line[:0], m.At, r)
	p.w.Write(p.line)
	return true
}

// topicLevels reads app and device from {prefix}/res/{app}/{device}, or returns
// empty strings for another shape.
func topicLevels(prefix, topic string) (app, device string) {
	rest, ok := strings.CutPrefix(topic, prefix+"/res/")
	if !ok {
		return "", ""
	}
	app, device, ok = strings.Cut(rest, "/")
	if !ok || strings.Contains(device, "/") {
		return "", ""
	}
	return app, device
}

// ANSI colours.
const (
	red     = "31"
	green   = "32"
	yellow  = "33"
	magenta = "35"
	boldRed = "1;31"
	dim     = "2"
)

var statusColor = map[protocol.Status]string{
	protocol.StatusOK:       green,
	protocol.StatusLate:     yellow,
	protocol.StatusDegraded: magenta,
	protocol.StatusExpired:  red,
	protocol.StatusRejected: red,
	protocol.StatusError:    boldRed,
}

// cell appends s padded to width (no padding when width is 0), in colour c when
// colours are on (the padding stays outside the colour).
func (p *Printer) cell(b []byte, s string, width int, c string) []byte {
	if p.o.Color && c != "" && s != "" {
		b = append(b, "\x1b["+c+"m"...)
		b = append(b, s...)
		b = append(b, "\x1b[0m"...)
	} else {
		b = append(b, s...)
	}
	for n := len(s); n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, ' ', ' ')
}

const clock = "15:04:05.000"

// appendReply appends r's line:
//
//	time  app/device  id  status  label confidence  model  total  slack  reason: error
func (p *Printer) appendReply(b []byte, at time.Time, r *protocol.Reply) []byte {
	b = p.cell(b, at.In(p.o.Location).Format(clock), 0, dim)
	b = p.cell(b, r.App+"/"+r.Device, 20, "")
	b = p.cell(b, r.ID, 12, "")
	b = p.cell(b, string(r.Status), 8, statusColor[r.Status])
	answer := r.Label
	if answer == "" && r.Class != nil {
		answer = "class " + strconv.Itoa(*r.Class)
	}
	if r.Confidence != nil {
		answer += " " + strconv.FormatFloat(*r.Confidence, 'f', 2, 64)
	}
	b = p.cell(b, answer, 18, "")
	b = p.cell(b, r.Model, 18, "")
	total := ""
	if r.TotalMS != nil {
		total = millis(*r.TotalMS)
	}
	b = p.cell(b, fmt.Sprintf("%9s", total), 0, "")
	slack, slackColor := "", ""
	if r.SlackMS != nil {
		slack = "slack " + signedMillis(*r.SlackMS)
		if *r.SlackMS < 0 || (r.DeadlineMet != nil && !*r.DeadlineMet) {
			slackColor = red
		}
	}
	b = p.cell(b, slack, 16, slackColor)
	if r.Status != protocol.StatusOK {
		why := string(r.Reason)
		if r.Error != "" {
			why = strings.TrimPrefix(why+": "+r.Error, ": ")
		}
		if r.RetryAfterMS != nil {
			why += fmt.Sprintf(" (retry after %dms)", *r.RetryAfterMS)
		}
		b = append(b, why...)
	}
	return append(bytes.TrimRight(b, " "), '\n')
}

// malformed prints a line about a payload that is not a reply.
func (p *Printer) malformed(m Message, err error) {
	const show = 60
	s := m.Payload
	more := ""
	if len(s) > show {
		s, more = s[:show], "..."
	}
	var b []byte
	b = p.cell(b, m.At.In(p.o.Location).Format(clock), 0, dim)
	b = p.cell(b, m.Topic, 0, "")
	b = p.cell(b, "MALFORMED", 0, boldRed)
	b = fmt.Appendf(b, "%v (%d bytes: %q%s)\n", err, len(m.Payload), s, more)
	p.d.Write(b)
}

// Summary prints the summary of the interval that ends at now and starts the next.
func (p *Printer) Summary(now time.Time) {
	p.d.Write(p.appendSummary(nil, now, "last", p.since, &p.interval, &p.dropped))
	p.interval.reset()
	p.since = now
}

// Final prints the summary of the whole run, ending at now.
func (p *Printer) Final(now time.Time) {
	p.d.Write(p.appendSummary(nil, now, "total", p.start, &p.total, &p.dropped0))
}

// appendSummary appends a summary line of w over [since, now]:
//
//	time  -- last 5s: N replies, R/s | ok N (P%) ... | deadline met P% | total_ms p50 X p99 Y | malformed N
func (p *Printer) appendSummary(b []byte, now time.Time, what string, since time.Time, w *window, dropped *int64) []byte {
	d := now.Sub(since)
	b = p.cell(b, now.In(p.o.Location).Format(clock), 0, dim)
	rate := 0.0
	if d > 0 {
		rate = float64(w.n) / d.Seconds()
	}
	b = fmt.Appendf(b, "-- %s %s: %d replies, %.1f/s", what, d.Round(time.Millisecond), w.n, rate)
	if w.n > 0 {
		b = append(b, " |"...)
		for _, s := range statuses {
			if n := w.status[s]; n > 0 {
				b = fmt.Appendf(b, " %s %d (%s)", s, n, percent(n, w.n))
				if s == protocol.StatusDegraded {
					b = w.appendDegraded(b)
				}
			}
		}
	}
	if w.metKnown > 0 {
		b = fmt.Appendf(b, " | deadline met %s", percent(w.met, w.metKnown))
	}
	if len(w.ms) > 0 {
		b = fmt.Appendf(b, " | total_ms p50 %s p99 %s", millis(w.quantile(0.5)), millis(w.quantile(0.99)))
	}
	if w.malformed > 0 {
		b = fmt.Appendf(b, " | malformed %d", w.malformed)
	}
	if p.o.Dropped != nil {
		n := p.o.Dropped.Load()
		if n > *dropped {
			b = fmt.Appendf(b, " | dropped %d (printing too slow)", n-*dropped)
		}
		*dropped = n
	}
	return append(b, '\n')
}

// statuses in the order summaries list them (the documented order).
var statuses = protocol.Statuses()

func percent(n, of int) string {
	return strconv.FormatFloat(100*float64(n)/float64(of), 'f', 1, 64) + "%"
}

// millis formats a duration in milliseconds with three significant digits or
// more: 0.862ms, 2.66ms, 97.3ms, 1234ms.
func millis(ms float64) string {
	prec := 0
	switch a := math.Abs(ms); {
	case a < 1:
		prec = 3
	case a < 10:
		prec = 2
	case a < 100:
		prec = 1
	}
	return strconv.FormatFloat(ms, 'f', prec, 64) + "ms"
}

func signedMillis(ms float64) string {
	if ms >= 0 {
		return "+" + millis(ms)
	}
	return millis(ms)
}

// reservoir is the most total_ms values a window keeps for its percentiles;
// beyond it they are a uniform sample of the window's values.
const reservoir = 1 << 16

// window accumulates the replies of an interval or of the whole run.
type window struct {
	n, malformed  int
	status        map[protocol.Status]int
	degraded      map[protocol.Reason]int // degraded replies by reason
	metKnown, met int
	ms            []float64
	seen          int // total_ms values offered to ms
	rng           *rand.Rand
	sorted        bool
}

func newWindow(seed uint64) window {
	return window{status: map[protocol.Status]int{}, degraded: map[protocol.Reason]int{}, rng: rand.New(rand.NewPCG(seed, 0))}
}

func (w *window) add(r *protocol.Reply) {
	w.n++
	w.status[r.Status]++
	if r.Status == protocol.StatusDegraded {
		w.degraded[r.Reason]++
	}
	if r.DeadlineMet != nil {
		w.metKnown++
		if *r.DeadlineMet {
			w.met++
		}
	}
	if r.TotalMS == nil {
		return
	}
	w.seen++
	w.sorted = false
	if len(w.ms) < reservoir {
		w.ms = append(w.ms, *r.TotalMS)
	} else if i := w.rng.IntN(w.seen); i < reservoir {
		w.ms[i] = *r.TotalMS
	}
}

// quantile returns the nearest-rank q-quantile of the kept total_ms values.
func (w *window) quantile(q float64) float64 {
	if !w.sorted {
		slices.Sort(w.ms)
		w.sorted = true
	}
	i := int(math.Ceil(q*float64(len(w.ms)))) - 1
	return w.ms[max(0, min(i, len(w.ms)-1))]
}

// appendDegraded appends the degraded replies' reasons, most frequent first:
// answers from the estimate because it was worth more (estimate_worth_more)
// read differently from overload (overload_shed) or late ones.
func (w *window) appendDegraded(b []byte) []byte {
	reasons := make([]protocol.Reason, 0, len(w.degraded))
	for r := range w.degraded {
		reasons = append(reasons, r)
	}
	slices.SortFunc(reasons, func(x, y protocol.Reason) int {
		if c := cmp.Compare(w.degraded[y], w.degraded[x]); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	})
	b = append(b, " ["...)
	for i, r := range reasons {
		if i > 0 {
			b = append(b, ", "...)
		}
		name := string(r)
		if name == "" {
			name = "no reason"
		}
		b = fmt.Appendf(b, "%s %d", name, w.degraded[r])
	}
	return append(b, ']')
}

func (w *window) reset() {
	clear(w.status)
	clear(w.degraded)
	w.n, w.malformed, w.metKnown, w.met, w.seen = 0, 0, 0, 0, 0
	w.ms = w.ms[:0]
}

// View is what Run drives: the replies' Printer or the members' view.
type View interface {
	// Message handles one message and reports whether it printed one of the
	// things counted against Run's limit.
	Message(m Message) bool
	// Printed is how many it printed; Summary and Final print the interval's
	// and the whole run's summary.
	Printed() int64
	Summary(now time.Time)
	Final(now time.Time)
}

// Run prints the messages of msgs through p until ctx ends, msgs is closed or
// limit replies (0: no limit) have been printed, a summary at every tick (nil:
// none), then the final summary at now(). With ticks, each interval's end is
// the tick's time.
func Run(ctx context.Context, p View, msgs <-chan Message, ticks <-chan time.Time, limit int64, now func() time.Time) {
	defer func() { p.Final(now()) }()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			if p.Message(m) && limit > 0 && p.Printed() >= limit {
				return
			}
		case t := <-ticks:
			p.Summary(t)
		}
	}
}
