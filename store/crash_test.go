package store_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sneakgate/sneakgate/store"
	"github.com/sneakgate/sneakgate/store/storetest"
)

const crashEnv = "SNEAKGATE_STORE_CRASH_PATH"

// TestCrashChild is the process TestCrashRecovery kills. Eight writers put,
// outbox and complete requests with fsync on, print each write once it has
// returned, and the process SIGKILLs itself mid-stream.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("helper process for TestCrashRecovery")
	}
	s, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var next atomic.Int64
	var out sync.Mutex
	report := func(format string, args ...any) {
		out.Lock()
		fmt.Fprintf(os.Stdout, format+"\n", args...) // one write(2), unbuffered
		out.Unlock()
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1))
				if i == 300 {
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
				}
				if _, err := s.Put(entry(i)); err != nil {
					report("error %v", err)
					return
				}
				report("put %d", i)
				switch i % 3 {
				case 0:
					if err := s.Complete(key(i), fmt.Appendf(nil, "r%d", i)); err == nil {
						report("complete %d", i)
					}
				case 1:
					if err := s.Outbox(key(i), fmt.Appendf(nil, "r%d", i), time.Time{}); err == nil {
						report("outbox %d", i)
					}
				}
			}
		})
	}
	wg.Wait()
}

// TestCrashRecovery kills a writing process and checks that everything it was
// told is committed survives: no acknowledgement without a durable commit.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process with fsync")
	}
	path := filepath.Join(t.TempDir(), "journal.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child: %v, want killed by SIGKILL\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr.Bytes())
	}

	put, outboxed, completed := map[int]bool{}, map[int]bool{}, map[int]bool{}
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	for sc.Scan() {
		var verb string
		var i int
		if _, err := fmt.Sscanf(sc.Text(), "%s %d", &verb, &i); err != nil {
			t.Fatalf("child said %q", sc.Text())
		}
		map[string]map[int]bool{"put": put, "outbox": outboxed, "complete": completed}[verb][i] = true
	}
	if len(put) < 100 {
		t.Fatalf("child reported only %d puts before the kill", len(put))
	}

	o := storetest.Options(t)
	o.Now = time.Now
	s := storetest.Open(t, path, o)
	pending, err := s.Pending()
	if err != nil {
		t.Fatal(err)
	}
	ob, err := s.OutboxEntries()
	if err != nil {
		t.Fatal(err)
	}
	inPending, inOutbox := map[store.Key]*store.Entry{}, map[store.Key]store.OutboxEntry{}
	for _, e := range pending {
		inPending[e.Key] = e
	}
	for _, e := range ob {
		inOutbox[e.Key] = e
	}
	lost := 0
	for i := range put {
		k := key(i)
		res, err := s.Put(entry(i))
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case completed[i]:
			if res.Dup != store.DupDone || string(res.Reply) != fmt.Sprintf("r%d", i) {
				t.Errorf("%d was completed: Put says %s %q", i, res.Dup, res.Reply)
			}
		case outboxed[i]:
			if e, ok := inOutbox[k]; !ok || string(e.Reply) != fmt.Sprintf("r%d", i) {
				t.Errorf("%d was put in the outbox: not recovered there", i)
			}
		case inPending[k] != nil:
			want := entry(i)
			want.Seq = inPending[k].Seq
			if !sameEntry(inPending[k], want) {
				t.Errorf("%d recovered as %+v, want %+v", i, inPending[k], want)
			}
		case i%3 == 0 && res.Dup == store.DupDone, i%3 == 1 && inOutbox[k].Reply != nil:
			// Its next write was committed but not yet reported.
		default:
			lost++
			t.Errorf("%d was put (acknowledged) but is lost", i)
		}
	}
	t.Logf("child acknowledged %d puts, %d outboxed, %d completed; recovered %d pending, %d in the outbox, lost %d",
		len(put), len(outboxed), len(completed), len(pending), len(ob), lost)
}
