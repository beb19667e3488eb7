package gateway

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
)

// TestWarmAtStart: with engine.warm_up (the default) every variant the
// warm start loads is warmed before the gateway takes requests, and the log
// says how many; with it off none is.
func TestWarmAtStart(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	for _, warm := range []bool{true, false} {
		cfg := testConfig(t, b.URL(), t.TempDir())
		if !cfg.Engine.WarmUp {
			t.Fatal("engine.warm_up is off by default")
		}
		cfg.Engine.WarmUp = warm
		var logs lockedBuffer
		gw := runGateway(t, cfg, Options{Logger: zerolog.New(&logs).Level(zerolog.InfoLevel)})
		var line struct {
			Loaded, Warmed int
			Batch          int
		}
		for l := range strings.SplitSeq(logs.String(), "\n") {
			if strings.Contains(l, "engine variants loaded and warmed") {
				if err := json.Unmarshal([]byte(l), &line); err != nil {
					t.Fatal(err)
				}
			}
		}
		want := 0
		if warm {
			want = line.Loaded
		}
		if line.Loaded == 0 || line.Warmed != want || line.Batch != cfg.Scheduler.MaxBatch {
			t.Errorf("warm_up %v: logged %+v, want %d of the loaded variants warmed at batch %d:\n%s",
				warm, line, want, cfg.Scheduler.MaxBatch, logs.String())
		}
		gw.stop(t)
	}
}
