package gateway

import (
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sneakgate/sneakgate/store"
)

func TestJournalMetrics(t *testing.T) {
	s, err := store.Open(filepath.Join(t.TempDir(), "j.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, id := range []string{"a", "b", "c"} {
		k := store.Key{App: "app", Device: "dev", ID: id}
		if _, err := s.Put(&store.Entry{Key: k}); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := s.Complete(k, []byte("r")); err != nil {
				t.Fatal(err)
			}
		}
	}
	reg := prometheus.NewRegistry()
	registerJournalMetrics(reg, s, true)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{"sneakgate_journal_corrupt_records_total": -1} // -1: not registered
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			got[mf.GetName()] = c.GetValue()
		} else {
			got[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	for name, want := range map[string]float64{
		"sneakgate_journal_recoveries_total": 1, "sneakgate_journal_pending": 2,
		"sneakgate_journal_outbox": 0, "sneakgate_journal_done": 1, "sneakgate_journal_corrupt_records_total": 0,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	if got["sneakgate_journal_bytes"] <= 0 || got["sneakgate_journal_used_bytes"] <= 0 ||
		got["sneakgate_journal_used_bytes"] > got["sneakgate_journal_bytes"] {
		t.Errorf("journal bytes %v, used %v: want 0 < used <= bytes", got["sneakgate_journal_bytes"], got["sneakgate_journal_used_bytes"])
	}
}
