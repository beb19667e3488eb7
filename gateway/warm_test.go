package gateway

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

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

// TestReloadPreloadsOnlyWhenUnlimited: a reload loads (and warms) its new
// versions before the swap only with engine.warm_up on and no residency limit
// (TestReloadUnderLoad checks that case); under engine.max_resident, or with
// warm_up off, the new version's variants are left for the loop to load when
// it first runs them, as before.
func TestReloadPreloadsOnlyWhenUnlimited(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	for _, c := range []struct {
		name        string
		maxResident int
		warm        bool
	}{{"max_resident", 100, true}, {"warm_up off", 0, false}} {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(t, b.URL(), t.TempDir())
			cfg.Apps = []AppConfig{{Manifest: fashionManifest}}
			cfg.Engine.MaxResident, cfg.Engine.WarmUp = c.maxResident, c.warm
			r := startGateway(t, cfg, Options{})
			next := *cfg
			next.Apps = []AppConfig{{Manifest: fashionManifest, DefaultDeadline: 2 * time.Second}}
			res, err := r.g.Reload(context.Background(), &next)
			if err != nil || !slices.Equal(res.Changed, []string{"fashion"}) {
				t.Fatalf("reload: %+v, %v", res, err)
			}
			key := r.g.appSet()["fashion"].key
			for _, id := range r.g.eng.Resident() {
				if id.App == key {
					t.Errorf("%s resident right after the reload, before any request", id)
				}
			}
		})
	}
}
