package tail

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMembersView(t *testing.T) {
	var out bytes.Buffer
	v := NewMembers(&out, nil, "plant1", false)
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	since := at.Add(-90 * time.Second).UnixMilli()
	msg := func(topic, payload string) Message { return Message{Topic: topic, Payload: []byte(payload), At: at} }
	online := `{"v":1,"state":"online","version":"1.2.0","policy":"sneakpeek","apps":["fashion","vad"],"since":` + itoa(since) + `}`
	for _, c := range []struct {
		m       Message
		printed bool
	}{
		{msg("plant1/status/gw-b", `{"v":1,"state":"offline","reason":"lost"}`), true},
		{msg("plant1/status/gw-a", online), true},
		{msg("plant1/status", online), true},              // a gateway outside a group
		{msg("plant1/statuses/x", online), false},         // another topic
		{msg("plant1/status/gw-c", `{"hello":1}`), false}, // not a status
		{msg("plant1/status/gw-d", online), true},         // a member that will be removed
		{msg("plant1/status/gw-d", ``), false},            // cleared
		{msg("plant1/status/gw-b", `{"v":1,"state":"online","version":"1.2.0","policy":"edf","since":`+itoa(since)+`}`), true},
	} {
		if got := v.Message(c.m); got != c.printed {
			t.Errorf("%s %q: printed %v, want %v", c.m.Topic, c.m.Payload, got, c.printed)
		}
	}
	if v.Printed() != 5 {
		t.Errorf("printed %d statuses, want 5", v.Printed())
	}
	out.Reset()
	v.Summary(at)
	want := "-- members: 3 of 3 online\n" +
		"12:00:00.000 (no group)               online  version=1.2.0 policy=sneakpeek apps=fashion,vad up=1m30s\n" +
		"12:00:00.000 gw-a                     online  version=1.2.0 policy=sneakpeek apps=fashion,vad up=1m30s\n" +
		"12:00:00.000 gw-b                     online  version=1.2.0 policy=edf apps= up=1m30s\n"
	if out.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", out.String(), want)
	}

	out.Reset()
	j := NewMembers(&out, nil, "plant1", true)
	j.Message(msg("plant1/status/gw-b", `{"v":1,"state":"offline","reason":"shutdown"}`))
	j.Final(at)
	if got := strings.TrimSpace(out.String()); got != `{"member":"gw-b","status":{"v":1,"state":"offline","reason":"shutdown"}}` {
		t.Errorf("-json: %s", got)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestMembersJSONLines: with -json, stdout carries JSON lines only: a cleared
// member is a {"member":...,"cleared":true} record, and a payload that is not a
// gateway status is a diagnostic on the diagnostics writer (stderr), as the reply
// printer's malformed payloads are.
func TestMembersJSONLines(t *testing.T) {
	var out, diag bytes.Buffer
	v := NewMembers(&out, &diag, "sneakgate", true)
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, m := range []Message{
		{Topic: "sneakgate/status/gw-a", Payload: []byte(`{"v":1,"state":"online"}`), At: at},
		{Topic: "sneakgate/status/gw-a", At: at},                                 // cleared
		{Topic: "sneakgate/status/gw-c", At: at},                                 // cleared, never seen: nothing
		{Topic: "sneakgate/status/gw-b", Payload: []byte(`{"hello":1}`), At: at}, // not a status
		{Topic: "sneakgate/status", Payload: []byte(`{"v":1,"state":"offline","reason":"shutdown"}`), At: at},
		{Topic: "sneakgate/status", At: at}, // the gateway outside a group, cleared
	} {
		v.Message(m)
	}
	v.Summary(at)
	v.Final(at)
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("-json stdout line is not JSON: %q", line)
		}
		lines = append(lines, line)
	}
	want := []string{
		`{"member":"gw-a","status":{"v":1,"state":"online"}}`,
		`{"member":"gw-a","cleared":true}`,
		`{"member":"","status":{"v":1,"state":"offline","reason":"shutdown"}}`,
		`{"member":"","cleared":true}`,
	}
	if !slices.Equal(lines, want) {
		t.Errorf("-json stdout:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if d := diag.String(); !strings.Contains(d, "gw-b: not a gateway status") || strings.Count(d, "\n") != 1 {
		t.Errorf("diagnostics %q, want one line about gw-b's payload", d)
	}
	if v.Printed() != 2 {
		t.Errorf("printed %d statuses, want 2 (a cleared member is not a status)", v.Printed())
	}

	// Without -json, both stay on stdout as text lines.
	out.Reset()
	diag.Reset()
	v = NewMembers(&out, &diag, "sneakgate", false)
	for _, m := range []Message{
		{Topic: "sneakgate/status/gw-a", Payload: []byte(`{"v":1,"state":"online"}`), At: at},
		{Topic: "sneakgate/status/gw-a", At: at},
		{Topic: "sneakgate/status/gw-b", Payload: []byte(`{"hello":1}`), At: at},
	} {
		v.Message(m)
	}
	if s := out.String(); !strings.Contains(s, "12:00:00.000 gw-a cleared\n") || !strings.Contains(s, "gw-b: not a gateway status") || diag.Len() > 0 {
		t.Errorf("text stdout %q, diagnostics %q", s, diag.String())
	}
}
