package protocol

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// DefaultPrefix is the topic prefix used when none is configured.
const DefaultPrefix = "sneakgate"

// MaxDeviceLen is the longest device name, in bytes.
const MaxDeviceLen = 64

// maxTopicLen is MQTT's limit on a topic name, in bytes.
const maxTopicLen = 65535

// Errors returned by ParseRequestTopic, CheckPrefix and NewAllowList.
var (
	// ErrNotRequestTopic is returned when a topic is not {prefix}/req/{app}/{device}
	// with two non-empty levels after "req".
	ErrNotRequestTopic = errors.New("not a request topic")
	// ErrBadDevice is returned when the device level is not 1-64 of [A-Za-z0-9_.-].
	ErrBadDevice = errors.New("bad device name")
	// ErrBadPrefix is returned by CheckPrefix for an unusable topic prefix.
	ErrBadPrefix = errors.New("bad topic prefix")
	// ErrBadPattern is wrapped by NewAllowList errors.
	ErrBadPattern = errors.New("bad reply_to pattern")
)

// ValidDevice reports whether s is a valid device name: 1 to 64 characters of
// [A-Za-z0-9_.-].
func ValidDevice(s string) bool {
	if len(s) == 0 || len(s) > MaxDeviceLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// CheckPrefix returns an error wrapping ErrBadPrefix unless p is a usable topic
// prefix: non-empty, a valid topic name (validTopicName), no leading or trailing
// '/', no empty level and not starting with '$'.
func CheckPrefix(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%w: empty", ErrBadPrefix)
	case !validTopicName(p):
		return fmt.Errorf("%w: %q is not a valid topic name (UTF-8, no + or #, no control characters, at most 200 '/')", ErrBadPrefix, p)
	case p[0] == '$':
		return fmt.Errorf("%w: %q starts with $ (reserved by brokers)", ErrBadPrefix, p)
	case p[0] == '/' || p[len(p)-1] == '/' || strings.Contains(p, "//"):
		return fmt.Errorf("%w: %q has an empty topic level", ErrBadPrefix, p)
	}
	return nil
}

// RequestTopic returns {prefix}/req/{app}/{device}.
func RequestTopic(prefix, app, device string) string {
	return prefix + "/req/" + app + "/" + device
}

// ReplyTopic returns {prefix}/res/{app}/{device}, the device's own reply topic.
func ReplyTopic(prefix, app, device string) string {
	return prefix + "/res/" + app + "/" + device
}

// RequestFilter returns the MQTT filter the gateway subscribes to: {prefix}/req/+/+.
func RequestFilter(prefix string) string { return prefix + "/req/+/+" }

// ReplyFilter returns the filter a device subscribes to for its replies from every
// application: {prefix}/res/+/{device}.
func ReplyFilter(prefix, device string) string { return prefix + "/res/+/" + device }

// ParseRequestTopic splits topic = {prefix}/req/{app}/{device}. It returns
// ErrNotRequestTopic when the topic does not have that shape (the app and device
// levels must be non-empty), and ErrBadDevice, together with the app and the raw
// device level, when the device name is invalid. It does not check that the app
// exists.
func ParseRequestTopic(prefix, topic string) (app, device string, err error) {
	rest, ok := strings.CutPrefix(topic, prefix)
	if !ok {
		return "", "", ErrNotRequestTopic
	}
	rest, ok = strings.CutPrefix(rest, "/req/")
	if !ok {
		return "", "", ErrNotRequestTopic
	}
	app, device, ok = strings.Cut(rest, "/")
	if !ok || app == "" || device == "" || strings.IndexByte(device, '/') >= 0 {
		return "", "", ErrNotRequestTopic
	}
	if !ValidDevice(device) {
		return app, device, ErrBadDevice
	}
	return app, device, nil
}

// maxTopicSlashes is the most '/' a topic name may hold: Mosquitto refuses a
// publish to a deeper topic (its TOPIC_HIERARCHY_LIMIT) by closing the
// publisher's connection.
const maxTopicSlashes = 200

// validTopicName reports whether t may be published to: 1 to 65535 bytes of valid
// UTF-8 without the wildcards + and #, without a character a broker refuses
// (brokerRefuses) and with at most maxTopicSlashes '/'. A broker closes the
// connection of a client that publishes to a topic it refuses, so a reply_to
// that is not such a topic would cut the gateway off, again with every resend.
func validTopicName(t string) bool {
	if len(t) == 0 || len(t) > maxTopicLen || !utf8.ValidString(t) {
		return false
	}
	return strings.IndexAny(t, "+#") < 0 && strings.IndexFunc(t, brokerRefuses) < 0 &&
		strings.Count(t, "/") <= maxTopicSlashes
}

// brokerRefuses reports whether Mosquitto refuses a topic holding r as malformed
// UTF-8: NUL (MQTT forbids it), the other control characters U+0001-U+001F and
// U+007F-U+009F (MQTT says a topic should not hold them) and the Unicode
// non-characters U+FDD0-U+FDEF, U+xFFFE and U+xFFFF.
func brokerRefuses(r rune) bool {
	return r <= 0x1f || (r >= 0x7f && r <= 0x9f) || (r >= 0xfdd0 && r <= 0xfdef) || r&0xfffe == 0xfffe
}

// DefaultReplyAllow is the default reply_to allow-list: only the device's own
// reply topic.
var DefaultReplyAllow = []string{"{prefix}/res/{app}/{device}"}

