package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sneakgate/sneakgate/dataset"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/manifest"
	"github.com/sneakgate/sneakgate/protocol"
)

// A user's own model family becomes a served application without restarting
// the gateway, as models/README.md ("Serving your own models") describes: two
// ONNX variants of sklearn's 8x8 digits with .npy splits
// (models/examples/digits) go through `sneakgate app build` and `app check`, a
// config line is added, SIGHUP; then devices get correct answers.
func TestBringYourOwnModelServedAfterReload(t *testing.T) {
	ex := "../../models/examples/digits/"
	out := filepath.Join(t.TempDir(), "digits")
	lib := testenv.ORTLib(t)
	args := []string{"app", "build", "-ort-lib", lib, "-name", "digits", "-out", out,
		"-variant", "linear=" + ex + "linear.onnx", "-variant", "mlp=" + ex + "mlp.onnx",
		"-train", ex + "X_train.npy," + ex + "y_train.npy",
		"-validation", ex + "X_validation.npy," + ex + "y_validation.npy",
		"-test", ex + "X_test.npy," + ex + "y_test.npy",
		"-labels", "zero,one,two,three,four,five,six,seven,eight,nine", "-deadline", "200ms"}
	if msg, code := runBinary(t, args...); code != 0 {
		t.Fatalf("app build: exit %d\n%s", code, msg)
	}
	if msg, code := runBinary(t, "app", "check", "-ort-lib", lib, out); code != 0 {
		t.Fatalf("app check: exit %d\n%s", code, msg)
	}
	m, err := manifest.Load(filepath.Join(out, "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}

	b := mqtttest.Start(t, mqtttest.Options{Shipped: true})
	s := startServe(t, b, "byom-test", "../../models/satellite/manifest.yaml")
	s.reload(s.config + fmt.Sprintf("  - manifest: %q\n", filepath.Join(out, "manifest.yaml")))
	if l := s.waitFor(`"reloaded"`); !strings.Contains(l, `"added":["digits"]`) {
		t.Fatalf("reload log: %s", l)
	}
	go func() {
		for range s.lines {
		}
	}()

	X, err := dataset.ReadNPY(ex + "X_test.npy")
	if err != nil {
		t.Fatal(err)
	}
	Y, err := dataset.ReadNPY(ex + "y_test.npy")
	if err != nil {
		t.Fatal(err)
	}
	xs, ys := X.Float32s(), must(Y.Ints())
	n, d := len(ys), len(xs)/len(ys)
	var mu sync.Mutex
	got := map[string]*protocol.Reply{}
	all := make(chan struct{})
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("digit-pad").
		SetUsername("digit-pad"))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	tok := c.Subscribe(protocol.ReplyTopic("sneakgate", "digits", "digit-pad"), 1, func(_ mqtt.Client, msg mqtt.Message) {
		r, err := protocol.ParseReply(msg.Payload())
		if err != nil {
			t.Errorf("bad reply: %v", err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		got[r.ID] = r
		if len(got) == n {
			close(all)
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	for i := range n {
		body, _ := json.Marshal(map[string]any{"id": fmt.Sprint(i), "input": xs[i*d : (i+1)*d], "deadline_ms": 10000})
		if tok := c.Publish(protocol.RequestTopic("sneakgate", "digits", "digit-pad"), 1, false, body); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	select {
	case <-all:
	case <-time.After(time.Minute):
		mu.Lock()
		t.Fatalf("%d of %d replies", len(got), n)
	}
	mu.Lock()
	defer mu.Unlock()
	// On digits the estimator app build trains (logistic, 0.969 on the
	// validation split) is more accurate than either model (mlp 0.958, linear
	// 0.936), so the gateway answers some requests from it
	// (scheduler.estimate_answers; docs/evaluation-log.md, "Answers from the
	// estimate"): those are degraded, estimate_worth_more, and count at the
	// estimator's accuracy.
	right, expected, fromEstimate := 0, 0.0, 0
	for i := range n {
		r := got[fmt.Sprint(i)]
		estimated := r.Status == protocol.StatusDegraded && r.Reason == protocol.ReasonEstimateWorthMore
		if r.Status != protocol.StatusOK && !estimated || r.Class == nil {
			t.Fatalf("request %d: %s %s %s", i, r.Status, r.Reason, r.Error)
		}
		if int64(*r.Class) == ys[i] {
			right++
		}
		switch v := m.Variant(r.Model); {
		case v != nil:
			expected += v.Accuracy
		case estimated:
			fromEstimate++
			expected += m.Estimators[0].Accuracy
		}
	}
	acc, want := float64(right)/float64(n), expected/float64(n)
	t.Logf("digits: %d test images, accuracy %.3f (validation accuracy of the variants and estimator used %.3f); %d answered from the estimate", n, acc, want, fromEstimate)
	if acc < want-0.06 {
		t.Errorf("accuracy %.3f, the variants used promise %.3f", acc, want)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
