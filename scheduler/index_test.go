package scheduler

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"
)

// fullDecider is a policy that can also decide from the whole queue, the way
// it did before the index (index.go).
type fullDecider interface {
	Policy
	decideFull(s *Snapshot) Decision
}

// indexApps builds two applications (the second with a variant too large for
// a small memory budget), optionally as a reloaded version (new pointers).
func indexApps() []*App {
	a, b := testApp(), testApp()
	b.Name = "other"
	for _, v := range b.Variants {
		v.ID.App = "other"
	}
	b.Variants[1].MemBytes = 10_000
	return []*App{a, b}
}

// TestIndexedDecisionsMatchFull drives each indexed policy through randomised
// sequences of decisions the way the gateway's loop does (new arrivals at the
// tail, the decision applied), with the irregular cases mixed in (a decision
// not applied, requests removed by the caller, a reload that re-prepares the
// queue, a fresh queue reusing Seqs, a batched request left in the queue), and
// checks that every
// decision equals the full recomputation's from the same snapshot.
func TestIndexedDecisionsMatchFull(t *testing.T) {
	for _, name := range []string{"edf", "fifo", "fixed-batch"} {
		for seed := range uint64(12) {
			t.Run(fmt.Sprintf("%s/seed=%d", name, seed), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, 99))
				o := Options{MaxBatch: 1 + rng.IntN(8), MaxQueueDelay: ms(rng.Float64() * 3)}
				p := mustPolicy(t, name, o).(fullDecider)
				ref := mustPolicy(t, name, o).(fullDecider)
				apps := indexApps()
				appMap := func() map[string]*App { return map[string]*App{apps[0].Name: apps[0], apps[1].Name: apps[1]} }
				cur := appMap()
				resident := map[VariantID]time.Time{}
				var mem int64
				if rng.IntN(2) == 0 {
					mem = 500 // the other app's big variant never fits
				}
				now := t0
				var q []*Request
				seq := uint64(rng.IntN(3))
				arrive := func(k int) {
					for range k {
						a := apps[0]
						if rng.IntN(3) == 0 {
							a = apps[1]
						}
						var pr []float64
						if rng.IntN(4) > 0 {
							x := rng.Float64()
							pr = []float64{1 - x, x}
						}
						arr := now.Add(-ms(rng.Float64() * 5))
						q = append(q, req(a, seq, arr, ms(0.5+rng.Float64()*30), pr))
						seq += 1 + uint64(rng.IntN(2))
					}
				}
				arrive(rng.IntN(40))
				batches, verdicts := 0, 0
				for step := range 300 {
					s := &Snapshot{Now: now, Queue: q, Apps: cur,
						Engine: Engine{Resident: resident, CountBudget: 2, MemBudget: mem}}
					want := ref.decideFull(s)
					got := p.Decide(s)
					if !reflect.DeepEqual(got, want) {
						t.Fatalf("step %d, %d queued: indexed decision\n%s\nfull recomputation\n%s", step, len(q), describe(got), describe(want))
					}
					verdicts += len(got.Verdicts)
					if got.Batch != nil {
						batches++
					}
					checkHeld(t, fmt.Sprintf("step %d", step), indexOf(p))
					switch x := rng.IntN(40); {
					case x == 0: // not applied: the same queue again
					case x == 1: // the caller drops some requests itself
						q = slices.DeleteFunc(q, func(*Request) bool { return rng.IntN(4) == 0 })
					case x == 2: // a reload: new application versions, the queue re-prepared
						apps = indexApps()
						cur = appMap()
						for i, r := range q {
							q[i] = Prepare(cur[r.App.Name], r.Seq, r.Arrival, r.Deadline, r.P, nil)
						}
					case x == 3: // a fresh queue reusing the Seqs
						for i, r := range q {
							q[i] = Prepare(r.App, r.Seq, r.Arrival, r.Deadline, r.P, nil)
						}
					default:
						gone := map[*Request]bool{}
						for _, v := range got.Verdicts {
							gone[v.Request] = true
						}
						var back *Request
						if b := got.Batch; b != nil {
							for _, r := range b.Requests {
								gone[r] = true
							}
							resident[b.Variant.ID] = now
							for _, id := range b.Evict {
								delete(resident, id)
							}
							if x == 4 {
								back = b.Requests[0] // put back in arrival order
							}
						}
						q = slices.DeleteFunc(q, func(r *Request) bool { return gone[r] })
						if back != nil {
							i, _ := slices.BinarySearchFunc(q, back.Seq, func(r *Request, seq uint64) int { return int(r.Seq) - int(seq) })
							q = slices.Insert(q, i, back)
						}
					}
					now = now.Add(ms(rng.Float64() * 3))
					arrive(rng.IntN(5))
				}
				if batches < 50 || verdicts < 20 {
					t.Errorf("only %d batches and %d verdicts: the test exercises too little", batches, verdicts)
				}
			})
		}
	}
}

