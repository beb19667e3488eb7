package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"golang.org/x/term"

	"github.com/sneakgate/sneakgate/cmd/sneakgate/internal/tail"
	"github.com/sneakgate/sneakgate/gateway"
	"github.com/sneakgate/sneakgate/protocol"
)

const tailUsage = `usage: sneakgate tail [-config FILE | -broker URL -prefix P -username U -password-file F]
                      [-app A,B] [-device D,E] [-status S,T] [-every 5s] [-json] [-n N]
       sneakgate tail -members [-config FILE | -broker URL ...] [-every 5s] [-json] [-n N]

Subscribes to the gateway's result topics ({prefix}/res/#) and prints one line
per reply: local time, app/device, id, status, label and confidence, model,
total_ms, slack_ms and, when the status is not ok, the reason. Every -every, a
summary line: replies per second, status mix, deadline-met share and the p50
and p99 of total_ms over the interval; on SIGINT or SIGTERM, the summary of the
whole run. Payloads that are not replies are shown and counted. With -json, each
selected reply is printed as it arrived, one per line (summaries and malformed
payloads then go to stderr). Colours only when stdout is a terminal.
With -config, tail connects as the gateway does: its broker, user name,
password file, topic prefix and TLS settings (mqtt.tls: ca_file, cert_file and
key_file, server_name, insecure_skip_verify), for -broker too when it is given.
With the configuration's user name and no password file (the shipped unit's
systemd credential mqtt-password), tail reads the file the unit loads it from,
/etc/sneakgate/mqtt-password (root's: run tail as root, or pass -password-file).
Without -config, a broker URL with TLS (mqtts://, ssl://, tls://, wss://) is
verified with the system's roots and no client certificate is sent.
A -topic of the form $share/{group}/... is a shared subscription: tail then
sees only its share of the messages, and takes them from the group's other
subscribers (it says so); a subscription the broker refuses is an error.
With -members, tail follows the gateways' retained statuses instead
({prefix}/status, and {prefix}/status/{member} for each member of an
mqtt.shared_group): a line per status (member, online or offline and why,
version, policy, applications, time online) and, every -every and at the end,
the table of members with how many are online. The broker hands over the
retained statuses on subscribing, so the first table is the group as it
stands. With -json, each status as {"member":...,"status":{...}} and a
member whose status was cleared as {"member":...,"cleared":true}, one per line,
no tables; payloads that are not statuses then go to stderr.
`

// gatewayCredential is the file the shipped unit loads the gateway's broker
// password from (LoadCredential=mqtt-password:..., systemd/sneakgate.service).
var gatewayCredential = "/etc/sneakgate/mqtt-password"

