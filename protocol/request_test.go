package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var testNow = time.UnixMilli(1_700_000_000_000)

func testEnv(t testing.TB) Env {
	allow, err := NewAllowList([]string{"{prefix}/res/{app}/{device}", "{prefix}/res/{app}/{device}/+", "ops/#"})
	if err != nil {
		t.Fatal(err)
	}
	apps := map[string]AppSpec{
		"tiny":      {InputSize: 3, DefaultDeadline: 250 * time.Millisecond},
		"ranged":    {InputSize: 2, DefaultDeadline: time.Second, Range: &[2]float64{0, 1}},
		"openrange": {InputSize: 2, DefaultDeadline: time.Second, Range: &[2]float64{0, math.Inf(1)}},
		"fashion":   {InputSize: 784, DefaultDeadline: 100 * time.Millisecond, Range: &[2]float64{0, 1}},
	}
	return Env{
		Prefix:     "sg",
		Limits:     Limits{MaxPayloadBytes: 64 << 10, MinDeadline: 2 * time.Millisecond, MaxDeadline: time.Minute},
		ReplyAllow: allow,
		App: func(a string) (AppSpec, bool) {
			s, ok := apps[a]
			return s, ok
		},
	}
}

func b64(vals ...float32) string {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return base64.StdEncoding.EncodeToString(b)
}

