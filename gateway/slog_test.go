package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// A client's connection closed under the embedded broker's reader is a normal
// disconnect: logged at debug, not warn; other warnings stay warnings.
func TestBrokerLogClosedConnectionIsDebug(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(zerologHandler{zerolog.New(&buf).Level(zerolog.InfoLevel)})
	closed := fmt.Errorf("read tcp 127.0.0.1:1883->127.0.0.1:5000: %w", net.ErrClosed)
	log.Warn("", "listener", "tcp", "error", closed)
	if buf.Len() != 0 {
		t.Fatalf("a closed connection logged at info level or above: %s", buf.String())
	}
	log.Warn("", "listener", "tcp", "error", errors.New("read tcp: connection reset by peer"))
	if !strings.Contains(buf.String(), `"level":"warn"`) {
		t.Fatalf("another error not logged as a warning: %q", buf.String())
	}
}
