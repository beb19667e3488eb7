package store_test

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sneakgate/sneakgate/store"
)

// The gateway's use of the journal: put before the ack, complete after the
// reply is handed over, outbox when it cannot be, recover after a restart.
func Example() {
	dir, _ := os.MkdirTemp("", "journal")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "journal.db")

	s, err := store.Open(path, store.Options{Retention: time.Hour})
	if err != nil {
		fmt.Println(err)
		return
	}
	deadline := time.Now().Add(time.Second)
	for _, id := range []string{"r1", "r2", "r3"} {
		res, err := s.Put(&store.Entry{
			Key:      store.Key{App: "cls", Device: "cam-1", ID: id},
			Deadline: deadline,
			ReplyTo:  "sg/reply/cls/cam-1",
			Input:    []float32{0.1, 0.2},
		})
		if err != nil {
			fmt.Println("do not ack:", err)
			continue
		}
		fmt.Println(id, res.Dup) // ack now
	}
	s.Complete(store.Key{App: "cls", Device: "cam-1", ID: "r1"}, []byte(`{"status":"ok"}`))
	s.Outbox(store.Key{App: "cls", Device: "cam-1", ID: "r2"}, []byte(`{"status":"ok"}`), deadline)
	s.Close() // or a crash

	s, _ = store.Open(path, store.Options{Retention: time.Hour})
	defer s.Close()
	pending, _ := s.Pending()
	for _, e := range pending {
		fmt.Println("re-run", e.ID)
	}
	outbox, _ := s.OutboxEntries()
	for _, e := range outbox {
		fmt.Println("flush", e.ID, "to", e.ReplyTo)
	}
	res, _ := s.Put(&store.Entry{Key: store.Key{App: "cls", Device: "cam-1", ID: "r1"}})
	fmt.Printf("redelivered r1: %s, publish %s again\n", res.Dup, res.Reply)
	// Output:
	// r1 new
	// r2 new
	// r3 new
	// re-run r3
	// flush r2 to sg/reply/cls/cam-1
	// redelivered r1: dup-done, publish {"status":"ok"} again
}
