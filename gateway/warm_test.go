package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/protocol"
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
		var logs testenv.Buffer
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

// failAfterLoad is a context whose Err reports it cancelled once any variant
// of a key other than keep is resident: a reload given it fails in the middle
// of its preload, after the first new variant was loaded and warmed.
type failAfterLoad struct {
	context.Context
	g       *Gateway
	keep    string
	tripped *atomic.Bool
}

func (c failAfterLoad) Err() error {
	for _, id := range c.g.eng.Resident() {
		if id.App != c.keep {
			c.tripped.Store(true)
			return context.Canceled
		}
	}
	return c.Context.Err()
}

// TestReloadPreloadFailsMidway: a reload whose preload fails after loading
// part of the new version (here the context ends) is undone: the error says
// why, the served version is still the old one, none of the new version's
// sessions stays resident or registered, and requests are still answered.
func TestReloadPreloadFailsMidway(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	r := startGateway(t, cfg, Options{})
	old := r.g.appSet()["fashion"].key
	before := r.g.eng.Resident()
	next := *cfg
	next.Apps = []AppConfig{{Manifest: fashionManifest, DefaultDeadline: 2 * time.Second}}
	ctx := failAfterLoad{Context: context.Background(), g: r.g, keep: old, tripped: new(atomic.Bool)}
	res, err := r.g.Reload(ctx, &next)
	if !ctx.tripped.Load() || !errors.Is(err, context.Canceled) {
		t.Fatalf("reload: %+v, %v; want it to fail on the cancelled context", res, err)
	}
	if got := r.g.appSet()["fashion"].key; got != old {
		t.Errorf("serving %s after the failed reload, want the old version %s", got, old)
	}
	if after := r.g.eng.Resident(); !slices.Equal(after, before) {
		t.Errorf("resident after the failed reload %v, want %v as before it", after, before)
	}
	for _, id := range r.g.eng.Variants("") {
		if id.App != old {
			t.Errorf("%s still registered after the failed reload", id)
		}
	}
	dev := newDevice(t, b.URL(), "sensor-1")
	_, rows := appSamples(t, fashionManifest)
	dev.request("fashion", "sensor-1", "after", rows.Row(0), 10000)
	if rep := dev.await([]string{"after"}, 30*time.Second)["after"]; rep.Status != protocol.StatusOK {
		t.Errorf("after the failed reload: %s (%s), want ok", rep.Status, rep.Reason)
	}
}
