package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// These tests keep docs/schema/request.schema.json and reply.schema.json, this
// package and the examples in docs/protocol.md and README.md in agreement: every
// documented example validates, every reply this package builds validates, the
// schemas' enums and properties are exactly the package's reasons, statuses and
// fields, and the request schema accepts exactly what ParseRequest accepts (where
// the difference is not the gateway's configuration, the application or the
// time; the few differences JSON Schema cannot express are listed).

const (
	requestSchemaPath = "../docs/schema/request.schema.json"
	replySchemaPath   = "../docs/schema/reply.schema.json"
)

// schema compiles the JSON Schema at path (draft 2020-12, checked against its
// meta-schema) and returns it with its raw JSON.
func schema(t testing.TB, path string) (*jsonschema.Schema, map[string]any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(path, doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	s, err := c.Compile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	return s, raw
}

// validate validates one JSON document against s.
func validate(s *jsonschema.Schema, doc []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// jsonBlock matches a ```json fenced block of a Markdown file.
var jsonBlock = regexp.MustCompile("(?ms)^```json\n(.*?)^```")

// docExamples returns the JSON documents of every ```json block of path (a block
// may hold several, one after the other). An array shortened with ", ...]" is
// closed where it was cut.
func docExamples(t *testing.T, path string) []json.RawMessage {
	t.Helper()
	md, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []json.RawMessage
	for _, m := range jsonBlock.FindAllSubmatch(md, -1) {
		block := bytes.ReplaceAll(m[1], []byte(", ...]"), []byte("]"))
		dec := json.NewDecoder(bytes.NewReader(block))
		for dec.More() {
			var doc json.RawMessage
			if err := dec.Decode(&doc); err != nil {
				t.Fatalf("%s: a json block is not JSON: %v\n%s", path, err, m[1])
			}
			out = append(out, doc)
		}
	}
	return out
}

func TestSchemaDocExamples(t *testing.T) {
	req, _ := schema(t, requestSchemaPath)
	rep, _ := schema(t, replySchemaPath)
	status, _ := schema(t, statusSchemaPath)
	stats, _ := schema(t, statsSchemaPath)
	counts := map[string]int{}
	for _, path := range []string{"../docs/protocol.md", "../README.md"} {
		for _, doc := range docExamples(t, path) {
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(doc, &fields); err != nil {
				t.Errorf("%s: example is not an object: %s", path, doc)
				continue
			}
			has := func(k string) bool { _, ok := fields[k]; return ok }
			var kind string
			var s *jsonschema.Schema
			switch {
			case has("status"):
				kind, s = "reply", rep
			case has("input") || has("input_b64") || has("input_u8_b64"):
				kind, s = "request", req
			case has("state"):
				kind, s = "status", status
			case has("uptime_s"):
				kind, s = "stats", stats
			default:
				t.Errorf("%s: example of unknown kind: %s", path, doc)
				continue
			}
			counts[kind]++
			if err := validate(s, doc); err != nil {
				t.Errorf("%s: %s example does not validate: %s\n%v", path, kind, doc, err)
			}
			if kind == "reply" {
				if _, err := ParseReply(doc); err != nil {
					t.Errorf("%s: ParseReply: %v", path, err)
				}
			}
		}
	}
	t.Logf("examples checked: %v", counts)
	if counts["reply"] < 4 || counts["request"] < 1 || counts["status"] < 1 || counts["stats"] < 1 {
		t.Errorf("too few examples found (%v): has the Markdown changed?", counts)
	}
}

// schemaEnv is testEnv with nothing that depends on the configuration: every
// reply_to without wildcards (not starting with $) allowed, wide limits, no range
// (but for app "u8", whose range input_u8_b64 needs).
func schemaEnv(t *testing.T) Env {
	allow, err := NewAllowList([]string{"#"})
	if err != nil {
		t.Fatal(err)
	}
	return Env{
		Limits:     Limits{MaxPayloadBytes: 1 << 20, MinDeadline: time.Millisecond, MaxDeadline: 24 * time.Hour},
		ReplyAllow: allow,
		App: func(a string) (AppSpec, bool) {
			switch a {
			case "app":
				return AppSpec{InputSize: 4, DefaultDeadline: time.Second}, true
			case "u8": // input_u8_b64 needs a range
				return AppSpec{InputSize: 4, DefaultDeadline: time.Second, Range: &[2]float64{-1, 1}}, true
			}
			return AppSpec{}, false
		},
	}
}

// TestSchemaRequestAgreesWithParseRequest runs payloads through the request schema
// and ParseRequest: both must accept or both refuse, except for the listed
// differences JSON Schema cannot express.
func TestSchemaRequestAgreesWithParseRequest(t *testing.T) {
	s, _ := schema(t, requestSchemaPath)
	env := schemaEnv(t)
	in := `[0,0.5,1,-2]`
	b := b64(0, 0.5, 1, -2)
	abs := testNow.UnixMilli() + 5000
	payloads := []string{
		// accepted
		`{"id":"a","input":` + in + `}`,
		`{"id":"a","input_b64":"` + b + `"}`,
		`{"id":"a","input_b64":"` + b64(1, 2, 3, 4) + `","deadline_ms":50,"sent_at":1700000000000,"v":1}`,
		fmt.Sprintf(`{"id":"a","deadline":%d,"input":%s,"reply_to":"sneakgate/res/app/d/x"}`, abs, in),
		`{"id":"a","input":` + in + `,"input_b64":null,"deadline":null,"deadline_ms":20,"reply_to":null,"v":null,"sent_at":null}`,
		`{"id":"a","input_b64":"` + b + `","input":null}`,
		`{"id":"` + strings.Repeat("é", 128) + `","input":` + in + `}`,
		`{"id":"caméra 1/x","input":[1e-3,-0,3.4028234e38,-3.4028234e38]}`,
		`{"id":"a","input_b64":"AAAAAAAAAAAAAAAAAAAAAA=="}`, // 16 bytes: 4 float32 zeros
		`{"id":"a","input_b64":"AAAAAAAAAAAAAAAAAAAAAA==","deadline_ms":86400000}`,
		`{"id":"a","input":` + in + `,"reply_to":"a` + strings.Repeat("/x", 200) + `"}`,
		`{"id":"a","input":` + in + `,"reply_to":"caméra/\ufffd/ /\u00a0"}`,
		// refused by both
		`{}`,
		`{"input":` + in + `}`,
		`{"id":null,"input":` + in + `}`,
		`{"id":"","input":` + in + `}`,
		`{"id":7,"input":` + in + `}`,
		`{"id":"` + strings.Repeat("x", 129) + `","input":` + in + `}`,
		`{"id":"a\u0001","input":` + in + `}`,
		`{"id":"a\u0085","input":` + in + `}`,
		`{"id":"a\u007f","input":` + in + `}`,
		`{"id":"a\ufffd","input":` + in + `}`,
		`{"id":"a","input":` + in + `,"deadine_ms":5}`,
		`{"id":"a"}`,
		`{"id":"a","input":null}`,
		`{"id":"a","input":` + in + `,"input_b64":"` + b + `"}`,
		`{"id":"a","input":` + in + `,"input_u8_b64":"AAAAAA=="}`,
		`{"id":"a","input_b64":"` + b + `","input_u8_b64":"AAAAAA=="}`,
		`{"id":42,"input":` + in + `}`,
		`{"id":-1.5e3,"input":` + in + `}`,
		`{"id":"a","input":[]}`,
		`{"id":"a","input":[[0,1],[2,3]]}`,
		`{"id":"a","input":[0,1,2,"3"]}`,
		`{"id":"a","input":[0,1,2,null]}`,
		`{"id":"a","input":[0,1,2,3.5e38]}`,
		`{"id":"a","input":[0,1,2,-1e39]}`,
		`{"id":"a","input":"0,1,2,3"}`,
		`{"id":"a","input_b64":""}`,
		`{"id":"a","input_b64":7}`,
		`{"id":"a","input_b64":"AAAAAAAAAAAAAAAAAAAAAA"}`,    // no padding
		`{"id":"a","input_b64":"AAAAAAAAAAAAAAAAAAAAAAA="}`,  // 17 bytes
		`{"id":"a","input_b64":"AAAAAAAAAAAAAAAAAAAAAA-_"}`,  // URL alphabet
		`{"id":"a","input_b64":"AAAAAAAAAAAAAAAAAAAA AA=="}`, // space
		`{"id":"a","input":` + in + `,"deadline_ms":50,"deadline":` + fmt.Sprint(abs) + `}`,
		`{"id":"a","input":` + in + `,"deadline_ms":0}`,
		`{"id":"a","input":` + in + `,"deadline_ms":-5}`,
		`{"id":"a","input":` + in + `,"deadline_ms":"50"}`,
		`{"id":"a","input":` + in + `,"deadline_ms":50.5}`,
		`{"id":"a","input":` + in + `,"deadline":"soon"}`,
		`{"id":"a","input":` + in + `,"deadline":0}`,
		`{"id":"a","input":` + in + `,"deadline":-1}`,
		`{"id":"a","input":` + in + `,"sent_at":0}`,
		`{"id":"a","input":` + in + `,"sent_at":"now"}`,
		`{"id":"a","input":` + in + `,"sent_at":1.5}`,
		`{"id":"a","input":` + in + `,"v":2}`,
		`{"id":"a","input":` + in + `,"v":"1"}`,
		`{"id":"a","input":` + in + `,"reply_to":""}`,
		`{"id":"a","input":` + in + `,"reply_to":"sneakgate/res/+/d"}`,
		`{"id":"a","input":` + in + `,"reply_to":"a/#"}`,
		`{"id":"a","input":` + in + `,"reply_to":"a\u0000b"}`,
		`{"id":"a","input":` + in + `,"reply_to":7}`,
		`{"id":"a","input":` + in + `,"reply_to":"a\u0001b"}`,
		`{"id":"a","input":` + in + `,"reply_to":"a\u007f"}`,
		`{"id":"a","input":` + in + `,"reply_to":"a\u0085"}`,
		`{"id":"a","input":` + in + `,"reply_to":"a\ufdd0"}`,
		`{"id":"a","input":` + in + `,"reply_to":"a\uffff"}`,
		`{"id":"a","input":` + in + `,"reply_to":"a` + strings.Repeat("/x", 201) + `"}`,
		`[{"id":"a","input":` + in + `}]`,
		`"a"`,
		`null`,
	}
	// agree checks that the schema and ParseRequest (on topic) accept and refuse
	// alike each of payloads and each payload the device library builds from lib.
	agree := func(topic string, payloads []string, lib []Payload) {
		t.Helper()
		for _, p := range lib {
			payloads = append(payloads, string(p.Marshal()))
		}
		for _, p := range payloads {
			serr := validate(s, []byte(p))
			_, rej := ParseRequest(topic, []byte(p), testNow, env)
			if (serr == nil) != (rej == nil) {
				t.Errorf("%.120s: schema says %v, ParseRequest says %v", p, serr, rej)
			}
		}
	}
	agree("sneakgate/req/app/d", payloads, []Payload{
		{ID: "lib-1", Input: []float32{0, 0.25, 0.5, 1}},
		{ID: "lib-2", Input: []float32{0, 0.25, 0.5, 1}, B64: true, DeadlineMS: 40, SentAt: testNow.Add(-time.Millisecond)},
		{ID: "lib-3", Input: []float32{1, 2, 3, 4}, Deadline: testNow.Add(time.Second), ReplyTo: "ops/x"},
	})

	// input_u8_b64, to an application with an input_range.
	u8 := []string{
		// accepted
		`{"id":"a","input_u8_b64":"AAECAw=="}`, // 4 bytes
		`{"id":"a","input_u8_b64":"/wCA/w==","input":null,"input_b64":null}`,
		`{"id":"a","input_u8_b64":"AAECAw==","deadline_ms":50,"sent_at":1700000000000,"v":1}`,
		// refused by both
		`{"id":"a","input_u8_b64":""}`,
		`{"id":"a","input_u8_b64":7}`,
		`{"id":"a","input_u8_b64":["AAECAw=="]}`,
		`{"id":"a","input_u8_b64":"AAECAw"}`,   // no padding
		`{"id":"a","input_u8_b64":"AAE-_w=="}`, // URL alphabet
		`{"id":"a","input_u8_b64":"AAEC Aw=="}`,
		`{"id":"a","input_u8_b64":"AAECAw==","input":[0,0,0,0]}`,
		`{"id":"a","input_u8_b64":"AAECAw==","input_b64":"` + b64(0, 0, 0, 0) + `"}`,
		`{"id":"a","input_u8_b64":null}`,
	}
	agree("sneakgate/req/u8/d", u8, []Payload{
		{ID: "lib-u8", InputU8: []byte{0, 1, 254, 255}},
		{ID: "lib-u8-q", InputU8: QuantizeU8([]float32{-1, -0.5, 0.5, 1}, -1, 1), DeadlineMS: 40},
	})

	// What JSON Schema cannot say: the gateway wants integers written as integers
	// (a schema "integer" is any number without a fractional part), and it
	// tolerates line breaks in base64 (the schema describes the form to send).
	differences := []struct {
		payload      string
		schemaAccept bool
	}{
		{`{"id":"a","input":` + in + `,"deadline_ms":50.0}`, true},
		{`{"id":"a","input":` + in + `,"deadline_ms":5e1}`, true},
		{`{"id":"a","input":` + in + `,"sent_at":1.7e12}`, true},
		{`{"id":"a","input":` + in + `,"v":1.0}`, true},
		{`{"id":"a","input_b64":"AAAAAAAAAAAAAAAA\nAAAAAA=="}`, false},
		// A non-character above U+FFFF (U+1FFFE): Mosquitto refuses it, the
		// schema's pattern (UTF-16 code units) cannot name it.
		{`{"id":"a","input":` + in + `,"reply_to":"a\ud83f\udffe"}`, true},
		// The application decides whether it has an input_range (app has none).
		{`{"id":"a","input_u8_b64":"AAECAw=="}`, true},
	}
	for _, d := range differences {
		serr := validate(s, []byte(d.payload))
		_, rej := ParseRequest("sneakgate/req/app/d", []byte(d.payload), testNow, env)
		if (serr == nil) != d.schemaAccept || (rej == nil) == d.schemaAccept {
			t.Errorf("%s: the listed difference changed: schema says %v, ParseRequest says %v", d.payload, serr, rej)
		}
	}
}

// builtReplies returns replies the way this package and the gateway build them:
// a rejection for every reason ParseRequest finds (except bad_topic, which gets
// no reply), the gateway's refusals, and an answer of every other status.
func builtReplies(t *testing.T) map[string]*Reply {
	t.Helper()
	env := testEnv(t)
	in3 := `[1,2,3]`
	out := map[string]*Reply{}
	rejections := []struct {
		topic, payload string
		lim            *Limits
	}{
		{"sg/req/tiny/bad device", `{"id":"x","input":[1,2,3]}`, nil},
		{"sg/req/nope/d", `{"id":"x","input":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","input":[` + strings.Repeat("0,", 100) + `0]}`, &Limits{MaxPayloadBytes: 64}},
		{"sg/req/tiny/d", `{"id":"x","input":[1,2,3]`, nil},
		{"sg/req/tiny/d", `{"input":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","inputs":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","v":2,"input":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","reply_to":"elsewhere","input":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","deadline_ms":5,"deadline":5,"input":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","deadline_ms":"5","input":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","deadline":5,"input":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","deadline_ms":1,"input":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","deadline_ms":3600000,"input":[1,2,3]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","input":[1,2,3],"input_b64":"AAAA"}`, nil},
		{"sg/req/tiny/d", `{"id":"x"}`, nil},
		{"sg/req/tiny/d", `{"id":"x","input":[1,2]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","input":[1,2,1e39]}`, nil},
		{"sg/req/ranged/d", `{"id":"x","input":[0.5,2]}`, nil},
		{"sg/req/tiny/d", `{"id":"x","sent_at":0,"input":` + in3 + `}`, nil},
	}
	for _, c := range rejections {
		e := env
		if c.lim != nil {
			e.Limits = *c.lim
		}
		_, rej := ParseRequest(c.topic, []byte(c.payload), testNow, e)
		if rej == nil || rej.ReplyTo == "" {
			t.Fatalf("%s %s: want a rejection with a reply topic, got %v", c.topic, c.payload, rej)
		}
		out["rejected "+string(rej.Reason)] = rej.Reply()
	}
	req, rej := ParseRequest("sg/req/tiny/d", []byte(`{"id":"ok-1","input":[1,2,3]}`), testNow, env)
	if rej != nil {
		t.Fatal(rej)
	}
	out["rejected overload"] = req.Reject(ReasonOverload, "412 requests queued", 158*time.Millisecond)
	out["rejected shutting_down"] = req.Reject(ReasonShuttingDown, "the gateway is stopping", 0)
	out["rejected internal"] = req.Reject(ReasonInternal, "journal write failed", time.Second)

	// Answers, filled as the gateway's buildReply fills them.
	answer := func(st Status, met bool) *Reply {
		r := req.NewReply(st)
		r.Class, r.Label, r.Confidence, r.Model, r.EstAccuracy = Ptr(9), "Ankle boot", Ptr(0.97), "cnn", Ptr(0.93)
		r.Batch, r.QueueMS, r.InferMS = 8, Millis(1840*time.Microsecond), Millis(610*time.Microsecond)
		r.TotalMS, r.SlackMS, r.DeadlineMet = Millis(2730*time.Microsecond), Millis(147*time.Millisecond), Ptr(met)
		if !met {
			r.SlackMS = Millis(-3 * time.Millisecond)
		}
		return r
	}
	out["ok"] = answer(StatusOK, true)
	out["late"] = answer(StatusLate, false)
	for _, reason := range []Reason{ReasonNoVariantInTime, ReasonOverloadShed} {
		r := answer(StatusDegraded, true)
		r.Model, r.Reason, r.Batch, r.QueueMS, r.InferMS = "sneakpeek", reason, 0, nil, nil
		out["degraded "+string(reason)] = r
	}
	for _, reason := range AnswerReasons() {
		r := req.NewReply(StatusExpired)
		r.Reason, r.Error, r.DeadlineMet = reason, "the deadline passed before the request could run", Ptr(false)
		r.TotalMS, r.SlackMS = Millis(12*time.Millisecond), Millis(-2*time.Millisecond)
		if reason == ReasonBrokerUnavailable {
			r.QueueMS, r.InferMS = Millis(time.Millisecond), Millis(time.Millisecond)
		}
		out["expired "+string(reason)] = r
	}
	e := req.NewReply(StatusError)
	e.Reason, e.Error = ReasonInternal, "internal error while running the request; it may be retried"
	e.TotalMS, e.SlackMS = Millis(5*time.Millisecond), Millis(95*time.Millisecond)
	out["error"] = e
	c := req.NewReply(StatusError)
	c.Reason, c.Error = ReasonEngineCrashed, "the gateway process died twice while a model ran on this request"
	c.TotalMS, c.SlackMS = Millis(9*time.Second), Millis(51*time.Second)
	out["error engine_crashed"] = c
	return out
}

func TestSchemaBuiltReplies(t *testing.T) {
	s, _ := schema(t, replySchemaPath)
	replies := builtReplies(t)
	seen := map[Status]bool{}
	for name, r := range replies {
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := validate(s, b); err != nil {
			t.Errorf("%s: %s\n%v", name, b, err)
		}
		seen[r.Status] = true
	}
	for _, st := range Statuses() {
		if !seen[st] {
			t.Errorf("no reply of status %s built", st)
		}
	}
	for _, reason := range Reasons() {
		_, rejected := replies["rejected "+string(reason)]
		if _, errored := replies["error "+string(reason)]; !rejected && !errored && reason != ReasonBadTopic {
			t.Errorf("no rejection built for reason %s", reason)
		}
	}
}

// TestSchemaRefusesBadReplies checks that the reply schema's per-status rules
// bite: each of these replies breaks one documented rule.
func TestSchemaRefusesBadReplies(t *testing.T) {
	s, _ := schema(t, replySchemaPath)
	replies := builtReplies(t)
	bad := map[string]func() *Reply{
		"unknown status":          func() *Reply { r := *replies["ok"]; r.Status = "fine"; return &r },
		"v 2":                     func() *Reply { r := *replies["ok"]; r.V = 2; return &r },
		"no app":                  func() *Reply { r := *replies["ok"]; r.App = ""; return &r },
		"ok without class":        func() *Reply { r := *replies["ok"]; r.Class = nil; return &r },
		"ok not met":              func() *Reply { r := *replies["ok"]; r.DeadlineMet = Ptr(false); return &r },
		"ok with reason":          func() *Reply { r := *replies["ok"]; r.Reason = ReasonNoVariantInTime; return &r },
		"late met":                func() *Reply { r := *replies["late"]; r.DeadlineMet = Ptr(true); return &r },
		"confidence above 1":      func() *Reply { r := *replies["ok"]; r.Confidence = Ptr(1.5); return &r },
		"negative class":          func() *Reply { r := *replies["ok"]; r.Class = Ptr(-1); return &r },
		"degraded without reason": func() *Reply { r := *replies["degraded overload_shed"]; r.Reason = ""; return &r },
		"degraded with a rejection reason": func() *Reply {
			r := *replies["degraded overload_shed"]
			r.Reason = ReasonOverload
			return &r
		},
		"expired with class":       func() *Reply { r := *replies["expired past_hard_stop"]; r.Class = Ptr(1); return &r },
		"expired met":              func() *Reply { r := *replies["expired past_hard_stop"]; r.DeadlineMet = Ptr(true); return &r },
		"rejected without reason":  func() *Reply { r := *replies["rejected overload"]; r.Reason = ""; return &r },
		"rejected without error":   func() *Reply { r := *replies["rejected overload"]; r.Error = ""; return &r },
		"rejected, answer reason":  func() *Reply { r := *replies["rejected overload"]; r.Reason = ReasonPastHardStop; return &r },
		"rejected, unknown reason": func() *Reply { r := *replies["rejected overload"]; r.Reason = "too_busy"; return &r },
		"rejected with label":      func() *Reply { r := *replies["rejected overload"]; r.Label = "x"; return &r },
		"retry_after_ms 0":         func() *Reply { r := *replies["rejected overload"]; r.RetryAfterMS = Ptr[int64](0); return &r },
		"error, not internal":      func() *Reply { r := *replies["error"]; r.Reason = ReasonOverload; return &r },
		"ok with retry_after_ms":   func() *Reply { r := *replies["ok"]; r.RetryAfterMS = Ptr[int64](5); return &r },
	}
	for name, f := range bad {
		b, err := f().Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if validate(s, b) == nil {
			t.Errorf("%s: the schema accepts %s", name, b)
		}
	}
}

// enum returns the strings of the enum at path (keys) in a raw schema.
func enum(t *testing.T, raw map[string]any, path ...string) []string {
	t.Helper()
	var v any = raw
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("schema has no %v", path)
		}
		v = m[k]
	}
	list, ok := v.([]any)
	if !ok {
		t.Fatalf("schema has no enum at %v", path)
	}
	var out []string
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			t.Fatalf("%v: %v is not a string", path, e)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func sortedStrings[T ~string](in []T) []string {
	out := make([]string, len(in))
	for i, v := range in {
		out[i] = string(v)
	}
	slices.Sort(out)
	return out
}

// TestSchemaEnumsMatchProtocol fails when a reason code or status exists in this
// package but not in the reply schema, or the other way round.
func TestSchemaEnumsMatchProtocol(t *testing.T) {
	_, raw := schema(t, replySchemaPath)
	if got, want := enum(t, raw, "$defs", "rejectionReason", "enum"), sortedStrings(Reasons()); !slices.Equal(got, want) {
		t.Errorf("reply schema's rejectionReason enum\n%v\nwant protocol.Reasons()\n%v", got, want)
	}
	if got, want := enum(t, raw, "$defs", "answerReason", "enum"), sortedStrings(AnswerReasons()); !slices.Equal(got, want) {
		t.Errorf("reply schema's answerReason enum\n%v\nwant protocol.AnswerReasons()\n%v", got, want)
	}
	statuses := enum(t, raw, "$defs", "status", "enum")
	if want := sortedStrings(Statuses()); !slices.Equal(statuses, want) {
		t.Errorf("reply schema's status enum %v, want protocol.Statuses() %v", statuses, want)
	}
	var answered []string
	for _, s := range statuses {
		if Status(s).Answered() {
			answered = append(answered, s)
		}
	}
	if got := enum(t, raw, "$defs", "answeredStatus", "enum"); !slices.Equal(got, answered) {
		t.Errorf("schema's answeredStatus %v, want %v (Status.Answered)", got, answered)
	}
	for _, r := range append(Reasons(), AnswerReasons()...) {
		if !r.Known() {
			t.Errorf("%s is not Known", r)
		}
	}
}

// statusRow matches a row of docs/protocol.md's "Statuses" table: | `ok` | yes | ...
var statusRow = regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| (yes|no) \\|")

// TestDocStatusesMatchProtocol: the "Statuses" table of docs/protocol.md lists
// protocol.Statuses() in their order, and says "Has class" as Status.Answered does.
func TestDocStatusesMatchProtocol(t *testing.T) {
	md, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(md), "\n## Statuses\n")
	if !ok {
		t.Fatal("docs/protocol.md has no \"## Statuses\" section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	var got []Status
	for _, m := range statusRow.FindAllStringSubmatch(table, -1) {
		st := Status(m[1])
		got = append(got, st)
		if (m[2] == "yes") != st.Answered() {
			t.Errorf("docs/protocol.md: status %s: has class %q, but Answered() is %v", st, m[2], st.Answered())
		}
	}
	if !slices.Equal(got, Statuses()) {
		t.Errorf("docs/protocol.md's Statuses table lists %v, want protocol.Statuses() %v", got, Statuses())
	}
}

// TestSchemaFieldsMatchTypes fails when the schemas' properties drift from the
// Go types: the reply schema's properties are Reply's JSON fields and its
// required ones those without omitempty; the request schema's properties are
// the fields ParseRequest knows.
func TestSchemaFieldsMatchTypes(t *testing.T) {
	_, raw := schema(t, replySchemaPath)
	fields, required := jsonFields[Reply]()
	props := slices.Sorted(maps.Keys(raw["properties"].(map[string]any)))
	if !slices.Equal(props, fields) {
		t.Errorf("reply schema properties\n%v\nwant Reply's JSON fields\n%v", props, fields)
	}
	if got := enum(t, raw, "required"); !slices.Equal(got, required) {
		t.Errorf("reply schema requires %v, want Reply's fields without omitempty %v", got, required)
	}

	_, raw = schema(t, requestSchemaPath)
	reqProps := raw["properties"].(map[string]any)
	var f rawFields
	for k := range reqProps {
		if f.slot(k) == nil {
			t.Errorf("request schema property %q is not a request field", k)
		}
	}
	// rawFields has one slot per known field, plus the unknown field's name.
	if n := reflect.TypeFor[rawFields]().NumField() - 1; len(reqProps) != n {
		t.Errorf("request schema has %d properties, ParseRequest knows %d fields", len(reqProps), n)
	}
	if got := enum(t, raw, "required"); !slices.Equal(got, []string{fieldID}) {
		t.Errorf("request schema requires %v, want [id]", got)
	}
}
