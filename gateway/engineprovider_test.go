package gateway

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/engine"
	"github.com/sneakgate/sneakgate/internal/mqtttest"
	"github.com/sneakgate/sneakgate/internal/testenv"
	"github.com/sneakgate/sneakgate/protocol"
)

// TestProviderFallbackServes: engine.provider: cuda with the CPU-only library
// (what `make test` uses; the CUDA library on a machine without a GPU fails the
// same probe) starts on the CPU, says so in a warning and the metrics, and
// serves.
func TestProviderFallbackServes(t *testing.T) {
	b := mqtttest.Start(t, mqtttest.Options{})
	cfg := testConfig(t, b.URL(), t.TempDir())
	cfg.Engine.Provider = "cuda"
	cfg.Engine.ProviderOptions = map[string]string{"device_id": "0"}
	var logs testenv.Buffer
	gw := runGateway(t, cfg, Options{Logger: zerolog.New(&logs).Level(zerolog.WarnLevel)})
	reg := gw.g.reg
	if v := metricValue(t, reg, "sneakgate_engine_provider_info", "requested", "cuda", "active", "cpu"); v != 1 {
		t.Errorf("provider_info{requested=cuda,active=cpu} = %v", v)
	}
	if v := metricValue(t, reg, "sneakgate_engine_provider_fallback"); v != 1 {
		t.Errorf("provider_fallback = %v, want 1", v)
	}
	if l := logs.String(); !strings.Contains(l, `"level":"warn"`) || !strings.Contains(l, `"component":"engine"`) ||
		!strings.Contains(l, "execution provider cuda unavailable: running on the CPU instead") {
		t.Errorf("no warning about the fallback in the log:\n%s", l)
	}
	// The profiles were measured and cached as the CPU's.
	files, _ := filepath.Glob(filepath.Join(cfg.Engine.ProfileCache, "*.json"))
	if len(files) == 0 {
		t.Fatal("no cached profiles")
	}
	if c, _ := os.ReadFile(files[0]); !strings.Contains(string(c), `"provider": "cpu"`) {
		t.Errorf("%s is not keyed by the cpu provider:\n%s", files[0], c)
	}

	_, samples := fashionSamples(t)
	dev := newDevice(t, b.URL(), "cam-gpu")
	dev.request("fashion", "cam-gpu", "a", samples.Row(0), 60000)
	if r := dev.await([]string{"a"}, 30*time.Second)["a"]; r == nil || r.Status != protocol.StatusOK {
		t.Errorf("reply %+v, want ok", r)
	}
}

// TestProviderRequired: with engine.require_provider the same start-up fails,
// naming the setting and the provider.
func TestProviderRequired(t *testing.T) {
	cfg := testConfig(t, "tcp://127.0.0.1:1", t.TempDir())
	cfg.Engine.Provider = "cuda"
	cfg.Engine.RequireProvider = true
	g, err := New(context.Background(), Options{Config: cfg, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err == nil {
		g.closeAll()
		t.Fatal("started without the CUDA provider although engine.require_provider is set")
	}
	if !errors.Is(err, engine.ErrProvider) || !strings.Contains(err.Error(), "engine.require_provider") || !strings.Contains(err.Error(), "cuda") {
		t.Errorf("error %v, want ErrProvider naming engine.require_provider and cuda", err)
	}
}

// TestProviderMetrics: the two provider metrics for each status.
func TestProviderMetrics(t *testing.T) {
	for _, c := range []struct {
		st       engine.ProviderStatus
		fallback float64
	}{
		{engine.ProviderStatus{Requested: "cpu", Active: "cpu"}, 0},
		{engine.ProviderStatus{Requested: "cuda", Active: "cuda"}, 0},
		{engine.ProviderStatus{Requested: "cuda", Active: "cpu", Fallback: errors.New("no device")}, 1},
	} {
		reg := prometheus.NewRegistry()
		registerProviderMetrics(reg, c.st)
		if v := metricValue(t, reg, "sneakgate_engine_provider_info", "requested", c.st.Requested, "active", c.st.Active); v != 1 {
			t.Errorf("%+v: info = %v", c.st, v)
		}
		if v := metricValue(t, reg, "sneakgate_engine_provider_fallback"); v != c.fallback {
			t.Errorf("%+v: fallback = %v, want %v", c.st, v, c.fallback)
		}
	}
}

// TestShapeHint: a GPU engine whose passes can change batch size is warned
// about cuDNN's per-shape set-up; a CPU engine, or one padded to one size, is not.
func TestShapeHint(t *testing.T) {
	for _, c := range []struct {
		active string
		ec     EngineConfig
		warn   bool
	}{
		{"cpu", EngineConfig{BatchSizes: []int{1, 32}}, false},
		{"cuda", EngineConfig{BatchSizes: []int{32}, PadBatches: true}, false},
		{"cuda", EngineConfig{BatchSizes: []int{1, 32}}, true},
		{"cuda", EngineConfig{BatchSizes: []int{1, 32}, PadBatches: true}, true},
		{"cuda", EngineConfig{BatchSizes: []int{32}}, true},
	} {
		if got := shapeHint(c.active, c.ec); (got != "") != c.warn {
			t.Errorf("%s %+v: hint %q, want a warning: %v", c.active, c.ec, got, c.warn)
		}
	}
}

// TestEmbeddedPortTakenFailsFirst: a start whose embedded broker's port is
// taken fails at once, naming mqtt.embedded.listen, before the engine (which
// here would fail too: CUDA required) profiles anything. Before, the port was
// found taken only after every model had been profiled and warmed.
func TestEmbeddedPortTakenFailsFirst(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig(t, "tcp://"+ln.Addr().String(), t.TempDir())
	cfg.MQTT.Embedded.Enabled = true
	cfg.MQTT.Embedded.Listen = ln.Addr().String()
	cfg.Engine.Provider = "cuda"
	cfg.Engine.RequireProvider = true
	g, err := New(context.Background(), Options{Config: cfg, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err == nil {
		g.closeAll()
		t.Fatal("started with the embedded broker's port taken")
	}
	if errors.Is(err, engine.ErrProvider) || !strings.Contains(err.Error(), "mqtt.embedded.listen") {
		t.Errorf("error %v, want one naming mqtt.embedded.listen before the engine's", err)
	}
}
