package gateway

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sneakgate/sneakgate/manifest"
)

// An application whose input cannot fit in admission.max_payload_bytes in any
// encoding is a configuration error at start, naming the sizes: otherwise every
// request to it is rejected payload_too_large, and an input_size mistyped with
// extra zeros would size the engine's buffers by it.
func TestInputLargerThanThePayloadLimit(t *testing.T) {
	load := func(maxPayload int) error {
		cfg := DefaultConfig()
		cfg.Admission.MaxPayloadBytes = maxPayload
		cfg.Apps = []AppConfig{{Manifest: fashionManifest}}
		g := &Gateway{cfg: &cfg, log: zerolog.Nop(), m: newMetrics(nil), now: time.Now, reg: prometheus.NewRegistry()}
		return g.loadApps()
	}
	// fashion: 784 values with an input_range, so a byte each in input_u8_b64:
	// {"input_u8_b64":"<1,048 characters>"} is 1,067 bytes.
	err := load(1066)
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("max_payload_bytes 1066: error %v, want ErrConfig", err)
	}
	for _, w := range []string{"fashion", "input_size 784", "1067 bytes", "input_u8_b64", "admission.max_payload_bytes (1066)"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not say %q:\n%v", w, err)
		}
	}
	if err := load(1067); err != nil && strings.Contains(err.Error(), "max_payload_bytes") {
		t.Errorf("max_payload_bytes 1067: %v", err)
	}

	for _, c := range []struct {
		n     int
		rng   bool
		want  int
		field string
	}{
		{10, false, len(`{"input_b64":""}`) + 56, "input_b64"},
		{10, true, len(`{"input_u8_b64":""}`) + 16, "input_u8_b64"},
		{1 << 62, false, int(^uint(0) >> 1), "input_b64"},
	} {
		m := &manifest.App{InputSize: c.n}
		if c.rng {
			m.InputRange = &[2]float64{0, 1}
		}
		if got, f := minPayload(m); got != c.want || f != c.field {
			t.Errorf("minPayload(input_size %d, range %v) = %d, %s; want %d, %s", c.n, c.rng, got, f, c.want, c.field)
		}
	}
}
