package protocol

// StatusTopic is where the gateway publishes its availability, retained:
// {prefix}/status. The broker publishes the "offline" last will if the gateway
// disappears without saying goodbye.
func StatusTopic(prefix string) string { return prefix + "/status" }

// StatsTopic is where the gateway publishes periodic Stats (not retained).
func StatsTopic(prefix string) string { return prefix + "/stats" }

// Gateway states published on StatusTopic.
const (
	StateOnline  = "online"
	StateOffline = "offline"
)

// Reasons of an offline status (GatewayStatus.Reason).
const (
	// OfflineShutdown: the gateway stopped cleanly.
	OfflineShutdown = "shutdown"
	// OfflineLost: the broker's last will for a gateway that vanished.
	OfflineLost = "lost"
	// OfflineSubscribeRefused: connected, but the broker refuses the
	// subscription to requests (an ACL); the gateway retries.
	OfflineSubscribeRefused = "subscribe_refused"
)

// OfflineReasons returns every reason an offline status carries; the status
// schema's enum follows it (a test).
func OfflineReasons() []string {
	return []string{OfflineShutdown, OfflineLost, OfflineSubscribeRefused}
}

// GatewayStatus is the retained availability message.
type GatewayStatus struct {
	V     int    `json:"v"`
	State string `json:"state"`
	// Reason says why the gateway went offline (OfflineReasons): "shutdown",
	// "lost" for the broker's last will, or "subscribe_refused" while the broker
	// refuses its request subscription (it is connected but cannot serve).
	Reason string `json:"reason,omitempty"`
	// Version, Policy and Apps describe an online gateway.
	Version string   `json:"version,omitempty"`
	Policy  string   `json:"policy,omitempty"`
	Apps    []string `json:"apps,omitempty"`
	// Since is when the gateway came online, Unix milliseconds.
	Since int64 `json:"since,omitempty"`
}

// Stats is the gateway's periodic "accuracy goodput" summary. Counts are totals
// since the gateway started.
type Stats struct {
	V int `json:"v"`
	// Time is when the stats were taken, Unix milliseconds.
	Time     int64   `json:"time"`
	UptimeS  float64 `json:"uptime_s"`
	Queue    int     `json:"queue"`
	Outbox   int     `json:"outbox"`
	Resident int     `json:"resident"`
	// Rejected counts rejections by reason code.
	Rejected map[string]int64     `json:"rejected,omitempty"`
	Apps     map[string]*AppStats `json:"apps"`
}

// AppStats summarises one application.
type AppStats struct {
	Received int64 `json:"received"`
	// Replies counts replies handed to the broker, by status, counted when the
	// broker acknowledges them (PUBACK): possibly just after their device has
	// them.
	Replies map[Status]int64 `json:"replies"`
	// DeadlineMet is the share of model answers (ok and late) published by their
	// deadline; absent before the first.
	DeadlineMet *float64 `json:"deadline_met,omitempty"`
	// MeanEstAccuracy is the mean est_accuracy of model answers.
	MeanEstAccuracy *float64 `json:"mean_est_accuracy,omitempty"`
	// Estimates compares the SneakPeek estimates with the answers of the
	// application's most accurate variant, over its recent requests.
	Estimates *EstimateStats `json:"estimates,omitempty"`
	// LivePrior is the label mix the gateway estimates for the live requests,
	// when the application corrects its estimates for label shift.
	LivePrior []float64 `json:"live_prior,omitempty"`
}

// EstimateStats is the estimate monitor's window: how often the estimate's top
// class agreed with the most accurate variant's answer, and how often the
// estimates predicted it would. A calibrated estimator keeps them close.
type EstimateStats struct {
	Observations int     `json:"observations"`
	Agreement    float64 `json:"agreement"`
	Predicted    float64 `json:"predicted"`
}
