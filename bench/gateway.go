package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sneakgate/sneakgate/gateway"
)

// gatewayConfig returns the gateway's configuration for a run: c.GatewayConfig
// (or the defaults) serving only the benchmarked application from the broker at
// brokerURL, with its journal (and, unless c.ProfileCache, its profile cache) in
// dir, the metrics listener (with pprof) on metrics, and the policy and fixed
// variant of c.
func gatewayConfig(c *Config, manifestPath, brokerURL, dir, metrics string) (*gateway.Config, error) {
	cfg := gateway.DefaultConfig()
	if c.GatewayConfig != "" {
		base, err := gateway.LoadConfig(c.GatewayConfig)
		if err != nil {
			return nil, err
		}
		cfg = *base
	}
	cfg.Log.Format = "json"
	cfg.MQTT.Broker = brokerURL
	cfg.MQTT.ClientID = "sneakgate-bench"
	cfg.MQTT.TopicPrefix = c.Prefix
	cfg.MQTT.Embedded.Enabled = false
	cfg.Store.Path = filepath.Join(dir, "journal.db")
	if c.Library != "" {
		cfg.Engine.Library = c.Library
	}
	cfg.Engine.ProfileCache = c.ProfileCache
	if cfg.Engine.ProfileCache == "" {
		cfg.Engine.ProfileCache = filepath.Join(dir, "profiles")
	}
	cfg.Scheduler.Policy = c.Policy
	if c.Variant != "" {
		cfg.Scheduler.FixedVariant = map[string]string{c.App: c.Variant}
	}
	cfg.Metrics.Listen = metrics
	cfg.Metrics.Pprof = true
	app := gateway.AppConfig{Manifest: manifestPath}
	for _, a := range cfg.Apps { // keep the base configuration's settings for the application
		if a.Manifest == manifestPath {
			app = a
		}
	}
	cfg.Apps = []gateway.AppConfig{app}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bench: gateway configuration: %w", err)
	}
	return &cfg, nil
}

// writeConfig writes cfg as YAML to path.
func writeConfig(cfg *gateway.Config, path string) error {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	head := "# Written by sneakgate bench: the gateway's configuration for one run.\n"
	return os.WriteFile(path, append([]byte(head), b...), 0o600)
}

// gatewayProc is a `sneakgate serve` process.
type gatewayProc struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed when it exits
	logPath string
	metrics string // host:port of /readyz and /debug/pprof
}

// startGateway starts `bin serve -config cfgPath`, logging to logPath, and waits
// until its /readyz on metrics says ready (connected, subscribed), it exits, ctx
// ends or timeout passes.
func startGateway(ctx context.Context, bin, cfgPath, logPath, metrics string, timeout time.Duration) (*gatewayProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	cmd := exec.Command(bin, "serve", "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("bench: start the gateway: %w", err)
	}
	g := &gatewayProc{cmd: cmd, done: make(chan struct{}), logPath: logPath, metrics: metrics}
	go func() {
		_ = cmd.Wait() // the exit status is in cmd.ProcessState
		logf.Close()
		close(g.done)
	}()
	hc := &http.Client{Timeout: time.Second}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case <-g.done:
			return nil, fmt.Errorf("bench: the gateway exited before it was ready (%v); its log %s ends:\n%s",
				cmd.ProcessState, logPath, tail(logPath, 20))
		case <-deadline.C:
			g.stop()
			return nil, fmt.Errorf("bench: the gateway was not ready within %v; its log %s ends:\n%s", timeout, logPath, tail(logPath, 20))
		case <-ctx.Done():
			g.stop()
			return nil, ctx.Err()
		case <-poll.C:
		}
		resp, err := hc.Get("http://" + metrics + "/readyz")
		if err != nil {
			continue // not listening yet
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return g, nil
		}
	}
}

// pid returns the gateway's process id.
func (g *gatewayProc) pid() int { return g.cmd.Process.Pid }

// stop ends the gateway (SIGTERM, its drain; SIGKILL after 30 s) and waits for it.
// It returns an error if it did not exit cleanly.
func (g *gatewayProc) stop() error {
	select {
	case <-g.done:
	default:
		_ = g.cmd.Process.Signal(syscall.SIGTERM) // fails only if it already exited
		select {
		case <-g.done:
		case <-time.After(30 * time.Second):
			_ = g.cmd.Process.Kill()
			<-g.done
			return fmt.Errorf("bench: the gateway did not stop within 30 s of SIGTERM (killed); log %s", g.logPath)
		}
	}
	if !g.cmd.ProcessState.Success() {
		return fmt.Errorf("bench: the gateway exited with %v; its log %s ends:\n%s", g.cmd.ProcessState, g.logPath, tail(g.logPath, 20))
	}
	return nil
}