// AllowList is a compiled reply_to allow-list: MQTT topic filters (with + and #
// wildcards) in which the placeholders {prefix}, {app} and {device} stand for the
// request's prefix, application and device. A nil *AllowList allows only the
// device's own reply topic. An AllowList is immutable and safe for concurrent use.
type AllowList struct {
	patterns []string
}

// NewAllowList compiles patterns. It returns an error wrapping ErrBadPattern, naming
// the pattern, when one is empty, uses an unknown placeholder, or is not a valid
// MQTT filter once the placeholders are filled (a wildcard must fill a whole level;
// # must be last). An empty list allows nothing.
func NewAllowList(patterns []string) (*AllowList, error) {
	for i, p := range patterns {
		if p == "" {
			return nil, fmt.Errorf("%w: [%d] is empty", ErrBadPattern, i)
		}
		rest := p
		for {
			j := strings.IndexByte(rest, '{')
			if j < 0 {
				break
			}
			k := strings.IndexByte(rest[j:], '}')
			if k < 0 {
				return nil, fmt.Errorf("%w: [%d] %q: unclosed {", ErrBadPattern, i, p)
			}
			switch ph := rest[j : j+k+1]; ph {
			case "{device}":
				// A whole level: in "{device}_x" device cam would reach device
				// cam_x's topics (device names are [A-Za-z0-9_.-]).
				at := len(p) - len(rest) + j // in p
				end := at + len(ph)
				if (at > 0 && p[at-1] != '/') || (end < len(p) && p[end] != '/') {
					return nil, fmt.Errorf("%w: [%d] %q: {device} must fill a whole level (another device's name could extend it)", ErrBadPattern, i, p)
				}
			case "{prefix}", "{app}":
			default:
				return nil, fmt.Errorf("%w: [%d] %q: unknown placeholder %s (want {prefix}, {app} or {device})", ErrBadPattern, i, p, ph)
			}
			rest = rest[j+k+1:]
		}
		if !validFilter(expand(p, "p", "a", "d")) {
			return nil, fmt.Errorf("%w: [%d] %q: not a valid MQTT topic filter", ErrBadPattern, i, p)
		}
	}
	return &AllowList{patterns: append([]string(nil), patterns...)}, nil
}

// Patterns returns a copy of the list's patterns.
func (a *AllowList) Patterns() []string {
	if a == nil {
		return append([]string(nil), DefaultReplyAllow...)
	}
	return append([]string(nil), a.patterns...)
}

// Allows reports whether a request from device for app may name topic as its
// reply_to. topic must be a valid topic name (no wildcards) and none of the
// gateway's own topics or a broker's (ownTopic), whatever the patterns say; the
// device's own reply topic is allowed by a nil list.
func (a *AllowList) Allows(topic, prefix, app, device string) bool {
	if !Publishable(topic, prefix) {
		return false
	}
	if a == nil {
		return topic == ReplyTopic(prefix, app, device)
	}
	for _, p := range a.patterns {
		if matchFilter(expand(p, prefix, app, device), topic) {
			return true
		}
	}
	return false
}

// Publishable reports whether a reply may be published to topic under prefix:
// a valid topic name a broker takes (validTopicName) and none of the
// gateway's own topics or a broker's (ownTopic). Every reply_to an AllowList
// allows is; a reply topic journaled by a version that allowed more may not
// be (Env.JournaledReplyTo).
func Publishable(topic, prefix string) bool {
	return validTopicName(topic) && !ownTopic(topic, prefix)
}

// ownTopic reports whether t is a topic no reply may go to: the gateway's
// request tree {prefix}/req/... (the reply would come back to the gateway as
// a request from whichever device t names), its status and stats topics
// {prefix}/status[/...] and {prefix}/stats[/...] (which devices and operators
// read, and the shipped ACL lets the gateway write), or a topic starting with
// '$' (the broker's: $SYS, $share).
func ownTopic(t, prefix string) bool {
	if t[0] == '$' {
		return true
	}
	rest, ok := strings.CutPrefix(t, prefix+"/")
	if !ok {
		return false
	}
	level, _, _ := strings.Cut(rest, "/")
	return level == "req" || level == "status" || level == "stats"
}

func expand(p, prefix, app, device string) string {
	if strings.IndexByte(p, '{') < 0 {
		return p
	}
	r := strings.NewReplacer("{prefix}", prefix, "{app}", app, "{device}", device)
	return r.Replace(p)
}

// validFilter reports whether f is a valid MQTT topic filter.
func validFilter(f string) bool {
	if len(f) == 0 || len(f) > maxTopicLen || !utf8.ValidString(f) || strings.IndexByte(f, 0) >= 0 {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && len(l) != 1 {
			return false
		}
		if l == "#" && i != len(levels)-1 {
			return false
		}
	}
	return true
}

// matchFilter reports whether topic name t matches MQTT filter f. Following MQTT,
// a topic starting with '$' is not matched by a wildcard in the first level.
func matchFilter(f, t string) bool {
	if len(t) > 0 && t[0] == '$' && len(f) > 0 && (f[0] == '+' || f[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(f, "/")
		switch fl {
		case "#":
			return true
		case "+":
		default:
			tl, _, _ := strings.Cut(t, "/")
			if tl != fl {
				return false
			}
		}
		_, trest, tmore := strings.Cut(t, "/")
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// "a/#" matches "a": the remaining filter must be exactly "#".
			return frest == "#"
		case !fmore:
			return false
		}
		f, t = frest, trest
	}
}
