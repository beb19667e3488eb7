package tail

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/sneakgate/sneakgate/protocol"
)

// Members is the operator's view of a group of gateways (mqtt.shared_group):
// it reads the retained status topics, {prefix}/status/{member} of each member
// and {prefix}/status of a gateway outside a group, prints a line per status it
// receives, and, at every summary, a table of the members as last seen with a
// count of those online. The broker delivers the retained statuses at once on
// subscribing, so the first summary is the group as it stands.
type Members struct {
	w      io.Writer
	d      io.Writer // payloads that are not statuses
	prefix string
	json   bool
	seen   map[string]member
	names  []string
	count  int64
	line   []byte
}

type member struct {
	st protocol.GatewayStatus
	at time.Time
}

// NewMembers returns the view for topic prefix, writing to w. With asJSON, w
// gets JSON lines only: each status as {"member":...,"status":{...}} and a
// cleared member as {"member":...,"cleared":true}; a payload that is not a
// status is reported on diag instead (nil: discarded). Without, everything goes
// to w.
func NewMembers(w, diag io.Writer, prefix string, asJSON bool) *Members {
	d := w
	if asJSON {
		d = cmp.Or[io.Writer](diag, io.Discard)
	}
	return &Members{w: w, d: d, prefix: prefix, json: asJSON, seen: map[string]member{}}
}

// MembersFilters are the topic filters of the members' statuses:
// {prefix}/status and {prefix}/status/+. (A "#" filter matches its parent
// level too, but not on every broker: the embedded one does not.)
func MembersFilters(prefix string) []string {
	return []string{prefix + "/status", prefix + "/status/+"}
}

// Message records and prints a status message; an empty retained payload (a
// member's status cleared) removes the member. It reports whether it printed
// a status.
func (v *Members) Message(m Message) bool {
	name, ok := strings.CutPrefix(m.Topic, v.prefix+"/status")
	if !ok || (name != "" && !strings.HasPrefix(name, "/")) {
		return false
	}
	name = strings.TrimPrefix(name, "/")
	if len(m.Payload) == 0 {
		if _, known := v.seen[name]; known {
			delete(v.seen, name)
			v.names = slices.DeleteFunc(v.names, func(n string) bool { return n == name })
			if v.json {
				b, _ := json.Marshal(struct {
					Member  string `json:"member"`
					Cleared bool   `json:"cleared"`
				}{name, true})
				v.w.Write(append(b, '\n'))
			} else {
				fmt.Fprintf(v.w, "%s %s cleared\n", m.At.Format("15:04:05.000"), label(name))
			}
		}
		return false
	}
	var st protocol.GatewayStatus
	if err := json.Unmarshal(m.Payload, &st); err != nil || st.State == "" {
		fmt.Fprintf(v.d, "%s %s: not a gateway status: %.80q\n", m.At.Format("15:04:05.000"), label(name), m.Payload)
		return false
	}
	if _, known := v.seen[name]; !known {
		v.names = append(v.names, name)
		slices.Sort(v.names)
	}
	v.seen[name] = member{st: st, at: m.At}
	v.count++
	if v.json {
		b, _ := json.Marshal(struct {
			Member string                 `json:"member"`
			Status protocol.GatewayStatus `json:"status"`
		}{name, st})
		v.w.Write(append(b, '\n'))
		return true
	}
	v.line = appendMember(v.line[:0], m.At, name, st, m.At)
	v.w.Write(v.line)
	return true
}

// Printed is the number of statuses printed.
func (v *Members) Printed() int64 { return v.count }

// Summary prints the table of members.
func (v *Members) Summary(now time.Time) { v.table(now, "members") }

// Final prints the table once more.
func (v *Members) Final(now time.Time) { v.table(now, "members at exit") }

func (v *Members) table(now time.Time, what string) {
	online := 0
	for _, n := range v.names {
		if v.seen[n].st.State == "online" {
			online++
		}
	}
	if v.json {
		return // the JSON lines are the output; a table would break them
	}
	fmt.Fprintf(v.w, "-- %s: %d of %d online\n", what, online, len(v.names))
	for _, n := range v.names {
		v.w.Write(appendMember(nil, v.seen[n].at, n, v.seen[n].st, now))
	}
}

// label names a member; the gateway outside a group publishes on {prefix}/status.
func label(name string) string {
	if name == "" {
		return "(no group)"
	}
	return name
}

// appendMember formats one member: when its status arrived, its name, state
// (and reason), and for an online one its version, policy, applications and
// how long it has been online at now.
func appendMember(b []byte, at time.Time, name string, st protocol.GatewayStatus, now time.Time) []byte {
	b = fmt.Appendf(b, "%s %-24s %-7s", at.Format("15:04:05.000"), label(name), st.State)
	if st.Reason != "" {
		b = fmt.Appendf(b, " reason=%s", st.Reason)
	}
	if st.State == "online" {
		b = fmt.Appendf(b, " version=%s policy=%s apps=%s", st.Version, st.Policy, strings.Join(st.Apps, ","))
		if st.Since > 0 {
			b = fmt.Appendf(b, " up=%s", now.Sub(time.UnixMilli(st.Since)).Round(time.Second))
		}
	}
	return append(b, '\n')
}
