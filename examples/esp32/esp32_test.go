// Package esp32 holds the test of the ESP32 device example's portable C code
// (main/sneakgate_proto.c): the firmware itself needs ESP-IDF and is not built
// here. The test compiles sneakgate_proto.c with the host's C compiler into a
// small program (host/sg_host.c), has it write request payloads and checks them
// with the gateway's own parser (protocol.ParseRequest) and
// docs/schema/request.schema.json, and feeds it replies written by the gateway's
// encoder (protocol.Reply.AppendJSON, the bytes the gateway publishes).
package esp32

import (
	"bytes"
	"encoding/base64"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/sneakgate/sneakgate/protocol"
)

const (
	requestSchemaPath = "../../docs/schema/request.schema.json"
	replySchemaPath   = "../../docs/schema/reply.schema.json"
)

// cCompiler returns $CC, else cc, gcc or clang from PATH, or skips the test.
func cCompiler(t *testing.T) string {
	t.Helper()
	if cc := os.Getenv("CC"); cc != "" {
		return cc
	}
	for _, c := range []string{"cc", "gcc", "clang"} {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	t.Skip("no C compiler ($CC, cc, gcc or clang): the ESP32 example's portable C code is not tested")
	return ""
}

// buildHost compiles host/sg_host.c with main/sneakgate_proto.c: C99, every
// warning an error, with AddressSanitizer and UBSan where the compiler has them.
func buildHost(t *testing.T) string {
	t.Helper()
	cc := cCompiler(t)
	out := filepath.Join(t.TempDir(), "sg_host")
	base := []string{"-std=c99", "-pedantic", "-Wall", "-Wextra", "-Wshadow", "-Wconversion", "-Werror", "-O1",
		"-Imain", "host/sg_host.c", "main/sneakgate_proto.c", "-o", out}
	sanitized := append([]string{"-fsanitize=address,undefined", "-fno-sanitize-recover=all"}, base...)
	if b, err := exec.Command(cc, sanitized...).CombinedOutput(); err != nil {
		t.Logf("%s with sanitizers failed (%v), building without:\n%s", cc, err, b)
		if b, err := exec.Command(cc, base...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", cc, strings.Join(base, " "), err, b)
		}
	}
	return out
}

// run runs the host program; it returns stdout and the exit status.
func run(t *testing.T, host string, stdin []byte, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(host, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if stderr.Len() > 0 {
		t.Fatalf("sg_host %v wrote to stderr (a sanitizer?): %v\n%s", args, err, stderr.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func compileSchema(t *testing.T, path string) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	s, err := c.Compile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return s
}

func validate(s *jsonschema.Schema, doc []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// testByte is the host program's test value i as a byte.
func testByte(i int) byte { return byte((37*i + 11) % 256) }

type app struct {
	name string
	size int
	rng  [2]float64
}

var apps = []app{{"fashion", 784, [2]float64{0, 1}}, {"vad", 576, [2]float64{-1, 1}}}

func TestPortableC(t *testing.T) {
	host := buildHost(t)
	reqSchema := compileSchema(t, requestSchemaPath)
	replySchema := compileSchema(t, replySchemaPath)
	const prefix, device = "sneakgate", "esp32-cam-1"

	t.Run("topics", func(t *testing.T) {
		for _, a := range apps {
			out, code := run(t, host, nil, "topics", prefix, a.name, device)
			want := protocol.RequestTopic(prefix, a.name, device) + "\n" + protocol.ReplyTopic(prefix, a.name, device) + "\n"
			if code != 0 || out != want {
				t.Errorf("topics %s: exit %d, %q; want %q", a.name, code, out, want)
			}
		}
		for _, bad := range [][3]string{
			{"a/#", "fashion", device}, {"", "fashion", device}, {"$SYS", "fashion", device},
			{prefix, "Fashion", device}, {prefix, "fashion", "cam 1"}, {prefix, "fashion", strings.Repeat("d", 65)},
		} {
			if out, code := run(t, host, nil, "topics", bad[0], bad[1], bad[2]); code != 1 {
				t.Errorf("topics %q: exit %d, %q; want refused", bad, code, out)
			}
		}
	})

	t.Run("base64", func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for _, n := range []int{0, 1, 2, 3, 4, 5, 6, 7, 100, 784, 3136} {
			in := make([]byte, n)
			for i := range in {
				in[i] = byte(r.UintN(256))
			}
			out, code := run(t, host, in, "b64")
			if want := base64.StdEncoding.EncodeToString(in); code != 0 || out != want {
				t.Errorf("b64 of %d bytes: exit %d, %q; want %q", n, code, out, want)
			}
		}
	})

	t.Run("requests", func(t *testing.T) {
		now := time.Now()
		for _, a := range apps {
			env := protocol.Env{App: func(name string) (protocol.AppSpec, bool) {
				return protocol.AppSpec{InputSize: a.size, DefaultDeadline: 50 * time.Millisecond, Range: &a.rng}, name == a.name
			}}
			topic := protocol.RequestTopic(prefix, a.name, device)
			for _, enc := range []string{"u8", "f32"} {
				for _, c := range []struct {
					id       string
					deadline int64 // ms; 0: none
					sentAt   int64 // Unix ms; 0: none
				}{
					{"esp32-cam-1-000042", 150, now.UnixMilli()},
					{`q"uo\te-ü`, 32, 0},
					{"7", 0, now.UnixMilli() - 5},
					{strings.Repeat("i", protocol.MaxIDLen), 0, 0},
				} {
					args := []string{enc, c.id, strconv.FormatInt(c.deadline, 10), strconv.FormatInt(c.sentAt, 10), strconv.Itoa(a.size)}
					payload, code := run(t, host, nil, args...)
					if code != 0 {
						t.Errorf("%s %s: exit %d: %s", a.name, enc, code, payload)
						continue
					}
					if !strings.HasPrefix(payload, `{"id":`) {
						t.Errorf("%s %s: the id is not the first field: %.40s", a.name, enc, payload)
					}
					if err := validate(reqSchema, []byte(payload)); err != nil {
						t.Errorf("%s %s id %q: %s does not validate: %v", a.name, enc, c.id, requestSchemaPath, err)
					}
					req, rej := protocol.ParseRequest(topic, []byte(payload), now, env)
					if rej != nil {
						t.Errorf("%s %s id %q: the gateway rejects the payload: %v\n%.200s", a.name, enc, c.id, rej, payload)
						continue
					}
					if req.ID != c.id || req.App != a.name || req.Device != device {
						t.Errorf("%s %s: parsed id/app/device %q/%q/%q, want %q/%q/%q", a.name, enc, req.ID, req.App, req.Device, c.id, a.name, device)
					}
					start, budget := now, 50*time.Millisecond
					if c.sentAt != 0 {
						start = time.UnixMilli(c.sentAt)
						if !req.SentAt.Equal(start) {
							t.Errorf("%s %s: sent_at %v, want %v", a.name, enc, req.SentAt, start)
						}
					} else if !req.SentAt.IsZero() {
						t.Errorf("%s %s: sent_at %v although none was given", a.name, enc, req.SentAt)
					}
					if c.deadline != 0 {
						budget = time.Duration(c.deadline) * time.Millisecond
					}
					if want := start.Add(budget); !req.Deadline.Equal(want) {
						t.Errorf("%s %s: deadline %v, want %v", a.name, enc, req.Deadline, want)
					}
					for i, v := range req.Input {
						want := float32(testByte(i)) / 255 // what the host program sends as float32
						if enc == "u8" {
							want = protocol.U8Value(testByte(i), a.rng[0], a.rng[1])
						}
						if v != want {
							t.Errorf("%s %s: input[%d] = %v, want %v", a.name, enc, i, v, want)
							break
						}
					}
					if len(req.Input) != a.size {
						t.Errorf("%s %s: %d values, want %d", a.name, enc, len(req.Input), a.size)
					}
					if c.id == "esp32-cam-1-000042" {
						t.Logf("%s as %s: %d bytes (topic %d bytes)", a.name, map[string]string{"u8": "input_u8_b64", "f32": "input_b64"}[enc], len(payload), len(topic))
					}

					// SG_REQUEST_CAP is enough; one byte less than the payload and
					// its NUL is refused, not cut.
					exact := strconv.Itoa(len(payload) + 1)
					if out, code := run(t, host, nil, append(args, exact)...); code != 0 || out != payload {
						t.Errorf("%s %s in a buffer of %s bytes: exit %d, %.60q", a.name, enc, exact, code, out)
					}
					if out, code := run(t, host, nil, append(args, strconv.Itoa(len(payload)))...); code != 1 {
						t.Errorf("%s %s in a buffer one byte short: exit %d, %.60q; want refused", a.name, enc, code, out)
					}
				}
			}
		}
		for _, id := range []string{"", "a\tb", "a\x7fb", "a\u0085b", strings.Repeat("i", protocol.MaxIDLen+1)} {
			if out, code := run(t, host, nil, "u8", id, "100", "0", "784"); code != 1 {
				t.Errorf("id %q: exit %d, %.60q; want refused", id, code, out)
			}
		}
	})

	t.Run("replies", func(t *testing.T) {
		now := time.Now()
		env := protocol.Env{App: func(name string) (protocol.AppSpec, bool) {
			return protocol.AppSpec{InputSize: 784, DefaultDeadline: 50 * time.Millisecond, Range: &[2]float64{0, 1}}, name == "fashion"
		}}
		topic := protocol.RequestTopic(prefix, "fashion", device)
		request := func(id string, n int) ([]byte, *protocol.Request, *protocol.Rejection) {
			payload, code := run(t, host, nil, "u8", id, "150", strconv.FormatInt(now.UnixMilli(), 10), strconv.Itoa(n))
			if code != 0 {
				t.Fatalf("u8 %q: exit %d: %s", id, code, payload)
			}
			req, rej := protocol.ParseRequest(topic, []byte(payload), now, env)
			return []byte(payload), req, rej
		}
		_, req, rej := request("esp32-cam-1-000042", 784)
		if rej != nil {
			t.Fatal(rej)
		}
		_, quoted, rej := request(`q"uo\te`, 784)
		if rej != nil {
			t.Fatal(rej)
		}
		_, _, short := request("esp32-cam-1-000043", 783) // a real rejection: bad_input_size
		if short == nil {
			t.Fatal("783 values were not rejected")
		}

		ok := req.NewReply(protocol.StatusOK)
		ok.Class, ok.Label, ok.Confidence = protocol.Ptr(9), "Ankle boot", protocol.Ptr(0.9712345678)
		ok.Probs = []float64{0.001, 0, 0.002, 0, 0, 0.01, 0, 0.0157654322, 0, 0.9712345678}
		ok.Model, ok.Batch, ok.EstAccuracy = "cnn", 8, protocol.Ptr(0.93)
		ok.QueueMS, ok.InferMS, ok.TotalMS = protocol.Millis(1840*time.Microsecond), protocol.Millis(610*time.Microsecond), protocol.Millis(2730*time.Microsecond)
		ok.SlackMS, ok.DeadlineMet = protocol.Millis(147270*time.Microsecond), protocol.Ptr(true)

		degraded := quoted.NewReply(protocol.StatusDegraded)
		degraded.Reason = "no_variant_meets_deadline"
		degraded.Class, degraded.Label, degraded.Confidence = protocol.Ptr(0), `T-shirt/top "<é & ✓>"`, protocol.Ptr(0.5)
		degraded.Model, degraded.EstAccuracy, degraded.DeadlineMet = "sneakpeek-logistic", protocol.Ptr(0.71), protocol.Ptr(true)

		overload := req.Reject(protocol.ReasonOverload, "412 requests queued, about 158ms to drain; the deadline budget is 200ms", 158*time.Millisecond)
		expired := req.NewReply(protocol.StatusExpired)
		expired.Reason, expired.Error, expired.DeadlineMet = "expired_before_receipt", "sent_at + deadline_ms lay before receipt", protocol.Ptr(false)

		for _, c := range []struct {
			name  string
			reply *protocol.Reply
		}{{"ok", ok}, {"degraded", degraded}, {"rejected overload", overload}, {"expired", expired}, {"rejected bad_input_size", short.Reply()}} {
			b, err := c.reply.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(replySchema, b); err != nil {
				t.Fatalf("%s: the reply does not validate against %s: %v\n%s", c.name, replySchemaPath, err, b)
			}
			out, code := run(t, host, b, "reply")
			if code != 0 {
				t.Errorf("%s: the C parser refused %s: %s", c.name, b, out)
				continue
			}
			got := map[string]string{}
			for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
				k, v, _ := strings.Cut(line, "=")
				got[k] = v
			}
			r := c.reply
			want := map[string]string{
				"id": r.ID, "status": string(r.Status), "reason": string(r.Reason), "label": r.Label,
				"model": r.Model, "answered": btoa(r.Status.Answered()),
				"retryable": btoa(r.Reason == "overload" || r.Reason == "shutting_down" || r.Reason == "internal"),
			}
			if e := r.Error; len(e) > 127 {
				want["error"] = e[:127]
			} else {
				want["error"] = e
			}
			if r.Class != nil {
				want["class"] = strconv.Itoa(*r.Class)
			}
			if r.DeadlineMet != nil {
				want["deadline_met"] = btoa(*r.DeadlineMet)
			}
			if r.RetryAfterMS != nil {
				want["retry_after_ms"] = strconv.FormatInt(*r.RetryAfterMS, 10)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s: C parser's %s = %q, want %q\nreply: %s", c.name, k, got[k], v, b)
				}
			}
			if got["status_code"] == "0" {
				t.Errorf("%s: status %q not recognised", c.name, r.Status)
			}
			for k, p := range map[string]*float64{"confidence": r.Confidence, "est_accuracy": r.EstAccuracy, "total_ms": r.TotalMS} {
				if (p != nil) != (got[k] != "") {
					t.Errorf("%s: %s present %v, C parser %q", c.name, k, p != nil, got[k])
					continue
				}
				if p != nil {
					if v, err := strconv.ParseFloat(got[k], 64); err != nil || math.Abs(v-*p) > 1e-12*math.Max(1, math.Abs(*p)) {
						t.Errorf("%s: C parser's %s = %q, want %v", c.name, k, got[k], *p)
					}
				}
			}
		}

		// A reply with fields this version does not have (replies grow) still
		// parses; broken JSON does not.
		future := `{"v":1,"id":"x","app":"fashion","device":"esp32-cam-1","status":"ok","class":3,"label":"Dress",` +
			`"new_object":{"a":[1,{"b":null}],"c":"}"},"new_list":[true,false,-1.5e-3],"confidence":0.25}`
		if out, code := run(t, host, []byte(future), "reply"); code != 0 || !strings.Contains(out, "label=Dress\n") || !strings.Contains(out, "confidence=0.25\n") {
			t.Errorf("a reply with unknown fields: exit %d:\n%s", code, out)
		}
		// Escapes as any JSON encoder may write them: \u of 1-, 2-, 3- and 4-byte
		// UTF-8 (a surrogate pair), a lone surrogate (U+FFFD), and a label cut to
		// the 63 bytes of its buffer.
		escaped := `{"id":"\u0041\u00e9\u2713\ud83d\ude00\ud800x","status":"late","label":"` + strings.Repeat(`\\/`, 40) + `"}`
		if out, code := run(t, host, []byte(escaped), "reply"); code != 0 || !strings.Contains(out, "id=Aé✓😀\uFFFDx\n") ||
			!strings.Contains(out, "label="+strings.Repeat(`\/`, 31)+"\\\n") || !strings.Contains(out, "answered=1\n") {
			t.Errorf("a reply with escapes: exit %d:\n%s", code, out)
		}
		for _, bad := range []string{``, `[]`, `{"id":"x"`, `{"id":"x"}}`, `{"id":"x\q"}`, `{"id":"x","status":}`, "{\"id\":\"a\x01\"}"} {
			if out, code := run(t, host, []byte(bad), "reply"); code != 1 {
				t.Errorf("reply %q: exit %d, %q; want refused", bad, code, out)
			}
		}
	})
}

func btoa(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
