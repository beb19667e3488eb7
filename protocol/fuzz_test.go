package protocol

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func FuzzParseRequest(f *testing.F) {
	env := testEnv(f)
	seeds := []struct{ topic, payload string }{
		{"sg/req/tiny/d", `{"id":"a","deadline_ms":50,"input":[1,2,3]}`},
		{"sg/req/tiny/d", `{"id":"a","input_b64":"` + b64(1, 2, 3) + `","reply_to":"ops/x"}`},
		{"sg/req/ranged/d", `{"id":"a","deadline":1700000000100,"input":[0,1]}`},
		{"sg/req/ranged/d", `{"id":"a","input_u8_b64":"AP8="}`},
		{"sg/req/tiny/d", `{"id":42,"input_u8_b64":"AAEC"}`},
		{"sg/req/tiny/d", `{"id":"a","input":[1e39,2,3],"v":1}`},
		{"sg/req/tiny/d v", `{"id":"a"`},
		{"sg/req/nope/d", `{}`},
		{"sg/req/tiny/d", `{"id":"\u00e9\n","reply_to":"sg/res/tiny/d/+","input":[[]]}`},
		{"x", ``},
		{"sg/req/tiny/d", `{"id":"a","sent_at":1699999999990,"deadline_ms":50,"input":[1,2,3]}`},
		{"sg/req/tiny/d", `{"id":"a","sent_at":1699999990000,"deadline_ms":50,"input":"x"}`},
	}
	for _, s := range seeds {
		f.Add(s.topic, []byte(s.payload))
	}
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		req, rej := ParseRequest(topic, payload, testNow, env)
		if (req == nil) == (rej == nil) {
			t.Fatalf("want exactly one of request and rejection, got %v and %v", req, rej)
		}
		// ParseHeader then DecodeInput decides exactly as ParseRequest.
		hreq, hrej := ParseHeader(topic, payload, testNow, env)
		if hrej == nil {
			hrej = hreq.DecodeInput()
		}
		switch {
		case (rej == nil) != (hrej == nil):
			t.Fatalf("ParseRequest rejection %v, ParseHeader+DecodeInput %v", rej, hrej)
		case rej != nil && *rej != *hrej:
			t.Fatalf("ParseRequest rejection %+v, ParseHeader+DecodeInput %+v", *rej, *hrej)
		case rej == nil && (!slices.Equal(req.Input, hreq.Input) || req.ID != hreq.ID || !req.Deadline.Equal(hreq.Deadline) || req.ReplyTo != hreq.ReplyTo):
			t.Fatalf("ParseRequest %+v, ParseHeader+DecodeInput %+v", req, hreq)
		}
		if rej != nil {
			checkRejection(t, topic, rej, env)
			return
		}
		spec, ok := env.App(req.App)
		if !ok || !ValidDevice(req.Device) || topic != RequestTopic(env.Prefix, req.App, req.Device) {
			t.Fatalf("bad app/device %+v", req)
		}
		if n := utf8.RuneCountInString(req.ID); n < 1 || n > MaxIDLen || !validID(req.ID) {
			t.Fatalf("bad id %q", req.ID)
		}
		if req.ExpiredOnArrival() {
			if req.SentAt.IsZero() || req.Input != nil {
				t.Fatalf("expired on arrival without sent_at, or with a decoded input: %+v", req)
			}
			return
		}
		if len(req.Input) != spec.InputSize {
			t.Fatalf("input size %d, want %d", len(req.Input), spec.InputSize)
		}
		for _, v := range req.Input {
			f := float64(v)
			if math.IsNaN(f) || math.IsInf(f, 0) || (spec.Range != nil && (f < spec.Range[0] || f > spec.Range[1])) {
				t.Fatalf("bad value %v", v)
			}
		}
		// With sent_at the budget counts from the device's clock, not from receipt.
		if b := req.Budget(); req.SentAt.IsZero() && (b < env.Limits.MinDeadline && b != spec.DefaultDeadline || b > env.Limits.MaxDeadline) {
			t.Fatalf("budget %v outside limits", b)
		}
		if req.ReplyTo != ReplyTopic(env.Prefix, req.App, req.Device) && !env.ReplyAllow.Allows(req.ReplyTo, env.Prefix, req.App, req.Device) {
			t.Fatalf("reply_to %q not allowed", req.ReplyTo)
		}
	})
}

