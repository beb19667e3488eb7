package tail

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMembersView(t *testing.T) {
	var out bytes.Buffer
	v := NewMembers(&out, "plant1", false)
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
	j := NewMembers(&out, "plant1", true)
	j.Message(msg("plant1/status/gw-b", `{"v":1,"state":"offline","reason":"shutdown"}`))
	j.Final(at)
	if got := strings.TrimSpace(out.String()); got != `{"member":"gw-b","status":{"v":1,"state":"offline","reason":"shutdown"}}` {
		t.Errorf("-json: %s", got)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