// tailCmd runs `sneakgate tail`.
func tailCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "take the broker, credentials, TLS settings (mqtt.tls) and topic prefix from this gateway configuration `file` (other flags override it)")
	broker := fs.String("broker", "tcp://127.0.0.1:1883", "MQTT broker `URL`")
	prefix := fs.String("prefix", protocol.DefaultPrefix, "topic `prefix` (mqtt.topic_prefix)")
	username := fs.String("username", "", "broker `user` name")
	passwordFile := fs.String("password-file", "", "`file` holding the broker password")
	topic := fs.String("topic", "", "MQTT topic `filter` to subscribe to (default {prefix}/res/#)")
	apps := fs.String("app", "", "only these `applications` (comma-separated)")
	devices := fs.String("device", "", "only these `devices` (comma-separated)")
	statuses := fs.String("status", "", "only these `statuses` (comma-separated: "+statusNames(", ")+")")
	every := fs.Duration("every", 5*time.Second, "print a summary line this often (0: only at the end)")
	jsonOut := fs.Bool("json", false, "print each reply's JSON as it arrived, one per line")
	limit := fs.Int64("n", 0, "exit after printing this many replies (0: until interrupted)")
	color := fs.String("color", "auto", "colours: auto (when stdout is a terminal and $NO_COLOR is unset), always or never")
	members := fs.Bool("members", false, "follow the gateways' statuses ({prefix}/status/#: the members of a shared group) instead of the replies")
	fs.Usage = func() {
		fmt.Fprint(stderr, about("tail")+tailUsage+"\nflags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fs, fmt.Errorf("tail: unexpected arguments %q", fs.Args()))
	}
	o := tail.Options{Diag: stderr}
	for _, s := range splitList(*statuses) {
		if !protocol.Status(s).Valid() {
			return usageError(fs, fmt.Errorf("tail: -status %q: want one of %s", s, statusNames(", ")))
		}
		o.Filter.Statuses = append(o.Filter.Statuses, protocol.Status(s))
	}
	o.Filter.Apps, o.Filter.Devices = splitList(*apps), splitList(*devices)
	switch *color {
	case "always":
		o.Color = true
	case "auto":
		o.Color = isTerminal(stdout) && os.Getenv("NO_COLOR") == ""
	case "never":
	default:
		return usageError(fs, fmt.Errorf("tail: -color %q: want auto, always or never", *color))
	}
	if *every < 0 || *limit < 0 {
		return usageError(fs, errors.New("tail: -every and -n must not be negative"))
	}
	var tlsConfig *tls.Config
	if *configPath != "" {
		cfg, err := gateway.LoadConfig(*configPath)
		if err != nil {
			return err
		}
		from := func(name string, p *string, v string) {
			if !isSet(fs, name) {
				*p = v
			}
		}
		from("broker", broker, cfg.MQTT.Broker)
		from("prefix", prefix, cfg.MQTT.TopicPrefix)
		from("username", username, cfg.MQTT.Username)
		from("password-file", passwordFile, cfg.MQTT.PasswordFile)
		// mqtt.tls as the gateway uses it, for the broker tail connects to.
		cfg.MQTT.Broker = *broker
		if tlsConfig, err = cfg.BrokerTLS(); err != nil {
			if isSet(fs, "broker") {
				return fmt.Errorf("tail: -broker %s with -config %s: %w", *broker, *configPath, err)
			}
			return fmt.Errorf("tail: %w", err)
		}
		if tlsConfig != nil && tlsConfig.InsecureSkipVerify {
			fmt.Fprintln(stderr, "sneakgate tail: mqtt.tls.insecure_skip_verify: the broker's certificate is not checked; anyone on the path can pose as the broker")
		}
	}
	if err := protocol.CheckPrefix(*prefix); err != nil {
		return usageError(fs, fmt.Errorf("tail: -prefix: %w", err))
	}
	o.Prefix, o.JSON = *prefix, *jsonOut
	so := tail.SubscribeOptions{Broker: *broker, Filter: *topic, Username: *username, TLS: tlsConfig, Log: stderr, Dropped: new(atomic.Int64)}
	if *members && (*apps != "" || *devices != "" || *statuses != "" || *topic != "") {
		return usageError(fs, errors.New("tail: -members takes no -app, -device, -status or -topic"))
	}
	if so.Filter == "" {
		so.Filter = *prefix + "/res/#"
		if *members {
			fs := tail.MembersFilters(*prefix)
			so.Filter, so.Also = fs[0], fs[1:]
		}
	}
	if group, _, ok := strings.Cut(strings.TrimPrefix(so.Filter, "$share/"), "/"); ok && strings.HasPrefix(so.Filter, "$share/") {
		fmt.Fprintf(stderr, "sneakgate tail: %s is a shared subscription: the broker hands each message to one subscriber of group %q, so tail sees only its share and takes those messages from the others\n", so.Filter, group)
	}
	// refusedHint explains a login the broker refuses.
	var refusedHint string
	switch {
	case *passwordFile != "":
		pw, err := os.ReadFile(*passwordFile)
		if err != nil {
			return fmt.Errorf("tail: -password-file: %w", err)
		}
		so.Password = strings.TrimSpace(string(pw))
	case *configPath != "" && *username != "" && !isSet(fs, "username"):
		// The configuration's user with no mqtt.password_file: under the shipped
		// unit the gateway reads its password from the systemd credential
		// mqtt-password, which an operator's shell has no $CREDENTIALS_DIRECTORY
		// for. tail reads the file the unit loads the credential from instead.
		pw, err := os.ReadFile(gatewayCredential)
		switch {
		case err == nil:
			so.Password = strings.TrimSpace(string(pw))
			fmt.Fprintf(stderr, "sneakgate tail: user %q's password from %s (the gateway's %s credential)\n", *username, gatewayCredential, gateway.CredentialName)
			if !*members {
				fmt.Fprintf(stderr, "sneakgate tail: configs/mosquitto.acl lets the gateway's user read the statuses (-members), not the replies: for those, -username operator -password-file FILE\n")
			}
		case errors.Is(err, os.ErrNotExist):
			refusedHint = fmt.Sprintf("no password was sent for user %q (no mqtt.password_file, no %s): pass -password-file", *username, gatewayCredential)
		default:
			refusedHint = fmt.Sprintf("the gateway's password is in %s, which tail cannot read (%v): run tail as root (sudo) or pass -password-file", gatewayCredential, err)
		}
	case *username != "":
		refusedHint = fmt.Sprintf("no password was sent for user %q: pass -password-file", *username)
	}
	o.Dropped = so.Dropped
	msgs, stop, err := tail.Subscribe(ctx, so)
	if err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while connecting
		}
		if refusedHint != "" && (errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword)) {
			return fmt.Errorf("%w; %s", err, refusedHint)
		}
		return err
	}
	defer stop()
	fmt.Fprintf(stderr, "sneakgate tail: subscribed to %s on %s\n", strings.Join(append([]string{so.Filter}, so.Also...), " and "), so.Broker)
	var ticks <-chan time.Time
	if *every > 0 {
		t := time.NewTicker(*every)
		defer t.Stop()
		ticks = t.C
	}
	var view tail.View = tail.NewPrinter(stdout, o, time.Now())
	if *members {
		view = tail.NewMembers(stdout, stderr, *prefix, *jsonOut)
	}
	tail.Run(ctx, view, msgs, ticks, *limit, time.Now)
	return nil
}

// splitList splits a list flag's value at commas (and spaces).
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// statusNames joins protocol.Statuses() with sep.
func statusNames(sep string) string {
	var names []string
	for _, s := range protocol.Statuses() {
		names = append(names, string(s))
	}
	return strings.Join(names, sep)
}