// checkRejection checks the security invariant: a rejection is only ever sent to the
// requester's own reply topic or an allowed reply_to, never to a wildcard topic.
func checkRejection(t *testing.T, topic string, rej *Rejection, env Env) {
	t.Helper()
	if !rej.Reason.Known() || rej.Reason.Retryable() || rej.Message == "" {
		t.Fatalf("bad rejection %+v", rej)
	}
	if rej.ID != "" && !validID(rej.ID) {
		t.Fatalf("rejection echoes invalid id %q", rej.ID)
	}
	if rej.ReplyTo == "" {
		// Only a topic that is not {prefix}/req/{app}/{device}, or whose levels
		// cannot be published to (wildcards, invalid UTF-8), has no reply topic.
		if rej.Reason != ReasonBadTopic && validTopicName(ReplyTopic(env.Prefix, rej.App, rej.Device)) {
			t.Fatalf("%s without reply topic", rej.Reason)
		}
		return
	}
	if !validTopicName(rej.ReplyTo) || strings.ContainsAny(rej.ReplyTo, "+#") {
		t.Fatalf("invalid reply topic %q", rej.ReplyTo)
	}
	own := ReplyTopic(env.Prefix, rej.App, rej.Device)
	if topic != RequestTopic(env.Prefix, rej.App, rej.Device) {
		t.Fatalf("app/device %q/%q do not come from topic %q", rej.App, rej.Device, topic)
	}
	if rej.ReplyTo != own && !env.ReplyAllow.Allows(rej.ReplyTo, env.Prefix, rej.App, rej.Device) {
		t.Fatalf("rejection to %q, neither own topic nor allowed", rej.ReplyTo)
	}
}

var sinkReq *Request

// imageInput is a 784-value input shaped like an image: rows of zeros around
// values written as Payload writes them (the shortest float32 text).
func imageInput() []float32 {
	in := make([]float32, 784)
	for i := range in {
		if r, c := i/28, i%28; r >= 5 && r < 23 && c >= 6 && c < 22 {
			in[i] = float32((i*37)%256) / 255
		}
	}
	return in
}

func benchPayload(b *testing.B, b64, image bool) {
	env := testEnv(b)
	in := make([]float32, 784)
	for i := range in {
		in[i] = float32((i*37)%256) / 255 // Fashion-MNIST-like pixel values
	}
	if image {
		in = imageInput() // the same values around rows of zeros
	}
	p := Payload{ID: "cam-0001-000042", DeadlineMS: 100, Input: in, B64: b64}
	payload := p.Marshal()
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	now := time.Now()
	for b.Loop() {
		req, rej := ParseRequest("sg/req/fashion/cam-0001", payload, now, env)
		if rej != nil {
			b.Fatal(rej)
		}
		sinkReq = req
	}
}

func BenchmarkParseRequest(b *testing.B) {
	b.Run("json784", func(b *testing.B) { benchPayload(b, false, false) })
	b.Run("json784_image", func(b *testing.B) { benchPayload(b, false, true) })
	b.Run("b64_784", func(b *testing.B) { benchPayload(b, true, false) })
}

// FuzzScanFields checks the fast field scanner against the reference decoder: when
// the fast path accepts a payload, encoding/json must accept it too and find exactly
// the same raw field values.
func FuzzScanFields(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","deadline_ms":50,"input":[1,2.5,-3e2]}`,
		` {"input" : [ 0 , 0 ,0 ] , "id":"x\u00e9\/" } `,
		`{"id":"a","input_b64":"AAAA","reply_to":null,"v":1,"deadline":true}`,
		`{"id":"a","input":[01]}`, `{"id":"a","input":[-]}`, `{"id":"a","input":[1.]}`, `{"id":"a","input":[.5]}`,
		`{"id":"a","input":[1e+]}`, `{"id":"a","id":"b"}`, `{"x":1}`, `{}`, `{"id":"\x01"}`, `{"id":"a"}x`,
		`{"id":"a","input":[[1]]}`, `{"id":"a","input":[1,]}`, `{"id":"\ud800"}`, `{"id":"\u12"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		fast, ok := scanFields(payload)
		if !ok {
			return
		}
		if !json.Valid(payload) {
			t.Fatalf("fast path accepted invalid JSON %q", payload)
		}
		ref, err := decodeFields(payload)
		if err != nil {
			t.Fatalf("fast path accepted %q, reference decoder: %v", payload, err)
		}
		if ref.unknown != nil || fast.unknown != nil {
			t.Fatalf("unknown field on the fast path: %q", payload)
		}
		pairs := [][2][]byte{{fast.v, ref.v}, {fast.id, ref.id}, {fast.deadlineMS, ref.deadlineMS},
			{fast.deadline, ref.deadline}, {fast.input, ref.input}, {fast.inputB64, ref.inputB64}, {fast.replyTo, ref.replyTo}}
		for i, p := range pairs {
			if !bytes.Equal(p[0], p[1]) || (p[0] == nil) != (p[1] == nil) {
				t.Fatalf("field %d: fast %q, reference %q (payload %q)", i, p[0], p[1], payload)
			}
		}
	})
}