// indexOf is the queue index of an indexed policy.
func indexOf(p any) *queueIndex { return benchIndex(p.(Policy)) }

// checkHeld checks the index's seqSet against the marks on the requests it
// replaces: every entry of the deadline and hard-stop queues is gone by
// entryGone (read from held, without the request) exactly when isGone (read
// from the request) says so, and held's Seqs are those of the entries whose
// requests the index holds and has not found gone.
func checkHeld(t *testing.T, at string, x *queueIndex) {
	t.Helper()
	want := map[uint64]bool{}
	for _, ai := range x.byApp {
		for _, q := range []*keyQueue{&ai.dl, &ai.stop} {
			for _, part := range [][]keyEntry{q.h[min(len(q.h), heapPad):], q.far, q.back, q.young} {
				for _, e := range part {
					if got, old := x.entryGone(e), x.isGone(e.r); got != old {
						t.Fatalf("%s: request %d: gone by held %v, by its mark %v", at, e.seq, got, old)
					}
					if e.seq != e.r.Seq {
						t.Fatalf("%s: entry of request %d carries Seq %d", at, e.r.Seq, e.seq)
					}
					if x.holds(e.r) {
						want[e.seq] = true
					}
				}
			}
		}
	}
	n := 0
	for seq := range want {
		if set, known := x.held.has(seq); known && !set {
			t.Fatalf("%s: request %d held and not gone, not in held", at, seq)
		}
		n++
	}
	if x.held.rank(^uint64(0)) != n {
		t.Fatalf("%s: held counts %d, the index holds %d", at, x.held.rank(^uint64(0)), n)
	}
}

func describe(d Decision) string {
	s := ""
	for _, v := range d.Verdicts {
		s += fmt.Sprintf("  verdict seq %d %s %s %v\n", v.Request.Seq, v.Request.App.Name, v.Outcome, v.Reason)
	}
	if b := d.Batch; b != nil {
		var seqs []uint64
		for _, r := range b.Requests {
			seqs = append(seqs, r.Seq)
		}
		s += fmt.Sprintf("  batch %v %v evict %v load %v finish %v utility %v\n", b.Variant.ID, seqs, b.Evict, b.Load, b.Finish, b.Utility)
	}
	return s + fmt.Sprintf("  wake %v\n", d.WakeAt)
}

// TestIndexKeptInSteadyState runs edf, fifo and fixed-batch on
// BenchmarkDecide's workload (4,000 queued, overloaded and not) for long
// enough that the hard-stop queues would have filled with requests answered
// long ago several times over, and checks that the index is never rebuilt
// (the sweeps of the hard-stop queues keep their garbage below the queue's
// length: a rebuild comes at twice), that the hard-stop queues stay within
// 1.75 times the queue, and that every 25th decision equals the full
// recomputation's.
func TestIndexKeptInSteadyState(t *testing.T) {
	const n = 4000
	for _, name := range []string{"edf", "fifo", "fixed-batch"} {
		for _, over := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/over=%v", name, over), func(t *testing.T) {
				l := newBenchLoop(t, name, n, over)
				ix := benchIndex(l.p)
				ref := mustPolicy(t, name, Options{MaxQueueDelay: time.Nanosecond}).(fullDecider)
				most := 0
				for i := range 1500 {
					s := l.snapshot()
					d := l.p.Decide(s)
					if i%25 == 0 {
						if want := ref.decideFull(s); !reflect.DeepEqual(d, want) {
							t.Fatalf("decision %d: indexed\n%s\nfull recomputation\n%s", i, describe(d), describe(want))
						}
						checkHeld(t, fmt.Sprintf("decision %d", i), ix)
					}
					stop := 0
					for _, ai := range ix.byApp {
						stop += ai.stop.len()
					}
					most = max(most, stop)
					l.apply(d)
				}
				if ix.gen != 1 {
					t.Errorf("the index was rebuilt %d times", ix.gen-1)
				}
				if most > 7*n/4 {
					t.Errorf("the hard-stop queues held up to %d entries for %d queued", most, n)
				}
				// The caller removes exactly what each decision answered or
				// batched: held guesses each request's place in the queue.
				if f := ix.find; f.guessed < 1500 || f.wrong > f.guessed/100 {
					t.Errorf("%d of %d searches not answered by their guess", f.wrong, f.guessed)
				}
				t.Logf("%d of %d searches not answered by their guess", ix.find.wrong, ix.find.guessed)
			})
		}
	}
}