// cpuProfile fetches a CPU profile of seconds from the gateway's pprof endpoint
// and writes it to path.
func (g *gatewayProc) cpuProfile(ctx context.Context, seconds int, path string) error {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", g.metrics, seconds)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	hc := &http.Client{Timeout: time.Duration(seconds)*time.Second + 30*time.Second}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("bench: CPU profile: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("bench: CPU profile: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("bench: CPU profile: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Series of the gateway's /metrics, per application and variant.
const (
	correctionMetric = "sneakgate_latency_correction_ratio"
	inferMetric      = "sneakgate_infer_duration_seconds_sum"
	passesMetric     = "sneakgate_infer_duration_seconds_count"
	profiledMetric   = "sneakgate_infer_profiled_seconds_total"
	inferCPUMetric   = "sneakgate_infer_cpu_seconds_total"
)

// metricsText fetches the gateway's /metrics.
func (g *gatewayProc) metricsText(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.metrics+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("bench: /metrics: %s", resp.Status)
	}
	return string(b), nil
}

// correction reads sneakgate_latency_correction_ratio{app,variant} from the
// gateway's /metrics: per "app/variant", how much longer forward passes take
// now than the start-up profile.
func (g *gatewayProc) correction(ctx context.Context) (map[string]float64, error) {
	text, err := g.metricsText(ctx)
	if err != nil {
		return nil, err
	}
	return parseVariantSeries(strings.NewReader(text), correctionMetric)
}

// inferTotals are a variant's forward-pass seconds so far, what its start-up
// profile gives for the same passes, the CPU seconds of the engine worker's
// thread in them (0 from a gateway that does not export them) and how many
// passes there were.
type inferTotals struct{ Infer, Profiled, CPU, Passes float64 }

// inference reads every variant's inferTotals from the gateway's /metrics.
func (g *gatewayProc) inference(ctx context.Context) (map[string]inferTotals, error) {
	text, err := g.metricsText(ctx)
	if err != nil {
		return nil, err
	}
	return parseInferTotals(text)
}

// parseInferTotals picks every variant's inferTotals out of a Prometheus text
// exposition (none from a gateway without
// sneakgate_infer_profiled_seconds_total).
func parseInferTotals(text string) (map[string]inferTotals, error) {
	var series [4]map[string]float64 // infer, profiled, CPU, passes
	for i, name := range []string{inferMetric, profiledMetric, inferCPUMetric, passesMetric} {
		var err error
		if series[i], err = parseVariantSeries(strings.NewReader(text), name); err != nil {
			return nil, err
		}
	}
	infer, prof, cpu, passes := series[0], series[1], series[2], series[3]
	out := map[string]inferTotals{}
	for k, p := range prof {
		out[k] = inferTotals{Infer: infer[k], Profiled: p, CPU: cpu[k], Passes: passes[k]}
	}
	return out, nil
}

// inferencePasses is, per variant that ran between the readings before and
// after, its forward passes in between (InferencePasses).
func inferencePasses(before, after map[string]inferTotals) map[string]InferencePasses {
	out := map[string]InferencePasses{}
	for k, a := range after {
		b := before[k]
		n := a.Passes - b.Passes
		if n <= 0 || a.Profiled-b.Profiled <= 0 {
			continue
		}
		us := func(x, y float64) float64 { return (x - y) / n * 1e6 }
		out[k] = InferencePasses{Passes: int(math.Round(n)), WallUS: us(a.Infer, b.Infer),
			CPUUS: us(a.CPU, b.CPU), ProfiledUS: us(a.Profiled, b.Profiled)}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// inferenceRatios is, per variant that ran between the readings before and
// after, its forward-pass time over its profiled time in between.
func inferenceRatios(before, after map[string]inferTotals) map[string]float64 {
	out := map[string]float64{}
	for k, a := range after {
		b := before[k]
		if p := a.Profiled - b.Profiled; p > 0 {
			out[k] = (a.Infer - b.Infer) / p
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// parseVariantSeries picks the series name{app="A",variant="V"} out of a
// Prometheus text exposition, by "A/V".
func parseVariantSeries(r io.Reader, metric string) (map[string]float64, error) {
	name := metric + "{"
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		labels := map[string]string{}
		for _, kv := range strings.Split(line[len(name):end], ",") {
			k, v, ok := strings.Cut(kv, "=")
			if ok {
				labels[k] = strings.Trim(v, `"`)
			}
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			return nil, fmt.Errorf("bench: %q: %w", line, err)
		}
		out[labels["app"]+"/"+labels["variant"]] = v
	}
	return out, sc.Err()
}
