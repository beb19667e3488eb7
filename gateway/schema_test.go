package gateway

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/sneakgate/sneakgate/protocol"
)

const (
	replySchemaPath  = "../docs/schema/reply.schema.json"
	statusSchemaPath = "../docs/schema/status.schema.json"
	statsSchemaPath  = "../docs/schema/stats.schema.json"
)

// compileSchema compiles the JSON Schema at path.
func compileSchema(t testing.TB, path string) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(path, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// replySchema compiles docs/schema/reply.schema.json.
func replySchema(t testing.TB) *jsonschema.Schema { return compileSchema(t, replySchemaPath) }

// checkSchema fails the test unless raw, a message as published, validates
// against s, compiled from path.
func checkSchema(t testing.TB, s *jsonschema.Schema, path string, raw []byte) {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err == nil {
		err = s.Validate(inst)
	}
	if err != nil {
		t.Errorf("message does not match %s: %s\n%v", strings.TrimPrefix(path, "../"), raw, err)
	}
}

// checkReplySchema fails the test unless raw, a reply as published, validates
// against the reply schema.
func checkReplySchema(t testing.TB, s *jsonschema.Schema, raw []byte) {
	t.Helper()
	checkSchema(t, s, replySchemaPath, raw)
}

// TestStatusPayloadsMatchSchema: the offline statuses the gateway publishes
// (its last will among them) validate against the status schema. The online
// one, and stats, are checked as published in TestStatusAndStats.
func TestStatusPayloadsMatchSchema(t *testing.T) {
	s := compileSchema(t, statusSchemaPath)
	g := &Gateway{cfg: &Config{}}
	for _, r := range protocol.OfflineReasons() {
		checkSchema(t, s, statusSchemaPath, g.statusPayload(protocol.StateOffline, r))
	}
}

// TestBuiltRepliesMatchSchema builds the gateway's replies of every status and
// reason, published before and after the deadline, and restamped after a wait in
// the outbox, and validates them against the reply schema.
func TestBuiltRepliesMatchSchema(t *testing.T) {
	s := replySchema(t)
	t0 := time.UnixMilli(1_800_000_000_000)
	j := &job{App: "fashion", Device: "cam-1", ID: "r-1", Received: t0, Deadline: t0.Add(100 * time.Millisecond)}
	labels := []string{"zero", "one", "two"}
	probs := []float64{0.1, 0.7, 0.2}
	results := map[string]result{
		"ok": {Status: protocol.StatusOK, Probs: probs, Variant: "cnn", Batch: 4, EstAccuracy: 0.91,
			Start: t0.Add(time.Millisecond), Infer: 2 * time.Millisecond, Done: t0.Add(3 * time.Millisecond)},
		"late": {Status: protocol.StatusLate, Probs: probs, Variant: "cnn", Batch: 1, EstAccuracy: 0.91,
			Start: t0.Add(99 * time.Millisecond), Infer: 2 * time.Millisecond, Done: t0.Add(101 * time.Millisecond)},
		"error":    {Status: protocol.StatusError, Reason: string(protocol.ReasonInternal), Err: errBatch},
		"rejected": {Status: protocol.StatusRejected, Reason: string(protocol.ReasonUnknownApp)},
	}
	for _, r := range protocol.AnswerReasons() {
		results["expired "+string(r)] = result{Status: protocol.StatusExpired, Reason: string(r), Start: t0, Done: t0}
	}
	for _, r := range []string{string(protocol.ReasonNoVariantInTime), string(protocol.ReasonOverloadShed)} {
		results["degraded "+r] = result{Status: protocol.StatusDegraded, Reason: r, Probs: probs, EstAccuracy: 0.7, Start: t0, Done: t0}
	}
	for name, r := range results {
		for _, at := range []time.Duration{5 * time.Millisecond, 150 * time.Millisecond} {
			if t0.Add(at).Before(r.Done) {
				continue // published before it was decided
			}
			rep := buildReply(j, r, labels, "sneakpeek", t0.Add(at))
			b, err := rep.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			t.Run(fmt.Sprintf("%s at %v", name, at), func(t *testing.T) { checkReplySchema(t, s, b) })
			// The same reply after a wait in the outbox, published after the deadline.
			restamp(rep, j.Received, j.Deadline, t0.Add(time.Second))
			if b, err = rep.Marshal(); err != nil {
				t.Fatal(err)
			}
			t.Run(fmt.Sprintf("%s at %v restamped", name, at), func(t *testing.T) { checkReplySchema(t, s, b) })
		}
	}
}