// TestIndexByClass: an index kept per class (queueIndex.class, the searching
// policies that group by class) takes the queue in deadline order over its
// classes as one per application does, a class's part hands out that class's
// requests in deadline order, and what untake gives back is handed out again,
// in order, whether or not peek refilled its look-ahead in between; across
// decisions (restore, requests removed, new ones) it stays whole.
func TestIndexByClass(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 4))
	a := benchApp(rng)
	now := t0.Add(time.Second)
	q := benchQueueLoad(rng, a, 3000, now, false)
	apps := map[string]*App{a.Name: a}
	var x queueIndex
	x.deadline, x.class = true, true
	seq := uint64(len(q))
	byKey := func(q []*Request) []*Request {
		out := slices.Clone(q)
		slices.SortFunc(out, func(r, s *Request) int {
			if c := r.Deadline.Compare(s.Deadline); c != 0 {
				return c
			}
			return cmp.Compare(r.Seq, s.Seq)
		})
		return out
	}
	for round := range 6 {
		s := &Snapshot{Now: now, Queue: q, Apps: apps}
		x.sync(s)
		want := byKey(q)
		// One class's part, taken, given back in two parts, taken again.
		class := want[len(want)/3].Class
		ai := x.ofClass(a, class)
		var ofClass []*Request
		for _, r := range want {
			if r.Class == class {
				ofClass = append(ofClass, r)
			}
		}
		k := 40 + 17*round
		var got []*Request
		for range k {
			got = append(got, x.nextByDeadline(ai, noSkip, 3))
		}
		if !slices.Equal(got, ofClass[:k]) {
			t.Fatalf("round %d: class %d's part does not hand out its requests in deadline order", round, class)
		}
		x.untake(ai, 10)
		x.untake(ai, k-10)
		got = got[:0]
		for range k + 5 {
			got = append(got, x.nextByDeadline(ai, noSkip, 0))
		}
		if !slices.Equal(got, ofClass[:k+5]) {
			t.Fatalf("round %d: after untake, class %d's part hands out something else", round, class)
		}
		x.untake(ai, k+5)
		// Taken with a long look-ahead: what is given back is still in it.
		got = got[:0]
		for range 20 {
			got = append(got, x.nextByDeadline(ai, noSkip, 200))
		}
		x.untake(ai, 5)
		for range 5 {
			got = append(got, x.nextByDeadline(ai, noSkip, 0))
		}
		if !slices.Equal(got[:15], ofClass[:15]) || !slices.Equal(got[15:20], ofClass[15:20]) || !slices.Equal(got[20:], ofClass[15:20]) {
			t.Fatalf("round %d: after untake within the look-ahead, class %d's part hands out something else", round, class)
		}
		x.untake(ai, 20)
		// The whole queue over every class, in deadline order.
		got = got[:0]
		for {
			r := x.popEarliest(64)
			if r == nil {
				break
			}
			got = append(got, r)
		}
		if x.broken || !slices.Equal(got, want) {
			t.Fatalf("round %d: popEarliest over the classes: %d requests, not the queue in deadline order", round, len(got))
		}
		x.restore()
		// The decision's caller removes some requests and appends new ones.
		q = slices.DeleteFunc(q, func(*Request) bool { return rng.IntN(5) == 0 })
		now = now.Add(time.Millisecond)
		for range 400 {
			q = append(q, benchRequest(rng, a, seq, now, 3000, false))
			seq++
		}
	}
	if len(x.perClass) < 5 || len(x.per) != 0 {
		t.Fatalf("%d parts by class, %d by application", len(x.perClass), len(x.per))
	}
}

