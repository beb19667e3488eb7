package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRequestTopic(t *testing.T) {
	tests := []struct {
		prefix, topic, app, device string
		err                        error
	}{
		{"sneakgate", "sneakgate/req/fashion/cam-1", "fashion", "cam-1", nil},
		{"site/a", "site/a/req/fashion/cam.1_x", "fashion", "cam.1_x", nil},
		{"sneakgate", "sneakgate/req/fashion/cam 1", "fashion", "cam 1", ErrBadDevice},
		{"sneakgate", "sneakgate/req/fashion/" + strings.Repeat("x", 65), "fashion", strings.Repeat("x", 65), ErrBadDevice},
		{"sneakgate", "sneakgate/req/fashion", "", "", ErrNotRequestTopic},
		{"sneakgate", "sneakgate/req/fashion/a/b", "", "", ErrNotRequestTopic},
		{"sneakgate", "sneakgate/req//a", "", "", ErrNotRequestTopic},
		{"sneakgate", "other/req/fashion/a", "", "", ErrNotRequestTopic},
		{"sneakgate", "sneakgate/res/fashion/a", "", "", ErrNotRequestTopic},
		{"sneakgate", "sneakgatereq/fashion/a", "", "", ErrNotRequestTopic},
	}
	for _, tt := range tests {
		app, dev, err := ParseRequestTopic(tt.prefix, tt.topic)
		if !errors.Is(err, tt.err) || app != tt.app || dev != tt.device {
			t.Errorf("ParseRequestTopic(%q, %q) = %q, %q, %v; want %q, %q, %v", tt.prefix, tt.topic, app, dev, err, tt.app, tt.device, tt.err)
		}
	}
	if got := ReplyTopic("p", "a", "d"); got != "p/res/a/d" {
		t.Errorf("ReplyTopic = %q", got)
	}
	if got := RequestTopic("p", "a", "d"); got != "p/req/a/d" {
		t.Errorf("RequestTopic = %q", got)
	}
}

