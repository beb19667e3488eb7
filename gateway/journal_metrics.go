package gateway

import (
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sneakgate/sneakgate/store"
)

// registerJournalMetrics registers the journal's metrics on reg: a counter of
// damaged journals recovered at start-up (1 when recovered is set: this start
// moved the damaged file aside and salvaged it; the error log says what was
// lost), and gauges read from s at each scrape: the file's size on disk, the
// live data that store.max_bytes caps, the pending, outbox and remembered
// answered entries, and whether the file can grow (no space).
func registerJournalMetrics(reg prometheus.Registerer, s *store.Store, recovered bool) {
	recoveries := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sneakgate_journal_recoveries_total",
		Help: "Damaged journals moved aside and salvaged into a new journal at start-up (the error log names the damaged copy and what was lost)."})
	if recovered {
		recoveries.Inc()
	}
	gauge := func(name, help string, f func(store.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(s.Stats()) })
	}
	reg.MustRegister(recoveries,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sneakgate_journal_bytes",
			Help: "Size of the journal file on disk. bbolt never shrinks it; start-up compacts a file that is mostly free space."},
			func() float64 {
				if fi, err := os.Stat(s.Path()); err == nil {
					return float64(fi.Size())
				}
				return float64(s.Stats().FileSize)
			}),
		gauge("sneakgate_journal_used_bytes", "Live data in the journal (pages in use); store.max_bytes caps it.",
			func(st store.Stats) float64 { return float64(st.UsedBytes) }),
		gauge("sneakgate_journal_pending", "Requests journaled without a reply yet.",
			func(st store.Stats) float64 { return float64(st.Pending) }),
		gauge("sneakgate_journal_outbox", "Replies in the journal's outbox (decided, not yet acknowledged by the broker).",
			func(st store.Stats) float64 { return float64(st.Outbox) }),
		// The same count under its older name, which the stats topic reports.
		gauge("sneakgate_outbox_length", "Replies waiting durably for the broker's acknowledgement (the journal's outbox, answers in flight included).",
			func(st store.Stats) float64 { return float64(st.Outbox) }),
		gauge("sneakgate_journal_no_space", "1 while the journal file cannot grow (disk full, quota or file size limit): new requests are refused (overload) until a write succeeds again; 0 otherwise.",
			func(st store.Stats) float64 {
				if st.NoSpaceSince.IsZero() {
					return 0
				}
				return 1
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sneakgate_journal_no_space_errors_total",
			Help: "Journal commits that failed because the file could not grow (disk full, quota or file size limit); at most about one a second while the disk stays full."},
			func() float64 { return float64(s.Stats().NoSpaceErrors) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sneakgate_journal_corrupt_records_total",
			Help: "Journal records found corrupt (failing their checksum or decoding) while serving, each counted once per start: a pending request or an outbox reply that cannot be read stays unanswered until the next start, whose verification salvages the journal (docs/reliability.md, \"Journal damage\"); GC's drops of corrupt records count too."},
			func() float64 { return float64(s.Stats().Corrupt) }),
		gauge("sneakgate_journal_done", "Answered request keys remembered to answer redelivered duplicates (for store.retention).",
			func(st store.Stats) float64 { return float64(st.Done) }),
	)
}
