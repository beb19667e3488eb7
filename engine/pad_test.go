package engine

import (
	"context"
	"math"
	"testing"
	"time"
)

// TestPadBatches: with PadBatches a batch runs at the next profiled size, its
// extra rows zeroed, and answers as it would unpadded; a batch above the
// largest size runs as it is; the profile is a step function of the size.
func TestPadBatches(t *testing.T) {
	sizes := []int{1, 4, 8}
	pad := newEngine(t, Options{IntraOpThreads: 1, BatchSizes: sizes, PadBatches: true, ProfileRuns: 1})
	plain := newEngine(t, Options{IntraOpThreads: 1, BatchSizes: sizes})
	for _, e := range []*Engine{pad, plain} {
		registerAll(t, e)
	}
	id := VariantID{App: "img", Variant: "mlp"}
	for _, e := range []*Engine{pad, plain} {
		if _, err := e.Load(id); err != nil {
			t.Fatal(err)
		}
	}
	// A full batch of 8 first, so that stale rows would be there to leak.
	for i, n := range []int{8, 3, 1, 5, 9} {
		in := randomInputs(n, inputSizeOf(id), 0, 1, uint64(10+i))
		got, err := pad.Run(id, in)
		if err != nil {
			t.Fatalf("batch of %d: %v", n, err)
		}
		want, err := plain.Run(id, in)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != n {
			t.Fatalf("batch of %d: %d answers", n, len(got))
		}
		for r := range got {
			for k := range got[r] {
				if math.Abs(got[r][k]-want[r][k]) > 1e-6 {
					t.Fatalf("batch of %d, row %d: padded %v, plain %v", n, r, got[r], want[r])
				}
			}
		}
		s := pad.variants[id].sess
		w := s.v.dataLen
		if b := map[int]int{3: 4, 5: 8}[n]; b > 0 {
			for _, x := range s.bufs.dataF[n*w : b*w] {
				if x != 0 {
					t.Fatalf("batch of %d (run at %d): a padding row is not zeroed", n, b)
				}
			}
		}
	}
	s := pad.variants[id].sess
	for b, want := range map[int]bool{1: true, 3: false, 4: true, 5: false, 8: true} {
		if got := s.batches[b-1] != nil; got != want {
			t.Errorf("padded session has tensors for batch %d: %v, want %v", b, got, want)
		}
	}
	if err := pad.Profile(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	p, _ := pad.ProfileOf(id)
	if !p.Padded {
		t.Error("profile of a padding engine is not Padded")
	}
	if q, _ := plain.ProfileOf(id); q.Padded {
		t.Error("profile of a plain engine is Padded")
	}
}

func TestPaddedLatencyAt(t *testing.T) {
	p := Profile{Batch: []int{1, 4, 8}, Latency: []time.Duration{10, 40, 80}, Padded: true}
	for b, want := range map[int]time.Duration{1: 10, 2: 40, 4: 40, 5: 80, 8: 80, 10: 100} {
		if got := p.LatencyAt(b); got != want {
			t.Errorf("padded LatencyAt(%d) = %d, want %d", b, got, want)
		}
	}
	p.Padded = false
	if got := p.LatencyAt(2); got != 20 {
		t.Errorf("plain LatencyAt(2) = %d, want 20", got)
	}
}

// TestPadBatchesNotOnCPU: padding is for the shapes a GPU provider sees; an
// application registered OnCPU beside a GPU engine runs its batches at their
// own size (on the CPU a padded pass only costs more: vad/silero-legacy takes
// 0.42 ms at 1 and 3.66 ms at 32, docs/benchmarks.md) and its profile is
// interpolated, while the engine's other applications are padded. Without a
// GPU the engine's provider is set by hand, as in TestOnCPU.
func TestPadBatchesNotOnCPU(t *testing.T) {
	e := newEngine(t, Options{IntraOpThreads: 1, BatchSizes: []int{1, 4}, PadBatches: true, ProfileRuns: 1})
	e.prov = providerConfig{Name: ProviderCUDA, Options: map[string]string{"device_id": "0"}}
	if err := e.Register(linApp(t), OnCPU()); err != nil {
		t.Fatal(err)
	}
	if err := e.Register(imgApp(t)); err != nil {
		t.Fatal(err)
	}
	for id, padded := range map[VariantID]bool{{App: "lin", Variant: "logits"}: false, {App: "img", Variant: "mlp"}: true} {
		if err := e.Profile(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		if p, _ := e.ProfileOf(id); p.Padded != padded {
			t.Errorf("%s: profile Padded %v, want %v", id, p.Padded, padded)
		}
		if _, err := e.Load(id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Run(id, randomInputs(2, inputSizeOf(id), 0, 1, 1)); err != nil {
			t.Fatal(err)
		}
		s := e.variants[id].sess
		if got := s.batches[3] != nil; got != padded {
			t.Errorf("%s: a batch of 2 ran at 4: %v, want %v", id, got, padded)
		}
	}
}