func TestCheckPrefix(t *testing.T) {
	for _, p := range []string{"sneakgate", "site/a", "a-b.c"} {
		if err := CheckPrefix(p); err != nil {
			t.Errorf("CheckPrefix(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"", "/a", "a/", "a//b", "a/+", "#", "$SYS", "a\x00b", "\xff"} {
		if err := CheckPrefix(p); !errors.Is(err, ErrBadPrefix) {
			t.Errorf("CheckPrefix(%q) = %v, want ErrBadPrefix", p, err)
		}
	}
}

func TestMatchFilter(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a/", true},
		{"a/+", "a/b/c", false},
		{"a/+/c", "a/b/c", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"#", "a/b", true},
		{"+", "a", true},
		{"+", "a/b", false},
		{"+/+", "/a", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/b/#", "a/bc/d", false},
	}
	for _, tt := range tests {
		if got := matchFilter(tt.filter, tt.topic); got != tt.want {
			t.Errorf("matchFilter(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestAllowList(t *testing.T) {
	for _, bad := range [][]string{{""}, {"{prefix}/res/{user}"}, {"a/#/b"}, {"a/b+"}, {"{prefix"}, {"x/{app}#"},
		// {device} must fill a whole level: "{device}_x" lets cam reach cam_x's topic.
		{"{prefix}/res/{app}/{device}_x"}, {"{prefix}/res/{app}/x{device}"}, {"{prefix}/{app}{device}/#"}, {"{device}-{app}"}} {
		if _, err := NewAllowList(bad); !errors.Is(err, ErrBadPattern) {
			t.Errorf("NewAllowList(%q) = %v, want ErrBadPattern", bad, err)
		}
	}
	for _, good := range []string{"{device}", "{device}/x", "x/{device}", "{prefix}/{device}/{app}-alerts"} {
		if _, err := NewAllowList([]string{good}); err != nil {
			t.Errorf("NewAllowList(%q): %v", good, err)
		}
	}
	al, err := NewAllowList([]string{"{prefix}/res/{app}/{device}", "{prefix}/dev/{device}/+", "alerts/{app}/#"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		topic string
		want  bool
	}{
		{"sg/res/fashion/cam1", true},
		{"sg/res/fashion/cam2", false},
		{"sg/res/other/cam1", false},
		{"sg/dev/cam1/inbox", true},
		{"sg/dev/cam1/inbox/x", false},
		{"sg/dev/cam2/inbox", false},
		{"alerts/fashion", true},
		{"alerts/fashion/a/b", true},
		{"alerts/other/a", false},
		{"alerts/fashion/+", false}, // wildcards are never a valid reply_to
		{"", false},
	}
	for _, tt := range tests {
		if got := al.Allows(tt.topic, "sg", "fashion", "cam1"); got != tt.want {
			t.Errorf("Allows(%q) = %v, want %v", tt.topic, got, tt.want)
		}
	}
	var none *AllowList
	if !none.Allows("sg/res/fashion/cam1", "sg", "fashion", "cam1") || none.Allows("sg/res/fashion/cam2", "sg", "fashion", "cam1") {
		t.Error("nil allow-list must allow exactly the own reply topic")
	}
	if got := none.Patterns(); len(got) != 1 || got[0] != DefaultReplyAllow[0] {
		t.Errorf("nil Patterns = %v", got)
	}
	empty, _ := NewAllowList(nil)
	if empty.Allows("sg/res/fashion/cam1", "sg", "fashion", "cam1") {
		t.Error("empty allow-list must allow nothing")
	}
}

// A reply_to that a pattern's wildcard admits must still be a topic the broker
// takes from the gateway: Mosquitto closes the connection of a client that
// publishes to a topic with a control character (U+0001-U+001F,
// U+007F-U+009F), a Unicode non-character (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF)
// or more than 200 '/' (checked against Mosquitto 2.0.11). A device that named
// one had the gateway disconnected each time it published that reply: for a
// journaled answer, again after every reconnect.
func TestAllowListRefusesTopicsTheBrokerRefuses(t *testing.T) {
	al, err := NewAllowList([]string{"{prefix}/res/{app}/{device}/+", "alerts/{app}/#"})
	if err != nil {
		t.Fatal(err)
	}
	deep := func(slashes int) string { return "alerts/fashion" + strings.Repeat("/x", slashes-1) }
	for _, tt := range []struct {
		topic string
		want  bool
	}{
		{"sg/res/fashion/cam1/inbox", true},
		{"sg/res/fashion/cam1/caf\u00e9", true},
		{"sg/res/fashion/cam1/\ufffd", true},
		{"sg/res/fashion/cam1/\U0001F600", true},
		{"sg/res/fashion/cam1/a b", true},
		{deep(200), true},
		{"sg/res/fashion/cam1/\x01", false},
		{"sg/res/fashion/cam1/a\tb", false},
		{"sg/res/fashion/cam1/\x1f", false},
		{"sg/res/fashion/cam1/\x7f", false},
		{"sg/res/fashion/cam1/\u0085", false},
		{"sg/res/fashion/cam1/\u009f", false},
		{"sg/res/fashion/cam1/\ufdd0", false},
		{"sg/res/fashion/cam1/\ufdef", false},
		{"sg/res/fashion/cam1/\ufffe", false},
		{"sg/res/fashion/cam1/\uffff", false},
		{"sg/res/fashion/cam1/\U0001FFFE", false},
		{"sg/res/fashion/cam1/\U0010FFFF", false},
		{deep(201), false},
		{deep(1000), false},
	} {
		if got := al.Allows(tt.topic, "sg", "fashion", "cam1"); got != tt.want {
			t.Errorf("Allows(%.40q, %d '/') = %v, want %v", tt.topic, strings.Count(tt.topic, "/"), got, tt.want)
		}
	}
}

// However wide the allow-list, a reply_to never names one of the gateway's own
// topics or a broker's: the request tree (the reply would come back to the
// gateway as a request from whichever device the topic names: TestReplyToOwnTopics
// in package gateway), the status and stats topics devices and operators read
// (the shipped ACL lets the gateway write them), or a topic starting with '$'.
func TestAllowListRefusesTheGatewaysOwnTopics(t *testing.T) {
	al, err := NewAllowList([]string{"#", "{prefix}/#", "$SYS/#", "$share/#"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		topic string
		want  bool
	}{
		{"sg/res/fashion/cam1", true},
		{"sg/res/fashion/cam2", true}, // allowed by "{prefix}/#": the operator's choice
		{"sg/results", true},
		{"sg/requests/x", true},
		{"sgx/req/fashion/cam1", true},
		{"other/sg/req/fashion/cam1", true},
		{"sg/req/fashion/cam1", false},
		{"sg/req/fashion/cam2", false},
		{"sg/req", false},
		{"sg/req/x/y/z", false},
		{"sg/status", false},
		{"sg/status/gw-2", false},
		{"sg/stats", false},
		{"sg/stats/gw-2", false},
		{"$SYS/broker/x", false},
		{"$share/g/sg/res/fashion/cam1", false},
		{"$x", false},
	} {
		if got := al.Allows(tt.topic, "sg", "fashion", "cam1"); got != tt.want {
			t.Errorf("Allows(%q) = %v, want %v", tt.topic, got, tt.want)
		}
	}
	// A prefix of several levels.
	if al.Allows("site/3/req/fashion/cam1", "site/3", "fashion", "cam1") || !al.Allows("site/3/res/fashion/cam1", "site/3", "fashion", "cam1") {
		t.Error("prefix site/3: the request tree allowed or the own reply topic refused")
	}
}

// A journaled reply topic that is not Publishable is replaced by the device's
// own reply topic; any other is kept, even one the allow-list does not name.
func TestJournaledReplyTo(t *testing.T) {
	env := Env{Prefix: "sg"}
	for topic, want := range map[string]string{
		"sg/res/fashion/cam1":           "sg/res/fashion/cam1",
		"sg/res/fashion/cam1/inbox":     "sg/res/fashion/cam1/inbox",
		"elsewhere/x":                   "elsewhere/x",
		"sg/res/fashion/cam1/\x01":      "sg/res/fashion/cam1",
		"sg/res/fashion/cam1/\ufffe":    "sg/res/fashion/cam1",
		"a" + strings.Repeat("/x", 201): "sg/res/fashion/cam1",
		"sg/req/fashion/cam2":           "sg/res/fashion/cam1",
		"sg/status":                     "sg/res/fashion/cam1",
		"$SYS/x":                        "sg/res/fashion/cam1",
		"":                              "sg/res/fashion/cam1",
	} {
		if got := env.JournaledReplyTo(topic, "fashion", "cam1"); got != want {
			t.Errorf("JournaledReplyTo(%.30q) = %q, want %q", topic, got, want)
		}
	}
	if got := (Env{}).JournaledReplyTo("sneakgate/req/a/d", "a", "d"); got != "sneakgate/res/a/d" {
		t.Errorf("default prefix: %q", got)
	}
}
