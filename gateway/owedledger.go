package gateway

import (
	"time"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// owedLedger remembers the reply the gateway handed to the broker for each
// request it answers without journaling it (an owed reply: egress.Owe) while the
// request is not acknowledged, so that a copy of the request the broker delivers
// again is answered with the same bytes instead of anew (Gateway.repeatOwed).
// Such a copy comes when the connection is lost between the hand-over and the
// reply's PUBACK: the reply may have reached the device, and the request, never
// acknowledged, comes back with the session; answered anew, it would often get
// a different answer (an answer from the estimate first, then expired because
// the outage took its budget).
//
// An answer from the estimate (degraded) is kept after its request is
// acknowledged as well: a device whose publish the broker never acknowledged (a
// broker that stopped) sends the request again after reconnecting, and the
// broker passes that on as a new message; it gets the same answer, as a
// journaled request's copies get its stored reply. A refusal is not: a retry
// after its retry_after_ms is a new request. An expired reply's bytes depend
// only on the request, so any copy gets them anyway.
//
// An entry is forgotten when its request is acknowledged on the connection it
// arrived on (the broker had the reply; but for answers from the estimate),
// when its reply is dropped before it was handed over (it never left the
// gateway: the copy is answered anew, which contradicts nothing; not so a
// repeat's, whose bytes went out before or wait ahead of it), when a later
// owed reply to the same key replaces it, and when it is older than maxAge or
// more than max entries are held (oldest first). The ledger is in
// memory: after a restart copies are answered anew (docs/protocol.md,
// "Delivery"), but for answers from the estimate the journal recorded
// (admission.journal_estimate_answers), which it never holds: the journal
// gives their copies the same bytes. Not safe for concurrent use: egress holds
// owedMu around every call.
type owedLedger struct {
	max    int
	maxAge time.Duration
	m      map[store.Key]owedRecord
	// fifo holds every entry put, oldest first, including ones since
	// forgotten or replaced (their gen no longer matches m); expire drops
	// those at its front and compact rebuilds it when they are most of it.
	fifo []owedRef
	gen  uint64
}

// owedRecord is a remembered reply.
type owedRecord struct {
	topic   string // where it went
	payload []byte
	status  protocol.Status
	gen     uint64
}

// owedRef is a fifo entry.
type owedRef struct {
	key store.Key
	gen uint64
	at  time.Time
}

func newOwedLedger(max int, maxAge time.Duration) *owedLedger {
	return &owedLedger{max: max, maxAge: maxAge, m: map[store.Key]owedRecord{}}
}

// put remembers payload, published on topic, as the reply to key, replacing any
// earlier one, and returns its generation (never 0), which forget takes.
func (l *owedLedger) put(key store.Key, topic string, payload []byte, status protocol.Status, now time.Time) uint64 {
	l.gen++
	l.m[key] = owedRecord{topic: topic, payload: payload, status: status, gen: l.gen}
	l.fifo = append(l.fifo, owedRef{key: key, gen: l.gen, at: now})
	l.expire(now)
	return l.gen
}

// get returns the reply remembered for key.
func (l *owedLedger) get(key store.Key, now time.Time) (owedRecord, bool) {
	l.expire(now)
	r, ok := l.m[key]
	return r, ok
}

// forget drops key's entry if it is still generation gen.
func (l *owedLedger) forget(key store.Key, gen uint64) {
	if r, ok := l.m[key]; ok && r.gen == gen {
		delete(l.m, key)
	}
	if len(l.fifo) > 2*len(l.m)+1024 {
		l.compact()
	}
}

// len is the number of replies remembered.
func (l *owedLedger) len() int { return len(l.m) }

// current reports whether ref is key's entry now.
func (l *owedLedger) current(ref owedRef) bool {
	r, ok := l.m[ref.key]
	return ok && r.gen == ref.gen
}

// expire drops entries from the front of fifo that were forgotten or replaced,
// are older than maxAge, or exceed max.
func (l *owedLedger) expire(now time.Time) {
	for len(l.fifo) > 0 {
		ref := l.fifo[0]
		switch {
		case !l.current(ref):
		case len(l.m) > l.max, now.Sub(ref.at) > l.maxAge:
			delete(l.m, ref.key)
		default:
			return
		}
		l.fifo[0] = owedRef{}
		l.fifo = l.fifo[1:]
	}
}

// compact rebuilds fifo without the entries that were forgotten or replaced.
func (l *owedLedger) compact() {
	kept := make([]owedRef, 0, len(l.m))
	for _, ref := range l.fifo {
		if l.current(ref) {
			kept = append(kept, ref)
		}
	}
	l.fifo = kept
}
