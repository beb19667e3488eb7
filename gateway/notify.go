package gateway

import (
	"context"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"
)

// notifier tells systemd (Type=notify) how the gateway is doing: READY=1 once it
// serves, STOPPING=1 when it starts shutting down, and WATCHDOG=1 while the
// scheduling loop makes progress. Without $NOTIFY_SOCKET it sends nothing.
type notifier struct {
	now func() time.Time
	log zerolog.Logger
	// interval is the service's WatchdogSec ($WATCHDOG_USEC, when
	// $WATCHDOG_PID is unset or this process); 0 when systemd runs no watchdog.
	interval time.Duration
}

func newNotifier(now func() time.Time, log zerolog.Logger) *notifier {
	n := &notifier{now: now, log: log}
	iv, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn().Err(err).Msg("systemd watchdog: ignoring $WATCHDOG_USEC")
	}
	n.interval = iv
	return n
}

// send sends one sd_notify state; a failure is logged, never fatal.
func (n *notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn().Err(err).Str("state", state).Msg("sd_notify failed")
	}
}

// Ready tells systemd the gateway serves (READY=1).
func (n *notifier) Ready() { n.send(daemon.SdNotifyReady) }

// Stopping tells systemd the gateway is shutting down (STOPPING=1).
func (n *notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Watchdog sends WATCHDOG=1 every interval/3 until ctx ends, each time only if
// heartbeat (the scheduling loop's last sign of progress) is less than
// interval/2 old: a loop stuck on a batch or in a decision stops the pings, and
// systemd kills and restarts the gateway one interval after the last one. It
// returns at once when systemd runs no watchdog.
func (n *notifier) Watchdog(ctx context.Context, heartbeat func() time.Time) {
	if n.interval <= 0 {
		return
	}
	t := time.NewTicker(n.interval / 3)
	defer t.Stop()
	stale := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		age := n.now().Sub(heartbeat())
		if age < n.interval/2 {
			if stale {
				n.log.Info().Msg("scheduling loop making progress again; systemd watchdog pings resumed")
			}
			stale = false
			n.send(daemon.SdNotifyWatchdog)
			continue
		}
		if !stale {
			n.log.Error().Dur("since", age).Msg("scheduling loop made no progress; withholding systemd watchdog pings")
		}
		stale = true
	}
}
