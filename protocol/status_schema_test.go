package protocol

import (
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// These tests keep docs/schema/status.schema.json and stats.schema.json, the
// types GatewayStatus and Stats, and the examples in docs/protocol.md in
// agreement, as schema_test.go does for requests and replies. The gateway's
// tests validate the status and stats messages it really publishes.

const (
	statusSchemaPath = "../docs/schema/status.schema.json"
	statsSchemaPath  = "../docs/schema/stats.schema.json"
)

// jsonFields returns the JSON field names of struct type T, sorted, and those
// without omitempty (the ones always present).
func jsonFields[T any]() (fields, required []string) {
	rt := reflect.TypeFor[T]()
	for i := range rt.NumField() {
		name, opts, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		fields = append(fields, name)
		if !strings.Contains(opts, "omitempty") {
			required = append(required, name)
		}
	}
	slices.Sort(fields)
	slices.Sort(required)
	return fields, required
}

// object returns the object at path (keys) in a raw schema.
func object(t *testing.T, raw map[string]any, path ...string) map[string]any {
	t.Helper()
	v := raw
	for _, k := range path {
		m, ok := v[k].(map[string]any)
		if !ok {
			t.Fatalf("schema has no object at %v", path)
		}
		v = m
	}
	return v
}

func TestStatusStatsSchemaFieldsMatchTypes(t *testing.T) {
	_, status := schema(t, statusSchemaPath)
	_, stats := schema(t, statsSchemaPath)
	for _, c := range []struct {
		name   string
		raw    map[string]any
		path   []string // to the object schema
		fields func() (fields, required []string)
	}{
		{"GatewayStatus", status, nil, jsonFields[GatewayStatus]},
		{"Stats", stats, nil, jsonFields[Stats]},
		{"AppStats", stats, []string{"$defs", "appStats"}, jsonFields[AppStats]},
		{"EstimateStats", stats, []string{"$defs", "estimates"}, jsonFields[EstimateStats]},
	} {
		fields, required := c.fields()
		obj := object(t, c.raw, c.path...)
		props := slices.Sorted(maps.Keys(object(t, obj, "properties")))
		if !slices.Equal(props, fields) {
			t.Errorf("%s: schema properties %v, want the JSON fields %v", c.name, props, fields)
		}
		if got := enum(t, obj, "required"); !slices.Equal(got, required) {
			t.Errorf("%s: schema requires %v, want the fields without omitempty %v", c.name, got, required)
		}
	}
}

func TestStatusStatsSchemaEnumsMatchProtocol(t *testing.T) {
	_, status := schema(t, statusSchemaPath)
	_, stats := schema(t, statsSchemaPath)
	if got, want := enum(t, status, "properties", "state", "enum"), []string{StateOffline, StateOnline}; !slices.Equal(got, want) {
		t.Errorf("status schema's state enum %v, want %v", got, want)
	}
	if got, want := enum(t, status, "$defs", "offlineReason", "enum"), sortedStrings(OfflineReasons()); !slices.Equal(got, want) {
		t.Errorf("status schema's offlineReason enum %v, want protocol.OfflineReasons() %v", got, want)
	}
	if got, want := enum(t, stats, "$defs", "status", "enum"), sortedStrings(Statuses()); !slices.Equal(got, want) {
		t.Errorf("stats schema's status enum %v, want protocol.Statuses() %v", got, want)
	}
	if got, want := enum(t, stats, "$defs", "rejectionReason", "enum"), sortedStrings(Reasons()); !slices.Equal(got, want) {
		t.Errorf("stats schema's rejectionReason enum %v, want protocol.Reasons() %v", got, want)
	}
}

// builtStatusStats returns status and stats messages as the gateway fills them
// (gateway/status.go), by name.
func builtStatusStats() (statuses map[string]GatewayStatus, stats map[string]*Stats) {
	statuses = map[string]GatewayStatus{
		"online": {V: Version, State: StateOnline, Version: "v1.2.0-3-gabcdef", Policy: "sneakpeek",
			Apps: []string{"fashion", "satellite", "vad"}, Since: 1795760000000},
		"online, dev build, no apps": {V: Version, State: StateOnline, Version: "dev", Policy: "edf", Since: 1795760000000},
	}
	for _, r := range OfflineReasons() {
		statuses["offline "+r] = GatewayStatus{V: Version, State: StateOffline, Reason: r}
	}
	full := &Stats{V: Version, Time: 1795760012000, UptimeS: 12.003, Queue: 3, Outbox: 1, Resident: 14,
		Rejected: map[string]int64{}, Apps: map[string]*AppStats{
			"fashion": {Received: 2022, Replies: map[Status]int64{}, DeadlineMet: Ptr(0.9951), MeanEstAccuracy: Ptr(0.9317),
				Estimates: &EstimateStats{Observations: 500, Agreement: 0.842, Predicted: 0.851},
				LivePrior: []float64{0.1, 0.05, 0.85}},
			"vad": {Received: 0, Replies: map[Status]int64{}},
		}}
	for _, st := range Statuses() {
		full.Apps["fashion"].Replies[st] = 7
	}
	for _, r := range Reasons() {
		full.Rejected[string(r)] = 1
	}
	stats = map[string]*Stats{
		"full":  full,
		"start": {V: Version, Time: 1795760000001, Apps: map[string]*AppStats{"fashion": {Replies: map[Status]int64{}}}},
		"none":  {V: Version, Time: 1795760000001, Apps: map[string]*AppStats{}},
	}
	return statuses, stats
}

func TestStatusStatsSchemaBuilt(t *testing.T) {
	statusS, _ := schema(t, statusSchemaPath)
	statsS, _ := schema(t, statsSchemaPath)
	statuses, stats := builtStatusStats()
	for name, s := range statuses {
		b, _ := json.Marshal(s)
		if err := validate(statusS, b); err != nil {
			t.Errorf("status %s: %s\n%v", name, b, err)
		}
	}
	for name, s := range stats {
		b, _ := json.Marshal(s)
		if err := validate(statsS, b); err != nil {
			t.Errorf("stats %s: %s\n%v", name, b, err)
		}
	}
}

// TestStatusStatsSchemaRefusesBad: each of these messages breaks one documented rule.
func TestStatusStatsSchemaRefusesBad(t *testing.T) {
	statusS, _ := schema(t, statusSchemaPath)
	statsS, _ := schema(t, statsSchemaPath)
	statuses, _ := builtStatusStats()
	badStatus := map[string]func(s *GatewayStatus){
		"unknown state":          func(s *GatewayStatus) { s.State = "starting" },
		"v 2":                    func(s *GatewayStatus) { s.V = 2 },
		"online with a reason":   func(s *GatewayStatus) { s.Reason = OfflineShutdown },
		"online without version": func(s *GatewayStatus) { s.Version = "" },
		"online without since":   func(s *GatewayStatus) { s.Since = 0 },
		"offline without reason": func(s *GatewayStatus) { *s = GatewayStatus{V: Version, State: StateOffline} },
		"offline, unknown reason": func(s *GatewayStatus) {
			*s = GatewayStatus{V: Version, State: StateOffline, Reason: "tired"}
		},
		"offline with apps": func(s *GatewayStatus) {
			*s = GatewayStatus{V: Version, State: StateOffline, Reason: OfflineLost, Apps: []string{"fashion"}}
		},
	}
	for name, f := range badStatus {
		s := statuses["online"]
		s.Apps = slices.Clone(s.Apps)
		f(&s)
		b, _ := json.Marshal(s)
		if validate(statusS, b) == nil {
			t.Errorf("status %s: the schema accepts %s", name, b)
		}
	}
	badStats := map[string]func(s *Stats){
		"v 2":                    func(s *Stats) { s.V = 2 },
		"unknown status":         func(s *Stats) { s.Apps["fashion"].Replies["fine"] = 1 },
		"zero count":             func(s *Stats) { s.Apps["fashion"].Replies[StatusOK] = 0 },
		"unknown reason":         func(s *Stats) { s.Rejected["too_busy"] = 1 },
		"answer reason rejected": func(s *Stats) { s.Rejected[string(ReasonPastHardStop)] = 1 },
		"deadline_met above 1":   func(s *Stats) { s.Apps["fashion"].DeadlineMet = Ptr(1.5) },
		"negative queue":         func(s *Stats) { s.Queue = -1 },
		"app without replies":    func(s *Stats) { s.Apps["fashion"].Replies = nil },
	}
	for name, f := range badStats {
		_, stats := builtStatusStats()
		s := stats["full"]
		f(s)
		b, _ := json.Marshal(s)
		if validate(statsS, b) == nil {
			t.Errorf("stats %s: the schema accepts %s", name, b)
		}
	}
}
