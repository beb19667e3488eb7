package gateway

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/protocol"
	"github.com/sneakgate/sneakgate/store"
)

// fakeToken is an MQTT token the test completes by hand.
type fakeToken struct {
	done chan struct{}
	err  error
}

func (t *fakeToken) Wait() bool { <-t.done; return true }
func (t *fakeToken) WaitTimeout(d time.Duration) bool {
	select {
	case <-t.done:
		return true
	case <-time.After(d):
		return false
	}
}
func (t *fakeToken) Done() <-chan struct{} { return t.done }
func (t *fakeToken) Error() error          { return t.err }

// fakeClient records publishes; each returns the next token the test queued.
type fakeClient struct {
	mqtt.Client
	mu        sync.Mutex
	published []string
	tokens    []*fakeToken
}

func (c *fakeClient) IsConnectionOpen() bool { return true }
func (c *fakeClient) Publish(topic string, _ byte, _ bool, payload any) mqtt.Token {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.published = append(c.published, string(payload.([]byte)))
	t := c.tokens[0]
	c.tokens = c.tokens[1:]
	return t
}

// fakeJournal records completions and keeps an outbox.
type fakeJournal struct {
	mu        sync.Mutex
	completed []store.Key
	outbox    map[store.Key][]byte
}

func (j *fakeJournal) Complete(k store.Key, _ []byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.completed = append(j.completed, k)
	delete(j.outbox, k)
	return nil
}
func (j *fakeJournal) Outbox(k store.Key, r []byte, _ time.Time) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.outbox[k] = r
	return nil
}
func (j *fakeJournal) OutboxEntries() ([]store.OutboxEntry, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []store.OutboxEntry
	for k, r := range j.outbox {
		out = append(out, store.OutboxEntry{Entry: store.Entry{Key: k, ReplyTo: "t"}, Reply: r})
	}
	return out, nil
}

// A reply whose PUBACK is slower than the publish timeout goes to the outbox, but
// the flusher does not publish it a second time while the client still holds the
// first copy; when the late PUBACK comes, the request is completed.
func TestSlowAckIsNotPublishedTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := &fakeToken{done: make(chan struct{})}
		c := &fakeClient{tokens: []*fakeToken{slow}}
		j := &fakeJournal{outbox: map[store.Key][]byte{}}
		e := newEgress(c, j, time.Second, 0, zerolog.Nop(), newMetrics(nil))
		k := store.Key{App: "a", Device: "d", ID: "1"}
		e.Send("t", &protocol.Reply{V: 1, ID: "1", App: "a", Device: "d", Status: protocol.StatusOK}, &k, time.Now())
		time.Sleep(2 * time.Second) // past the publish timeout
		synctest.Wait()
		if len(j.outbox) != 1 || !e.isLate(k) {
			t.Fatalf("outbox %v, late %v", j.outbox, e.isLate(k))
		}
		e.flush(t.Context())
		if len(c.published) != 1 {
			t.Fatalf("published %d times while the first copy was pending", len(c.published))
		}
		close(slow.done) // the PUBACK arrives after all
		synctest.Wait()
		if len(j.completed) != 1 || len(j.outbox) != 0 || e.isLate(k) {
			t.Errorf("completed %v, outbox %v", j.completed, j.outbox)
		}
		e.Close()
	})
}
