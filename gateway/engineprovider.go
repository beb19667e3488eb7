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
