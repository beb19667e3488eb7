package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sneakgate/sneakgate/engine"
)

// registerProviderMetrics registers which execution provider the engine runs:
// sneakgate_engine_provider_info{requested, active} 1, and
// sneakgate_engine_provider_fallback, 1 when a GPU provider was asked for but
// the engine runs on the CPU (engine.require_provider unset; the start-up log
// has a warning saying why), 0 otherwise.
func registerProviderMetrics(reg prometheus.Registerer, st engine.ProviderStatus) {
	fellBack := 0.0
	if st.FellBack() {
		fellBack = 1
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_engine_provider_info",
			Help:        "Always 1; the labels name the execution provider engine.provider asks for and the one the engine runs on.",
			ConstLabels: prometheus.Labels{"requested": st.Requested, "active": st.Active}},
			func() float64 { return 1 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sneakgate_engine_provider_fallback",
			Help: "1 when engine.provider asks for a GPU provider that could not be used and the engine runs on the CPU instead (the start-up log says why), 0 otherwise."},
			func() float64 { return fellBack }),
	)
}

// shapeHint is the warning for an engine on a GPU provider whose passes can
// change batch size, or "" when they cannot: on CUDA every change of input
// shape redoes cuDNN's set-up, which cost a convolutional model 4-68 ms a pass
// on an H200 against 0.65 ms at a steady shape (docs/deployment.md, "GPU").
func shapeHint(active string, ec EngineConfig) string {
	if active == engine.ProviderCPU || (ec.PadBatches && len(ec.BatchSizes) == 1) {
		return ""
	}
	return "on " + active + " a change of batch size between passes redoes cuDNN's set-up (milliseconds a pass for convolutional models): set engine.pad_batches with a single engine.batch_sizes entry (docs/deployment.md, \"GPU\")"
}
