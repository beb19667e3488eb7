package protocol

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
)

// TestReplyAppendJSONMatchesMarshal checks the hand-written encoder against
// encoding/json on random replies: every field set or not, numbers across
// their range, strings with escapes, HTML characters and invalid UTF-8.
func TestReplyAppendJSONMatchesMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	strs := []string{"", "a", "fashion", "cam-01", "req/π 1", "<b>&amp;</b>", "tab\there", "quote\"back\\slash",
		"\x00\x1f\x7f", "bad \xff utf8", "line\u2028sep\u2029", "emoji 😀", "not admitted: overload"}
	str := func() string { return strs[rng.IntN(len(strs))] }
	floats := []float64{0, math.Copysign(0, -1), 1, -1, 0.1, 1e-6, 9.99e-7, 1e-7, 1e20, 1e21, 1.5e300, -2.5e-300,
		123.456, 0.8312, -987.001, math.MaxFloat64, math.SmallestNonzeroFloat64}
	float := func() *float64 {
		if rng.IntN(3) == 0 {
			return nil
		}
		f := floats[rng.IntN(len(floats))]
		if rng.IntN(2) == 0 {
			f = math.Float64frombits(rng.Uint64())
			if !isFinite(f) {
				f = rng.NormFloat64() * 1000
			}
		}
		return &f
	}
	for range 5000 {
		r := &Reply{V: rng.IntN(3) - 1, ID: str(), App: str(), Device: str(), Status: Status(str()), Reason: Reason(str()),
			Label: str(), Confidence: float(), Model: str(), Batch: rng.IntN(3) * rng.IntN(64), EstAccuracy: float(),
			QueueMS: float(), InferMS: float(), TotalMS: float(), SlackMS: float(), Error: str()}
		if rng.IntN(2) == 0 {
			r.Class = Ptr(rng.IntN(20) - 5)
		}
		if rng.IntN(2) == 0 {
			r.DeadlineMet = Ptr(rng.IntN(2) == 0)
		}
		if rng.IntN(2) == 0 {
			r.RetryAfterMS = Ptr(rng.Int64N(1e6) - 10)
		}
		switch rng.IntN(3) {
		case 1:
			r.Probs = []float64{}
		case 2:
			for range rng.IntN(12) + 1 {
				r.Probs = append(r.Probs, *cmpOr(float(), new(float64)))
			}
		}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.AppendJSON([]byte("prefix"))
		if err != nil || !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("AppendJSON:\n got %s, %v\nwant prefix%s", got, err, want)
		}
	}
	for _, bad := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		for _, r := range []*Reply{{TotalMS: &bad}, {Probs: []float64{0.5, bad}}} {
			if _, err := r.AppendJSON(nil); err == nil {
				t.Errorf("AppendJSON of %v: no error", bad)
			}
		}
	}
}

func cmpOr(a, b *float64) *float64 {
	if a != nil {
		return a
	}
	return b
}

var sinkJSON []byte

func BenchmarkReplyJSON(b *testing.B) {
	r := &Reply{V: 1, ID: "cam-0001-000042", App: "fashion", Device: "cam-0001", Status: StatusOK, Class: Ptr(3),
		Label: "Dress", Confidence: Ptr(0.8312), Model: "logreg", Batch: 6, EstAccuracy: Ptr(0.83),
		QueueMS: Ptr(3.104), InferMS: Ptr(0.412), TotalMS: Ptr(12.5), SlackMS: Ptr(987.5), DeadlineMet: Ptr(true)}
	b.Run("encoding_json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sinkJSON, _ = json.Marshal(r)
		}
	})
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sinkJSON, _ = r.Marshal()
		}
	})
}
