package protocol

import (
	"encoding/json"
	"math"
	"strconv"
)

// AppendJSON appends r encoded as json.Marshal encodes it, byte for byte, to b,
// without reflection: the gateway encodes a reply per request. It fails as
// json.Marshal does (a NaN or infinite number).
func (r *Reply) AppendJSON(b []byte) ([]byte, error) {
	if !r.finite() {
		return nil, r.marshalError()
	}
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(r.V), 10)
	if r.ID != "" {
		b = appendJSONString(append(b, `,"id":`...), r.ID)
	}
	b = appendJSONString(append(b, `,"app":`...), r.App)
	b = appendJSONString(append(b, `,"device":`...), r.Device)
	b = appendJSONString(append(b, `,"status":`...), string(r.Status))
	if r.Reason != "" {
		b = appendJSONString(append(b, `,"reason":`...), string(r.Reason))
	}
	if r.Class != nil {
		b = strconv.AppendInt(append(b, `,"class":`...), int64(*r.Class), 10)
	}
	if r.Label != "" {
		b = appendJSONString(append(b, `,"label":`...), r.Label)
	}
	b = appendJSONFloatField(b, `,"confidence":`, r.Confidence)
	if len(r.Probs) > 0 {
		b = append(b, `,"probs":[`...)
		for i, p := range r.Probs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONFloat(b, p)
		}
		b = append(b, ']')
	}
	if r.Model != "" {
		b = appendJSONString(append(b, `,"model":`...), r.Model)
	}
	if r.Batch != 0 {
		b = strconv.AppendInt(append(b, `,"batch":`...), int64(r.Batch), 10)
	}
	b = appendJSONFloatField(b, `,"est_accuracy":`, r.EstAccuracy)
	b = appendJSONFloatField(b, `,"queue_ms":`, r.QueueMS)
	b = appendJSONFloatField(b, `,"infer_ms":`, r.InferMS)
	b = appendJSONFloatField(b, `,"total_ms":`, r.TotalMS)
	b = appendJSONFloatField(b, `,"slack_ms":`, r.SlackMS)
	if r.DeadlineMet != nil {
		b = strconv.AppendBool(append(b, `,"deadline_met":`...), *r.DeadlineMet)
	}
	if r.Error != "" {
		b = appendJSONString(append(b, `,"error":`...), r.Error)
	}
	if r.RetryAfterMS != nil {
		b = strconv.AppendInt(append(b, `,"retry_after_ms":`...), *r.RetryAfterMS, 10)
	}
	return append(b, '}'), nil
}

// Marshal returns r's JSON encoding: AppendJSON to a new slice.
func (r *Reply) Marshal() ([]byte, error) { return r.AppendJSON(make([]byte, 0, 384)) }

// finite reports whether every number of r can be encoded.
func (r *Reply) finite() bool {
	for _, p := range [...]*float64{r.Confidence, r.EstAccuracy, r.QueueMS, r.InferMS, r.TotalMS, r.SlackMS} {
		if p != nil && !isFinite(*p) {
			return false
		}
	}
	for _, p := range r.Probs {
		if !isFinite(p) {
			return false
		}
	}
	return true
}

func isFinite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// marshalError is json.Marshal's error for r.
func (r *Reply) marshalError() error {
	_, err := json.Marshal(r)
	return err
}

func appendJSONFloatField(b []byte, name string, f *float64) []byte {
	if f == nil {
		return b
	}
	return appendJSONFloat(append(b, name...), *f)
}

// appendJSONFloat appends a finite f as encoding/json writes a float64.
func appendJSONFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' { // e-09 -> e-9, as encoding/json
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}