// TestIndexLiveMarks: an index kept by sync trusts its marks of the requests
// it knows to be queued (settle) only while the queue lost exactly what the
// decisions answered or batched. edf runs BenchmarkDecideSteady's loop at
// 4,000 queued, its decisions compared with the full recomputation's; in
// between, the caller (1) does not apply a decision, (2) drops the next
// head (the earliest deadline the decision did not take) besides what the
// decision answered, (3) keeps one batched request queued and drops the next
// head instead, so that the queue lost as many requests as the decision
// took. The marks must hold through the steps where the queue lost only
// what was decided (and (1)), and lapse at the others, or the dropped head
// would come back as a batch's head.
func TestIndexLiveMarks(t *testing.T) {
	for _, over := range []bool{false, true} {
		t.Run(fmt.Sprintf("over=%v", over), func(t *testing.T) {
			l := newBenchLoop(t, "edf", 4000, over)
			ix := benchIndex(l.p)
			ref := mustPolicy(t, "edf", Options{MaxQueueDelay: time.Nanosecond}).(fullDecider)
			// nextHead is the queued request with the earliest deadline that
			// d did not answer or batch.
			nextHead := func(d Decision) *Request {
				taken := map[*Request]bool{}
				for _, v := range d.Verdicts {
					taken[v.Request] = true
				}
				if d.Batch != nil {
					for _, r := range d.Batch.Requests {
						taken[r] = true
					}
				}
				var h *Request
				for _, r := range l.q {
					if !taken[r] && !Hopeless(r, l.now) && (h == nil || byDeadline(r, h) < 0) {
						h = r
					}
				}
				return h
			}
			drop := func(r *Request) {
				l.q = slices.DeleteFunc(l.q, func(x *Request) bool { return x == r })
			}
			kept, lapsed := 0, 0
			for step := range 600 {
				s := l.snapshot()
				d := l.p.Decide(s)
				if want := ref.decideFull(s); !reflect.DeepEqual(d, want) {
					t.Fatalf("step %d: indexed\n%s\nfull recomputation\n%s", step, describe(d), describe(want))
				}
				epoch := ix.epoch
				mode := 0
				if step > 20 {
					mode = step % 10
				}
				switch mode {
				case 1: // not applied
					l.now = l.now.Add(10 * time.Microsecond)
				case 2: // the next head dropped as well
					h := nextHead(d)
					l.apply(d)
					drop(h)
				case 3: // a batched request kept, the next head dropped instead
					if d.Batch == nil {
						l.apply(d)
						mode = 0
						break
					}
					keep, h := d.Batch.Requests[0], nextHead(d)
					l.apply(d)
					i, _ := slices.BinarySearchFunc(l.q, keep.Seq, func(r *Request, seq uint64) int { return cmp.Compare(r.Seq, seq) })
					l.q = slices.Insert(l.q, i, keep)
					drop(h)
				default:
					l.apply(d)
				}
				// The next decision's sync tells whether the marks held.
				s = l.snapshot()
				ix.sync(s)
				ix.restore()
				switch moved := ix.epoch != epoch; {
				case (mode == 2 || mode == 3) && !moved:
					t.Fatalf("step %d: the caller dropped a request it was not told to, and the marks still hold", step)
				case (mode == 0 || mode == 1) && moved:
					t.Fatalf("step %d: the queue lost only what was decided, and the marks lapsed", step)
				case moved:
					lapsed++
				default:
					kept++
				}
			}
			t.Logf("marks kept through %d steps, lapsed at %d", kept, lapsed)
			if lapsed < 60 || kept < 400 {
				t.Fatalf("marks kept through %d steps, lapsed at %d: the test exercises too little", kept, lapsed)
			}
		})
	}
}
