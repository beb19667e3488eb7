package protocol

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestDeadlineInSecondsHint: an absolute deadline sent in Unix seconds is
// rejected as deadline_past with a hint; one that is merely past is not given
// the hint.
func TestDeadlineInSecondsHint(t *testing.T) {
	env := testEnv(t)
	const hint = "looks like seconds; deadline is Unix milliseconds"
	tests := []struct {
		deadline int64
		hint     bool
	}{
		{testNow.Unix() + 1, true},                             // seconds, a second ahead
		{testNow.Add(-time.Hour).Unix(), true},                 // seconds, with the clock an hour behind
		{testNow.Add(300 * 24 * time.Hour).Unix(), true},       // seconds, clock far off
		{testNow.UnixMilli() - 5000, false},                    // milliseconds, 5 s past
		{testNow.Add(-2 * 366 * 24 * time.Hour).Unix(), false}, // nothing like now in seconds either
		{1, false},
		{0, false},
		{-testNow.Unix(), false},
	}
	for _, tc := range tests {
		p := fmt.Sprintf(`{"id":"a","deadline":%d,"input":[1,2,3]}`, tc.deadline)
		_, rej := ParseRequest("sg/req/tiny/d", []byte(p), testNow, env)
		if rej == nil || rej.Reason != ReasonDeadlinePast {
			t.Errorf("deadline %d: got %v, want deadline_past", tc.deadline, rej)
			continue
		}
		if got := strings.Contains(rej.Message, hint); got != tc.hint {
			t.Errorf("deadline %d: hint %v, want %v: %s", tc.deadline, got, tc.hint, rej.Message)
		}
	}
}
