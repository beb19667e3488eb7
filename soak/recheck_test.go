//go:build soak

package soak

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"testing"

	"github.com/sneakgate/sneakgate/store"
)

// recheckReport is what recheckLost found about the requests a test counted as
// lost: whether the gateway's journal knows them, and whether a reconnection of
// the gateway (a restart) brought their replies after all (then they were held,
// not lost: by the broker, for the gateway's session).
type recheckReport struct {
	Lost           int     `json:"lost"`
	JournalPending int     `json:"journal_pending"`
	JournalDone    int     `json:"journal_done"`
	JournalUnknown int     `json:"journal_unknown"`
	JournalError   string  `json:"journal_error,omitempty"`
	AnsweredAfter  int     `json:"answered_after_restart"`
	WaitedS        float64 `json:"waited_s"`
	BrokerLog      string  `json:"broker_log,omitempty"`
	Journal        string  `json:"journal_copy,omitempty"`
}

// recheckLost runs when requests were lost (SOAK_RECHECK, default 60s; 0: off):
// it writes the broker's log to outDir/{test}-broker.log, SIGKILLs the gateway,
// copies its journal to outDir/{test}-journal.db and looks every lost id up in
// it, then starts the gateway again (a new connection to the broker, which
// resends what it holds for the gateway's session) and waits up to SOAK_RECHECK
// for the lost ids' replies. An id answered then was held, not lost; an id the
// journal knows was received and journaled by the gateway.
func recheckLost(t *testing.T, f *fleet, b *soakBroker, gw *gatewayProc, app string) *recheckReport {
	t.Helper()
	wait := envDur(t, "SOAK_RECHECK", time.Minute, time.Minute)
	lost := lostIDs(f)
	if len(lost) == 0 || wait <= 0 {
		return nil
	}
	r := &recheckReport{Lost: len(lost)}
	r.BrokerLog = filepath.Join(outDir, t.Name()+"-broker.log")
	if err := os.WriteFile(r.BrokerLog, []byte(b.Log()), 0o644); err != nil {
		t.Logf("RECHECK: broker log: %v", err)
		r.BrokerLog = ""
	}
	gw.kill()
	r.Journal = filepath.Join(outDir, t.Name()+"-journal.db")
	if err := copyFile(filepath.Join(filepath.Dir(gw.cfgPath), "sneakgate.db"), r.Journal); err != nil {
		r.JournalError = err.Error()
	} else if s, err := store.Open(r.Journal, store.Options{}); err != nil {
		r.JournalError = err.Error()
	} else {
		for id := range lost {
			res, err := s.Lookup(store.Key{App: app, Device: deviceOf(id), ID: id})
			switch {
			case err != nil:
				r.JournalError = err.Error()
			case res.Dup == store.DupPending:
				r.JournalPending++
			case res.Dup == store.DupDone:
				r.JournalDone++
			default:
				r.JournalUnknown++
			}
		}
		s.Close()
	}
	gw.start()
	t0 := time.Now()
	r.WaitedS = f.waitReplies(wait).Seconds()
	left := lostIDs(f)
	r.AnsweredAfter = len(lost) - len(left)
	t.Logf("RECHECK: of %d lost requests the journal knew %d pending and %d answered, %d not at all (%s); after a restart of the gateway %d got a reply within %s; broker log %s, journal copy %s",
		len(lost), r.JournalPending, r.JournalDone, r.JournalUnknown, r.JournalError, r.AnsweredAfter, time.Since(t0).Round(time.Millisecond), r.BrokerLog, r.Journal)
	return r
}

// lostIDs returns the acknowledged requests of f without a reply.
func lostIDs(f *fleet) map[string]bool {
	lost := map[string]bool{}
	for _, s := range f.snapshot() {
		if s.State == pubAcked && len(s.Replies) == 0 {
			lost[s.ID] = true
		}
	}
	return lost
}

// deviceOf returns the device of a request id ({run}-{device}-{seq}).
func deviceOf(id string) string {
	_, rest, _ := strings.Cut(id, "-")
	if i := strings.LastIndexByte(rest, '-'); i >= 0 {
		return rest[:i]
	}
	return rest
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
