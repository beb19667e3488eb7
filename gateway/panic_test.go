package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/protocol"
)

// injectedPanic is what panicsOnce panics with.
const injectedPanic = "injected: profiling panicked"

// panicsOnce is a context whose first Err call after armed is set panics. The
// first such call of a start or a reload is the engine's Profile asking
// whether to go on, once an application's variants are registered: the
// gateway then meets a panic in the middle of profiling an application, as it
// did when a variant the engine could not run panicked there.
type panicsOnce struct {
	context.Context
	armed *atomic.Bool
}

func (c panicsOnce) Err() error {
	if c.armed.CompareAndSwap(true, false) {
		panic(injectedPanic)
	}
	return c.Context.Err()
}

// A panic while a reload profiles an application's new version refuses the
// reload instead of killing the gateway: the error names the application and
// the panic, the refusal is counted and logged with them, the new version
// leaves the engine, the old one keeps serving, and the next reload works.
func TestReloadPanicRefused(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	var logs testenv.Buffer
	r := runGateway(t, cfg, Options{Logger: zerolog.New(&logs).Level(zerolog.WarnLevel)})
	old := r.g.appSet()["fashion"].key
	next := *cfg
	next.Apps = []AppConfig{{Manifest: fashionManifest, DefaultDeadline: 2 * time.Second}}
	armed := new(atomic.Bool)
	armed.Store(true)
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("Reload panicked: %v", p)
			}
		}()
		_, err = r.g.Reload(panicsOnce{context.Background(), armed}, &next)
	}()
	if armed.Load() {
		t.Fatal("the reload never asked its context: nothing panicked")
	}
	if err == nil || !strings.Contains(err.Error(), "fashion") || !strings.Contains(err.Error(), injectedPanic) {
		t.Fatalf("reload: %v, want an error naming the application and the panic", err)
	}
	if got := testutil.ToFloat64(r.g.m.reloads.WithLabelValues("refused")); got != 1 {
		t.Errorf("sneakgate_reloads_total{result=refused} = %v, want 1", got)
	}
	logged := false
	for l := range strings.SplitSeq(logs.String(), "\n") {
		var line struct{ Level, App, Panic, Message string }
		if json.Unmarshal([]byte(l), &line) == nil && line.Level == "error" && line.App == "fashion" && line.Panic == injectedPanic {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no error logged with app fashion and the panic:\n%s", logs.String())
	}
	if got := r.g.appSet()["fashion"].key; got != old {
		t.Errorf("serving %s after the refused reload, want the old version %s", got, old)
	}
	for _, id := range r.g.eng.Variants("") {
		if id.App != old {
			t.Errorf("%s still registered after the refused reload", id)
		}
	}
	dev := newDevice(t, b.URL(), "sensor-1")
	_, rows := appSamples(t, fashionManifest)
	dev.request("fashion", "sensor-1", "after", rows.Row(0), 10000)
	if rep := dev.await([]string{"after"}, 30*time.Second)["after"]; rep.Status != protocol.StatusOK {
		t.Errorf("after the refused reload: %s (%s), want ok", rep.Status, rep.Reason)
	}
	res, err := r.g.Reload(context.Background(), &next)
	if err != nil || !slices.Equal(res.Changed, []string{"fashion"}) {
		t.Fatalf("the next reload: %+v, %v", res, err)
	}
}

// A panic while the gateway profiles an application at start-up fails the
// start with an error naming the application and the panic, not the process.
func TestStartPanicIsAnError(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:1", t.TempDir())
	armed := new(atomic.Bool)
	armed.Store(true)
	var (
		g   *Gateway
		err error
	)
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("New panicked: %v", p)
			}
		}()
		g, err = New(panicsOnce{context.Background(), armed},
			Options{Config: cfg, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	}()
	if err == nil {
		g.closeAll()
		t.Fatal("started although profiling panicked")
	}
	if !strings.Contains(err.Error(), "fashion") || !strings.Contains(err.Error(), injectedPanic) {
		t.Errorf("start: %v, want an error naming the application and the panic", err)
	}
}

// logPanic logs a panic the engine recovered (a variant's forward pass) with
// the application, the variant and the panic's value, one the gateway
// recovered before reading the manifest with the configuration entry, the
// stack only with debug logging, and nothing for other errors.
func TestLogPanic(t *testing.T) {
	ep := &engine.PanicError{App: "lin", Variant: engine.VariantID{App: "lin#2", Variant: "logits"}, Op: "run",
		Value: "slice bounds out of range", Stack: []byte("goroutine 1 [running]")}
	ap := &appPanicError{entry: "apps[1] (x.yaml)", step: "building the application", value: 7, stack: []byte("goroutine 2")}
	type line struct{ Level, App, Variant, Key, Entry, Panic, Stack, Message string }
	for _, c := range []struct {
		err   error
		level zerolog.Level
		want  line
	}{
		{fmt.Errorf("gateway: apps[0] (lin): %w", ep), zerolog.InfoLevel,
			line{Level: "error", App: "lin", Variant: "logits", Key: "lin#2", Panic: "slice bounds out of range", Message: "m"}},
		{fmt.Errorf("warm: %w", ep), zerolog.DebugLevel,
			line{Level: "error", App: "lin", Variant: "logits", Key: "lin#2", Panic: "slice bounds out of range", Stack: "goroutine 1 [running]", Message: "m"}},
		{ap, zerolog.InfoLevel, line{Level: "error", Entry: "apps[1] (x.yaml)", Panic: "7", Message: "m"}},
		{fmt.Errorf("plain"), zerolog.DebugLevel, line{}},
	} {
		var logs testenv.Buffer
		g := &Gateway{log: zerolog.New(&logs).Level(c.level)}
		g.logPanic(c.err, "m")
		var got line
		if out := logs.String(); out != "" {
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("%v: %v in %q", c.err, err, out)
			}
		}
		if got != c.want {
			t.Errorf("%v at %s: logged %+v, want %+v", c.err, c.level, got, c.want)
		}
	}
}
