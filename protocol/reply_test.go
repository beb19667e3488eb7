package protocol

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestReplyJSON(t *testing.T) {
	req := &Request{ID: "r1", App: "fashion", Device: "cam1"}
	ok := req.NewReply(StatusOK)
	ok.Class, ok.Label, ok.Confidence = Ptr(3), "dress", Ptr(0.91)
	ok.Model, ok.Batch, ok.EstAccuracy = "cnn", 8, Ptr(0.88)
	ok.QueueMS, ok.InferMS, ok.TotalMS = Millis(1234567*time.Nanosecond), Millis(0), Millis(3*time.Millisecond)
	ok.DeadlineMet = Ptr(true)
	tests := []struct {
		name  string
		reply *Reply
		want  string
	}{
		{"ok", ok, `{"v":1,"id":"r1","app":"fashion","device":"cam1","status":"ok","class":3,"label":"dress","confidence":0.91,"model":"cnn","batch":8,"est_accuracy":0.88,"queue_ms":1.235,"infer_ms":0,"total_ms":3,"deadline_met":true}`},
		{"class zero is present", &Reply{V: 1, ID: "x", App: "a", Device: "d", Status: StatusLate, Class: Ptr(0), DeadlineMet: Ptr(false)},
			`{"v":1,"id":"x","app":"a","device":"d","status":"late","class":0,"deadline_met":false}`},
		{"overload", req.Reject(ReasonOverload, "queue full", 1500*time.Microsecond),
			`{"v":1,"id":"r1","app":"fashion","device":"cam1","status":"rejected","reason":"overload","error":"queue full","retry_after_ms":2}`},
		{"rejection without id", (&Rejection{Reason: ReasonBadJSON, Message: "m", App: "a", Device: "d", ReplyTo: "t"}).Reply(),
			`{"v":1,"app":"a","device":"d","status":"rejected","reason":"bad_json","error":"m"}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.reply)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, b, tt.want)
		}
		back, err := ParseReply(b)
		if err != nil {
			t.Errorf("%s: ParseReply: %v", tt.name, err)
		} else if back.Status != tt.reply.Status || back.ID != tt.reply.ID {
			t.Errorf("%s: round trip %+v", tt.name, back)
		}
	}
}

func TestParseReply(t *testing.T) {
	r, err := ParseReply([]byte(`{"v":1,"id":"a","app":"x","device":"d","status":"ok","class":2,"future_field":{"x":1}}`))
	if err != nil || *r.Class != 2 {
		t.Fatalf("unknown fields must be ignored: %v %v", r, err)
	}
	for _, bad := range []string{`{"v":2,"status":"ok"}`, `{"v":1,"status":"fine"}`, `[]`, `{"v":1,"status":"ok"`} {
		if _, err := ParseReply([]byte(bad)); !errors.Is(err, ErrBadReply) {
			t.Errorf("ParseReply(%s) = %v, want ErrBadReply", bad, err)
		}
	}
}

func TestStatusAndReason(t *testing.T) {
	want := []Status{StatusOK, StatusLate, StatusDegraded, StatusExpired, StatusRejected, StatusError}
	if got := Statuses(); !slices.Equal(got, want) {
		t.Errorf("Statuses() = %v, want %v", got, want)
	}
	for _, s := range Statuses() {
		if !s.Valid() {
			t.Errorf("%s not valid", s)
		}
	}
	Statuses()[0] = "x" // a copy: the list stays as it is
	if Statuses()[0] != StatusOK {
		t.Error("Statuses returns the package's own list")
	}
	if Status("x").Valid() || !StatusDegraded.Answered() || StatusExpired.Answered() {
		t.Error("Status methods")
	}
	if !ReasonOverload.Retryable() || ReasonBadJSON.Retryable() || !ReasonBadJSON.Known() || Reason("x").Known() {
		t.Error("Reason methods")
	}
	if len(Reasons()) != 24 {
		t.Errorf("%d reasons", len(Reasons()))
	}
}