func TestParseRequestGood(t *testing.T) {
	env := testEnv(t)
	tests := []struct {
		name, topic, payload string
		wantInput            []float32
		wantDeadline         time.Time
		wantReplyTo          string
	}{
		{"array, relative deadline", "sg/req/tiny/dev-1", `{"id":"a","deadline_ms":50,"input":[1,2.5,-3e2]}`,
			[]float32{1, 2.5, -300}, testNow.Add(50 * time.Millisecond), "sg/res/tiny/dev-1"},
		{"default deadline, whitespace", "sg/req/tiny/d", " {\n\"input\" : [ 0 , 0 ,0 ] , \"id\":\"x\" }\t",
			[]float32{0, 0, 0}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/d"},
		{"absolute deadline", "sg/req/tiny/d", fmt.Sprintf(`{"id":"a","deadline":%d,"input":[1,2,3]}`, testNow.UnixMilli()+1500),
			[]float32{1, 2, 3}, testNow.Add(1500 * time.Millisecond), "sg/res/tiny/d"},
		{"b64", "sg/req/tiny/d", `{"id":"a","input_b64":"` + b64(1, -2, 0.1) + `"}`,
			[]float32{1, -2, 0.1}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/d"},
		{"b64 with escaped slash", "sg/req/tiny/d", `{"id":"a","input_b64":"` + strings.ReplaceAll(b64(1, -2, 6.0239027e-08), "/", `\/`) + `"}`,
			[]float32{1, -2, 6.0239027e-08}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/d"},
		{"null fields are absent", "sg/req/tiny/d", `{"id":"a","deadline":null,"input_b64":null,"reply_to":null,"input":[1,2,3]}`,
			[]float32{1, 2, 3}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/d"},
		{"version 1", "sg/req/tiny/d", `{"v":1,"id":"a","input":[1,2,3]}`,
			[]float32{1, 2, 3}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/d"},
		{"range bounds inclusive", "sg/req/ranged/d", `{"id":"a","input":[0,1]}`,
			[]float32{0, 1}, testNow.Add(time.Second), "sg/res/ranged/d"},
		{"reply_to own topic", "sg/req/tiny/d", `{"id":"a","reply_to":"sg/res/tiny/d","input":[1,2,3]}`,
			[]float32{1, 2, 3}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/d"},
		{"reply_to sub-topic", "sg/req/tiny/d", `{"id":"a","reply_to":"sg/res/tiny/d/cam2","input":[1,2,3]}`,
			[]float32{1, 2, 3}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/d/cam2"},
		{"reply_to ops", "sg/req/tiny/d", `{"id":"a","reply_to":"ops/x/y","input":[1,2,3]}`,
			[]float32{1, 2, 3}, testNow.Add(250 * time.Millisecond), "ops/x/y"},
		{"id 128 runes", "sg/req/tiny/d", `{"id":"` + strings.Repeat("é", 128) + `","input":[1,2,3]}`,
			[]float32{1, 2, 3}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/d"},
		{"device 64 chars", "sg/req/tiny/" + strings.Repeat("A.-_9", 12) + "abcd", `{"id":"a","input":[1,2,3]}`,
			[]float32{1, 2, 3}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/" + strings.Repeat("A.-_9", 12) + "abcd"},
		{"max deadline", "sg/req/tiny/d", `{"id":"a","deadline_ms":60000,"input":[1,2,3]}`,
			[]float32{1, 2, 3}, testNow.Add(time.Minute), "sg/res/tiny/d"},
		{"float32 rounding and subnormal underflow", "sg/req/tiny/d", `{"id":"a","input":[0.1,1e-50,3.4028235e38]}`,
			[]float32{0.1, 0, math.MaxFloat32}, testNow.Add(250 * time.Millisecond), "sg/res/tiny/d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, rej := ParseRequest(tt.topic, []byte(tt.payload), testNow, env)
			if rej != nil {
				t.Fatalf("rejected: %v", rej)
			}
			if len(req.Input) != len(tt.wantInput) {
				t.Fatalf("input %v, want %v", req.Input, tt.wantInput)
			}
			for i := range req.Input {
				if req.Input[i] != tt.wantInput[i] {
					t.Fatalf("input %v, want %v", req.Input, tt.wantInput)
				}
			}
			if !req.Deadline.Equal(tt.wantDeadline) {
				t.Errorf("deadline %v, want %v", req.Deadline, tt.wantDeadline)
			}
			if req.ReplyTo != tt.wantReplyTo {
				t.Errorf("reply_to %q, want %q", req.ReplyTo, tt.wantReplyTo)
			}
			if !req.Received.Equal(testNow) || req.App == "" || req.Device == "" || req.ID == "" {
				t.Errorf("bad request %+v", req)
			}
		})
	}
}

// A payload that is not an object says so in words a device author can act
// on, not in encoding/json's ("invalid character 'o' in literal null").
func TestParseRequestNotAnObjectSaysSo(t *testing.T) {
	for payload, want := range map[string]string{
		"nope":             `payload must be a JSON object, starting with '{'; it starts with "nope"`,
		"  [1,2,3]":        `it starts with "[1,2,3]"`,
		"null":             `it starts with "null"`,
		"":                 "payload must be a JSON object; it is empty",
		"hello world, too": `it starts with "hello wo..."`,
		`{"id":"t1",`:      "invalid JSON at byte",
	} {
		_, rej := ParseRequest("sg/req/tiny/d", []byte(payload), testNow, testEnv(t))
		if rej == nil || rej.Reason != ReasonBadJSON || !strings.Contains(rej.Message, want) {
			t.Errorf("%q: rejection %+v, want bad_json saying %q", payload, rej, want)
		}
	}
}

func TestParseRequestRejected(t *testing.T) {
	env := testEnv(t)
	const in = `"input":[1,2,3]`
	big := `{"id":"big","input":[` + strings.Repeat("0.123456789,", 6000) + `1]}`
	tests := []struct {
		name, topic, payload string
		reason               Reason
		wantID, wantReplyTo  string
	}{
		{"wrong prefix", "xx/req/tiny/d", `{}`, ReasonBadTopic, "", ""},
		{"prefix is a prefix of the level", "sgx/req/tiny/d", `{}`, ReasonBadTopic, "", ""},
		{"res not req", "sg/res/tiny/d", `{}`, ReasonBadTopic, "", ""},
		{"too many levels", "sg/req/tiny/d/e", `{}`, ReasonBadTopic, "", ""},
		{"too few levels", "sg/req/tiny", `{}`, ReasonBadTopic, "", ""},
		{"empty device", "sg/req/tiny/", `{}`, ReasonBadTopic, "", ""},
		{"empty app", "sg/req//d", `{}`, ReasonBadTopic, "", ""},
		{"device bad char", "sg/req/tiny/d v", `{"id":"q",` + in + `}`, ReasonBadDevice, "q", "sg/res/tiny/d v"},
		{"device too long", "sg/req/tiny/" + strings.Repeat("a", 65), `{"id":"q"}`, ReasonBadDevice, "q", "sg/res/tiny/" + strings.Repeat("a", 65)},
		{"device unicode", "sg/req/tiny/café", `{` + in + `}`, ReasonBadDevice, "", "sg/res/tiny/café"},
		{"unknown app", "sg/req/nope/d", `{"id":"q",` + in + `}`, ReasonUnknownApp, "q", "sg/res/nope/d"},
		{"payload too large", "sg/req/tiny/d", big, ReasonPayloadTooLarge, "big", "sg/res/tiny/d"},
		{"payload too large, id not first", "sg/req/tiny/d", `{"input":[` + strings.Repeat("1,", 40000) + `1],"id":"late"}`, ReasonPayloadTooLarge, "", "sg/res/tiny/d"},
		{"not json", "sg/req/tiny/d", `hello`, ReasonBadJSON, "", "sg/res/tiny/d"},
		{"empty payload", "sg/req/tiny/d", ``, ReasonBadJSON, "", "sg/res/tiny/d"},
		{"truncated json keeps id", "sg/req/tiny/d", `{"id":"t1","input":[1,2`, ReasonBadJSON, "t1", "sg/res/tiny/d"},
		{"json array", "sg/req/tiny/d", `[1,2,3]`, ReasonBadJSON, "", "sg/res/tiny/d"},
		{"json null", "sg/req/tiny/d", `null`, ReasonBadJSON, "", "sg/res/tiny/d"},
		{"json string", "sg/req/tiny/d", `"x"`, ReasonBadJSON, "", "sg/res/tiny/d"},
		{"trailing garbage", "sg/req/tiny/d", `{"id":"a",` + in + `} x`, ReasonBadJSON, "a", "sg/res/tiny/d"},
		{"missing id", "sg/req/tiny/d", `{` + in + `}`, ReasonBadID, "", "sg/res/tiny/d"},
		{"numeric id", "sg/req/tiny/d", `{"id":7,` + in + `}`, ReasonBadID, "7", "sg/res/tiny/d"},
		{"numeric id, negative fraction", "sg/req/tiny/d", `{"id":-4.25e1,` + in + `}`, ReasonBadID, "-4.25e1", "sg/res/tiny/d"},
		{"numeric id, not first", "sg/req/tiny/d", `{` + in + `,"id":42}`, ReasonBadID, "42", "sg/res/tiny/d"},
		{"numeric id, too long to echo", "sg/req/tiny/d", `{"id":` + strings.Repeat("9", 129) + `,` + in + `}`, ReasonBadID, "", "sg/res/tiny/d"},
		{"boolean id", "sg/req/tiny/d", `{"id":true,` + in + `}`, ReasonBadID, "", "sg/res/tiny/d"},
		{"object id", "sg/req/tiny/d", `{"id":{"n":1},` + in + `}`, ReasonBadID, "", "sg/res/tiny/d"},
		{"numeric id, unknown app", "sg/req/nope/d", `{"id":42,` + in + `}`, ReasonUnknownApp, "42", "sg/res/nope/d"},
		{"numeric id, truncated json", "sg/req/tiny/d", `{"id":42,"input":[1,2`, ReasonBadJSON, "42", "sg/res/tiny/d"},
		{"empty id", "sg/req/tiny/d", `{"id":"",` + in + `}`, ReasonBadID, "", "sg/res/tiny/d"},
		{"id 129 chars", "sg/req/tiny/d", `{"id":"` + strings.Repeat("x", 129) + `",` + in + `}`, ReasonBadID, "", "sg/res/tiny/d"},
		{"id control char", "sg/req/tiny/d", `{"id":"a\nb",` + in + `}`, ReasonBadID, "", "sg/res/tiny/d"},
		{"unknown field", "sg/req/tiny/d", `{"id":"a","deadine_ms":5,` + in + `}`, ReasonUnknownField, "a", "sg/res/tiny/d"},
		{"field names are case sensitive", "sg/req/tiny/d", `{"id":"a","Input":[1,2,3]}`, ReasonUnknownField, "a", "sg/res/tiny/d"},
		{"version 2", "sg/req/tiny/d", `{"v":2,"id":"a",` + in + `}`, ReasonUnsupportedVersion, "a", "sg/res/tiny/d"},
		{"version string", "sg/req/tiny/d", `{"v":"1","id":"a",` + in + `}`, ReasonUnsupportedVersion, "a", "sg/res/tiny/d"},
		{"reply_to other device", "sg/req/tiny/d", `{"id":"a","reply_to":"sg/res/tiny/e",` + in + `}`, ReasonReplyToNotAllowed, "a", "sg/res/tiny/d"},
		{"reply_to wildcard", "sg/req/tiny/d", `{"id":"a","reply_to":"sg/res/tiny/+",` + in + `}`, ReasonReplyToNotAllowed, "a", "sg/res/tiny/d"},
		{"reply_to hash", "sg/req/tiny/d", `{"id":"a","reply_to":"ops/#",` + in + `}`, ReasonReplyToNotAllowed, "a", "sg/res/tiny/d"},
		{"reply_to too deep", "sg/req/tiny/d", `{"id":"a","reply_to":"sg/res/tiny/d/x/y",` + in + `}`, ReasonReplyToNotAllowed, "a", "sg/res/tiny/d"},
		{"reply_to $SYS", "sg/req/tiny/d", `{"id":"a","reply_to":"$SYS/x",` + in + `}`, ReasonReplyToNotAllowed, "a", "sg/res/tiny/d"},
		{"reply_to empty", "sg/req/tiny/d", `{"id":"a","reply_to":"",` + in + `}`, ReasonReplyToNotAllowed, "a", "sg/res/tiny/d"},
		{"reply_to NUL", "sg/req/tiny/d", `{"id":"a","reply_to":"ops/\u0000",` + in + `}`, ReasonReplyToNotAllowed, "a", "sg/res/tiny/d"},
		{"reply_to not string", "sg/req/tiny/d", `{"id":"a","reply_to":5,` + in + `}`, ReasonReplyToNotAllowed, "a", "sg/res/tiny/d"},
		{"both deadlines", "sg/req/tiny/d", `{"id":"a","deadline_ms":5,"deadline":1,` + in + `}`, ReasonDeadlineConflict, "a", "sg/res/tiny/d"},
		{"rejection goes to allowed reply_to", "sg/req/tiny/d", `{"id":"a","reply_to":"ops/r","deadline_ms":5,"deadline":1,` + in + `}`, ReasonDeadlineConflict, "a", "ops/r"},
		{"deadline_ms zero", "sg/req/tiny/d", `{"id":"a","deadline_ms":0,` + in + `}`, ReasonBadDeadline, "a", "sg/res/tiny/d"},
		{"deadline_ms negative", "sg/req/tiny/d", `{"id":"a","deadline_ms":-5,` + in + `}`, ReasonBadDeadline, "a", "sg/res/tiny/d"},
		{"deadline_ms fractional", "sg/req/tiny/d", `{"id":"a","deadline_ms":5.5,` + in + `}`, ReasonBadDeadline, "a", "sg/res/tiny/d"},
		{"deadline_ms exponent", "sg/req/tiny/d", `{"id":"a","deadline_ms":5e2,` + in + `}`, ReasonBadDeadline, "a", "sg/res/tiny/d"},
		{"deadline_ms string", "sg/req/tiny/d", `{"id":"a","deadline_ms":"50",` + in + `}`, ReasonBadDeadline, "a", "sg/res/tiny/d"},
		{"deadline_ms below minimum", "sg/req/tiny/d", `{"id":"a","deadline_ms":1,` + in + `}`, ReasonDeadlineTooSoon, "a", "sg/res/tiny/d"},
		{"deadline_ms too far", "sg/req/tiny/d", `{"id":"a","deadline_ms":60001,` + in + `}`, ReasonDeadlineTooFar, "a", "sg/res/tiny/d"},
		{"deadline_ms overflows int64", "sg/req/tiny/d", `{"id":"a","deadline_ms":99999999999999999999999,` + in + `}`, ReasonDeadlineTooFar, "a", "sg/res/tiny/d"},
		{"deadline in the past", "sg/req/tiny/d", fmt.Sprintf(`{"id":"a","deadline":%d,%s}`, testNow.UnixMilli()-1, in), ReasonDeadlinePast, "a", "sg/res/tiny/d"},
		{"deadline now", "sg/req/tiny/d", fmt.Sprintf(`{"id":"a","deadline":%d,%s}`, testNow.UnixMilli(), in), ReasonDeadlinePast, "a", "sg/res/tiny/d"},
		{"deadline negative huge", "sg/req/tiny/d", `{"id":"a","deadline":-99999999999999999999999,` + in + `}`, ReasonDeadlinePast, "a", "sg/res/tiny/d"},
		{"deadline too soon", "sg/req/tiny/d", fmt.Sprintf(`{"id":"a","deadline":%d,%s}`, testNow.UnixMilli()+1, in), ReasonDeadlineTooSoon, "a", "sg/res/tiny/d"},
		{"deadline too far", "sg/req/tiny/d", fmt.Sprintf(`{"id":"a","deadline":%d,%s}`, testNow.UnixMilli()+60001, in), ReasonDeadlineTooFar, "a", "sg/res/tiny/d"},
		{"deadline far future", "sg/req/tiny/d", `{"id":"a","deadline":9223372036854775807,` + in + `}`, ReasonDeadlineTooFar, "a", "sg/res/tiny/d"},
		{"deadline in seconds", "sg/req/tiny/d", fmt.Sprintf(`{"id":"a","deadline":%d,%s}`, testNow.Unix()+1, in), ReasonDeadlinePast, "a", "sg/res/tiny/d"},
		{"deadline float", "sg/req/tiny/d", `{"id":"a","deadline":1.5,` + in + `}`, ReasonBadDeadline, "a", "sg/res/tiny/d"},
		{"both inputs", "sg/req/tiny/d", `{"id":"a","input_b64":"` + b64(1, 2, 3) + `",` + in + `}`, ReasonInputConflict, "a", "sg/res/tiny/d"},
		{"input and u8", "sg/req/ranged/d", `{"id":"a","input_u8_b64":"AAE=","input":[0,1]}`, ReasonInputConflict, "a", "sg/res/ranged/d"},
		{"b64 and u8", "sg/req/ranged/d", `{"id":"a","input_u8_b64":"AAE=","input_b64":"` + b64(0, 1) + `"}`, ReasonInputConflict, "a", "sg/res/ranged/d"},
		{"all three inputs", "sg/req/ranged/d", `{"id":"a","input_u8_b64":"AAE=","input_b64":"` + b64(0, 1) + `","input":[0,1]}`, ReasonInputConflict, "a", "sg/res/ranged/d"},
		{"u8 without a range", "sg/req/tiny/d", `{"id":"a","input_u8_b64":"AAEC"}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"u8 with an infinite range", "sg/req/openrange/d", `{"id":"a","input_u8_b64":"AAE="}`, ReasonBadInput, "a", "sg/res/openrange/d"},
		{"u8 short", "sg/req/ranged/d", `{"id":"a","input_u8_b64":"AA=="}`, ReasonBadInputSize, "a", "sg/res/ranged/d"},
		{"u8 long", "sg/req/ranged/d", `{"id":"a","input_u8_b64":"AAEC"}`, ReasonBadInputSize, "a", "sg/res/ranged/d"},
		{"u8 invalid", "sg/req/ranged/d", `{"id":"a","input_u8_b64":"!!!="}`, ReasonBadInput, "a", "sg/res/ranged/d"},
		{"u8 unpadded", "sg/req/ranged/d", `{"id":"a","input_u8_b64":"AAE"}`, ReasonBadInput, "a", "sg/res/ranged/d"},
		{"u8 url alphabet", "sg/req/ranged/d", `{"id":"a","input_u8_b64":"-_8="}`, ReasonBadInput, "a", "sg/res/ranged/d"},
		{"u8 not string", "sg/req/ranged/d", `{"id":"a","input_u8_b64":[0,1]}`, ReasonBadInput, "a", "sg/res/ranged/d"},
		{"u8 empty", "sg/req/ranged/d", `{"id":"a","input_u8_b64":""}`, ReasonBadInputSize, "a", "sg/res/ranged/d"},
		{"no input", "sg/req/tiny/d", `{"id":"a"}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"input not array", "sg/req/tiny/d", `{"id":"a","input":"1,2,3"}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"input object", "sg/req/tiny/d", `{"id":"a","input":{"x":1}}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"input nested", "sg/req/tiny/d", `{"id":"a","input":[[1,2,3]]}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"input string element", "sg/req/tiny/d", `{"id":"a","input":[1,"2",3]}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"input null element", "sg/req/tiny/d", `{"id":"a","input":[1,null,3]}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"input bool element", "sg/req/tiny/d", `{"id":"a","input":[1,2,true]}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"input empty", "sg/req/tiny/d", `{"id":"a","input":[]}`, ReasonBadInputSize, "a", "sg/res/tiny/d"},
		{"input short", "sg/req/tiny/d", `{"id":"a","input":[1,2]}`, ReasonBadInputSize, "a", "sg/res/tiny/d"},
		{"input long", "sg/req/tiny/d", `{"id":"a","input":[1,2,3,4]}`, ReasonBadInputSize, "a", "sg/res/tiny/d"},
		{"input overflows float32", "sg/req/tiny/d", `{"id":"a","input":[1,1e39,3]}`, ReasonNonFiniteInput, "a", "sg/res/tiny/d"},
		{"input overflows float64", "sg/req/tiny/d", `{"id":"a","input":[1,-1e400,3]}`, ReasonNonFiniteInput, "a", "sg/res/tiny/d"},
		{"b64 NaN", "sg/req/tiny/d", `{"id":"a","input_b64":"` + b64(1, float32(math.NaN()), 3) + `"}`, ReasonNonFiniteInput, "a", "sg/res/tiny/d"},
		{"b64 Inf", "sg/req/tiny/d", `{"id":"a","input_b64":"` + b64(float32(math.Inf(-1)), 2, 3) + `"}`, ReasonNonFiniteInput, "a", "sg/res/tiny/d"},
		{"b64 wrong count", "sg/req/tiny/d", `{"id":"a","input_b64":"` + b64(1, 2) + `"}`, ReasonBadInputSize, "a", "sg/res/tiny/d"},
		{"b64 partial float", "sg/req/tiny/d", `{"id":"a","input_b64":"AAAAAAAAAAAAAAA="}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"b64 invalid", "sg/req/tiny/d", `{"id":"a","input_b64":"!!!!"}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"b64 unpadded", "sg/req/tiny/d", `{"id":"a","input_b64":"` + strings.TrimRight(base64.StdEncoding.EncodeToString(make([]byte, 10)), "=") + `"}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"b64 url alphabet", "sg/req/tiny/d", `{"id":"a","input_b64":"` + base64.URLEncoding.EncodeToString([]byte{0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0, 0, 0}) + `"}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"b64 not string", "sg/req/tiny/d", `{"id":"a","input_b64":[1,2,3]}`, ReasonBadInput, "a", "sg/res/tiny/d"},
		{"sent_at string", "sg/req/tiny/d", `{"id":"a","sent_at":"1",` + in + `}`, ReasonBadSentAt, "a", "sg/res/tiny/d"},
		{"sent_at zero", "sg/req/tiny/d", `{"id":"a","sent_at":0,` + in + `}`, ReasonBadSentAt, "a", "sg/res/tiny/d"},
		{"sent_at fractional", "sg/req/tiny/d", `{"id":"a","sent_at":1.5,` + in + `}`, ReasonBadSentAt, "a", "sg/res/tiny/d"},
		{"id invalid UTF-8", "sg/req/tiny/d", "{\"id\":\"a\xff\"," + in + "}", ReasonBadID, "", "sg/res/tiny/d"},
		{"id lone surrogate", "sg/req/tiny/d", `{"id":"a\ud800",` + in + `}`, ReasonBadID, "", "sg/res/tiny/d"},
		{"out of range high", "sg/req/ranged/d", `{"id":"a","input":[0.5,1.0001]}`, ReasonInputOutOfRange, "a", "sg/res/ranged/d"},
		{"out of range low", "sg/req/ranged/d", `{"id":"a","input":[-0.0001,0.5]}`, ReasonInputOutOfRange, "a", "sg/res/ranged/d"},
		{"b64 out of range", "sg/req/ranged/d", `{"id":"a","input_b64":"` + b64(0.5, 255) + `"}`, ReasonInputOutOfRange, "a", "sg/res/ranged/d"},
	}
	seen := map[Reason]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, rej := ParseRequest(tt.topic, []byte(tt.payload), testNow, env)
			if req != nil || rej == nil {
				t.Fatalf("got request %+v, want rejection %s", req, tt.reason)
			}
			seen[rej.Reason] = true
			if rej.Reason != tt.reason {
				t.Fatalf("reason %s (%s), want %s", rej.Reason, rej.Message, tt.reason)
			}
			if rej.Message == "" {
				t.Error("empty message")
			}
			if rej.ID != tt.wantID {
				t.Errorf("id %q, want %q", rej.ID, tt.wantID)
			}
			if rej.ReplyTo != tt.wantReplyTo {
				t.Errorf("reply topic %q, want %q", rej.ReplyTo, tt.wantReplyTo)
			}
			if !errors.Is(rej, tt.reason) {
				t.Errorf("errors.Is(rej, %s) is false", tt.reason)
			}
			r := rej.Reply()
			if r.Status != StatusRejected || r.Reason != tt.reason || r.Error == "" || r.V != 1 {
				t.Errorf("bad reply %+v", r)
			}
		})
	}
	for _, r := range Reasons() {
		if !r.Retryable() && !seen[r] && r != ReasonEngineCrashed { // engine_crashed: decided at start-up, not by parsing
			t.Errorf("no test case for reason %s", r)
		}
	}
}

func TestParseRequestDefaults(t *testing.T) {
	env := Env{App: func(string) (AppSpec, bool) { return AppSpec{InputSize: 1, DefaultDeadline: time.Second}, true }}
	req, rej := ParseRequest("sneakgate/req/a/d", []byte(`{"id":"x","input":[1]}`), testNow, env)
	if rej != nil {
		t.Fatal(rej)
	}
	if req.ReplyTo != "sneakgate/res/a/d" || req.Budget() != time.Second {
		t.Errorf("got %+v", req)
	}
	// The default allow-list is only the device's own topic.
	_, rej = ParseRequest("sneakgate/req/a/d", []byte(`{"id":"x","reply_to":"sneakgate/res/a/d/x","input":[1]}`), testNow, env)
	if rej == nil || rej.Reason != ReasonReplyToNotAllowed {
		t.Errorf("got %v, want reply_to_not_allowed", rej)
	}
	// Default max payload is 256 KiB; default max deadline 10 minutes.
	_, rej = ParseRequest("sneakgate/req/a/d", make([]byte, 256<<10+1), testNow, env)
	if rej == nil || rej.Reason != ReasonPayloadTooLarge {
		t.Errorf("got %v, want payload_too_large", rej)
	}
	_, rej = ParseRequest("sneakgate/req/a/d", []byte(`{"id":"x","deadline_ms":600001,"input":[1]}`), testNow, env)
	if rej == nil || rej.Reason != ReasonDeadlineTooFar {
		t.Errorf("got %v, want deadline_too_far", rej)
	}
	// No app lookup: every app is unknown.
	_, rej = ParseRequest("sneakgate/req/a/d", []byte(`{"id":"x","input":[1]}`), testNow, Env{})
	if rej == nil || rej.Reason != ReasonUnknownApp {
		t.Errorf("got %v, want unknown_app", rej)
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	env := testEnv(t)
	in := make([]float32, 784)
	for i := range in {
		in[i] = float32(i%255) / 255
	}
	for _, b64 := range []bool{false, true} {
		p := Payload{ID: "r-1 \"quoted\"", DeadlineMS: DeadlineMS(1500 * time.Microsecond * 10), Input: in, B64: b64, ReplyTo: "ops/a"}
		req, rej := ParseRequest("sg/req/fashion/d1", p.Marshal(), testNow, env)
		if rej != nil {
			t.Fatalf("b64=%v: %v", b64, rej)
		}
		if req.ID != p.ID || req.ReplyTo != "ops/a" || req.Budget() != 15*time.Millisecond {
			t.Fatalf("b64=%v: %+v", b64, req)
		}
		for i := range in {
			if req.Input[i] != in[i] {
				t.Fatalf("b64=%v: input[%d] = %v, want %v", b64, i, req.Input[i], in[i])
			}
		}
	}
	abs := Payload{ID: "x", Deadline: testNow.Add(time.Second), Input: []float32{1, 2, 3}}
	req, rej := ParseRequest("sg/req/tiny/d", abs.Marshal(), testNow, env)
	if rej != nil || !req.Deadline.Equal(testNow.Add(time.Second)) {
		t.Fatalf("absolute: %v %v", req, rej)
	}
	nan := Payload{ID: "x", Input: []float32{1, float32(math.NaN()), 3}}
	if _, rej := ParseRequest("sg/req/tiny/d", nan.Marshal(), testNow, env); rej == nil || rej.Reason != ReasonBadInput {
		t.Fatalf("NaN as JSON array: %v", rej)
	}
	if DeadlineMS(0) != 0 || DeadlineMS(time.Nanosecond) != 1 || DeadlineMS(time.Millisecond) != 1 {
		t.Error("DeadlineMS rounding")
	}
}

// sent_at moves the origin of deadline_ms to the device's clock, so time spent in
// the broker counts; a clock ahead of the gateway's counts from receipt; a request
// whose end-to-end deadline passed before receipt is valid and expired on arrival.
func TestParseRequestSentAt(t *testing.T) {
	env := Env{App: func(string) (AppSpec, bool) { return AppSpec{InputSize: 1, DefaultDeadline: time.Second}, true }}
	parse := func(sentAt time.Time, extra string) (*Request, *Rejection) {
		return ParseRequest("sneakgate/req/a/d",
			[]byte(fmt.Sprintf(`{"id":"x","sent_at":%d%s,"input":[1]}`, sentAt.UnixMilli(), extra)), testNow, env)
	}
	req, rej := parse(testNow.Add(-300*time.Millisecond), `,"deadline_ms":500`)
	if rej != nil {
		t.Fatal(rej)
	}
	if got, want := req.Deadline, testNow.Add(200*time.Millisecond); !got.Equal(want) {
		t.Errorf("deadline %s, want %s (sent_at + deadline_ms)", got, want)
	}
	if !req.SentAt.Equal(testNow.Add(-300 * time.Millisecond)) {
		t.Errorf("SentAt %s", req.SentAt)
	}
	req, rej = parse(testNow.Add(-300*time.Millisecond), "")
	if rej != nil || !req.Deadline.Equal(testNow.Add(700*time.Millisecond)) {
		t.Errorf("default deadline from sent_at: %v %v", req, rej)
	}
	req, rej = parse(testNow.Add(5*time.Second), `,"deadline_ms":500`)
	if rej != nil || !req.Deadline.Equal(testNow.Add(500*time.Millisecond)) {
		t.Errorf("sent_at ahead of the gateway: %v %v, want deadline from receipt", req, rej)
	}
	req, rej = parse(testNow.Add(-2*time.Second), `,"deadline_ms":500`)
	if rej != nil || !req.ExpiredOnArrival() || !req.Deadline.Equal(testNow.Add(-1500*time.Millisecond)) {
		t.Fatalf("expired in transit: %+v %v, want a valid request expired on arrival", req, rej)
	}
	if req.Input != nil {
		t.Errorf("the input of a request expired on arrival was decoded")
	}
	if !bytes.Contains((&Payload{ID: "x", SentAt: testNow, Input: []float32{1}}).Marshal(),
		[]byte(fmt.Sprintf(`"sent_at":%d`, testNow.UnixMilli()))) {
		t.Error("Payload.Marshal does not write sent_at")
	}
}

// TestDecodeB64FloatsAgreesWithWholeDecode checks parseB64's chunked fast path
// against decoding the whole string: the same values whenever it takes the
// string, and it leaves every string the whole decode refuses or finds the wrong
// size to the slow path.
func TestDecodeB64FloatsAgreesWithWholeDecode(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(s []byte, size int) {
		t.Helper()
		got, ok := decodeB64Floats(s, size)
		raw, err := base64.StdEncoding.DecodeString(string(s))
		valid := err == nil && len(raw) == 4*size
		if ok != valid && !(valid && bytes.ContainsAny(s, "\r\n")) {
			t.Fatalf("%d values from %d bytes %.40q...: fast path %v, whole decode %v (%d bytes)", size, len(s), s, ok, err, len(raw))
		}
		if !ok {
			return
		}
		for i, v := range got {
			if math.Float32bits(v) != binary.LittleEndian.Uint32(raw[4*i:]) {
				t.Fatalf("%d values: value %d differs", size, i)
			}
		}
	}
	for _, size := range []int{1, 2, 3, 767, 768, 769, 784, 1536, 2000} {
		vals := make([]float32, size)
		for i := range vals {
			vals[i] = math.Float32frombits(rng.Uint32())
		}
		s := []byte(b64(vals...))
		check(s, size)
		check(s, size+1)
		check(s[:len(s)-4], size)
		for range 20 { // damage a byte, or put a padding or a newline in the middle
			bad := bytes.Clone(s)
			bad[rng.IntN(len(bad))] = "=\n!A"[rng.IntN(4)]
			check(bad, size)
		}
	}
}

// TestHasControl checks the eight-bytes-at-a-time scan against a byte loop.
func TestHasControl(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	naive := slicesIndexBelow
	for range 20000 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = byte(0x20 + rng.IntN(0xe0)) // printable or high
			if rng.IntN(30) == 0 {
				b[i] = byte(rng.IntN(0x21)) // a control byte, or the space
			}
		}
		if got, want := hasControl(b), naive(b); got != want {
			t.Fatalf("hasControl(%x) = %v, want %v", b, got, want)
		}
	}
}

func slicesIndexBelow(b []byte) bool {
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// Env.ReplyTo resolves a payload's reply topic as ParseRequest does, for a
// request rejected before its reply_to was read.
func TestEnvReplyTo(t *testing.T) {
	allow, err := NewAllowList([]string{"{prefix}/res/{app}/{device}", "custom/{app}/{device}"})
	if err != nil {
		t.Fatal(err)
	}
	env := Env{ReplyAllow: allow}
	for _, c := range []struct {
		payload, want string
		ok            bool
	}{
		{`{"id":"a","input":[1]}`, "sneakgate/res/app/dev", true},
		{`{"id":"a","reply_to":"custom/app/dev","input":[1]}`, "custom/app/dev", true},
		{`{"id":"a","reply_to":"custom/other/dev"}`, "", false},
		{`{"id":"a","reply_to":7}`, "", false},
		{`{"id":"a",`, "", false},
	} {
		if got, ok := env.ReplyTo([]byte(c.payload), "app", "dev"); got != c.want || ok != c.ok {
			t.Errorf("%s: %q, %v; want %q, %v", c.payload, got, ok, c.want, c.ok)
		}
	}
}
