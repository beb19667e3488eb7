package eval

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// histogramQuantiles interpolates within buckets: 10 observations in (0, 1 ms]
// and 10 in (1 ms, 3 ms] put the median at 1 ms and the 75th percentile at 2 ms.
func TestHistogramQuantiles(t *testing.T) {
	h := &dto.Histogram{SampleCount: proto.Uint64(20), Bucket: []*dto.Bucket{
		{UpperBound: proto.Float64(0.001), CumulativeCount: proto.Uint64(10)},
		{UpperBound: proto.Float64(0.003), CumulativeCount: proto.Uint64(20)},
		{UpperBound: proto.Float64(0.01), CumulativeCount: proto.Uint64(20)},
	}}
	q := histogramQuantiles(h, 4) // the 12.5th, 37.5th, 62.5th and 87.5th percentiles
	want := []time.Duration{250 * time.Microsecond, 750 * time.Microsecond, 1500 * time.Microsecond, 2500 * time.Microsecond}
	for i := range want {
		if d := q[i] - want[i]; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("quantile %d: %v, want %v", i, q[i], want[i])
		}
	}
}
